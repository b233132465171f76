"""Data-quality filters on a planted world: precision and recall per filter, and their cost per clip.

Demo-world clips (12 s, each with its own background; categories shared, so similar content abounds) plus
planted cases made with the ffmpeg CLI: re-encoded, resized, shifted, re-cut, gain-changed, combined and
late-cut copies (the near-duplicates), still images with sound, silent clips, short overlapping windows of one
ytid, and look-alikes that must not match (same footage with other sound, same still image with other sound,
different clips of one category). Runs the whole pipeline (synchrony scorer) and scores clips.parquet against
the plan; also times the duplicate index on synthetic fingerprints of 20k and 100k clips.
Writes `<out>/quality.json`. Run: `python -m bench.quality [--base 24] [--out work/bench]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from curation.config import FilterConfig, load_config
from curation.demo import generate_world
from curation.pipeline import RunPaths, run
from curation.quality import (
    AUDIO_SEARCH,
    BLOCK_S,
    HASH_STEP,
    MOTION_FLOOR,
    Fingerprint,
    candidate_pairs,
    envelope_correlations,
    fingerprint,
    footage_alignments,
    min_overlap_steps,
    moves_alike,
)
from curation.results import cache_path, read_outcome
from manifests.io import write_json

FPS = 10.0
ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
          "-threads", "1", "-y"]
# name -> (input options, output options) of a near-duplicate copy of a base clip's [0, 10) window
COPIES = {
    "reenc": ([], ["-t", "10", "-crf", "33"]),
    "resized": ([], ["-t", "10", "-vf", "scale=144:112", "-crf", "23"]),
    "shifted": (["-ss", "0.7"], ["-t", "10", "-crf", "26"]),
    "recut": (["-ss", "3.0"], ["-t", "9", "-crf", "23"]),
    "gain": ([], ["-t", "10", "-af", "volume=0.35", "-crf", "23"]),
    "combo": (["-ss", "0.4"], ["-t", "10", "-vf", "scale=192:150", "-af", "volume=2.0", "-crf", "30"]),
    "late": (["-ss", "5.0"], ["-t", "7", "-crf", "23"]),  # shares only 5 s with the original's [0, 10)
}


def _ffmpeg(args: list[str]) -> None:
    """Write args[-1] atomically (a killed build leaves no half file under the final name)."""
    tmp = Path(args[-1]).with_suffix(".tmp.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", *args[:-1], str(tmp)], check=True)
    tmp.replace(args[-1])


def _plan(raw: Path, kinds: dict[str, str], n_base: int) -> list[dict]:
    """Clip-list rows with their planted truth (`video`: whose footage; `still`/`silent`/`group`)."""
    base = [f"demo{i:05d}" for i in range(n_base)]
    rows = []

    def add(clip_id, path, start, end, video, audio, silent=False, ytid=""):
        rows.append({"clip_id": clip_id, "path": str(path), "start_s": start, "end_s": end, "ytid": ytid,
                     "video": video, "audio": audio, "still": video.startswith("frozen") or
                     kinds.get(video) == "sound_only", "silent": silent})

    dup_bases, still_bases, silent_bases, overlap_bases = base[:12], base[12:16], base[16:20], base[20:22]
    for b in base[:20] + base[22:]:
        add(b, raw / f"{b}.mp4", 0.0, 10.0, b, b)
    for i, b in enumerate(dup_bases):  # two copies each, the copy kinds in turn
        for name in (list(COPIES)[i % len(COPIES)], list(COPIES)[(i + 3) % len(COPIES)]):
            add(f"{b}_{name}", raw / f"{b}_{name}.mp4", 0.0, float(COPIES[name][1][1]), b, b)
    for i, b in enumerate(still_bases):  # a frozen frame of b, with the sound of two other clips (no duplicates)
        for other in (base[(i + 5) % 12], base[(i + 7) % 12]):
            add(f"still_{b}_{other}", raw / f"still_{b}_{other}.mp4", 0.0, 10.0, f"frozen_{b}", other)
    for i, b in enumerate(silent_bases):  # b's footage, muted (digital silence) or with -66 dBFS hiss
        add(f"{b}_mute", raw / f"{b}_mute.mp4", 0.0, 10.0, b, "silence" if i % 2 else "hiss", silent=True)
    for b, other in zip(base[22:24], base[:2], strict=True):  # b's footage dubbed with another clip's sound
        add(f"{b}_dub", raw / f"{b}_dub.mp4", 0.0, 10.0, b, other)
    for b, ytid in zip(overlap_bases, ("OVERLAPaaaa", "OVERLAPbbbb"), strict=True):  # windows of one ytid
        for start, end in ((0.0, 4.5), (3.5, 8.0), (8.0, 12.0)):  # 1-s overlap, then adjacent (no overlap)
            add(None, raw / f"{b}.mp4", start, end, f"{b}@{start}", f"{b}@{start}", ytid=ytid)
    return rows


def _make_media(raw: Path, rows: list[dict]) -> None:
    jobs = []
    for row in rows:
        cid, out = row["clip_id"] or "", row["path"]
        base = raw / f"{row['video'].split('_')[-1].split('@')[0]}.mp4"
        if any(cid.endswith(f"_{name}") for name in COPIES):
            pre, post = COPIES[cid.rsplit("_", 1)[1]]
            jobs.append([*pre, "-i", str(base), *post, *ENCODE, out])
        elif cid.startswith("still_"):
            jobs.append(["-ss", "4", "-i", str(base), "-i", str(raw / f"{row['audio']}.mp4"), "-map", "0:v:0",
                         "-map", "1:a:0", "-vf", "trim=end_frame=1,tpad=stop_mode=clone:stop_duration=12", "-t", "10",
                         "-crf", "23", *ENCODE, out])
        elif cid.endswith("_dub"):
            jobs.append(["-i", str(base), "-i", str(raw / f"{row['audio']}.mp4"), "-map", "0:v:0", "-map", "1:a:0",
                         "-t", "10", "-crf", "23", *ENCODE, out])
        elif cid.endswith("_mute"):
            src = "anullsrc=r=44100:cl=mono" if row["audio"] == "silence" else "anoisesrc=r=44100:a=0.0005"
            jobs.append(["-i", str(base), "-f", "lavfi", "-i", src, "-map", "0:v:0", "-map", "1:a:0", "-t", "10",
                         "-crf", "23", *ENCODE, out])
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(_ffmpeg, [job for job in jobs if not Path(job[-1]).exists()]))


def build_world(folder: Path, n_base: int = 24) -> tuple[Path, list[dict]]:
    """The planted world's clip list (csv) and its rows with truth."""
    world = generate_world(folder, n_clips=n_base, seed=7, duration_s=12.0)
    kinds = json.loads(world.world_json.read_text())["counts"]["clip_kinds"]
    rows = _plan(world.raw_dir, kinds, n_base)
    _make_media(world.raw_dir, rows)
    clip_list = folder / "planted.csv"
    with open(clip_list, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "ytid", "path", "start_s", "end_s", "label"])
        for row in rows:
            writer.writerow([row["clip_id"] or "", row["ytid"], row["path"], row["start_s"], row["end_s"],
                             row["video"].split("@")[0][-9:]])
    return clip_list, rows


