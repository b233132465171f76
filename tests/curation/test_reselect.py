"""Re-selection without re-scoring, the truth metrics and the HTML report, on one tiny learned-scorer run."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation.config import load_config
from curation.demo import CATEGORIES
from curation.outputs.evaluate import average_precision, frames_with_truth, truth_metrics
from curation.outputs.report import write_report
from curation.pipeline import reselect, run

BASE = {"demo.clips": 12, "demo.duration_s": 3.0, "dask.workers": 1, "dask.clips_per_task": 3,
        "ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.dim": 16, "ssl.n_mels": 16, "ssl.hop": 640,
        "ssl.batch_size": 8, "ssl.steps": 10, "ssl.bank_size": 4, "ssl.threads": 1}
NEW_SELECTION = {"select.top_k": 2, "select.min_gap_s": 1.0, "select.keep_quantile": 0.5, "select.min_clip_score": None}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, demo_clips):
    out = demo_clips(tmp_path_factory.mktemp("first"), BASE)  # the world's clips encoded once per test run
    run(load_config(None, {"out": str(out), **BASE}), progress=False)
    return out


def _manifests(out):
    clips = pd.read_parquet(out / "manifests" / "clips.parquet").drop(columns=["path"])
    frames = pd.read_parquet(out / "manifests" / "frames.parquet")
    shards = pd.read_parquet(out / "manifests" / "shards.parquet")
    return clips, frames, shards


def test_reselection_equals_a_fresh_run_with_the_same_selection(first_run, tmp_path_factory, demo_clips):
    record = json.loads((first_run / "manifests" / "run.json").read_text())
    checkpoint = record["config"]["score"]["checkpoint"]
    reselect(first_run, NEW_SELECTION, progress=False)
    fresh = demo_clips(tmp_path_factory.mktemp("fresh"), BASE)
    run(load_config(None, {"out": str(fresh), **BASE, **NEW_SELECTION, "score.checkpoint": checkpoint}),
        progress=False)
    (re_clips, re_frames, re_shards), (clips, frames, shards) = _manifests(first_run), _manifests(fresh)
    pd.testing.assert_frame_equal(re_shards, shards)  # same names, counts and sha256: byte-identical shards
    pd.testing.assert_frame_equal(re_frames, frames)
    pd.testing.assert_frame_equal(re_clips, clips)
    assert (re_clips["status"] == "ok").sum() == 6 and re_frames["selected"].sum() == 12
    assert json.loads((first_run / "manifests" / "run.json").read_text())["reselected_from"] == record["cache_dir"]


def test_reselection_refuses_options_that_need_rescoring(first_run):
    with pytest.raises(ValueError, match="only changes select"):
        reselect(first_run, {"decode.fps": 5}, progress=False)


def test_truth_metrics_and_report(first_run):
    metrics = truth_metrics(first_run)
    assert metrics["frames"] == 12 * 30
    assert 0 <= metrics["ap_score"] <= 1 and 0 <= metrics["ap_score_contrastive"] <= 1
    assert metrics["kept_frames"] == pd.read_parquet(first_run / "manifests" / "frames.parquet")["selected"].sum()
    by_kind = metrics["per_kind"]  # 12 clips: 7 normal, 2 mismatched (random, lookalike), 1 of each other kind
    kinds = {k: v for k, v in by_kind.items() if ":" not in k}
    assert {k: v["clips"] for k, v in kinds.items()} == {"normal": 7, "mismatched": 2, "no_object": 1,
                                                          "two_source": 1, "sound_only": 1}
    assert by_kind["mismatched:random"]["clips"] == by_kind["mismatched:lookalike"]["clips"] == 1
    assert sum(v["kept_frames"] for v in kinds.values()) == metrics["kept_frames"]
    assert sum(v["kept_clips"] for v in kinds.values()) == metrics["kept_clips"]
    joined = frames_with_truth(first_run)
    normal = json.loads((first_run / "raw" / "demo_world.json").read_text())["counts"]["clip_kinds"]
    kept = joined[joined.selected & joined.clip_id.map(normal).eq("normal")]
    assert by_kind["normal"]["kept_frames"] == len(kept)
    if len(kept):
        assert by_kind["normal"]["kept_frame_precision"] == round(float(kept.good.mean()), 4)
    assert metrics["mismatched_kept_share"] == by_kind["mismatched"]["kept_share"]
    per_category = metrics["recall_per_category"]  # each good clip counted once, under its object's category
    assert sum(c["good_clips"] for c in per_category.values()) == metrics["good_clips"]
    kept_good = sum(c["kept_clips"] for c in per_category.values())
    assert kept_good == round(metrics["good_clip_recall"] * metrics["good_clips"])
    good_clip_names = {CATEGORIES[int(c)].name for c in joined[joined.good].groupby("clip_id").category.first()}
    assert set(per_category) == good_clip_names
    assert metrics["min_category_recall"] == min(c["recall"] for c in per_category.values())
    page = Path(write_report(first_run)).read_text()
    for heading in ("Status", "Scores", "Against the demo world's truth", "Best moments", "Worst moments",
                    "Keep rate per label"):
        assert f"<h2>{heading}" in page
    assert "Per clip kind" in page and "mismatched:lookalike" in page
    assert "recall per object category" in page and all(name in page for name in per_category)
    assert page.count("data:image/png;base64,") == 3 and "<script" not in page


def test_average_precision_on_known_rankings():
    assert average_precision(np.array([3, 2, 1]), np.array([True, True, False])) == 1.0
    assert average_precision(np.array([1, 2, 3]), np.array([True, False, False])) == pytest.approx(1 / 3)
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False])) == \
        pytest.approx((1 + 2 / 3) / 2)
