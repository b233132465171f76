"""Scale benchmark: does a run's memory stay flat as the clip list grows, and does shard writing use the workers?

A tiny-clip world (16 distinct 1-s 64x64 h264 + AAC clips, listed N times under N clip ids) is curated at each
size with the synchrony scorer on a 2-worker LocalCluster. Each size runs in a fresh process, so its peak RSS
is its own: the client's (`ru_maxrss` of the process) and the largest worker's (`RUSAGE_CHILDREN`: the
LocalCluster's worker processes are the client's children), with CPU seconds per clip (client, workers, and the
clip tasks' own timers on a sample). Then the write wave alone (shards + frames.parquet from the largest run's
per-clip results) is timed on 1 and on 2 workers, with the workers' CPU seconds during it (`workers_busy`: CPU
s / wall s, which says whether the workers were starved of cores).

Writes `<out>/scale.json`. Run: `make bench-scale` (or `python -m bench.scale --sizes 1000 5000 20000`).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.corpus import lavfi_clip
from manifests.io import write_json

SOURCES = 16
LABELS = 8
# 1-s clips: a 0.5-s audio window fits; 16 clips a task keeps Dask's per-task cost small against ~10 ms clips
SETTINGS = {"score.scorer": "synchrony", "decode.window_s": 0.5, "decode.short_side": 64, "dask.workers": 2,
            "dask.clips_per_task": 16, "select.top_k": 2, "select.min_gap_s": 0.3}


def _make_sources(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [lavfi_clip(folder / f"src{i:02d}.mp4", f"testsrc2=size=64x64:rate=25:duration=1,hue=h={22 * i}",
                       f"sine=frequency={200 + 60 * i}:sample_rate=16000:duration=1", ("-shortest",))
            for i in range(SOURCES)]


def _clip_list(folder: Path, sources: list[Path], n: int) -> Path:
    path = folder / f"clips_{n}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "path", "start_s", "end_s", "label", "split"])
        for i in range(n):
            writer.writerow([f"scale{i:06d}", sources[i % SOURCES], 0.0, 1.0, f"label{i % LABELS}",
                             "test" if i % 10 == 0 else "train"])
    return path


def _peak_rss_mib() -> dict:
    to_mib = 1 / 1024  # Linux reports kilobytes
    return {"client_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mib, 1),
            "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mib, 1)}


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _stage_costs(cache: str, clip_ids: list[str]) -> dict:
    """Per-clip means over a sample of the run's clips (their cache files): the clip task's time on its worker,
    the scorer's share and the data-quality signals' share (single-threaded workers: ~CPU s when not starved)."""
    from curation.clip_cache import cache_path, read_summary

    clip_summaries = [read_summary(cache_path(cache, cid)) for cid in clip_ids]
    scored = [o for o in clip_summaries if o.scored]
    return {"sampled_clips": len(scored),
            "clip_task_s": round(sum(o.seconds for o in scored) / len(scored), 5),
            "score_s": round(sum(o.score_s for o in scored) / len(scored), 5),
            "quality_s": round(sum(o.quality["seconds"] for o in scored if o.quality) / len(scored), 5)}


def _one_run(clip_list: Path, out: Path) -> dict:
    """Child process: one curation run of `clip_list`."""
    from curation.config import load_config
    from curation.pipeline import run

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(None, {"dataset": "csv", "meta": str(clip_list), "out": str(out), **SETTINGS})
    started, cpu_before = time.perf_counter(), _cpu_s()
    summary = run(cfg, progress=False)
    wall = time.perf_counter() - started
    peaks = _peak_rss_mib()  # before the per-clip costs below read any cache file
    client_cpu, worker_cpu = _cpu_s() - cpu_before, _cpu_s(resource.RUSAGE_CHILDREN)
    timings = json.loads(Path(summary.paths.layout.run_record).read_text())["timings_s"]
    n = summary.n_clips
    sample = [f"scale{i:06d}" for i in range(0, n, max(1, n // 500))]
    return {"clips": n, "wall_s": round(wall, 2), "clips_per_s": round(n / wall, 2),
            "clips_per_s_processing": round(summary.clips_per_s, 2), "counts": summary.counts,
            "timings_s": timings, **peaks, "load_average_after": os.getloadavg(),
            "cpu_s_per_clip": {"client": round(client_cpu / n, 5), "workers": round(worker_cpu / n, 5),
                               **_stage_costs(summary.paths.cache, sample)}}


def _write_wave(clip_list: Path, out: Path, workers: int) -> dict:
    """Child process: the write wave alone (shards + frames.parquet) from a finished run's per-clip results."""
    from curation.clip_cache import cache_path, read_summary
    from curation.config import load_config
    from curation.outputs.assemble import RunPaths, finish
    from curation.pipeline import _client, _dask_mapper, load_clip_list, run_jobs
    from curation.summary_table import SummaryTable

    cfg = load_config(None, {"dataset": "csv", "meta": str(clip_list), "out": str(out), **SETTINGS,
                             "dask.workers": workers})
    paths = RunPaths.for_config(cfg)
    clip_list_table = load_clip_list(cfg, out)
    clip_summaries = SummaryTable(read_summary(cache_path(paths.cache, j.clip_id)) for j in run_jobs(clip_list_table))
    with _client(cfg) as client:
        client.run(importlib.import_module, "curation.outputs.assemble")  # as in a run, the workers have imported it
        workers_before = sum(client.run(_cpu_s).values())
        started, client_before = time.perf_counter(), _cpu_s()
        finish(cfg, paths, clip_list_table, clip_summaries, {}, _dask_mapper(client, cfg))
        wall, client_cpu = time.perf_counter() - started, _cpu_s() - client_before
        worker_cpu = sum(client.run(_cpu_s).values()) - workers_before
    record = json.loads(Path(paths.layout.run_record).read_text())
    timings, n_kept = record["timings_s"], record["counts"]["ok"]
    return {"workers": workers, "finish_s": round(wall, 2), "select_s": timings["select_s"],
            "write_shards_s": timings["write_shards_s"], "manifests_s": timings["manifests_s"],
            "kept_clips": n_kept, "client_cpu_s": round(client_cpu, 2), "workers_cpu_s": round(worker_cpu, 2),
            # how many workers were busy on average while finish ran (= workers when nothing waits)
            "workers_busy": round(worker_cpu / wall, 2), "load_average_after": os.getloadavg()}


