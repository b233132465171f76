"""The client's summary table: what its columns keep, and the duplicate search over their fingerprint arrays."""

import numpy as np

from curation.clip_cache import ClipSummary
from curation.config import FilterConfig
from curation.quality import (
    duplicate_groups,
    find_duplicates,
    fingerprint,
    judge,
    judge_measured,
    measure,
    signals_dict,
)
from curation.summary_table import COMPACT_EVERY, SummaryTable, measured_clips

SR, FPS = 16000, 10.0


def _signals(seed: int, start: int = 0) -> dict:
    """A panned random texture with noise bursts, 8 s from frame / second `start` (a copy when `start` > 0)."""
    rng = np.random.default_rng(seed)
    scene = np.kron(rng.integers(0, 256, (8, 40, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    frames = np.stack([scene[:, i:i + 112] for i in range(120)])
    levels = np.repeat(rng.uniform(0.01, 0.5, 48), SR // 4)
    audio = (levels * rng.standard_normal(len(levels))).astype(np.float32)
    return signals_dict(measure(frames[start * 10:start * 10 + 80], audio[start * SR:(start + 8) * SR], SR))


def _scored(clip_id: str, quality: dict | None, score: float = 0.5) -> ClipSummary:
    return ClipSummary(clip_id, scored=True, clip_score=score, n_frames=80, score_s=0.25, quality=quality)


def test_the_summary_table_keeps_each_clips_last_summary_as_columns():
    summaries = SummaryTable([ClipSummary("b", scored=False, error_kind="timeout", error="slow"),
                              _scored("a", None)])
    summaries.add([_scored("b", _signals(0), 0.9)])
    for i in range(COMPACT_EVERY):  # enough task batches to be merged into one
        summaries.add([_scored(f"c{i:03d}", None)])
    table = summaries.table()
    assert table.num_rows == len(summaries) == COMPACT_EVERY + 2
    b = {row["clip_id"]: row for row in table.to_pylist()}["b"]
    assert b["scored"] and b["clip_score"] == 0.9 and b["error"] is None and b["motion"] > 1
    assert summaries.total("score_s") == 0.25 * (COMPACT_EVERY + 2)
    assert summaries.total("scored") == COMPACT_EVERY + 2 and summaries.total("n_frames", scored_only=True) == 80 * 258
    assert table["motion"].null_count == COMPACT_EVERY + 1  # only "b" was measured
    assert len(measured_clips(SummaryTable().table())[0]) == 0


def test_fingerprint_arrays_hold_the_same_fingerprints_and_find_the_same_duplicates():
    signals = {"d": _signals(1), "a": _signals(1, start=2), "c": _signals(2), "b": _signals(3)}
    summaries = SummaryTable(_scored(cid, s) for cid, s in signals.items())
    fps, loud = measured_clips(summaries.table())
    assert fps.ids == ["a", "b", "c", "d"] and loud.tolist() == [signals[c]["loud_db"] for c in fps.ids]
    for i, cid in enumerate(fps.ids):
        mine, theirs = fps.clip(i), fingerprint(signals[cid])
        assert all(np.array_equal(getattr(mine, f), getattr(theirs, f)) for f in ("hashes", "flat", "env", "spectrum"))
    cfg = FilterConfig()
    assert find_duplicates(fps, cfg, FPS) == duplicate_groups(signals, cfg, FPS) == {"a": "a", "d": "a"}
    verdicts = judge_measured([], fps, loud, cfg, FPS)
    assert verdicts.rejected == judge([], signals, cfg, FPS).rejected == {"d": ("duplicate", "near-duplicate of a")}
