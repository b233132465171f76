"""Fetch benchmarks over 127.0.0.1 (loopback takes the network out: this is the fetcher's own cost per clip).

`python -m bench.fetch` (in `make bench`): the same generated corpus (640x360, 10 s, h264 + AAC, half of the
files with the index at the end) through whole runs, as url rows from Python's standard `http.server` (no range
support), as url rows from a server that seeks, and as local path rows: clips/s and CPU s per clip of each, and
url / path ratios. Writes `<out>/fetch_urls.json`.

`fetch_throughput` (called by `bench.curation`): the yt-dlp path (extraction, a section re-encoded from range
requests, ffprobe's check) in-process, and direct url rows through the pipeline with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from bench.corpus import lavfi_clip
from bench.tables import throughput_table
from curation.config import FetchConfig, load_config
from curation.fetch.clip import standardise, verify
from curation.fetch.youtube import clip_url, extract
from curation.pipeline import run
from manifests.io import write_json
from manifests.layout import RunLayout
from tests.media_server import MediaServer


def _in_process(server: MediaServer, names: list[str], out: Path, start_s: float, end_s: float) -> dict:
    """One clip after the other in this process, timing yt-dlp and ffmpeg + ffprobe apart."""
    raw = Path(RunLayout(str(out)).raw)
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


def make_corpus(folder: Path, n: int, seconds: float) -> list[Path]:
    """`n` clips of 640x360 h264 + 44.1 kHz AAC; odd ones with the index (moov) at the end, as ffmpeg writes by
    default, which a reader that cannot seek must read whole. Reused when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    return [lavfi_clip(folder / f"clip{i:03d}.mp4", f"testsrc2=size=640x360:rate=25:duration={seconds}",
                       f"sine=frequency={220 + 20 * i}:sample_rate=44100:duration={seconds}",
                       ("-preset", "veryfast", "-threads", "2", *(["-movflags", "+faststart"] if i % 2 == 0 else [])))
            for i in range(n)]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _run_rows(rows: pd.DataFrame, out: Path, workers: int, scorer: str) -> dict:
    """One `python -m curation run` over `rows`: wall, CPU of the run's whole process tree, and this process's
    CPU meanwhile (the loopback servers' threads)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows.to_csv(out / "clips.csv", index=False)
    args = [sys.executable, "-m", "curation", "run", "--dataset", "csv", "--meta", str(out / "clips.csv"),
            "--out", str(out / "run"), "--workers", str(workers), "--scorer", scorer, "--quiet",
            "--set", "select.keep_quantile=none"]  # every clip that arrives is written: written counts the fetch
    children, own, started = _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF), time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    wall = time.perf_counter() - started
    cpu, server_cpu = _cpu_s(resource.RUSAGE_CHILDREN) - children, _cpu_s(resource.RUSAGE_SELF) - own
    clips = pd.read_parquet(RunLayout(str(out / "run")).clips_manifest)
    n = len(clips)
    return {"clips": n, "written": int(clips["shard"].notna().sum()), "wall_s": round(wall, 2),
            "clips_per_s": round(n / wall, 3), "cpu_s": round(cpu, 1), "cpu_s_per_clip": round(cpu / n, 3),
            "server_cpu_s": round(server_cpu, 2),
            "error_kinds": clips["error_kind"].dropna().value_counts().to_dict()}


def compare_servers(out: Path, n: int = 48, seconds: float = 10.0, workers: int = 2, scorer: str = "synchrony") -> dict:
    """url rows (a server without ranges, one with) against the same files as path rows, in one bench run."""
    paths = make_corpus(out / "corpus", n, seconds)
    rows = pd.DataFrame({"start_s": 0.0, "end_s": seconds, "label": [f"tone{i % 4}" for i in range(n)]})
    plain = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out / "corpus")))
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        with MediaServer() as ranged:
            names = [ranged.add_file(p) for p in paths]
            port = plain.server_address[1]
            results = {
                "path_rows": _run_rows(rows.assign(path=[str(p) for p in paths]), out / "runs" / "path", workers,
                                       scorer),
                "url_rows_no_ranges": _run_rows(rows.assign(url=[f"http://127.0.0.1:{port}/{p.name}" for p in paths]),
                                                out / "runs" / "url_plain", workers, scorer),
                "url_rows_ranges": _run_rows(rows.assign(url=[ranged.url(f"ok/{name}") for name in names]),
                                             out / "runs" / "url_ranged", workers, scorer),
            }
    finally:
        plain.shutdown()
        plain.server_close()
    path = results["path_rows"]
    for key in ("url_rows_no_ranges", "url_rows_ranges"):
        results[f"{key} / path_rows"] = {"wall": round(results[key]["wall_s"] / path["wall_s"], 3),
                                         "cpu": round(results[key]["cpu_s"] / path["cpu_s"], 3)}
    return {"corpus": {"clips": n, "seconds": seconds, "size": "640x360", "codecs": "h264 + AAC 44.1 kHz",
                       "moov_at_end": n // 2},
            "workers": workers, "scorer": scorer, **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scorer", default="synchrony")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "load_average_before": os.getloadavg()[0]}
    results = {"machine": machine,
               **compare_servers(out / "fetch_urls", args.clips, args.seconds, args.workers, args.scorer)}
    machine["load_average_after"] = os.getloadavg()[0]  # other jobs on the machine make wall times noisy
    write_json(out / "fetch_urls.json", results)
    for key in ("path_rows", "url_rows_no_ranges", "url_rows_ranges"):
        r = results[key]
        print(f"{key:20s} {r['written']}/{r['clips']} written  {r['wall_s']:7.1f} s  {r['clips_per_s']:6.2f} clips/s  "
              f"{r['cpu_s_per_clip']:.2f} CPU s/clip  errors {r['error_kinds']}")
    for key in ("url_rows_no_ranges / path_rows", "url_rows_ranges / path_rows"):
        print(f"{key}: wall x{results[key]['wall']:.2f}, CPU x{results[key]['cpu']:.2f}")
    print(f"wrote {out / 'fetch_urls.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
