"""yt-dlp's part of fetching: the URL a clip names, and the media URLs its section is read from.

Only yt-dlp's Python API is used, never its command line: the clip's URL is a value, so no id or URL can
become an option. yt-dlp extracts the video and picks formats (h264 <= 360p first, decord cannot open AV1);
ffmpeg (`curation.fetch.clip`) then reads only the clip's section from the chosen media URLs with HTTP range
requests, which is what yt-dlp's own `download_ranges` does, but with its errors kept and a time limit.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from curation.config import FetchConfig
from curation.errors import ClipError
from curation.fetch.errors import from_ytdlp
from manifests.ids import is_valid_ytid

log = logging.getLogger(__name__)

YOUTUBE_HOST = "www.youtube.com"
_HTTP_URL_RE = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$", re.IGNORECASE)
_FFMPEG_PROTOCOLS = ("http", "https", "m3u8", "m3u8_native")  # media ffmpeg can range-read or stream


@dataclass(frozen=True)
class MediaInput:
    """One media URL with the HTTP headers ffmpeg must send to read it (cookies included)."""

    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Source:
    """The chosen format(s): one input holding video and audio, or video and audio apart."""

    inputs: tuple[MediaInput, ...]
    format_id: str
    duration_s: float | None  # what the site says, when it says


def clip_url(ytid: str | None, url: str | None) -> str:
    """The URL to hand yt-dlp: a watch page for a YouTube id, else the row's own http(s) URL (validated)."""
    if url is not None:
        if not _HTTP_URL_RE.fullmatch(url):
            raise ClipError("invalid_id", f"url {url[:200]!r} is not an http(s) URL")
        return url
    if ytid is None or not is_valid_ytid(ytid):
        raise ClipError("invalid_id", f"not a YouTube id: {str(ytid)[:40]!r}")
    return f"https://{YOUTUBE_HOST}/watch?v={ytid}"


def host_of(url: str) -> str:
    """The host a URL's requests go to (the unit of the per-host limits)."""
    return (urlsplit(url).hostname or "").lower()


def default_format(max_height: int) -> str:
    """h264 (avc1) at <= max_height with the best audio; then the smallest h264 above it; then any codec
    (re-encoded to h264 by the standardisation). DASH fragment lists are left out: ffmpeg cannot seek them."""
    ok = "[protocol!*=dash]"
    h264_small, h264 = f"[vcodec^=avc1][height<={max_height}]{ok}", f"[vcodec^=avc1]{ok}"
    small = f"[height<={max_height}]{ok}"
    return "/".join([f"bv*{h264_small}+ba{ok}", f"b{h264_small}", f"bv*{h264}+ba{ok}", f"b{h264}",
                     f"bv*{small}+ba{ok}", f"b{small}", f"bv*{ok}+ba{ok}", f"b{ok}"])


class _Log:
    """yt-dlp's messages go to this module's logger; errors also arrive as exceptions and are kept there."""

    def debug(self, msg: str) -> None:
        log.debug("%s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)


def ytdlp_params(cfg: FetchConfig, cache_dir: Path) -> dict:
    """YoutubeDL options for extraction only (nothing downloaded by yt-dlp, nothing written outside OUT)."""
    params = {
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": _Log(), "color": "no_color",
        "noplaylist": True,
        "format": cfg.format or default_format(cfg.max_height),
        "format_sort": [f"res:{cfg.max_height}"],
        "socket_timeout": cfg.socket_timeout_s,
        # fetch.retries is the only retry policy (with backoff and Retry-After), so counts are exact.
        "retries": 0, "extractor_retries": 0, "fragment_retries": 0, "file_access_retries": 0,
        "cachedir": str(cache_dir),  # yt-dlp's player cache, kept inside OUT
    }
    if cfg.proxy:
        params["proxy"] = cfg.proxy
    if cfg.cookies:
        # A text stream, not the path: yt-dlp writes its cookie jar back to a cookie *file* on close, which
        # would rewrite the user's file from every worker at once.
        params["cookiefile"] = io.StringIO(Path(cfg.cookies).read_text(encoding="utf-8"))
    if cfg.js_runtimes:
        params["js_runtimes"] = {name.strip(): {} for name in cfg.js_runtimes.split(",") if name.strip()}
    return params


def _inputs(ydl, info: dict) -> tuple[MediaInput, ...]:
    inputs = []
    for fmt in info.get("requested_formats") or [info]:
        url, protocol = fmt.get("url"), fmt.get("protocol")
        if not url or protocol not in _FFMPEG_PROTOCOLS or not _HTTP_URL_RE.fullmatch(url):
            raise ClipError("unsupported_source", f"format {fmt.get('format_id')!r} ({protocol}) is not an http(s) "
                                              "stream ffmpeg can read a section of; set fetch.format")
        headers = dict(fmt.get("http_headers") or info.get("http_headers") or {})
        # yt-dlp's jar picks the cookies for this URL; they go as one header because ffmpeg 5's own `-cookies`
        # matching drops them when the URL has a port (domain vs host:port) or goes through a proxy (path).
        cookies = "; ".join(f"{c.name}={c.value}" for c in ydl.cookiejar.get_cookies_for_url(url))
        if cookies:
            headers["Cookie"] = cookies
        inputs.append(MediaInput(url, headers))
    return tuple(inputs)


def extract(url: str, cfg: FetchConfig, cache_dir: Path) -> Source:
    """Ask yt-dlp about `url` and select formats; every yt-dlp failure becomes a typed ClipError."""
    import yt_dlp

    try:
        with yt_dlp.YoutubeDL(ytdlp_params(cfg, cache_dir)) as ydl:
            info = ydl.extract_info(url, download=False)
            if info.get("_type") in ("playlist", "multi_video") or info.get("entries") is not None:
                raise ClipError("unsupported_source", f"{url} is a page of several videos, not one clip source")
            if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
                raise ClipError("unavailable", f"{info.get('id')}: a live or upcoming stream has no fixed sections")
            inputs = _inputs(ydl, info)
    except yt_dlp.utils.YoutubeDLError as exc:
        raise from_ytdlp(exc) from None
    return Source(inputs=inputs, format_id=str(info.get("format_id")), duration_s=info.get("duration"))
