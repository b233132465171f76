"""What a run on object storage takes from the client and what reads a finished run there, against moto's S3 server
on 127.0.0.1 (docs/scale.md, "OUT on object storage"): a given checkpoint or moments file uploaded once, SOURCE
archives and loose clips brought into the bucket's raw/, and `select`, `report`, `evaluate`, `export-moments` on a
bucket. Each is compared with the same command on a local OUT: byte-identical shards, equal manifests."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_av

from curation.__main__ import main
from curation.config import load_config
from curation.fetch.mirror import plan_source, resolve_source
from curation.localise.scorers import ensure_model
from curation.pipeline import reselect, run, run_jobs
from curation.staging import stage_inputs
from manifests.readers import read_vggsound

# one small demo world, its model trained by the local run and given to the bucket's run as CHECKPOINT; the share
# cap alone selects, so every command has kept clips and shards to compare
WORLD = {"demo.clips": 12, "demo.duration_s": 3.0, "dask.workers": 1, "dask.clips_per_task": 3,
         "write.samples_per_shard": 4, "ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.dim": 16,
         "ssl.n_mels": 16, "ssl.hop": 640, "ssl.batch_size": 8, "ssl.steps": 10, "ssl.bank_size": 4,
         "ssl.threads": 1, "ssl.restarts": 1,
         "select.min_clip_score": None}
NEW_SELECTION = {"select.top_k": 2, "select.min_gap_s": 1.0, "select.keep_quantile": 0.5}


@pytest.fixture(scope="module")
def store(s3_server):
    """The S3 server with this module's environment (and the Dask workers its runs start) pointed at it."""
    import s3fs

    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()


def _hashes(manifests: bytes) -> dict[str, str]:
    shards = pd.read_parquet(io.BytesIO(manifests))
    return dict(zip(shards["shard"], shards["sha256"], strict=True))


def _local(out: Path, name: str) -> bytes:
    return (out / name).read_bytes()


def _record(data: bytes) -> dict:
    return json.loads(data)


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory, demo_clips):
    """The world curated into a local OUT (training its model) and into a bucket with that model as CHECKPOINT."""
    local = demo_clips(tmp_path_factory.mktemp("local") / "run", WORLD)
    run(load_config(None, {"out": str(local), **WORLD}), progress=False)
    model = _record(_local(local, "manifests/run.json"))["config"]["score"]["checkpoint"]
    store.client().create_bucket(Bucket="given")
    run(load_config(None, {"out": "s3://given/run", **WORLD, "score.checkpoint": model}), progress=False)
    return local, model


def _bucket_file(store, name: str) -> bytes:
    return store.get("given", f"run/{name}")


def _same_shards(store, local: Path) -> bool:
    """The bucket's run wrote the same shard files (names, sha256) as the local one."""
    name = "manifests/shards.parquet"
    return _hashes(_bucket_file(store, name)) == _hashes(_local(local, name))


def test_a_given_checkpoint_is_uploaded_once_and_a_url_is_read_in_place(store, runs):
    local, model = runs
    record = _record(_bucket_file(store, "manifests/run.json"))
    assert _same_shards(store, local)
    digest = _record(_local(local, "manifests/run.json"))["model_digest"]
    assert record["model_digest"] == digest and record["inputs"] == {"score.checkpoint": {"given": model,
                                                                                          "sha256": digest}}
    uploaded = store.keys("given", "run/inputs/")
    assert uploaded == [f"run/inputs/checkpoint/{digest[:16]}/model.pt"]
    assert record["config"]["score"]["checkpoint"] == f"s3://given/{uploaded[0]}"
    assert store.get("given", uploaded[0]) == Path(model).read_bytes()

    url = load_config(None, {"out": "s3://given/run", **WORLD, "score.checkpoint": f"s3://given/{uploaded[0]}"})
    assert stage_inputs(url, "s3://given/run") == (url, {})  # a URL is read where it is: nothing uploaded
    assert ensure_model(url, [], "s3://given/run")[1] == digest  # the same model id as the local file's
    assert store.keys("given", "run/inputs/") == uploaded


