"""Self-supervised training of the localisation model on a run's clips (`python -m curation ssl-train`).

No labels: a frame at time t and the audio window centred on t are a positive pair; every other audio in the
batch is a negative, scored by the best-matching map position (multiple-instance InfoNCE, as EZ-VSL).
Two moments of each clip share a batch, so the model cannot win by recognising the clip alone (its
background): it must tell which moment's sound goes with which frame. Crops and flips break background
identity further (colour jitter is an option, off by default: it hides the colour that tells look-alike objects
apart); a random gain keeps loudness from identifying a clip. Background swap removes
the rest of it: each training frame keeps only its moving foreground, pasted on another clip's background, so
a backdrop never predicts a sound (docs/localisation.md, "Background swap, steps and temperature").
`ssl.moment_foreground` and `ssl.moment_loudness` (off by default) pair only moments that show a moving foreground
and sound, `ssl.moment_synchrony` only clips whose foreground grows louder as it grows larger: a silence, an
off-screen sound or an object shown while another sounds pairs a sound with what does not make it
(docs/localisation.md, "Training moments").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from curation.clip_cache import ClipJob
from curation.config import ConfigError, RunConfig, SSLConfig
from curation.errors import ClipError
from curation.fetch.clip import raw_path
from curation.fetch_decode import decode_job
from curation.localise.checkpoint import checkpoint_blob, save_checkpoint, with_ensemble
from curation.localise.distributed import World, join
from curation.localise.model import (
    AVLocalizer,
    SSLModelConfig,
    audio_front_end,
    audio_windows,
    load_state_strict,
    square_frames,
    stretched,
)
from manifests.io import atomic_write_bytes, json_bytes
from manifests.layout import ModelFiles

log = logging.getLogger(__name__)
_CROP_MARGIN = 1.15  # frames are kept this much larger than the model input, for random crops
_FOREGROUND_LEVEL = 40  # a pixel is foreground where a channel differs from the clip's median by more (0..255)
_MAX_FOREGROUND = 0.5  # a larger foreground means the camera moved: such frames are never swapped
_QUIET_QUANTILE = 0.05  # the training windows' quiet level: this quantile of their RMS (ssl.moment_loudness)
_SYNCHRONY_MOMENTS = 4  # a clip's size-loudness correlation needs this many moments (ssl.moment_synchrony)


@dataclass
class TrainingClips:
    """Decoded training material held in memory: square frames and each clip's waveform."""

    frames: torch.Tensor  # (N, 3, S, S) uint8
    frame_clip: torch.Tensor  # (N,) clip index of each frame
    frame_t: torch.Tensor  # (N,) seconds from the clip's start
    audio: list[torch.Tensor]  # per clip (samples,) float32
    clip_ids: list[str]

    @cached_property
    def clip_rows(self) -> list[torch.Tensor]:
        """Each clip's frame indices in ascending order, found once: every batch draws from them."""
        order = torch.argsort(self.frame_clip, stable=True)
        return list(order.split(torch.bincount(self.frame_clip, minlength=len(self.audio)).tolist()))