def _child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.scale", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.scale {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--one", nargs=2, metavar=("CLIP_LIST", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--write-wave", nargs=3, metavar=("CLIP_LIST", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_one_run(Path(args.one[0]), Path(args.one[1]))))
        return 0
    if args.write_wave:
        print(json.dumps(_write_wave(Path(args.write_wave[0]), Path(args.write_wave[1]), int(args.write_wave[2]))))
        return 0
    out = Path(args.out).resolve()
    world = out / "scale"
    sources = _make_sources(world / "sources")
    results: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                 "load_average_at_start": os.getloadavg()},
                     "settings": SETTINGS, "runs": {}}
    for n in args.sizes:
        results["runs"][str(n)] = _child("--one", str(_clip_list(world, sources, n)), str(world / f"run_{n}"))
        print(f"{n} clips: {results['runs'][str(n)]}", flush=True)
    largest = max(args.sizes)
    wave_args = (str(world / f"clips_{largest}.csv"), str(world / f"run_{largest}"))
    results["write_wave"] = {str(w): _child("--write-wave", *wave_args, str(w)) for w in (1, 2)}
    runs = [results["runs"][str(n)] for n in sorted(args.sizes)]
    wave = results["write_wave"]
    results["ratios"] = {
        f"{who}_peak_rss largest / smallest": round(runs[-1][f"{who}_peak_rss_mib"] / runs[0][f"{who}_peak_rss_mib"], 3)
        for who in ("client", "worker")}
    for part in ("write_shards_s", "manifests_s", "finish_s"):
        results["ratios"][f"write_wave {part} 2 workers / 1 (speed-up)"] = round(wave["1"][part] / wave["2"][part], 3)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(out / "scale.json", results)
    print(json.dumps(results["ratios"], indent=2))
    print(f"wrote {out / 'scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
