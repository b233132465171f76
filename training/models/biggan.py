"""The IC-GAN BigGAN generator in the layout of the released `G_ema_best*.pth` files (facebookresearch/ic_gan
BigGAN_PyTorch), so that they load strictly: what the Sound2Scene release generates with.

The names, shapes and buffers follow IC-GAN's `Generator` with class_cond off and instance_cond on: spectral-norm
layers carry `u0` (1, out) and `sv0` (1) buffers (one power iteration per call, the vector updated only in
training mode), conditional batch norms keep their statistics as `stored_mean` / `stored_var`, the 2048-d
instance feature goes through `shared_feat` (-> shared_dim_feat) and, with a hierarchical z, each block's
condition is [shared_feat(feature), its 20-d z chunk]; `shared` (the class embedding) exists but is unused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# channel multipliers of the G_ch width, block by block (IC-GAN's G_arch), bottom width 4
ARCH = {64: ([16, 16, 8, 4], [16, 8, 4, 2]), 128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
        256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1])}
FEATURE_DIM = 2048  # IC-GAN's instance features (SwAV ResNet-50), fixed in its code


@dataclass(frozen=True)
class BigGANConfig:
    """The stored IC-GAN run config's fields that shape G (defaults: icgan_biggan_imagenet_res128)."""

    resolution: int = 128
    ch: int = 96
    dim_z: int = 120
    hier: bool = True
    attention: str = "64"  # resolutions with self-attention, underscore separated
    shared_dim: int = 128  # the (unused) class embedding's size
    shared_dim_feat: int = 512
    n_classes: int = 1000
    bn_eps: float = 1e-5
    sn_eps: float = 1e-12

    @property
    def n_blocks(self) -> int:
        return len(ARCH[self.resolution][0])

    @property
    def z_chunk(self) -> int:
        return self.dim_z // (self.n_blocks + 1) if self.hier else 0

    @property
    def z_dim(self) -> int:
        """G's z size: dim_z rounded down to whole chunks when hierarchical (as IC-GAN does)."""
        return self.z_chunk * (self.n_blocks + 1) if self.hier else self.dim_z

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _sn_weight(layer: nn.Module) -> torch.Tensor:
    """BigGAN's spectral norm: weight / sigma, sigma from one power iteration started at the stored u0."""
    w = layer.weight.view(layer.weight.shape[0], -1)
    with torch.no_grad():
        v = F.normalize(layer.u0 @ w, eps=layer.eps)
        u = F.normalize(v @ w.t(), eps=layer.eps)
        if layer.training:
            layer.u0.copy_(u)
    sigma = (v @ w.t() @ u.t()).squeeze()
    if layer.training:
        layer.sv0.copy_(sigma.detach().view(1))
    return layer.weight / sigma


class SNConv2d(nn.Conv2d):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1, bias: bool = True,
                 eps: float = 1e-12):
        super().__init__(cin, cout, kernel_size, padding=padding, bias=bias)
        self.eps = eps
        self.register_buffer("u0", torch.randn(1, cout))
        self.register_buffer("sv0", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, _sn_weight(self), self.bias, self.stride, self.padding)


class SNLinear(nn.Linear):
    def __init__(self, cin: int, cout: int, bias: bool = True, eps: float = 1e-12):
        super().__init__(cin, cout, bias=bias)
        self.eps = eps
        self.register_buffer("u0", torch.randn(1, cout))
        self.register_buffer("sv0", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _sn_weight(self), self.bias)


class ConditionalBN(nn.Module):
    """IC-GAN's `ccbn`: batch norm on stored statistics, gain 1 + W_g y and bias W_b y (no affine terms)."""

    def __init__(self, channels: int, cond_dim: int, eps: float, sn_eps: float):
        super().__init__()
        self.eps = eps
        self.gain = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.bias = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training, 0.1, self.eps)
        return out * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class OutputBN(nn.Module):
    """IC-GAN's plain `bn` of the output layer: learned gain/bias, stored statistics."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.training, 0.1,
                            self.eps)


class GBlock(nn.Module):
    """bn1-ReLU-up-conv1-bn2-ReLU-conv2, plus a 1x1 conv of the upsampled input."""

    def __init__(self, cin: int, cout: int, cond_dim: int, cfg: BigGANConfig):
        super().__init__()
        self.conv1 = SNConv2d(cin, cout, eps=cfg.sn_eps)
        self.conv2 = SNConv2d(cout, cout, eps=cfg.sn_eps)
        self.conv_sc = SNConv2d(cin, cout, kernel_size=1, padding=0, eps=cfg.sn_eps)
        self.bn1 = ConditionalBN(cin, cond_dim, cfg.bn_eps, cfg.sn_eps)
        self.bn2 = ConditionalBN(cout, cond_dim, cfg.bn_eps, cfg.sn_eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.conv_sc(F.interpolate(x, scale_factor=2))


class Attention(nn.Module):
    """SAGAN self-attention (keys and values max-pooled 2x2), scaled by a learned gamma."""

    def __init__(self, ch: int, sn_eps: float):
        super().__init__()
        self.ch = ch
        self.theta = SNConv2d(ch, ch // 8, 1, 0, bias=False, eps=sn_eps)
        self.phi = SNConv2d(ch, ch // 8, 1, 0, bias=False, eps=sn_eps)
        self.g = SNConv2d(ch, ch // 2, 1, 0, bias=False, eps=sn_eps)
        self.o = SNConv2d(ch // 2, ch, 1, 0, bias=False, eps=sn_eps)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).view(b, self.ch // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(b, self.ch // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(b, self.ch // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        return self.gamma * self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, self.ch // 2, h, w)) + x


class BigGANGenerator(nn.Module):
    """(z (B, z_dim), instance feature (B, 2048)) -> images (B, 3, R, R) in [-1, 1]; no class input."""

    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.cfg = cfg
        ins, outs = ([cfg.ch * m for m in ms] for ms in ARCH[cfg.resolution])
        attention = {int(r) for r in cfg.attention.split("_") if r}
        cond_dim = cfg.z_chunk + cfg.shared_dim_feat
        self.shared = nn.Embedding(cfg.n_classes, cfg.shared_dim)
        self.shared_feat = SNLinear(FEATURE_DIM, cfg.shared_dim_feat, eps=cfg.sn_eps)
        self.linear = SNLinear(cfg.z_chunk if cfg.hier else cfg.dim_z, ins[0] * 16, eps=cfg.sn_eps)
        blocks = []
        for i, (cin, cout) in enumerate(zip(ins, outs, strict=True)):
            block = [GBlock(cin, cout, cond_dim, cfg)]
            if 8 * 2**i in attention:  # block i outputs 8 * 2^i px
                block.append(Attention(cout, cfg.sn_eps))
            blocks.append(nn.ModuleList(block))
        self.blocks = nn.ModuleList(blocks)
        self.output_layer = nn.Sequential(OutputBN(outs[-1], cfg.bn_eps), nn.ReLU(),
                                          SNConv2d(outs[-1], 3, eps=cfg.sn_eps))

    def forward(self, z: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        y = self.shared_feat(feature)
        if self.cfg.hier:
            zs = torch.split(z, self.cfg.z_chunk, 1)
            z, ys = zs[0], [torch.cat([y, chunk], 1) for chunk in zs[1:]]
        else:
            ys = [y] * len(self.blocks)
        h = self.linear(z).view(z.shape[0], -1, 4, 4)
        for blocklist, cond in zip(self.blocks, ys, strict=True):
            for block in blocklist:
                h = block(h, cond)
        return torch.tanh(self.output_layer(h))
