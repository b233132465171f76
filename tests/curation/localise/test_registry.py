"""The scorer registry: every line names a kind that loads, the config takes exactly its names, and a new line is
all a scorer needs beyond its module."""

import subprocess
import sys

import pytest

from curation import config
from curation.config import SCORERS, ConfigError, load_config
from curation.localise import registry
from curation.localise.score import NoScorer
from curation.localise.scorers import ScorerKind, load_scorer, scorer_kind


def test_every_registered_kind_loads_and_the_config_takes_exactly_their_names():
    assert SCORERS == tuple(registry.KINDS)
    assert all(isinstance(scorer_kind(name), ScorerKind) for name in SCORERS)
    assert [name for name in SCORERS if scorer_kind(name).given_moments] == ["moments"]
    with pytest.raises(ValueError, match="unknown scorer 'bogus'"):
        scorer_kind("bogus")


def test_one_registry_line_adds_a_scorer(monkeypatch):
    monkeypatch.setitem(registry.KINDS, "zero", registry.Entry("curation.localise.score:NoneKind"))
    monkeypatch.setattr(config, "SCORERS", tuple(registry.KINDS))  # as config derives it at import
    try:
        cfg = load_config(None, {"score.scorer": "zero"})
        assert isinstance(load_scorer(cfg.score), NoScorer)
        with pytest.raises(ConfigError, match="only the ssl scorer runs a model"):
            load_config(None, {"score.scorer": "zero", "score.device": "auto"})
    finally:
        scorer_kind.cache_clear()
        load_scorer.cache_clear()


def test_the_config_loads_no_model_code():
    code = "import sys, curation.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
