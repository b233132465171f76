"""Stage 1 image encoders: a frozen SwAV ResNet-50 (2048-d) from a user's weights file, or a small CNN trained
self-supervised on the shard frames. Both map (batch, 3, S, S) ImageNet-normalised images to pooled features;
embeddings are their L2-normalised values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.models.blocks import ResNetTrunk
from training.models.weights import WeightsError as WeightsError  # re-exported: the error of every loader
from training.models.weights import load_strict, read_weights

SWAV_HEADS = ("projection_head.", "prototypes.")  # SwAV's training heads: not part of the trunk
SWAV_IMAGE_SIZE = 224


@dataclass(frozen=True)
class ImageEncoderConfig:
    """What rebuilds an encoder from a checkpoint: kind "small" (width, image_size) or "swav"."""

    kind: str
    image_size: int
    width: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
