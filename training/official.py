"""The released Sound2Scene model (kaist-ami/Sound2Scene), read from the official files into modules whose
state-dict keys match them exactly (strict loading; any mismatch is a one-line WeightsError).

Release folder (the official repository's `checkpoints/`; docs/official_weights.md):
  DIR/sound2scene.pth                             audio encoder, a bare state dict (`audnet.*`)
  DIR/icgan_biggan_imagenet_res128/G_ema_best{0,1}.pth      IC-GAN BigGAN-128 EMA generators (plain state dicts)
  DIR/icgan_biggan_imagenet_res128/state_dict_best{0,1}.pth their run `config` and `best_FID`: the one with the
                                                  lower best_FID is used, as the official code does
  DIR/swav.pth.tar                                SwAV ResNet-50 (optional: only image embeddings need it,
                                                  i.e. generate's --interpolate / --edit)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.embedding_cache import FrozenEncoder
from training.models.biggan import ARCH, BigGANConfig, BigGANGenerator
from training.models.image_encoder import SWAV_IMAGE_SIZE, ImageEncoderConfig, load_swav_weights, swav_resnet50
from training.models.official_audio import Sound2SceneAudioEncoder
from training.models.weights import WeightsError, load_strict, read_weights

AUDIO_FILE = "sound2scene.pth"
GENERATOR_DIR = "icgan_biggan_imagenet_res128"
SWAV_FILE = "swav.pth.tar"
# IC-GAN's state_dict_best*.pth keeps its run config, which holds the nn.ReLU it built G with, and a numpy
# float best_FID: the only non-tensor objects allowed there (numpy's scalar under its 1.x and 2.x names)
ICGAN_SAFE_GLOBALS = [nn.ReLU, np.dtype, np.dtypes.Float64DType, np._core.multiarray.scalar,
                      (np._core.multiarray.scalar, "numpy.core.multiarray.scalar")]


def load_official_audio_encoder(path: str | Path) -> Sound2SceneAudioEncoder:
    """sound2scene.pth -> the audio encoder in eval mode (on the CPU)."""
    model = Sound2SceneAudioEncoder()
    load_strict(model, read_weights(path, "Sound2Scene audio encoder"), path, "Sound2Scene audio encoder")
    return model.eval()


def biggan_config(config: dict[str, Any], source: Path) -> BigGANConfig:
    """The generator's shape from an IC-GAN run config (missing fields: the released res-128 values)."""
    d = BigGANConfig()
    get = config.get
    unsupported = [f"{k}={get(k)!r}" for k, ok in (
        ("class_cond", not get("class_cond", False)), ("instance_cond", get("instance_cond", True)),
        ("G_shared", get("G_shared", True)), ("G_shared_feat", get("G_shared_feat", True)),
        ("num_G_SVs", get("num_G_SVs", 1) == 1), ("norm_style", get("norm_style", "bn") == "bn"),
        ("mybn", not get("mybn", False)), ("cross_replica", not get("cross_replica", False)),
        ("resolution", get("resolution", d.resolution) in ARCH)) if not ok]
    if unsupported:
        raise WeightsError(f"{source}: an IC-GAN generator this loader does not build ({', '.join(unsupported)})")
    dim_z = int(get("dim_z", d.dim_z))
    return BigGANConfig(resolution=int(get("resolution", d.resolution)), ch=int(get("G_ch", d.ch)), dim_z=dim_z,
                        hier=bool(get("hier", d.hier)), attention=str(get("G_attn", d.attention)),
                        shared_dim=int(get("shared_dim", d.shared_dim)) or dim_z,
                        shared_dim_feat=int(get("shared_dim_feat", d.shared_dim_feat)),
                        n_classes=int(get("n_classes", d.n_classes)), bn_eps=float(get("BN_eps", d.bn_eps)),
                        sn_eps=float(get("SN_eps", d.sn_eps)))


def choose_generator(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """(G_ema_best<k>.pth, its run config) for the k in {0, 1} whose state_dict_best<k>.pth has the lower
    best_FID (the official inference code's choice)."""
    folder = Path(folder)
    best: tuple[float, str, dict] | None = None
    for name in ("best0", "best1"):
        path = folder / f"state_dict_{name}.pth"
        if not path.is_file():
            continue
        state = read_weights(path, "IC-GAN state dict", ICGAN_SAFE_GLOBALS)
        if not isinstance(state, dict) or "best_FID" not in state:
            raise WeightsError(f"{path} has no best_FID: not an IC-GAN state_dict_best file")
        fid = float(state["best_FID"])
        if best is None or fid < best[0]:
            best = (fid, name, state.get("config") or {})
    if best is None:
        raise WeightsError(f"no state_dict_best0.pth or state_dict_best1.pth in {folder} (the IC-GAN folder "
                           f"{GENERATOR_DIR}/ of the release)")
    return folder / f"G_ema_{best[1]}.pth", best[2]


def load_official_generator(folder: str | Path) -> BigGANGenerator:
    """The IC-GAN folder -> the chosen EMA generator in eval mode (on the CPU)."""
    path, config = choose_generator(folder)
    if not isinstance(config, dict):
        raise WeightsError(f"{folder}: the stored config is a {type(config).__name__}, not a dict")
    g = BigGANGenerator(biggan_config(config, path))
    load_strict(g, read_weights(path, "IC-GAN generator"), path, "IC-GAN BigGAN generator")
    return g.eval()


def load_official_swav(path: str | Path, device: torch.device) -> FrozenEncoder:
    """swav.pth.tar -> the frozen SwAV ResNet-50 (2048-d) as generate's image encoder."""
    model = swav_resnet50()
    load_swav_weights(model, path)
    model.eval().requires_grad_(False).to(device)
    return FrozenEncoder(model, ImageEncoderConfig("swav", SWAV_IMAGE_SIZE), "", model.out_dim)


def release_paths(folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (the release layout: docs/official_weights.md)")
    return {"audio": folder / AUDIO_FILE, "generator": folder / GENERATOR_DIR, "swav": folder / SWAV_FILE}

