import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile
import webdataset as wds
import wids

from curation.outputs.sample_media import build_sample, encode_flac, encode_jpeg
from curation.outputs.shards import remove_stale_shards, write_shard_set, write_wids_index


def _samples(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        frame = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
        audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
        jpgs = [encode_jpeg(frame, 90), encode_jpeg(frame[::-1], 90)]
        yield build_sample(f"clip{i:03d}", jpgs, encode_flac(audio, 16000), i % 3, {"clip_id": f"clip{i:03d}"})


def test_shards_are_byte_identical_and_split_by_count(tmp_path):
    a = write_shard_set(_samples(5), tmp_path / "a", "demo-train", "train", samples_per_shard=2)
    b = write_shard_set(_samples(5), tmp_path / "b", "demo-train", "train", samples_per_shard=2)
    assert [i.shard for i in a] == ["demo-train-000000.tar", "demo-train-000001.tar", "demo-train-000002.tar"]
    assert [i.n_samples for i in a] == [2, 2, 1]
    assert [i.sha256 for i in a] == [i.sha256 for i in b]
    assert (tmp_path / "a" / a[0].shard).read_bytes() == (tmp_path / "b" / a[0].shard).read_bytes()
    assert not list((tmp_path / "a").glob(".*"))  # no temp files left behind


def test_plain_webdataset_reads_image_audio_label_and_metadata(tmp_path):
    write_shard_set(_samples(3), tmp_path, "x", None, samples_per_shard=10)
    samples = list(wds.WebDataset(str(tmp_path / "x-000000.tar"), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == ["clip000", "clip001", "clip002"]
    first = samples[0]
    assert first["jpg"].size == (32, 24) and first["top2.jpg"].size == (32, 24)
    assert first["cls"] == 0 and first["json"] == {"clip_id": "clip000"}
    audio, rate = soundfile.read(io.BytesIO(first["flac"]))
    assert rate == 16000 and audio.shape == (16000,)


def test_wids_index_and_stale_shard_removal(tmp_path):
    infos = write_shard_set(_samples(3), tmp_path, "x", None, samples_per_shard=1)
    index = write_wids_index(tmp_path, "x", infos)
    spec = json.loads(Path(index).read_text())
    assert spec["__kind__"] == "wids-shard-index-v1"
    assert [s["nsamples"] for s in spec["shardlist"]] == [1, 1, 1]
    removed = remove_stale_shards(tmp_path, {"x-000000.tar", "x.wids.json"})
    assert removed == ["x-000001.tar", "x-000002.tar"]
    index = write_wids_index(tmp_path, "x", infos[:1])
    dataset = wids.ShardListDataset(str(index), cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 1 and dataset[0]["__key__"] == "clip000" and ".jpg" in dataset[0]


def test_the_shard_plan_depends_only_on_the_kept_clips_not_their_order():
    from curation.config import load_config
    from curation.outputs.assemble import plan_shards

    cfg = load_config(None, {"write.samples_per_shard": 2, "write.name": "csv"})
    rows = [{"clip_id": f"c{i}", "dataset": "csv", "ytid": None, "start_s": 0.0, "end_s": 1.0,
             "label": "ab"[i % 2], "split": "train" if i < 5 else "test"} for i in range(7)]
    plans = plan_shards(pa.Table.from_pylist(rows), cfg, {"a": 0, "b": 1})
    assert plans == plan_shards(pa.Table.from_pylist(rows[::-1]), cfg, {"a": 0, "b": 1})
    assert list(plans) == ["csv-test", "csv-train"]
    assert [p.shard for p in plans["csv-train"]] == ["csv-train-000000.tar", "csv-train-000001.tar",
                                                      "csv-train-000002.tar"]
    assert [[s[0] for s in p.samples] for p in plans["csv-train"]] == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert plans["csv-test"][0].samples[1] == ("c6", 0, rows[6])
