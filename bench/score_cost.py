"""What the cross-clip score and the ensemble cost the scorer: `LearnedScorer.score` with each `score.contrast`
(at `--ensemble` models, the default's), and with the margin from the chosen model alone (`margin, 1 model`),
against the bare model(s) (resize, image maps, audio vectors, localisation, for every model scored) on the same
decoded clips, one process, one torch thread, interleaved, best of `--repeats`. Writes `<out>/score_cost.json`.
Run: `python -m bench.score_cost --checkpoint MODEL --raw work/demo/raw`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.ssl import bare_forward
from curation.config import CONTRASTS, DecodeConfig, ScoreConfig
from curation.decode import decode_clip
from curation.localise.score import LearnedScorer
from manifests.io import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="an ssl-train model.pt")
    parser.add_argument("--raw", required=True, help="a folder of demo clips (demo*.mp4)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ensemble", type=int, default=ScoreConfig.ensemble, help="models scored (score.ensemble)")
    parser.add_argument("--out", default="work/bench")
    args = parser.parse_args(argv)
    paths = sorted(Path(args.raw).glob("demo*.mp4"))[: args.clips]
    clips = [decode_clip(p, 0.0, 8.0, DecodeConfig()) for p in paths]
    scorers = {c: LearnedScorer(ScoreConfig(checkpoint=args.checkpoint, contrast=c, ensemble=args.ensemble))
               for c in CONTRASTS}
    scorers["margin, 1 model"] = LearnedScorer(ScoreConfig(checkpoint=args.checkpoint, ensemble=1))
    torch.set_num_threads(1)
    bare = scorers["margin"]

    def bare_models() -> None:
        with torch.inference_mode():
            for clip in clips:
                bare_forward(bare, *bare.batch(clip, slice(None)))

    work = {"bare": bare_models, **{c: (lambda s=s: [s.score(clip) for clip in clips]) for c, s in scorers.items()}}
    best = dict.fromkeys(work, float("inf"))
    for _ in range(args.repeats):
        for name, run in work.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    frames = sum(len(c.times) for c in clips)
    result = {"frames": frames, "repeats": args.repeats, "models": len(bare.models),
              "frames_per_s": {name: round(frames / s, 1) for name, s in best.items()},
              "over_bare": {name: round(best["bare"] / s, 3) for name, s in best.items()}}
    write_json(Path(args.out) / "score_cost.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
