"""Remote fetching through real yt-dlp (its generic extractor) and real ffmpeg, against a server on 127.0.0.1."""

import socket
import time

import numpy as np
import pytest
import yt_dlp
from conftest import make_av
from media_server import MediaServer

from curation.config import DecodeConfig, FetchConfig
from curation.decode import decode_clip
from curation.errors import ClipError
from curation.fetch.clip import fetch_remote, probe_output
from curation.fetch.errors import from_ffmpeg, from_ytdlp
from curation.fetch.youtube import clip_url

CFG = FetchConfig(socket_timeout_s=0.5, retries=2, backoff_s=0.05, backoff_max_s=5.0)
DECODE = DecodeConfig(short_side=64)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    with MediaServer(retry_after=1, hang_s=30) as srv:
        srv.add_file(make_av(folder / "good.mp4", 12, faststart=True))
        srv.add_file(make_av(folder / "moov_last.mp4", 12))
        srv.add_file(make_av(folder / "long.mp4", 60, faststart=True, size="160x120"))
        srv.folder = folder
        yield srv


def _fetch(server, path: str, raw, start=2.0, end=7.0, cfg=CFG, clip_id="clip"):
    return fetch_remote(clip_id, None, server.url(path), start, end, raw, cfg)


@pytest.mark.parametrize("name", ["good.mp4", "moov_last.mp4"])
def test_a_good_clip_from_a_host_that_seeks_is_stream_copied_decoded_exactly_and_reused(server, tmp_path, name):
    path = f"ok/{name}"
    fetched = _fetch(server, path, tmp_path)
    assert fetched.offset_s == 2.0 and fetched.path == tmp_path / "clip.mp4"  # the source's timeline is kept
    assert fetched.info.duration_s < 8.0 and server.range_starts[f"/{path}"]  # a section, read with ranges
    source = decode_clip(server.folder / name, 2.0, 7.0, DECODE)
    copied = decode_clip(fetched.path, fetched.offset_s, fetched.offset_s + 5.0, DECODE)
    assert np.array_equal(copied.frames, source.frames)  # the same bytes, the same frames: nothing re-encoded
    hits = server.hits[f"/{path}"]
    assert _fetch(server, path, tmp_path).offset_s == 2.0 and server.hits[f"/{path}"] == hits  # raw/ is the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.fetch.json", "clip.mp4"]


# endpoint, error_kind, requests made (CFG.retries = 2 -> 3 attempts for retriable failures)
FAILURES = [
    ("status/404/a.mp4", "unavailable", 1),
    ("status/403/a.mp4", "forbidden", 1),
    ("status/429/a.mp4", "rate_limited", 3),
    ("status/500/a.mp4", "server_error", 3),
    ("hang/a.mp4", "timeout", 3),
    ("cut/good.mp4", "network", None),  # each attempt: ranged reads, then the whole file once more
    ("drop/good.mp4", "network", 3),  # no ranges: one request per attempt
    ("html/a.mp4", "not_media", 2),  # ours, then yt-dlp's (a page is for its extractors)
    ("garbage/a.mp4", "not_media", 1),
    ("redirect-file/a.mp4", "unsupported_source", 1),
    ("redirect/12/ok/good.mp4", "http_error", 1),  # 10 redirects are followed, not 12
]


@pytest.mark.parametrize(("path", "kind", "requests"), FAILURES, ids=[f[1] + "-" + f[0] for f in FAILURES])
def test_each_failing_endpoint_ends_as_its_error_kind(server, tmp_path, path, kind, requests):
    before = server.hits[f"/{path}"]
    with pytest.raises(ClipError) as err:
        _fetch(server, path, tmp_path)
    assert err.value.kind == kind
    retried = kind in ("rate_limited", "server_error", "timeout", "network")
    assert server.hits[f"/{path}"] - before == requests or (requests is None and server.hits[f"/{path}"] > 6)
    assert ("after 3 attempts" in str(err.value)) == retried
    assert [p.name for p in tmp_path.iterdir()] in ([], ["clip.fetch.json"])  # no partial clip, no temp file


def test_http_and_yt_dlp_messages_are_kept(server, tmp_path):
    with pytest.raises(ClipError, match=r"^HTTP Error 404: Not Found \(http://127.0.0.1:\d+/status/404/a.mp4\)$"):
        _fetch(server, "status/404/a.mp4?token=secret", tmp_path)  # query strings (signed URLs) are not kept
    with pytest.raises(ClipError, match=r"^Unsupported URL: http://127.0.0.1:\d+/html/b.mp4$"):
        _fetch(server, "html/b.mp4", tmp_path)


def test_retry_after_is_waited_for(server, tmp_path):
    started = time.monotonic()
    with pytest.raises(ClipError):
        _fetch(server, "status/429/b.mp4", tmp_path, cfg=FetchConfig(retries=1, backoff_s=0.0))
    assert time.monotonic() - started >= 1.0  # the server said Retry-After: 1


def test_a_transient_failure_that_clears_is_fetched(server, tmp_path):
    fetched = _fetch(server, "flaky/2/good.mp4", tmp_path)
    assert probe_output(fetched.path).video_codec == "h264" and server.hits["/flaky/2/good.mp4"] > 3


