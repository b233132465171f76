"""yt-dlp and ffmpeg failures -> stable `error_kind` tokens, keeping the tool's own message.

yt-dlp wraps every failure in a DownloadError whose text is the extractor's message and whose `exc_info`
holds the cause (an HTTPError with its status and headers, a TransportError around a socket error, a
GeoRestrictedError, ...). The cause decides the kind when there is one; otherwise the message does, by the
phrases YouTube uses. ffmpeg reports only text on stderr, so its kind comes from the lines it printed.

An error is `retriable` (tried again within seconds, up to fetch.retries) when waiting can help: HTTP 429 and
5xx, timeouts, a connection that broke mid-transfer. No connection at all (DNS failure, refused, unreachable:
an offline machine) and YouTube's worded refusals (its session rate limit lasts up to an hour) fail at once;
like every transient kind they are fetched again by RETRY_FAILED=1.
"""

from __future__ import annotations

import email.utils
import re
import socket
import time

from curation.errors import ClipError

# Checked in order; the first matching phrase decides. YouTube's own wording (yt-dlp passes it through).
_MESSAGE_KINDS = (
    ("bot_check", r"not a bot|captcha|unusual traffic"),
    ("rate_limited", r"rate.limit|try again later|too many requests|http error 429"),
    ("age_restricted", r"confirm your age|age.restricted|inappropriate for some users"),
    ("geo_blocked", r"in your country|geo.restrict|from your location"),
    ("private", r"private video|video is private|members.only|channel's members|join this channel"),
    ("removed", r"has been removed|removed by the|removed for|been terminated|copyright|no longer available"),
    ("no_h264_format", r"requested format is not available"),
    ("not_media", r"unsupported url"),
    ("unavailable", r"video unavailable|is unavailable|not available|no video formats|premieres in|"
                    r"live event will begin|drm protected|incomplete youtube id"),
)

_FFMPEG_KINDS = (  # checked in order: a network cause explains the decoding errors that follow it
    ("rate_limited", r"http error 429"),
    ("unavailable", r"http error 404|server returned 404"),
    ("removed", r"http error 410"),
    ("forbidden", r"http error 40[13]|server returned 40[13]"),
    ("server_error", r"http error 5\d\d|server returned 5xx"),
    ("http_error", r"http error [4-5]\d\d|server returned 4xx"),
    ("timeout", r"timed out"),
    ("network", r"failed to resolve|name or service not known|temporary failure in name resolution|"
                r"connection refused|network is unreachable|no route to host"),
    ("network", r"stream ends prematurely|partial file|connection reset|broken pipe|input/output error|end of file"),
)
RETRIABLE_KINDS = {"rate_limited", "server_error", "timeout"}
_NO_CONNECTION = re.compile(r"resolve|name or service|name resolution|refused|unreachable|no route", re.IGNORECASE)
_FFMPEG_CONTENT_KINDS = (  # what is wrong with bytes that did arrive
    ("no_audio", r"stream map '\d+:a[:\d]*' matches no streams"),
    ("no_video", r"stream map '\d+:v[:\d]*' matches no streams"),
    ("not_media", r"invalid data found when processing input|moov atom not found|could not find codec"),
)


def _chain(exc: BaseException):
    """The exception and everything it wraps (DownloadError.exc_info, .cause, __cause__, __context__)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        exc_info = getattr(e, "exc_info", None)
        todo += [exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None,
                 getattr(e, "cause", None), e.__cause__, e.__context__]


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: either delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def http_kind(status: int) -> str:
    """The error kind of an HTTP error status."""
    if status == 429:
        return "rate_limited"
    if status == 404:
        return "unavailable"
    if status == 410:
        return "removed"
    if status in (401, 403):
        return "forbidden"
    return "server_error" if status >= 500 else "http_error"


def ytdlp_message(exc: BaseException) -> str:
    """yt-dlp's own text, without the "ERROR: " prefix it adds for terminals."""
    return re.sub(r"^ERROR:\s*", "", str(exc)).strip() or type(exc).__name__


