"""Stage 1: the image encoder, then the per-shard embedding cache.

With `stage1.swav_weights`: a frozen SwAV ResNet-50 (2048-d). Without: a small CNN trained SimCLR-style on the
training clips' frames (two augmented views per frame, NT-Xent), then frozen. Every clip has its own
background, which alone tells two frames apart (FINDINGS.md, "the shortcut"); so by default all moments of a
clip go into the same batch, as negatives of each other: same background, different object size, position and
visibility, so the encoder has to look at the object.
Outputs in OUT/stage1/: encoder.pt (the frozen encoder), train_state.pt (resume), loss.jsonl, cache/.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image
from torch import nn

from training import cli, distributed, loop
from training.checkpoint import check_resumable, file_sha256, load_checkpoint, save_checkpoint, write_config
from training.config import Stage1Config, TrainConfig
from training.data import (
    IMAGE_MEAN,
    IMAGE_STD,
    forever,
    loader,
    mapped,
    moment_names,
    open_image,
    pipeline,
    resolve_shards,
    selector,
)
from training.embedding_cache import encoder_path, ensure_cache, load_encoder
from training.models.image_encoder import (
    SWAV_IMAGE_SIZE,
    ImageEncoderConfig,
    SmallImageEncoder,
    load_swav_weights,
    swav_resnet50,
)


@dataclass(frozen=True)
class Stage1Result:
    encoder: Path
    cache: list[Path]
    seconds: float

    def summary(self) -> str:
        return (f"stage 1: {self.seconds:.1f} s; encoder {self.encoder}; "
                f"{len(self.cache)} cached shard embeddings in {self.cache[0].parent}")


class SimCLR(nn.Module):
    """Encoder + projection head (the head is dropped after training)."""

    def __init__(self, encoder: SmallImageEncoder, proj_dim: int):
        super().__init__()
        self.encoder = encoder
        dim = encoder.out_dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other 2B-1 views (cosine / temperature)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def sup_con(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020): every view of the same label is a positive."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    y = torch.cat([labels, labels]).to(z.device)
    sim = z @ z.t() / temperature
    self_mask = torch.eye(len(y), dtype=torch.bool, device=z.device)
    log_prob = sim.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
    positive = (y[:, None] == y[None, :]) & ~self_mask
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1).clamp_min(1)).mean()


def augmentation(cfg: Stage1Config) -> T.Compose:
    """Random resized crops (area >= crop_scale_min, so apparent size survives), flips, brightness/contrast/
    saturation jitter (hue untouched: colour is part of an object's identity). The geometric and colour steps
    run on the PIL image (single-threaded C, cheap at this size), then one conversion to a tensor."""
    j = cfg.colour_jitter
    return T.Compose([T.RandomResizedCrop(cfg.image_size, scale=(cfg.crop_scale_min, 1.0), antialias=True),
                      T.RandomHorizontalFlip(), T.RandomApply([T.ColorJitter(j, j, j, 0.0)], p=0.8),
                      T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGE_MEAN, IMAGE_STD)])


class BackgroundSwap:
    """Second views whose background comes from another clip, so that a positive pair shares only the object.

    A clip's background is the per-pixel median of its moments and a moment's foreground is where it differs
    from that median (objects move between moments, the backgrounds of the demo world do not). Backgrounds of
    recently seen clips are kept in a small pool to paste onto."""

    def __init__(self, rng: random.Random, threshold: float = 40.0, pool_size: int = 16):
        self.rng, self.threshold, self.pool_size = rng, threshold, pool_size
        self.pool: list[Image.Image] = []

    def __call__(self, images: list[Image.Image]) -> list[Image.Image]:
        if len(images) < 3 or len({img.size for img in images}) > 1:
            return images  # no background estimate from fewer than three moments
        frames = np.stack([np.asarray(img, dtype=np.int16) for img in images])
        background = np.median(frames, axis=0)
        swapped = []
        for frame in frames:
            mask = np.abs(frame - background).max(axis=-1) > self.threshold
            mask[1:] |= mask[:-1]  # grow by a pixel down and right, then up and left
            mask[:, 1:] |= mask[:, :-1]
            mask[:-1] |= mask[1:]
            mask[:, :-1] |= mask[:, 1:]
            if not self.pool or not 0.002 < mask.mean() < 0.5:  # no moving object found, or no other background
                swapped.append(Image.fromarray(frame.astype(np.uint8)))
                continue
            other = np.asarray(self.rng.choice(self.pool).resize(images[0].size), dtype=np.int16)
            swapped.append(Image.fromarray(np.where(mask[..., None], frame, other).astype(np.uint8)))
        self.pool = (self.pool + [Image.fromarray(background.astype(np.uint8))])[-self.pool_size:]
        return swapped


def _views(sample: dict, moments: int, image_size: int, aug: T.Compose, rng: random.Random,
           all_moments: bool, swap: BackgroundSwap | None) -> dict:
    """Two augmented views of every moment of a clip (all_moments) or of one moment drawn at random; with
    `swap`, the second view of each moment stands on another clip's background."""
    names = [n for n in moment_names(moments) if n in sample]
    images = [open_image(sample[n], 2 * image_size) for n in names]
    seconds = swap(images) if swap else images
    pairs = list(zip(images, seconds, strict=True))
    label = int(sample["cls"])
    return {"views": [{"v1": aug(a), "v2": aug(b), "label": label}
                      for a, b in (pairs if all_moments else [rng.choice(pairs)])]}


def _flatten(samples):
    """One item per moment; a clip's moments stay adjacent, so they mostly share a batch."""
    for sample in samples:
        yield from sample["views"]


def _lr(cfg: Stage1Config, step: int) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to zero."""
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


def encoder_options(cfg: TrainConfig) -> dict:
    """The stage-1 options that shape the encoder (not logging, checkpointing or embedding batch size)."""
    options = dataclasses.asdict(cfg.stage1)
    for name in ("embed_batch_size", "log_every", "checkpoint_every", "moments"):
        options.pop(name)
    return options


class SimCLRStage:
    """Stage 1's part of the training loop: the SimCLR model, its optimiser, its batches and train_state.pt."""

    def __init__(self, cfg: TrainConfig, d: distributed.Dist, urls: list[str], stage_dir: Path):
        self.cfg, self.s1, self.d, self.urls, self.stage_dir = cfg, cfg.stage1, d, urls, stage_dir
        torch.manual_seed(cfg.runtime.seed)
        self.model = SimCLR(SmallImageEncoder(self.s1.width), self.s1.proj_dim).to(d.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.s1.lr, weight_decay=self.s1.weight_decay)
        self.channels_last = cfg.runtime.channels_last and d.device.type == "cuda"
        self.use_bf16 = cfg.runtime.bf16 and d.device.type == "cuda"
        self.net, self.batches = self.model, iter(())

    def recipe(self) -> loop.Recipe:
        s1 = self.s1
        return loop.Recipe("stage1", self.stage_dir, self.stage_dir / "train_state.pt", s1.steps, s1.log_every,
                           self.restore, self.begin, self.step, self.log_fields, self.save,
                           checkpoint_due=lambda step: step % s1.checkpoint_every == 0)

    def restore(self, state: dict) -> int:
        check_resumable(self.stage_dir / "train_state.pt", state["options"], encoder_options(self.cfg))
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        return int(state["step"])

    def begin(self, step: int) -> None:
        """DDP, and batches drawn from seed + step: a resumed run draws new batches, not the first ones again."""
        s1, cfg = self.s1, self.cfg
        self.net = loop.prepare(self.model, self.d, self.channels_last)
        seed = cfg.runtime.seed + step
        rng = random.Random(seed)
        views = partial(_views, moments=s1.moments, image_size=s1.image_size, aug=augmentation(s1), rng=rng,
                        all_moments=s1.same_clip_negatives, swap=BackgroundSwap(rng) if s1.background_swap else None)
        pipe = pipeline(self.urls, cfg.data, select=selector(cfg.data, "train"),
                        steps=[mapped(views, cfg.data), _flatten], batch_size=s1.batch_size, seed=seed, partial=False)
        self.batches = forever(loader(pipe, cfg.data.workers))
        self.model.train()

    def step(self, step: int) -> tuple[float]:
        s1, batch = self.s1, next(self.batches)
        x = torch.cat([batch["v1"], batch["v2"]]).to(self.d.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in self.opt.param_groups:
            group["lr"] = _lr(s1, step)
        with torch.autocast(self.d.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            z = self.net(x)
        loss = nt_xent(*z.chunk(2), s1.temperature)
        if s1.label_weight:
            loss = loss + s1.label_weight * sup_con(*z.chunk(2), batch["label"], s1.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return (loss.item(),)

    def log_fields(self, step: int, rows: np.ndarray, steps_per_s: float) -> dict:
        return {"loss": float(np.mean(rows[:, 0])), "lr": _lr(self.s1, step - 1)}

    def save(self, step: int, seconds: float) -> None:
        save_checkpoint(self.stage_dir / "train_state.pt", {"model": self.model.state_dict(),
                                                            "optimizer": self.opt.state_dict(), "step": step,
                                                            "options": encoder_options(self.cfg)})


def train_small_encoder(cfg: TrainConfig, d: distributed.Dist, urls: list[str], stage_dir: Path) -> dict:
    """SimCLR on the training frames; returns encoder.pt's content. Resumes from train_state.pt."""
    stage = SimCLRStage(cfg, d, urls, stage_dir)
    step = loop.train(stage.recipe(), d, cfg.runtime.resume).step
    encoder_cfg = ImageEncoderConfig("small", cfg.stage1.image_size, cfg.stage1.width)
    return {"encoder": encoder_cfg.to_dict(), "model": stage.model.encoder.state_dict(), "step": step,
            "config": cfg.to_dict(), "options": encoder_options(cfg)}


def swav_encoder(cfg: TrainConfig) -> dict:
    """encoder.pt's content for a user's SwAV weights (copied in, so OUT stays self-contained)."""
    model = swav_resnet50()
    load_swav_weights(model, cfg.stage1.swav_weights)
    return {"encoder": ImageEncoderConfig("swav", SWAV_IMAGE_SIZE).to_dict(), "model": model.state_dict(),
            "step": 0, "config": cfg.to_dict(), "options": encoder_options(cfg),
            "weights_sha256": file_sha256(cfg.stage1.swav_weights)}


def run(cfg: TrainConfig) -> Stage1Result:
    """Train (or load) the encoder, freeze it, and cache embeddings of every training and evaluation shard."""
    d = distributed.setup(cfg.runtime)
    t0 = time.time()
    train_urls, eval_urls = resolve_shards(cfg.data)
    stage_dir = Path(cfg.out) / "stage1"
    final = encoder_path(cfg.out)
    if cfg.runtime.resume and final.exists():
        check_resumable(final, load_checkpoint(final)["options"], encoder_options(cfg))
    else:
        content = swav_encoder(cfg) if cfg.stage1.swav_weights else train_small_encoder(cfg, d, train_urls,
                                                                                          stage_dir)
        if d.is_main:
            save_checkpoint(final, content)
            write_config(cfg.out, cfg)
        distributed.barrier(d)
    encoder = load_encoder(cfg.out, d.device)
    urls = list(dict.fromkeys(train_urls + eval_urls))
    cache = ensure_cache(cfg.out, encoder, urls, cfg.data, cfg.stage1.moments, cfg.stage1.embed_batch_size, d)
    return Stage1Result(final, cache, time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(lambda cfg: print(run(cfg).summary()), argv, "stage1", __doc__)
