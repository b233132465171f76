"""Truth-based measurement of a curation run on the demo world: how well scores find good pairs.

A frame is a good pair when its object is visible, sounding and matched (`raw/truth.parquet`); a clip is a
good clip when it has at least one good-pair frame. Per clip kind (`raw/demo_world.json`, with the mismatch
variants as `mismatched:<variant>`): the share of clips kept and the precision of the frames written from them;
per category of object: good-clip recall; and the world's preset (`preset`, docs/demo_worlds.md), as the same
scores mean little across presets.
`python -m curation evaluate --out OUT` (a local folder or an object store: read and written through
`curation.storage`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from curation import storage
from curation.demo import CATEGORIES
from curation.errors import UsageError
from curation.provenance import read_run_record
from manifests.io import json_bytes
from manifests.layout import RunLayout


def read_table(location: str) -> pd.DataFrame:
    """A parquet file of a run, local or on an object store (there read whole in one request)."""
    return pd.read_parquet(storage.load_source(location))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve, ranking by `scores` (ties in input order)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(positive, dtype=bool)[order]
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def frames_with_truth(out: str | os.PathLike) -> pd.DataFrame:
    """frames.parquet joined with the demo truth on (clip_id, t), with a `good` column."""
    layout = RunLayout(storage.resolve(out))
    frames = read_table(layout.frames_manifest)
    truth = read_table(layout.truth)
    frames["t_ms"] = np.round(frames["t"] * 1000).astype(np.int64)
    truth["t_ms"] = np.round(truth["t"] * 1000).astype(np.int64)
    joined = frames.merge(truth.drop(columns="t"), on=["clip_id", "t_ms"], how="inner", validate="one_to_one")
    joined["good"] = joined["visible"] & joined["sounding"] & joined["matched"]
    return joined


def truth_metrics(out: str | os.PathLike) -> dict:
    """AP of each score for good pairs, and precision/recall of what the run kept."""
    layout = RunLayout(storage.resolve(out))
    joined = frames_with_truth(layout.out)
    clips = read_table(layout.clips_manifest)
    good = joined["good"].to_numpy()
    metrics = {"frames": len(joined), "good_pair_rate": round(float(good.mean()), 4),
               "ap_score": round(average_precision(joined["score"].to_numpy(), good), 4),
               "ap_score_moment": round(average_precision(joined["score_moment"].to_numpy(), good), 4)}
    if joined["score_contrastive"].notna().all():
        metrics["ap_score_contrastive"] = round(average_precision(joined["score_contrastive"].to_numpy(), good), 4)
    kept = joined[joined["selected"]]
    good_clips = set(joined.loc[joined["good"], "clip_id"])
    ok_clips = set(clips.loc[clips["status"] == "ok", "clip_id"])
    metrics.update(
        kept_frames=len(kept),
        kept_frame_precision=round(float(kept["good"].mean()), 4) if len(kept) else None,
        good_clips=len(good_clips), kept_clips=len(ok_clips),
        good_clip_recall=round(len(good_clips & ok_clips) / len(good_clips), 4) if good_clips else None,
        kept_clip_precision=round(len(good_clips & ok_clips) / len(ok_clips), 4) if ok_clips else None,
    )
    if good_clips:
        metrics["recall_per_category"] = recall_per_category(joined, ok_clips)
        metrics["min_category_recall"] = min(c["recall"] for c in metrics["recall_per_category"].values())
    world_json = layout.demo_world
    if storage.exists(world_json):
        world = json.loads(storage.read_bytes(world_json))
        metrics["preset"] = world.get("preset", "easy")  # worlds made before presets existed are easy worlds
        by_kind = per_kind(joined, ok_clips, world["counts"])
        metrics["per_kind"] = by_kind
        if "mismatched" in by_kind:
            metrics["mismatched_kept_share"] = by_kind["mismatched"]["kept_share"]
    return metrics


def recall_per_category(joined: pd.DataFrame, ok_clips: set[str]) -> dict[str, dict]:
    """Good-clip recall per category of the object in the clip's good-pair frames: one threshold for all clips
    can cut a whole category whose matches the model scores lower than the others'."""
    category = joined[joined["good"]].groupby("clip_id")["category"].first()
    result = {}
    for index, ids in category.groupby(category).groups.items():
        kept = len(set(ids) & ok_clips)
        result[CATEGORIES[int(index)].name] = {"good_clips": len(ids), "kept_clips": kept,
                                               "recall": round(kept / len(ids), 4)}
    return result


def clip_kind_names(counts: dict) -> dict[str, list[str]]:
    """clip_id -> the groups it is counted in: its kind, and `mismatched:<variant>` for a mismatch variant."""
    variants = counts.get("clip_variants", {})
    return {cid: [kind] + ([f"{kind}:{variants[cid]}"] if cid in variants else [])
            for cid, kind in counts["clip_kinds"].items()}


def per_kind(joined: pd.DataFrame, ok_clips: set[str], counts: dict) -> dict[str, dict]:
    """Per clip kind (and mismatch variant) of the demo world: clips, how many were kept and their share, the
    frames written from them and the share of those that are good pairs (None when none was written)."""
    groups: dict[str, list[str]] = {}
    for cid, names in clip_kind_names(counts).items():
        for name in names:
            groups.setdefault(name, []).append(cid)
    kept = joined[joined["selected"]]
    result = {}
    for name in sorted(groups):
        ids = set(groups[name])
        frames = kept[kept["clip_id"].isin(ids)]
        result[name] = {"clips": len(ids), "kept_clips": len(ids & ok_clips),
                        "kept_share": round(len(ids & ok_clips) / len(ids), 4), "kept_frames": len(frames),
                        "kept_frame_precision": round(float(frames["good"].mean()), 4) if len(frames) else None}
    return result


def write_truth_metrics(out: str | os.PathLike) -> tuple[str, dict]:
    """Write `OUT/manifests/truth_metrics.json` whole (temp file + rename, or one upload); returns where, and the
    metrics."""
    layout = RunLayout(storage.resolve(out))
    read_run_record(layout.out)  # a finished run, or one line saying so
    if not storage.exists(layout.truth):
        raise UsageError(f"{layout.out} has no raw/truth.parquet: evaluate measures runs on the demo world only")
    metrics = truth_metrics(layout.out)
    storage.write_bytes(layout.truth_metrics, json_bytes(metrics))
    return layout.truth_metrics, metrics
