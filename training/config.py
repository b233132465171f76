"""Typed, frozen configuration of the trainer: one TOML file, overridable by flags, saved with every output.

Every subcommand (`stage1`, `stage3`, `evaluate`, `all`) reads one `TrainConfig`: the shared sections
(`data`, `runtime`, `audio`) and its own (`stage1`, `stage3`, `evaluate`). The defaults are the CPU-sized demo
setting `make train` runs; `training/configs/gpu.toml` is the full-size one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from manifests.typed_config import ConfigError as ConfigError  # re-exported: the error of this config
from manifests.typed_config import load_typed, typed_from_dict
from training import config_gan
from training.config_gan import GenEvalConfig, ProbeConfig, Stage2Config

HANDLERS = ("reraise", "warn")
DEVICES = ("auto", "cpu", "cuda")
AUDIO_CROPS = ("clip", "moment")
NORMALISATIONS = ("global", "per_clip")


@dataclass(frozen=True)
class DataConfig:
    # A shard folder (training = every *.tar except *-<eval_split>-*.tar), or shard patterns: local paths,
    # globs, brace patterns (`a-{000000..000009}.tar`) or URLs, several joined by `::`.
    shards: str = "work/demo/shards"
    eval_shards: str | None = None  # default: the folder's *-<eval_split>-*.tar, else `shards` itself
    eval_split: str = "test"  # samples whose json `split` is this are never trained on
    val_fraction: float = 0.1  # of the training clips, by key hash: held out for validation / early stopping
    resample: bool = False  # draw shards with replacement (webdataset ResampledShards), fixed epoch length
    epoch_batches: int = 100  # batches per epoch and loader worker when resampling
    shuffle_buffer: int = 256
    workers: int = 0  # DataLoader worker processes per rank (0: decode in the training process)
    handler: str = "reraise"  # bad samples: "reraise" stops the run, "warn" skips them with a warning


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto = cuda when available
    seed: int = 0
    threads: int = 0  # torch intra-op threads per process; 0 keeps torch's default
    bf16: bool = False  # bf16 autocast (CUDA only)
    channels_last: bool = False  # channels_last memory format (CUDA only)
    resume: bool = True  # continue from the checkpoints in `out` when present
    # torchrun process-group timeout (0: torch's default, 30 min): how long a rank may wait in one collective;
    # no stage waits a stage's length (docs/training_budgets_ddp.md, "torchrun: every rank trains every stage")
    dist_timeout_s: float = 0.0


@dataclass(frozen=True)
class Stage1Config:
    swav_weights: str | None = None  # a swav.pth.tar-style file: frozen ResNet-50; empty: train a small encoder
    moments: int = 3  # frames embedded per clip: jpg, top2.jpg, ... (cached for later stages)
    image_size: int = 64  # small encoder input; the ResNet-50 always sees 224 px
    width: int = 16  # small encoder: channels of its first stage (x8 = embedding dimension)
    # measured: a 1-NN label probe of the frames rises 0.51 -> 0.64 from 150 to 300 steps (docs/training.md,
    # "Stage-1 encoder variants")
    steps: int = 300
    batch_size: int = 64  # images per step (two augmented views each)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2  # NT-Xent
    proj_dim: int = 64  # SimCLR projection head output, dropped after training
    crop_scale_min: float = 0.5  # random resized crop area range [min, 1]; small values erase apparent size
    colour_jitter: float = 0.4  # brightness/contrast/saturation strength (hue is kept: colour is identity)
    same_clip_negatives: bool = True  # a clip's moments share a batch as negatives (defeats the background cue)
    background_swap: bool = True  # second views on another clip's background (median of the moments)
    label_weight: float = 0.0  # + this x a supervised-contrastive term on the shards' `cls` (0: self-supervised)
    embed_batch_size: int = 128
    log_every: int = 25
    checkpoint_every: int = 50  # train_state.pt for resume


@dataclass(frozen=True)
class AudioConfig:
    sample_rate: int = 16000
    # what the encoder hears: `seconds` of audio, tiled if the clip is shorter (like the official code), taken
    # from the clip's start (crop "clip": the official code's 10 s) or centred on the sample's best frame
    # (crop "moment", json frame_t): the sound of the moment the target image shows (docs/training.md "Audio front end")
    seconds: float = 2.0
    crop: str = "moment"
    n_fft: int = 512  # 257 frequency bins
    hop: int = 160  # 10 ms
    eps: float = 1e-10  # log(power + eps); well below the -40 dBFS noise floor of the demo world
    normalisation: str = "global"  # global per-bin statistics (keeps loudness) | per_clip (official code)
    stats_clips: int = 512  # training clips used for the global statistics
    time_pool: int = 8  # average-pool the normalised spectrogram in time (CPU speed); 1 = full resolution
    freq_pool: int = 2


@dataclass(frozen=True)
class Stage3Config:
    width: int = 16  # ResNet-18 layout, channels of its first stage (the paper's: 64)
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    temperature: float = 0.1  # logits = -||a - v|| / temperature (official code: 1.0)
    l2_weight: float = 0.0  # optional + l2_weight * mean ||a - v||^2
    target_moments: int = 1  # 1: the best frame's embedding; k > 1: one of the first k moments at random (with
    # audio.crop "moment": the audio is cut around that same moment)
    eval_every: int = 50  # validation loss every this many steps; the best checkpoint is kept
    patience: int = 0  # stop after this many validations without improvement (0: never)
    val_clips: int = 512  # validation reads at most this many clips of the slice (shard order)
    log_every: int = 20
    # a sound2scene.pth: fine-tune the released audio encoder instead of a new one (its own front end and 10 s
    # input replace [audio]; needs 2048-d stage-1 embeddings, i.e. --swav-weights; docs/official_weights.md)
    init_official: str | None = None


@dataclass(frozen=True)
class EvalConfig:
    n_candidates: int = 100  # N: candidates per query (the paired image + N-1 others); capped at the split
    seed: int = 0
    batch_size: int = 64


@dataclass(frozen=True)
class TrainConfig:
    out: str = "work/demo/train"
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)  # training/config_gan.py
    audio: AudioConfig = field(default_factory=AudioConfig)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    gen_eval: GenEvalConfig = field(default_factory=GenEvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(cfg: TrainConfig, problems: list[str]) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    d, r, s1, a, s3, e = cfg.data, cfg.runtime, cfg.stage1, cfg.audio, cfg.stage3, cfg.evaluate
    need(bool(d.shards), "data.shards: must name a shard folder or pattern")
    need(bool(d.eval_split), "data.eval_split: must not be empty")
    need(0 <= d.val_fraction < 1, "data.val_fraction: must be in [0, 1)")
    need(d.epoch_batches >= 1, "data.epoch_batches: must be >= 1")
    need(d.shuffle_buffer >= 1, "data.shuffle_buffer: must be >= 1")
    need(d.workers >= 0, "data.workers: must be >= 0")
    need(d.handler in HANDLERS, f"data.handler: must be one of {', '.join(HANDLERS)}")
    need(r.device in DEVICES, f"runtime.device: must be one of {', '.join(DEVICES)}")
    need(r.threads >= 0, "runtime.threads: must be >= 0")
    need(r.dist_timeout_s >= 0, "runtime.dist_timeout_s: must be >= 0")
    need(1 <= s1.moments <= 10, "stage1.moments: must be in 1..10")
    need(16 <= s1.image_size <= 512, "stage1.image_size: must be in 16..512")
    for name in ("width", "steps", "batch_size", "proj_dim", "embed_batch_size", "log_every", "checkpoint_every"):
        need(getattr(s1, name) >= 1, f"stage1.{name}: must be >= 1")
    need(s1.batch_size >= 2, "stage1.batch_size: must be >= 2 (contrastive)")
    need(s1.lr > 0 and s1.weight_decay >= 0, "stage1.lr: must be > 0 and stage1.weight_decay >= 0")
    need(s1.temperature > 0, "stage1.temperature: must be > 0")
    need(s1.label_weight >= 0, "stage1.label_weight: must be >= 0")
    need(0 < s1.crop_scale_min <= 1, "stage1.crop_scale_min: must be in (0, 1]")
    need(0 <= s1.colour_jitter <= 1, "stage1.colour_jitter: must be in [0, 1]")
    need(a.sample_rate >= 8000, "audio.sample_rate: must be >= 8000")
    need(a.seconds > 0, "audio.seconds: must be > 0")
    need(a.crop in AUDIO_CROPS, f"audio.crop: must be one of {', '.join(AUDIO_CROPS)}")
    need(a.n_fft >= 16 and 1 <= a.hop <= a.n_fft, "audio.n_fft: must be >= 16 and audio.hop in 1..n_fft")
    need(a.eps > 0, "audio.eps: must be > 0")
    need(a.normalisation in NORMALISATIONS, f"audio.normalisation: must be one of {', '.join(NORMALISATIONS)}")
    need(a.stats_clips >= 1, "audio.stats_clips: must be >= 1")
    need(a.time_pool >= 1 and a.freq_pool >= 1, "audio.time_pool and audio.freq_pool: must be >= 1")
    for name in ("width", "steps", "eval_every", "log_every", "target_moments", "val_clips"):
        need(getattr(s3, name) >= 1, f"stage3.{name}: must be >= 1")
    need(s3.batch_size >= 2, "stage3.batch_size: must be >= 2 (contrastive)")
    need(s3.target_moments <= s1.moments, "stage3.target_moments: must be <= stage1.moments")
    need(s3.lr > 0 and s3.weight_decay >= 0, "stage3.lr: must be > 0 and stage3.weight_decay >= 0")
    need(s3.temperature > 0, "stage3.temperature: must be > 0")
    need(s3.l2_weight >= 0, "stage3.l2_weight: must be >= 0")
    need(s3.patience >= 0, "stage3.patience: must be >= 0")
    need(e.n_candidates >= 2, "evaluate.n_candidates: must be >= 2")
    need(e.batch_size >= 1, "evaluate.batch_size: must be >= 1")
    config_gan.check(cfg.stage2, cfg.probe, cfg.gen_eval, problems)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A config from its dict form (stored in a checkpoint), checked like a file."""
    return typed_from_dict(TrainConfig, data, _check)


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                assignments: list[str] | None = None) -> TrainConfig:
    """Config from an optional TOML file, then `overrides` (dotted keys), then `key=value` assignments."""
    return load_typed(TrainConfig, _check, path, overrides, assignments)


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'  # TOML has no null; "none" empties an optional option when read back
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML that `load_config` reads back to an equal config."""
    data = cfg.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
