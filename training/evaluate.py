"""`python -m training evaluate`: audio->image retrieval and the Fréchet distance on the evaluation split.

Protocol (docs/training.md "Evaluation"): every evaluation clip is a query. Its audio is embedded by the stage-3 encoder
(best.pt); the candidates are its own best frame (`jpg`) and N-1 other evaluation clips' best frames, drawn
without replacement with a fixed seed (all other clips when the split has fewer than N). R@k = fraction of
queries whose own frame is among the k candidates nearest (L2) to the audio embedding; chance is k/N.
FD = Fréchet distance between Gaussians fitted to the audio embeddings and the real image embeddings of the
split; `fd_reference` is the same distance between the training and evaluation image embeddings (the floor
set by two samples of real images). `image_1nn_label_acc` checks the image space itself: how often an
evaluation frame's nearest training frame has the same label. On the demo world, `r_at_1_truth_ceiling`
estimates the best R@1 reachable from what the audio carries (training/demo_truth.py). eval.json carries the
protocol beside the numbers (`r_at_k_protocol`) and the stages' step budgets (`budget`, `under_trained`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from manifests.io import write_json
from training import budget, cli, distributed
from training.config import TrainConfig
from training.data import resolve_shards
from training.demo_truth import find_truth, retrieval_ceiling
from training.embedding_cache import ensure_cache, load_encoder, load_table
from training.recipes.stage3_audio import audio_batches, load_audio_encoder

KS = (1, 5, 10)


def candidate_sets(m: int, n_candidates: int, seed: int) -> list[np.ndarray]:
    """For each of m queries: its own index first, then N-1 other clips drawn without replacement (N capped
    at m), with a fixed seed so every model is ranked against the same candidates."""
    n = min(n_candidates, m)
    rng = np.random.default_rng(seed)
    return [np.concatenate([[i], np.sort(rng.choice(np.delete(np.arange(m), i), n - 1, replace=False))])
            for i in range(m)]


def retrieval(audio: np.ndarray, image: np.ndarray, labels: np.ndarray,
              candidates: list[np.ndarray]) -> dict[str, Any]:
    """R@k audio->image (query i's paired image is image[i], candidates[i] its pool), and how often the
    nearest candidate at least shows the query's category."""
    n = len(candidates[0])
    ranks, same_label = [], []
    for i, pool in enumerate(candidates):
        dist = np.linalg.norm(image[pool] - audio[i], axis=1)
        ranks.append(int((dist[1:] < dist[0]).sum()))
        same_label.append(labels[pool[np.argmin(dist)]] == labels[i])
    ranks = np.array(ranks)
    out: dict[str, Any] = {"n_queries": len(candidates), "n_candidates": n,
                           "median_rank": float(np.median(ranks) + 1), "top1_same_label": float(np.mean(same_label))}
    for k in KS:
        out[f"r_at_{k}"] = float(np.mean(ranks < k))
        out[f"chance_r_at_{k}"] = min(k, n) / n
    return out


def protocol(n_queries: int, n_candidates: int, seed: int, query: str, candidates: str) -> dict[str, Any]:
    """How an R@k was measured, stored next to it: without the candidate count, the way negatives are drawn and
    the features, an R@k cannot be compared with anyone's."""
    return {"queries": f"{n_queries} clips of the evaluation split, each once", "query_features": query,
            "candidates": n_candidates, "candidate_features": candidates,
            "negatives": f"{n_candidates - 1} other evaluation clips per query, drawn without replacement "
                         f"(numpy default_rng({seed})), the same sets for every model",
            "distance": "L2 between L2-normalised features", "chance_r_at_k": "k / candidates"}


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """||mu_x - mu_y||^2 + tr(Sx) + tr(Sy) - 2 tr((Sx^1/2 Sy Sx^1/2)^1/2). With Sx = A'A, Sy = B'B (A, B the
    centred samples / sqrt(n - 1)) the last trace is the nuclear norm of A B': with fewer samples than dimensions
    (every FID of a few hundred images in 2048-d) a small SVD, exact, instead of d x d decompositions."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    a, b = (x - mx) / np.sqrt(max(len(x) - 1, 1)), (y - my) / np.sqrt(max(len(y) - 1, 1))
    if min(len(x), len(y)) < x.shape[1]:
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:  # symmetric eigendecompositions, stable when the covariances are singular
        w, v = np.linalg.eigh(a.T @ a)
        root_x = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_x @ (b.T @ b) @ root_x), 0, None)).sum()
    return float(np.sum((mx - my) ** 2) + np.sum(a**2) + np.sum(b**2) - 2 * cross)


@torch.no_grad()
def run(cfg: TrainConfig) -> dict[str, Any]:
    """Embed the evaluation split's audio, score retrieval and FD, write OUT/eval.json (keys of other
    evaluations already in it are kept)."""
    d = distributed.setup(cfg.runtime)
    t0 = time.time()
    out = Path(cfg.out)
    ckpt = out / "stage3" / "best.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} does not exist: run `python -m training stage3` first")
    train_urls, eval_urls = resolve_shards(cfg.data)
    encoder = load_encoder(cfg.out, d.device)
    urls = list(dict.fromkeys(train_urls + eval_urls))
    table = load_table(ensure_cache(cfg.out, encoder, urls, cfg.data, cfg.stage1.moments,
                                    cfg.stage1.embed_batch_size, d), urls)
    if not d.is_main:
        return {}
    model, meta = load_audio_encoder(ckpt, d.device)
    trained = dataclasses.replace(cfg, audio=model.cfg.audio)  # decode audio as the model was trained
    audio, rows, keys, frame_t = [], [], [], []
    for batch in audio_batches(eval_urls, trained, "eval", cfg.evaluate.batch_size):
        audio.append(model(batch["wave"].to(d.device)).cpu().numpy())
        rows.append(table.rows(batch["url"], batch["key"]))
        keys += batch["key"]
        frame_t += batch["frame_t"].tolist()
    if not rows:
        raise FileNotFoundError(f"no clips of split {cfg.data.eval_split!r} in the evaluation shards")
    a, rows = np.concatenate(audio), np.concatenate(rows)
    v = table.emb[rows, 0]
    train_rows = np.flatnonzero(table.splits != cfg.data.eval_split)
    train_v = table.emb[train_rows, 0]
    nearest = train_rows[np.argmax(v @ train_v.T, axis=1)]
    candidates = candidate_sets(len(rows), cfg.evaluate.n_candidates, cfg.evaluate.seed)
    result = {**retrieval(a, v, table.labels[rows], candidates),
              "fd": frechet_distance(a, v), "fd_reference": frechet_distance(train_v, v),
              "image_1nn_label_acc": float(np.mean(table.labels[nearest] == table.labels[rows])),
              "eval_split": cfg.data.eval_split, "checkpoint": str(ckpt), "checkpoint_step": int(meta["step"]),
              "image_encoder": encoder.cfg.kind, "embed_dim": int(v.shape[1]), "seconds": time.time() - t0,
              "r_at_k_protocol": protocol(len(rows), len(candidates[0]), cfg.evaluate.seed,
                                          "stage-3 audio embedding (best.pt)",
                                          f"stage-1 {encoder.cfg.kind} embedding of each clip's best frame (jpg)"),
              **budget.collect(out)}
    truth = find_truth(cfg.data)
    if truth is not None:
        result["r_at_1_truth_ceiling"] = retrieval_ceiling(truth, keys, frame_t, candidates)
    path = out / "eval.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**previous, **result})
    return result


def describe(r: dict[str, Any]) -> str:
    """The result in one line, then a warning line per stage a time cap stopped early."""
    lines = [f"evaluate: R@1 {r['r_at_1']:.3f} R@5 {r['r_at_5']:.3f} R@10 {r['r_at_10']:.3f} among "
             f"N={r['n_candidates']} candidates (chance R@1 {r['chance_r_at_1']:.3f}), {r['n_queries']} queries; "
             f"FD {r['fd']:.4f} (real-vs-real reference {r['fd_reference']:.4f})"]
    lines += [budget.warning(stage, r["budget"][stage]) for stage in r.get("under_trained", [])]
    return "\n".join(lines)


def _run_and_show(cfg: TrainConfig) -> None:
    result = run(cfg)
    if result:  # rank 0
        print(describe(result))


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(_run_and_show, argv, "evaluate", __doc__)
