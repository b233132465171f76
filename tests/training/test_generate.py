"""Generation and the four manipulations: each command writes a labelled grid of the expected size."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from training_fixtures import tiny_config

from training import generate
from training.config_gan import Stage2Config
from training.recipes import stage2_gan, stage3_audio

RES = 32


@pytest.fixture(scope="module")
def _trained(_stage1_done, tiny_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "train"
    shutil.copytree(_stage1_done, out)
    cfg = tiny_config(tiny_shards, out)
    stage3_audio.run(cfg)
    stage2_gan.train(cfg, Stage2Config(resolution=RES, z_dim=8, shared_dim=8, g_width=8, d_width=8, steps=2,
                                       batch_size=8, standing_stats_batches=1, max_minutes=0.0))
    return out


@pytest.fixture
def wavs(tmp_path):
    t = np.arange(8000) / 8000  # 8 kHz: the command resamples to the front end's 16 kHz
    paths = []
    for name, f in (("low", 220.0), ("high", 1760.0)):
        path = tmp_path / f"{name}.wav"
        sf.write(path, 0.3 * np.sin(2 * np.pi * f * t), 8000)
        paths.append(str(path))
    return paths


def _grid_size(rows: int, cols: int, row_labels: list[str]) -> tuple[int, int]:
    left = max(60, 6 * max(len(s) for s in row_labels) + 8)
    return left + cols * (RES + 2), 16 + rows * (RES + 2)


def _run(_trained, tiny_shards, tmp_path, *extra: str) -> Image.Image:
    out = tmp_path / "grid.png"
    argv = ["--train-dir", str(_trained), "--shards", str(tiny_shards), "--out", str(out), *extra]
    assert generate.main(argv) == 0
    return Image.open(out)


def test_generate_from_files_and_shard(_trained, tiny_shards, tmp_path, wavs):
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "shard:tiny00050", "--n-z", "3")
    assert grid.size == _grid_size(3, 3, ["low", "high", "tiny00050"])


def test_gain_sweep(_trained, tiny_shards, tmp_path, wavs):
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", wavs[0], "--gain-db", "-12", "-6", "0", "6",
                "--n-z", "2")
    assert grid.size == _grid_size(2, 4, ["low z0", "low z1"])


def test_mix(_trained, tiny_shards, tmp_path, wavs):
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--mix", "--n-z", "2")
    assert grid.size == _grid_size(3, 2, ["low", "high", "mix"])


def test_interpolate_and_edit(_trained, tiny_shards, tmp_path, wavs):
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--interpolate", "shard:tiny00003",
                "--alphas", "0", "0.5", "1")
    assert grid.size == _grid_size(2, 3, ["low", "high"])
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--edit", "shard:tiny00003", "--n-z", "2")
    assert grid.size == _grid_size(2, 5, ["z0", "z1"])


def test_interpolation_ends_are_the_pure_embeddings(_trained):
    import torch

    m = generate.load_models(_trained, torch.device("cpu"))
    wave = torch.randn(1, 16000) * 0.1
    image = torch.rand(3, RES, RES) * 2 - 1
    z = m.noise(1, 0)
    a, v = m.embed_audio(wave), m.embed_images(image[None])
    assert torch.allclose(m.generate(a, z), m.generate(torch.nn.functional.normalize(1.0 * a + 0.0 * v), z))
    assert not torch.allclose(m.embed_audio(wave, 12.0), a)  # a gain moves the audio embedding


def test_missing_input_is_a_clear_error(_trained, tiny_shards, tmp_path, capsys):
    argv = ["--train-dir", str(_trained), "--shards", str(tiny_shards), "--out", str(tmp_path / "g.png"),
            "--audio", "shard:nope"]
    assert generate.main(argv) == 2
    assert "no clip 'nope'" in capsys.readouterr().err


def _truth_for(shards, folder):
    """A demo-world-style truth table for the tiny shards (category = label, sound = label)."""
    import io
    import json

    import pandas as pd
    import webdataset as wds

    rows = []
    for tar in sorted(shards.glob("*.tar")):
        for sample in wds.DataPipeline(wds.SimpleShardList([str(tar)]), wds.tarfile_to_samples()):
            cat = int(sample["cls"])
            for m in json.loads(sample["json"])["moments"]:
                rows.append({"clip_id": sample["__key__"], "t": m["t"], "category": cat, "visible": True,
                             "sounding": True, "matched": True, "scale": 0.2 + 0.1 * cat, "category2": float("nan"),
                             "visible2": None, "sound_category": float(cat)})
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer)
    (folder / "truth.parquet").write_bytes(buffer.getvalue())


def test_gen_eval_writes_metrics_and_samples(_trained, tiny_shards, tmp_path):
    import json

    from training import gen_eval
    from training.config_gan import GenEvalConfig, ProbeConfig

    shards = tmp_path / "world" / "shards"
    shutil.copytree(tiny_shards, shards)
    _truth_for(shards, tmp_path / "world" / "raw")
    out = tmp_path / "train"
    shutil.copytree(_trained, out)
    (out / "eval.json").write_text(json.dumps({"r_at_1": 0.5}))
    cfg = tiny_config(shards, out)
    r = gen_eval.run(cfg, ProbeConfig(image_size=RES, width=4, steps=5, batch_size=8),
                     GenEvalConfig(n_z=2, gains_db="-6,0,6", n_mix_pairs=3))
    saved = json.loads((out / "eval.json").read_text())
    assert saved["r_at_1"] == 0.5  # other evaluations' keys are kept
    for key in ("fd_generated", "class_acc", "class_acc_image_cond", "size_spearman_image_cond",
                "mix_image_cond_frames", "volume_size_spearman", "mix_both_rate", "probe_real_acc"):
        assert key in saved and key in r
    assert 0 <= r["class_acc"] <= 1 and 0 <= r["mix_both_rate"] <= 1 and r["fd_generated"] >= 0
    assert r["class_acc_clips"] == 16 and r["mix_pairs"] == 3 and r["generator_step"] == 2
    grid = Image.open(out / "samples.png")
    assert grid.size[1] == 16 + 4 * (RES + 2)  # one row per label (4), real + 2 samples
    assert (out / "probe" / "probe.pt").is_file()
