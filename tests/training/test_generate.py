"""Generation and the four manipulations: each command writes a labelled grid of the expected size, and each
manipulation has its effect on the embeddings and on the images the grid shows."""

from __future__ import annotations

import shutil
from itertools import combinations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchvision
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


def _assert_varied(cells: np.ndarray, axis: int) -> None:
    """(rows, cols, R, R, 3) grid cells: none is a flat colour, and along `axis` (0: down a column, 1: along a row)
    every two cells differ, i.e. what that axis sweeps (the input, the gain, the mix, alpha, the strength)
    changes the picture."""
    flat = cells.reshape(*cells.shape[:2], -1).astype(int)
    assert (flat.max(-1) - flat.min(-1) > 8).all(), "a grid cell is a flat colour"
    swept = np.moveaxis(flat, axis, 0)
    for i, j in combinations(range(swept.shape[0]), 2):
        assert (np.abs(swept[i] - swept[j]).max(-1) > 2).all(), f"grid cells {i} and {j} along axis {axis} agree"


def test_generate_from_files_and_shard(_trained, tiny_shards, tmp_path, wavs):
    labels = ["low", "high", "tiny00050"]
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "shard:tiny00050", "--n-z", "3")
    assert grid.size == _grid_size(3, 3, labels)
    _assert_varied(_cells(grid, labels, 3, 3), axis=0)  # one row per input
    _assert_varied(_cells(grid, labels, 3, 3), axis=1)  # one column per z


def test_gain_sweep(_trained, tiny_shards, tmp_path, wavs):
    labels = ["low z0", "low z1"]
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", wavs[0], "--gain-db", "-12", "-6", "0", "6",
                "--n-z", "2")
    assert grid.size == _grid_size(2, 4, labels)
    _assert_varied(_cells(grid, labels, 2, 4), axis=1)  # one column per gain


def test_mix(_trained, tiny_shards, tmp_path, wavs):
    labels = ["low", "high", "mix"]
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--mix", "--n-z", "2")
    assert grid.size == _grid_size(3, 2, labels)
    _assert_varied(_cells(grid, labels, 3, 2), axis=0)  # a, b, a + b


def test_interpolate_and_edit(_trained, tiny_shards, tmp_path, wavs):
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--interpolate", "shard:tiny00003",
                "--alphas", "0", "0.5", "1")
    assert grid.size == _grid_size(2, 3, ["low", "high"])
    cells = _cells(grid, ["low", "high"], 2, 3)
    _assert_varied(cells[:, :2], axis=0)  # one row per input, until alpha = 1: the image's embedding alone
    assert np.abs(cells[0, 2].astype(int) - cells[1, 2].astype(int)).max() <= 1
    _assert_varied(cells, axis=1)  # one column per alpha
    grid = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--edit", "shard:tiny00003", "--n-z", "2")
    assert grid.size == _grid_size(2, 5, ["z0", "z1"])
    _assert_varied(_cells(grid, ["z0", "z1"], 2, 5), axis=1)  # one column per strength


