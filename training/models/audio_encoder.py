"""Stage 3 audio encoder: front end -> ResNet-18 layout with a 1-channel first conv -> pooled -> linear."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.audio import LogSpectrogram
from training.config import AudioConfig
from training.models.blocks import ResNetTrunk


@dataclass(frozen=True)
class AudioEncoderConfig:
    """What rebuilds the model from a checkpoint."""

    audio: AudioConfig
    width: int
    embed_dim: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AudioEncoderConfig:
        audio = {"crop": "clip", **d["audio"]}  # checkpoints from before audio.crop heard the clip's start
        return cls(AudioConfig(**audio), int(d["width"]), int(d["embed_dim"]))


class AudioEncoder(nn.Module):
    """(batch, samples) waveforms -> (batch, embed_dim) L2-normalised embeddings in the image space."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.front = LogSpectrogram(cfg.audio)
        self.trunk = ResNetTrunk(1, cfg.width, (2, 2, 2, 2), stem="imagenet")
        self.head = nn.Linear(self.trunk.out_dim, cfg.embed_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(self.front(wave))).float(), dim=-1)
