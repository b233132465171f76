"""OUT on object storage: runs against moto's real S3 server on 127.0.0.1, with real Dask clusters whose workers
see no client folder (docs/scale.md, "OUT on object storage")."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import webdataset as wds
from conftest import make_av
from dask_cluster import cli_cluster

from curation.config import load_config
from curation.errors import UsageError
from curation.pipeline import run

# a small world and a tiny localisation model, trained by each run into OUT/ssl/ (the default path of `make shards`);
# one worker (each worker's start costs seconds of imports), two where workers writing to the bucket together is tested
WORLD = {"demo.clips": 8, "demo.duration_s": 3.0, "dask.workers": 1, "dask.clips_per_task": 1,
         "write.samples_per_shard": 3, "ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.dim": 16,
         "ssl.n_mels": 16, "ssl.hop": 640, "ssl.batch_size": 8, "ssl.steps": 10, "ssl.bank_size": 4,
         "ssl.threads": 1, "ssl.restarts": 1}


def _config(out: str, **extra):
    return load_config(None, {"out": out, **WORLD, **extra})


@pytest.fixture(scope="module")
def local_hashes(tmp_path_factory, demo_clips):
    """The same world curated into a local OUT: the shards every run on S3 must reproduce byte for byte (its clips
    encoded once per test run; each run on S3 makes its own world)."""
    out = demo_clips(tmp_path_factory.mktemp("local"), WORLD)
    run(_config(str(out)), progress=False)
    shards = pd.read_parquet(out / "manifests" / "shards.parquet")
    return dict(zip(shards["shard"], shards["sha256"], strict=True))


def _bucket(s3, name: str) -> str:
    s3.client().create_bucket(Bucket=name)
    return f"s3://{name}/run"


def _hashes(s3, bucket: str) -> dict[str, str]:
    shards = pd.read_parquet(io.BytesIO(s3.get(bucket, "run/manifests/shards.parquet")))
    return dict(zip(shards["shard"], shards["sha256"], strict=True))


def _wait_for_cache_objects(s3, bucket: str, n: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = len([k for k in s3.keys(bucket, "run/cache/") if k.endswith(".npz")])
        if found >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} cache objects after {timeout_s} s")


def test_a_local_cluster_run_writes_everything_with_its_model_to_the_bucket_and_webdataset_reads_it(s3, local_hashes):
    out = _bucket(s3, "run-local")
    summary = run(_config(out, **{"dask.workers": 2}), progress=False)
    assert summary.counts.get("pending", 0) == 0 and summary.paths.shards == f"{out}/shards"
    keys = s3.keys("run-local", "run/")
    checkpoint = json.loads(s3.get("run-local", "run/manifests/run.json"))["config"]["score"]["checkpoint"]
    assert checkpoint.startswith(f"{out}/ssl/") and checkpoint[len("s3://run-local/"):] in keys
    for name in ("manifests/clips.parquet", "manifests/frames.parquet", "manifests/run.json",
                 "shards/labels.json", "raw/demo_clips.parquet", "raw/truth.parquet", "raw/demo00000.mp4"):
        assert f"run/{name}" in keys
    assert not [k for k in keys if k.endswith(".tmp") or "/." in k]
    assert _hashes(s3, "run-local") == local_hashes  # the same bytes as a run on a local disk
    urls = [f"{out}/shards/{name}" for name in sorted(local_hashes)]
    reader = "import fsspec, shutil, sys; shutil.copyfileobj(fsspec.open(sys.argv[1]).open(), sys.stdout.buffer)"
    samples = list(wds.WebDataset([f"pipe:{sys.executable} -c '{reader}' {url}" for url in urls],
                                  shardshuffle=False).decode("pil"))
    assert len(samples) == summary.n_samples and samples[0]["json"]["clip_id"] == samples[0]["__key__"]
    with pytest.raises(UsageError, match="other parameters"):
        run(_config(out, **{"demo.clips": 9}), progress=False)


def test_a_dask_cluster_in_separate_folders_survives_a_worker_killed_mid_run(s3, local_hashes, tmp_path):
    out = _bucket(s3, "run-cluster")
    with cli_cluster(tmp_path, [[], []]) as (address, procs):
        result = {}
        runner = threading.Thread(target=lambda: result.update(
            summary=run(_config(out, **{"dask.scheduler": address}), progress=False)))
        runner.start()
        _wait_for_cache_objects(s3, "run-cluster", 2)
        os.killpg(procs[1].pid, signal.SIGKILL)  # one worker (and its nanny) dies mid-run
        procs[1].wait()
        runner.join(timeout=300)
        assert result["summary"].counts.get("pending", 0) == 0
        assert _hashes(s3, "run-cluster") == local_hashes


def test_a_run_killed_whole_resumes_from_the_bucket_to_the_same_shards(s3, local_hashes, tmp_path):
    out = _bucket(s3, "run-killed")
    args = [sys.executable, "-m", "curation", "run", "--out", out, "--quiet"]
    args += [f"--set={k}={v}".replace(" ", "") for k, v in WORLD.items()]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_cache_objects(s3, "run-killed", 3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = len([k for k in s3.keys("run-killed", "run/cache/") if k.endswith(".npz")])
    assert 3 <= done_before < 8, "the run must be killed partway"
    assert not [k for k in s3.keys("run-killed", "run/shards/") if k.endswith(".tar")]
    summary = run(_config(out), progress=False)
    assert summary.counts.get("pending", 0) == 0
    assert _hashes(s3, "run-killed") == local_hashes


def test_local_path_rows_are_uploaded_and_read_by_the_workers_from_the_bucket(s3, tmp_path):
    out = _bucket(s3, "run-paths")
    clips = [make_av(tmp_path / f"tone{i}.mp4", 3, freq=300 + 200 * i) for i in range(2)]
    rows = [{"path": str(p), "start_s": 0.0, "end_s": 3.0, "label": "tone", "split": "train"} for p in clips]
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    cfg = load_config(None, {"dataset": "csv", "meta": str(tmp_path / "clips.csv"), "out": out, "dask.workers": 1,
                             "score.scorer": "synchrony", "select.keep_quantile": None})
    summary = run(cfg, progress=False)
    assert summary.counts == {"ok": 2}
    assert len([k for k in s3.keys("run-paths", "run/inputs/") if k.endswith(".mp4")]) == 2
    assert len([k for k in s3.keys("run-paths", "run/raw/") if k.endswith(".mp4")]) == 2
    assert list(_hashes(s3, "run-paths")) == ["csv-train-000000.tar"]

