"""Synthetic test-pattern clips (ffmpeg lavfi, h264 + AAC) that the benchmarks generate for themselves."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def lavfi_clip(path: Path, video: str, audio: str, extra: tuple[str, ...] = ()) -> Path:
    """`path` encoded from the lavfi sources `video` and `audio` (h264 + AAC, `extra` output options before the
    file name); reused when it already exists, written to a temp name and renamed, so a killed bench leaves none
    half-written."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i",
                        audio, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", *extra, str(tmp)], check=True)
        os.replace(tmp, path)
    return path