def _pr(truth: set, predicted: set) -> dict:
    hit = len(truth & predicted)
    return {"truth": len(truth), "predicted": len(predicted), "correct": hit,
            "precision": round(hit / len(predicted), 4) if predicted else 1.0,
            "recall": round(hit / len(truth), 4) if truth else 1.0}


def _plan_of(clips: pd.DataFrame, rows: list[dict]) -> dict[str, dict]:
    by_key = {(r["path"], r["start_s"]): r for r in rows}
    return {c.clip_id: by_key[(c.path, c.start_s)] for c in clips.itertuples()}


def score_filters(clips: pd.DataFrame, rows: list[dict]) -> dict:
    """Precision / recall per filter: per clip for still and silent, per clip pair for duplicates and overlaps."""
    plan = _plan_of(clips, rows)
    measured = clips[clips["still"].notna()]
    footage = {cid: (plan[cid]["video"], plan[cid]["audio"]) for cid in measured.clip_id}
    dup_truth = {(a, b) for a, b in combinations(sorted(footage), 2) if footage[a] == footage[b]}
    groups = measured.dropna(subset=["dup_group"]).groupby("dup_group")["clip_id"].apply(sorted)
    dup_pred = {pair for members in groups for pair in combinations(members, 2)}
    windows = {cid: (r["ytid"], r["start_s"], r["end_s"]) for cid, r in plan.items() if r["ytid"]}
    overlap_truth = {(a, b) for a, b in combinations(sorted(windows), 2) if windows[a][0] == windows[b][0]
                     and max(windows[a][1], windows[b][1]) < min(windows[a][2], windows[b][2])}
    overlap_pred = {tuple(sorted((c.clip_id, c.overlap_of))) for c in clips.itertuples()
                    if isinstance(c.overlap_of, str)}
    return {"still": _pr({c for c in measured.clip_id if plan[c]["still"]}, set(measured.clip_id[measured["still"]])),
            "silent": _pr({c for c in measured.clip_id if plan[c]["silent"]},
                          set(measured.clip_id[measured["silent"].astype(bool)])),
            "duplicate_pairs": _pr(dup_truth, dup_pred), "overlap_pairs": _pr(overlap_truth, overlap_pred),
            "clips_measured": len(measured)}


