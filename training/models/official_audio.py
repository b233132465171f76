"""The released Sound2Scene audio encoder (`sound2scene.pth`) and its own audio front end.

Front end, as the official test code (kaist-ami/Sound2Scene test.py) computes it: 16 kHz audio tiled to 10 s
and clipped to [-1, 1], `scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=353)` with scipy's defaults
(periodic Tukey(0.25) window, per-segment mean removed, one-sided PSD density), log(S + 1e-7), then each clip
standardised by its own mean and (population) std -> 1 x 257 x 1004. Written in torch (float64, batched, on the
model's device) and checked against scipy in the tests. The per-clip standardisation erases loudness, so a gain
on the waveform changes nothing here except through clipping (the project's own encoder keeps it).
Encoder: `audnet`, a torchvision-layout ResNet-18 with a one-channel conv1, average pooling and `audnet.fc`
512 -> 2048 followed by ReLU; the 2048-d output, L2-normalised, is the embedding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import scipy.signal
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.config import AudioConfig

NPERSEG, NOVERLAP, LOG_EPS = 512, 353, 1e-7
EMBED_DIM = 2048
# how waveforms are read for this encoder (generate's load_audio, the stage-3 loader): 16 kHz, the clip's first
# 10 s (tiled when shorter); the spectrogram fields describe the front end above
OFFICIAL_AUDIO = AudioConfig(sample_rate=16000, seconds=10.0, crop="clip", n_fft=NPERSEG, hop=NPERSEG - NOVERLAP,
                             eps=LOG_EPS, normalisation="per_clip", time_pool=1, freq_pool=1)


@dataclass(frozen=True)
class OfficialAudioConfig:
    """Stands where the project's AudioEncoderConfig does (`.audio`, `.embed_dim`); nothing to choose."""

    audio: AudioConfig = field(default_factory=lambda: OFFICIAL_AUDIO)
    embed_dim: int = EMBED_DIM

    def to_dict(self) -> dict:
        """The stage-3 checkpoint's model_config; `kind` tells load_audio_encoder which model to build."""
        return {"kind": "sound2scene", **dataclasses.asdict(self)}


class OfficialSpectrogram(nn.Module):
    """(B, samples) waveforms at 16 kHz -> (B, 1, 257, frames) per-clip standardised log spectrograms."""

    def __init__(self, sample_rate: int = 16000):
        super().__init__()
        window = torch.from_numpy(scipy.signal.get_window(("tukey", 0.25), NPERSEG))  # scipy's default window
        self.register_buffer("window", window, persistent=False)  # not in the released state dict
        self.scale = 1.0 / (sample_rate * float((window**2).sum()))  # scaling="density"

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = wave.to(torch.float64).unfold(-1, NPERSEG, NPERSEG - NOVERLAP)  # (B, frames, 512)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # detrend="constant"
        power = torch.fft.rfft(frames * self.window, dim=-1).abs().square() * self.scale
        power[..., 1:-1] *= 2  # one-sided: every bin but DC and Nyquist counts twice
        spec = torch.log(power.transpose(1, 2) + LOG_EPS)
        mean = spec.mean(dim=(1, 2), keepdim=True)
        std = spec.std(dim=(1, 2), keepdim=True, unbiased=False)  # np.std
        return ((spec - mean) / (std + 1e-9)).unsqueeze(1).float()


class Sound2SceneAudioEncoder(nn.Module):
    """(B, samples) waveforms -> (B, 2048) L2-normalised embeddings; state dict keys `audnet.*` only."""

    def __init__(self):
        super().__init__()
        self.cfg = OfficialAudioConfig()
        self.front = OfficialSpectrogram(self.cfg.audio.sample_rate)
        self.audnet = torchvision.models.resnet18(weights=None, num_classes=EMBED_DIM)
        self.audnet.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)

    def embed_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 1, 257, frames) -> the official 2048-d output relu(fc(pool)), not normalised."""
        return F.relu(self.audnet(spec))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_spectrogram(self.front(wave)), dim=-1)
