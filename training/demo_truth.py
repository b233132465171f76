"""Demo world only: how much of a paired frame its clip's audio can reveal, from the world's ground truth.

The demo world's per-frame truth (`<curation OUT>/raw/truth.parquet`, a file beside the shard folder) says
which objects are visible in each frame and which sounds play. An audio clip can only tell which categories
sound in it and, through loudness, the range of its own object's apparent size; the background and the object's
position are silent. `retrieval_ceiling` scores an oracle that knows exactly that: for each query it picks
uniformly among the candidates (same candidate sets as `evaluate.retrieval`) whose frame shows exactly the
audible categories at a size within the range the object had while its sound played. It estimates the best
R@1 any audio encoder can reach on this world under the evaluation protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from manifests.layout import RunLayout
from training.config import DataConfig


def find_truth(data: DataConfig) -> Path | None:
    """`raw/truth.parquet` next to a shard folder `<OUT>/shards`, when there is one."""
    path = Path(RunLayout.of_shards(Path(data.shards)).truth)
    return path if "::" not in data.shards and Path(data.shards).is_dir() and path.is_file() else None


def _clip_facts(frames: pd.DataFrame, frame_t: float) -> tuple[frozenset, frozenset, float, tuple[float, float]]:
    """(categories visible in the frame, categories audible in the clip, frame scale, own-sound scale range)."""
    row = frames.iloc[int(np.argmin(np.abs(frames["t"].to_numpy() - frame_t)))]
    seen = {int(row["category"])} if row["visible"] else set()
    if row["visible2"] is True and not pd.isna(row["category2"]):
        seen.add(int(row["category2"]))
    heard = frozenset(int(c) for c in frames["sound_category"].dropna().unique() if c >= 0)
    own = frames.loc[frames["matched"], "scale"]
    scale_range = (float(own.min()) - 0.01, float(own.max()) + 0.01) if len(own) else (0.0, np.inf)
    return frozenset(seen), heard, float(row["scale"]), scale_range


def retrieval_ceiling(truth_path: Path, keys: list[str], frame_t: list[float],
                      candidates: list[np.ndarray]) -> float:
    """Expected R@1 of the truth oracle; candidates[i] = the clip indices ranked for query i (including i)."""
    truth = pd.read_parquet(truth_path, columns=["clip_id", "t", "category", "visible", "matched", "scale",
                                                 "category2", "visible2", "sound_category"])
    by_clip = dict(tuple(truth[truth["clip_id"].isin(keys)].groupby("clip_id")))
    facts = [_clip_facts(by_clip[k], t) for k, t in zip(keys, frame_t, strict=True)]
    hits = []
    for i, pool in enumerate(candidates):
        _, heard, _, (lo, hi) = facts[i]
        fits = [j for j in pool if facts[j][0] == heard and lo <= facts[j][2] <= hi]
        hits.append(1.0 / len(fits) if i in fits else 0.0)
    return float(np.mean(hits))
