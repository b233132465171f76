"""Synthetic Sound2Scene releases: random weights in exactly the official files' layouts (FORMATS.md "Sound2Scene
release"), written the way the official code saves them (bare state dicts; IC-GAN's state_dict_best*.pth with its
run config, which holds nn.ReLU objects, and a numpy best_FID)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.models.biggan import BigGANConfig, BigGANGenerator
from training.models.image_encoder import swav_resnet50
from training.models.official_audio import Sound2SceneAudioEncoder

ICGAN_CONFIG = {  # the fields of icgan_biggan_imagenet_res128's stored config that shape G
    "experiment_name": "icgan_biggan_imagenet_res128", "G_ch": 96, "dim_z": 120, "hier": True,
    "resolution": 128, "G_attn": "64", "shared_dim": 128, "shared_dim_feat": 512, "G_shared": True,
    "G_shared_feat": True, "class_cond": False, "instance_cond": True, "n_classes": 1000, "BN_eps": 1e-5,
    "SN_eps": 1e-12, "num_G_SVs": 1, "norm_style": "bn", "mybn": False, "cross_replica": False, "z_var": 1.0,
}


def random_generator(**config) -> BigGANGenerator:
    """A BigGAN generator with random weights and random stored batch-norm statistics."""
    torch.manual_seed(0)
    cfg = {**ICGAN_CONFIG, **config}
    g = BigGANGenerator(BigGANConfig(resolution=cfg["resolution"], ch=cfg["G_ch"], dim_z=cfg["dim_z"]))
    with torch.no_grad():
        for name, buf in g.named_buffers():
            if name.endswith("stored_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("stored_mean"):
                buf.normal_(0, 0.1)
        for block in g.blocks:
            if len(block) > 1:
                block[1].gamma.fill_(0.3)  # attention switched on
    return g.eval()


def write_generator_folder(folder: Path, generator: BigGANGenerator, fids: tuple[float, float] = (12.5, 8.25),
                           **config) -> Path:
    """icgan_biggan_imagenet_res128/: the generator as G_ema_best<k> of the lower FID; the other G_ema file is
    not a generator at all, so choosing it would fail."""
    folder.mkdir(parents=True, exist_ok=True)
    best = int(np.argmin(fids))
    for k, fid in enumerate(fids):
        stored = {**ICGAN_CONFIG, **config, "G_activation": nn.ReLU(inplace=False),
                  "D_activation": nn.ReLU(inplace=False)}
        torch.save({"itr": 1000, "epoch": 3, "best_IS": np.float64(50.0), "best_FID": np.float64(fid),
                    "config": stored}, folder / f"state_dict_best{k}.pth")
        torch.save(generator.state_dict() if k == best else {"not": torch.zeros(1)}, folder / f"G_ema_best{k}.pth")
    return folder


def write_release(folder: Path, generator: BigGANGenerator, swav: bool = False) -> Path:
    """DIR/sound2scene.pth, DIR/icgan_biggan_imagenet_res128/, optionally DIR/swav.pth.tar (`module.` keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    torch.save(Sound2SceneAudioEncoder().state_dict(), folder / "sound2scene.pth")
    write_generator_folder(folder / "icgan_biggan_imagenet_res128", generator)
    if swav:
        state = {f"module.{k}": v for k, v in swav_resnet50().state_dict().items()}
        torch.save(state, folder / "swav.pth.tar")
    return folder
