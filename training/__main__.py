"""Command line: `python -m training {stage1,stage2,stage3,evaluate,gen-eval,generate,all}` (also under torchrun).

stage1    image encoder (SwAV ResNet-50 from --swav-weights, or a small self-supervised one) + embedding cache
stage2    embedding-conditioned GAN (IC-GAN / BigGAN style) on the shard frames
stage3    audio encoder aligned to the image embeddings (InfoNCE with L2 logits)
evaluate  R@1/5/10 audio->image among N candidates and the Frechet distance -> OUT/eval.json
gen-eval  images generated from held-out audio: FD, demo-world probe metrics, samples.png -> OUT/eval.json
generate  sound -> image grids, and volume / mix / interpolation / editing controls
all       stage1, stage2, stage3, evaluate, gen-eval (what `make train` runs)
Run `python -m training <command> --help` for the flags.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from training import cli, evaluate, gen_eval, generate
from training.config import TrainConfig
from training.recipes import stage1_image, stage2_gan, stage3_audio


def run_all(cfg: TrainConfig) -> None:
    """Stage 1, 2, 3 and the evaluations in one process, printing where every output is."""
    t0 = time.time()
    print(stage1_image.run(cfg).summary(), flush=True)
    print(stage2_gan.run(cfg).summary(), flush=True)
    print(stage3_audio.run(cfg).summary(), flush=True)
    result = evaluate.run(cfg)
    if result:  # rank 0
        print(evaluate.describe(result), flush=True)
        print(gen_eval.describe(gen_eval.run(cfg, cfg.probe, cfg.gen_eval)), flush=True)
        print(f"done in {time.time() - t0:.0f} s; outputs in {Path(cfg.out).resolve()}:\n"
              "  stage1/encoder.pt, stage1/cache/  frozen image encoder, per-shard image embeddings\n"
              "  stage2/generator.pt, stage2/last.pt, stage2/samples_*.png  EMA generator, resume state, grids\n"
              "  stage3/best.pt, stage3/last.pt    audio encoder (best validation loss / latest, resumable)\n"
              "  stage1/loss.jsonl, stage3/loss.jsonl  training and validation logs\n"
              "  samples.png, probe/probe.pt       generated from held-out audio; the demo-world probe\n"
              "  eval.json, config.toml            metrics, the resolved config")


def all_main(argv: list[str] | None = None) -> int:
    return cli.run_command(run_all, argv, "all", "stages 1-3 and the evaluations (what `make train` runs)")


COMMANDS = {"stage1": stage1_image.main, "stage2": stage2_gan.main, "stage3": stage3_audio.main,
            "evaluate": evaluate.main, "gen-eval": gen_eval.main, "generate": generate.main, "all": all_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(__doc__, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
