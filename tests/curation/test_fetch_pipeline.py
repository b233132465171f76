"""Fetching inside whole runs on a LocalCluster: good and failing hosts in one list, retry-failed, the global stop,
the per-host cap across workers, hostile rows, and a VGGSound list with no way out to YouTube."""

import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from conftest import make_av
from media_server import MediaServer

from curation.__main__ import main
from curation.config import load_config
from curation.pipeline import run

FAST = {"score.scorer": "none", "select.keep_quantile": None, "dask.workers": 1, "dask.clips_per_task": 2,
        "fetch.socket_timeout_s": 1.0, "fetch.retries": 1, "fetch.backoff_s": 0.05,
        "filters.reject_duplicates": False}  # one file is served under several urls on purpose
GOOD = ["ok/good.mp4", "ok/moov_last.mp4", "flaky/1/good.mp4", "norange/moov_last.mp4"]
BAD = {"status/404/a.mp4": "unavailable", "status/403/a.mp4": "forbidden", "status/429/a.mp4": "rate_limited",
       "status/500/a.mp4": "server_error", "hang/a.mp4": "timeout", "cut/good.mp4": "network",
       "drop/good.mp4": "network", "html/a.mp4": "not_media", "garbage/a.mp4": "not_media"}
TRANSIENT = {"status/429/a.mp4", "status/500/a.mp4", "hang/a.mp4", "cut/good.mp4", "drop/good.mp4"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    with MediaServer(retry_after=1, hang_s=30) as srv:
        srv.add_file(make_av(folder / "good.mp4", 8, faststart=True))
        srv.add_file(make_av(folder / "moov_last.mp4", 8, freq=660))
        yield srv


def _config(clip_list: Path, out: Path, **extra):
    return load_config(None, {"dataset": "csv", "meta": str(clip_list), "out": str(out), **FAST, **extra})


def _files(root: Path, skip: Path | None = None) -> set[Path]:
    return {p for p in root.rglob("*") if skip is None or skip not in p.parents}


@pytest.fixture(scope="module")
def mixed_run(server, tmp_path_factory):
    """One list of good, failing and hostile rows; run, then rerun with retry_failed."""
    work = tmp_path_factory.mktemp("mixed")
    rows = [{"url": server.url(p), "path": None, "clip_id": None, "start_s": 1.0, "end_s": 6.0, "label": p}
            for p in GOOD + list(BAD)]
    hostile = [{"url": "--exec=x"}, {"url": "file:///etc/passwd"}, {"url": "-oexec"},
               {"url": server.url("ok/good.mp4"), "clip_id": "../../evil"},
               {"path": "/dev/zero"}, {"path": str(work)}]
    rows += [{"url": None, "path": None, "clip_id": None, "start_s": 0.0, "end_s": 5.0, "label": f"hostile{i}", **h}
             for i, h in enumerate(hostile)]
    clip_list = work / "clips.csv"
    pd.DataFrame(rows).to_csv(clip_list, index=False)
    out = work / "out"
    outside = _files(work.parent)
    first = run(_config(clip_list, out), progress=False)
    after_first = dict(server.hits)
    second = run(_config(clip_list, out, **{"fetch.retry_failed": True}), progress=False)
    refetched = {k: v - after_first.get(k, 0) for k, v in server.hits.items() if v != after_first.get(k, 0)}
    return {"out": out, "first": first, "second": second, "hits": after_first, "refetched": refetched,
            "outside_before": outside, "outside_after": _files(work.parent, skip=out)}


def test_every_endpoint_ends_as_its_kind_and_the_good_clips_land_in_shards(mixed_run):
    clips = pd.read_parquet(mixed_run["out"] / "manifests" / "clips.parquet").set_index("label")
    for path, kind in BAD.items():
        assert (clips.loc[path, "status"], clips.loc[path, "error_kind"]) == ("failed", kind), path
    assert (clips.loc[GOOD, "status"] == "ok").all()
    assert "HTTP Error 404: Not Found" in clips.loc["status/404/a.mp4", "error"]
    samples = list(wds.WebDataset(sorted(str(p) for p in (mixed_run["out"] / "shards").glob("*.tar")),
                                  shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(clips.loc[GOOD, "clip_id"])
    assert mixed_run["first"].counts == {"ok": len(GOOD), "failed": len(BAD) + 6}


def test_transient_failures_were_retried_the_configured_number_of_times(server, mixed_run):
    hits = mixed_run["hits"]
    for path in BAD:
        attempts = 2 if path in TRANSIENT else 1  # fetch.retries = 1
        if path == "cut/good.mp4":  # ranged reads by ffprobe and ffmpeg, then the whole file once more
            assert hits[f"/{path}"] >= 3 * attempts, path
        else:  # one request per attempt; a page then goes to yt-dlp, which makes its own
            assert hits[f"/{path}"] == (2 if path == "html/a.mp4" else 1) * attempts, path


def test_hostile_rows_are_invalid_ids_and_nothing_is_written_outside_out(mixed_run):
    clips = pd.read_parquet(mixed_run["out"] / "manifests" / "clips.parquet")
    hostile = clips[clips["label"].str.startswith("hostile") | clips["clip_id"].str.endswith("-badrow")]
    assert len(hostile) == 6 and set(hostile["error_kind"]) == {"invalid_id"}
    assert mixed_run["outside_after"] == mixed_run["outside_before"] | {mixed_run["out"]}
    assert not list(mixed_run["out"].parent.parent.rglob("evil*"))


def test_retry_failed_refetches_only_the_transient_failures(mixed_run):
    refetched = {path.lstrip("/") for path in mixed_run["refetched"]}
    assert refetched == TRANSIENT
    assert mixed_run["second"].counts == mixed_run["first"].counts
    assert any(f"{len(TRANSIENT)} clips with a transient failure" in note for note in mixed_run["second"].notes)


def test_consecutive_rate_limits_stop_the_run_and_leave_the_rest_pending(server, tmp_path):
    rows = [{"url": server.url(f"status/429/stop{i}.mp4"), "start_s": 0.0, "end_s": 5.0, "label": "x"}
            for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    cfg = _config(tmp_path / "clips.csv", tmp_path / "out", **{
        "dask.tasks_in_flight_per_worker": 1, "fetch.retries": 0, "fetch.stop_after": 2})
    summary = run(cfg, progress=False)
    assert summary.counts == {"failed": 2, "pending": 4} and summary.error_kinds == {"rate_limited": 2}
    assert sum(server.hits[f"/status/429/stop{i}.mp4"] for i in range(6)) == 2
    assert any(note.startswith("stopped after 2 clips in a row") for note in summary.notes)


@pytest.mark.parametrize(("per_host", "rate"), [(1, None), (2, 0.25)])
def test_the_per_host_cap_and_rate_limit_hold_across_workers(server, tmp_path, per_host, rate):
    server.waits.clear()
    for i in range(4):
        server.files[f"good{i}.mp4"] = server.files["good.mp4"]
    rows = [{"url": server.url(f"delay/200/good{i}.mp4"), "start_s": 0.0, "end_s": 4.0, "label": "x"}
            for i in range(4)]
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    cfg = _config(tmp_path / "clips.csv", tmp_path / "out", **{  # a socket timeout no busy machine reaches: no retry
        "dask.workers": 2, "dask.clips_per_task": 1, "fetch.per_host": per_host, "fetch.rate_limit": rate,
        "fetch.socket_timeout_s": 10.0})
    assert run(cfg, progress=False).counts == {"ok": 4}
    assert len(server.waits) == 12  # per clip: ours (the host seeks), ffprobe's, then ffmpeg's stream copy
    if per_host == 1:  # two workers, yet never two requests at once
        windows = sorted((arrived, answered) for _, arrived, answered in server.waits)
        assert all(later[0] >= earlier[1] for earlier, later in zip(windows, windows[1:], strict=False))
    else:  # 2 slots, each held >= 2 / 0.25 = 8 s: the third clip takes a slot >= 8 s after the first did;
        # its first request reaches the server a little after that, by however long extraction took (< 3 s)
        firsts = sorted(min(arrived for path, arrived, _ in server.waits if path == p)
                        for p in {path for path, _, _ in server.waits})
        assert firsts[2] - firsts[0] >= 5.0


def test_an_offline_vggsound_list_fails_fast_as_network_with_a_summary(tmp_path, capsys):
    with socket.socket() as sock:  # a proxy nobody listens on: no way out, whatever this machine's network
        sock.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    (tmp_path / "vggsound.csv").write_text(
        "---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n"
        "-XxUW9gW6mc,60,dog barking,test\nFwVYUHKoLtQ,34,playing piano,train\n")
    started = time.monotonic()
    code = main(["run", "--dataset", "vggsound", "--meta", str(tmp_path / "vggsound.csv"), "--out",
                 str(tmp_path / "out"), "--proxy", proxy, "--workers", "1", "--scorer", "none", "--quiet"])
    elapsed = time.monotonic() - started
    printed = capsys.readouterr().out
    assert code == 0 and elapsed < 60
    assert "failed 4, pending 0" in printed and "failed network: 4" in printed
    clips = pd.read_parquet(tmp_path / "out" / "manifests" / "clips.parquet")
    assert set(clips["error_kind"]) == {"network"} and clips["error"].str.contains("Connection refused").all()
    assert "---g-f_I2yQ_0001000_0011000" in set(clips["clip_id"])  # an id starting with '-' is a normal clip
