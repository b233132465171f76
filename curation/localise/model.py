"""Sound source localisation model in the EZ-VSL family (Mo & Morgado, ECCV 2022), sized by config.

Image trunk: ResNet-18 layout -> spatial map -> 1x1 projection. Audio trunk: ResNet-18 layout with a
1-channel first conv over a log spectrogram -> global max-pool -> linear projection. The localisation map
is the cosine similarity between the audio vector and every map position. At full width the parameter names
are torchvision's, so published EZ-VSL / FNAC checkpoints load (`curation.localise.published`). Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curation.errors import CheckpointError


@dataclass(frozen=True)
class SSLModelConfig:
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # torchvision ResNet-18; the CPU variant is narrower
    image_maxpool: bool = True  # the stem max-pool: 224 px -> 7x7 map with it, 112 px -> 7x7 without
    image_size: int = 224
    # width of a per-pixel colour branch (two 1x1 convs) whose output, max-pooled to each map position, joins the
    # trunk's features before the projection; 0 = none, the published EZ-VSL layout
    colour_branch: int = 0
    dim: int = 512  # shared embedding size
    # audio front end: log magnitude spectrogram (n_mels = 0) or log-mel (n_mels > 0) of 16 kHz audio
    sample_rate: int = 16000
    window_s: float = 3.0
    n_fft: int = 512
    hop: int = 274  # EZ-VSL's hop: 3 s -> 176 frames
    n_mels: int = 0
    # how frames and sound become model inputs: `native` (centre square, antialiased bilinear; log |STFT| above)
    # or `ezvsl`, the published test-time inputs: the whole frame resized bicubic, aspect not kept, and EZ-VSL's
    # 257 x 200 scipy spectrogram of 3 s (`EZVSLSpectrogram`; n_fft, hop and n_mels then unused)
    preprocess: str = "native"

    @classmethod
    def from_dict(cls, data: dict) -> SSLModelConfig:
        data = dict(data)
        data["widths"] = tuple(data["widths"])
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (same attribute names, so state dicts are interchangeable)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18Trunk(nn.Module):
    """ResNet-18 layout without pooling head: returns the last feature map."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], maxpool: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        chans = [widths[0], *widths]
        for i in range(4):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(chans[i], chans[i + 1], stride), BasicBlock(chans[i + 1], chans[i + 1], 1))
            setattr(self, f"layer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def colour_branch(width: int) -> nn.Sequential:
    """Per-pixel colour detectors: a small trunk at low resolution blurs hues that differ in one channel only
    (the demo world's blue square and cyan diamond, docs/localisation.md); these see every pixel's colour."""
    return nn.Sequential(nn.Conv2d(3, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                         nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


class AVLocalizer(nn.Module):
    """EZ-VSL-style model: `imgnet`, `img_proj`, `audnet`, `aud_proj` (the published key prefixes), and
    `img_colour` where the config asks for a colour branch."""

    def __init__(self, cfg: SSLModelConfig):
        super().__init__()
        self.cfg = cfg
        self.imgnet = ResNet18Trunk(3, cfg.widths, cfg.image_maxpool)
        self.img_colour = colour_branch(cfg.colour_branch) if cfg.colour_branch else None
        self.img_proj = nn.Conv2d(cfg.widths[-1] + cfg.colour_branch, cfg.dim, 1)
        self.audnet = ResNet18Trunk(1, cfg.widths, True)
        self.aud_proj = nn.Linear(cfg.widths[-1], cfg.dim)
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def image_maps(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float images (B, 3, H, W) -> L2-normalised maps (B, dim, h, w)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        x = (x - self.image_mean) / self.image_std
        features = self.imgnet(x)
        if self.img_colour is not None:
            colours = F.adaptive_max_pool2d(self.img_colour(x), features.shape[-2:])
            features = torch.cat([features, colours], dim=1)
        return F.normalize(self.img_proj(features), dim=1)

    def audio_vectors(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) log spectrograms -> L2-normalised vectors (B, dim)."""
        pooled = torch.amax(self.audnet(spectrograms), dim=(2, 3))
        return F.normalize(self.aud_proj(pooled), dim=1)

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image maps and audio vectors of a training batch (what DistributedDataParallel wraps)."""
        return self.image_maps(images), self.audio_vectors(spectrograms)

    def localise(self, images: torch.Tensor, spectrograms: torch.Tensor) -> torch.Tensor:
        """Paired images and spectrograms -> cosine maps (B, h, w)."""
        return self.localization(self.image_maps(images), self.audio_vectors(spectrograms))

    @staticmethod
    def localization(maps: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each audio vector with each map position: (B, h, w) for paired inputs."""
        return torch.einsum("bchw,bc->bhw", maps, vectors)

    @staticmethod
    def all_pairs_max(maps: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """(B_img, B_aud) max-over-map similarity of every image with every audio (the MIL logits)."""
        return torch.einsum("bchw,ac->bahw", maps, vectors).flatten(2).amax(dim=2)


class EZVSLSpectrogram(nn.Module):
    """EZ-VSL's audio front end in torch, so it runs where the model runs: waveform windows (B, S) -> (B, 1, 257, T),
    the windows clipped to [-1, 1], then `scipy.signal.spectrogram(x, rate, nperseg=512, noverlap=274)` with
    scipy's defaults (periodic Tukey 0.25 window, each segment's mean removed, density scaling, one-sided), then
    log(S + 1e-7) / 12. 3 s at 16 kHz gives 200 segments; equal to scipy's within float32 rounding (tested)."""

    NPERSEG, NOVERLAP = 512, 274

    def __init__(self, sample_rate: int):
        super().__init__()
        from scipy import signal

        window = torch.from_numpy(signal.get_window(("tukey", 0.25), self.NPERSEG).astype(np.float32))
        self.register_buffer("window", window)
        self.scale = 1.0 / (sample_rate * float((window.double() ** 2).sum()))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        segments = waves.float().clamp(-1.0, 1.0).unfold(-1, self.NPERSEG, self.NPERSEG - self.NOVERLAP)
        segments = (segments - segments.mean(dim=-1, keepdim=True)) * self.window
        power = torch.fft.rfft(segments, dim=-1).abs().square() * self.scale
        power[..., 1:-1] *= 2  # one-sided: every bin but DC and Nyquist (512 is even) holds its mirror's power
        return (torch.log(power + 1e-7) / 12.0).transpose(-1, -2).unsqueeze(1)


def audio_front_end(cfg: SSLModelConfig) -> nn.Module:
    """The audio front end the model was trained with (`SSLModelConfig.preprocess`)."""
    return EZVSLSpectrogram(cfg.sample_rate) if cfg.preprocess == "ezvsl" else AudioFrontEnd(cfg)


class AudioFrontEnd(nn.Module):
    """16 kHz waveform windows (B, S) -> log spectrograms (B, 1, F, T): log(|STFT| + 1e-7), or log-mel."""

    def __init__(self, cfg: SSLModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft))
        if cfg.n_mels:
            import torchaudio

            fbank = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, 0.0, cfg.sample_rate / 2, cfg.n_mels,
                                                          cfg.sample_rate)
            self.register_buffer("mel", fbank)
        else:
            self.mel = None

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waves, self.cfg.n_fft, self.cfg.hop, window=self.window, return_complex=True).abs()
        if self.mel is not None:
            spec = torch.einsum("bft,fm->bmt", spec, self.mel)
        return torch.log(spec + 1e-7).unsqueeze(1)


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


class CheckpointKeyError(CheckpointError):
    """A checkpoint whose keys do not match the model: one line counting and naming the missing, unexpected and
    mis-shaped keys (the first few of each)."""

    def __init__(self, path: str, missing: list[str], unexpected: list[str], mismatched: list[str]):
        parts = [f"checkpoint {path} does not fit the model"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_names(mismatched)}")
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        super().__init__("; ".join(parts))


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, refusing any missing, unexpected or mis-shaped key (never half-random)."""
    own = model.state_dict()
    ignored = {k for k in own if k in ("image_mean", "image_std") or k.endswith("num_batches_tracked")}
    missing = sorted(k for k in own if k not in state and k not in ignored)
    unexpected = sorted(k for k in state if k not in own and not k.endswith("num_batches_tracked"))
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(source, missing, unexpected, mismatched)
    model.load_state_dict(state, strict=False)


def stretched(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (T, 3, size, size) uint8: the whole frame resized bicubic, aspect not kept (the
    published test transform `Resize((224, 224), BICUBIC)`). Resized as uint8, channels-last: within one grey level
    of PIL's bicubic and ~15x faster than resizing floats."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def model_images(frames: np.ndarray, cfg: SSLModelConfig) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (T, 3, S, S) uint8 model inputs (`SSLModelConfig.preprocess`): the centre
    square resized antialiased bilinear, or the whole frame stretched bicubic (`ezvsl`).

    Resized while still uint8 and channels-last (torch's vectorised antialiasing path, about 10x faster than
    resizing floats); only the small result is converted to floats, on the model's device."""
    if cfg.preprocess == "ezvsl":
        return stretched(frames, cfg.image_size)
    x = torch.from_numpy(np.ascontiguousarray(square_frames(frames))).permute(0, 3, 1, 2)
    return F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                         align_corners=False)


def square_frames(frames: np.ndarray) -> np.ndarray:
    """Centre square crop of (T, H, W, 3) frames."""
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top:top + side, left:left + side]


def audio_windows(audio: torch.Tensor, centres_s: torch.Tensor, window_s: float, rate: int) -> torch.Tensor:
    """Windows of `window_s` centred on each time, shifted inward at the clip's edges (as decode does). A clip
    shorter than the window is tiled to its length, as the EZ-VSL and Sound2Scene loaders do (`np.tile`;
    `curation.decode.tile_audio`), so every window is full; no audio at all gives silent windows."""
    width = int(round(window_s * rate))
    if len(audio) < width:
        audio = audio.repeat(width // len(audio) + 1)[:width] if len(audio) else audio.new_zeros(width)
    starts = torch.clamp(torch.round(centres_s * rate).long() - width // 2, 0, len(audio) - width)
    return audio.unfold(0, width, 1)[starts] if len(starts) else audio.new_zeros((0, width))
