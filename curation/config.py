"""Typed, frozen configuration of a curation run: one TOML file, overridable by flags, saved with every output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("demo", "vggsound", "csv")
SCORERS = ("synchrony", "none")


class ConfigError(ValueError):
    """All problems of a config at once, each naming its option."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class DemoConfig:
    clips: int = 320
    seed: int = 0
    duration_s: float = 8.0


@dataclass(frozen=True)
class DecodeConfig:
    fps: float = 10.0  # the paper's frame rate (its top-10 frame indices are at 10 fps)
    short_side: int = 224  # frames are resized so the short side has this many pixels, aspect kept
    sample_rate: int = 16000
    window_s: float = 3.0  # audio window centred on each frame; clips shorter than this are `too_short`


@dataclass(frozen=True)
class ScoreConfig:
    scorer: str = "synchrony"
    grid: int = 7  # the synchrony baseline correlates audio energy with change in grid x grid regions


@dataclass(frozen=True)
class SelectConfig:
    top_k: int = 3  # moments kept per clip: best frame -> `jpg`, the others -> `top2.jpg` ...
    min_gap_s: float = 0.5  # kept moments are at least this far apart (no near-duplicate frames)
    min_clip_score: float | None = None  # drop clips whose score is below this
    keep_quantile: float | None = 0.75  # keep this top fraction of scored clips (None keeps all)


@dataclass(frozen=True)
class WriteConfig:
    samples_per_shard: int = 256
    jpeg_quality: int = 90
    name: str | None = None  # shard name prefix; default `<dataset>-<split>`


@dataclass(frozen=True)
class DaskConfig:
    scheduler: str | None = None  # address of an existing cluster; None starts a LocalCluster
    workers: int | None = None  # LocalCluster worker processes; None = one per core
    clips_per_task: int = 4
    tasks_in_flight_per_worker: int = 2
    retries: int = 2
    memory_limit: str = "6GB"


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "demo"
    meta: str | None = None  # the clip list (not needed for the demo world)
    out: str = "work/demo"
    demo: DemoConfig = field(default_factory=DemoConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def clip_stage_fingerprint(self) -> str:
        """Hash of the options that change a clip's decoded+scored result (keys the per-clip cache)."""
        parts = {"decode": dataclasses.asdict(self.decode), "score": dataclasses.asdict(self.score),
                 "top_k": self.select.top_k, "min_gap_s": self.select.min_gap_s,
                 "jpeg_quality": self.write.jpeg_quality}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


_INVALID = object()  # a leaf that failed its type check keeps its default, so range checks can still run


def _coerce(value: Any, annotation: Any, name: str, problems: list[str]) -> Any:
    """Check one leaf value against its annotation; ints are accepted where floats are expected."""
    args = typing.get_args(annotation)
    allowed = args if args else (annotation,)
    if type(None) in allowed and isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    if value is None:
        if type(None) in allowed:
            return None
        problems.append(f"{name}: must not be empty")
        return _INVALID
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, str, bool) and type(value) is kind:
            return value
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    problems.append(f"{name}: expected {expected}, got {value!r}")
    return _INVALID


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - known):
        problems.append(f"{prefix}{key}: unknown option (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if isinstance(data[f.name], dict):
                kwargs[f.name] = _build(hint, data[f.name], f"{prefix}{f.name}.", problems)
            else:
                problems.append(f"{prefix}{f.name}: expected a table of options")
        else:
            value = _coerce(data[f.name], hint, prefix + f.name, problems)
            if value is not _INVALID:
                kwargs[f.name] = value
    return cls(**kwargs)


def _check(cfg: RunConfig, problems: list[str]) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(cfg.dataset in DATASETS, f"dataset: must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
    need(cfg.dataset not in DATASETS or cfg.dataset == "demo" or bool(cfg.meta),
         f"meta: a clip list is required for dataset {cfg.dataset!r}")
    need(cfg.demo.clips >= 1, "demo.clips: must be >= 1")
    need(cfg.decode.fps > 0, "decode.fps: must be > 0")
    need(16 <= cfg.decode.short_side <= 2048, "decode.short_side: must be in 16..2048")
    need(cfg.decode.sample_rate >= 8000, "decode.sample_rate: must be >= 8000")
    need(cfg.decode.window_s > 0, "decode.window_s: must be > 0")
    need(cfg.score.scorer in SCORERS, f"score.scorer: must be one of {', '.join(SCORERS)}")
    need(cfg.score.grid >= 1, "score.grid: must be >= 1")
    need(cfg.select.top_k >= 1, "select.top_k: must be >= 1")
    need(cfg.select.min_gap_s >= 0, "select.min_gap_s: must be >= 0")
    q = cfg.select.keep_quantile
    need(q is None or 0 < q <= 1, "select.keep_quantile: must be in (0, 1] or empty")
    need(cfg.write.samples_per_shard >= 1, "write.samples_per_shard: must be >= 1")
    need(1 <= cfg.write.jpeg_quality <= 100, "write.jpeg_quality: must be in 1..100")
    need(cfg.dask.workers is None or cfg.dask.workers >= 1, "dask.workers: must be >= 1")
    need(cfg.dask.clips_per_task >= 1, "dask.clips_per_task: must be >= 1")
    need(cfg.dask.tasks_in_flight_per_worker >= 1, "dask.tasks_in_flight_per_worker: must be >= 1")
    need(cfg.dask.retries >= 0, "dask.retries: must be >= 0")


def _parse_value(text: str) -> Any:
    """A flag value in TOML syntax (`5`, `0.5`, `true`, `"x"`); bare words are strings; `none` empties an
    option that may be empty."""
    if not text:
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError([f"{dotted}: {part} is not a table of options"])
    node[leaf] = value


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                assignments: list[str] | None = None) -> RunConfig:
    """Config from an optional TOML file, then `overrides` (dotted keys), then `key=value` assignments."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"config file {path}: {exc}"]) from exc
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    problems: list[str] = []
    for assignment in assignments or []:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {assignment!r}: expected key=value")
            continue
        _set_dotted(data, key.strip(), _parse_value(text.strip()))
    cfg = _build(RunConfig, data, "", problems)
    _check(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg
