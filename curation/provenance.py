"""What produced an output: resolved config, package versions, tool versions, git revision (run.json)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from curation import storage
from curation.errors import UsageError
from manifests.layout import RunLayout

_PACKAGES = ("torch", "torchaudio", "torchcodec", "decord", "numpy", "webdataset", "wids", "dask",
             "distributed", "pandas", "pyarrow", "yt-dlp", "soundfile", "pillow")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _first_line(args: list[str]) -> str | None:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.splitlines()[0].strip() if proc.returncode == 0 and proc.stdout else None


def git_revision() -> str | None:
    """The source checkout's commit (with `-dirty` when it has uncommitted changes), if it is a git repo."""
    root = str(Path(__file__).resolve().parents[1])
    rev = _first_line(["git", "-C", root, "rev-parse", "HEAD"])
    if rev and _first_line(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"]):
        rev += "-dirty"
    return rev


def run_record(cfg, summary, timings: dict[str, float], **extra: Any) -> dict[str, Any]:
    """The content of run.json."""
    return {
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "ffmpeg": _first_line(["ffmpeg", "-version"]),
        "git_revision": git_revision(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "counts": summary.counts,
        "error_kinds": summary.error_kinds,
        "n_clips": summary.n_clips,
        "n_shards": summary.n_shards,
        "n_samples": summary.n_samples,
        "clips_per_s": round(summary.clips_per_s, 3),
        "duplicates_dropped": summary.duplicates_dropped,
        **extra,
    }


def read_run_record(out: str) -> dict:
    """A finished run's run.json (`out` a local folder or a URL); one UsageError line when there is none."""
    try:
        return json.loads(storage.read_bytes(RunLayout(out).run_record))
    except FileNotFoundError:
        raise UsageError(f"{out} is not a finished run (no manifests/run.json): curate it first "
                         "(make shards OUT=...)") from None