def clip_backgrounds(data: TrainingClips) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's background, the per-pixel median of its frames (C, 3, S, S) uint8, and each frame's
    foreground (N, S, S) bool: where it differs from that median, grown by one pixel all round.

    A static camera is assumed; objects that move or come and go between moments are the foreground."""
    backgrounds = torch.empty((len(data.audio), *data.frames.shape[1:]), dtype=torch.uint8)
    foreground = torch.zeros((data.frames.shape[0], *data.frames.shape[2:]), dtype=torch.bool)
    for c in range(len(data.audio)):
        rows = data.clip_rows[c]
        frames = data.frames[rows].to(torch.int16)
        median = frames.median(dim=0).values
        mask = (frames - median).abs().amax(dim=1) > _FOREGROUND_LEVEL
        rows_grown = mask.clone()
        rows_grown[:, 1:] |= mask[:, :-1]
        rows_grown[:, :-1] |= mask[:, 1:]
        grown = rows_grown.clone()  # a 3x3 dilation, done as rows then columns
        grown[:, :, 1:] |= rows_grown[:, :, :-1]
        grown[:, :, :-1] |= rows_grown[:, :, 1:]
        backgrounds[c], foreground[rows] = median.to(torch.uint8), grown
    return backgrounds, foreground


@dataclass(frozen=True)
class ActiveMoments:
    """The training moments that show something and sound (`frames`, (N,) bool), and the clips with at least two
    of them (`clips`, (C,) bool): a batch takes two moments of each of its clips."""

    frames: torch.Tensor
    clips: torch.Tensor


def window_rms(data: TrainingClips, window_s: float, rate: int) -> torch.Tensor:
    """(N,) RMS of the audio window centred on each training frame."""
    rms = torch.empty(len(data.frame_t))
    for c, audio in enumerate(data.audio):
        rows = data.clip_rows[c]
        rms[rows] = audio_windows(audio, data.frame_t[rows], window_s, rate).square().mean(dim=1).sqrt()
    return rms


def size_loudness_correlation(data: TrainingClips, area: torch.Tensor, rms: torch.Tensor,
                              moments: torch.Tensor) -> torch.Tensor:
    """(C,) per clip, the Pearson correlation over its `moments` (a bool mask) of the square root of the foreground's
    share of the frame (`area`) and the log RMS of the window (`rms`); NaN where fewer than four moments, or either
    is constant. A sounding object that approaches gets larger and louder together."""
    rho = torch.full((len(data.audio),), float("nan"))
    for c, rows in enumerate(data.clip_rows):
        rows = rows[moments[rows]]
        if len(rows) < _SYNCHRONY_MOMENTS:
            continue
        pair = torch.stack([area[rows].sqrt(), rms[rows].clamp_min(1e-8).log()])
        if bool((pair.std(dim=1) > 0).all()):
            rho[c] = torch.corrcoef(pair)[0, 1]
    return rho


def active_moments(data: TrainingClips, foreground: torch.Tensor | None, ssl: SSLConfig,
                   rate: int) -> ActiveMoments | None:
    """The moments a batch may pair: not those whose frame shows no moving foreground (`ssl.moment_foreground`;
    a moved camera's frame counts as showing something) nor those whose window is silence (`ssl.moment_loudness`
    times the quiet level), nor the moments of a clip whose foreground's size and loudness do not rise and fall
    together (`ssl.moment_synchrony`: an object shown while another sounds). Each pairs a sound with what does not
    make it: on the `medium` demo world half the training pairs were silences or off-screen sounds
    (docs/localisation.md, "Training moments", where the rules are measured and why they are off by default). None
    where nothing is left out, or where fewer than four clips keep two moments (then every moment trains, logged)."""
    active = torch.ones(len(data.frame_t), dtype=torch.bool)
    uses_area = foreground is not None and ssl.moment_rules_read_foreground
    area = foreground.float().mean(dim=(1, 2)) if uses_area else None
    rms = window_rms(data, ssl.window_s, rate) if ssl.moment_rules_read_loudness else None
    if ssl.moment_foreground > 0 and area is not None:
        active &= area >= ssl.moment_foreground
    if ssl.moment_loudness > 0:
        active &= rms > ssl.moment_loudness * torch.quantile(rms, _QUIET_QUANTILE)
    if ssl.moment_synchrony > -1 and area is not None:
        synced = size_loudness_correlation(data, area, rms, active) > ssl.moment_synchrony
        active &= synced[data.frame_clip]
        log.info("ssl-train: %d of %d clips' foreground size and loudness correlate above %g",
                 int(synced.sum()), len(synced), ssl.moment_synchrony)
    if active.all():
        return None
    clips = torch.bincount(data.frame_clip[active], minlength=len(data.audio)) >= 2
    if int(clips.sum()) < 4:
        log.warning("ssl-train: only %d clips have two moments the training-moment rules keep; every moment "
                    "trains", int(clips.sum()))
        return None
    log.info("ssl-train: the training-moment rules keep %d of %d moments; %d of %d clips have two or more",
             int(active.sum()), len(active), int(clips.sum()), len(clips))
    return ActiveMoments(active, clips)


def model_config(ssl: SSLConfig, sample_rate: int) -> SSLModelConfig:
    return SSLModelConfig(widths=ssl.widths, image_maxpool=ssl.image_maxpool, image_size=ssl.image_size,
                          colour_branch=ssl.colour_branch, dim=ssl.dim, sample_rate=sample_rate,
                          window_s=ssl.window_s, n_fft=ssl.n_fft, hop=ssl.hop, n_mels=ssl.n_mels,
                          preprocess=ssl.preprocess)


def _decode_for_training(job: ClipJob, cfg: RunConfig, raw_dir: Path, side: int):
    clip = decode_job(job, cfg, raw_dir, decode=replace(cfg.decode, fps=cfg.ssl.train_fps, short_side=side))
    if cfg.ssl.preprocess == "ezvsl":  # the whole frame, as the published inputs (curation.localise.model)
        return stretched(clip.frames, side).permute(0, 2, 3, 1).numpy(), clip.times, clip.audio
    return square_frames(clip.frames), clip.times, clip.audio


@dataclass(frozen=True)
class TrainingSet:
    """The clips the model learns from, in chunks of at most `ssl.buffer_clips`: only the chunk of the current
    step is decoded and held in memory (and the next one while it is decoded), so a VGGSound-size list trains
    with the memory of a small one. Each chunk is trained on for an equal share of the steps, in order."""

    chunks: tuple[tuple[ClipJob, ...], ...]
    raw_dir: Path

    def chunk_at(self, step: int, steps: int) -> int:
        return step * len(self.chunks) // steps


def sample_clips(jobs: list[ClipJob], max_clips: int | None) -> list[ClipJob]:
    """At most `max_clips` of `jobs`: the clips whose id hashes lowest (a sample that does not depend on the
    list's order), in list order."""
    if max_clips is None or len(jobs) <= max_clips:
        return jobs
    chosen = set(sorted((j.clip_id for j in jobs), key=lambda cid: hashlib.sha1(cid.encode()).digest())[:max_clips])
    return [j for j in jobs if j.clip_id in chosen]


def training_set(jobs: list[ClipJob], cfg: RunConfig, raw_dir: Path, world: World | None = None) -> TrainingSet:
    """Local clips and clips already fetched into `raw_dir` (training never downloads: fetch a remote list
    first, e.g. with `--scorer none`, then train), at most `ssl.max_clips` of them (`sample_clips`), under torchrun
    this rank's share of them, dealt round-robin into chunks."""
    local = [j for j in jobs if j.path is not None or raw_path(raw_dir, j.clip_id).is_file()]
    if len(local) < len(jobs):
        log.info("ssl-train: %d clips not fetched yet are left out", len(jobs) - len(local))
    local = (world or World()).share(sample_clips(local, cfg.ssl.max_clips))
    n_chunks = max(1, math.ceil(len(local) / cfg.ssl.buffer_clips))
    return TrainingSet(tuple(tuple(local[k::n_chunks]) for k in range(n_chunks)), raw_dir)


def load_training_clips(jobs: list[ClipJob], cfg: RunConfig, raw_dir: Path, progress: bool) -> TrainingClips:
    """Decode every clip of `jobs` that is local or fetched, at `ssl.train_fps`; clips that fail to decode are
    skipped (and counted)."""
    side = 2 * round(cfg.ssl.image_size * _CROP_MARGIN / 2)
    raw_dir.mkdir(parents=True, exist_ok=True)
    frames, clip_index, times, audio, ids, failures = [], [], [], [], [], Counter()
    local = [j for j in jobs if j.path is not None or raw_path(raw_dir, j.clip_id).is_file()]
    if len(local) < len(jobs):
        failures["not_fetched_yet"] = len(jobs) - len(local)
    jobs = local

    def work(job: ClipJob):
        try:
            return job.clip_id, _decode_for_training(job, cfg, raw_dir, side)
        except ClipError as exc:
            return job.clip_id, exc.kind

    with ThreadPoolExecutor(max(1, cfg.ssl.threads)) as pool:
        for clip_id, decoded in tqdm(pool.map(work, jobs), total=len(jobs), desc="ssl-train: decode",
                                     unit="clip", disable=not progress):
            if isinstance(decoded, str):
                failures[decoded] += 1
                continue
            f, t, a = decoded
            frames.append(torch.from_numpy(np.ascontiguousarray(f)).permute(0, 3, 1, 2))
            clip_index.append(torch.full((len(t),), len(ids)))
            times.append(torch.from_numpy(t))
            audio.append(torch.from_numpy(a.copy()))
            ids.append(clip_id)
    if len(ids) < 4:
        raise ConfigError([f"score.scorer: training the ssl model needs at least 4 decodable clips, found {len(ids)} "
                           f"(skipped: {dict(failures)}); give score.checkpoint, or fetch the clips first "
                           "(run with --scorer none), then ssl-train"])
    log.info("ssl-train: %d clips, %d frames (failed: %s)", len(ids), sum(map(len, times)), dict(failures))
    return TrainingClips(torch.cat(frames), torch.cat(clip_index), torch.cat(times), audio, ids)


class _Chunk(NamedTuple):
    """A decoded chunk: its clips, their (backgrounds, foreground masks) where background swap is on, and the
    moments a batch may pair (None = all)."""

    data: TrainingClips
    scenes: tuple[torch.Tensor, torch.Tensor] | None
    active: ActiveMoments | None


class _Chunks:
    """The decoded chunk a step trains on, with its backgrounds; the next chunk is decoded in a thread meanwhile."""

    def __init__(self, source: TrainingClips | TrainingSet, cfg: RunConfig, progress: bool):
        self.source, self.cfg, self.progress = source, cfg, progress
        self.index, self.current = -1, None
        self.pool = ThreadPoolExecutor(1)
        self.ahead: dict[int, Future] = {}

    def _load(self, k: int) -> _Chunk:
        data = self.source if isinstance(self.source, TrainingClips) else load_training_clips(
            list(self.source.chunks[k]), self.cfg, self.source.raw_dir, self.progress and k == 0)
        ssl = self.cfg.ssl
        scenes = clip_backgrounds(data) if ssl.background_swap > 0 or ssl.moment_rules_read_foreground else None
        active = active_moments(data, scenes[1] if scenes else None, ssl, self.cfg.decode.sample_rate)
        return _Chunk(data, scenes if ssl.background_swap > 0 else None, active)

    def at(self, step: int) -> _Chunk:
        if isinstance(self.source, TrainingClips):
            k, n = 0, 1
        else:
            k, n = self.source.chunk_at(step, self.cfg.ssl.steps), len(self.source.chunks)
        if k != self.index:
            future = self.ahead.pop(k, None)
            self.current, self.index = future.result() if future else self._load(k), k
            if k + 1 < n and k + 1 not in self.ahead:
                self.ahead[k + 1] = self.pool.submit(self._load, k + 1)
        return self.current

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _augment_images(frames: torch.Tensor, size: int, gen: torch.Generator, colour_jitter: float) -> torch.Tensor:
    """Random resized crop (60-100 % of the side) and horizontal flip; with `colour_jitter` > 0, brightness,
    contrast and saturation scaled by factors in 1 +- colour_jitter (never hue).

    Off by default: the jitter blurs the colour that tells look-alike objects apart (measured on the demo world,
    docs/localisation.md, "Colour jitter"), and background swap already removes the identity it was meant to hide."""
    b = frames.shape[0]
    x = frames.float() / 255.0
    scale = 0.6 + 0.4 * torch.rand(b, generator=gen)
    shift = (1 - scale)[:, None] * (2 * torch.rand(b, 2, generator=gen) - 1)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if colour_jitter > 0:
        grey = x.mean(dim=1, keepdim=True)
        jitter = 1 - colour_jitter + 2 * colour_jitter * torch.rand(b, 3, 1, 1, 1, generator=gen)
        x = x * jitter[:, 0]
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * jitter[:, 1] + x.mean(dim=(1, 2, 3), keepdim=True)
        x = grey + (x - grey) * jitter[:, 2]
    return x.clamp(0, 1)


def _swap_backgrounds(frames: torch.Tensor, clips: torch.Tensor, backgrounds: torch.Tensor, foreground: torch.Tensor,
                      probability: float, gen: torch.Generator) -> torch.Tensor:
    """With `probability`, a frame's foreground on the background of another clip drawn at random. A frame with
    no foreground (its object off screen) becomes that other background alone: the pair then teaches that a
    backdrop does not predict the sound."""
    n = len(backgrounds)
    other = (clips + 1 + torch.randint(n - 1, clips.shape, generator=gen)) % n
    static = foreground.float().mean(dim=(1, 2)) <= _MAX_FOREGROUND
    swap = (torch.rand(len(frames), generator=gen) < probability) & static
    composed = torch.where(foreground[:, None], frames, backgrounds[other])
    return torch.where(swap[:, None, None, None], composed, frames)


@dataclass(frozen=True)
class ClipViews:
    """What the model currently makes of each training clip, from its best-matching sampled frames: the sounding
    object's image features and the sound's audio vector (C, dim) each, L2-normalised."""

    objects: torch.Tensor
    sounds: torch.Tensor

    def neighbours(self, k: int, pool: int = 4) -> torch.Tensor:
        """(C, k) hard negatives of each clip: of its `pool * k` most similar other clips by their objects, the `k`
        whose sounds are least like its own. Clips that look alike but sound different, the pairing the model
        confuses; clips of its own kind (alike in both) would only be false negatives."""
        n = len(self.objects)
        looks = self.objects @ self.objects.T
        looks.fill_diagonal_(-float("inf"))
        candidates = looks.topk(min(pool * k, n - 1), dim=1).indices
        sounds_alike = torch.einsum("cd,ckd->ck", self.sounds, self.sounds[candidates])
        pick = sounds_alike.topk(min(k, candidates.shape[1]), dim=1, largest=False).indices
        return candidates.gather(1, pick)

    def disagreement(self) -> torch.Tensor:
        """(C,) for each clip, the larger of: the share of other clips' objects its sound matches better than its
        own object, and the share of other clips' sounds its object matches better than its own sound. A clip whose
        picture and sound belong together is near the top of both rankings; one whose visible object is not what
        sounds (or that shows nothing that sounds) is not."""
        similarity = self.sounds @ self.objects.T
        own = similarity.diagonal()
        others = max(1, len(own) - 1)
        by_sound = (similarity > own[:, None]).sum(dim=1) / others
        by_object = (similarity > own[None, :]).sum(dim=0) / others
        return torch.maximum(by_sound, by_object)


def _moment_features(model: AVLocalizer, front: torch.nn.Module, data: TrainingClips, frames: torch.Tensor,
                     chunk: int = 512):
    """Per `chunk` of `frames` (indices into `data.frames`): their image maps (B, D, H, W) and the audio vectors
    (B, D) of the model's windows centred on them, from the model in eval mode."""
    side, device = model.cfg.image_size, next(model.parameters()).device
    model.eval()
    for rows in frames.split(chunk):
        images = F.interpolate(data.frames[rows].float() / 255.0, size=(side, side), mode="bilinear",
                               antialias=True, align_corners=False)
        waves = torch.cat([audio_windows(data.audio[int(data.frame_clip[i])], data.frame_t[i:i + 1],
                                         model.cfg.window_s, model.cfg.sample_rate) for i in rows.tolist()])
        yield model.image_maps(images.to(device)), model.audio_vectors(front(waves.to(device)))


@torch.no_grad()
def clip_views(model: AVLocalizer, front: torch.nn.Module, data: TrainingClips, per_clip: int = 8) -> ClipViews:
    """`ClipViews` from `per_clip` evenly spaced frames of each clip, of which the better-matching half count:
    per frame, the image-map vector where the frame's own audio window matches best, and that window's vector."""
    rows = []
    for c in range(len(data.audio)):
        candidates = data.clip_rows[c]
        rows.append(candidates[torch.linspace(0, len(candidates) - 1, per_clip).round().long()])
    objects, sounds, matches = [], [], []
    for maps, vectors in _moment_features(model, front, data, torch.cat(rows)):
        maps = maps.flatten(2)
        best = torch.einsum("bcp,bc->bp", maps, vectors).max(dim=1)
        objects.append(maps[torch.arange(len(maps)), :, best.indices].cpu())
        sounds.append(vectors.cpu())
        matches.append(best.values.cpu())
    n = len(data.audio)
    objects, sounds = torch.cat(objects).view(n, per_clip, -1), torch.cat(sounds).view(n, per_clip, -1)
    top = torch.cat(matches).view(n, per_clip).topk(max(1, per_clip // 2), dim=1).indices[..., None]
    return ClipViews(F.normalize(objects.gather(1, top.expand(-1, -1, objects.shape[2])).mean(dim=1), dim=1),
                     F.normalize(sounds.gather(1, top.expand(-1, -1, sounds.shape[2])).mean(dim=1), dim=1))


def _batch_clips(n_clips: int, cfg: SSLConfig, gen: torch.Generator, neighbours: torch.Tensor | None,
                 eligible: torch.Tensor | None) -> torch.Tensor:
    """The batch's B/2 clips, from the `eligible` ones (a bool mask; None = all): with `neighbours`, a
    `hard_negatives` share of them in groups of a random clip and its nearest clips (each clip at most once), the
    rest at random."""
    order = torch.randperm(n_clips, generator=gen)
    if eligible is not None:
        order = order[eligible[order]]
    n = min(cfg.batch_size // 2, len(order))
    if neighbours is None or cfg.hard_negatives <= 0:
        return order[:n]
    n_hard = int(round(n * cfg.hard_negatives))
    chosen: list[int] = []
    taken = torch.zeros(n_clips, dtype=torch.bool) if eligible is None else ~eligible
    for seed in order.tolist():
        if len(chosen) >= n_hard:
            break
        if taken[seed]:
            continue
        group = [seed] + [c for c in neighbours[seed].tolist() if not taken[c]][: cfg.hard_negative_group - 1]
        group = group[: n_hard - len(chosen)]
        chosen += group
        taken[group] = True
    rest = order[~taken[order]][: n - len(chosen)]
    return torch.cat([torch.tensor(chosen, dtype=torch.long), rest])


def _agreeing(disagreement: torch.Tensor, share: float) -> torch.Tensor:
    """Mask of the `share` of clips (at least 4) whose sound and picture disagree least (ties by index)."""
    keep = max(4, math.ceil(share * len(disagreement)))
    order = torch.sort(disagreement, stable=True).indices
    mask = torch.zeros(len(disagreement), dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


def _batch_frames(data: TrainingClips, cfg: SSLConfig, gen: torch.Generator, neighbours: torch.Tensor | None,
                  eligible: torch.Tensor | None, active: ActiveMoments | None) -> torch.Tensor:
    """The frames of a batch: B/2 clips, two frames each, so the same clip appears twice and clip identity alone
    cannot match. `neighbours` (`ClipViews.neighbours`) hard negatives; `eligible` the clips a batch may hold;
    `active` the moments it may pair (None = all)."""
    if active is not None:
        eligible = active.clips if eligible is None else eligible & active.clips
    frame_ids = []
    for c in _batch_clips(len(data.audio), cfg, gen, neighbours, eligible).tolist():
        candidates = data.clip_rows[c]
        if active is not None:
            candidates = candidates[active.frames[candidates]]
        frame_ids.append(candidates[torch.randperm(len(candidates), generator=gen)[:2]])
    return torch.cat(frame_ids)


def _batch(data: TrainingClips, cfg: SSLConfig, window_s: float, rate: int, gen: torch.Generator,
           scenes: tuple[torch.Tensor, torch.Tensor] | None = None, neighbours: torch.Tensor | None = None,
           eligible: torch.Tensor | None = None, active: ActiveMoments | None = None):
    """A batch's images and audio windows (`_batch_frames`), augmented. `scenes` = (backgrounds, foreground
    masks) turns background swap on."""
    frame_ids = _batch_frames(data, cfg, gen, neighbours, eligible, active)
    frames = data.frames[frame_ids]
    if scenes is not None:
        frames = _swap_backgrounds(frames, data.frame_clip[frame_ids], scenes[0], scenes[1][frame_ids],
                                   cfg.background_swap, gen)
    images = _augment_images(frames, cfg.image_size, gen, cfg.colour_jitter)
    jitter = (torch.rand(len(frame_ids), generator=gen) - 0.5) * 0.2  # +-0.1 s around the frame
    gain = 10 ** ((torch.rand(len(frame_ids), 1, generator=gen) - 0.5) * 12 / 20)  # +-6 dB
    waves = torch.cat([audio_windows(data.audio[int(data.frame_clip[i])], data.frame_t[i:i + 1] + jitter[j:j + 1],
                                     window_s, rate) for j, i in enumerate(frame_ids.tolist())])
    return images, waves * gain


def mil_infonce(maps: torch.Tensor, vectors: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """Symmetric InfoNCE over the batch with max-over-map logits; also the in-batch retrieval accuracy."""
    logits = AVLocalizer.all_pairs_max(maps, vectors) / temperature
    target = torch.arange(len(logits), device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss, float((logits.argmax(dim=1) == target).float().mean())


@torch.no_grad()
def _reference_banks(model: AVLocalizer, front: torch.nn.Module, data: TrainingClips, size: int,
                     gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Audio vectors and image maps of `size` moments, each from a different clip where possible: what the
    contrastive score compares a frame's (and an audio window's) own match against."""
    frames = []
    for c in torch.randperm(len(data.audio), generator=gen)[:size].tolist():
        candidates = data.clip_rows[c]
        frames.append(int(candidates[torch.randint(len(candidates), (1,), generator=gen)]))
    maps, vectors = zip(*_moment_features(model, front, data, torch.tensor(frames)), strict=True)
    return {"audio": torch.cat(vectors).cpu(), "image": torch.cat(maps).cpu()}


def _truncate_log(loss_log: Path, step: int) -> None:
    """Drop log lines past the checkpoint's step (a killed run logged steps it never saved)."""
    if loss_log.exists():
        lines = [line for line in loss_log.read_text().splitlines() if json.loads(line)["step"] <= step]
        atomic_write_bytes(loss_log, "".join(line + "\n" for line in lines).encode())


def training_device(ssl: SSLConfig) -> torch.device:
    if ssl.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(ssl.device)


def load_image_init(model: AVLocalizer, path: str) -> None:
    """Initialise the image trunk from a torchvision ResNet-18 state dict (its classifier `fc.*` left out; every
    other key must fit), as EZ-VSL starts from ImageNet weights. The file is the user's: nothing is downloaded."""
    from curation.localise.published import safe_load

    blob = safe_load(path)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        raise ConfigError([f"ssl.image_init: {path} holds no state dict"])
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    load_state_strict(model.imgnet, state, f"{path} (ssl.image_init, a torchvision ResNet-18)")


@dataclass
class _Trainer:
    """The model, its front end and optimizer on the training device, and how a step runs there: its precision,
    memory layout and data-parallel world."""

    model: AVLocalizer
    net: torch.nn.Module  # the model, wrapped by DistributedDataParallel under torchrun
    front: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    world: World
    precision: str

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, images: torch.Tensor, waves: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
        """The global batch's MIL-InfoNCE (every rank's pairs gathered), scaled by the world size so that DDP's
        mean of the ranks' gradients is its gradient; and the in-batch accuracy."""
        images = images.to(self.device).contiguous(memory_format=torch.channels_last)
        spectrograms = self.front(waves.to(self.device))
        with self.autocast():
            maps, vectors = self.net(images, spectrograms)
        loss, acc = mil_infonce(self.world.gather(maps.float()), self.world.gather(vectors.float()), temperature)
        return loss * self.world.size, acc

    def step(self, images: torch.Tensor, waves: torch.Tensor, temperature: float, lr: float) -> tuple[float, float]:
        """One optimisation step at learning rate `lr`: the global batch's loss (as logged) and accuracy."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, acc = self.loss(images, waves, temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item() / self.world.size, acc


def _trainer(cfg: RunConfig, blob: dict | None, checkpoint: Path) -> _Trainer:
    """Build the model (from `blob` when resuming, else seeded, from `ssl.image_init` when given) on the device."""
    device = training_device(cfg.ssl)
    world = join(device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    mcfg = model_config(cfg.ssl, cfg.decode.sample_rate)
    torch.manual_seed(cfg.ssl.seed)
    model = AVLocalizer(mcfg)
    if blob is not None:
        load_state_strict(model, blob["model"], str(checkpoint))
    elif cfg.ssl.image_init:
        load_image_init(model, cfg.ssl.image_init)
    model = model.to(device, memory_format=torch.channels_last)  # CPU and CUDA: docs/localisation.md, "Training speed"
    net = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.ssl.lr, weight_decay=cfg.ssl.weight_decay)
    if blob is not None and blob["optimizer"] is not None:
        optimizer.load_state_dict(blob["optimizer"])
    return _Trainer(model, net, audio_front_end(mcfg).to(device), optimizer, device, world, cfg.ssl.precision)


def _local_batch_config(ssl: SSLConfig, world: World) -> SSLConfig:
    """Each rank draws batch_size / world_size of the global batch (whole clip pairs)."""
    if ssl.batch_size % (2 * world.size):
        raise ConfigError([f"ssl.batch_size: {ssl.batch_size} pairs do not split into two moments per clip on "
                           f"{world.size} ranks; use a multiple of {2 * world.size}"])
    return replace(ssl, batch_size=ssl.batch_size // world.size)


def train(source: TrainingClips | TrainingSet, cfg: RunConfig, checkpoint: Path, progress: bool = True) -> Path:
    """Train (or resume) the localisation model; writes `checkpoint`, `loss.jsonl` beside it.

    `source`: decoded clips, or a `TrainingSet` decoded chunk by chunk (under torchrun: this rank's share).
    Batches are drawn on the CPU from a generator seeded by the step (and rank), so a resumed run sees the same
    batches, and trained on `ssl.device`. Under torchrun rank 0 alone reads and writes the checkpoint and log."""
    torch.set_num_threads(cfg.ssl.threads)
    world = join(training_device(cfg.ssl))
    blob = world.from_main(checkpoint_blob(checkpoint) if world.is_main and checkpoint.exists() else None)
    t = _trainer(cfg, blob, checkpoint)
    local = _local_batch_config(cfg.ssl, t.world)
    step = int(blob["step"]) if blob is not None else 0
    loss_log = Path(ModelFiles(str(checkpoint)).loss_log)
    if t.world.is_main:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        _truncate_log(loss_log, step)
    chunks = _Chunks(source, cfg, progress)
    bar = tqdm(total=cfg.ssl.steps, initial=step, desc="ssl-train", unit="step", disable=not progress)
    started = time.perf_counter()
    try:
        neighbours, eligible, mined_on = None, None, None
        while step < cfg.ssl.steps:
            data, scenes, active = chunks.at(step)
            cleaning = cfg.ssl.clean_share < 1 and step >= cfg.ssl.clean_from * cfg.ssl.steps
            judge = step % cfg.ssl.checkpoint_every == 0 or mined_on is not data  # a resume starts on such a step
            if (cfg.ssl.hard_negatives > 0 or cleaning) and judge:
                views, mined_on = clip_views(t.model, t.front, data), data
                if cfg.ssl.hard_negatives > 0:
                    neighbours = views.neighbours(cfg.ssl.hard_negative_group - 1)
                if cleaning:
                    eligible = _agreeing(views.disagreement(), cfg.ssl.clean_share)
            t.model.train()
            gen = torch.Generator().manual_seed(cfg.ssl.seed * 1_000_003 + step + t.world.rank * 2**40)
            images, waves = _batch(data, local, t.model.cfg.window_s, t.model.cfg.sample_rate, gen, scenes,
                                   neighbours, eligible, active)
            lr = cfg.ssl.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.ssl.steps))
            loss, acc = t.step(images, waves, cfg.ssl.temperature, lr)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}", refresh=False)
            if t.world.is_main:
                _log_step(loss_log, step, loss, acc, lr, time.perf_counter() - started)
            if step == cfg.ssl.steps or step % cfg.ssl.checkpoint_every == 0:
                _save(t, cfg, checkpoint, step, data)
    finally:
        chunks.close()
    bar.close()
    return checkpoint


def _log_step(loss_log: Path, step: int, loss: float, acc: float, lr: float, seconds: float) -> None:
    with open(loss_log, "a") as f:
        f.write(json.dumps({"step": step, "loss": round(loss, 5), "acc": round(acc, 4), "lr": lr,
                            "seconds": round(seconds, 2)}) + "\n")


def _save(t: _Trainer, cfg: RunConfig, checkpoint: Path, step: int, data: TrainingClips) -> None:
    """Rank 0 writes the checkpoint (with the reference bank of its clips once finished); the others wait."""
    if t.world.is_main:
        done = step == cfg.ssl.steps
        bank = _reference_banks(t.model, t.front, data, cfg.ssl.bank_size,
                                torch.Generator().manual_seed(cfg.ssl.seed)) if done else None
        save_checkpoint(checkpoint, t.model, t.optimizer, step, bank, cfg.ssl)
    t.world.barrier()


def final_loss(loss_log: Path, steps: int) -> float:
    """Mean training loss over the last tenth of the steps: what restarts are compared by."""
    losses = [json.loads(line)["loss"] for line in loss_log.read_text().splitlines()]
    return float(np.mean(losses[-max(1, steps // 10):]))


def is_finished(checkpoint: Path, steps: int) -> bool:
    """A checkpoint that exists and has trained all `steps` (anything less is resumed)."""
    return checkpoint.exists() and checkpoint_blob(checkpoint)["step"] >= steps


def parallel_restarts(ssl: SSLConfig, world: World) -> int:
    """How many restarts train at once: `ssl.parallel_restarts`, or with 0 as many as the machine's cores hold at
    `ssl.threads` each; one on CUDA and under torchrun (the device or the ranks are the parallelism there)."""
    if world.size > 1 or training_device(ssl).type != "cpu":
        return 1
    return ssl.parallel_restarts or max(1, len(os.sched_getaffinity(0)) // max(1, ssl.threads))


def _train_quietly(source: TrainingClips | TrainingSet, cfg: RunConfig, checkpoint: Path) -> None:
    train(source, cfg, checkpoint, progress=False)


def _exit_with(parent: int) -> None:
    """A side-by-side restart ends when the process that started it is gone (killed, not only interrupted):
    an orphan would train on, unseen, beside the next run."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _train_side_by_side(source: TrainingClips | TrainingSet, single: dict[int, RunConfig], paths: list[Path],
                        at_once: int, progress: bool) -> None:
    """Train the restarts in `single` in `at_once` spawned processes (the decoded clips reach them through shared
    memory). Each process trains exactly what it would alone: the same seed, threads and batches, so the same bits.
    Progress is the steps logged so far by all of them."""
    total = sum(c.ssl.steps for c in single.values())
    bar = tqdm(total=total, desc=f"ssl-train: {len(single)} restarts, {at_once} at once", unit="step",
               disable=not progress)
    with ProcessPoolExecutor(at_once, mp_context=torch.multiprocessing.get_context("spawn"), initializer=_exit_with,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_train_quietly, source, c, paths[k]) for k, c in single.items()]
        logs = [Path(ModelFiles(str(paths[k])).loss_log) for k in single]
        while wait(futures, timeout=1.0).not_done:
            bar.update(sum(len(log.read_bytes().splitlines()) for log in logs if log.exists()) - bar.n)
        for future in futures:
            future.result()  # a failed restart fails the training, with its own error
    bar.close()


def train_restarts(source: TrainingClips | TrainingSet, cfg: RunConfig, checkpoint: Path,
                   progress: bool = True) -> Path:
    """`ssl.restarts` trainings from seeds `seed * restarts + k`, each resumable in `restarts/<k>/`; the one whose
    training loss ended lowest becomes `checkpoint` (its loss.jsonl beside it; `restarts.json` records them all),
    carrying the others, by loss, as ensemble members (`score.ensemble` scores with several).

    The same objective on the same clips, so its final value ranks the restarts without labels: of six single
    trainings on the demo world, the three with the lowest loss kept >= 93 % of good clips at >= 0.96 precision,
    the other three <= 76 % (docs/localisation.md, "Restarts and ensembles")."""
    if cfg.ssl.restarts == 1:
        return train(source, cfg, checkpoint, progress)
    world = join(training_device(cfg.ssl))
    files = ModelFiles(str(checkpoint))
    paths = [Path(files.restart(k).model) for k in range(cfg.ssl.restarts)]
    unfinished = world.from_main([world.is_main and not is_finished(path, cfg.ssl.steps) for path in paths])
    if any(unfinished) and isinstance(source, TrainingSet) and len(source.chunks) == 1:  # decoded once for all
        source = load_training_clips(list(source.chunks[0]), cfg, source.raw_dir, progress)
    single = {k: replace(cfg, ssl=replace(cfg.ssl, seed=cfg.ssl.seed * cfg.ssl.restarts + k, restarts=1))
              for k in range(cfg.ssl.restarts) if unfinished[k]}
    at_once = min(len(single), parallel_restarts(cfg.ssl, world))
    if at_once > 1:
        _train_side_by_side(source, single, paths, at_once, progress)
    else:
        for k, single_cfg in single.items():
            train(source, single_cfg, paths[k], progress)
    if not world.is_main:
        world.barrier()  # rank 0 assembles the checkpoint
        return checkpoint
    runs = [{"restart": k, "seed": cfg.ssl.seed * cfg.ssl.restarts + k,
             "final_loss": round(final_loss(Path(files.restart(k).loss_log), cfg.ssl.steps), 5)}
            for k in range(cfg.ssl.restarts)]
    runs_by_loss = sorted(runs, key=lambda run: (run["final_loss"], run["restart"]))
    best = runs_by_loss[0]
    chosen = files.restart(best["restart"])
    log.info("ssl-train: restart %d (seed %d) ended with the lowest loss, %.4f", best["restart"], best["seed"],
             best["final_loss"])
    atomic_write_bytes(files.loss_log, Path(chosen.loss_log).read_bytes())
    record = {"chosen": best["restart"], "runs": runs, "by_loss": [run["restart"] for run in runs_by_loss]}
    atomic_write_bytes(files.restarts_record, json_bytes(record))
    others = [checkpoint_blob(Path(files.restart(run["restart"]).model)) for run in runs_by_loss[1:]]
    blob = checkpoint_blob(Path(chosen.model))
    atomic_write_bytes(checkpoint, with_ensemble(blob, others))  # last: its presence means finished
    world.barrier()
    return checkpoint
