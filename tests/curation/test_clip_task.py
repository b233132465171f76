from dataclasses import replace

import pytest
from conftest import make_av

from curation.clip_cache import ClipJob, cache_path, read_summary
from curation.clip_task import process_clip, warm_up
from curation.config import DecodeConfig, RunConfig, ScoreConfig
from curation.localise.scorers import load_scorer


@pytest.mark.parametrize("scorer", ["none", "synchrony"])
def test_warm_up_builds_the_workers_scorer_and_scores_a_blank_clip(scorer):
    cfg = replace(RunConfig(), score=ScoreConfig(scorer=scorer), decode=DecodeConfig(fps=4.0))
    warmed = warm_up(cfg)
    assert warmed.model_id == load_scorer(cfg.score).model_id
    assert warmed.frames_scored == 40  # every frame of the blank 10-s clip at 4 fps


def test_a_short_clips_cached_summary_is_reused_only_under_the_setting_it_was_made_with(tmp_path):
    """decode.short_clips is not in the cache key (RunConfig.clip_stage_fingerprint): a clip shorter than the window
    that failed `too_short` (under `reject`, or before the option existed) is scored under `tile`, and its tiled
    score is not reused under `reject`; a normal clip's cache serves both."""
    short = ClipJob("short", str(make_av(tmp_path / "short.mp4", 1.5)), None, 0.0, 1.5)
    normal = ClipJob("normal", str(make_av(tmp_path / "normal.mp4", 3.5)), None, 0.0, 3.5)
    tile, reject = (replace(RunConfig(), score=ScoreConfig(scorer="synchrony"), decode=DecodeConfig(short_clips=mode))
                    for mode in ("tile", "reject"))
    raw, cache = tmp_path / "raw", str(tmp_path / "cache")
    raw.mkdir()

    def process(job, cfg):
        return process_clip(job, cfg, raw, cache)

    failed = process(short, reject)
    assert (failed.scored, failed.error_kind, failed.audio_tiled) == (False, "too_short", False)
    scored = process(short, tile)  # the cached too_short failure is not reused
    assert scored.scored and scored.audio_tiled and scored.n_frames == 15 and not scored.from_cache
    assert read_summary(cache_path(cache, "short")).audio_tiled  # the cache file now holds the tiled score
    assert process(short, tile).from_cache
    again = process(short, reject)  # a tiled score is not reused where short clips are rejected
    assert (again.scored, again.error_kind, again.from_cache) == (False, "too_short", False)

    first = process(normal, reject)
    assert first.scored and not first.audio_tiled and first.n_frames == 35
    assert process(normal, tile).from_cache and process(normal, reject).from_cache
