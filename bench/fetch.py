"""Fetch benchmark: url clips through yt-dlp + ffmpeg from a media server on 127.0.0.1, 1 vs 2 Dask workers.

Loopback takes the network out, so this is the fetcher's own cost per clip: yt-dlp's extraction, one ffmpeg
run reading the section over HTTP range requests and re-encoding it, ffprobe's check. The pipeline rows add
decoding (no scorer). Called by `bench.curation` (`make bench`), which stores the result under "fetch".
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import pandas as pd

from bench.tables import throughput_table
from curation.config import FetchConfig, load_config
from curation.fetch import standardise, verify
from curation.pipeline import run
from curation.youtube import clip_url, extract
from tests.media_server import MediaServer


def _in_process(server: MediaServer, names: list[str], out: Path, start_s: float, end_s: float) -> dict:
    """One clip after the other in this process, timing yt-dlp and ffmpeg + ffprobe apart."""
    raw = out / "raw"
    shutil.rmtree(out, ignore_errors=True)
    raw.mkdir(parents=True)
    cfg, extract_s, cut_s = FetchConfig(), [], []
    started = time.perf_counter()
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        source = extract(clip_url(None, server.url(f"ok/{name}")), cfg, out / "cache")
        t1 = time.perf_counter()
        reported = standardise(list(source.inputs), raw / f"c{i}.mp4", start_s, end_s - start_s, cfg)
        verify(raw / f"c{i}.mp4", start_s, end_s, source.duration_s or reported)
        extract_s.append(t1 - t0)
        cut_s.append(time.perf_counter() - t1)
    wall = time.perf_counter() - started
    return {"clips": len(names), "wall_s": round(wall, 2), "clips_per_s": round(len(names) / wall, 3),
            "median_ms_yt_dlp_extract": round(1000 * statistics.median(extract_s), 1),
            "median_ms_ffmpeg_section_and_ffprobe": round(1000 * statistics.median(cut_s), 1)}


def _pipeline(clip_list: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # nothing fetched yet: every clip goes over the loopback
    cfg = load_config(None, {"dataset": "csv", "meta": str(clip_list), "out": str(out), "dask.workers": workers,
                             "score.scorer": "none", "select.keep_quantile": None})
    started = time.perf_counter()
    summary = run(cfg, progress=False)
    wall = time.perf_counter() - started
    return {"workers": workers, "clips": summary.n_clips, "wall_s": round(wall, 2),
            "clips_per_s": round(summary.n_clips / wall, 3), "clips_per_s_processing": round(summary.clips_per_s, 3),
            "counts": summary.counts}


def fetch_throughput(paths: list[Path], out: Path, start_s: float = 1.0, end_s: float = 7.0) -> dict:
    """Clips/s fetching `paths` ([start, end) of each) over loopback: in-process, pipeline 1 and 2 workers."""
    with MediaServer() as server:
        names = [server.add_file(p) for p in paths]
        clip_list = out / "fetch_clips.csv"
        clip_list.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"url": server.url(f"ok/{n}"), "start_s": start_s, "end_s": end_s, "label": "x"}
                      for n in names]).to_csv(clip_list, index=False)
        results = {"clip_seconds": end_s - start_s, "in_process": _in_process(server, names, out / "inproc",
                                                                              start_s, end_s),
                   "pipeline_1w": _pipeline(clip_list, out / "runs" / "fetch_1w", 1),
                   "pipeline_2w": _pipeline(clip_list, out / "runs" / "fetch_2w", 2)}
    results["worker_scaling (2w / 1w)"] = round(results["pipeline_2w"]["clips_per_s_processing"]
                                                / results["pipeline_1w"]["clips_per_s_processing"], 3)
    return results


def table(results: dict) -> str:
    """The README table of the fetch benchmark."""
    rows = [("fetch in-process, one after the other", results["in_process"]),
            ("pipeline (fetch + decode), 1 worker", results["pipeline_1w"]),
            ("pipeline (fetch + decode), 2 workers", results["pipeline_2w"])]
    lines = throughput_table("fetch over loopback", "clips/s, whole run", rows)
    inproc = results["in_process"]
    lines.append(f"\nper clip: yt-dlp extraction {inproc['median_ms_yt_dlp_extract']} ms, ffmpeg section + ffprobe "
                 f"{inproc['median_ms_ffmpeg_section_and_ffprobe']} ms (medians); "
                 f"worker_scaling (2w / 1w) = {results['worker_scaling (2w / 1w)']:.2f}")
    return "\n".join(lines)
