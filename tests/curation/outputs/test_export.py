"""Round trip through the official moments format: curate, export-moments, curate again from the file with
SCORER=moments -> the same clips and the same selected frames; a clip the file does not list fails as such."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import soundfile
import webdataset as wds
from conftest import make_av
from PIL import Image

from curation.__main__ import main
from curation.config import load_config
from curation.pipeline import run

IDS = ["qJ2cY646opA", "l-qyJLFOVYI", "4enilF4pEko", "uoCay5JXnn4"]  # real VGGSound test ids starting at 0 s
BASE = {"dataset": "csv", "dask.workers": 1, "dask.clips_per_task": 2, "select.top_k": 3}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    rows = [{"path": str(make_av(root / f"{ytid}_000000.mp4", 4, freq=300 + 150 * i)), "ytid": ytid,
             "start_s": 0, "end_s": 4, "label": f"label {i % 2}"} for i, ytid in enumerate(IDS)]
    meta = root / "clips.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    out = root / "scored"
    run(load_config(None, {**BASE, "meta": str(meta), "out": str(out), "score.scorer": "synchrony"}), progress=False)
    return root, meta, out


def _selected(out) -> dict[str, list[float]]:
    samples = wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)
    return {s["__key__"]: [m["t"] for m in json.loads(s["json"])["moments"]] for s in samples}


def test_export_then_curating_from_the_file_keeps_the_same_frames(curated, capsys):
    root, meta, out = curated
    target = root / "official" / "top1_boxes_top10_moments.json"
    assert main(["export-moments", "--out", str(out), "--json", str(target)]) == 0
    assert "3 clips" in capsys.readouterr().out
    moments = json.loads(target.read_text())
    first = _selected(out)
    assert len(first) == 3 and sorted(moments) == sorted(f"{cid.split('_')[0]}_0_4000" for cid in first)
    for clip_id, times in first.items():
        key = f"{clip_id[:11]}_0_4000"
        assert moments[key][:3] == [round(t * 10) + 1 for t in times] and len(moments[key]) == 10
        assert Image.open(root / "official" / "images" / f"{key}.jpg").size == (224, 224)
        audio, rate = soundfile.read(io.BytesIO((root / "official" / "audios" / f"{key}.wav").read_bytes()))
        assert rate == 16000 and audio.ndim == 1 and abs(len(audio) - 4 * 16000) <= 160

    again = root / "from_file"
    run(load_config(None, {**BASE, "meta": str(meta), "out": str(again), "score.scorer": "moments",
                           "score.moments": str(target)}), progress=False)
    assert _selected(again) == first
    clips = pd.read_parquet(again / "manifests" / "clips.parquet").set_index("clip_id")
    assert (clips.loc[list(first), "status"] == "ok").all()
    left_out = clips.drop(index=list(first))
    assert list(left_out["status"]) == ["failed"] and list(left_out["error_kind"]) == ["not_in_moments"]
    frames = pd.read_parquet(again / "manifests" / "frames.parquet")
    assert frames["clip_id"].nunique() == 3  # the unlisted clip was never fetched nor decoded
    for sample in wds.WebDataset(sorted(str(p) for p in (again / "shards").glob("*.tar")), shardshuffle=False):
        assert json.loads(sample["json"])["ssl_model"].startswith("moments-")
    assert np.all(frames.groupby("clip_id")["selected"].sum() == 3)
