"""How a model scorer runs: its device, its precision, and batches that span clips.

A model scorer (`score.LearnedScorer`, `published.PublishedScorer`) says what its model computes for one batch
of frames (`forward`, the per-batch math) and how a clip becomes model inputs; this module runs it:
- `score(clip)`: one clip in batches of at most `score.batch_size` of its own frames (the CPU pipeline's path);
- `inputs(clip)` on a CPU worker, then `score_across(inputs)` on a scoring worker: the frames of several clips
  in batches of exactly `score.batch_size` (the last one padded), so a clip's scores do not depend on which
  clips shared its batches (tested), and a resumed run scores a clip as an uninterrupted one did.
On CUDA, the model and images are channels_last; `score.precision = "bf16"` runs `forward` under bfloat16
autocast (on the CPU too). `cpu` + `fp32` runs exactly the operations of the CPU path before devices existed.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import numpy as np
import torch

from curation.errors import UsageError
from curation.localise.clip_scores import ClipScores
from curation.localise.scorers import Scorer


class DeviceError(UsageError):
    """A configured device this machine does not have (one line, at a worker's start)."""


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `auto` (CUDA when present) as a torch device this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"score.device = {name}: this machine has no CUDA device (torch {torch.__version__}); "
                              "use score.device = cpu or auto")
        index = re.fullmatch(r"cuda(?::(\d+))?", name)
        if index is None or (index.group(1) and int(index.group(1)) >= torch.cuda.device_count()):
            raise DeviceError(f"score.device = {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


@dataclass(frozen=True)
class ModelInputs:
    """One clip's model inputs, made on a CPU worker; what travels to a scoring worker (no full-size frames)."""

    images: torch.Tensor  # (T, 3, S, S) uint8 at the model's input size
    audio: torch.Tensor  # the scorer's audio input: the clip's waveform, or one spectrogram per frame
    times: torch.Tensor  # (T,) float64 seconds

    @property
    def n_frames(self) -> int:
        return len(self.times)


@dataclass(frozen=True)
class FrameScores:
    """What `forward` returns for a batch of frames: one row per frame, as tensors on the device. A batch may hold
    several clips' frames (`score_across`); one clip's rows become its `clip_scores.ClipScores` (numpy arrays:
    what a scorer returns for a whole clip) in `DeviceScorer.clip_scores`."""

    best: torch.Tensor  # (B,) the frame's score (the map's maximum)
    maps: torch.Tensor  # (B, h, w) localisation maps
    contrast: torch.Tensor | None = None  # (B,) score comparable across clips, when the scorer has a bank

    @staticmethod
    def cat(parts: list[FrameScores]) -> FrameScores:
        contrast = [p.contrast for p in parts]
        return FrameScores(torch.cat([p.best for p in parts]), torch.cat([p.maps for p in parts]),
                           torch.cat(contrast) if all(c is not None for c in contrast) else None)

    def to_cpu(self) -> FrameScores:
        """float32 on the CPU, in one copy per tensor (not one per clip)."""
        return FrameScores(self.best.float().cpu(), self.maps.float().cpu(),
                           None if self.contrast is None else self.contrast.float().cpu())

    def rows(self, lo: int, hi: int) -> FrameScores:
        return FrameScores(self.best[lo:hi], self.maps[lo:hi], None if self.contrast is None else self.contrast[lo:hi])


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.float().cpu().numpy().astype(np.float32)


class DeviceScorer(Scorer):
    """Runs a model scorer's `forward` on its device. Subclasses set `device`, `precision` and `batch_size` (via
    `place`) and define `forward(images, audio)`, `batch(clip, rows)`, `inputs(clip)` and `frame_audio(inputs)`."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    batch_size: int = 100

    def place(self, modules: list[torch.nn.Module], device: str, precision: str, batch_size: int) -> None:
        """Move the scorer's modules to `device` (channels_last on CUDA) and remember how to run them."""
        self.device, self.precision, self.batch_size = resolve_device(device), precision, batch_size
        for module in modules:
            module.to(self.device)
            if self.device.type == "cuda":
                module.to(memory_format=torch.channels_last)

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def device_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) images -> floats in [0, 1] on the device (channels_last on CUDA)."""
        x = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x.float() / 255.0

    def clip_scores(self, frames: FrameScores) -> ClipScores:
        """One clip's rows of the batch tensors as its numpy `ClipScores`."""
        return ClipScores(scores=_numpy(frames.best), maps=_numpy(frames.maps),
                          contrastive=None if frames.contrast is None else _numpy(frames.contrast))

    def score(self, clip):
        """One clip's frames in batches of at most `batch_size` (a batch never holds two clips' frames)."""
        with torch.inference_mode(), self.autocast():
            parts = [self.forward(*self.batch(clip, slice(lo, lo + self.batch_size)))
                     for lo in range(0, len(clip.times), self.batch_size)]
        return self.clip_scores(FrameScores.cat(parts))

    def score_across(self, inputs: list[ModelInputs]) -> list[ClipScores]:
        """Several clips' inputs in batches of exactly `batch_size` frames that run across clip boundaries (the
        last batch padded with zeros): one ClipScores per clip, in order."""
        sizes = [i.n_frames for i in inputs]
        total, bs = sum(sizes), self.batch_size
        pad = -total % bs
        with torch.inference_mode():
            images = [i.images for i in inputs]
            images = torch.cat(images + [images[0].new_zeros((pad, *images[0].shape[1:]))])
            audio = [self.frame_audio(i) for i in inputs]
            audio = torch.cat(audio + [audio[0].new_zeros((pad, *audio[0].shape[1:]))])
            if self.device.type == "cuda":
                images = images.pin_memory()
            with self.autocast():
                parts = [self.forward(self.device_images(images[lo:lo + bs]), audio[lo:lo + bs])
                         for lo in range(0, total + pad, bs)]
            frames = FrameScores.cat(parts).to_cpu()
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [self.clip_scores(frames.rows(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
