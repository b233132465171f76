"""Audio front end: waveform -> log power spectrogram -> normalisation with *global* statistics.

Like the official Sound2Scene code (16 kHz mono, tiled to 10 s, 512-sample windows, 257 bins, log of the
one-sided power spectral density), except for the normalisation: the official code subtracts each clip's own
mean and divides by its own std, which erases absolute loudness; here every clip is normalised with the same
per-frequency-bin mean/std, computed once over the training shards and stored in the stage-3 checkpoint, so a
gain on the waveform stays a (per-bin constant) offset of the features and volume control can work.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from training.config import AudioConfig


def load_waveform(flac: bytes, cfg: AudioConfig, centre_s: float | None = None) -> np.ndarray:
    """Decode a shard's `flac` member to float32 mono at cfg.sample_rate, fitted to cfg.seconds (fit_length)."""
    wave, rate = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    if rate != cfg.sample_rate:
        raise ValueError(f"audio is {rate} Hz, the front end expects {cfg.sample_rate} Hz")
    return fit_length(wave.mean(axis=1), cfg, centre_s)


def fit_length(wave: np.ndarray, cfg: AudioConfig, centre_s: float | None = None) -> np.ndarray:
    """cfg.seconds of the clip: with crop "moment", the window centred on `centre_s` (the clip's middle when
    None), shifted to lie inside the clip; then a short clip is tiled (as the official code does: np.tile) and
    a long one cut."""
    n = int(round(cfg.seconds * cfg.sample_rate))
    if wave.size == 0:
        raise ValueError("empty audio")
    if cfg.crop == "moment" and wave.size > n:
        centre = wave.size // 2 if centre_s is None else int(round(centre_s * cfg.sample_rate))
        start = min(max(centre - n // 2, 0), wave.size - n)
        wave = wave[start:start + n]
    return np.clip(np.tile(wave, math.ceil(n / wave.size))[:n], -1.0, 1.0).astype(np.float32)


class LogSpectrogram(nn.Module):
    """(batch, samples) waveforms -> (batch, 1, bins, frames) normalised log spectrograms.

    The global statistics are buffers, so they travel with the model's state dict (and checkpoint)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.n_fft, self.hop, self.eps = cfg.n_fft, cfg.hop, cfg.eps
        self.sample_rate, self.normalisation = cfg.sample_rate, cfg.normalisation
        self.time_pool, self.freq_pool = cfg.time_pool, cfg.freq_pool
        bins = cfg.n_fft // 2 + 1
        window = torch.hann_window(cfg.n_fft)
        self.register_buffer("window", window, persistent=False)
        # one-sided PSD density scaling (scipy.signal.spectrogram's default), so `eps` means what it does there
        self.psd_scale = 2.0 / (cfg.sample_rate * float((window**2).sum()))
        self.register_buffer("mean", torch.zeros(bins))
        self.register_buffer("std", torch.ones(bins))
        self.register_buffer("stats_ready", torch.tensor(False))

    def log_power(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, bins, frames) log PSD, before any normalisation."""
        spec = torch.stft(wave.float(), self.n_fft, self.hop, window=self.window, center=True,
                          return_complex=True)
        return torch.log(spec.abs().square() * self.psd_scale + self.eps)

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))
        self.stats_ready.fill_(True)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.log_power(wave)
        if self.normalisation == "per_clip":  # the official code: each clip's own mean/std
            x = (x - x.mean(dim=(1, 2), keepdim=True)) / (x.std(dim=(1, 2), keepdim=True) + 1e-9)
        else:
            if not bool(self.stats_ready):
                raise RuntimeError("global audio statistics are not set (compute them with compute_stats)")
            x = (x - self.mean[:, None]) / self.std[:, None]
        x = x.unsqueeze(1)
        if self.time_pool > 1 or self.freq_pool > 1:
            x = F.avg_pool2d(x, (self.freq_pool, self.time_pool), ceil_mode=True)
        return x


class StatsAccumulator:
    """Per-bin sums over many clips (float64), reducible across ranks."""

    def __init__(self, bins: int):
        self.total = torch.zeros(3, bins, dtype=torch.float64)  # count, sum, sum of squares

    def add(self, log_power: torch.Tensor) -> None:
        x = log_power.detach().to(torch.float64).cpu()  # (batch, bins, frames)
        self.total[0] += x.shape[0] * x.shape[2]
        self.total[1] += x.sum(dim=(0, 2))
        self.total[2] += x.square().sum(dim=(0, 2))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        count, s, ss = self.total
        if float(count[0]) == 0:
            raise ValueError("no training audio to compute the normalisation statistics from")
        mean = s / count
        std = (ss / count - mean.square()).clamp_min(0).sqrt()
        return mean.float(), std.float()
