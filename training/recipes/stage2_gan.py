"""Stage 2: the embedding-conditioned GAN (IC-GAN / BigGAN style), trained on shard frames with their cached
stage-1 embeddings.

Every training-split frame (jpg, top2.jpg, ... up to stage2.moments) is decoded once into memory at the GAN's
resolution (the demo's 570 frames at 64 px are 28 MB), each paired with its own L2-normalised embedding from the
stage-1 cache. Hinge loss, one D step per G step, Adam (0, 0.999), optional DiffAugment on both of D's inputs,
EMA generator with warm-up for sampling. The budget is stage2.steps; stage2.max_minutes is a guard that stops
earlier with a warning (log, loss.jsonl, budget.json -> eval.json), since a time-capped model is under-trained.
Under torchrun every rank trains on its own part of the training shards (batch_size per rank), G and D in
DistributedDataParallel; rank 0 keeps the EMA and writes every file, so no rank waits a stage's length.
Outputs in OUT/stage2/: last.pt (resume: G, D, EMA, optimisers), generator.pt (EMA weights + config: what
generation loads), samples_<step>.png (first column: the real frame whose embedding conditions the row),
loss.jsonl, budget.json, shards_rank<r>.json (the shards and steps of each rank).
"""

from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from manifests.io import atomic_write_bytes
from training import cli, distributed, loop
from training.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.config_gan import Stage2Config
from training.data import mapped, meta, moment_names, open_image, pipeline, resolve_shards
from training.embedding_cache import FrozenEncoder, ensure_cache, load_encoder, load_table
from training.models.biggan import FEATURE_DIM, BigGANConfig, BigGANGenerator
from training.models.gan import Discriminator, GANConfig, Generator, count_parameters, update_ema
from training.models.image_encoder import encoder_input
from training.models.weights import WeightsError
from training.official import load_official_generator


@dataclass(frozen=True)
class Stage2Result:
    generator: Path
    step: int
    seconds: float
    steps_per_s: float
    planned: int = 0
    time_capped: bool = False

    def summary(self) -> str:
        text = (f"stage 2: {self.seconds:.1f} s, step {self.step} of {self.planned} planned "
                f"({self.steps_per_s:.2f} steps/s); EMA generator {self.generator}")
        return text + (" -- STOPPED BY THE TIME CAP: under-trained" if self.time_capped else "")


# ---------------------------------------------------------------- data
def _decode_frames(sample: dict, moments: int, size: int) -> dict:
    tf = T.Compose([T.Resize((size, size), antialias=True), T.PILToTensor()])
    names = moment_names(moments)
    blank = torch.zeros(3, size, size, dtype=torch.uint8)
    return {"images": torch.stack([tf(open_image(sample[n], size)) if n in sample else blank for n in names]),
            "key": sample["__key__"], "url": sample["__url__"]}


def load_frames(cfg: TrainConfig, urls: list[str], moments: int, size: int, part: str = "train"
                ) -> tuple[torch.Tensor, list[str], list[str]]:
    """uint8 (clips, moments, 3, size, size) frames of the clips outside (part="train") or inside
    (part="eval") the evaluation split, squashed to a square like the stage-1 embedding input."""
    eval_split = cfg.data.eval_split

    def select(sample: dict) -> bool:
        return (meta(sample).get("split") == eval_split) == (part == "eval")

    decode = partial(_decode_frames, moments=moments, size=size)
    pipe = pipeline(urls, cfg.data, select=select, steps=[mapped(decode, cfg.data)], batch_size=64, seed=None)
    images, keys, batch_urls = [], [], []
    for batch in pipe:
        images.append(batch["images"])
        keys += batch["key"]
        batch_urls += batch["url"]
    if not keys:
        raise FileNotFoundError(f"no {part} clips in {len(urls)} shard(s)")
    return torch.cat(images), keys, batch_urls


