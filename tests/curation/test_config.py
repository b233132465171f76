import dataclasses
import json
import typing
from pathlib import Path

import pytest

from curation import config
from curation.config import AFTER_SCORING_SECTIONS, CLIP_KEY_OPTIONS, ConfigError, DecodeConfig, RunConfig, load_config
from curation.pipeline import reselect

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
    # failure is redone under `tile`, curation.clip_cache.reusable), under either setting
    keys = {load_config(None, {"decode.short_clips": mode}).clip_stage_fingerprint() for mode in ("tile", "reject")}
    assert keys == {"becb85653a5e"}


# keys made before each option's declaration moved to the config classes: cached clips of these runs are reused
PINNED_KEYS = [
    ({}, None, "becb85653a5e"),
    ({}, "0123456789abcdef", "136204348fba"),
    ({"decode.short_clips": "reject"}, None, "becb85653a5e"),
    ({"score.scorer": "synchrony"}, None, "00fcb4fca797"),
    ({"score.checkpoint_format": "auto", "score.checkpoint": "m.pt"}, "feedc0ffee", "43d8123bc3bb"),
    ({"score.checkpoint_format": "native", "score.checkpoint": "m.pt"}, "feedc0ffee", "43d8123bc3bb"),
    ({"score.checkpoint_format": "ezvsl", "score.checkpoint": "best.pth"}, "feedc0ffee", "8addce87c536"),
    ({"score.device": "cuda", "score.precision": "bf16", "score.ensemble": 3}, "feedc0ffee", "f761c8f00651"),
    ({"score.ensemble": 1}, None, "bf029b49b285"),
    ({"dask.score_resource": "GPU"}, None, "9abe0e4ec638"),
    ({"score.scorer": "moments", "score.moments": "m.json"}, None, "76d82a634e81"),
    ({"score.scorer": "moments", "score.moments": "m.json", "score.moments_first_frame": 0}, None, "8cfc072b95cd"),
    ({"select.top_k": 5, "select.min_gap_s": 1.0, "select.moment_window_s": 0.0, "select.clip_score": "score",
      "write.jpeg_quality": 80}, None, "ba3762adc9de"),
]


@pytest.mark.parametrize(("overrides", "digest", "key"), PINNED_KEYS)
def test_cache_keys_stay_as_they_were(overrides, digest, key):
    assert load_config(None, overrides).clip_stage_fingerprint(digest) == key


def test_the_cache_key_spells_out_its_parts():
    key = load_config(None, {"score.device": "cuda", "dask.score_resource": "GPU"}).clip_key("d")
    assert set(key) == {"decode", "score", "model", "top_k", "min_gap_s", "moment_window_s", "clip_score",
                        "jpeg_quality"}
    assert "short_clips" not in key["decode"] and "moments" not in key["score"]
    assert key["score"]["checkpoint_format"] == "native" and key["score"]["batches"] == "across_clips"
    assert key["score"]["device"] == "cuda" and "precision" not in key["score"] and key["model"] == "d"
    assert json.dumps(key, sort_keys=True)  # plain JSON: the fingerprint hashes it


_CHOICES = [v for v in vars(config).values() if isinstance(v, tuple) and v and all(isinstance(x, str) for x in v)]


def _other_value(value, hint):
    """A value of the option's type other than `value` (one of its choices where the config names them)."""
    if typing.get_origin(hint) is tuple:
        return tuple(2 * v for v in value)
    kind = next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))
    if kind is bool:
        return not value
    if kind is int:
        return 4 if value is None else value + 1
    if kind is float:
        return value / 2 if value else 0.5
    choices = next((c for c in _CHOICES if value in c), None)
    if choices:
        return [c for c in choices if c != value][-1]
    return "other" if value is None else value + "x"


def _each_option_changed(base):
    """(dotted option, `base` with that option alone changed) for every option of every section of RunConfig."""
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if not dataclasses.is_dataclass(hints[f.name]):
            yield f.name, dataclasses.replace(base, **{f.name: _other_value(getattr(base, f.name), hints[f.name])})
            continue
        section = getattr(base, f.name)
        section_hints = typing.get_type_hints(type(section))
        for g in dataclasses.fields(section):
            changed = dataclasses.replace(section, **{g.name: _other_value(getattr(section, g.name),
                                                                           section_hints[g.name])})
            yield f"{f.name}.{g.name}", dataclasses.replace(base, **{f.name: changed})


MOMENTS_RUN = {"score.scorer": "moments", "score.moments": "m.json"}


@pytest.mark.parametrize("overrides", [{}, MOMENTS_RUN], ids=["ssl", "moments"])
def test_the_cache_key_changes_exactly_with_the_options_declared_to_change_a_clip(overrides):
    base = load_config(None, overrides)
    options = dict(_each_option_changed(base))
    assert len(options) > 100  # every option, no section skipped
    changed = {name for name, cfg in options.items()
               if cfg.clip_stage_fingerprint("d") != base.clip_stage_fingerprint("d")}
    # an option keyed only_if another has a value (the moments files: scorer moments) counts only then
    declared = {name for name, spec in CLIP_KEY_OPTIONS.items() if spec.only_if is None
                or getattr(getattr(base, name.split(".")[0]), spec.only_if[0]) == spec.only_if[1]}
    assert changed == declared
    assert ("score.moments" in declared) == bool(overrides)


def test_options_added_later_count_only_away_from_what_runs_did_before():
    base = RunConfig().clip_stage_fingerprint()
    for option, before in (("score.device", "cpu"), ("score.precision", "fp32"), ("score.checkpoint_format", "native")):
        assert load_config(None, {option: before}).clip_stage_fingerprint() == base
    assert load_config(None, {"score.ensemble": 1}).clip_key()["score"].get("ensemble") is None
    assert RunConfig().clip_key()["score"]["ensemble"] == 3


def test_every_option_must_declare_whether_it_changes_a_clip(monkeypatch):
    monkeypatch.setattr(DecodeConfig, "CLIP_KEY", {k: v for k, v in DecodeConfig.CLIP_KEY.items() if k != "fps"})
    with pytest.raises(TypeError, match=r"DecodeConfig.CLIP_KEY must declare exactly its options: missing \['fps'\]"):
        config._declared_options()


def test_curation_select_changes_the_options_decided_after_scoring(tmp_path):
    assert AFTER_SCORING_SECTIONS == ("select", "filters", "write")
    base = RunConfig().clip_key("d")
    for name, cfg in _each_option_changed(RunConfig()):
        if name.split(".")[0] in AFTER_SCORING_SECTIONS:  # none of them needs the clips decoded or scored again
            key = cfg.clip_key("d")
            assert (key["decode"], key["score"], key["model"]) == (base["decode"], base["score"], base["model"]), name
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "run.json").write_text(json.dumps({"config": RunConfig().to_dict(), "cache_dir": "x"}))
    with pytest.raises(ValueError, match=r"^decode.fps: re-selection only changes select.\*, filters.\* and write.\* "
                                         r"options$"):
        reselect(str(tmp_path), {"decode.fps": 5}, progress=False)
