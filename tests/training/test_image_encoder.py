import copy
import io
import random

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T1
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
import webdataset as wds
from PIL import Image, ImageDraw
from training_fixtures import tiny_config

from training import generate
from training.checkpoint import ResumeError, load_checkpoint, read_jsonl
from training.data import IMAGE_MEAN, IMAGE_STD, imagenet_input, imagenet_normalise
from training.embedding_cache import cache_file, embed_transform, load_encoder
from training.models.image_encoder import (
    ImageEncoderConfig,
    WeightsError,
    embed,
    encoder_input,
    load_swav_weights,
    swav_resize,
    swav_resnet50,
)
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
    shard = tiny_shards / "tiny-test-000000.tar"
    cfg = tiny_config(tiny_shards, tmp_path / "out", f"stage1.swav_weights={tmp_path / 'swav.pth.tar'}",
                      "stage1.moments=1", "stage3.target_moments=1", f"data.shards={shard}")
    result = stage1_image.run(cfg)
    with np.load(result.cache[0]) as z:
        emb, keys = z["emb"], z["keys"]
    assert emb.shape == (16, 1, 2048) and keys[0] == "tiny00048"
    assert np.allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-5)
    encoder = load_encoder(cfg.out, torch.device("cpu"))
    assert encoder.cfg.kind == "swav"
    # the cached embedding is the encoder's on the official preparation of the full-resolution frame (the jpg),
    # not on the earlier one (a single resize to 224). This random-weight ResNet-50 barely tells the two apart
    # (7e-5 here, against 2e-8 for the same preparation in another batch), hence the relative test
    sample = next(iter(wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples())))
    frame = T.PILToTensor()(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))

    def embedding(x: torch.Tensor) -> np.ndarray:
        return embed(encoder.model, imagenet_normalise(x[None].float() / 255))[0].numpy()

    official, straight = embedding(swav_resize(frame)), embedding(TF.resize(frame, [224, 224], antialias=True))
    off_official, off_straight = np.abs(emb[0, 0] - official).max(), np.abs(emb[0, 0] - straight).max()
    assert off_official < 1e-5 and off_official < off_straight / 100
    # the cache is keyed by that preparation: a cache of the earlier one (the bare encoder hash) is not reused
    assert result.cache[0].parent.name == f"{encoder.sha256[:16]}-r256b224"
    stale = result.cache[0].parent.with_name(encoder.sha256[:16]) / result.cache[0].name
    stale.parent.mkdir()
    np.savez(stale, keys=keys, emb=np.zeros_like(emb))
    result.cache[0].unlink()
    again = stage1_image.run(cfg)
    assert again.cache == result.cache
    with np.load(again.cache[0]) as z:
        assert np.abs(z["emb"][0, 0] - official).max() < 1e-5


