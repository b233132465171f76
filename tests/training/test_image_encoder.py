import random

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from training_fixtures import tiny_config

from training.checkpoint import ResumeError, read_jsonl
from training.embedding_cache import cache_file, load_encoder
from training.models.image_encoder import WeightsError, load_swav_weights, swav_resnet50
from training.recipes import stage1_image
from training.recipes.stage1_image import BackgroundSwap


def _swav_file(path, drop: str | None = None, wrap: bool = False):
    """A state dict laid out like SwAV's released swav_800ep_pretrain.pth.tar: DDP `module.` prefixes and the
    projection head / prototypes next to the ResNet-50 trunk."""
    torch.manual_seed(0)
    trunk = torchvision.models.resnet50(weights=None).state_dict()
    state = {f"module.{k}": v for k, v in trunk.items()
             if not k.startswith("fc.") and not (drop and k.startswith(drop))}
    state["module.projection_head.0.weight"] = torch.randn(2048, 2048)
    state["module.projection_head.3.weight"] = torch.randn(128, 2048)
    state["module.prototypes.weight"] = torch.randn(3000, 128)
    torch.save({"state_dict": state, "epoch": 800} if wrap else state, path)
    return trunk


def test_a_swav_layout_state_dict_loads(tmp_path):
    trunk = _swav_file(tmp_path / "swav.pth.tar", wrap=True)
    model = swav_resnet50()
    load_swav_weights(model, tmp_path / "swav.pth.tar")
    assert torch.equal(model.state_dict()["layer4.2.conv3.weight"], trunk["layer4.2.conv3.weight"])
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2048)


def test_a_broken_swav_file_fails_naming_the_missing_trunk_keys(tmp_path):
    _swav_file(tmp_path / "broken.pth.tar", drop="layer4.")
    with pytest.raises(WeightsError, match=r"missing keys: layer4\.0\.bn1\.bias"):
        load_swav_weights(swav_resnet50(), tmp_path / "broken.pth.tar")
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read SwAV weights"):
        load_swav_weights(swav_resnet50(), tmp_path / "junk.pth.tar")


def test_stage1_with_swav_weights_caches_2048_d_unit_embeddings(tiny_shards, tmp_path):
    _swav_file(tmp_path / "swav.pth.tar")
    cfg = tiny_config(tiny_shards, tmp_path / "out", f"stage1.swav_weights={tmp_path / 'swav.pth.tar'}",
                      "stage1.moments=1", "stage3.target_moments=1", f"data.shards={tiny_shards}/tiny-test-000000.tar")
    result = stage1_image.run(cfg)
    with np.load(result.cache[0]) as z:
        emb, keys = z["emb"], z["keys"]
    assert emb.shape == (16, 1, 2048) and keys[0] == "tiny00048"
    assert np.allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-5)
    assert load_encoder(cfg.out, torch.device("cpu")).cfg.kind == "swav"


def test_stage1_self_supervised_loss_decreases_and_embeddings_are_cached(stage1_out, tiny_shards):
    log = read_jsonl(stage1_out / "stage1" / "loss.jsonl")
    assert [r["step"] for r in log] == [2, 4, 6]
    assert log[-1]["loss"] < log[0]["loss"]
    cfg = tiny_config(tiny_shards, stage1_out)
    encoder = load_encoder(cfg.out, torch.device("cpu"))
    with np.load(cache_file(cfg.out, encoder, str(tiny_shards / "tiny-test-000000.tar"), 2)) as z:
        assert z["emb"].shape == (16, 2, 64) and z["present"].all()
        assert np.allclose(np.linalg.norm(z["emb"], axis=-1), 1, atol=1e-5)
        assert list(z["splits"]) == ["test"] * 16


def test_a_rerun_reuses_the_frozen_encoder_and_its_cache(stage1_out, tiny_shards):
    cfg = tiny_config(tiny_shards, stage1_out)
    before = {p: p.stat().st_mtime_ns for p in (stage1_out / "stage1").rglob("*") if p.is_file()}
    stage1_image.run(cfg)
    after = {p: p.stat().st_mtime_ns for p in (stage1_out / "stage1").rglob("*") if p.is_file()}
    assert before == after
    with pytest.raises(ResumeError, match=r"encoder.pt was made with other options \(differing: width\)"):
        stage1_image.run(tiny_config(tiny_shards, stage1_out, "stage1.width=4"))


def test_background_swap_keeps_the_moving_object_and_takes_another_clips_background():
    swap = BackgroundSwap(random.Random(0))
    other = np.full((40, 50, 3), 30, np.uint8)
    swap([Image.fromarray(other)] * 3)  # a first clip: its background (no moving object) joins the pool
    frames = []
    for x in (2, 18, 34):  # a red square moving over a grey background
        f = np.full((40, 50, 3), 128, np.uint8)
        f[10:20, x:x + 10] = (220, 40, 40)
        frames.append(Image.fromarray(f))
    views = [np.asarray(v) for v in swap(frames)]
    assert (views[1][10:20, 18:28] == (220, 40, 40)).all()  # the object stays where it was
    assert (views[1][30:, :] == 30).all()  # the rest is the other clip's background
    assert len(swap.pool) == 2 and (np.asarray(swap.pool[-1]) == 128).all()  # median = this clip's background


def test_supervised_contrastive_term_pulls_same_label_views_together():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    grouped = torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]])
    mixed = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]])
    assert stage1_image.sup_con(grouped, grouped, labels, 0.2) < stage1_image.sup_con(mixed, mixed, labels, 0.2)
