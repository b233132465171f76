"""FID and Inception Score with Inception-v3 weights the user supplies (never downloaded).

The two files people have, told apart by their keys and each run with its own network and preprocessing:
  torchvision   `inception_v3(weights="IMAGENET1K_V1").state_dict()`: 1000 classes and `AuxLogits.*`. Built as
                torchvision builds it for these weights (transform_input on), fed ImageNet-normalised 299 px
                input (antialiased bilinear resize).
  pytorch-fid   `pt_inception-2015-12-05-*.pth` (the TF FID graph ported by pytorch-fid): 1008 classes, no
                auxiliary head, and the FID variants of the Mixed blocks (average pools that do not count the
                padding; max pooling in the last block). Fed as pytorch-fid feeds it: bilinear resize to 299 px
                (no antialias), scaled to [-1, 1]. FIDs agree with the pytorch-fid package (tests).
Loading is strict: any other file is a one-line WeightsError naming what does not fit. FID uses the 2048-d pooled
features, IS the softmax of the logits (one split; 1008-way with the pytorch-fid file, as the TF IS code). With
few images both are biased: compare runs at the same image count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from training.data import imagenet_input
from training.evaluate import frechet_distance
from training.models.weights import WeightsError, load_strict, read_weights

KINDS = {"torchvision": "torchvision inception_v3 ImageNet weights",
         "pytorch-fid": "pytorch-fid pt_inception-2015-12-05 weights"}


class _FIDPoolBranch:
    """The pool branch of pytorch-fid's FIDInception blocks; the other branches are torchvision's."""

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = super()._forward(x)  # torchvision's pool branch, recomputed below (a 1x1 conv: a few % of cost)
        outputs[-1] = self.branch_pool(self.pool(x))
        return outputs


class FIDInceptionA(_FIDPoolBranch, tv_inception.InceptionA):
    pass


class FIDInceptionC(_FIDPoolBranch, tv_inception.InceptionC):
    pass


class FIDInceptionE1(_FIDPoolBranch, tv_inception.InceptionE):
    pass


class FIDInceptionE2(_FIDPoolBranch, tv_inception.InceptionE):
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def fid_inception_v3() -> nn.Module:
    """The network of pytorch-fid's weights file (random weights until loaded)."""
    model = tv_inception.Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)
    model.Mixed_5b, model.Mixed_5c, model.Mixed_5d = (FIDInceptionA(c, pool_features=p)
                                                      for c, p in ((192, 32), (256, 64), (288, 64)))
    model.Mixed_6b, model.Mixed_6c, model.Mixed_6d, model.Mixed_6e = (FIDInceptionC(768, channels_7x7=c)
                                                                      for c in (128, 160, 160, 192))
    model.Mixed_7b, model.Mixed_7c = FIDInceptionE1(1280), FIDInceptionE2(2048)
    return model


def weights_kind(state: object) -> str | None:
    """"torchvision", "pytorch-fid" or None, from the classifier's size and the auxiliary head's presence."""
    if not isinstance(state, dict) or not isinstance(state.get("fc.weight"), torch.Tensor):
        return None
    classes, aux = state["fc.weight"].shape[0], any(str(k).startswith("AuxLogits.") for k in state)
    return {(1000, True): "torchvision", (1008, False): "pytorch-fid"}.get((classes, aux))


@dataclass
class InceptionNet:
    model: nn.Module
    kind: str

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> this network's input."""
        if self.kind == "torchvision":
            return imagenet_input(images, 299)
        x = F.interpolate(images.float().add(1).div(2), size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1


def load_inception(path: str | Path, device: torch.device) -> InceptionNet:
    state = read_weights(path, "Inception weights")
    kind = weights_kind(state)
    if kind is None:
        raise WeightsError(f"{path} holds neither {KINDS['torchvision']} (fc 1000 classes + AuxLogits.*) nor "
                           f"{KINDS['pytorch-fid']} (fc 1008 classes, no AuxLogits)")
    model = (tv_inception.Inception3(aux_logits=True, transform_input=True, init_weights=False)
             if kind == "torchvision" else fid_inception_v3())
    load_strict(model, state, path, KINDS[kind])
    return InceptionNet(model.eval().requires_grad_(False).to(device), kind)


@torch.no_grad()
def features_and_logits(net: InceptionNet, images: torch.Tensor, device: torch.device,
                        batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(pool features (N, 2048), logits (N, classes)) of images in [-1, 1]."""
    pooled: list[torch.Tensor] = []
    handle = net.model.avgpool.register_forward_hook(lambda _m, _i, out: pooled.append(out.flatten(1).cpu()))
    logits = []
    try:
        for chunk in images.split(batch_size):
            logits.append(net.model(net.prepare(chunk.to(device))).cpu())
    finally:
        handle.remove()
    return torch.cat(pooled).double().numpy(), torch.cat(logits).numpy()


def inception_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y)))."""
    p = torch.softmax(torch.from_numpy(logits).double(), dim=1)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (torch.log(p + 1e-12) - torch.log(marginal + 1e-12))).sum(1).mean()
    return float(torch.exp(kl))


def fid_and_is(weights: str | Path, generated: torch.Tensor, real: torch.Tensor, device: torch.device
               ) -> dict[str, float | int | str]:
    net = load_inception(weights, device)
    f_gen, l_gen = features_and_logits(net, generated, device)
    f_real, _ = features_and_logits(net, real, device)
    return {"fid": frechet_distance(f_gen, f_real), "is": inception_score(l_gen),
            "fid_images": int(generated.shape[0]), "fid_weights": net.kind}