def test_official_grid_scale_stretches_each_cell_to_its_own_range(_trained, tiny_shards, tmp_path, wavs, models):
    labels = ["low", "high"]
    official = _cells(_run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--n-z", "2", "--grid-scale",
                           "official"), labels, 2, 2)
    assert (official.min(axis=(2, 3, 4)) == 0).all() and (official.max(axis=(2, 3, 4)) == 255).all()
    _assert_varied(official, axis=0)
    # the cells are the command's images (as the default grid shows them), each stretched to its own range
    cfg = tiny_config(tiny_shards, _trained)
    waves = torch.stack([generate.load_audio(w, cfg, models.audio.cfg.audio) for w in wavs])
    images = models.generate(models.embed_audio(waves), models.noise(2, 0))
    default = _run(_trained, tiny_shards, tmp_path, "--audio", *wavs, "--n-z", "2")
    _assert_grid_shows(default, labels, images)
    linear = _cells(default, labels, 2, 2)
    expected = generate.stretch_each(images.flatten(0, 1)).reshape(official.shape)
    assert np.abs(official.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(official.astype(int) - linear.astype(int)).max() > 8  # not the default's mapping


def test_official_grid_scale_is_make_grids_normalize_scale_each():
    """Per image min-max, as torchvision.utils.make_grid(normalize=True, scale_each=True) then save_image's
    uint8 conversion; the default `linear` keeps mapping [-1, 1] to 0..255."""
    torch.manual_seed(0)
    offsets = torch.linspace(-0.6, 0.6, 6).view(2, 3, 1, 1, 1)
    images = offsets + 0.1 * torch.rand(2, 3, 3, RES, RES)  # low-contrast images (a range of ~26 grey levels)
    images[1, 2, :, :4] = images[1, 2].max()  # one with a flat band at its maximum
    official = np.stack([np.stack(row) for row in generate._rows(images, "official")])
    assert official.shape == (2, 3, RES, RES, 3) and official.dtype == np.uint8
    assert (official.min(axis=(2, 3, 4)) == 0).all() and (official.max(axis=(2, 3, 4)) == 255).all()
    grid = torchvision.utils.make_grid(images.flatten(0, 1), nrow=3, padding=0, normalize=True, scale_each=True)
    saved = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    expected = saved.reshape(2, RES, 3, RES, 3).transpose(0, 2, 1, 3, 4)
    assert np.abs(official.astype(int) - expected.astype(int)).max() <= 1
    linear = np.stack([np.stack(row) for row in generate._rows(images)])
    assert np.array_equal(linear, stage2_gan.to_uint8(images.flatten(0, 1)).reshape(2, 3, RES, RES, 3))
    assert ((linear.max(axis=(2, 3, 4)) - linear.min(axis=(2, 3, 4))) < 40).all()
    with pytest.raises(ValueError, match="grid scale"):
        generate._rows(images, "stretched")


# The effect of each manipulation, on the trained tiny models. Floating-point tolerances: two code paths that
# compute the same image (another batch composition, a re-normalised unit vector) differ by float32 rounding,
# ~1e-6 here and more on CPUs with other kernels; IMAGE_ATOL is a tenth of one uint8 level of a [-1, 1] image,
# far above that and far below any visible change. Grid cells are uint8, rounded once: they may differ by 1.
IMAGE_ATOL = 2 / 255 / 10


@pytest.fixture(scope="module")
def models(_trained):
    return generate.load_models(_trained, torch.device("cpu"))


@pytest.fixture
def tones():
    t = torch.arange(16000) / 16000  # quiet tones: +12 dB stays inside [-1, 1], so the gain is not clipped
    return torch.stack([0.05 * torch.sin(2 * torch.pi * f * t) for f in (220.0, 440.0, 880.0, 1760.0)])


def _cells(grid: Image.Image, row_labels: list[str], rows: int, cols: int) -> np.ndarray:
    """(rows, cols, R, R, 3) uint8 cells of a labelled grid (layout of generate.labelled_grid)."""
    left, top = max(60, 6 * max(len(s) for s in row_labels) + 8), 16
    a = np.asarray(grid)
    return np.stack([np.stack([a[top + i * (RES + 2):top + i * (RES + 2) + RES, left + j * (RES + 2):
                                 left + j * (RES + 2) + RES] for j in range(cols)]) for i in range(rows)])


def _assert_grid_shows(grid: Image.Image, row_labels: list[str], images: torch.Tensor) -> None:
    """The grid's cells are `images` (rows, cols, 3, R, R), up to the one rounding to uint8."""
    expected = stage2_gan.to_uint8(images.flatten(0, 1)).reshape(*images.shape[:2], RES, RES, 3)
    shown = _cells(grid, row_labels, *images.shape[:2])
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1


def test_gain_moves_the_embedding_monotonically_along_the_volume_direction(models, tones):
    gains = [-12.0, -6.0, 0.0, 6.0, 12.0]
    direction = generate.volume_direction(models, tones, 6.0)
    along = torch.stack([models.embed_audio(tones, g) @ direction for g in gains], dim=1)  # (inputs, gains)
    # the direction is a mean over inputs, and so is the claim: louder -> further along it, step by step; every
    # input's loudest version lies further along than its quietest (a 6-step encoder is not monotonic per input)
    assert (along.mean(0).diff() > 1e-4).all() and (along[:, -1] > along[:, 0] + 1e-4).all()
    z = models.noise(2, 0)
    grid = generate.grid_gain(models, tones[:1], ["t"], gains, 2, 0)
    _assert_grid_shows(grid, ["t z0", "t z1"],
                       torch.stack([models.generate(models.embed_audio(tones[:1], g), z)[0] for g in gains], dim=1))


def test_a_50_50_mix_lies_between_its_parts(models, tones):
    """Along the axis from a's embedding to b's, the embedding of (a + b) / 2 falls strictly inside the segment
    (margin 1e-3; the segment is ~0.035 long on this encoder), for 6 pairs of tones."""
    a, b = tones[[0, 1, 2, 0, 0, 1]], tones[[3, 2, 0, 1, 2, 3]]
    ea, eb, mix = models.embed_audio(a), models.embed_audio(b), models.embed_audio((a + b) / 2)
    axis = eb - ea
    assert ((ea * axis).sum(1) + 1e-3 < (mix * axis).sum(1)).all()
    assert ((mix * axis).sum(1) < (eb * axis).sum(1) - 1e-3).all()
    grid = generate.grid_mix(models, tones[[0, 3]], ["a", "b"], 2, 0)  # the mix row: the summed waveforms
    summed = torch.cat([tones[[0, 3]], (tones[0] + tones[3])[None]])
    _assert_grid_shows(grid, ["a", "b", "mix"], models.generate(models.embed_audio(summed), models.noise(2, 0)))


def test_interpolation_ends_are_the_pure_embeddings(models, tones):
    torch.manual_seed(0)
    image = torch.rand(3, RES, RES) * 2 - 1
    a, v = models.embed_audio(tones[:2]), models.embed_images(image[None])
    z = models.noise(1, 0)
    ends = [torch.nn.functional.normalize((1 - al) * a + al * v, dim=-1) for al in (0.0, 1.0)]
    assert torch.allclose(ends[0], a, atol=1e-6) and torch.allclose(ends[1], v.expand_as(a), atol=1e-6)
    grid = generate.grid_interpolate(models, tones[:2], ["a", "b"], image, [0.0, 0.5, 1.0], 0)
    pure = [models.generate(a, z)[:, 0], models.generate(v.expand_as(a), z)[:, 0]]
    mid = torch.nn.functional.normalize(a + v, dim=-1)
    _assert_grid_shows(grid, ["a", "b"], torch.stack([pure[0], models.generate(mid, z)[:, 0], pure[1]], dim=1))
    assert torch.allclose(models.generate(ends[0], z), models.generate(a, z), rtol=0, atol=IMAGE_ATOL)
    cos_av = (a * v).sum(1)
    assert ((mid * a).sum(1) > cos_av + 1e-4).all() and ((mid * v).sum(1) > cos_av + 1e-4).all()
    for end in pure:  # the midpoint's image is neither end's
        assert ((models.generate(mid, z)[:, 0] - end).abs().amax(dim=(1, 2, 3)) > 10 * IMAGE_ATOL).all()


def test_edit_moves_an_image_embedding_along_the_volume_direction(models, tones):
    torch.manual_seed(1)
    image = torch.rand(3, RES, RES) * 2 - 1
    v, direction = models.embed_images(image[None])[0], generate.volume_direction(models, tones, 6.0)
    strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
    edited = torch.nn.functional.normalize(torch.stack([v + s * direction for s in strengths]), dim=-1)
    assert ((edited @ direction).diff() > 0).all() and torch.allclose(edited[2], v, atol=1e-6)
    z = models.noise(2, 0)
    grid = generate.grid_edit(models, tones, image, strengths, 6.0, 2, 0)
    _assert_grid_shows(grid, ["z0", "z1"], models.generate(edited, z).transpose(0, 1))


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
    pcfg = ProbeConfig(image_size=RES, width=4, steps=60, batch_size=8)
    # (60 probe steps, not 5: a 5-step probe names one category for every image, whatever the image)
    r = gen_eval.run(cfg, pcfg, GenEvalConfig(n_z=2, gains_db="-6,0,6", n_mix_pairs=3))
    saved = json.loads((out / "eval.json").read_text())
    assert saved["r_at_1"] == 0.5  # other evaluations' keys are kept
    for key in ("fd_generated", "class_acc", "class_acc_image_cond", "size_spearman_image_cond",
                "mix_image_cond_frames", "volume_size_spearman", "mix_both_rate", "probe_real_acc"):
        assert key in saved and key in r
    assert np.isfinite(r["fd_generated"]) and r["fd_generated"] > 0
    # class_acc from its definition: the saved probe's most probable category of each image generated from an
    # evaluation clip's audio (gen_eval.n_z per clip, its noise), against the clip's one sounding category (here
    # its label); and mix_both_rate a fraction of the mix_pairs x n_z judged images
    from training.data import resolve_shards
    from training.demo_truth import find_truth
    from training.probe import judge, load_or_train

    m = generate.load_models(out, torch.device("cpu"))
    waves, keys, labels, _ = gen_eval.eval_audio(m, cfg, resolve_shards(cfg.data)[1])
    saved_probe = (out / "probe" / "probe.pt").stat().st_mtime_ns
    probe, _ = load_or_train(cfg, pcfg, find_truth(cfg.data), *resolve_shards(cfg.data))
    assert (out / "probe" / "probe.pt").stat().st_mtime_ns == saved_probe  # gen-eval's probe, reused
    probs, _ = judge(probe, m.generate(m.embed_audio(waves), m.noise(2, 0)).flatten(0, 1), pcfg.image_size)
    hits = probs.argmax(1).view(len(labels), 2) == torch.tensor(labels)[:, None]
    assert r["class_acc"] == pytest.approx(hits.float().mean().item())
    assert r["mix_both_rate"] * 6 == pytest.approx(round(r["mix_both_rate"] * 6))
    # gen_r_at_1 from its definition: each noise vector's image from a clip's audio, in the stage-1 space, is
    # nearer to the clip's real best frame than to the 9 other candidates of evaluate's candidate sets
    from training.evaluate import candidate_sets
    from training.recipes.stage2_gan import load_frames

    real, real_keys, _ = load_frames(cfg, resolve_shards(cfg.data)[1], 1, RES, part="eval")
    e_real = m.embed_images(real[[real_keys.index(k) for k in keys], 0].float().div(127.5).sub(1)).numpy()
    e_gen = m.embed_images(m.generate(m.embed_audio(waves), m.noise(2, 0)).flatten(0, 1)).view(len(keys), 2, -1)
    pools = candidate_sets(len(keys), 10, 0)
    own_nearest = [np.argmin(np.linalg.norm(e_real[pool] - e_gen[i, k].numpy(), axis=1)) == 0
                   for k in range(2) for i, pool in enumerate(pools)]
    assert r["gen_r_at_1"] == pytest.approx(np.mean(own_nearest)) and r["gen_r_at_10"] == 1.0  # N = 10
    assert r["gen_r_at_k_protocol"]["candidates"] == 10 and "generated" in r["gen_r_at_k_protocol"]["query_features"]
    assert r["class_acc_clips"] == 16 and r["mix_pairs"] == 3 and r["generator_step"] == 2
    grid = Image.open(out / "samples.png")
    assert grid.size[1] == 16 + 4 * (RES + 2)  # one row per label (4), real + 2 samples
