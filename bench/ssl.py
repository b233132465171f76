"""Localisation-model benchmark: scoring throughput inside the pipeline vs the model's isolated forward pass.

Trains (or reuses) the default CPU-sized model on a demo world, curates it with that model, and times the
same frames through the bare model. Writes `<out>/ssl.json`. Run: `make bench` or `python -m bench.ssl`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from curation.config import load_config
from curation.decode import decode_clip
from curation.demo import generate_world
from curation.pipeline import load_clip_list, run, run_jobs
from curation.score import LearnedScorer
from curation.ssl_train import ensure_model
from manifests.io import write_json


def _isolated_forward(scorer: LearnedScorer, clips: list, threads: int, batch: int) -> float:
    """frames/s of the bare model (image maps + audio vectors + localisation) on pre-decoded inputs."""
    from curation.ssl_train import audio_windows

    torch.set_num_threads(threads)
    model, front, cfg = scorer.model, scorer.front, scorer.model.cfg
    images = torch.cat([scorer._images(c.frames) for c in clips])
    waves = torch.cat([audio_windows(torch.from_numpy(c.audio), torch.from_numpy(c.times), cfg.window_s,
                                     cfg.sample_rate) for c in clips])
    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):
            started = time.perf_counter()
            for lo in range(0, len(images), batch):
                maps = model.image_maps(images[lo:lo + batch])
                model.localization(maps, model.audio_vectors(front(waves[lo:lo + batch])))
            best = min(best, time.perf_counter() - started)
    return len(images) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--clips", type=int, default=48)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    world_out = out / "ssl_world"
    cfg = load_config(None, {"out": str(world_out), "demo.clips": args.clips, "demo.seed": 1})
    generate_world(world_out, n_clips=args.clips, seed=1, duration_s=cfg.demo.duration_s)
    started = time.perf_counter()
    cfg, _ = ensure_model(cfg, run_jobs(load_clip_list(cfg, world_out)), world_out, progress=False)
    train_s = time.perf_counter() - started
    shutil.rmtree(world_out / "cache", ignore_errors=True)
    summary = run(cfg, progress=False)
    record = json.loads((world_out / "manifests" / "run.json").read_text())
    workers = cfg.dask.workers or 2
    in_pipeline = record["scorer_frames_per_s_per_worker"] * workers
    scorer = LearnedScorer(replace(cfg.score, batch_size=cfg.score.batch_size))
    clips = [decode_clip(p, 0.0, cfg.demo.duration_s, cfg.decode)
             for p in sorted((world_out / "raw").glob("demo*.mp4"))[:16]]
    isolated = _isolated_forward(scorer, clips, threads=workers, batch=cfg.score.batch_size)
    frames = int(sum(len(c.times) for c in clips))
    results = {
        "clips": args.clips, "ssl_train_s": round(train_s, 1), "ssl_steps": cfg.ssl.steps,
        "isolated_forward_frames_per_s": round(isolated, 1), "isolated_frames_timed": frames,
        "in_pipeline_scorer_frames_per_s": round(in_pipeline, 1),
        "pipeline_over_isolated": round(in_pipeline / isolated, 3),
        "end_to_end_frames_per_s": round(summary.clips_per_s * cfg.demo.duration_s * cfg.decode.fps, 1),
        "workers": workers, "torch_threads_isolated": workers,
    }
    write_json(out / "ssl.json", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
