"""Stage 2 models: an IC-GAN / BigGAN-style generator and projection discriminator, conditioned on an
L2-normalised image embedding.

Generator: z and the embedding (through a shared linear map, BigGAN's "shared embedding") form one condition
vector; it feeds the 4x4 linear stem and, per layer, the gain and bias of every conditional batch norm. Residual
up-blocks double the resolution until `resolution` (64: 4 blocks, 128: 5). Discriminator: residual down-blocks,
ReLU, sum pooling -> features h; output = linear(h) + <proj(embedding), h> (projection discriminator).
Spectral norm on every weight of both networks, as in BigGAN.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from training.config_gan import RESOLUTIONS


@dataclass(frozen=True)
class GANConfig:
    """What rebuilds both networks from a checkpoint."""

    resolution: int = 64
    embed_dim: int = 256
    z_dim: int = 64
    shared_dim: int = 64  # the embedding is mapped to this many dimensions before joining z
    g_width: int = 32  # generator channels at the output resolution (x8 at 4x4)
    d_width: int = 16  # discriminator channels at the input resolution (x8 at 4x4)

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")

    @property
    def n_blocks(self) -> int:
        return int(math.log2(self.resolution)) - 2  # 4x4 -> resolution

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GANConfig:
        return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls)})


def _channels(width: int, n_blocks: int) -> list[int]:
    """Channels from 4x4 up to the full resolution: 8w at the bottom, halving per block, at least w."""
    return [width * max(1, 8 >> max(0, i - (n_blocks - 4))) for i in range(n_blocks + 1)]


class ConditionalBatchNorm(nn.Module):
    """Batch norm without affine parameters; gain (1 + g) and bias b are linear in the condition vector."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = spectral_norm(nn.Linear(cond_dim, channels, bias=False))
        self.bias = spectral_norm(nn.Linear(cond_dim, channels, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * (1 + self.gain(cond))[:, :, None, None] + self.bias(cond)[:, :, None, None]


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.bn1, self.bn2 = ConditionalBatchNorm(cin, cond_dim), ConditionalBatchNorm(cout, cond_dim)
        self.conv1 = spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """(z (B, z_dim), embedding (B, embed_dim)) -> images (B, 3, resolution, resolution) in [-1, 1]."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        ch = _channels(cfg.g_width, cfg.n_blocks)
        cond_dim = cfg.z_dim + cfg.shared_dim
        self.shared = spectral_norm(nn.Linear(cfg.embed_dim, cfg.shared_dim))
        self.stem = spectral_norm(nn.Linear(cond_dim, ch[0] * 16))
        self.blocks = nn.ModuleList(GBlock(ch[i], ch[i + 1], cond_dim) for i in range(cfg.n_blocks))
        self.out_bn = nn.BatchNorm2d(ch[-1])
        self.out_conv = spectral_norm(nn.Conv2d(ch[-1], 3, 3, 1, 1))

    def forward(self, z: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([z, self.shared(embedding)], dim=1)
        x = self.stem(cond).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            x = block(x, cond)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(x))))


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, first: bool):
        super().__init__()
        self.first = first  # no ReLU on the raw image (BigGAN's "preactivation" except the first block)
        self.conv1 = spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + self.skip(F.avg_pool2d(x, 2))


class Discriminator(nn.Module):
    """(images, embedding) -> (B,) realness scores; projection term <proj(embedding), features>."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        ch = [3] + _channels(cfg.d_width, cfg.n_blocks)[::-1][1:]
        self.blocks = nn.Sequential(*(DBlock(ch[i], ch[i + 1], i == 0) for i in range(cfg.n_blocks)))
        self.linear = spectral_norm(nn.Linear(ch[-1], 1))
        self.proj = spectral_norm(nn.Linear(cfg.embed_dim, ch[-1], bias=False))

    def forward(self, images: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(images)).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.proj(embedding) * h).sum(dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, target: float) -> float:
    """EMA of the generator's weights with warm-up: decay = min(target, (1 + step) / (10 + step)), so short runs
    are not stuck near the initial weights (FINDINGS "A small conditional GAN"). Buffers (BN statistics,
    spectral-norm vectors) are copied."""
    decay = min(target, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
    return decay
