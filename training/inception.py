"""FID and Inception Score with Inception-v3 weights the user supplies (never downloaded).

The file is a torchvision `inception_v3` state dict (e.g. `torch.save(inception_v3(weights=...).state_dict())`
done once where weights may be fetched). Images are resized to 299 px, ImageNet-normalised; FID uses the 2048-d
pooled features, IS the softmax of the 1000-way logits (one split). With few images both are biased; they are
for comparing runs at the same image count, not with published numbers (which use the TF Inception graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.models import inception_v3

from training.data import imagenet_input
from training.evaluate import frechet_distance


def load_inception(path: str | Path, device: torch.device) -> torch.nn.Module:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} do not exist (they are never downloaded)")
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def features_and_logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                        batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(pool features (N, 2048), logits (N, 1000)) of images in [-1, 1]."""
    pooled: list[torch.Tensor] = []
    handle = model.avgpool.register_forward_hook(lambda _m, _i, out: pooled.append(out.flatten(1).cpu()))
    logits = []
    try:
        for chunk in images.split(batch_size):
            logits.append(model(imagenet_input(chunk.to(device), 299)).cpu())
    finally:
        handle.remove()
    return torch.cat(pooled).numpy(), torch.cat(logits).numpy()


def inception_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y)))."""
    p = torch.softmax(torch.from_numpy(logits).double(), dim=1)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (torch.log(p + 1e-12) - torch.log(marginal + 1e-12))).sum(1).mean()
    return float(torch.exp(kl))


def fid_and_is(weights: str | Path, generated: torch.Tensor, real: torch.Tensor, device: torch.device
               ) -> dict[str, float]:
    model = load_inception(weights, device)
    f_gen, l_gen = features_and_logits(model, generated, device)
    f_real, _ = features_and_logits(model, real, device)
    return {"fid": frechet_distance(f_gen, f_real), "is": inception_score(l_gen),
            "fid_images": int(generated.shape[0])}
