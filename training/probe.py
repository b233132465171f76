"""Demo world only: a probe that judges images by the world's ground truth (OUT/probe/probe.pt).

A small CNN trained on *real* training-split frames (every moment jpg, top2.jpg, ... with its time from the
sample's json `moments`) with two heads: category presence (multi-label, sigmoid per category: the frame's
visible object and, in two-source frames, the second visible object) and the scale of the main object
(regression of truth `scale`, only on frames where it is visible). Generated images are judged at the same
resolution and value range ([-1, 1]) as the GAN's. Its accuracy on real evaluation-split frames is reported
beside the metrics it produces, so a weak probe is visible.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch import nn

from training.checkpoint import append_jsonl, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.config_gan import ProbeConfig
from training.data import held_moments, mapped, meta, moment_names, open_image, pipeline
from training.models.blocks import ResNetTrunk


class Probe(nn.Module):
    """(B, 3, S, S) images in [-1, 1] -> (presence logits (B, K), scale (B,))."""

    def __init__(self, n_categories: int, width: int):
        super().__init__()
        self.trunk = ResNetTrunk(3, width, (1, 1, 1, 1), stem="small", stem_stride=2)
        self.presence = nn.Linear(self.trunk.out_dim, n_categories)
        self.scale = nn.Linear(self.trunk.out_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.presence(h), self.scale(h).squeeze(1)


def frame_truth(truth: pd.DataFrame, clip_id: str, t: float) -> tuple[np.ndarray, float, int]:
    """(presence vector over categories, main-object scale or NaN, main category or -1) of the nearest frame."""
    frames = truth[truth["clip_id"] == clip_id]
    row = frames.iloc[int(np.argmin(np.abs(frames["t"].to_numpy() - t)))]
    k = int(truth["category"].max()) + 1
    present = np.zeros(k, np.float32)
    main = int(row["category"]) if row["visible"] else -1
    if main >= 0:
        present[main] = 1
    if row.get("visible2") is True and not pd.isna(row.get("category2")):
        present[int(row["category2"])] = 1
    return present, float(row["scale"]) if main >= 0 else float("nan"), main


def audible(truth: pd.DataFrame, clip_id: str) -> set[int]:
    """The categories that sound anywhere in a clip."""
    cats = truth.loc[truth["clip_id"] == clip_id, "sound_category"].dropna()
    return {int(c) for c in cats.unique() if c >= 0}


def _decode(sample: dict, moments: int, size: int) -> dict:
    tf = T.Compose([T.Resize((size, size), antialias=True), T.PILToTensor()])
    names, held = moment_names(moments), held_moments(sample, moments)
    return {"images": [tf(open_image(sample[names[i]], size)) for i, _ in held],
            "times": [t or 0.0 for _, t in held], "key": sample["__key__"], "split": str(meta(sample).get("split"))}


def real_frames(cfg: TrainConfig, urls: list[str], truth: pd.DataFrame, size: int, part: str, moments: int = 3
                ) -> dict[str, torch.Tensor]:
    """Frames of the training (part="train") or evaluation split with their truth, as tensors."""
    eval_split = cfg.data.eval_split

    def select(sample: dict) -> bool:
        return (meta(sample).get("split") == eval_split) == (part == "eval")

    pipe = pipeline(urls, cfg.data, select=select, steps=[mapped(partial(_decode, moments=moments, size=size),
                                                                  cfg.data)], batch_size=1, seed=None)
    images, presence, scales, mains = [], [], [], []
    for batch in pipe:
        for img, t in zip(batch["images"][0], batch["times"][0], strict=True):
            p, s, c = frame_truth(truth, batch["key"][0], float(t))
            images.append(img)
            presence.append(p)
            scales.append(s)
            mains.append(c)
    if not images:
        raise FileNotFoundError(f"no {part} frames for the probe")
    return {"images": torch.stack(images).float().div(127.5).sub(1), "presence": torch.from_numpy(np.stack(presence)),
            "scale": torch.tensor(scales, dtype=torch.float32), "main": torch.tensor(mains)}


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Flips, small shifts and a mild blur: the probe must also read the GAN's softer images."""
    flip = torch.rand(x.shape[0], 1, 1, 1) < 0.5
    x = torch.where(flip, x.flip(3), x)
    dy, dx = (int(v) for v in torch.randint(-4, 5, (2,)))
    x = torch.roll(x, (dy, dx), dims=(2, 3))
    if torch.rand(()) < 0.5:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return x


