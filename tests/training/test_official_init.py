"""The released model as stage initialisers: stage 3 fine-tunes sound2scene.pth, stage 2 starts from the IC-GAN
generator (a small-width IC-GAN folder: its shape comes from the stored config), both on tiny shards with a
(random) SwAV ResNet-50 stage 1, whose 2048-d embeddings the released modules need."""

from __future__ import annotations

import pytest
import torch
from official_fixtures import random_generator, write_generator_folder
from training_fixtures import tiny_config, write_tiny_shards

from training.models.biggan import BigGANGenerator
from training.models.image_encoder import swav_resnet50
from training.models.official_audio import Sound2SceneAudioEncoder
from training.recipes import stage1_image, stage2_gan, stage3_audio


@pytest.fixture(scope="module")
def swav_run(tmp_path_factory):
    """(shards, output folder after a SwAV stage 1, the extra config) on 8 training + 4 test clips."""
    root = tmp_path_factory.mktemp("official_init")
    shards = write_tiny_shards(root / "shards", train_shards=1, per_shard=8, test=4)
    torch.manual_seed(0)
    torch.save({f"module.{k}": v for k, v in swav_resnet50().state_dict().items()}, root / "swav.pth.tar")
    extra = [f"stage1.swav_weights={root / 'swav.pth.tar'}", "stage1.moments=1", "stage3.target_moments=1",
             "stage2.moments=1", "stage1.embed_batch_size=8"]
    stage1_image.run(tiny_config(shards, root / "train", *extra))
    return shards, root / "train", extra


def test_stage3_fine_tunes_the_released_audio_encoder(swav_run, tmp_path):
    shards, out, extra = swav_run
    torch.manual_seed(1)
    released = Sound2SceneAudioEncoder().state_dict()
    torch.save(released, tmp_path / "sound2scene.pth")
    cfg = tiny_config(shards, out, *extra, f"stage3.init_official={tmp_path / 'sound2scene.pth'}",
                      "stage3.steps=2", "stage3.batch_size=4", "stage3.eval_every=2", "runtime.resume=false")
    result = stage3_audio.run(cfg)
    model, meta = stage3_audio.load_audio_encoder(result.last, torch.device("cpu"))
    assert isinstance(model, Sound2SceneAudioEncoder) and meta["step"] == 2
    assert meta["config"]["audio"]["seconds"] == 10.0  # heard as the released encoder was trained
    assert not torch.equal(model.state_dict()["audnet.fc.weight"], released["audnet.fc.weight"])


def test_stage3_initialiser_needs_2048_d_embeddings(stage1_out, tiny_shards, tmp_path, capsys):
    torch.save(Sound2SceneAudioEncoder().state_dict(), tmp_path / "sound2scene.pth")
    argv = ["--shards", str(tiny_shards), "--out", str(stage1_out), "--set", "runtime.device=cpu",
            "--set", f"stage3.init_official={tmp_path / 'sound2scene.pth'}", "--set", "stage1.moments=2"]
    assert stage3_audio.main(argv) == 2
    assert "2048-d" in capsys.readouterr().err


def test_stage2_starts_from_the_released_generator(swav_run, tmp_path):
    shards, out, extra = swav_run
    small = {"G_ch": 4, "resolution": 64}
    released = random_generator(**small)
    folder = write_generator_folder(tmp_path / "icgan_biggan_imagenet_res128", released, **small)
    cfg = tiny_config(shards, out, *extra, f"stage2.init_official={folder}", "stage2.resolution=64",
                      "stage2.batch_size=4", "stage2.embed_consistency=0", "runtime.resume=false")
    result = stage2_gan.train(cfg, cfg.stage2)
    g, meta = stage2_gan.load_generator(result.generator, torch.device("cpu"))
    assert isinstance(g, BigGANGenerator) and g.cfg.ch == 4 and meta["step"] == 2
    assert not torch.equal(g.state_dict()["shared_feat.weight"], released.state_dict()["shared_feat.weight"])
    assert g(torch.randn(1, g.cfg.z_dim), torch.randn(1, 2048)).shape == (1, 3, 64, 64)