def from_ytdlp(exc: BaseException) -> ClipError:
    """The ClipError for an exception raised by yt-dlp's `extract_info` (message kept verbatim)."""
    message = ytdlp_message(exc)
    text = message.lower()
    for cause in _chain(exc):
        status = getattr(cause, "status", None)
        if isinstance(status, int) and hasattr(cause, "response"):
            headers = getattr(cause.response, "headers", None) or {}
            wait = retry_after_s(headers.get("Retry-After")) if status in (429, 503) else None
            kind = http_kind(status)
            if kind == "forbidden" and re.search(_MESSAGE_KINDS[0][1], text):
                kind = "bot_check"
            return ClipError(kind, message, retriable=kind in RETRIABLE_KINDS, retry_after_s=wait)
        if type(cause).__name__ == "GeoRestrictedError":
            return ClipError("geo_blocked", message)
        if isinstance(cause, (TimeoutError, socket.timeout)):
            return ClipError("timeout", message, retriable=True)
        if isinstance(cause, (socket.gaierror, ConnectionRefusedError)):
            return ClipError("network", message)
        if isinstance(cause, ConnectionError):
            return ClipError("network", message, retriable=True)
    for kind, pattern in _MESSAGE_KINDS:  # YouTube's own refusals: its session rate limit lasts up to an hour
        if re.search(pattern, text):
            return ClipError(kind, message)
    if any(type(c).__name__ in ("TransportError", "IncompleteRead", "SSLError", "ProxyError") for c in _chain(exc)):
        return ClipError("network", message, retriable=not _NO_CONNECTION.search(text))
    return ClipError("fetch_error", message)


_LOG_LEVEL_RE = re.compile(r"\[(warning|error|fatal|panic)\]\s*")
_DURATION_RE = re.compile(r"^\[info\]\s+Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)


def _tidy(line: str) -> str:
    """Drop what changes between runs or should not be stored: object addresses, URL query strings
    (signed media URLs carry tokens)."""
    line = re.sub(r" @ 0x[0-9a-f]+\]", "]", line)
    return re.sub(r"(https?://[^\s?]+)\?\S*", r"\1?...", line).strip()


def ffmpeg_problems(stderr: str) -> list[str]:
    """ffmpeg's warning and error lines (run with `-loglevel level+info`), prefixes dropped, duplicates once.

    Only these are classified: info lines carry stream metadata (titles and tags) that could say anything."""
    problems: list[str] = []
    for line in stderr.splitlines():
        match = _LOG_LEVEL_RE.search(line)
        if match and "Last message repeated" not in line:
            text = _tidy(line[:match.start()] + line[match.end():])
            if text not in problems:
                problems.append(text)
    return problems


def source_duration_s(stderr: str) -> float | None:
    """The first input's duration as ffmpeg's header read reported it, if it did."""
    match = _DURATION_RE.search(stderr)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _ffmpeg_error(problems: list[str], kinds, fallback: str) -> ClipError | None:
    text = "\n".join(problems).lower()
    message = "ffmpeg: " + (" | ".join(problems[-3:])[-600:] or fallback)
    for kind, pattern in kinds:
        if match := re.search(pattern, text):
            retriable = kind in RETRIABLE_KINDS or (kind == "network" and not _NO_CONNECTION.search(match.group()))
            return ClipError(kind, message, retriable=retriable)
    return None


def from_ffmpeg(stderr: str, returncode: int, remote: bool) -> ClipError:
    """The ClipError for a failed ffmpeg run; network causes are considered only for `remote` inputs."""
    kinds = (_FFMPEG_KINDS if remote else ()) + _FFMPEG_CONTENT_KINDS + (("ffmpeg_error", ""),)
    return _ffmpeg_error(ffmpeg_problems(stderr), kinds, f"exit status {returncode}")


def network_trouble(stderr: str) -> ClipError | None:
    """A read failure ffmpeg logged even though it exited 0 (it keeps what arrived of a cut body)."""
    return _ffmpeg_error(ffmpeg_problems(stderr), _FFMPEG_KINDS, "")