def _footage_corr(a: Fingerprint, b: Fingerprint, cfg: FilterConfig) -> tuple[bool, float | None]:
    """Whether the footage matches at some alignment, and the best envelope correlation at those alignments."""
    min_overlap = min_overlap_steps(len(a.hashes), len(b.hashes), HASH_STEP / FPS, cfg)
    shifts = footage_alignments(a, b, cfg, min_overlap) if min(len(a.hashes), len(b.hashes)) >= min_overlap else []
    corr = envelope_correlations(a.env, b.env, min_overlap_steps(len(a.env), len(b.env), BLOCK_S, cfg))
    near = [corr[2 * s + d] for s in shifts for d in range(-AUDIO_SEARCH, AUDIO_SEARCH + 1) if 2 * s + d in corr]
    return bool(shifts), max(near) if near else None


def margins(clips: pd.DataFrame, rows: list[dict], signals: dict[str, dict]) -> dict:
    """How far the planted cases sit from the default thresholds: the closest true and false cases."""
    cfg, plan = FilterConfig(), _plan_of(clips, rows)
    motion = {c: s["motion"] for c, s in signals.items()}
    loud = {c: s["loud_db"] for c, s in signals.items()}
    fps = {c: fingerprint(s) for c, s in signals.items()}
    true_pairs, false_pairs = [], []
    for a, b in combinations(sorted(fps), 2):
        same = (plan[a]["video"], plan[a]["audio"]) == (plan[b]["video"], plan[b]["audio"])
        matched, corr = _footage_corr(fps[a], fps[b], cfg)
        low, high = sorted((fps[a].motion + MOTION_FLOOR, fps[b].motion + MOTION_FLOOR))
        (true_pairs if same else false_pairs).append((matched and moves_alike(fps[a], fps[b]), corr, high / low))
    false_corr = [c for m, c, _ in false_pairs if m and c is not None]
    return {"still_motion_max": max(v for c, v in motion.items() if plan[c]["still"]),
            "other_motion_min": min(v for c, v in motion.items() if not plan[c]["still"]),
            "silent_db_max": max(v for c, v in loud.items() if plan[c]["silent"]),
            "other_db_min": min(v for c, v in loud.items() if not plan[c]["silent"]),
            "dup_true_pairs_footage_matched": f"{sum(m for m, _, _ in true_pairs)}/{len(true_pairs)}",
            "dup_true_pairs_corr_min": round(min(c for _, c, _ in true_pairs if c is not None), 3),
            "dup_true_pairs_motion_ratio_max": round(max(r for _, _, r in true_pairs), 2),
            "dup_false_pairs_footage_matched": f"{sum(m for m, _, _ in false_pairs)}/{len(false_pairs)}",
            "dup_false_pairs_corr_max": round(max(false_corr), 3) if false_corr else None}


