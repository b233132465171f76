"""Scoring on a device (`python -m bench.ssl --device cuda`): frames/s of the bare model and of the pipeline with a
scoring worker, at batches that run across clips, and the device's peak memory.

On a demo world (48 clips, 8 s, 10 fps), with the trained CPU-sized model (`--checkpoint`, else trained here),
or `--model full`: a randomly initialised EZ-VSL-layout model (ResNet-18 pair, 224 px, 3-s spectrograms), the size
of the published localisers, for speed only. Measures, each the best of `--repeats`:
- bare model: `forward` on inputs already on the device, in batches of `--batch` frames;
- scorer across clips: `score_across` from CPU-side inputs, `--clips-per-task` clips a call (host-to-device
  copies, audio windows, padding and results back included), as a scoring task runs it;
- in the pipeline: a LocalCluster run with one worker offering the `GPU` resource (`dask.score_resource`), the
  others preparing inputs; the scoring worker's frames/s (`scorer_frames_per_s_per_worker` of run.json) and the
  whole run's frames/s;
- checks: a clip's scores alone vs in a batch with other clips (bit for bit), and against CPU fp32 clip by clip.
Writes `<out>/ssl_<device>_<precision>.json` (`..._full.json` for `--model full`). `peak_device_memory_mib` is this
process's, over the bare-model and across-clips timings at `--batch` (the pipeline's scoring worker runs the same
batches).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from curation.config import load_config
from curation.decode import decode_clip
from curation.demo import generate_world
from curation.localise.model import AVLocalizer, SSLModelConfig
from curation.localise.scorers import ensure_model, load_scorer
from curation.pipeline import load_clip_list, run, run_jobs
from manifests.io import write_json
from manifests.layout import RunLayout


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(work, device: torch.device, repeats: int) -> float:
    work()  # first call: kernels chosen, memory pools grown
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        work()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def _bare_seconds(scorer, inputs: list, batch: int, repeats: int) -> float:
    """`forward` alone over every frame, inputs already on the device in batches of `batch`."""
    images = torch.cat([i.images for i in inputs])
    with torch.inference_mode():
        audio = torch.cat([scorer.frame_audio(i) for i in inputs])
        batches = [(scorer.device_images(images[lo:lo + batch]), audio[lo:lo + batch])
                   for lo in range(0, len(images) - batch + 1, batch)]  # full batches only

    def forward_all() -> None:
        with torch.inference_mode(), scorer.autocast():
            for x, a in batches:
                scorer.forward(x, a)

    return _best_seconds(forward_all, scorer.device, repeats) / (len(batches) * batch)


def _full_size_checkpoint(folder: Path) -> Path:
    """A randomly initialised model in the EZ-VSL checkpoint layout (torchvision ResNet-18 widths, 224 px)."""
    path = folder / "ezvsl_random_init.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save({"model": AVLocalizer(SSLModelConfig()).state_dict()}, path)
    return path


def _checks(scorer, reference, clips: list, inputs: list) -> dict:
    alone = scorer.score_across([inputs[1]])[0].scores
    mixed = scorer.score_across(inputs[:4])[1].scores
    ours = np.concatenate([r.scores for r in scorer.score_across(inputs)])
    cpu = np.concatenate([reference.score(c).scores for c in clips])
    return {"neighbour_independent": bool(np.array_equal(alone, mixed)),
            "max_abs_diff_vs_cpu_fp32_per_clip": float(np.abs(ours - cpu).max()),
            "spearman_vs_cpu_fp32_per_clip": float(spearmanr(ours, cpu).statistic)}


def main(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: this machine has no CUDA device (torch {torch.__version__}); run it "
              "on a machine with one, or --device cpu", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    world_out = out / "ssl_world"
    cfg = load_config(None, {"out": str(world_out), "demo.clips": args.clips, "demo.seed": 1})
    generate_world(world_out, n_clips=args.clips, seed=1, duration_s=cfg.demo.duration_s)
    checkpoint = str(_full_size_checkpoint(world_out)) if args.model == "full" else args.checkpoint
    if checkpoint:
        cfg = replace(cfg, score=replace(cfg.score, checkpoint=checkpoint))
    cfg, _ = ensure_model(cfg, run_jobs(load_clip_list(cfg, world_out)), world_out, progress=False)
    score = replace(cfg.score, device=args.device, precision=args.precision, batch_size=args.batch)
    cfg = replace(cfg, score=score, dask=replace(cfg.dask, score_resource="GPU", clips_per_task=args.clips_per_task,
                                                   workers=args.workers or cfg.dask.workers))
    scorer = load_scorer(score)  # one torch thread, as in a worker
    paths = sorted(Path(RunLayout(str(world_out)).raw).glob("demo*.mp4"))[:16]
    clips = [decode_clip(p, 0.0, cfg.demo.duration_s, cfg.decode) for p in paths]
    inputs = [scorer.inputs(c) for c in clips]
    frames = sum(i.n_frames for i in inputs)
    if scorer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(scorer.device)
    bare = 1.0 / _bare_seconds(scorer, inputs, args.batch, args.repeats)
    groups = [inputs[i:i + args.clips_per_task] for i in range(0, len(inputs), args.clips_per_task)]
    across = frames / _best_seconds(lambda: [scorer.score_across(g) for g in groups], scorer.device, args.repeats)
    peak = torch.cuda.max_memory_allocated(scorer.device) / 2**20 if scorer.device.type == "cuda" else None
    checks = _checks(scorer, load_scorer(replace(score, device="cpu", precision="fp32")), clips[:4], inputs[:4])
    pipeline = []
    for _ in range(args.pipeline_repeats):
        shutil.rmtree(RunLayout(str(world_out)).caches, ignore_errors=True)
        summary = run(cfg, progress=False)
        record = json.loads(Path(RunLayout(str(world_out)).run_record).read_text())
        pipeline.append({"scorer_frames_per_s": record["scorer_frames_per_s_per_worker"],
                         "end_to_end_frames_per_s": round(summary.clips_per_s * cfg.demo.duration_s * cfg.decode.fps,
                                                          1)})
    results = {
        "device": str(scorer.device), "device_name": torch.cuda.get_device_name(scorer.device)
        if scorer.device.type == "cuda" else "cpu (1 torch thread)", "precision": args.precision,
        "model": scorer.model_id, "batch": args.batch, "clips_per_task": args.clips_per_task,
        "frames_timed": frames, "bare_model_frames_per_s": round(bare, 1),
        "scorer_across_clips_frames_per_s": round(across, 1), "peak_device_memory_mib": peak,
        "in_pipeline": pipeline, "pipeline_workers": cfg.dask.workers or os.cpu_count(), **checks,
        "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
    }
    suffix = "_full" if args.model == "full" else ""
    write_json(out / f"ssl_{args.device.replace(':', '')}_{args.precision}{suffix}.json", results)
    print(json.dumps(results, indent=2))
    return 0
