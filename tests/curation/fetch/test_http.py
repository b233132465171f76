"""Plain web servers as they are: no range support, a dropped connection, a slow body, redirects, broken seeks.

Every good case must give the clip a local `path` row gives: the same bytes kept, the same frames decoded."""

import json

import numpy as np
import pytest
from conftest import make_av
from media_server import MediaServer

from curation.config import DecodeConfig, FetchConfig
from curation.decode import decode_clip
from curation.errors import ClipError
from curation.fetch.clip import fetch_local, fetch_remote, probe_output

CFG = FetchConfig(socket_timeout_s=5.0, retries=2, backoff_s=0.05, backoff_max_s=5.0)  # a loaded machine is slow
DECODE = DecodeConfig(short_side=64)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    with MediaServer(hang_s=30) as srv:
        srv.add_file(make_av(folder / "good.mp4", 10, faststart=True))
        srv.add_file(make_av(folder / "moov_last.mp4", 10, freq=660))
        srv.add_file(make_av(folder / "long.mp4", 60, size="160x120"))
        srv.add_file(make_av(folder / "mpeg4.mp4", 8, vcodec="mpeg4"))
        srv.folder = folder
        yield srv


def _fetch(server, path: str, raw, start=2.0, end=7.0, cfg=CFG):
    return fetch_remote("clip", None, server.url(path), start, end, raw, cfg)


def _decoded(fetched, seconds: float):
    return decode_clip(fetched.path, fetched.offset_s, fetched.offset_s + seconds, DECODE, fetched.info)


@pytest.mark.parametrize("path", ["norange/good.mp4", "norange/moov_last.mp4", "badseek/moov_last.mp4",
                                  "redirect/3/norange/moov_last.mp4", "slow/5/moov_last.mp4"])
def test_every_host_gives_the_clip_a_local_path_row_gives(server, tmp_path, path):
    name = path.rsplit("/", 1)[1]
    (tmp_path / "path").mkdir()
    fetched = _fetch(server, path, tmp_path)
    local = fetch_local(server.folder / name, "clip", 2.0, 7.0, tmp_path / "path")
    assert fetched.offset_s == local.offset_s == 2.0
    assert fetched.path.read_bytes() == (server.folder / name).read_bytes()  # kept: the source's own bytes
    url_clip, path_clip = _decoded(fetched, 5.0), _decoded(local, 5.0)
    assert np.array_equal(url_clip.frames, path_clip.frames) and np.array_equal(url_clip.audio, path_clip.audio)
    if not path.startswith("badseek"):  # read once, on the first attempt; a broken seek costs one more read
        assert server.hits[f"/{path}"] == 1


def test_a_long_source_from_a_host_that_cannot_seek_is_cut_by_stream_copy(server, tmp_path):
    fetched = _fetch(server, "norange/long.mp4", tmp_path, start=40.0, end=43.0)
    (tmp_path / "path").mkdir()
    local = fetch_local(server.folder / "long.mp4", "clip", 40.0, 43.0, tmp_path / "path")
    # from the keyframe before 40 s (x264 puts one every 10 s here) to just after 43 s
    assert fetched.offset_s == 40.0 and fetched.path.stat().st_size < 0.3 * len(server.files["long.mp4"])
    assert json.loads((tmp_path / "clip.fetch.json").read_text()) == {"offset_s": 40.0, "how": "copied"}
    assert np.array_equal(_decoded(fetched, 3.0).frames, _decoded(local, 3.0).frames)
    assert _fetch(server, "norange/long.mp4", tmp_path, start=40.0, end=43.0).offset_s == 40.0  # reused, same start


def test_a_source_that_is_not_h264_is_re_encoded_once_read_whole(server, tmp_path):
    fetched = _fetch(server, "norange/mpeg4.mp4", tmp_path)
    got = probe_output(fetched.path)
    assert fetched.offset_s == 0.0 and got.video_codec == "h264" and abs(got.duration_s - 5.0) < 0.3
    assert json.loads((tmp_path / "clip.fetch.json").read_text())["how"] == "encoded"
    assert server.hits["/norange/mpeg4.mp4"] == 1


def test_a_body_slower_than_fetch_timeout_s_is_a_timeout_and_leaves_nothing(server, tmp_path):
    cfg = FetchConfig(socket_timeout_s=2.0, timeout_s=0.3, retries=0)
    with pytest.raises(ClipError) as err:
        _fetch(server, "slow/400/good.mp4", tmp_path, cfg=cfg)  # 3 pieces of 64 KiB: >= 0.8 s
    assert err.value.kind == "timeout" and "fetch.timeout_s" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_dropped_connection_says_how_much_arrived(server, tmp_path):
    with pytest.raises(ClipError, match=r"body cut short: \d+ of \d+ bytes") as err:
        _fetch(server, "drop/good.mp4", tmp_path, cfg=FetchConfig(retries=0))
    assert err.value.kind == "network"


def test_a_source_over_max_download_mb_is_refused_before_it_is_read(server, tmp_path):
    before = server.hits["/norange/long.mp4"]
    with pytest.raises(ClipError) as err:
        _fetch(server, "norange/long.mp4", tmp_path, cfg=FetchConfig(max_download_mb=0, retries=2))
    assert err.value.kind == "too_large" and server.hits["/norange/long.mp4"] == before + 1
