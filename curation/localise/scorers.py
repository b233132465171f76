"""Scorer kinds and the configured scorer: what a run prepares at its start and what each worker process builds.

`score.scorer` names a kind (`registry.KINDS`: none, synchrony, ssl (the native model or a published EZ-VSL / FNAC
/ SLAVC checkpoint, told apart by the file), moments (a given moments file)). A kind owns both of its stages:
- at the run's start, on the client (`check_scorer`, then `ensure_model`): checking its inputs, training a model
  when none is given, building a published model's reference bank, digesting a moments file;
- in each worker process (`load_scorer`, built once and reused across tasks): the `Scorer` that scores clips.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from curation.config import RunConfig, ScoreConfig
from curation.localise.registry import KINDS

if TYPE_CHECKING:
    from curation.clip_cache import ClipJob
    from curation.decode import DecodedClip
    from curation.localise.clip_scores import ClipScores
    from curation.storage import RunFolder


class Scorer:
    """A worker's scorer: a score per frame of a decoded clip (and optionally maps and a cross-clip score)."""

    model_id: str

    def score(self, clip: DecodedClip) -> ClipScores:
        raise NotImplementedError

    def for_clip(self, job: ClipJob) -> Scorer:
        """The scorer of one clip, before the clip is fetched: it may fail the clip now (a ClipError)."""
        return self

    def warm(self, clip: DecodedClip) -> int:
        """Pay the first call's costs on a blank clip, before a worker's first task: the frames it scored."""
        return len(self.score(clip).scores)


class ScorerKind:
    """One line of `registry.KINDS`: the run's preparation for a scorer and the scorer each worker builds."""

    given_moments = False  # its scores are a given choice of moments, kept in their order (`select_moments`)

    def check(self, cfg: RunConfig) -> RunConfig:
        """Before the clip list is read: the config with its inputs checked (a wrong file is one line now)."""
        return cfg

    def prepare(self, cfg: RunConfig, jobs: list[ClipJob], out: RunFolder,
                progress: bool) -> tuple[RunConfig, str | None]:
        """On the client, at the run's start (`out`: the run's OUT): the config the workers score with, and the
        sha256 of what scores beyond the config (a model, a file; part of the per-clip cache key), or None."""
        return cfg, None

    def build(self, score: ScoreConfig) -> Scorer:
        raise NotImplementedError


@functools.cache
def scorer_kind(name: str) -> ScorerKind:
    if name not in KINDS:
        raise ValueError(f"unknown scorer {name!r}")
    module, _, cls = KINDS[name].kind.partition(":")
    return getattr(importlib.import_module(module), cls)()


def check_scorer(cfg: RunConfig) -> RunConfig:
    """The config with the scorer's inputs checked, before the clip list or the demo world is built."""
    return scorer_kind(cfg.score.scorer).check(cfg)


def ensure_model(cfg: RunConfig, jobs: list[ClipJob], out: str | Path | RunFolder,
                 progress: bool = True) -> tuple[RunConfig, str | None]:
    """The run's config as the workers score with it (an ssl run's `score.checkpoint` set, training one on `jobs`
    when none is given), and the sha256 of its model or moments file (part of the per-clip cache key; None for
    scorers that have neither). `out`: the run's OUT, opened (`storage.run_folder`) or a location."""
    from curation.storage import run_folder

    return scorer_kind(cfg.score.scorer).prepare(cfg, jobs, run_folder(out), progress)


@functools.lru_cache(maxsize=4)
def load_scorer(cfg: ScoreConfig) -> Scorer:
    """The configured scorer, built once per process (workers reuse it across tasks)."""
    return scorer_kind(cfg.scorer).build(cfg)
