"""OUT's layout: one module names every folder and file of a run (README "Output folder"), the same for a local
folder and an object store."""

from pathlib import Path

from manifests.layout import ModelFiles, OfficialFiles, RunLayout, join, parent, shard_name


def test_a_local_out_and_a_bucket_have_the_same_layout():
    local, bucket = RunLayout("/data/run"), RunLayout("s3://bucket/run")
    for place in ("raw", "source_index", "demo_clips", "demo_world", "truth", "caches", "yt_dlp_cache", "inputs",
                  "manifests", "clips_manifest", "frames_manifest", "shards_manifest", "run_record", "truth_metrics",
                  "shards", "labels", "report"):
        assert getattr(local, place).removeprefix("/data/run") == getattr(bucket, place).removeprefix("s3://bucket/run")
    assert local.raw_clip("a_1") == "/data/run/raw/a_1.mp4"
    assert local.fetch_record("a_1") == "/data/run/raw/a_1.fetch.json"
    assert bucket.cache("k") == "s3://bucket/run/cache/k" and bucket.clip_map("a_1") == "s3://bucket/run/maps/a_1.npy"
    assert local.clip_files("a_1") == ("/data/run/raw/a_1.fetch.json", "/data/run/maps/a_1.npy",
                                       "/data/run/raw/a_1.mp4")  # upload order: the clip last
    assert bucket.bank("abc") == "s3://bucket/run/ssl/bank-abc.pt"
    assert local.given_input("checkpoint", "0123456789abcdef99", "best.pth") == \
        "/data/run/inputs/checkpoint/0123456789abcdef/best.pth"


def test_the_files_the_design_names():
    layout = RunLayout("work/demo")
    assert (layout.clips_manifest, layout.frames_manifest, layout.shards_manifest, layout.run_record) == (
        "work/demo/manifests/clips.parquet", "work/demo/manifests/frames.parquet",
        "work/demo/manifests/shards.parquet", "work/demo/manifests/run.json")
    assert layout.truth == "work/demo/raw/truth.parquet" and layout.labels == "work/demo/shards/labels.json"
    assert join(layout.shards, shard_name("demo-train", 3)) == "work/demo/shards/demo-train-000003.tar"


def test_a_model_keeps_its_log_and_restarts_beside_it():
    model = RunLayout("s3://b/run").ssl_model("0a1b2c")
    assert model == ModelFiles("s3://b/run/ssl/0a1b2c/model.pt")
    assert model.loss_log == "s3://b/run/ssl/0a1b2c/loss.jsonl"
    assert model.restarts_record == "s3://b/run/ssl/0a1b2c/restarts.json"
    assert model.restart(2).loss_log == "s3://b/run/ssl/0a1b2c/restarts/2/loss.jsonl"
    assert Path(ModelFiles("m.pt").loss_log) == Path("loss.jsonl")  # a bare file name: its folder is "."


def test_training_finds_a_curated_outs_files_from_its_shard_folder():
    assert RunLayout.of_shards("work/demo/shards/").truth == "work/demo/raw/truth.parquet"
    assert Path(RunLayout.of_shards("shards").truth) == Path("raw/truth.parquet")
    assert RunLayout.of_raw("s3://b/run/raw").yt_dlp_cache == "s3://b/run/cache/yt-dlp"
    official = RunLayout("/r").official("top1.json")
    assert official == OfficialFiles("/r/official/top1.json") and official.image("k") == "/r/official/images/k.jpg"
    assert (parent("/x"), parent("x"), parent("s3://b/k/")) == ("/", ".", "s3://b")
