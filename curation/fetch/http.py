"""A clip URL's first request, and reading a source whole: what plain web servers need, without yt-dlp.

One GET with `Range: bytes=0-` answers three questions at once: does the URL exist (HTTP status -> error kind),
is it media or a page (a page goes to yt-dlp's extractors), and can the host seek (206) or not (200: the body
is the whole file, already on its way). A host that cannot seek is read whole from that same answer, streaming
to a file beside `raw/`, so ffmpeg never has to seek in a stream it cannot rewind.
"""

from __future__ import annotations

import errno
import http.client
import http.cookiejar
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from curation.config import FetchConfig
from curation.errors import ClipError
from curation.fetch.errors import RETRIABLE_KINDS, http_kind, retry_after_s

CHUNK = 1 << 20
USER_AGENT = "sound2scene-curation/1 (direct media fetch)"
_PAGE_TYPES = ("text/", "html", "xml", "json", "mpegurl")  # pages and playlists (HLS, DASH): for yt-dlp


@dataclass(frozen=True)
class Opened:
    """What the first answer said: the final URL (after redirects), and what kind of source it is."""

    url: str
    media: bool  # False: a page, to be handed to yt-dlp
    seekable: bool  # the host answered the range request with 206
    size: int | None  # whole file, when the host said


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only: never to ftp: or file:, whatever a hostile host says."""

    max_redirections = 10

    def http_error_302(self, req, fp, code, msg, headers):
        target = urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        if not target.lower().startswith(("http://", "https://")):
            raise ClipError("unsupported_source", f"redirect to a non-http(s) URL refused: {target[:200]!r}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def cookie_jar(cfg: FetchConfig) -> http.cookiejar.CookieJar:
    """fetch.cookies, read once and never written back (the user's file stays as it is)."""
    jar = http.cookiejar.MozillaCookieJar()
    if cfg.cookies:
        jar.load(cfg.cookies, ignore_discard=True, ignore_expires=True)
    return jar


def cookie_headers(jar: http.cookiejar.CookieJar, url: str) -> dict[str, str]:
    """The Cookie header this jar sends to `url`, for ffmpeg, which reads the same URL after us (one header:
    ffmpeg's own cookie matching drops them behind a proxy or when the URL has a port)."""
    request = urllib.request.Request(url)
    jar.add_cookie_header(request)
    cookies = request.get_header("Cookie")
    return {"Cookie": cookies} if cookies else {}


def _opener(cfg: FetchConfig, jar: http.cookiejar.CookieJar) -> urllib.request.OpenerDirector:
    proxy = urllib.request.ProxyHandler({"http": cfg.proxy, "https": cfg.proxy} if cfg.proxy else None)
    return urllib.request.build_opener(proxy, _Redirects(), urllib.request.HTTPCookieProcessor(jar))


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]  # signed URLs carry tokens: never stored in messages


def _from_exception(exc: BaseException, url: str) -> ClipError:
    """A failed request as its error kind; only waiting-can-help failures are retriable."""
    if isinstance(exc, ClipError):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        kind = http_kind(exc.code)
        wait = retry_after_s(exc.headers.get("Retry-After")) if exc.code in (429, 503) and exc.headers else None
        return ClipError(kind, f"HTTP Error {exc.code}: {exc.reason} ({_strip_query(url)})",
                         retriable=kind in RETRIABLE_KINDS, retry_after_s=wait)
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    message = f"{type(cause).__name__}: {cause} ({_strip_query(url)})"
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return ClipError("timeout", message, retriable=True)
    if isinstance(cause, ValueError):  # urllib's word for a URL it cannot parse (a bad port, say)
        return ClipError("invalid_id", message)
    if isinstance(cause, (socket.gaierror, ConnectionRefusedError)) or (
            isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)):
        return ClipError("network", message)  # no connection at all: an offline machine, not worth a retry
    return ClipError("network", message, retriable=True)  # a connection that broke: reset, TLS, bad answer


def open_source(url: str, cfg: FetchConfig, jar: http.cookiejar.CookieJar):
    """Send the first request; returns (Opened, the open response). The caller reads or closes the response."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Range": "bytes=0-",
                                                   "Accept-Encoding": "identity"})
    try:
        response = _opener(cfg, jar).open(request, timeout=cfg.socket_timeout_s)
    except (OSError, http.client.HTTPException, ValueError, ClipError) as exc:
        raise _from_exception(exc, url) from None
    content_type = (response.headers.get("Content-Type") or "").lower()
    content_range = response.headers.get("Content-Range") or ""
    length = response.headers.get("Content-Length")
    seekable = response.status == 206 and content_range.startswith("bytes 0-")
    size = int(content_range.rsplit("/", 1)[1]) if seekable and content_range[-1:].isdigit() else (
        int(length) if length and length.isdigit() else None)
    media = not any(marker in content_type for marker in _PAGE_TYPES)
    return Opened(url=response.geturl(), media=media, seekable=seekable, size=size), response


def read_whole(response, opened: Opened, dst: Path, cfg: FetchConfig) -> None:
    """Stream the answer's body to `dst` (a temp file), within fetch.timeout_s and fetch.max_download_mb."""
    limit = cfg.max_download_mb * (1 << 20)
    if opened.size is not None and opened.size > limit:
        raise ClipError("too_large", f"the source is {opened.size / (1 << 20):.0f} MiB, over fetch.max_download_mb "
                                     f"= {cfg.max_download_mb} (the host cannot seek, so it would be read whole)")
    deadline = time.monotonic() + cfg.timeout_s
    got = 0
    try:
        with open(dst, "wb") as out:
            while chunk := _read_some(response, opened.url):
                got += len(chunk)
                if got > limit:
                    raise ClipError("too_large", f"the source passed fetch.max_download_mb = {cfg.max_download_mb}")
                if time.monotonic() > deadline:
                    raise ClipError("timeout", f"reading the source took longer than fetch.timeout_s = "
                                               f"{cfg.timeout_s:g} s", retriable=True)
                out.write(chunk)
        if opened.size is not None and got < opened.size:  # the host closed the connection before the end
            raise ClipError("network", f"body cut short: {got} of {opened.size} bytes ({_strip_query(opened.url)})",
                            retriable=True)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def _read_some(response, url: str) -> bytes:
    """What has arrived (up to CHUNK), so the time limit is checked often; network failures typed."""
    try:
        return response.read1(CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise _from_exception(exc, url) from None


def download(url: str, dst: Path, cfg: FetchConfig, jar: http.cookiejar.CookieJar) -> Opened:
    """GET `url` whole into `dst` (used when a ranged read failed: a host that claims ranges but cannot seek)."""
    opened, response = open_source(url, cfg, jar)
    with response:
        read_whole(response, opened, dst, cfg)
    return opened


def scratch_path(raw_dir: Path, clip_id: str) -> Path:
    """Where a whole source is read to: beside `raw/<clip_id>.mp4`, so keeping it is an atomic rename."""
    return raw_dir / f".{clip_id}.{os.getpid()}.tmp.download"  # .*.tmp*: a killed run's is removed at start
