from pathlib import Path

import pytest

from curation.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    overrides = {"meta": "clips.csv"}  # real-data configs name their clip list on the command line
    assert isinstance(load_config(path, overrides), RunConfig)


def test_demo_config_spells_out_the_defaults():
    shipped = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.toml")
    assert shipped == RunConfig()


def test_all_problems_are_reported_at_once_naming_the_option(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('dataset = "imagenet"\ncolour = 3\n[decode]\nfps = "fast"\n[select]\ntop_k = 0\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "dataset: must be one of" in text and "colour: unknown option" in text
    assert "decode.fps: expected float" in text and "select.top_k: must be >= 1" in text
    assert len(err.value.problems) == 4


def test_flags_override_the_file_and_parse_toml_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[select]\ntop_k = 5\n")
    cfg = load_config(path, {"select.top_k": 2}, ["decode.fps=5", "select.keep_quantile=none", "score.scorer=none"])
    assert cfg.select.top_k == 2 and cfg.decode.fps == 5.0
    assert cfg.select.keep_quantile is None and cfg.score.scorer == "none"


def test_real_datasets_need_a_clip_list():
    with pytest.raises(ConfigError, match="meta: a clip list is required"):
        load_config(None, {"dataset": "vggsound"})


def test_cache_fingerprint_follows_only_per_clip_options():
    base = RunConfig()
    assert base.clip_stage_fingerprint() == load_config(None, {"select.keep_quantile": 0.5}).clip_stage_fingerprint()
    assert base.clip_stage_fingerprint() != load_config(None, {"decode.fps": 5}).clip_stage_fingerprint()


def test_device_options_are_checked_in_one_line_each():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"score.device": "gpu", "score.precision": "fp16", "dask.score_resource": "GPU=1"})
    assert err.value.problems == ["score.device: must be cpu, cuda, cuda:N or auto, got 'gpu'",
                                  "score.precision: must be one of fp32, bf16, got 'fp16'",
                                  "dask.score_resource: a Dask resource name like GPU, or empty"]
    with pytest.raises(ConfigError, match="dask.score_resource: only the ssl scorer runs on a scoring worker"):
        load_config(None, {"score.scorer": "synchrony", "dask.score_resource": "GPU"})
    with pytest.raises(ConfigError, match="score.device / score.precision: only the ssl scorer runs a model"):
        load_config(None, {"score.scorer": "synchrony", "score.precision": "bf16"})
    assert load_config(None, {"score.device": "cuda:1", "dask.score_resource": "GPU"}).score.device == "cuda:1"


def test_each_device_option_that_changes_the_scores_keys_the_cache():
    keys = {load_config(None, extra).clip_stage_fingerprint() for extra in
            ({}, {"score.precision": "bf16"}, {"score.device": "cuda"}, {"dask.score_resource": "GPU"})}
    assert len(keys) == 4


def test_short_clips_is_checked_and_leaves_the_cache_key_as_it_was():
    with pytest.raises(ConfigError, match="decode.short_clips: must be one of tile, reject, got 'pad'"):
        load_config(None, {"decode.short_clips": "pad"})
    # the key of a default config from before the option existed: its cached clips are reused (a cached too_short
    # failure is redone under `tile`, curation.results.reusable), under either setting
    keys = {load_config(None, {"decode.short_clips": mode}).clip_stage_fingerprint() for mode in ("tile", "reject")}
    assert keys == {"becb85653a5e"}
