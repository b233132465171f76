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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import cli, distributed, loop
from training.audio import StatsAccumulator
from training.checkpoint import (
    check_resumable,
    load_checkpoint,
    save_checkpoint,
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
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)  # the trained encoder (last.pt's)

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


class AudioStage:
    """Stage 3's part of the training loop: the audio encoder, its optimiser, its targets (the stage-1 cache),
    validation with early stopping, last.pt and best.pt."""

    def __init__(self, cfg: TrainConfig, d: distributed.Dist):
        self.cfg, self.s3, self.d, self.stage_dir = cfg, cfg.stage3, d, Path(cfg.out) / "stage3"
        self.urls, _ = resolve_shards(cfg.data)
        self.encoder = load_encoder(cfg.out, d.device)
        paths = ensure_cache(cfg.out, self.encoder, self.urls, cfg.data, cfg.stage1.moments,
                             cfg.stage1.embed_batch_size, d)
        self.table = load_table(paths, self.urls)
        self.model = _model(cfg, self.encoder.embed_dim, d.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.s3.lr, weight_decay=self.s3.weight_decay)
        self.best_val, self.bad_evals, self.improved, self.resumed = float("inf"), 0, False, False
        self.by_moment = cfg.audio.crop == "moment" and self.s3.target_moments > 1
        self.use_bf16 = cfg.runtime.bf16 and d.device.type == "cuda"
        self.net, self.batches, self.rng = self.model, iter(()), np.random.default_rng()
        self.seen_urls: set[str] = set()

    def recipe(self, started: float) -> loop.Recipe:
        s3 = self.s3
        return loop.Recipe("stage3", self.stage_dir, self.stage_dir / "last.pt", s3.steps, s3.log_every,
                           self.restore, self.begin, self.step, self.log_fields, self.save, evaluate=self.evaluate,
                           eval_every=s3.eval_every, stop_early=self.patience_spent, rank_record=self.rank_record,
                           started=started)

    def restore(self, state: dict) -> int:
        check_resumable(self.stage_dir / "last.pt",
                        {**state["model_config"], "image_encoder": state["image_encoder_sha256"]},
                        {**self.model.cfg.to_dict(), "image_encoder": self.encoder.sha256})
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.best_val, self.bad_evals, self.resumed = float(state["best_val"]), int(state["bad_evals"]), True
        return int(state["step"])

    def begin(self, step: int) -> None:
        """Global audio statistics (a fresh start), DDP, batches from seed + step (a resumed run draws new
        batches rather than replaying the first ones)."""
        cfg, d = self.cfg, self.d
        if not self.resumed and cfg.audio.normalisation == "global":
            compute_stats(self.model, cfg, self.urls, d)
        if d.is_main:
            write_config(cfg.out, cfg)
        self.net = loop.prepare(self.model, d, cfg.runtime.channels_last and d.device.type == "cuda")
        moments = self.s3.target_moments if self.by_moment else 1
        self.batches = forever(audio_batches(self.urls, cfg, "train", self.s3.batch_size, seed=cfg.runtime.seed + step,
                                             partial_batches=False, moments=moments))
        self.rng = np.random.default_rng([cfg.runtime.seed, step, d.rank])
        self.model.train()

    def step(self, step: int) -> tuple[float]:
        batch, d = next(self.batches), self.d
        self.seen_urls.update(batch["url"])
        target = pick_targets(self.table, self.table.rows(batch["url"], batch["key"]), self.s3.target_moments,
                              self.rng, batch["moment"].numpy() if self.by_moment else None).to(d.device)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            audio = self.net(batch["wave"].to(d.device, non_blocking=True))
        loss, logged = global_batch_loss(d, audio, target, self.s3)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return (logged.item(),)

    def log_fields(self, step: int, rows: np.ndarray, steps_per_s: float) -> dict:
        return {"loss": float(np.mean(rows[:, 0])),
                "clips_per_s": steps_per_s * self.s3.batch_size * self.d.world_size}

    def evaluate(self, step: int) -> dict:
        """Validation on rank 0, its loss broadcast: every rank updates the best loss and the patience count."""
        metrics = validate(self.model, self.table, self.cfg, self.urls, self.d.device) if self.d.is_main else {}
        val = float(distributed.broadcast_tensor(self.d, torch.tensor(metrics.get("val_loss", float("nan")))))
        self.improved = np.isnan(val) or val < self.best_val  # without a validation slice the last model is best
        if not np.isnan(val):  # without a validation slice there is nothing to stop early on
            self.best_val, self.bad_evals = (val, 0) if val < self.best_val else (self.best_val, self.bad_evals + 1)
        return metrics

    def patience_spent(self) -> bool:
        return self.s3.patience > 0 and self.bad_evals >= self.s3.patience

    def save(self, step: int, seconds: float) -> None:
        """last.pt, and best.pt when the last validation improved."""
        state = {"model": self.model.state_dict(), "model_config": self.model.cfg.to_dict(),
                 "optimizer": self.opt.state_dict(), "step": step, "best_val": self.best_val,
                 "bad_evals": self.bad_evals, "image_encoder_sha256": self.encoder.sha256,
                 "config": self.cfg.to_dict()}
        save_checkpoint(self.stage_dir / "last.pt", state)
        if self.improved:
            save_checkpoint(self.stage_dir / "best.pt", state)

    def rank_record(self, step: int) -> dict:
        return {"urls": sorted(self.seen_urls)}


def run(cfg: TrainConfig) -> Stage3Result:
    """Train (or resume) the audio encoder; keep last.pt and the best validation checkpoint best.pt."""
    d = distributed.setup(cfg.runtime)
    t0 = time.time()
    if cfg.stage3.init_official:  # the released encoder hears what it was trained on: 16 kHz, 10 s, per clip
        cfg = dataclasses.replace(cfg, audio=OFFICIAL_AUDIO)
    stage = AudioStage(cfg, d)
    out = loop.train(stage.recipe(t0), d, cfg.runtime.resume)
    return Stage3Result(stage.stage_dir / "best.pt", stage.stage_dir / "last.pt", out.step, stage.best_val,
                        time.time() - t0, stage.model)


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
