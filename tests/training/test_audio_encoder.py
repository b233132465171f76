import copy

import numpy as np
import pytest
import torch
from training_fixtures import tiny_config

from training.checkpoint import ResumeError, load_checkpoint, read_jsonl
from training.data import resolve_shards
from training.recipes import stage3_audio
from training.recipes.stage3_audio import audio_batches, info_nce_l2, load_audio_encoder


def test_info_nce_l2_is_the_official_symmetric_loss():
    torch.manual_seed(0)
    a, v = torch.randn(5, 8), torch.randn(5, 8)
    an, vn = a / a.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
    dist = ((an[:, None] - vn[None]) ** 2).sum(-1).sqrt()
    rows = -torch.log_softmax(-dist / 0.5, dim=1).diag().mean()
    cols = -torch.log_softmax(-dist / 0.5, dim=0).diag().mean()
    assert torch.allclose(info_nce_l2(a, v, 0.5), (rows + cols) / 2, atol=1e-5)
    assert torch.allclose(info_nce_l2(a, v, 0.5, l2_weight=2.0),
                          (rows + cols) / 2 + 2.0 * (dist.diag() ** 2).mean(), atol=1e-5)
    assert info_nce_l2(v, v, 0.1) < info_nce_l2(a, v, 0.1)


def test_loss_decreases_on_a_tiny_run(stage1_out, tiny_shards):
    cfg = tiny_config(tiny_shards, stage1_out, "stage3.steps=30", "stage3.eval_every=30", "stage3.log_every=5",
                      "stage3.target_moments=1")
    result = stage3_audio.run(cfg)
    train = [r["loss"] for r in read_jsonl(stage1_out / "stage3" / "loss.jsonl") if "loss" in r]
    assert result.step == 30 and len(train) == 6
    assert np.mean(train[-2:]) < 0.8 * train[0]


def test_a_loaded_checkpoint_gives_the_trained_models_embeddings(stage1_out, tiny_shards):
    """last.pt, loaded, embeds like the encoder the training left in memory: nothing (weights, batch-norm
    statistics, the global audio statistics, the config that rebuilds the model) is lost on the way."""
    cfg = tiny_config(tiny_shards, stage1_out)
    result = stage3_audio.run(cfg)
    batch = next(iter(audio_batches(resolve_shards(cfg.data)[1], cfg, "eval", 16)))
    loaded, meta = load_audio_encoder(result.last, torch.device("cpu"))
    with torch.no_grad():
        a, trained = loaded(batch["wave"]), result.model.eval()(batch["wave"])
    assert torch.equal(a, trained) and a.shape == (16, 64)
    assert meta["step"] == result.step == 6
    assert torch.allclose(a.norm(dim=1), torch.ones(16), atol=1e-5)
    stats = load_checkpoint(result.best)["model"]
    assert bool(stats["front.stats_ready"]) and stats["front.mean"].shape == (257,)  # saved with the model
    best, best_meta = load_audio_encoder(result.best, torch.device("cpu"))
    assert best_meta["step"] in (3, 6) and best_meta["best_val"] == result.best_val
    assert torch.equal(best.front.mean, loaded.front.mean)  # one set of statistics for the whole run


def test_a_resumed_run_starts_from_last_pt_and_trains_only_the_missing_steps(stage1_out, tiny_shards, monkeypatch):
    stage3_audio.run(tiny_config(tiny_shards, stage1_out, "stage3.steps=3"))
    first = load_checkpoint(stage1_out / "stage3" / "last.pt")
    started, losses = {}, []
    begin, loss = stage3_audio.AudioStage.begin, stage3_audio.global_batch_loss

    def begin_spy(stage, step):
        started.update(step=step, model=copy.deepcopy(stage.model.state_dict()),
                       optimizer=copy.deepcopy(stage.opt.state_dict()["state"]))
        begin(stage, step)

    monkeypatch.setattr(stage3_audio.AudioStage, "begin", begin_spy)
    monkeypatch.setattr(stage3_audio, "global_batch_loss", lambda *a: losses.append(1) or loss(*a))
    stage3_audio.run(tiny_config(tiny_shards, stage1_out, "stage3.steps=6"))
    assert started["step"] == 3 and len(losses) == 3
    assert all(torch.equal(started["model"][k], v) for k, v in first["model"].items())
    assert torch.equal(started["optimizer"][0]["exp_avg"], first["optimizer"]["state"][0]["exp_avg"])


def test_resume_continues_the_step_count(stage1_out, tiny_shards):
    stage3_audio.run(tiny_config(tiny_shards, stage1_out, "stage3.steps=3"))
    first = load_checkpoint(stage1_out / "stage3" / "last.pt")
    result = stage3_audio.run(tiny_config(tiny_shards, stage1_out, "stage3.steps=6"))
    assert first["step"] == 3 and result.step == 6
    steps = [r["step"] for r in read_jsonl(stage1_out / "stage3" / "loss.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # continued, nothing repeated
    resumed = load_checkpoint(stage1_out / "stage3" / "last.pt")
    assert torch.equal(resumed["model"]["front.mean"], first["model"]["front.mean"])  # statistics kept
    again = stage3_audio.run(tiny_config(tiny_shards, stage1_out, "stage3.steps=6"))
    assert again.step == 6  # already done: nothing to train


def test_resume_refuses_a_checkpoint_of_another_model(stage1_out, tiny_shards):
    stage3_audio.run(tiny_config(tiny_shards, stage1_out, "stage3.steps=3"))
    with pytest.raises(ResumeError, match="differing: width"):
        stage3_audio.run(tiny_config(tiny_shards, stage1_out, "stage3.steps=6", "stage3.width=4"))


def test_stage3_needs_stage1(tiny_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m training stage1` first"):
        stage3_audio.run(tiny_config(tiny_shards, tmp_path / "nothing"))


def test_a_checkpoint_from_before_audio_crop_is_heard_as_the_clip_it_was_trained_on():
    import dataclasses

    from training.config import AudioConfig
    from training.models.audio_encoder import AudioEncoderConfig

    saved = {"audio": {k: v for k, v in dataclasses.asdict(AudioConfig(seconds=10.0)).items() if k != "crop"},
             "width": 8, "embed_dim": 16}
    assert AudioEncoderConfig.from_dict(saved).audio.crop == "clip"
    current = AudioEncoderConfig(AudioConfig(), 8, 16).to_dict()
    assert AudioEncoderConfig.from_dict(current).audio.crop == "moment"
