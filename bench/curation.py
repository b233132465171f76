"""Curation benchmark: the pipeline with and without scoring, 1 vs 2 Dask workers, against the ffmpeg floor;
and fetch throughput over loopback (`bench.fetch`).

All runs use the same demo clips. Writes `<out>/curation.json` and prints the README table.
Run: `make bench` (or `python -m bench.curation --clips 48`).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.fetch import fetch_throughput
from bench.fetch import table as fetch_table
from bench.tables import throughput_table
from curation.config import load_config
from curation.demo import generate_world
from curation.pipeline import run
from manifests.io import write_json


def _pipeline(clip_list: Path, out: Path, workers: int, scorer: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(None, {"dataset": "csv", "meta": str(clip_list), "out": str(out),
                             "dask.workers": workers, "score.scorer": scorer})
    started = time.perf_counter()
    summary = run(cfg, progress=False)
    wall = time.perf_counter() - started
    return {"workers": workers, "scorer": scorer, "clips": summary.n_clips, "wall_s": round(wall, 2),
            "clips_per_s": round(summary.n_clips / wall, 3),
            "clips_per_s_processing": round(summary.clips_per_s, 3), "counts": summary.counts}


def _ffmpeg_floor(paths: list[Path], fps: float, short_side: int, parallel: int) -> dict:
    """One ffmpeg per clip decoding frames (same rate and size) and 16 kHz mono audio to /dev/null."""
    def decode(path: Path) -> None:
        args = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path),
                "-map", "0:v:0", "-vf", f"fps={fps},scale=-2:{short_side}", "-pix_fmt", "rgb24", "-f", "rawvideo",
                "-y", "/dev/null", "-map", "0:a:0", "-ar", "16000", "-ac", "1", "-f", "s16le", "-y", "/dev/null"]
        subprocess.run(args, check=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(decode, paths))
    wall = time.perf_counter() - started
    return {"parallel": parallel, "clips": len(paths), "wall_s": round(wall, 2),
            "clips_per_s": round(len(paths) / wall, 3)}


def _audio_readers(paths: list[Path]) -> dict:
    """ms per clip to read a whole clip's audio as 16 kHz mono float, per reader (best of 3)."""
    import decord
    from torchcodec.decoders import AudioDecoder

    def ffmpeg_pipe(path: Path) -> np.ndarray:
        args = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ar", "16000", "-ac", "1",
                "-f", "f32le", "pipe:1"]
        return np.frombuffer(subprocess.run(args, check=True, capture_output=True).stdout, dtype=np.float32)

    readers = {
        "torchcodec": lambda p: AudioDecoder(str(p), sample_rate=16000, num_channels=1).get_all_samples().data,
        "decord": lambda p: decord.AudioReader(str(p), sample_rate=16000, mono=True)[:].asnumpy(),
        "ffmpeg_pipe": ffmpeg_pipe,
    }
    result = {}
    for name, read in readers.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for path in paths:
                read(path)
            best = min(best, time.perf_counter() - started)
        result[name] = round(1000 * best / len(paths), 2)
    return result


def _table(results: dict) -> str:
    rows = [("pipeline, no scoring, 2 workers", results["pipeline_no_score_2w"]),
            ("pipeline, synchrony scoring, 2 workers", results["pipeline_score_2w"]),
            ("pipeline, synchrony scoring, 1 worker", results["pipeline_score_1w"]),
            ("ffmpeg CLI decode floor, 2 in parallel", results["ffmpeg_floor_2p"])]
    lines = throughput_table("run", "clips/s, whole run incl. cluster start", rows)
    ratios = results["ratios"]
    lines.append("")
    lines.append(" ; ".join(f"{k} = {v:.2f}" for k, v in ratios.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--fetch-clips", type=int, default=24, help="clips fetched over loopback per fetch run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    world = generate_world(out / "world", n_clips=args.clips, seed=1, duration_s=args.duration)
    clip_list = world.clips_path
    paths = sorted(world.raw_dir.glob("demo*.mp4"))
    defaults = load_config()
    results = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "clips": len(paths), "clip_seconds": args.duration,
        "frame_size_short_side": defaults.decode.short_side, "fps": defaults.decode.fps,
        "pipeline_no_score_2w": _pipeline(clip_list, out / "runs" / "no_score_2w", 2, "none"),
        "pipeline_score_2w": _pipeline(clip_list, out / "runs" / "score_2w", 2, "synchrony"),
        "pipeline_score_1w": _pipeline(clip_list, out / "runs" / "score_1w", 1, "synchrony"),
        "ffmpeg_floor_2p": _ffmpeg_floor(paths, defaults.decode.fps, defaults.decode.short_side, 2),
        "audio_reader_ms_per_clip": _audio_readers(paths[:16]),
        "fetch": fetch_throughput(paths[:args.fetch_clips], out / "fetch", 1.0, min(7.0, args.duration)),
    }
    floor = results["ffmpeg_floor_2p"]["clips_per_s"]
    results["ratios"] = {
        "scoring_cost (score / no score)": results["pipeline_score_2w"]["clips_per_s_processing"]
        / results["pipeline_no_score_2w"]["clips_per_s_processing"],
        "vs_ffmpeg_floor (score 2w / floor)": results["pipeline_score_2w"]["clips_per_s_processing"] / floor,
        "worker_scaling (2w / 1w)": results["pipeline_score_2w"]["clips_per_s_processing"]
        / results["pipeline_score_1w"]["clips_per_s_processing"],
    }
    write_json(out / "curation.json", results)
    print(_table(results))
    print(f"audio readers, ms per {args.duration:g}-s clip: {results['audio_reader_ms_per_clip']}")
    print(fetch_table(results["fetch"]))
    print(f"wrote {out / 'curation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