def training_set(cfg: TrainConfig, s2: Stage2Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       object]:
    """(frames in [-1, 1] (N, 3, R, R), their embeddings (N, D), the frozen encoder): every present moment of
    this rank's part of the training shards (all of them in a single process)."""
    train_urls, _ = resolve_shards(cfg.data)
    encoder = load_encoder(cfg.out, device)
    moments = min(s2.moments, cfg.stage1.moments)
    d = distributed.setup(cfg.runtime)
    paths = ensure_cache(cfg.out, encoder, train_urls, cfg.data, cfg.stage1.moments, cfg.stage1.embed_batch_size, d)
    mine = distributed.own_part(d, list(zip(train_urls, paths, strict=True)), "stage 2")
    train_urls = [u for u, _ in mine]
    table = load_table([p for _, p in mine], train_urls)
    images, keys, urls = load_frames(cfg, train_urls, moments, s2.resolution)
    rows = table.rows(urls, keys)
    present = table.present[rows, :moments]
    emb = torch.from_numpy(table.emb[rows, :moments][present])
    frames = images[torch.from_numpy(present)].float().div(127.5).sub(1)
    return frames, emb, encoder


# ---------------------------------------------------------------- DiffAugment (Zhao et al. 2020)
def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Differentiable augmentations applied alike to real and fake inputs of D (images in [-1, 1])."""
    for p in (q.strip() for q in policy.split(",") if q.strip()):
        b = x.shape[0]
        if p == "color":
            x = x + (torch.rand(b, 1, 1, 1, device=x.device) - 0.5)
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device) * 2) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device) + 0.5) + mean
        elif p == "translation":  # shift by up to 1/8 of the side, zero padded
            h, w = x.shape[2:]
            shift = (torch.rand(b, 2, device=x.device) - 0.5) * 0.25 * 2  # in [-0.25, 0.25] of the half-side
            theta = torch.zeros(b, 2, 3, device=x.device)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, :, 2] = shift
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        elif p == "cutout":  # one square of half the side, zeroed
            h, w = x.shape[2:]
            cy = torch.randint(0, h, (b, 1, 1), device=x.device)
            cx = torch.randint(0, w, (b, 1, 1), device=x.device)
            ys = torch.arange(h, device=x.device)[None, :, None]
            xs = torch.arange(w, device=x.device)[None, None, :]
            keep = ((ys - cy).abs() >= h // 4) | ((xs - cx).abs() >= w // 4)
            x = x * keep[:, None].to(x.dtype)
    return x


# ---------------------------------------------------------------- embedding consistency
def embedding_consistency(encoder: FrozenEncoder, images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos(frozen stage-1 embedding of `images` (in [-1, 1]), `cond`): differentiable in `images`."""
    e = F.normalize(encoder.model(encoder_input(images, encoder.cfg)).float(), dim=-1)
    return (1 - (e * cond.float()).sum(dim=1)).mean()


# ---------------------------------------------------------------- images
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_image_grid(path: Path, rows: list[np.ndarray]) -> None:
    """Rows of (n, H, W, 3) uint8 images -> one PNG with 2-px gaps, written atomically."""
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[2 + i * (h + 2): 2 + i * (h + 2) + h, 2 + j * (w + 2): 2 + j * (w + 2) + w] = img
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------- checkpoints
@torch.no_grad()
def standing_stats(g: Generator, emb: torch.Tensor, batches: int, batch_size: int, seed: int) -> None:
    """Re-estimate the EMA generator's batch-norm statistics from its own activations (BigGAN's "standing
    stats"): the raw generator's running statistics do not match the averaged weights."""
    gen = torch.Generator().manual_seed(seed)
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    g.train()
    device = emb.device
    for _ in range(batches):
        idx = torch.randint(0, emb.shape[0], (batch_size,), generator=gen)
        g(torch.randn(batch_size, g.cfg.z_dim, generator=gen).to(device), emb[idx.to(device)])
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    g.eval()


