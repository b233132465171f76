"""What every scorer returns for one clip: per-frame scores, optionally maps and a score comparable across clips."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClipScores:
    """One clip's per-frame scores as numpy arrays, whole (every frame of the clip): what `Scorer.score` returns
    and what the clip's moments are chosen from. Not `device.FrameScores`, the tensors a model's `forward` returns
    for one batch of frames (which may span clips); `DeviceScorer.clip_scores` turns those into this."""

    scores: np.ndarray  # (T,) float32: ranks the moments of one clip
    maps: np.ndarray | None = None  # (T, h, w) float32, where the scorer localises
    contrastive: np.ndarray | None = None  # (T,) float32: comparable across clips (ranks clips)
