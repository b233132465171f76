"""Clip selection when good clips are the minority: a finished demo-world run's scores, re-selected on the whole
world and on sub-worlds with a share of the good clips left out (drawn by seed), under a quantile cut and under
the calibrated threshold. Nothing is re-scored: per-frame scores come from frames.parquet, selection is
`select_moments` + `keep_clips` as in the run. Writes `<out>/manifests/mismatch_bench.json`.
Run: `python -m bench.mismatch --out work/demo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from curation.config import SelectConfig, config_from_dict
from curation.outputs.evaluate import frames_with_truth
from curation.select import keep_clips, select_moments
from manifests.io import write_json
from manifests.layout import RunLayout


def _clip_moments(joined: pd.DataFrame, cfg: SelectConfig) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Each clip's score and the `good` flags of its selected frames, as the run's selection computes them."""
    scores, picked = {}, {}
    basis = "score_contrastive" if cfg.clip_score == "score_contrastive" else "score"
    for cid, clip in joined.sort_values(["clip_id", "t"]).groupby("clip_id"):
        b = clip[basis].to_numpy(np.float32) if clip[basis].notna().all() else None
        m = select_moments(clip["t"].to_numpy(), clip["score"].to_numpy(np.float32), cfg, b)
        scores[cid], picked[cid] = m.clip_score, clip["good"].to_numpy()[m.selected]
    return scores, picked


def _banks(score) -> list[dict]:
    """The run's reference banks: each ensemble model's own from the ssl-train checkpoint, or a published
    localiser's bank file."""
    from curation.localise.bank import load_bank
    from curation.localise.checkpoint import file_digest, load_members

    if score.bank:
        return [load_bank(score.bank, file_digest(score.checkpoint))]
    return [bank for _, bank in load_members(score.checkpoint, score.ensemble)]


def measure(out: Path, drops: list[float], seeds: int, quantiles: list[float]) -> dict:
    from curation.localise.bank import null_threshold

    layout = RunLayout(str(out))
    record = json.loads(Path(layout.run_record).read_text())
    run_cfg = config_from_dict(record["config"])
    cfg = run_cfg.select
    joined = frames_with_truth(out)
    kinds = json.loads(Path(layout.demo_world).read_text())["counts"]["clip_kinds"]
    scored = set(pd.read_parquet(layout.clips_manifest).query("status in ['ok', 'rejected'] and "
                                                              "error_kind.isna()")["clip_id"])
    joined = joined[joined["clip_id"].isin(scored)]
    scores, picked = _clip_moments(joined, cfg)
    thresholds = {}
    if quantiles and run_cfg.score.contrast == "margin" and cfg.clip_score == "score_contrastive":
        banks = _banks(run_cfg.score)  # the margin is the ensemble's mean of each model's own margin
        own = np.mean([null_threshold(bank, run_cfg.score.bank_quantile) for bank in banks])
        thresholds = {q: float(np.mean([null_threshold(bank, q) for bank in banks]) - own)
                      for q in quantiles}  # in units of the run's margin
    good_clips = sorted(set(joined.loc[joined["good"], "clip_id"]))
    rules = {"quantile": replace(cfg, min_clip_score=None), "threshold": replace(cfg, keep_quantile=None),
             "default": cfg, **{f"threshold q{q}": replace(cfg, min_clip_score=x) for q, x in thresholds.items()}}
    rows = []
    for drop in drops:
        for seed in range(seeds if drop else 1):
            left_out = set(np.random.default_rng(seed).permutation(good_clips)[: int(drop * len(good_clips))])
            world = {cid: s for cid, s in scores.items() if cid not in left_out}
            good = set(good_clips) - left_out
            mismatched = [c for c in world if kinds[c] == "mismatched"]
            for name, rule in rules.items():
                kept = keep_clips(world, rule)
                flags = np.concatenate([picked[c] for c in kept]) if kept else np.zeros(0, bool)
                rows.append({"drop_good": drop, "seed": seed, "rule": name, "clips": len(world),
                             "good_share": round(len(good) / len(world), 3), "kept": len(kept),
                             "kept_frame_precision": round(float(flags.mean()), 4) if len(flags) else None,
                             "good_clip_recall": round(len(kept & good) / len(good), 4),
                             "mismatched_kept_share": round(float(np.mean([c in kept for c in mismatched])), 4)})
    table = pd.DataFrame(rows).groupby(["drop_good", "rule"]).mean(numeric_only=True).drop(columns="seed")
    means = json.loads(table.reset_index().to_json(orient="records"))
    return {"select": cfg.__dict__, "bank_quantile": run_cfg.score.bank_quantile,
            "thresholds_over_the_runs": {str(q): round(x, 5) for q, x in thresholds.items()},
            "rows": rows, "mean_over_seeds": means}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="work/demo", help="a finished demo-world run")
    parser.add_argument("--drop-good", type=float, nargs="+", default=[0.0, 0.5],
                        help="shares of the good clips left out")
    parser.add_argument("--seeds", type=int, default=5, help="draws of the left-out clips per share")
    parser.add_argument("--quantiles", type=float, nargs="*", default=[],
                        help="also the threshold of these score.bank_quantile values (with the run's margin)")
    args = parser.parse_args(argv)
    result = measure(Path(args.out), args.drop_good, args.seeds, args.quantiles)
    write_json(RunLayout(args.out).manifest("mismatch_bench.json"), result)
    print(pd.DataFrame(result["mean_over_seeds"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
