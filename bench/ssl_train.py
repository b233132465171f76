"""Localiser training speed (`python -m bench.ssl_train`): steps/s and samples/s of one model and of the default
training as ssl-train runs it (its restarts, where `ssl.restarts` > 1), and the share of a step spent outside
forward/backward.

On a demo world (`--clips` clips of 8 s, at least batch/2), decoded once, for `--model default` (the demo's
CPU-sized localiser, `ssl.*` defaults) or `--model full` (the real-size preset of configs/vggsound.toml:
EZ-VSL's ResNet-18 pair at 224 px on 257 x 200 spectrograms, batch 128). Each step is timed in two parts,
after `--warmup` untimed steps:
- batch: drawing the clips and moments, background swap, crops and flips, audio windows (the CPU's work);
- model: the audio front end, forward, the MIL-InfoNCE loss, backward and the optimizer step on `--device`;
and the whole `train()` loop (with its per-step log line and its checkpoints) is timed on the same clips, then
the model's restarts as `ssl-train` runs them (side by side where the cores hold them, `ssl.parallel_restarts`):
the ensemble's steps/s is the steps each restart made per second of that run (the side-by-side processes'
start included, which a short run feels most). From it the bench derives the hours to
train 20 epochs of 100k clips (an epoch: each clip once, as one of the batch's batch_size/2 clips), the schedule
EZ-VSL trains on. Writes `<out>/ssl_train_<model>_<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from curation.clip_cache import ClipJob
from curation.config import load_config
from curation.demo import generate_world
from curation.localise.distributed import World
from curation.localise.train import (
    _batch,
    _trainer,
    clip_backgrounds,
    load_training_clips,
    parallel_restarts,
    train,
    train_restarts,
)
from manifests.io import write_json
from manifests.readers import read_clip_table

PRESET = Path(__file__).resolve().parents[1] / "configs" / "vggsound.toml"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(args, out: Path):
    overrides = {"dataset": "demo", "meta": None, "out": str(out), "demo.clips": args.clips,
                 "ssl.device": args.device, "ssl.restarts": 1}
    if args.precision:
        overrides["ssl.precision"] = args.precision
    if args.batch:
        overrides["ssl.batch_size"] = args.batch
    cfg = load_config(PRESET if args.model == "full" else None, overrides)
    restarts = load_config(PRESET if args.model == "full" else None, {"meta": "x.csv"}).ssl.restarts
    return cfg, restarts


def _timed_steps(cfg, data, steps: int, warmup: int) -> tuple[list[float], list[float], torch.device, int]:
    """Seconds of each timed step's batch part and model part, and the pairs a step trained on."""
    t = _trainer(cfg, None, Path(tempfile.gettempdir()) / "unused.pt")
    scenes = clip_backgrounds(data) if cfg.ssl.background_swap > 0 else None
    batch_s, model_s = [], []
    for step in range(warmup + steps):
        t.model.train()
        started = time.perf_counter()
        gen = torch.Generator().manual_seed(step)
        images, waves = _batch(data, cfg.ssl, t.model.cfg.window_s, t.model.cfg.sample_rate, gen, scenes)
        built = time.perf_counter()
        t.step(images, waves, cfg.ssl.temperature, cfg.ssl.lr)
        _sync(t.device)
        if step >= warmup:
            batch_s.append(built - started)
            model_s.append(time.perf_counter() - built)
    return batch_s, model_s, t.device, len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("default", "full"), default="default")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: the model's config")
    parser.add_argument("--batch", type=int, help="pairs per step (default: the model's config)")
    parser.add_argument("--steps", type=int, help="timed steps (default 40, full: 6)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clips", type=int, default=64, help="demo clips (a batch of B pairs needs B/2 of them)")
    parser.add_argument("--out", default="work/bench")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: this machine has no CUDA device (torch {torch.__version__})",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    world = generate_world(out / "ssl_train_world", n_clips=args.clips, seed=1, duration_s=8.0)
    cfg, restarts = _config(args, world.raw_dir.parent)
    steps = args.steps or (6 if args.model == "full" else 40)
    torch.set_num_threads(cfg.ssl.threads)
    jobs = [ClipJob(r["clip_id"], r["path"], None, r["start_s"], r["end_s"])
            for r in read_clip_table(world.clips_path).to_pylist()]
    started = time.perf_counter()
    data = load_training_clips(jobs, cfg, world.raw_dir, progress=False)
    decode_s = time.perf_counter() - started
    batch_s, model_s, device, per_step = _timed_steps(cfg, data, steps, args.warmup)
    looped = replace(cfg, ssl=replace(cfg.ssl, steps=steps, checkpoint_every=max(1, steps // 2)))
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        train(data, looped, Path(scratch) / "model.pt", progress=False)
        loop_s = time.perf_counter() - started
    ensemble = replace(looped, ssl=replace(looped.ssl, restarts=restarts))
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        train_restarts(data, ensemble, Path(scratch) / "model.pt", progress=False)
        ensemble_s = time.perf_counter() - started
    step_s = statistics.median(b + m for b, m in zip(batch_s, model_s, strict=True))
    epoch_steps = 100_000 / (per_step // 2)
    results = {
        "model": args.model, "device": str(device), "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda" else f"cpu ({cfg.ssl.threads} torch threads)", "precision": cfg.ssl.precision,
        "widths": list(cfg.ssl.widths), "image_size": cfg.ssl.image_size, "preprocess": cfg.ssl.preprocess,
        "batch_pairs": per_step, "timed_steps": steps, "training_clips": len(data.clip_ids),
        "decode_s": round(decode_s, 2),
        "steps_per_s": round(1 / step_s, 3), "samples_per_s": round(per_step / step_s, 1),
        "batch_s_median": round(statistics.median(batch_s), 4), "model_s_median": round(statistics.median(model_s), 4),
        "share_outside_forward_backward": round(statistics.median(batch_s) / step_s, 3),
        "train_loop_steps_per_s": round(steps / loop_s, 3),
        "ensemble_restarts": restarts, "restarts_at_once": min(restarts, parallel_restarts(ensemble.ssl, World())),
        "ensemble_steps_per_s": round(steps / ensemble_s, 3),
        "hours_per_100k_clips_20_epochs": round(20 * epoch_steps * ensemble_s / steps / 3600, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
    }
    write_json(out / f"ssl_train_{args.model}_{args.device.replace(':', '')}.json", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
