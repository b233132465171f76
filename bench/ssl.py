"""Localisation-model benchmark: scoring throughput inside the pipeline vs the model's isolated forward pass.

Trains (or reuses) the default CPU-sized model on a demo world, curates it with that model, and times the
same frames through the bare model: one process with one torch thread per worker, and as many single-thread
processes as workers (the pipeline's layout); the whole scorer (resize + model + contrastive score) in that
layout too, to separate the scorer's own work from the pipeline's; every figure `--repeats` times, medians
reported (the single runs too). Writes `<out>/ssl.json`. Run: `make bench` or `python -m bench.ssl`.
`--device cuda` (or cpu, with `--precision`) measures scoring on a device instead: `bench.ssl_device`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from curation.config import SSLConfig, load_config
from curation.decode import decode_clip
from curation.demo import generate_world
from curation.localise.checkpoint import save_checkpoint
from curation.localise.model import AVLocalizer, SSLModelConfig
from curation.localise.score import LearnedScorer
from curation.localise.scorers import ensure_model
from curation.pipeline import load_clip_list, run, run_jobs
from manifests.io import write_json
from manifests.layout import RunLayout

# The bare model's batch: its fastest here (one thread, 1,280 concatenated frames, best of 7: batches of 32 / 64 /
# 80 / 100 / 128 -> 1,609 / 1,688 / 1,359 / 1,455 / 1,440 frames/s), whatever `score.batch_size` the pipeline uses.
BARE_BATCH = 64


def _best_of_2(work: Callable[[], object]) -> float:
    """Seconds of the faster of two runs of `work`."""
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def bare_forward(scorer: LearnedScorer, images: torch.Tensor, waves: torch.Tensor) -> list[torch.Tensor]:
    """The bare model work the scorer is measured against: the audio front end, then image maps, audio vectors
    and the localisation map of every model it scores with (each model of an ensemble, `score.ensemble`)."""
    spectrograms = scorer.front(waves)
    return [model.localization(model.image_maps(images), model.audio_vectors(spectrograms))
            for model in scorer.models]


def _forward_seconds(scorer: LearnedScorer, clips: list) -> tuple[int, float]:
    """(frames, best-of-2 seconds) of the bare model (image maps + audio vectors + localisation) on
    pre-decoded, pre-resized inputs, in batches of BARE_BATCH."""
    inputs = [scorer.batch(c, slice(None)) for c in clips]
    images, waves = (torch.cat(parts) for parts in zip(*inputs, strict=True))

    @torch.inference_mode()
    def forward_all() -> None:
        for lo in range(0, len(images), BARE_BATCH):
            bare_forward(scorer, images[lo:lo + BARE_BATCH], waves[lo:lo + BARE_BATCH])

    return len(images), _best_of_2(forward_all)


def _scorer_seconds(scorer: LearnedScorer, clips: list) -> tuple[int, float]:
    """(frames, best-of-2 seconds) of the whole scorer as a pipeline worker calls it, clip by clip, on decoded
    clips: the resize to the model's input, the model in per-clip batches and the contrastive score."""
    return sum(len(c.times) for c in clips), _best_of_2(lambda: [scorer.score(clip) for clip in clips])


def _decode(paths: list[Path], cfg) -> list:
    return [decode_clip(p, 0.0, cfg.demo.duration_s, cfg.decode) for p in paths]


def _forward_process(score_cfg, paths: list[Path], cfg, barrier, results) -> None:
    """One single-thread copy of the bare model, then of the whole scorer, each started together with the other
    copies (the pipeline's layout)."""
    scorer = LearnedScorer(score_cfg)  # one torch thread, as in a pipeline worker
    clips = _decode(paths, cfg)
    _forward_seconds(scorer, clips[:1])  # warm-up
    rates = []
    for measure in (lambda: _forward_seconds(scorer, clips),
                    lambda: _scorer_seconds(scorer, clips)):
        barrier.wait()
        frames, seconds = measure()
        rates.append(frames / seconds)
    results.put(rates)