def cost(paths: RunPaths, clip_ids: list[str]) -> dict:
    """The filters' time per clip (measured inside each clip's task) against the clip's whole task time."""
    outcomes = [read_outcome(cache_path(paths.cache, cid)) for cid in clip_ids]
    measured = [o for o in outcomes if o.quality]
    filter_s = sum(o.quality["seconds"] for o in measured) / len(measured)
    clip_s = sum(o.seconds for o in measured) / len(measured)
    return {"filter_ms_per_clip": round(1000 * filter_s, 2), "pipeline_ms_per_clip": round(1000 * clip_s, 1),
            "ratio": round(filter_s / clip_s, 4)}


def index_scale(n_clips: int, seed: int = 0) -> dict:
    """The duplicate index over `n_clips` synthetic fingerprints (50 frame hashes drifting a few bits a frame,
    a scene cut every ~3 s): candidate pairs found, time and keys, i.e. what VGGSound's 200k clips would cost."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 2**63, (n_clips, 1), dtype=np.int64).astype(np.uint64)
    flips = np.left_shift(np.uint64(1), rng.integers(0, 64, (n_clips, 50)).astype(np.uint64))
    cuts = rng.random((n_clips, 50)) < 1 / 15
    flips[cuts] = rng.integers(0, 2**63, int(cuts.sum()), dtype=np.int64).astype(np.uint64)
    hashes = np.bitwise_xor.accumulate(np.concatenate([start, flips[:, 1:]], axis=1), axis=1)
    fps = {f"c{i:07d}": Fingerprint(hashes[i], np.zeros(50, bool), np.zeros(100, np.float32),
                                    np.zeros(16, np.float32), 10.0) for i in range(n_clips)}
    started = time.perf_counter()
    pairs = candidate_pairs(fps)
    return {"clips": n_clips, "candidate_pairs": len(pairs), "seconds": round(time.perf_counter() - started, 2),
            "all_pairs": n_clips * (n_clips - 1) // 2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=24, help="demo clips the world starts from (>= 24)")
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--scorer", default="synchrony")
    parser.add_argument("--index-sizes", type=int, nargs="*", default=[20000, 100000],
                        help="synthetic clip counts for the duplicate index's scaling")
    args = parser.parse_args(argv)
    out = Path(args.out)
    world = out / "quality_world"
    clip_list, rows = build_world(world, args.base)
    run_dir = out / "quality_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(None, {"dataset": "csv", "meta": str(clip_list), "out": str(run_dir), "dask.workers": 2,
                             "score.scorer": args.scorer})
    started = time.perf_counter()
    summary = run(cfg, progress=False)
    clips = pd.read_parquet(run_dir / "manifests" / "clips.parquet")
    signals = {cid: read_outcome(cache_path(summary.paths.cache, cid)).quality for cid in clips["clip_id"]}
    result = {"filters": score_filters(clips, rows), "margins": margins(clips, rows, signals),
              "cost": cost(summary.paths, clips["clip_id"].tolist()),
              "index": [index_scale(n) for n in args.index_sizes],
              "scorer": args.scorer, "clips": summary.n_clips, "counts": summary.counts,
              "rejected_by_filter": summary.filtered, "wall_s": round(time.perf_counter() - started, 1),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; 2 cores shared with other jobs"}
    write_json(out / "quality.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
