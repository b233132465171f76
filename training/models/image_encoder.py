"""Stage 1 image encoders: a frozen SwAV ResNet-50 (2048-d) from a user's weights file, or a small CNN trained
self-supervised on the shard frames. Both map (batch, 3, S, S) ImageNet-normalised images to pooled features;
embeddings are their L2-normalised values. How a frame becomes that input depends on the kind: `swav_resize`
(the official Sound2Scene preparation) for SwAV, a single squashing resize for the small encoder
(`encoder_input`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms.v2 import InterpolationMode

from training.data import imagenet_input, imagenet_normalise
from training.models.blocks import ResNetTrunk
from training.models.weights import WeightsError as WeightsError  # re-exported: the error of every loader
from training.models.weights import load_strict, read_weights

SWAV_HEADS = ("projection_head.", "prototypes.")  # SwAV's training heads: not part of the trunk
SWAV_RESIZE = 256  # the official first step: Resize((256, 256)), the whole frame squashed to a square
SWAV_IMAGE_SIZE = 224  # then a bicubic resize to the network's input size
SWAV_PREPROCESSING = "r256b224"  # names that preparation where it keys stored results (the embedding cache)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """What rebuilds an encoder from a checkpoint: kind "small" (width, image_size) or "swav"."""

    kind: str
    image_size: int
    width: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def preprocessing(self) -> str:
        """A tag of how frames are prepared for this encoder, where it is not the original one ("" for small)."""
        return SWAV_PREPROCESSING if self.kind == "swav" else ""

    @classmethod
    def from_dict(cls, d: dict) -> ImageEncoderConfig:
        return cls(str(d["kind"]), int(d["image_size"]), int(d["width"]))


class SmallImageEncoder(nn.Module):
    """A 4-stage BasicBlock CNN for small images (3x3 stride-2 stem): feature dimension 8 x width."""

    def __init__(self, width: int):
        super().__init__()
        # a stride-2 stem: 64 px -> 32 px before the first stage, CPU-sized
        self.trunk = ResNetTrunk(3, width, (1, 1, 1, 1), stem="small", stem_stride=2)
        self.out_dim = self.trunk.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


def swav_resnet50() -> nn.Module:
    """torchvision's ResNet-50 layout (SwAV's trunk uses the same names) without the classifier."""
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    model.out_dim = 2048
    return model


def load_swav_weights(model: nn.Module, path: str | Path) -> None:
    """Load a swav.pth.tar-style file into a `swav_resnet50`: the state dict (or its "state_dict" entry),
    `module.` prefixes stripped, projection/prototype heads ignored; missing or misshapen trunk keys are an
    error naming them."""
    loaded = read_weights(path, "SwAV weights")
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    load_strict(model, {k: v for k, v in state.items() if not k.startswith(SWAV_HEADS)}, path, "SwAV ResNet-50")


def build_image_encoder(cfg: ImageEncoderConfig) -> nn.Module:
    if cfg.kind == "swav":
        return swav_resnet50()
    if cfg.kind == "small":
        return SmallImageEncoder(cfg.width)
    raise ValueError(f"unknown image encoder kind {cfg.kind!r}")


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised pooled features of a batch of prepared images."""
    return F.normalize(model(images).float(), dim=-1)


def swav_resize(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) frames, uint8 or float in [0, 1] -> (..., 3, 224, 224) of the same dtype, prepared as the
    official Sound2Scene training prepares frames for its SwAV ResNet-50 (before ToTensor and Normalize):

        transforms.Resize((256, 256))                                  # whole frame, aspect not kept
        transforms.Resize(224, interpolation=InterpolationMode.BICUBIC)

    i.e. torchvision's default Resize (bilinear, antialiased: PIL's filter) to 256 x 256, then an antialiased
    bicubic resize (PIL's a = -0.5 kernel) to 224 x 224. The bicubic step runs as PIL's does, width then height,
    each pass clamped to the pixel range (its overshoot at edges saturates). uint8 input is rounded after each
    pass as the PIL images are: within 1 grey level of the PIL transforms; float input stays differentiable
    (unrounded, within 1-2 levels)."""
    x = TF.resize(images, [SWAV_RESIZE, SWAV_RESIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)
    for size in ([SWAV_RESIZE, SWAV_IMAGE_SIZE], [SWAV_IMAGE_SIZE, SWAV_IMAGE_SIZE]):
        x = TF.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        if x.dtype != torch.uint8:  # uint8 passes are clamped by the conversion
            x = x.clamp(0, 1)
    return x


def encoder_input(images: torch.Tensor, cfg: ImageEncoderConfig) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] (generated or decoded) -> the encoder's ImageNet-normalised input:
    `swav_resize` for SwAV; for the small encoder one antialiased bilinear resize to its image_size
    (`imagenet_input`). Differentiable."""
    if cfg.kind == "swav":
        return imagenet_normalise(swav_resize(images.float().add(1).div(2)))
    return imagenet_input(images, cfg.image_size)