def test_evaluate_report_and_export_read_and_write_the_bucket(store, runs, tmp_path, capsys):
    local, _ = runs
    assert main(["evaluate", "--out", str(local), "--quiet"]) == 0
    assert main(["evaluate", "--out", "s3://given/run", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert _bucket_file(store, "manifests/truth_metrics.json") == _local(local, "manifests/truth_metrics.json")
    assert printed.count('"ap_score"') == 2

    assert main(["report", "--out", "s3://given/run"]) == 0
    page = _bucket_file(store, "report.html").decode()
    assert "<h2>Against the demo world's truth" in page and page.count("data:image/png;base64,") == 3

    assert main(["export-moments", "--out", str(local)]) == 0
    assert main(["export-moments", "--out", "s3://given/run"]) == 0
    official = sorted(p.relative_to(local) for p in (local / "official").rglob("*") if p.is_file())
    kept = int((pd.read_parquet(local / "manifests" / "clips.parquet")["status"] == "ok").sum())
    assert kept and len(official) == 1 + 2 * kept  # the JSON, and an image + a wav per kept clip
    assert store.keys("given", "run/official/") == [f"run/{p}" for p in official]
    for name in official:
        assert _bucket_file(store, str(name)) == _local(local, str(name))
    assert main(["export-moments", "--out", "s3://given/run", "--json", str(tmp_path / "moments.json")]) == 0
    assert (tmp_path / "moments.json").read_bytes() == _local(local, "official/top1_boxes_top10_moments.json")


def test_reselection_of_a_bucket_equals_the_local_one(store, runs):
    local, _ = runs
    for overrides in (NEW_SELECTION, {"select.keep_quantile": 0.75}):  # frames re-decoded; clip choice only
        reselect(local, overrides, progress=False)
        reselect("s3://given/run", overrides, progress=False)
        for name in ("shards.parquet", "frames.parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(_bucket_file(store, f"manifests/{name}"))),
                                          pd.read_parquet(local / "manifests" / name))
        clips = pd.read_parquet(io.BytesIO(_bucket_file(store, "manifests/clips.parquet")))
        local_clips = pd.read_parquet(local / "manifests" / "clips.parquet")
        pd.testing.assert_frame_equal(clips.drop(columns="path"), local_clips.drop(columns="path"))
        shards = pd.read_parquet(local / "manifests" / "shards.parquet")
        for shard in shards["shard"]:
            assert _bucket_file(store, f"shards/{shard}") == _local(local, f"shards/{shard}")
    record = _record(_bucket_file(store, "manifests/run.json"))
    assert record["reselected_from"] == record["cache_dir"] and record["config"]["select"]["keep_quantile"] == 0.75


def test_a_moments_file_is_uploaded_once_and_curates_as_locally(store, runs):
    local, _ = runs
    assert main(["export-moments", "--out", str(local)]) == 0
    moments = str(local / "official" / "top1_boxes_top10_moments.json")
    digest = hashlib.sha256(Path(moments).read_bytes()).hexdigest()
    for out in (str(local), "s3://given/run"):
        run(load_config(None, {"out": out, **WORLD, "score.scorer": "moments", "score.moments": moments}),
            progress=False)
    assert _same_shards(store, local)
    record = _record(_bucket_file(store, "manifests/run.json"))
    [uploaded] = [k for k in store.keys("given", "run/inputs/") if "/moments/" in k]
    assert record["config"]["score"]["moments"] == f"s3://given/{uploaded}"
    assert record["inputs"]["score.moments"] == {"given": moments, "sha256": digest}
    assert uploaded == f"run/inputs/moments/{digest[:16]}/top1_boxes_top10_moments.json"


# ---------------------------------------------------------------- SOURCE into a bucket

NAMES = [f"mirror{i:05d}_{10 * i:06d}" for i in range(12)]  # <ytid>_<start:06d>, as the mirrors name members


def _archive(path: Path, files: list[Path]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for file in files:
            tar.add(file, arcname=f"vggsound/{file.name}")
    return path


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """12 clips: 4 loose in a folder with two local archives of 4 each; the same 12 as three archives."""
    root = tmp_path_factory.mktemp("mirror")
    clips = root / "clips"
    clips.mkdir()
    files = [make_av(clips / f"{name}.mp4", 4, size="160x120", freq=250 + 60 * i) for i, name in enumerate(NAMES)]
    folder = root / "folder"
    folder.mkdir()
    for file in files[:4]:
        (folder / file.name).write_bytes(file.read_bytes())
    archives = [_archive(root / f"vggsound_{k:02d}.tar.gz", files[4 * k:4 * k + 4]) for k in range(3)]
    for archive in archives[1:]:
        (folder / archive.name).write_bytes(archive.read_bytes())
    meta = root / "vggsound.csv"
    meta.write_text("".join(f"{n[:11]},{int(n[12:])},label {i % 3},train\n" for i, n in enumerate(NAMES)))
    return {"folder": folder, "archives": archives, "meta": meta}


def _source_config(out: str, source: str, meta: Path):
    return load_config(None, {"dataset": "vggsound", "meta": str(meta), "out": out, "source.path": source,
                              "score.scorer": "synchrony", "select.keep_quantile": None, "dask.workers": 1,
                              "dask.clips_per_task": 4, "decode.short_side": 112,
                              "filters.reject_duplicates": False})  # one test pattern under all 12 tones


def test_source_clips_land_in_the_bucket_from_a_local_folder_or_bucket_archives(store, mirror, tmp_path):
    local = tmp_path / "local"
    run(_source_config(str(local), str(mirror["folder"]), mirror["meta"]), progress=False)
    expected = _hashes(_local(local, "manifests/shards.parquet"))
    assert sum(pd.read_parquet(local / "manifests" / "clips.parquet")["status"] == "ok") == 12

    store.client().create_bucket(Bucket="mirror-out")
    cfg = _source_config("s3://mirror-out/run", str(mirror["folder"]), mirror["meta"])
    run(cfg, progress=False)  # loose clips uploaded by the client, its local archives read by the client
    assert _hashes(store.get("mirror-out", "run/manifests/shards.parquet")) == expected
    note = _record(store.get("mirror-out", "run/manifests/run.json"))["source"]
    assert (note["loose_clips"], note["archives_read"], note["archives_read_by_client"], note["extracted"]) == \
        (4, 2, 2, 8)
    raw = store.keys("mirror-out", "run/raw/")
    assert len([k for k in raw if k.endswith(".mp4")]) == 12
    assert len([k for k in raw if k.startswith("run/raw/source_index/")]) == 2
    assert not [k for k in raw if k.endswith(".tmp") or "/." in k]
    rerun = plan_source(resolve_source(str(mirror["folder"])), run_jobs(read_vggsound(mirror["meta"])),
                        "s3://mirror-out/run/raw")
    assert (rerun.archives, rerun.skipped, rerun.wanted) == ((), 2, {})  # a rerun reads no archive: all in raw/

    store.client().create_bucket(Bucket="mirror-in")
    for archive in mirror["archives"]:
        store.client().upload_file(str(archive), "mirror-in", f"hf/{archive.name}")
    run(_source_config("s3://mirror-in/run", "s3://mirror-in/hf/vggsound_*.tar.gz", mirror["meta"]),
        progress=False)  # archives in a bucket: read by the workers, members uploaded to OUT/raw/
    assert _hashes(store.get("mirror-in", "run/manifests/shards.parquet")) == expected
    note = _record(store.get("mirror-in", "run/manifests/run.json"))["source"]
    assert (note["archives_read"], note["archives_read_by_client"], note["extracted"]) == (3, 0, 12)
