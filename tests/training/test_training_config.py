from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, load_config, to_toml

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.toml"))


def test_defaults_are_the_cpu_demo_setting():
    cfg = load_config()
    assert cfg == TrainConfig()
    assert cfg.out == "work/demo/train" and cfg.data.shards == "work/demo/shards"
    assert (cfg.stage3.lr, cfg.stage3.weight_decay) == (1e-3, 1e-5)  # the official code's Adam settings


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), TrainConfig)


def test_all_problems_are_reported_at_once_naming_the_option(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('colour = 3\n[stage3]\nlr = "fast"\nbatch_size = 1\n[audio]\nnormalisation = "none"\nhop = 9\n'
                    "[stage1]\nwidht = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "colour: unknown option" in text and "stage1.widht: unknown option" in text
    assert "stage3.lr: expected float" in text and "stage3.batch_size: must be >= 2" in text
    assert "audio.normalisation: must be one of" in text
    assert len(err.value.problems) == 5


def test_flags_override_the_file_and_parse_toml_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[stage3]\nsteps = 5\ntemperature = 0.5\n")
    cfg = load_config(path, {"stage3.steps": 7}, ["stage3.temperature=1", "stage1.swav_weights=w.pth.tar",
                                                     "data.resample=true"])
    assert cfg.stage3.steps == 7 and cfg.stage3.temperature == 1.0
    assert cfg.stage1.swav_weights == "w.pth.tar" and cfg.data.resample is True
    with pytest.raises(ConfigError, match="--set 'stage3.steps': expected key=value"):
        load_config(None, None, ["stage3.steps"])


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(None, None, ["stage3.steps=11", "data.eval_shards=a-{0..1}.tar", "audio.eps=1e-9"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    assert load_config(path).stage1.swav_weights is None
