"""Stage 3: the audio encoder, aligned to the frozen stage-1 image embeddings.

Loss: the official code's InfoNCE with L2 logits (logits = -||a - v|| / temperature between L2-normalised audio
and image embeddings, symmetric cross-entropy over the batch), plus an optional L2 regression term. Targets come
from the stage-1 cache. The global audio statistics are computed once on the training clips (rank 0) and
stored with the model. The validation slice (data.val_fraction of the training clips, by key hash) is never
trained on; it picks best.pt and drives early stopping. Under torchrun the contrastive batch is the global
batch: every rank's pairs are gathered, so each audio clip has world_size x batch_size - 1 negatives.
Outputs in OUT/stage3/: last.pt (resume), best.pt, loss.jsonl, shards_rank<r>.json (the shards each rank read).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from manifests.io import write_json
from training import budget, cli, distributed
from training.audio import StatsAccumulator
from training.checkpoint import (
    append_jsonl,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
    truncate_log,
    write_config,
)
from training.config import TrainConfig
from training.data import decode_audio, forever, loader, mapped, pipeline, resolve_shards, selector
from training.embedding_cache import EmbeddingTable, ensure_cache, load_encoder, load_table
from training.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from training.models.official_audio import EMBED_DIM, OFFICIAL_AUDIO, Sound2SceneAudioEncoder
from training.models.weights import WeightsError
from training.official import load_official_audio_encoder


@dataclass(frozen=True)
class Stage3Result:
    best: Path
    last: Path
    step: int
    best_val: float
    seconds: float

    def summary(self) -> str:
        return (f"stage 3: {self.seconds:.1f} s, step {self.step}, best validation loss {self.best_val:.4f}; "
                f"checkpoints {self.best} (best), {self.last} (last)")


def info_nce_l2(audio: torch.Tensor, image: torch.Tensor, temperature: float, l2_weight: float = 0.0
                ) -> torch.Tensor:
    """Symmetric cross-entropy over the batch with logits -||a_i - v_j|| / temperature (L2-normalised
    inputs), as in the official code; + l2_weight x mean squared distance of the pairs."""
    a, v = F.normalize(audio.float(), dim=-1), F.normalize(image.float(), dim=-1)
    logits = -torch.cdist(a, v) / temperature
    target = torch.arange(a.shape[0], device=a.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    if l2_weight:
        loss = loss + l2_weight * (a - v).square().sum(dim=-1).mean()
    return loss


def global_batch_loss(d: distributed.Dist, audio: torch.Tensor, target: torch.Tensor, s3) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """(loss to back-propagate, loss to log): InfoNCE over every rank's pairs (negatives gathered across ranks,
    gradients through the local part). DDP averages the ranks' gradients, so the loss is scaled by world_size
    to give the gradient of the global-batch loss itself."""
    a = distributed.all_gather_with_grad(d, audio.float())
    v = distributed.all_gather_with_grad(d, target.float())
    loss = info_nce_l2(a, v, s3.temperature, s3.l2_weight)
    return loss * d.world_size, loss.detach()


def pick_targets(table: EmbeddingTable, rows: np.ndarray, k: int, rng: np.random.Generator,
                 heard: np.ndarray | None = None) -> torch.Tensor:
    """Each clip's best-frame embedding (k=1), the moment its audio was cut around (`heard`, audio.crop
    "moment"), or one of its first k present moments at random."""
    if heard is not None:
        if not table.present[rows, heard].all():
            raise RuntimeError("the audio was cut around a moment whose embedding is not in the stage-1 cache")
        return torch.from_numpy(table.emb[rows, heard])
    if k == 1:
        return torch.from_numpy(table.emb[rows, 0])
    present = table.present[rows, :k]
    choice = np.array([rng.choice(np.flatnonzero(p)) for p in present])
    return torch.from_numpy(table.emb[rows, choice])


def audio_batches(urls: list[str], cfg: TrainConfig, part: str, batch_size: int, seed: int | None = None,
                  partial_batches: bool = True, moments: int = 1):
    """Waveform batches of one part of the data ("train", "val", "eval"); with audio.crop "moment" and a seed,
    each clip is heard around one of its first `moments` moments at random (decode_audio)."""
    rng = np.random.default_rng(seed) if seed is not None else None
    decode = partial(decode_audio, cfg=cfg.audio, moments=moments, rng=rng)
    pipe = pipeline(urls, cfg.data, select=selector(cfg.data, part), steps=[mapped(decode, cfg.data)],
                    batch_size=batch_size, seed=seed, partial=partial_batches)
    return loader(pipe, cfg.data.workers) if seed is not None else pipe


def compute_stats(model: AudioEncoder, cfg: TrainConfig, urls: list[str], d: distributed.Dist) -> None:
    """Per-bin mean/std of the log spectrogram over (up to audio.stats_clips) training clips, on rank 0."""
    acc = StatsAccumulator(cfg.audio.n_fft // 2 + 1)
    if d.is_main:
        seen = 0
        for batch in audio_batches(urls, cfg, "train", cfg.stage3.batch_size):
            wave = batch["wave"][: cfg.audio.stats_clips - seen]
            with torch.no_grad():
                acc.add(model.front.log_power(wave.to(d.device)))
            seen += wave.shape[0]
            if seen >= cfg.audio.stats_clips:
                break
    total = distributed.broadcast_tensor(d, acc.total)
    acc.total = total
    model.front.set_stats(*(t.to(model.front.mean.device) for t in acc.mean_std()))


@torch.no_grad()
def validate(model: AudioEncoder, table: EmbeddingTable, cfg: TrainConfig, urls: list[str],
             device: torch.device) -> dict[str, float]:
    """Loss and in-set R@1 on (the first stage3.val_clips clips of) the validation slice; targets: best frames."""
    model.eval()
    losses, weights, audio, image = [], [], [], []
    for batch in audio_batches(urls, cfg, "val", cfg.stage3.batch_size):
        if sum(weights) >= cfg.stage3.val_clips:
            break
        a = model(batch["wave"].to(device))
        v = torch.from_numpy(table.emb[table.rows(batch["url"], batch["key"]), 0]).to(device)
        if a.shape[0] >= 2:
            losses.append(info_nce_l2(a, v, cfg.stage3.temperature, cfg.stage3.l2_weight).item())
            weights.append(a.shape[0])
        audio.append(a)
        image.append(v)
    model.train()
    if not weights:
        return {}
    a, v = torch.cat(audio), torch.cat(image)
    r1 = (torch.cdist(a, v).argmin(dim=1) == torch.arange(a.shape[0], device=device)).float().mean().item()
    return {"val_loss": float(np.average(losses, weights=weights)), "val_r_at_1": r1, "val_clips": a.shape[0]}


def _model(cfg: TrainConfig, embed_dim: int, device: torch.device) -> AudioEncoder | Sound2SceneAudioEncoder:
    torch.manual_seed(cfg.runtime.seed)
    if cfg.stage3.init_official:  # the released encoder, fine-tuned
        if embed_dim != EMBED_DIM:
            raise WeightsError(f"stage3.init_official: the released encoder outputs {EMBED_DIM}-d embeddings, stage 1 "
                              f"made {embed_dim}-d ones (use the SwAV ResNet-50: --swav-weights)")
        return load_official_audio_encoder(cfg.stage3.init_official).to(device)
    return AudioEncoder(AudioEncoderConfig(cfg.audio, cfg.stage3.width, embed_dim)).to(device)


def run(cfg: TrainConfig) -> Stage3Result:
    """Train (or resume) the audio encoder; keep last.pt and the best validation checkpoint best.pt."""
    d = distributed.setup(cfg.runtime)
    t0 = time.time()
    if cfg.stage3.init_official:  # the released encoder hears what it was trained on: 16 kHz, 10 s, per clip
        cfg = dataclasses.replace(cfg, audio=OFFICIAL_AUDIO)
    s3, stage_dir = cfg.stage3, Path(cfg.out) / "stage3"
    train_urls, _ = resolve_shards(cfg.data)
    encoder = load_encoder(cfg.out, d.device)
    paths = ensure_cache(cfg.out, encoder, train_urls, cfg.data, cfg.stage1.moments, cfg.stage1.embed_batch_size, d)
    table = load_table(paths, train_urls)
    model = _model(cfg, encoder.embed_dim, d.device)
    opt = torch.optim.Adam(model.parameters(), lr=s3.lr, weight_decay=s3.weight_decay)
    last, best = stage_dir / "last.pt", stage_dir / "best.pt"
    step, best_val, bad_evals = 0, float("inf"), 0
    if cfg.runtime.resume and last.exists():
        state = load_checkpoint(last)
        check_resumable(last, {**state["model_config"], "image_encoder": state["image_encoder_sha256"]},
                        {**model.cfg.to_dict(), "image_encoder": encoder.sha256})
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best_val, bad_evals = int(state["step"]), float(state["best_val"]), int(state["bad_evals"])
    elif cfg.audio.normalisation == "global":
        compute_stats(model, cfg, train_urls, d)
    if d.is_main:
        truncate_log(stage_dir / "loss.jsonl", step)
        write_config(cfg.out, cfg)
    if cfg.runtime.channels_last and d.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = DistributedDataParallel(model) if d.enabled else model
    seed = cfg.runtime.seed + step  # a resumed run draws new batches rather than replaying the first ones
    by_moment = cfg.audio.crop == "moment" and s3.target_moments > 1
    batches = forever(audio_batches(train_urls, cfg, "train", s3.batch_size, seed=seed, partial_batches=False,
                                    moments=s3.target_moments if by_moment else 1))
    rng = np.random.default_rng([cfg.runtime.seed, step, d.rank])
    use_bf16 = cfg.runtime.bf16 and d.device.type == "cuda"
    seen_urls: set[str] = set()
    losses, t_log = [], time.time()
    model.train()
    while step < s3.steps and (s3.patience == 0 or bad_evals < s3.patience):
        batch = next(batches)
        seen_urls.update(batch["url"])
        target = pick_targets(table, table.rows(batch["url"], batch["key"]), s3.target_moments, rng,
                              batch["moment"].numpy() if by_moment else None).to(d.device)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            audio = net(batch["wave"].to(d.device, non_blocking=True))
        loss, logged = global_batch_loss(d, audio, target, s3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(logged.item())
        if d.is_main and (step % s3.log_every == 0 or step == s3.steps):
            append_jsonl(stage_dir / "loss.jsonl", {"step": step, "loss": float(np.mean(losses)),
                                                    "clips_per_s": len(losses) * s3.batch_size * d.world_size
                                                    / (time.time() - t_log), "seconds": time.time() - t0})
            losses, t_log = [], time.time()
        if step % s3.eval_every == 0 or step == s3.steps:
            metrics = validate(model, table, cfg, train_urls, d.device) if d.is_main else {}
            val = float(distributed.broadcast_tensor(d, torch.tensor(metrics.get("val_loss", float("nan")))))
            improved = not np.isnan(val) and val < best_val
            if not np.isnan(val):  # without a validation slice there is nothing to stop early on
                best_val, bad_evals = (val, 0) if improved else (best_val, bad_evals + 1)
            if d.is_main:
                append_jsonl(stage_dir / "loss.jsonl", {"step": step, **metrics, "seconds": time.time() - t0})
                state = {"model": model.state_dict(), "model_config": model.cfg.to_dict(),
                         "optimizer": opt.state_dict(), "step": step, "best_val": best_val, "bad_evals": bad_evals,
                         "image_encoder_sha256": encoder.sha256, "config": cfg.to_dict()}
                save_checkpoint(last, state)
                if improved or np.isnan(val):  # without a validation slice, the last model is the best one
                    save_checkpoint(best, state)
            distributed.barrier(d)
    write_json(stage_dir / f"shards_rank{d.rank}.json", {"rank": d.rank, "world_size": d.world_size,
                                                          "urls": sorted(seen_urls)})
    if d.is_main:
        budget.record(stage_dir, s3.steps, step, "steps" if step >= s3.steps else "early_stopping", time.time() - t0)
    return Stage3Result(best, last, step, best_val, time.time() - t0)


def load_audio_encoder(path: str | Path, device: torch.device
                       ) -> tuple[AudioEncoder | Sound2SceneAudioEncoder, dict]:
    """A stage-3 checkpoint's model (eval mode) and the checkpoint's metadata."""
    state = load_checkpoint(path)
    model = (Sound2SceneAudioEncoder() if state["model_config"].get("kind") == "sound2scene"
             else AudioEncoder(AudioEncoderConfig.from_dict(state["model_config"])))
    model.load_state_dict(state["model"])
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    return model.eval().to(device), meta


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(lambda cfg: print(run(cfg).summary()), argv, "stage3", __doc__)
