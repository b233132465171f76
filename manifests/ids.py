"""Clip ids: stable across runs and safe to use as file names, shard keys and subprocess arguments.

A YouTube clip is `<ytid>_<start_ms:07d>_<end_ms:07d>` (DESIGN.md). Any other clip is
`<sanitised stem>-<sha1(source)[:8]>_<start_ms:07d>_<end_ms:07d>`: readable, and unique per source
even when two sources share a file name. These never start with '-'; YouTube clip ids may (so do YouTube
ids), so ids are used only inside absolute paths and API values, never as a bare command-line argument.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
SAFE_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
YT_CLIP_ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}_\d{7,}_\d{7,}$")
MAX_CLIP_ID_LEN = 128  # `<id>.mp4` plus temp-file affixes must stay well under the 255-byte name limit.
_STEM_LEN = 40
_UNSAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9_-]")


def is_valid_ytid(s: object) -> bool:
    """True for an 11-character YouTube id (fullmatch: a trailing newline is not accepted)."""
    return isinstance(s, str) and YTID_RE.fullmatch(s) is not None


def is_youtube_clip_id(s: object) -> bool:
    """True for `<ytid>_<start_ms:07d>_<end_ms:07d>`; unlike other ids these may start with '-' like the ytid."""
    return isinstance(s, str) and YT_CLIP_ID_RE.fullmatch(s) is not None


def is_safe_clip_id(s: object) -> bool:
    """True when `s` can be used as a file name stem and shard key without escaping."""
    return isinstance(s, str) and len(s) <= MAX_CLIP_ID_LEN and SAFE_ID_RE.fullmatch(s) is not None


def _ms(seconds: float) -> int:
    """Whole milliseconds of a non-negative finite time; other times would make ids ambiguous."""
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"clip time must be a finite number >= 0, got {seconds!r}")
    return round(seconds * 1000)


def _span(start_s: float, end_s: float) -> str:
    return f"{_ms(start_s):07d}_{_ms(end_s):07d}"


def youtube_clip_id(ytid: str, start_s: float, end_s: float) -> str:
    """`<ytid>_<start_ms:07d>_<end_ms:07d>`; raises ValueError for an invalid ytid or time."""
    if not is_valid_ytid(ytid):
        raise ValueError(f"not a YouTube id (11 chars of [A-Za-z0-9_-]): {ytid!r}")
    return f"{ytid}_{_span(start_s, end_s)}"


def mirror_key(ytid: str | None, start_s: float | None) -> str | None:
    """`<ytid>_<start:06d>`, the name VGGSound's mirrors (and VGGSounder) give a clip: None without a ytid or for a
    start that is not a whole, non-negative second (null or NaN included)."""
    if not isinstance(ytid, str) or start_s is None or math.isnan(start_s) or start_s < 0 or start_s != int(start_s):
        return None
    return f"{ytid}_{int(start_s):06d}"


def _stem(source: str) -> str:
    """File stem of a path or URL (query and fragment dropped, %-escapes decoded)."""
    path = unquote(urlsplit(source).path) if "://" in source else source
    name = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return PurePosixPath(name).stem if name else ""


def local_clip_id(source: str, start_s: float, end_s: float) -> str:
    """Id of a url/path clip: sanitised stem (<= 40 chars) + '-' + sha1(source)[:8] + time span.

    The hash covers the exact `source` string, so callers must pass a normalised form.
    """
    stem = _UNSAFE_CHARS_RE.sub("-", _stem(source))[:_STEM_LEN]
    if not stem or stem.startswith("-"):
        stem = ("c" + stem)[:_STEM_LEN]
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}_{_span(start_s, end_s)}"
