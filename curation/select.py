"""Select stage: rank each clip's frames, keep its top moments, then keep the best-scoring clips."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curation.config import SelectConfig


@dataclass(frozen=True)
class Moments:
    """Per-frame ranks (1 = best) and the indices of the kept moments, best first."""

    ranks: np.ndarray  # (T,) int32
    selected: np.ndarray  # (k,) int64 frame indices
    clip_score: float


def select_moments(times: np.ndarray, scores: np.ndarray, cfg: SelectConfig,
                   clip_basis: np.ndarray | None = None) -> Moments:
    """Greedy top-k by score with at least `min_gap_s` between kept moments; ties go to the earlier frame.

    The clip score is the mean of `clip_basis` (a score comparable across clips; default `scores`) over the
    kept moments."""
    order = np.lexsort((times, -scores.astype(np.float64)))
    ranks = np.empty(len(scores), dtype=np.int32)
    ranks[order] = np.arange(1, len(scores) + 1, dtype=np.int32)
    kept: list[int] = []
    for i in order:
        if len(kept) == cfg.top_k:
            break
        if all(abs(times[i] - times[j]) >= cfg.min_gap_s - 1e-9 for j in kept):
            kept.append(int(i))
    selected = np.asarray(kept, dtype=np.int64)
    basis = scores if clip_basis is None else clip_basis
    return Moments(ranks=ranks, selected=selected, clip_score=float(np.mean(basis[selected])))


def keep_clips(clip_scores: dict[str, float], cfg: SelectConfig) -> set[str]:
    """Clip ids that pass the absolute threshold and fall in the top `keep_quantile` fraction.

    The quantile keeps exactly ceil(q * n) clips (ties broken by clip id), so the count is predictable.
    """
    ranked = sorted(clip_scores.items(), key=lambda item: (-item[1], item[0]))
    if cfg.min_clip_score is not None:
        ranked = [(cid, s) for cid, s in ranked if s >= cfg.min_clip_score]
    if cfg.keep_quantile is not None:
        ranked = ranked[: math.ceil(cfg.keep_quantile * len(clip_scores))]
    return {cid for cid, _ in ranked}
