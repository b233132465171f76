"""Stage 2: generator/discriminator shapes, DiffAugment, EMA warm-up, and a tiny GAN run with resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from training_fixtures import tiny_config

from training.checkpoint import load_checkpoint
from training.config_gan import Stage2Config
from training.models.gan import Discriminator, GANConfig, Generator, update_ema
from training.recipes import stage2_gan

TINY_GAN = dict(resolution=32, z_dim=8, shared_dim=8, g_width=8, d_width=8, batch_size=8, log_every=1,
                sample_every=2, checkpoint_every=2, standing_stats_batches=1, max_minutes=0.0)


@pytest.mark.parametrize("resolution", [64, 128])
def test_generator_and_discriminator_shapes(resolution):
    cfg = GANConfig(resolution=resolution, embed_dim=32, z_dim=16, shared_dim=8, g_width=4, d_width=4)
    g, d = Generator(cfg), Discriminator(cfg)
    emb = torch.nn.functional.normalize(torch.randn(3, 32), dim=1)
    z = torch.randn(3, 16)
    images = g(z, emb)
    assert images.shape == (3, 3, resolution, resolution)
    g.eval()  # per-sample outputs: the noise and the embedding each change the image
    assert not torch.allclose(g(z, emb), g(z.roll(1, dims=0), emb), atol=1e-4)
    assert not torch.allclose(g(z, emb), g(z, emb.roll(1, dims=0)), atol=1e-4)
    assert d(images, emb).shape == (3,)
    assert cfg.n_blocks == {64: 4, 128: 5}[resolution]
    assert GANConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError, match="resolution"):
        GANConfig(resolution=96)


def test_projection_term_uses_the_embedding():
    cfg = GANConfig(resolution=32, embed_dim=16, g_width=4, d_width=4)
    d = Discriminator(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    e = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    assert not torch.allclose(d(x, e), d(x, -e))


def test_diff_augment_keeps_shape_and_gradient():
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    y = stage2_gan.diff_augment(x, "translation,cutout,color")
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(stage2_gan.diff_augment(x, ""), x)


def test_ema_warm_up():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert update_ema(a, b, 0, 0.999) == pytest.approx(0.1)  # early steps follow the model closely
    assert update_ema(a, b, 10_000, 0.999) == pytest.approx(0.999)


def test_embedding_consistency_prefers_the_frames_own_embedding(stage1_out, tiny_shards):
    cfg = tiny_config(tiny_shards, stage1_out)
    frames, emb, encoder = stage2_gan.training_set(cfg, Stage2Config(**{**TINY_GAN, "resolution": 32}),
                                                   torch.device("cpu"))
    own = stage2_gan.embedding_consistency(encoder, frames, emb)
    shuffled = stage2_gan.embedding_consistency(encoder, frames, emb.roll(1, dims=0))
    assert own < 0.01 < shuffled  # the cache's embeddings are of these very frames
    images = frames.clone().requires_grad_(True)
    stage2_gan.embedding_consistency(encoder, images, emb.roll(1, dims=0)).backward()
    assert images.grad.abs().sum() > 0  # it trains G through the frozen encoder


def test_tiny_gan_run_is_finite_has_ema_and_resumes(stage1_out, tiny_shards):
    cfg = tiny_config(tiny_shards, stage1_out)
    result = stage2_gan.train(cfg, Stage2Config(steps=3, **TINY_GAN))
    stage_dir = stage1_out / "stage2"
    assert result.step == 3 and result.generator.is_file()
    records = [json.loads(line) for line in (stage_dir / "loss.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss_d" in r]
    assert len(losses) == 3
    assert all(np.isfinite(r[k]) for r in losses for k in ("loss_d", "loss_g", "d_real", "d_fake", "loss_embed"))
    state = load_checkpoint(stage_dir / "last.pt")
    raw, ema = state["g"], state["g_ema"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point() and "orig" in k)
    grid = Image.open(stage_dir / "samples_000002.png")
    assert grid.size == (8 * 34 + 2, 8 * 34 + 2)  # 8 rows of real + 7 samples, 32 px + 2 px gaps
    generator, meta = stage2_gan.load_generator(result.generator, torch.device("cpu"))
    assert meta["step"] == 3 and generator.cfg.resolution == 32
    resumed = stage2_gan.train(cfg, Stage2Config(steps=4, **TINY_GAN))
    assert resumed.step == 4
    assert load_checkpoint(stage_dir / "last.pt")["step"] == 4


def test_a_resumed_gan_starts_from_last_pt_and_trains_only_the_missing_steps(stage1_out, tiny_shards, monkeypatch):
    cfg = tiny_config(tiny_shards, stage1_out)
    stage2_gan.train(cfg, Stage2Config(steps=3, **TINY_GAN))
    saved = load_checkpoint(stage1_out / "stage2" / "last.pt")
    seen, step = [], stage2_gan.gan_step

    def spy(n, *args):
        seen.append({"g": copy.deepcopy(n.g.state_dict()), "d": copy.deepcopy(n.disc.state_dict()),
                     "g_ema": copy.deepcopy(n.g_ema.state_dict())})
        return step(n, *args)

    monkeypatch.setattr(stage2_gan, "gan_step", spy)
    stage2_gan.train(cfg, Stage2Config(steps=5, **TINY_GAN))
    assert len(seen) == 2  # steps 4 and 5
    for name in ("g", "d", "g_ema"):
        assert all(torch.equal(seen[0][name][k], v) for k, v in saved[name].items()), name


def test_the_time_cap_is_a_guard_that_warns_and_resume_reaches_the_planned_steps(stage1_out, tiny_shards, capsys):
    cfg = tiny_config(tiny_shards, stage1_out)
    capped = stage2_gan.train(cfg, Stage2Config(steps=1000, **{**TINY_GAN, "max_minutes": 1e-4}))  # 6 ms
    assert capped.time_capped and 1 <= capped.step < 1000 and capped.planned == 1000
    assert "STOPPED BY THE TIME CAP" in capped.summary()
    assert f"WARNING: stage2 stopped by its time cap (0.0001 min) at step {capped.step} of 1000" in \
        capsys.readouterr().err
    rec = json.loads((stage1_out / "stage2" / "budget.json").read_text())
    assert rec["stopped_by"] == "time_cap" and rec["steps_reached"] == capped.step
    done = stage2_gan.train(cfg, Stage2Config(steps=capped.step + 2, **TINY_GAN))  # no cap: the planned steps
    assert not done.time_capped and done.step == capped.step + 2
    assert json.loads((stage1_out / "stage2" / "budget.json").read_text())["stopped_by"] == "steps"
