"""Fetch stage: bring a clip's source into `OUT/raw/<clip_id>.mp4` as a decodable h264 + audio file.

Local files that are already h264 with audio are hard-linked (or copied) untouched: no re-encode, the cost
that dominates other tools. Anything else is cut to the clip and re-encoded to h264 + AAC by one ffmpeg run.
A fetched clip is reused by every later run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from curation.decode import MediaInfo, probe_media
from curation.errors import ClipError
from manifests.ids import is_safe_clip_id

FFMPEG_TIMEOUT_S = 300


@dataclass(frozen=True)
class Fetched:
    """Where the clip lies, where inside that file it starts (0 for a cut clip), and its headers if read."""

    path: Path
    offset_s: float
    info: MediaInfo | None = None


def raw_path(raw_dir: Path, clip_id: str) -> Path:
    """`raw_dir/<clip_id>.mp4`, refusing any id that could name a path outside `raw_dir`."""
    if not is_safe_clip_id(clip_id):
        raise ClipError("invalid_id", f"unsafe clip id {clip_id!r}")
    return raw_dir / f"{clip_id}.mp4"


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _transcode(src: Path, dst: Path, start_s: float, duration_s: float) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.mp4")
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-ss", f"{start_s:.3f}", "-i", f"file:{src}", "-t", f"{duration_s:.3f}",
            "-map", "0:v:0", "-map", "0:a:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-f", "mp4",
            str(tmp)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise ClipError("ffmpeg_error", f"ffmpeg took longer than {FFMPEG_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ClipError("ffmpeg_error", f"ffmpeg could not standardise the clip: {last}")
    os.replace(tmp, dst)


def fetch_local(src: str | os.PathLike, clip_id: str, start_s: float, end_s: float, raw_dir: Path) -> Fetched:
    """Standardise a local file into `raw_dir` (reusing an earlier fetch) and say where the clip starts."""
    dst = raw_path(raw_dir, clip_id)
    src = Path(src)
    if dst.exists() and dst.resolve() == src.resolve():
        return Fetched(dst, start_s)  # the demo world writes its clips straight into raw/
    info = probe_media(src)  # classifies missing / empty / garbage / truncated / no audio / no video
    if info.video_codec == "h264" and src.suffix.lower() in (".mp4", ".m4v", ".mov"):
        if not dst.exists():
            _link_or_copy(src, dst)
        return Fetched(dst, start_s, info)
    if not dst.exists():
        _transcode(src, dst, start_s, end_s - start_s)
    return Fetched(dst, 0.0)
