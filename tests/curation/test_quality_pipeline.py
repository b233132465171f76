"""The filters through a real run (ffmpeg-made clips, real decode, real Dask) and a re-selection."""

import json
import subprocess

import pandas as pd
import pytest

from curation.clip_cache import cache_path, read_summary
from curation.config import load_config
from curation.pipeline import reselect, run


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _clip(path, video: str, audio: str, seconds: float = 6.0, vf: str = "null"):
    _ffmpeg("-f", "lavfi", "-i", f"{video}:rate=25:duration={seconds}", "-f", "lavfi",
            "-i", f"{audio}:sample_rate=44100:duration={seconds}", "-vf", vf, "-c:v", "libx264", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(path))
    return path


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("filters")
    a = _clip(tmp / "a.mp4", "testsrc=size=320x240", "sine=frequency=440")
    _ffmpeg("-i", str(a), "-vf", "scale=160:120", "-af", "volume=0.5", "-c:v", "libx264", "-crf", "30", "-c:a", "aac",
            str(tmp / "a_small.mp4"))
    paths = {"a": a, "a_small": tmp / "a_small.mp4",
             "other_tone": _clip(tmp / "b.mp4", "testsrc=size=320x240", "sine=frequency=880"),
             "still": _clip(tmp / "s.mp4", "testsrc=size=320x240", "sine=frequency=660",
                            vf="trim=end_frame=1,tpad=stop_mode=clone:stop_duration=6"),
             "silent": _clip(tmp / "q.mp4", "testsrc2=size=320x240", "anullsrc=channel_layout=mono")}
    # a static picture with a steady tone looks and sounds the same in every window (near-duplicates): give the
    # windows a sound whose loudness never repeats
    windows = _clip(tmp / "w.mp4", "testsrc2=size=320x240",
                    "aevalsrc=0.4*sin(2*PI*220*t)*(0.55+0.45*sin(2*PI*0.4*t*t))")
    rows = [{"clip_id": cid, "ytid": "", "path": str(p), "start_s": 0.0, "end_s": 6.0, "label": "tone" if
             cid.startswith("a") else "other"} for cid, p in paths.items()]
    rows += [{"clip_id": "", "ytid": "abcdefghijk", "path": str(windows), "start_s": s, "end_s": e,
              "label": "other"} for s, e in ((0.0, 3.5), (2.5, 6.0))]
    pd.DataFrame(rows).to_csv(tmp / "clips.csv", index=False)
    out = tmp / "out"
    run(load_config(None, {"dataset": "csv", "meta": str(tmp / "clips.csv"), "out": str(out), "dask.workers": 1,
                           "score.scorer": "synchrony", "select.keep_quantile": None}), progress=False)
    return out


def test_filters_record_and_reject_with_their_error_kind(filtered_run):
    clips = pd.read_parquet(filtered_run / "manifests" / "clips.parquet").set_index("clip_id")
    assert clips.loc["a_small", "status"] == "rejected" and clips.loc["a_small", "error_kind"] == "duplicate"
    assert clips.loc["a", "status"] == "ok" and clips.loc["a", "dup_group"] == "a"
    assert clips["dup_group"].dropna().to_dict() == {"a": "a", "a_small": "a"}  # same footage, other tone: no
    assert clips.loc["still", "still"] and clips.loc["still", "error_kind"] == "still"
    assert clips["still"].sum() == 1
    assert clips.loc["silent", "silent"] and clips.loc["silent", "status"] == "ok"  # recorded only
    assert clips["overlap_of"].dropna().to_dict() == {"abcdefghijk_0002500_0006000": "abcdefghijk_0000000_0003500"}
    record = json.loads((filtered_run / "manifests" / "run.json").read_text())
    cached = read_summary(cache_path(filtered_run / "cache" / record["cache_dir"], "a_small"))
    assert cached.quality["vhash"] and cached.quality["motion"] > 1  # a resumed run reads, never re-measures
    assert record["filters"]["rejected_duplicate"] == 1 and record["filters"]["rejected_still"] == 1
    assert record["keep_rate_per_label"]["tone"] == {"clips": 2, "scored": 2, "kept": 1, "keep_rate": 0.5}


def test_reselection_changes_filters_and_per_label_without_rescoring(filtered_run):
    before = json.loads((filtered_run / "manifests" / "run.json").read_text())
    summary = reselect(filtered_run, {"filters.reject_duplicates": False, "filters.reject_silent": True,
                                      "select.per_label": True, "select.keep_quantile": 0.5}, progress=False)
    clips = pd.read_parquet(filtered_run / "manifests" / "clips.parquet").set_index("clip_id")
    record = json.loads((filtered_run / "manifests" / "run.json").read_text())
    assert record["cache_dir"] == before["cache_dir"] and record["reselected_from"] == before["cache_dir"]
    assert clips.loc["silent", "error_kind"] == "silent" and pd.isna(clips.loc["a_small", "error_kind"])
    assert record["keep_rate_per_label"]["tone"]["kept"] == 1  # top half of the two "tone" clips
    assert summary.filtered == {"still": 1, "silent": 1}