def _structured_frame() -> Image.Image:
    """A 398 x 224 frame (the curated frames' short side): colour gradients, a 3-px checkerboard, 2-px stripes,
    a 1-px line, a disc and text: every frequency where a resize can go wrong."""
    h, w = 224, 398
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), ((x // 3 + y // 3) % 2) * 255], -1)
    a[:, 300:] = ((x[:, 300:] // 2) % 2 * 255)[..., None]
    a[60:160, 100] = 255
    img = Image.fromarray(a.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 20, 90, 200), fill=(250, 10, 10))
    draw.text((120, 100), "Sound2Scene", fill=(0, 0, 0))
    return img


def _official(img: Image.Image) -> np.ndarray:
    """The official training's PIL transforms before ToTensor: Resize((256, 256)), then bicubic to 224."""
    resized = T1.Resize((224, 224), interpolation=T1.InterpolationMode.BICUBIC)(T1.Resize((256, 256))(img))
    return np.asarray(resized).astype(int)


def test_swav_resize_is_the_official_256_then_bicubic_224_preparation():
    img = _structured_frame()
    official = _official(img)
    frame = T.PILToTensor()(img)
    ours = swav_resize(frame)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 224, 224)
    assert np.abs(ours.permute(1, 2, 0).numpy().astype(int) - official).max() <= 1
    x = (frame.float() / 255).requires_grad_()
    ours_float = swav_resize(x)
    ours_float.sum().backward()  # differentiable: stage 2 trains the generator through it
    assert x.grad is not None and ours_float.dtype == torch.float32
    assert np.abs(ours_float.detach().mul(255).permute(1, 2, 0).numpy() - official).max() <= 2
    batch = swav_resize(torch.stack([frame, frame.flip(-1)]))
    assert batch.shape == (2, 3, 224, 224) and torch.equal(batch[0], ours)
    # the earlier preparation, one resize straight to 224, is far from it (mean 8 grey levels on this frame)
    straight = TF.resize(frame, [224, 224], antialias=True).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(straight - official).mean() > 3


def test_the_swav_encoder_prepares_frames_with_swav_resize_and_the_small_one_as_before(tmp_path):
    img = _structured_frame()
    frame = T.PILToTensor()(img)
    swav, small = ImageEncoderConfig("swav", 224), ImageEncoderConfig("small", 32, 8)
    # the embedding cache: decoded frames (PIL)
    expected = imagenet_normalise(swav_resize(frame)[None].float() / 255)[0]
    assert torch.allclose(embed_transform(swav)(img), expected, atol=1e-6)
    before = T.Compose([T.Resize((32, 32), antialias=True), T.PILToTensor(), T.ToDtype(torch.float32, scale=True),
                        T.Normalize(IMAGE_MEAN, IMAGE_STD)])
    assert torch.equal(embed_transform(small)(img), before(img))
    # generated or decoded images in [-1, 1] (stage 2's embedding consistency, generate's image embeddings)
    images = frame[None].float() / 127.5 - 1
    from_images = encoder_input(images, swav)
    assert torch.allclose(from_images, imagenet_normalise(swav_resize(frame[None].float() / 255)), atol=1e-5)
    assert (from_images - expected[None]).abs().max() < 2 / 255 / min(IMAGE_STD)  # within ~1 grey level
    assert (from_images - imagenet_input(images, 224)).abs().mean() > 0.05  # not the straight resize
    assert torch.equal(encoder_input(images, small), imagenet_input(images, 32))
    # generate's --interpolate / --edit image: the whole frame for SwAV (size None), not squashed to the
    # generator's resolution first
    img.save(tmp_path / "frame.png")
    assert torch.equal(generate.load_image(str(tmp_path / "frame.png"), None, None), images[0])
    assert generate.load_image(str(tmp_path / "frame.png"), None, 32).shape == (3, 32, 32)


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


def test_a_killed_stage1_resumes_from_train_state(tiny_shards, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_shards, tmp_path / "out", "stage1.checkpoint_every=3")
    stage_dir = tmp_path / "out" / "stage1"
    step, begin, started = stage1_image.SimCLRStage.step, stage1_image.SimCLRStage.begin, {}

    def killed(stage, i):
        if i == 4:
            raise RuntimeError("killed")
        return step(stage, i)

    monkeypatch.setattr(stage1_image.SimCLRStage, "step", killed)
    with pytest.raises(RuntimeError, match="killed"):
        stage1_image.run(cfg)
    saved = load_checkpoint(stage_dir / "train_state.pt")
    assert saved["step"] == 3 and not (stage_dir / "encoder.pt").exists()

    def begin_spy(stage, i):
        started.update(step=i, model=copy.deepcopy(stage.model.state_dict()))
        begin(stage, i)

    monkeypatch.setattr(stage1_image.SimCLRStage, "step", step)
    monkeypatch.setattr(stage1_image.SimCLRStage, "begin", begin_spy)
    stage1_image.run(cfg)
    assert started["step"] == 3 and all(torch.equal(started["model"][k], v) for k, v in saved["model"].items())
    assert [r["step"] for r in read_jsonl(stage_dir / "loss.jsonl")] == [2, 4, 6]  # 4 re-logged, once
    assert load_checkpoint(stage_dir / "encoder.pt")["step"] == 6


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
