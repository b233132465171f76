"""Every kind of scorer, one line each: `score.scorer`'s name -> where its kind lives, and the two facts the config
checks need (whether it runs a model on `score.device`, which `score` option it cannot run without).

A kind (`curation.localise.scorers.ScorerKind`, in the module the line names) prepares the run at its start and
builds each worker's scorer; it is imported only when a run uses it. This module imports nothing, so the config
can check a name before any model code loads. A new scorer is its module plus one line here.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    kind: str  # "module:Class" of its ScorerKind
    runs_model: bool = False  # scores with a model on `score.device` (score.device / precision, dask.score_resource)
    needs: str | None = None  # a `score` option that must be set for it (SCORER=<name> needs <OPTION>=)


KINDS: dict[str, Entry] = {
    "ssl": Entry("curation.localise.ssl_scorer:SSLKind", runs_model=True),
    "synchrony": Entry("curation.localise.score:SynchronyKind"),
    "none": Entry("curation.localise.score:NoneKind"),
    "moments": Entry("curation.localise.moments:MomentsKind", needs="moments"),
}


def runs_model(name: str) -> bool:
    return name in KINDS and KINDS[name].runs_model


def model_scorers() -> str:
    """The names of the scorers that run a model, for messages ("ssl")."""
    return " / ".join(name for name, entry in KINDS.items() if entry.runs_model)


def missing_input(score) -> str | None:
    """The problem with `score` (a ScoreConfig) when its scorer needs an option that is empty, else None."""
    option = KINDS[score.scorer].needs if score.scorer in KINDS else None
    if option is None or getattr(score, option):
        return None
    return f"score.{option}: SCORER={score.scorer} needs {option.upper()}="
