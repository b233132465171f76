import os
import subprocess

import pytest
from conftest import make_av

from curation.config import FetchConfig
from curation.decode import probe_media
from curation.errors import ClipError
from curation.fetch.clip import FetchGate, fetch_local, probe_output, raw_path, with_retries


def test_h264_mp4_is_linked_untouched_and_reused(tmp_path):
    src = make_av(tmp_path / "src.mp4", 4)
    raw = tmp_path / "raw"
    raw.mkdir()
    fetched = fetch_local(src, "clip_a", 1.0, 3.0, raw)
    assert fetched.path == raw / "clip_a.mp4" and fetched.offset_s == 1.0
    assert os.path.samefile(src, fetched.path) or fetched.path.read_bytes() == src.read_bytes()
    assert fetch_local(src, "clip_a", 1.0, 3.0, raw) == fetched


def test_other_codecs_are_cut_and_reencoded_to_h264(tmp_path):
    src = make_av(tmp_path / "src.avi", 5, vcodec="mpeg4")
    raw = tmp_path / "raw"
    raw.mkdir()
    fetched = fetch_local(src, "clip_b", 1.0, 4.0, raw)
    info = probe_media(fetched.path)
    assert fetched.offset_s == 0.0 and info.video_codec == "h264"
    assert abs(info.duration_s - 3.0) < 0.15
    assert sorted(p.name for p in raw.iterdir()) == ["clip_b.mp4"]  # no temp file left


def test_ids_that_could_escape_the_raw_folder_are_refused(tmp_path):
    for bad in ("../evil", "-oexec", "a/b", ""):
        with pytest.raises(ClipError) as err:
            raw_path(tmp_path, bad)
        assert err.value.kind == "invalid_id"


def test_bad_sources_are_classified_before_anything_is_written(tmp_path, bad_media):
    raw = tmp_path / "raw"
    raw.mkdir()
    for kind in ("missing_file", "empty_file", "not_media", "no_audio", "no_video", "truncated"):
        with pytest.raises(ClipError) as err:
            fetch_local(bad_media[kind], f"clip_{kind}", 0.0, 5.0, raw)
        assert err.value.kind == kind
    assert list(raw.iterdir()) == []


def test_youtube_clip_ids_may_start_with_a_dash_other_unsafe_ids_may_not(tmp_path):
    assert raw_path(tmp_path, "-XxUW9gW6mc_0060000_0070000") == tmp_path / "-XxUW9gW6mc_0060000_0070000.mp4"
    for bad in ("-oexec", "--exec=x", "-XxUW9gW6mc_60_70", "../XxUW9gW6mc_0060000_0070000"):
        with pytest.raises(ClipError, match="unsafe clip id"):
            raw_path(tmp_path, bad)


def test_a_reencoded_clip_is_verified_and_cut_to_what_the_source_has(tmp_path):
    src = make_av(tmp_path / "src.avi", 5, vcodec="mpeg4", size="640x480")
    raw = tmp_path / "raw"
    raw.mkdir()
    fetched = fetch_local(src, "clip_c", 2.0, 8.0, raw)  # asks 6 s, the source has 3 s after 2.0
    got = probe_output(fetched.path)
    assert (got.video_codec, got.sample_rate) == ("h264", 44100) and abs(got.duration_s - 3.0) < 0.3
    assert probe_media(fetched.path).width == 480  # short side capped at fetch.max_height = 360
    with pytest.raises(ClipError) as err:
        fetch_local(src, "clip_d", 6.0, 8.0, raw)
    assert err.value.kind == "invalid_time" and not (raw / "clip_d.mp4").exists()


def test_audio_below_16_khz_is_refused(tmp_path):
    src = tmp_path / "phone.avi"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:duration=4",
                    "-f", "lavfi", "-i", "sine=sample_rate=8000:duration=4", "-c:v", "mpeg4", str(src)], check=True)
    with pytest.raises(ClipError) as err:
        fetch_local(src, "clip_e", 0.0, 4.0, tmp_path)
    assert err.value.kind == "low_audio_rate" and list(tmp_path.glob("*.mp4")) == []


def test_a_device_or_folder_is_not_a_source(tmp_path):
    for path in ("/dev/zero", tmp_path):
        with pytest.raises(ClipError) as err:
            fetch_local(path, "clip_f", 0.0, 4.0, tmp_path)
        assert err.value.kind == "invalid_id"


class _StopAfter(FetchGate):
    def __init__(self, calls: int):
        self.calls = calls

    def stopped(self) -> bool:
        self.calls -= 1
        return self.calls < 0


def _failing(errors: list[ClipError]):
    attempts = []

    def attempt():
        attempts.append(1)
        raise errors[min(len(attempts), len(errors)) - 1]

    return attempt, attempts


def test_retriable_failures_are_retried_with_growing_jittered_backoff():
    cfg = FetchConfig(retries=3, backoff_s=1.0, backoff_max_s=100.0)
    attempt, attempts = _failing([ClipError("server_error", "HTTP Error 500", retriable=True)])
    sleeps = []
    with pytest.raises(ClipError, match=r"HTTP Error 500 \(after 4 attempts\)") as err:
        with_retries(attempt, cfg, FetchGate(), sleeps.append)
    assert err.value.kind == "server_error" and len(attempts) == 4
    assert [0.5 <= s / 2 ** i <= 1.5 for i, s in enumerate(sleeps)] == [True] * 3


def test_retry_after_is_honoured_and_a_too_long_one_fails_at_once():
    cfg = FetchConfig(retries=2, backoff_s=0.1, backoff_max_s=30.0)
    attempt, attempts = _failing([ClipError("rate_limited", "429", retriable=True, retry_after_s=7.0)])
    sleeps = []
    with pytest.raises(ClipError):
        with_retries(attempt, cfg, FetchGate(), sleeps.append)
    assert len(attempts) == 3 and all(7.0 <= s <= 7.7 for s in sleeps)
    attempt, attempts = _failing([ClipError("rate_limited", "429", retriable=True, retry_after_s=3600.0)])
    with pytest.raises(ClipError, match="beyond fetch.backoff_max_s") as err:
        with_retries(attempt, cfg, FetchGate(), sleeps.append)
    assert err.value.kind == "rate_limited" and len(attempts) == 1


def test_permanent_failures_and_a_stopping_run_are_not_retried():
    cfg = FetchConfig(retries=3, backoff_s=0.0)
    attempt, attempts = _failing([ClipError("unavailable", "HTTP Error 404")])
    with pytest.raises(ClipError, match="^HTTP Error 404$"):
        with_retries(attempt, cfg, FetchGate(), lambda s: None)
    assert len(attempts) == 1
    attempt, attempts = _failing([ClipError("timeout", "timed out", retriable=True)])
    with pytest.raises(ClipError):
        with_retries(attempt, cfg, _StopAfter(1), lambda s: None)
    assert len(attempts) == 2  # the gate said stop before the third attempt
