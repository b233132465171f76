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
    "no_audio": "the file has no audio stream (or the stream has no samples in the clip)",
    "too_short": "the clip has less audio than the scoring window (decode.short_clips = reject; `tile` keeps it)",
    "decode_error": "the decoder failed on a clip that opened",
    "ffmpeg_error": "ffmpeg failed to standardise the clip",
    "invalid_id": "the clip list row has an invalid id",
    "invalid_time": "the clip list row has an invalid start/end",
    "missing_label": "the clip list row has no label",
    "invalid_row": "the clip list row could not be parsed",
    "duplicate_id": "the clip id repeats with different content",
    "unsupported_source": "the clip's source is of a kind no fetcher handles",
    # SOURCE (a mirror's folder or archives, docs/mirrors.md): recomputed on every run, never cached
    "missing_source": "no file or archive member of SOURCE is named for the clip (`<ytid>_<start:06d>.mp4`)",
    "archive_damaged": "the SOURCE archive that holds (or may hold) the clip is cut short or corrupt before it",
    "worker_lost": "the task running the clip died on every retry",
    "internal_error": "an unexpected exception (a bug): reported with its type, retried on rerun",
    # Data-quality filters: status `rejected`, by [filters] (docs/quality_filters.md).
    "duplicate": "a near-duplicate of the clip named in `dup_group`, which is kept",
    "still": "the video barely changes (a static image with sound)",
    "silent": "the audio stays below the level floor for most of the clip",
    "overlap": "the window overlaps an earlier window of the same ytid (`overlap_of`)",
    "not_in_moments": "SCORER=moments: the moments file does not list the clip (not fetched)",
    "moments_out_of_range": "SCORER=moments: the file's frame numbers for the clip all fall after its last frame",
    # Fetching (yt-dlp + ffmpeg). The `error` column keeps yt-dlp's / ffmpeg's own message.
    "unavailable": "the video or URL does not exist or cannot be played (YouTube 'Video unavailable', HTTP 404)",
    "private": "the video is private or members-only",
    "removed": "the video was taken down (by its uploader, for a policy or copyright claim; HTTP 410)",
    "age_restricted": "the video needs a signed-in, age-verified account (fetch.cookies)",
    "geo_blocked": "the video is not available from this machine's country",
    "bot_check": "the host wants proof that this is not a bot (IP or session flagged): counts toward fetch.stop_after",
    "rate_limited": "HTTP 429 or YouTube's session rate limit: retried after Retry-After, counts toward stop_after",
    "forbidden": "HTTP 401/403: the host refuses this client",
    "server_error": "HTTP 5xx: retried with backoff",
    "http_error": "another HTTP error status",
    "network": "no connection (DNS failure, refused, unreachable) or one that broke (reset, body cut short)",
    "timeout": "no answer within fetch.socket_timeout_s, or the fetch ran past fetch.timeout_s",
    "no_h264_format": "no format matched the format selector (fetch.format; the default falls back to any codec)",
    "low_audio_rate": "the source audio is sampled below 16 kHz",
    "too_large": "a source that must be read whole (its host cannot seek) is over fetch.max_download_mb",
    "fetch_error": "yt-dlp failed in a way none of the kinds above describes (its message is kept)",
}

# Worth another try later: `RETRY_FAILED=1` (fetch.retry_failed) refetches exactly the clips whose cached
# failure has one of these kinds. `worker_lost` and `internal_error` are never cached, so any rerun retries them.
TRANSIENT_KINDS = frozenset({"network", "timeout", "rate_limited", "server_error", "bot_check"})


class ClipError(Exception):
    """A failure of one clip, with a stable `kind` token and a human message."""

    def __init__(self, kind: str, message: str, retriable: bool = False, retry_after_s: float | None = None):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        self.retriable = retriable  # worth another attempt within seconds (a fetch's own retries)
        self.retry_after_s = retry_after_s  # what the host asked for (HTTP Retry-After), if it said
        super().__init__(message)


class UsageError(ValueError):
    """What the user asked for cannot work (a missing file, a wrong checkpoint, a bad parameter).

    The command line prints the message as one line on stderr and exits with code 2, without a traceback
    (`--debug` shows it): so the message must say what is wrong and what to do. Subclass it for new kinds."""


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used: missing, not a checkpoint, an unknown layout, wrong shapes."""


class MissingToolError(UsageError, RuntimeError):
    """A required external program (ffmpeg, ffprobe) is not installed: reported before any work starts."""


class SourceError(UsageError):
    """SOURCE as a whole cannot be used (missing, unreadable, nothing in it): reported before any work starts."""


def require_tools(*names: str) -> None:
    """Fail at start, with an install hint, when an external program is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise MissingToolError(f"required program(s) not found on PATH: {', '.join(missing)} "
                               "(Debian/Ubuntu: apt-get install -y ffmpeg)")