def _isolated_in_processes(score_cfg, paths: list[Path], cfg, processes: int) -> tuple[float, float]:
    """frames/s of `processes` concurrent single-thread copies, each on the same frames: (bare model, whole
    scorer)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes, timeout=300), ctx.Queue()  # a failed copy breaks it
    procs = [ctx.Process(target=_forward_process, args=(score_cfg, paths, cfg, barrier, results))
             for _ in range(processes)]
    for proc in procs:
        proc.start()
    rates = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    return sum(r[0] for r in rates), sum(r[1] for r in rates)


def _full_native_checkpoint(folder: Path) -> Path:
    """A randomly initialised native model of the real-size preset (configs/vggsound.toml: EZ-VSL's ResNet-18
    pair at 224 px, its inputs), for speed only: no reference bank, so no contrastive score."""
    path = folder / "full_random_init.pt"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(path, AVLocalizer(SSLModelConfig(preprocess="ezvsl")).eval(), None, 0, None, SSLConfig())
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--clips", type=int, help="demo clips curated (default 48; --model full: 12)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="times every figure is measured; the medians are reported (single runs scatter by "
                             "5-25 %% on a 2-core machine)")
    device = parser.add_argument_group("scoring on a device (bench.ssl_device: ssl_<device>_<precision>.json)")
    device.add_argument("--device", help="cpu, cuda or cuda:N: measure scoring on this device instead (e.g. "
                                         "`python -m bench.ssl --device cuda`)")
    device.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    device.add_argument("--batch", type=int, default=512, help="frames per forward pass, across clips")
    device.add_argument("--clips-per-task", type=int, default=16, help="clips a scoring task takes")
    device.add_argument("--checkpoint", help="a trained model to score with (default: train the CPU-sized one)")
    device.add_argument("--model", choices=("trained", "full"), default="trained",
                        help="full: a randomly initialised EZ-VSL-size model (ResNet-18 pair, 224 px), speed only; "
                             "without --device, the native model of configs/vggsound.toml's preset in the CPU "
                             "pipeline")
    device.add_argument("--workers", type=int, help="pipeline LocalCluster workers (default: one per core)")
    device.add_argument("--pipeline-repeats", type=int, default=1)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.clips = args.clips or (12 if args.model == "full" else 48)
    if args.device:
        from bench import ssl_device

        return ssl_device.main(args)
    out = Path(args.out).resolve()
    world_out = out / ("ssl_world_full" if args.model == "full" else "ssl_world")
    world_out.mkdir(parents=True, exist_ok=True)
    checkpoint = _full_native_checkpoint(world_out) if args.model == "full" else args.checkpoint
    given = {"score.checkpoint": str(Path(checkpoint).resolve())} if checkpoint else {}
    cfg = load_config(None, {"out": str(world_out), "demo.clips": args.clips, "demo.seed": 1, **given})
    generate_world(world_out, n_clips=args.clips, seed=1, duration_s=cfg.demo.duration_s)
    started = time.perf_counter()
    cfg, _ = ensure_model(cfg, run_jobs(load_clip_list(cfg, world_out)), world_out, progress=False)
    train_s = time.perf_counter() - started
    workers = cfg.dask.workers or 2
    paths = sorted(Path(RunLayout(str(world_out)).raw).glob("demo*.mp4"))[:4 if args.model == "full" else 16]
    clips = _decode(paths, cfg)
    scorer = LearnedScorer(cfg.score)  # sets one torch thread, as in a worker: the isolated run gets `workers`
    runs: dict[str, list[float]] = {"in_pipeline": [], "end_to_end": [], "isolated": [], "isolated_processes": [],
                                    "isolated_scorer_processes": []}
    page_faults: list[float] = []
    frames = 0
    for _ in range(args.repeats):
        shutil.rmtree(RunLayout(str(world_out)).caches, ignore_errors=True)
        summary = run(cfg, progress=False)
        record = json.loads(Path(RunLayout(str(world_out)).run_record).read_text())
        runs["in_pipeline"].append(record["scorer_frames_per_s_per_worker"] * workers)
        page_faults.append(record["scorer_page_faults_per_clip"])
        runs["end_to_end"].append(summary.clips_per_s * cfg.demo.duration_s * cfg.decode.fps)
        torch.set_num_threads(workers)
        frames, seconds = _forward_seconds(scorer, clips)
        runs["isolated"].append(frames / seconds)
        bare, whole = _isolated_in_processes(cfg.score, paths, cfg, workers)
        runs["isolated_processes"].append(bare)
        runs["isolated_scorer_processes"].append(whole)
    median = {name: statistics.median(values) for name, values in runs.items()}
    results = {
        "clips": args.clips, "ssl_train_s": round(train_s, 1), "ssl_steps": cfg.ssl.steps, "repeats": args.repeats,
        "isolated_forward_frames_per_s": round(median["isolated"], 1), "isolated_frames_timed": frames,
        "isolated_forward_processes_frames_per_s": round(median["isolated_processes"], 1),
        "in_pipeline_scorer_frames_per_s": round(median["in_pipeline"], 1),
        "pipeline_over_isolated": round(median["in_pipeline"] / median["isolated"], 3),
        "pipeline_over_isolated_processes": round(median["in_pipeline"] / median["isolated_processes"], 3),
        "isolated_scorer_processes_frames_per_s": round(median["isolated_scorer_processes"], 1),
        "pipeline_over_isolated_scorer_processes": round(median["in_pipeline"] / median["isolated_scorer_processes"],
                                                         3),
        "end_to_end_frames_per_s": round(median["end_to_end"], 1),
        "in_pipeline_scorer_page_faults_per_clip": statistics.median(page_faults),
        "runs_frames_per_s": {name: [round(v, 1) for v in values] for name, values in runs.items()},
        "workers": workers, "torch_threads_isolated": workers, "isolated_processes": workers,
        "model": scorer.model_id, "model_widths": list(scorer.model.cfg.widths),
        "model_image_size": scorer.model.cfg.image_size, "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    write_json(out / ("ssl_full.json" if args.model == "full" else "ssl.json"), results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
