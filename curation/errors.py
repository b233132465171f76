"""Typed per-clip failures: a stage raises ClipError(kind, message); the pipeline records it as data."""

from __future__ import annotations

import shutil

# Stable tokens written to clips.parquet `error_kind` (documented in the README).
ERROR_KINDS = {
    "missing_file": "the clip's local file does not exist",
    "empty_file": "the file is zero bytes",
    "not_media": "the bytes are not a recognisable audio/video container",
    "truncated": "a container is recognisable but its data ends early",
    "no_video": "the file has no video stream",
    "no_audio": "the file has no audio stream",
    "too_short": "the clip is shorter than the scoring window",
    "decode_error": "the decoder failed on a clip that opened",
    "ffmpeg_error": "ffmpeg failed to standardise the clip",
    "invalid_id": "the clip list row has an invalid id",
    "invalid_time": "the clip list row has an invalid start/end",
    "missing_label": "the clip list row has no label",
    "invalid_row": "the clip list row could not be parsed",
    "duplicate_id": "the clip id repeats with different content",
    "unsupported_source": "this build has no fetcher for the clip's source (YouTube / URL: issue #4)",
    "worker_lost": "the task running the clip died on every retry",
    "internal_error": "an unexpected exception (a bug): reported with its type, retried on rerun",
}


class ClipError(Exception):
    """A failure of one clip, with a stable `kind` token and a human message."""

    def __init__(self, kind: str, message: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        super().__init__(message)


class MissingToolError(RuntimeError):
    """A required external program (ffmpeg, ffprobe) is not installed: reported before any work starts."""


def require_tools(*names: str) -> None:
    """Fail at start, with an install hint, when an external program is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise MissingToolError(f"required program(s) not found on PATH: {', '.join(missing)} "
                               "(Debian/Ubuntu: apt-get install -y ffmpeg)")
