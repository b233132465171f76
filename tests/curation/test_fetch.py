import os

import pytest
from conftest import make_av

from curation.decode import probe_media
from curation.errors import ClipError
from curation.fetch import fetch_local, raw_path


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
