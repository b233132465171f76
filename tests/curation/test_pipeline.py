"""End-to-end runs on a real LocalCluster (2 worker processes), real ffmpeg, decord and WebDataset tars."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from conftest import make_av
from dask_cluster import cli_cluster

from curation.config import SelectConfig, load_config
from curation.pipeline import _client, run

# one of the 16 demo clips is sound-only (a still background with sound): the still filter rejects it first;
# of the other 15, those whose calibrated margin is >= min_clip_score, at most ceil(keep_quantile x 15)
KEPT_OF_16 = math.ceil(SelectConfig().keep_quantile * 15)

DEMO = {"demo.clips": 16, "demo.duration_s": 4.0, "dask.workers": 2, "dask.clips_per_task": 2,
        "write.samples_per_shard": 5,
        # a tiny localisation model, trained by the run itself (the default path of `make shards`)
        "ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.dim": 16, "ssl.n_mels": 16, "ssl.hop": 640,
        "ssl.batch_size": 8, "ssl.steps": 20, "ssl.bank_size": 4, "ssl.threads": 1, "ssl.restarts": 1,
        # a 20-step model is barely trained: against the median chance pairing some clips always pass, so the
        # shards this file checks are never empty (the default 0.96 quantile may keep none of them)
        "score.bank_quantile": 0.5}


def _demo_config(out: Path, **extra):
    return load_config(None, {"out": str(out), **DEMO, **extra})


def _shard_hashes(out: Path) -> dict[str, str]:
    shards = pd.read_parquet(out / "manifests" / "shards.parquet")
    return dict(zip(shards["shard"], shards["sha256"], strict=True))


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, demo_clips):
    out = demo_clips(tmp_path_factory.mktemp("clean"), DEMO)  # the world's clips encoded once per test run
    summary = run(_demo_config(out), progress=False)
    return out, summary


def test_demo_run_writes_manifests_and_readable_shards(clean_run):
    out, summary = clean_run
    clips = pd.read_parquet(out / "manifests" / "clips.parquet")
    frames = pd.read_parquet(out / "manifests" / "frames.parquet")
    assert len(clips) == 16 and clips["clip_id"].is_unique
    assert set(clips["status"]) <= {"ok", "rejected"}
    unfiltered = clips[clips["error_kind"].isna()]
    passing = unfiltered["clip_score"] >= SelectConfig().min_clip_score
    assert (clips["status"] == "ok").sum() == min(KEPT_OF_16, passing.sum())
    assert (unfiltered.loc[~passing, "status"] == "rejected").all()
    assert clips["error_kind"].dropna().tolist() == ["still"] and clips["still"].sum() == 1
    assert len(frames) == clips["n_frames"].sum() == 16 * 40
    assert (frames.groupby("clip_id")["rank"].min() == 1).all()
    kept = frames[frames["selected"]]
    assert set(kept["clip_id"]) == set(clips.loc[clips["status"] == "ok", "clip_id"])
    samples = list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")),
                                  shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(kept["clip_id"].unique())
    sample = samples[0]
    meta = sample["json"]
    assert sample["jpg"].size == (288, 224) and "top3.jpg" in sample
    assert meta["clip_id"] == sample["__key__"] and meta["rank"] == 1 and meta["ssl_model"].startswith("ssl-native-")
    row = clips.set_index("clip_id").loc[sample["__key__"]]
    assert sample["cls"] == row["label_index"] and meta["label"] == row["label"]
    assert json.loads((out / "manifests" / "run.json").read_text())["counts"] == summary.counts


def test_same_inputs_and_config_give_byte_identical_shards_whatever_the_number_of_workers(clean_run, tmp_path,
                                                                                         demo_clips):
    out, _ = clean_run
    run(_demo_config(demo_clips(tmp_path, DEMO), **{"dask.workers": 1}), progress=False)  # the clean run had 2 workers
    assert _shard_hashes(tmp_path) == _shard_hashes(out)
    for name in ("frames.parquet", "clips.parquet", "shards.parquet"):
        ours, theirs = (pd.read_parquet(o / "manifests" / name).drop(columns=["path"], errors="ignore")
                        for o in (tmp_path, out))  # `path` names each run's own raw/ folder
        assert ours.equals(theirs)


def test_a_killed_run_resumes_to_the_same_shards(clean_run, tmp_path, demo_clips):
    out, _ = clean_run
    demo_clips(tmp_path, DEMO)
    args = [sys.executable, "-m", "curation", "run", "--out", str(tmp_path), "--quiet"]
    args += [f"--set={k}={v}".replace(" ", "") for k, v in DEMO.items()]
    args += ["--set=dask.clips_per_task=1", "--set=dask.workers=1"]  # the resumed run has 2 workers
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = tmp_path / "cache"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(cache.glob("*/*.npz"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(cache.glob("*/*.npz")))
    assert 3 <= done_before < 16, "the run must be killed partway"
    assert not (tmp_path / "shards").exists() or not list((tmp_path / "shards").glob("*.tar"))

    summary = run(_demo_config(tmp_path), progress=False)
    assert summary.counts.get("pending", 0) == 0
    assert _shard_hashes(tmp_path) == _shard_hashes(out)
    clips = pd.read_parquet(tmp_path / "manifests" / "clips.parquet")
    assert len(clips) == 16 and clips["clip_id"].is_unique


def test_bad_inputs_are_recorded_per_clip_and_good_clips_still_written(tmp_path, bad_media):
    good = [make_av(tmp_path / f"good{i}.mp4", 4, freq=300 + 100 * i) for i in range(3)]
    rows = [{"path": str(p), "start_s": 0.0, "end_s": 4.0, "label": "tone", "split": "train"} for p in good]
    rows += [{"path": str(p), "start_s": 0.0, "end_s": 5.0, "label": kind, "split": "train"}
             for kind, p in bad_media.items()]
    rows.append({"path": str(good[0]), "start_s": 3.0, "end_s": 1.0, "label": "tone", "split": "train"})
    clip_list = tmp_path / "clips.csv"
    pd.DataFrame(rows).to_csv(clip_list, index=False)
    options = {"dataset": "csv", "meta": str(clip_list), "out": str(tmp_path / "out"), "dask.workers": 1,
               "select.keep_quantile": None, "score.scorer": "synchrony", "decode.short_clips": "reject"}
    summary = run(load_config(None, options), progress=False)
    clips = pd.read_parquet(tmp_path / "out" / "manifests" / "clips.parquet").set_index("label")
    for kind in bad_media:
        assert clips.loc[kind, "status"] == "failed" and clips.loc[kind, "error_kind"] == kind
    assert summary.error_kinds == {**{kind: 1 for kind in bad_media}, "invalid_time": 1}
    assert summary.counts == {"ok": 3, "failed": len(bad_media) + 1}
    assert clips["audio_tiled"].isna().sum() == len(bad_media) + 1 and not clips["audio_tiled"].any()
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shards" / "csv-train-000000.tar"), shardshuffle=False))
    assert len(samples) == 3

    # by default a clip with less audio than the window is scored with its audio tiled (the 2-s clip, 3-s window):
    # the rerun reuses every other clip's cached result (the cache key does not change) and redoes only that one
    summary = run(load_config(None, {**options, "decode.short_clips": "tile"}), progress=False)
    clips = pd.read_parquet(tmp_path / "out" / "manifests" / "clips.parquet").set_index("label")
    short = clips.loc["too_short"]
    assert short["status"] == "ok" and short["audio_tiled"] and short["n_frames"] == 20
    assert pd.isna(short["error_kind"]) and summary.counts == {"ok": 4, "failed": len(bad_media)}
    assert clips.loc["tone", "audio_tiled"].tolist() == [False, False, False, None]  # the last: an invalid row
    frames = pd.read_parquet(tmp_path / "out" / "manifests" / "frames.parquet")
    assert (frames["clip_id"] == short["clip_id"]).sum() == 20
    assert len(list((tmp_path / "out" / "cache").iterdir())) == 1


def test_run_on_a_cluster_started_with_the_dask_commands(tmp_path, clean_run, demo_clips):
    out, _ = clean_run
    with cli_cluster(tmp_path, [["--nworkers", "2"]]) as (address, _):
        assert address.startswith("tcp://127.0.0.1:")
        summary = run(_demo_config(demo_clips(tmp_path / "out", DEMO), **{"dask.scheduler": address}),
                      progress=False)
    kept = pd.read_parquet(out / "manifests" / "clips.parquet")["status"].eq("ok").sum()
    assert summary.counts.get("ok", 0) == kept
    assert _shard_hashes(tmp_path / "out") == _shard_hashes(out)


def test_the_local_cluster_is_shut_down_after_a_run(clean_run):
    psutil = pytest.importorskip("psutil")
    workers = [p for p in psutil.Process().children(recursive=True)
               if "resource_tracker" not in " ".join(p.cmdline())]
    assert workers == []


def test_local_cluster_workers_reuse_freed_memory_instead_of_faulting_it_in_again(tmp_path):
    def page_faults_of_reallocating(mib: int, times: int) -> int:
        """The thread's minor page faults (as the pipeline counts them) while it allocates, fills and frees `mib`
        MiB `times` times, after a first allocation that may fault. Defined here so that it travels by value: a
        worker importing this module would find another test folder's conftest first."""
        import numpy as np

        from curation.clip_task import _minor_page_faults

        np.ones(mib << 20, dtype=np.uint8)
        before = _minor_page_faults()
        for _ in range(times):
            np.ones(mib << 20, dtype=np.uint8)
        return _minor_page_faults() - before

    # Measured here: ~2,600 faults under Dask's own worker settings, ~500 under glibc's adaptive defaults, 0 now.
    with _client(load_config(None, {"out": str(tmp_path), "dask.workers": 1})) as client:
        faults = client.submit(page_faults_of_reallocating, 24, 5, pure=False).result(timeout=120)
        threads = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert faults < 50
    assert list(threads.values()) == ["1"]  # Dask's one-thread defaults for OpenMP / BLAS are kept