def load_generator(path: str | Path, device: torch.device) -> tuple[Generator, dict]:
    """The EMA generator of `OUT/stage2/generator.pt` (eval mode) and the checkpoint's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m training stage2` first")
    state = load_checkpoint(path)
    g = (BigGANGenerator(BigGANConfig(**state["biggan_config"])) if "biggan_config" in state
         else Generator(GANConfig.from_dict(state["gan_config"])))
    g.load_state_dict(state["generator"])
    return g.eval().requires_grad_(False).to(device), {k: v for k, v in state.items() if k != "generator"}


# ---------------------------------------------------------------- training
def _gan_config(s2: Stage2Config, embed_dim: int) -> GANConfig:
    return GANConfig(s2.resolution, embed_dim, s2.z_dim, s2.shared_dim, s2.g_width, s2.d_width)


def initial_generator(s2: Stage2Config, gcfg: GANConfig) -> tuple[Generator | BigGANGenerator, GANConfig, dict]:
    """A new generator, or the released IC-GAN one (stage2.init_official); the config z and D follow; what
    checkpoints need to rebuild it."""
    if not s2.init_official:
        return Generator(gcfg), gcfg, {}
    g = load_official_generator(s2.init_official).train()
    if gcfg.embed_dim != FEATURE_DIM or gcfg.resolution != g.cfg.resolution:
        raise WeightsError(f"stage2.init_official: the released generator makes {g.cfg.resolution} px images from "
                           f"{FEATURE_DIM}-d embeddings; here stage2.resolution={gcfg.resolution} and stage 1 "
                           f"embeddings are {gcfg.embed_dim}-d (set stage2.resolution, use --swav-weights)")
    return g, dataclasses.replace(gcfg, z_dim=g.cfg.z_dim), {"biggan_config": g.cfg.to_dict()}


@dataclass
class Nets:
    """Both networks, the EMA generator, the optimisers, and what the train step calls (the DDP wrappers
    under torchrun, else the networks themselves); `gcfg` sizes D and the checkpoints, `g_meta` is what a
    checkpoint needs to rebuild a released generator."""

    g: Generator | BigGANGenerator
    disc: Discriminator
    g_ema: Generator | BigGANGenerator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    g_train: torch.nn.Module
    d_train: torch.nn.Module
    gcfg: GANConfig
    g_meta: dict


def build_nets(gcfg: GANConfig, s2: Stage2Config, seed: int, device: torch.device, channels_last: bool) -> Nets:
    torch.manual_seed(seed)
    g, gcfg, g_meta = initial_generator(s2, gcfg)
    g, disc = g.to(device), Discriminator(gcfg).to(device)
    if channels_last:
        g, disc = g.to(memory_format=torch.channels_last), disc.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g.parameters(), s2.g_lr, betas=(s2.beta1, s2.beta2))
    opt_d = torch.optim.Adam(disc.parameters(), s2.d_lr, betas=(s2.beta1, s2.beta2))
    return Nets(g, disc, copy.deepcopy(g).eval().requires_grad_(False), opt_g, opt_d, g, disc, gcfg, g_meta)


def wrap_ddp(nets: Nets, d: distributed.Dist) -> Nets:
    """Under torchrun: G and D in DistributedDataParallel (gradients averaged over ranks every step; rank 0's
    buffers, i.e. batch-norm statistics and spectral-norm vectors, broadcast at every forward)."""
    if d.enabled:
        nets.g_train, nets.d_train = DistributedDataParallel(nets.g), DistributedDataParallel(nets.disc)
    return nets


def gan_step(n: Nets, frames: torch.Tensor, emb: torch.Tensor, encoder: FrozenEncoder, s2: Stage2Config,
             rng: torch.Generator, use_bf16: bool) -> tuple[float, ...]:
    """One D step (real and fake in one D call, so DDP reduces once) and one G step (D frozen, called without
    its DDP wrapper, so only G's gradients are reduced). Returns loss_d, loss_adv, d_real, d_fake, loss_embed."""
    b, device = s2.batch_size, frames.device
    idx = torch.randint(0, frames.shape[0], (b,), generator=rng, device=device)
    real, cond = frames[idx], emb[idx]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        z = torch.randn(b, n.g.cfg.z_dim, generator=rng, device=device)
        with torch.no_grad():
            fake = n.g(z, cond)
        scores = n.d_train(diff_augment(torch.cat([real, fake.to(real.dtype)]), s2.diffaug),
                           torch.cat([cond, cond])).float()
        d_real, d_fake = scores[:b], scores[b:]
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    n.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    n.opt_d.step()
    idx = torch.randint(0, frames.shape[0], (b,), generator=rng, device=device)  # IC-GAN: data's instances
    n.disc.requires_grad_(False)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        z = torch.randn(b, n.g.cfg.z_dim, generator=rng, device=device)
        fake = n.g_train(z, emb[idx])
        loss_adv = -n.disc(diff_augment(fake, s2.diffaug), emb[idx]).float().mean()
        loss_embed = embedding_consistency(encoder, fake, emb[idx]) if s2.embed_consistency else torch.zeros(())
        loss_g = loss_adv + s2.embed_consistency * loss_embed
    n.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    n.opt_g.step()
    n.disc.requires_grad_(True)
    return loss_d.item(), loss_adv.item(), d_real.mean().item(), d_fake.mean().item(), loss_embed.item()


def save_state(stage_dir: Path, n: Nets, cfg: TrainConfig, frames: torch.Tensor, emb: torch.Tensor,
               encoder: FrozenEncoder, step: int, seconds: float) -> None:
    """last.pt (resume), generator.pt (EMA with standing statistics) and samples_<step>.png: rank 0 only.
    Grid rows: 8 training frames spread over the set, each with 7 fixed noise vectors."""
    s2, gcfg = cfg.stage2, n.gcfg
    common = {"gan_config": gcfg.to_dict(), "step": step, "image_encoder_sha256": encoder.sha256,
              "config": cfg.to_dict(), **n.g_meta}
    save_checkpoint(stage_dir / "last.pt", {"g": n.g.state_dict(), "d": n.disc.state_dict(),
                                            "g_ema": n.g_ema.state_dict(), "opt_g": n.opt_g.state_dict(),
                                            "opt_d": n.opt_d.state_dict(), "seconds": seconds, **common})
    sampler = copy.deepcopy(n.g_ema)
    standing_stats(sampler, emb, s2.standing_stats_batches, s2.batch_size, cfg.runtime.seed)
    save_checkpoint(stage_dir / "generator.pt", {"generator": sampler.state_dict(), **common})
    fixed_idx = torch.linspace(0, frames.shape[0] - 1, 8).long()
    fixed_z = torch.randn(7, gcfg.z_dim, generator=torch.Generator().manual_seed(cfg.runtime.seed)).to(emb.device)
    with torch.no_grad():
        rows = [np.concatenate([to_uint8(frames[i:i + 1]), to_uint8(sampler(fixed_z, emb[i].expand(7, -1)))])
                for i in fixed_idx.tolist()]
    save_image_grid(stage_dir / f"samples_{step:06d}.png", rows)


LOSS_NAMES = ("loss_d", "loss_g", "d_real", "d_fake", "loss_embed")  # loss.jsonl, means over log_every steps


class GANStage:
    """Stage 2's part of the training loop: G, D, the EMA generator, the in-memory frames and last.pt.
    Every rank steps G and D; rank 0 keeps the EMA and writes."""

    def __init__(self, cfg: TrainConfig, d: distributed.Dist):
        s2, device, self.cfg, self.d = cfg.stage2, d.device, cfg, d
        self.stage_dir = Path(cfg.out) / "stage2"
        channels_last = cfg.runtime.channels_last and device.type == "cuda"
        frames, emb, self.encoder = training_set(cfg, s2, device)
        self.frames, self.emb = frames.to(device), emb.to(device)
        self.own_urls = [str(u) for u in distributed.own_part(d, resolve_shards(cfg.data)[0], "stage 2")]
        if channels_last:
            self.frames = self.frames.contiguous(memory_format=torch.channels_last)
        self.nets = build_nets(_gan_config(s2, self.emb.shape[1]), s2, cfg.runtime.seed, device, channels_last)
        self.use_bf16 = cfg.runtime.bf16 and device.type == "cuda"
        self.rng = torch.Generator(device=device)

    def recipe(self) -> loop.Recipe:
        s2 = self.cfg.stage2
        return loop.Recipe(
            "stage2", self.stage_dir, self.stage_dir / "last.pt", s2.steps, s2.log_every, self.restore, self.begin,
            self.step, self.log_fields, self.save,
            checkpoint_due=lambda step: step % s2.checkpoint_every == 0 or step % s2.sample_every == 0,
            time_cap_minutes=s2.max_minutes, log_last=False, rank_record=self.rank_record, closing=self.closing,
            outputs=(self.stage_dir / "generator.pt",))

    def restore(self, state: dict) -> int:
        """last.pt into the networks and optimisers on every rank (its `seconds` count against the cap)."""
        n = self.nets
        check_resumable(self.stage_dir / "last.pt",
                        {**state["gan_config"], "image_encoder": state["image_encoder_sha256"]},
                        {**n.gcfg.to_dict(), "image_encoder": self.encoder.sha256})
        for module, name in ((n.g, "g"), (n.disc, "d"), (n.g_ema, "g_ema"), (n.opt_g, "opt_g"), (n.opt_d, "opt_d")):
            module.load_state_dict(state[name])
        return int(state["step"])

    def begin(self, step: int) -> None:
        self.nets = wrap_ddp(self.nets, self.d)
        self.rng.manual_seed(self.cfg.runtime.seed + step + 7919 * self.d.rank)
        self.nets.g.train()
        self.nets.disc.train()

    def step(self, step: int) -> tuple[float, ...]:
        """gan_step's five values, then the EMA decay (rank 0 keeps the EMA; NaN elsewhere)."""
        n, s2 = self.nets, self.cfg.stage2
        values = gan_step(n, self.frames, self.emb, self.encoder, s2, self.rng, self.use_bf16)
        decay = update_ema(n.g_ema, n.g, step, s2.ema_decay) if self.d.is_main else float("nan")
        return (*values, decay)

    def log_fields(self, step: int, rows: np.ndarray, steps_per_s: float) -> dict:
        """Mean losses, the EMA decay of the last step, and throughput (all ranks' images)."""
        means = dict(zip(LOSS_NAMES, np.mean(rows[:, :len(LOSS_NAMES)], axis=0), strict=True))
        return {**means, "ema_decay": float(rows[-1, -1]), "steps_per_s": steps_per_s,
                "images_per_s": steps_per_s * self.cfg.stage2.batch_size * self.d.world_size}

    def save(self, step: int, seconds: float) -> None:
        save_state(self.stage_dir, self.nets, self.cfg, self.frames, self.emb, self.encoder, step, seconds)

    def rank_record(self, step: int) -> dict:
        return {"step": step, "frames": int(self.frames.shape[0]), "urls": self.own_urls}

    def closing(self) -> dict:
        return {"g_params": count_parameters(self.nets.g), "d_params": count_parameters(self.nets.disc),
                "frames": int(self.frames.shape[0])}


def train(cfg: TrainConfig, s2: Stage2Config) -> Stage2Result:
    """Train (or resume) the GAN on every rank; rank 0 keeps the EMA and writes last.pt, generator.pt, samples,
    the loss log and budget.json under OUT/stage2. Stops at s2.steps, or earlier at the s2.max_minutes guard
    (rank 0's clock decides for all ranks), with a warning."""
    cfg = dataclasses.replace(cfg, stage2=s2)
    d = distributed.setup(cfg.runtime)
    stage = GANStage(cfg, d)
    out = loop.train(stage.recipe(), d, cfg.runtime.resume)
    return Stage2Result(stage.stage_dir / "generator.pt", out.step, out.seconds, out.steps_per_s, s2.steps,
                        out.stopped_by == "time_cap")


def run(cfg: TrainConfig) -> Stage2Result:
    return train(cfg, cfg.stage2)


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(lambda cfg: print(run(cfg).summary()), argv, "stage2", __doc__)
