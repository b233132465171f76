from dataclasses import replace

import pytest

from curation.clip_task import warm_up
from curation.config import RunConfig, ScoreConfig
from curation.localise.scorers import load_scorer


@pytest.mark.parametrize("scorer", ["none", "synchrony"])
def test_warm_up_builds_the_workers_scorer_and_scores_a_blank_clip(scorer):
    cfg = replace(RunConfig(), score=ScoreConfig(scorer=scorer))
    assert warm_up(cfg) == load_scorer(cfg.score).model_id
