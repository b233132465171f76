"""Stage 2: the embedding-conditioned GAN (IC-GAN / BigGAN style), trained on shard frames with their cached
stage-1 embeddings.

Every training-split frame (jpg, top2.jpg, ... up to stage2.moments) is decoded once into memory at the GAN's
resolution (the demo's 570 frames at 64 px are 28 MB), each paired with its own L2-normalised embedding from the
stage-1 cache. Hinge loss, one D step per G step, Adam (0, 0.999), optional DiffAugment on both of D's inputs,
EMA generator with warm-up for sampling. Training stops at stage2.steps or after stage2.max_minutes.
Single-process: under torchrun, rank 0 trains and the other ranks wait at a barrier (mind the process group's
timeout for long runs; DDP for stage 2 is not implemented).
Outputs in OUT/stage2/: last.pt (resume: G, D, EMA, optimisers), generator.pt (EMA weights + config: what
generation loads), samples_<step>.png (first column: the real frame whose embedding conditions the row),
loss.jsonl.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image

from manifests.io import atomic_write_bytes
from training import cli, distributed
from training.checkpoint import append_jsonl, check_resumable, load_checkpoint, save_checkpoint, truncate_log
from training.config import TrainConfig
from training.config_gan import Stage2Config
from training.data import imagenet_input, mapped, meta, moment_names, open_image, pipeline, resolve_shards
from training.embedding_cache import FrozenEncoder, ensure_cache, load_encoder, load_table
from training.models.biggan import FEATURE_DIM, BigGANConfig, BigGANGenerator
from training.models.gan import Discriminator, GANConfig, Generator, count_parameters, update_ema
from training.models.weights import WeightsError
from training.official import load_official_generator


@dataclass(frozen=True)
class Stage2Result:
    generator: Path
    step: int
    seconds: float
    steps_per_s: float

    def summary(self) -> str:
        return (f"stage 2: {self.seconds:.1f} s, step {self.step} ({self.steps_per_s:.2f} steps/s); "
                f"EMA generator {self.generator}")


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
    """(frames in [-1, 1] (N, 3, R, R), their embeddings (N, D), the frozen encoder): every present moment."""
    train_urls, _ = resolve_shards(cfg.data)
    encoder = load_encoder(cfg.out, device)
    moments = min(s2.moments, cfg.stage1.moments)
    d = distributed.setup(cfg.runtime)
    table = load_table(ensure_cache(cfg.out, encoder, train_urls, cfg.data, cfg.stage1.moments,
                                    cfg.stage1.embed_batch_size, d), train_urls)
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
    e = F.normalize(encoder.model(imagenet_input(images, encoder.cfg.image_size)).float(), dim=-1)
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


def train(cfg: TrainConfig, s2: Stage2Config) -> Stage2Result:
    """Train (or resume) the GAN; writes last.pt, generator.pt, samples and the loss log under OUT/stage2."""
    d = distributed.setup(cfg.runtime)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device, stage_dir = d.device, Path(cfg.out) / "stage2"
    frames, emb, encoder = training_set(cfg, s2, device)
    if not d.is_main:  # single-process stage: rank 0 trains, the other ranks wait for its generator
        distributed.barrier(d)
        return Stage2Result(stage_dir / "generator.pt", 0, 0.0, 0.0)
    frames, emb = frames.to(device), emb.to(device)
    gcfg = _gan_config(s2, emb.shape[1])
    torch.manual_seed(cfg.runtime.seed)
    g, gcfg, g_meta = initial_generator(s2, gcfg)
    g, disc = g.to(device), Discriminator(gcfg).to(device)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), s2.g_lr, betas=(s2.beta1, s2.beta2))
    opt_d = torch.optim.Adam(disc.parameters(), s2.d_lr, betas=(s2.beta1, s2.beta2))
    last, gen_path = stage_dir / "last.pt", stage_dir / "generator.pt"
    step, spent = 0, 0.0
    if cfg.runtime.resume and last.exists():
        state = load_checkpoint(last)
        check_resumable(last, {**state["gan_config"], "image_encoder": state["image_encoder_sha256"]},
                        {**gcfg.to_dict(), "image_encoder": encoder.sha256})
        for module, name in ((g, "g"), (disc, "d"), (g_ema, "g_ema"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[name])
        step, spent = int(state["step"]), float(state["seconds"])
    truncate_log(stage_dir / "loss.jsonl", step)
    # fixed rows of the sample grids: 8 training frames (spread over the set), 7 noise vectors each
    fixed_idx = torch.linspace(0, frames.shape[0] - 1, 8).long()
    fixed_z = torch.randn(7, gcfg.z_dim, generator=torch.Generator().manual_seed(cfg.runtime.seed)).to(device)
    rng = torch.Generator(device=device).manual_seed(cfg.runtime.seed + step)
    use_bf16 = cfg.runtime.bf16 and device.type == "cuda"
    budget = s2.max_minutes * 60 if s2.max_minutes else float("inf")
    t_start, t_log, steps_at_log, logs = time.time(), time.time(), step, []
    start_step = step

    def checkpoint() -> None:
        state = {"g": g.state_dict(), "d": disc.state_dict(), "g_ema": g_ema.state_dict(),
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                 "seconds": spent + time.time() - t_start, "gan_config": gcfg.to_dict(),
                 "image_encoder_sha256": encoder.sha256, "config": cfg.to_dict(), **g_meta}
        save_checkpoint(last, state)
        sampler = copy.deepcopy(g_ema)
        standing_stats(sampler, emb, s2.standing_stats_batches, s2.batch_size, cfg.runtime.seed)
        save_checkpoint(gen_path, {"generator": sampler.state_dict(), "gan_config": gcfg.to_dict(), "step": step,
                                   "image_encoder_sha256": encoder.sha256, "config": cfg.to_dict(), **g_meta})
        with torch.no_grad():
            rows = []
            for i in fixed_idx.tolist():
                fake = sampler(fixed_z, emb[i].expand(fixed_z.shape[0], -1))
                rows.append(np.concatenate([to_uint8(frames[i:i + 1]), to_uint8(fake)]))
        save_image_grid(stage_dir / f"samples_{step:06d}.png", rows)

    g.train()
    disc.train()
    while step < s2.steps and spent + time.time() - t_start < budget:
        n, b = frames.shape[0], s2.batch_size
        idx = torch.randint(0, n, (b,), generator=rng, device=device)
        real, cond = frames[idx], emb[idx]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            z = torch.randn(b, gcfg.z_dim, generator=rng, device=device)
            with torch.no_grad():
                fake = g(z, cond)
            d_real = disc(diff_augment(real, s2.diffaug), cond).float()
            d_fake = disc(diff_augment(fake, s2.diffaug), cond).float()
            loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # G step: IC-GAN samples the conditioning instances from the data
        idx = torch.randint(0, n, (b,), generator=rng, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            z = torch.randn(b, gcfg.z_dim, generator=rng, device=device)
            fake = g(z, emb[idx])
            loss_adv = -disc(diff_augment(fake, s2.diffaug), emb[idx]).float().mean()
            loss_embed = embedding_consistency(encoder, fake, emb[idx]) if s2.embed_consistency else torch.zeros(())
            loss_g = loss_adv + s2.embed_consistency * loss_embed
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        decay = update_ema(g_ema, g, step, s2.ema_decay)
        step += 1
        logs.append((loss_d.item(), loss_adv.item(), d_real.mean().item(), d_fake.mean().item(), loss_embed.item()))
        if step % s2.log_every == 0:
            m = np.mean(logs, axis=0)
            append_jsonl(stage_dir / "loss.jsonl", {
                "step": step, "loss_d": m[0], "loss_g": m[1], "d_real": m[2], "d_fake": m[3], "loss_embed": m[4],
                "ema_decay": decay,
                "steps_per_s": (step - steps_at_log) / (time.time() - t_log),
                "images_per_s": (step - steps_at_log) * b / (time.time() - t_log),
                "seconds": spent + time.time() - t_start})
            logs, t_log, steps_at_log = [], time.time(), step
        if step % s2.checkpoint_every == 0 or step % s2.sample_every == 0:
            checkpoint()
    if step > start_step or not gen_path.exists():
        checkpoint()
    seconds = time.time() - t_start
    rate = (step - start_step) / seconds if seconds > 0 else 0.0
    append_jsonl(stage_dir / "loss.jsonl", {"step": step, "done": True, "g_params": count_parameters(g),
                                            "d_params": count_parameters(disc), "frames": int(frames.shape[0]),
                                            "seconds": spent + seconds})
    distributed.barrier(d)
    return Stage2Result(gen_path, step, spent + seconds, rate)


def run(cfg: TrainConfig) -> Stage2Result:
    return train(cfg, cfg.stage2)


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(lambda cfg: print(run(cfg).summary()), argv, "stage2", __doc__)
