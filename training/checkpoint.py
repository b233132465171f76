"""Checkpoints and small artifacts, written atomically (temp file + os.replace) and read with weights_only."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from manifests.io import atomic_write_bytes
from training.config import TrainConfig, to_toml


class ResumeError(ValueError):
    """A checkpoint in the output folder that the current options cannot continue from."""


def check_resumable(path: str | os.PathLike, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to continue from `path` when options that shape its model differ, naming them."""
    differing = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if differing:
        raise ResumeError(f"{path} was made with other options (differing: {', '.join(differing)}); choose "
                          "another output folder or --set runtime.resume=false to start over")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save `state` (tensors, numbers, strings, lists, dicts only) to `path` atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, on the CPU; never unpickles arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_config(out: str | os.PathLike, cfg: TrainConfig) -> None:
    """The resolved config beside the outputs (`config.toml`)."""
    atomic_write_bytes(Path(out) / "config.toml", to_toml(cfg).encode())


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """One line of a log; a killed run leaves at most one partial last line, which readers skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    records = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_log(path: str | os.PathLike, step: int) -> None:
    """Keep only the records up to `step` (a resumed run re-logs what came after its checkpoint)."""
    if Path(path).exists():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())
