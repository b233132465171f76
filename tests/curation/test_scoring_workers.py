"""Scoring on workers of its own (`dask.score_resource`), on real Dask clusters with the CPU as the device: the
same clips, frames and JPEGs as the per-clip path, resume, failures as data, clear errors."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds
from dask_cluster import cli_cluster

from curation.__main__ import main
from curation.clip_cache import ClipJob, cache_path, read_summary
from curation.config import load_config
from curation.errors import UsageError
from curation.pipeline import _client, _ensure_scoring_worker, run
from curation.scoring_workers import GroupScores, finish_group, model_inputs, prepare_group, score_inputs
from curation.storage import run_folder

DEMO = {"demo.clips": 8, "demo.duration_s": 3.0, "dask.workers": 2, "dask.clips_per_task": 3,
        "write.samples_per_shard": 5, "score.batch_size": 48,
        "ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.dim": 16, "ssl.n_mels": 16, "ssl.hop": 640,
        "ssl.batch_size": 8, "ssl.steps": 20, "ssl.bank_size": 4, "ssl.threads": 1, "ssl.restarts": 1}
SPLIT = {"dask.score_resource": "GPU"}


def _config(out: Path, **extra):
    return load_config(None, {"out": str(out), **DEMO, **extra})


def _manifest(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / "manifests" / f"{name}.parquet")


def _samples(out: Path) -> dict[str, dict]:
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}


def _cache_dir(out: Path) -> Path:
    return out / "cache" / json.loads((out / "manifests" / "run.json").read_text())["cache_dir"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_clips):
    """One demo world curated twice in one OUT: per-clip scoring, then scoring on the LocalCluster worker that offers
    the resource (another cache key, so every clip is scored again; the model trained by the first run is reused)."""
    out = demo_clips(tmp_path_factory.mktemp("split"), DEMO)
    run(_config(out), progress=False)
    per_clip = {name: _manifest(out, name) for name in ("clips", "frames")}, _samples(out)
    summary = run(_config(out, **SPLIT), progress=False)
    return out, per_clip, summary


def test_scoring_on_a_resource_worker_keeps_the_per_clip_paths_clips_frames_and_jpegs(runs):
    out, (manifests, samples), summary = runs
    clips, frames = _manifest(out, "clips"), _manifest(out, "frames")
    assert summary.counts == manifests["clips"]["status"].value_counts().to_dict()
    pd.testing.assert_series_equal(clips["status"], manifests["clips"]["status"])
    for column in ("clip_id", "t", "rank", "selected"):
        pd.testing.assert_series_equal(frames[column], manifests["frames"][column])
    # batches across clips change the rounding of the last bits only (measured: at most 9e-8)
    np.testing.assert_allclose(frames["score"], manifests["frames"]["score"], rtol=0, atol=1e-6)
    ours = _samples(out)
    assert sorted(ours) == sorted(samples) and len(ours) == (clips["status"] == "ok").sum()
    for key, sample in ours.items():
        assert sample["jpg"] == samples[key]["jpg"] and sample["flac"] == samples[key]["flac"]
    record = json.loads((out / "manifests" / "run.json").read_text())
    assert record["config"]["dask"]["score_resource"] == "GPU" and record["scorer_frames_per_s_per_worker"] > 0


def test_dask_workers_one_with_the_resource_resume_a_partial_run_to_the_same_shards(runs, tmp_path):
    """`dask scheduler` + two `dask worker`s, one started with `--resources GPU=1`, finish a copy of the run from
    which a third of the clips' cache files are gone (as if a kill -9 had stopped it): only those are scored,
    in other batches than the first time, and the shards are the LocalCluster run's, byte for byte."""
    out, _, _ = runs
    shards = _manifest(out, "shards")
    removed = sorted(_cache_dir(out).glob("*.npz"))[1::3]
    for path in removed:
        path.unlink()
    with cli_cluster(tmp_path, [["--resources", "GPU=1"], []]) as (address, _):
        summary = run(_config(out, **SPLIT, **{"dask.scheduler": address}), progress=False)
    assert summary.counts.get("pending", 0) == 0 and all(p.exists() for p in removed)
    pd.testing.assert_frame_equal(_manifest(out, "shards"), shards)


def test_a_cluster_without_a_scoring_worker_is_one_clear_error(tmp_path, monkeypatch):
    from dask.distributed import LocalCluster

    monkeypatch.setattr("curation.pipeline.SCORING_WORKER_WAIT_S", 0.5)

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        cfg = _config(tmp_path, **SPLIT, **{"dask.scheduler": cluster.scheduler_address})
        with _client(cfg) as client, pytest.raises(UsageError) as err:
            _ensure_scoring_worker(client, cfg)
    assert str(err.value) == (f"dask.score_resource = GPU: no worker of {cluster.scheduler_address} offers it; start "
                              f"the scoring workers with `dask worker {cluster.scheduler_address} --nthreads 1 "
                              "--resources GPU=1`")


def test_failures_before_and_during_scoring_are_recorded_per_clip(runs, tmp_path, bad_media):
    out, _, _ = runs
    record = json.loads((out / "manifests" / "run.json").read_text())
    cfg = replace(_config(tmp_path), score=replace(_config(tmp_path).score, **{
        k: record["config"]["score"][k] for k in ("checkpoint", "checkpoint_format")}))
    good = sorted((out / "raw").glob("demo*.mp4"))[:2]
    jobs = [ClipJob(p.stem, str(p), None, 0.0, 3.0) for p in good]
    jobs.insert(1, ClipJob("broken", str(bad_media["truncated"]), None, 0.0, 5.0))
    raw, cache = run_folder(tmp_path), str(tmp_path / "cache")  # OUT = tmp_path: its raw/ and maps/
    group = prepare_group(jobs, cfg, raw, cache)
    assert [o.error_kind for o in group.done] == ["truncated"] and [p.job.clip_id for p in group.clips] == [
        p.stem for p in good]
    assert read_summary(cache_path(cache, "broken")).error_kind == "truncated"  # cached, as in the per-clip path

    lost = GroupScores(None, "OutOfMemoryError: CUDA out of memory", 0.5, "ssl-native-x")
    summaries = finish_group(group, lost, cfg, raw, cache)
    assert [(o.clip_id, o.error_kind) for o in summaries[1:]] == [(p.stem, "internal_error") for p in good]
    assert not any(Path(cache_path(cache, p.stem)).exists() for p in good)  # not cached: a rerun scores them

    summaries = finish_group(group, score_inputs(model_inputs(group), cfg), cfg, raw, cache)
    assert [o.scored for o in summaries] == [False, True, True]
    assert all(Path(cache_path(cache, p.stem)).exists() for p in good)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_score_device_cuda_on_a_machine_without_cuda_is_one_line(runs, capsys):
    out, _, _ = runs
    args = ["run", "--out", str(out), "--quiet", *[f"--set={k}={v}".replace(" ", "") for k, v in DEMO.items()],
            "--set=score.device=cuda", "--set=dask.score_resource=GPU"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: score.device = cuda: this machine has no CUDA device") and "\n" not in err
