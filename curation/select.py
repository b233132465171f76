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


def moment_scores(times: np.ndarray, scores: np.ndarray, window_s: float) -> np.ndarray:
    """Each frame's lowest score within +-window_s/2 of it (0 = the frame's own score).

    A frame's score saw an audio window around it; at the edge of a sounding stretch that window still holds
    the sound while the frame no longer shows the source (or the other way round). Taking the lowest score
    nearby keeps moments whose whole neighbourhood agrees: the middle of a good stretch, not its border."""
    if window_s <= 0 or len(times) < 2:
        return scores
    half = window_s / 2 + 1e-9
    lo = np.searchsorted(times, times - half, side="left")
    hi = np.searchsorted(times, times + half, side="right")
    return np.array([scores[a:b].min() for a, b in zip(lo, hi, strict=True)], dtype=scores.dtype)


def select_moments(times: np.ndarray, scores: np.ndarray, cfg: SelectConfig,
                   clip_basis: np.ndarray | None = None, given: bool = False) -> Moments:
    """Greedy top-k by moment score (`moment_scores`) with at least `min_gap_s` between kept moments; ties go
    to the earlier frame. `given`: the scores are a given selection (a moments file, positive where listed), so
    its first top-k listed frames are kept as they are, with no moment window and no gap.

    The clip score is the mean moment score of `clip_basis` (default `scores`) over the kept moments."""
    ranked = scores if given else moment_scores(times, scores, cfg.moment_window_s)
    order = np.lexsort((times, -ranked.astype(np.float64)))
    ranks = np.empty(len(scores), dtype=np.int32)
    ranks[order] = np.arange(1, len(scores) + 1, dtype=np.int32)
    kept: list[int] = []
    for i in order:
        if len(kept) == cfg.top_k:
            break
        if given and ranked[i] <= 0:
            break
        if given or all(abs(times[i] - times[j]) >= cfg.min_gap_s - 1e-9 for j in kept):
            kept.append(int(i))
    selected = np.asarray(kept, dtype=np.int64)
    basis = ranked if clip_basis is None else moment_scores(times, clip_basis, cfg.moment_window_s)
    return Moments(ranks=ranks, selected=selected, clip_score=float(np.mean(basis[selected])))


def _keep_ranked(clip_scores: dict[str, float], cfg: SelectConfig, floor: int = 0) -> list[str]:
    ranked = sorted(clip_scores.items(), key=lambda item: (-item[1], item[0]))
    if cfg.min_clip_score is not None:
        ranked = [(cid, s) for cid, s in ranked if s >= cfg.min_clip_score]
    if cfg.keep_quantile is not None:
        ranked = ranked[: max(floor, math.ceil(cfg.keep_quantile * len(clip_scores)))]
    return [cid for cid, _ in ranked]


def keep_clips(clip_scores: dict[str, float], cfg: SelectConfig, labels: dict[str, str] | None = None) -> set[str]:
    """Clip ids that pass the absolute threshold and fall in the top `keep_quantile` fraction.

    The quantile keeps exactly ceil(q * n) clips (ties broken by clip id), so the count is predictable. With
    `per_label` (and `labels`: clip_id -> label) it is taken within each label, and at least `min_per_label`
    of a label's clips that pass the threshold are kept.
    """
    if not cfg.per_label or labels is None:
        return set(_keep_ranked(clip_scores, cfg))
    by_label: dict[str, dict[str, float]] = {}
    for cid, score in clip_scores.items():
        by_label.setdefault(labels[cid], {})[cid] = score
    return {cid for scores in by_label.values() for cid in _keep_ranked(scores, cfg, cfg.min_per_label)}
