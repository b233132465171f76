"""The configured scorer, built once per worker process: the one place that knows every kind of scorer.

`score.scorer`: none, synchrony, ssl (the native model or a published EZ-VSL / FNAC / SLAVC checkpoint, told
apart by the file) or moments (a given moments file).
"""

from __future__ import annotations

import functools
from dataclasses import replace

from curation import storage
from curation.config import ScoreConfig
from curation.localise.moments import MomentsScorer
from curation.localise.published import PublishedScorer, checkpoint_format
from curation.localise.score import LearnedScorer, NoScorer, Scorer, SynchronyScorer


@functools.lru_cache(maxsize=4)
def load_scorer(cfg: ScoreConfig) -> Scorer | MomentsScorer:
    """The configured scorer, built once per process (workers reuse it across tasks)."""
    if cfg.scorer == "none":
        return NoScorer()
    if cfg.scorer == "synchrony":
        return SynchronyScorer(cfg.grid)
    if cfg.scorer == "ssl":
        if cfg.checkpoint and storage.is_url(cfg.checkpoint):  # a model in OUT on an object store
            cfg = replace(cfg, checkpoint=storage.local_copy(cfg.checkpoint))
        if cfg.bank and storage.is_url(cfg.bank):
            cfg = replace(cfg, bank=storage.local_copy(cfg.bank))
        fmt = checkpoint_format(cfg.checkpoint) if cfg.checkpoint and cfg.checkpoint_format == "auto" \
            else cfg.checkpoint_format
        return PublishedScorer(replace(cfg, checkpoint_format=fmt)) if fmt in ("ezvsl", "slavc") else LearnedScorer(cfg)
    if cfg.scorer == "moments":
        return MomentsScorer(cfg)
    raise ValueError(f"unknown scorer {cfg.scorer!r}")