@torch.enable_grad()
def train_probe(data: dict[str, torch.Tensor], pcfg: ProbeConfig, seed: int, log: Path | None = None) -> Probe:
    """Presence BCE + masked scale MSE (scale standardised by the data's mean/std, stored in the model)."""
    torch.manual_seed(seed)
    k = data["presence"].shape[1]
    model = Probe(k, pcfg.width)
    known = ~torch.isnan(data["scale"])
    mu, sd = data["scale"][known].mean(), data["scale"][known].std().clamp_min(1e-3)
    model.register_buffer("scale_stats", torch.stack([mu, sd]))
    opt = torch.optim.AdamW(model.parameters(), pcfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, pcfg.lr, total_steps=pcfg.steps)
    model.train()
    t0 = time.time()
    for step in range(1, pcfg.steps + 1):
        idx = torch.randint(0, data["images"].shape[0], (pcfg.batch_size,))
        logits, scale = model(_augment(data["images"][idx]))
        target_scale = (data["scale"][idx] - mu) / sd
        mask = known[idx]
        loss = F.binary_cross_entropy_with_logits(logits, data["presence"][idx])
        if mask.any():
            loss = loss + F.mse_loss(scale[mask], target_scale[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 50 == 0 or step == pcfg.steps):
            append_jsonl(log, {"step": step, "loss": loss.item(), "seconds": time.time() - t0})
    return model.eval()


@torch.no_grad()
def judge(model: Probe, images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (B, K), scale in truth units (B,)) of images in [-1, 1] of any size."""
    out_p, out_s = [], []
    mu, sd = model.scale_stats
    for chunk in images.split(128):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        logits, scale = model(x.to(next(model.parameters()).device))
        out_p.append(torch.sigmoid(logits).cpu())
        out_s.append((scale * sd + mu).cpu())
    return torch.cat(out_p), torch.cat(out_s)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (ties get average ranks); NaN when either side is constant."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def real_accuracy(model: Probe, data: dict[str, torch.Tensor], size: int) -> dict[str, float]:
    """The probe on real frames: main-category accuracy (frames with a visible object) and scale Spearman."""
    probs, scale = judge(model, data["images"], size)
    seen = data["main"] >= 0
    acc = float((probs[seen].argmax(1) == data["main"][seen]).float().mean()) if seen.any() else float("nan")
    rho = spearman(scale[seen].numpy(), data["scale"][seen].numpy()) if seen.sum() > 2 else float("nan")
    return {"probe_real_acc": acc, "probe_real_scale_spearman": rho, "probe_real_frames": int(seen.sum())}


def load_or_train(cfg: TrainConfig, pcfg: ProbeConfig, truth_path: Path, train_urls: list[str],
                  eval_urls: list[str]) -> tuple[Probe, dict[str, float]]:
    """OUT/probe/probe.pt when it was made with the same options and truth, else trained now."""
    path = Path(cfg.out) / "probe" / "probe.pt"
    stamp = {**dataclasses.asdict(pcfg), "truth": str(truth_path), "seed": cfg.runtime.seed}
    truth = pd.read_parquet(truth_path)
    if path.exists():
        state = load_checkpoint(path)
        if state["stamp"] == stamp:
            model = Probe(int(state["n_categories"]), pcfg.width)
            model.register_buffer("scale_stats", torch.zeros(2))
            model.load_state_dict(state["model"])
            return model.eval(), json.loads(state["real"])
    data = real_frames(cfg, train_urls, truth, pcfg.image_size, "train")
    model = train_probe(data, pcfg, cfg.runtime.seed, path.parent / "loss.jsonl")
    real = real_accuracy(model, real_frames(cfg, eval_urls, truth, pcfg.image_size, "eval"), pcfg.image_size)
    save_checkpoint(path, {"model": model.state_dict(), "n_categories": data["presence"].shape[1],
                           "stamp": stamp, "real": json.dumps(real)})
    return model, real