def test_an_unresolvable_host_fails_fast_as_network_without_retries(tmp_path):
    started = time.monotonic()
    with pytest.raises(ClipError) as err:  # .invalid never resolves (RFC 6761)
        fetch_remote("clip", None, "http://clips.invalid/a.mp4", 0.0, 5.0, tmp_path, CFG)
    assert err.value.kind == "network" and "after" not in str(err.value)
    assert time.monotonic() - started < 10


def test_a_refused_connection_is_network(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    with pytest.raises(ClipError) as err:
        fetch_remote("clip", None, f"http://127.0.0.1:{port}/a.mp4", 0.0, 5.0, tmp_path, CFG)
    assert err.value.kind == "network" and "Connection refused" in str(err.value)


@pytest.mark.parametrize("url", ["-oexec", "--exec=x", "file:///etc/passwd", "concat:/a|/b", "http://a b/c",
                                 "ftp://host/x.mp4", "http://host/a\nb"])
def test_urls_that_are_not_http_never_reach_yt_dlp(url, tmp_path):
    with pytest.raises(ClipError) as err:
        fetch_remote("clip", None, url, 0.0, 5.0, tmp_path, CFG)
    assert err.value.kind == "invalid_id"


def test_youtube_ids_become_watch_urls_and_bad_ones_are_refused():
    assert clip_url("-oexec12345", None) == "https://www.youtube.com/watch?v=-oexec12345"
    for bad in ("-oexec", "--exec=x", "../../etc/pa", "abcdefghij\n", None):
        with pytest.raises(ClipError) as err:
            clip_url(bad, None)
        assert err.value.kind == "invalid_id"


def _download_error(message: str, cause: Exception | None = None) -> yt_dlp.utils.DownloadError:
    """What YoutubeDL raises: the extractor's message, the original exception in exc_info."""
    inner = cause or yt_dlp.utils.ExtractorError(message, expected=True)
    return yt_dlp.utils.DownloadError(f"ERROR: [youtube] abcdefghijk: {message}", (type(inner), inner, None))


YOUTUBE_MESSAGES = [
    ("Video unavailable", "unavailable"),
    ("Video unavailable. This video is no longer available because the YouTube account associated with this "
     "video has been terminated.", "removed"),
    ("This video has been removed for violating YouTube's Terms of Service", "removed"),
    ("Private video. Sign in if you've been granted access to this video", "private"),
    ("Join this channel to get access to members-only content like this video, and other exclusive perks.",
     "private"),
    ("Sign in to confirm your age. This video may be inappropriate for some users.", "age_restricted"),
    ("Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or --cookies for the authentication.",
     "bot_check"),
    ("Video unavailable. This video contains content from SME, who has blocked it in your country on copyright "
     "grounds", "geo_blocked"),
    ("This content isn't available, try again later. The current session has been rate-limited by YouTube",
     "rate_limited"),
    ("Requested format is not available. Use --list-formats for a list of available formats", "no_h264_format"),
    ("Unable to extract yt initial data", "fetch_error"),
]


@pytest.mark.parametrize(("message", "kind"), YOUTUBE_MESSAGES)
def test_youtube_answers_map_to_stable_kinds_with_the_message_kept(message, kind):
    err = from_ytdlp(_download_error(message))
    assert err.kind == kind and str(err) == f"[youtube] abcdefghijk: {message}"
    assert not err.retriable  # worded refusals last (YouTube's session rate limit: up to an hour)


def test_geo_restriction_is_recognised_by_its_exception_type():
    geo = yt_dlp.utils.GeoRestrictedError("The uploader has not made this video available.", countries=["US"])
    assert from_ytdlp(_download_error("The uploader has not made this video available.", geo)).kind == "geo_blocked"


def test_ffmpeg_read_errors_are_network_only_for_remote_inputs():
    stderr = "[error] http://h/a.mp4: Input/output error\n"
    assert from_ffmpeg(stderr, 1, remote=True).kind == "network" and from_ffmpeg(stderr, 1, remote=True).retriable
    assert from_ffmpeg(stderr, 1, remote=False).kind == "ffmpeg_error"
    refused = from_ffmpeg("[error] http://h/a.mp4: Connection refused\n", 1, remote=True)
    assert refused.kind == "network" and not refused.retriable
    title = "[info]     title           : Connection refused (HTTP error 404)\n[error] Conversion failed!\n"
    assert from_ffmpeg(title, 1, remote=True).kind == "ffmpeg_error"  # metadata text is not a diagnosis


def test_proxy_and_cookies_reach_both_yt_dlp_and_ffmpeg_and_the_cookie_file_is_not_rewritten(server, tmp_path):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\nmedia.invalid\tFALSE\t/\tFALSE\t4102444800\tsession\tabc123\n")
    before = cookies.read_bytes()
    cfg = FetchConfig(socket_timeout_s=2.0, retries=0, proxy=server.url("").rstrip("/"), cookies=str(cookies))
    proxied, seen = server.proxied, len(server.cookies)
    raw = tmp_path / "raw"
    raw.mkdir()
    # media.invalid never resolves: the clip can only arrive through the proxy, for yt-dlp and for ffmpeg alike
    fetched = fetch_remote("clip", None, "http://media.invalid/ok/good.mp4", 1.0, 4.0, raw, cfg)
    assert probe_output(fetched.path).video_codec == "h264"
    assert server.proxied - proxied >= 2
    assert all(c and "session=abc123" in c for c in server.cookies[seen:])
    assert cookies.read_bytes() == before
