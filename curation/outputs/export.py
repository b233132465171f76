"""`python -m curation export-moments`: a curated run in the official Sound2Scene layout.

Writes, beside the JSON, `images/<key>.jpg` (the best moment, 224 x 224) and `audios/<key>.wav` (the clip, 16 kHz
mono) for every kept clip, so the official `train.py --data_path <that folder>` runs on our curation unchanged.
Reads only the run's manifests and per-clip cache files; every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from curation.config import config_from_dict
from curation.errors import UsageError
from curation.localise.moments import FILE_NAME, frame_numbers, official_key, square_jpeg, wav_16k
from curation.results import cache_path, read_cached
from manifests.io import atomic_write_bytes, read_parquet, write_json


@dataclass(frozen=True)
class Export:
    json_path: Path
    n_clips: int
    removed: int  # pairs of an earlier export at the same place whose clip is no longer kept


def _run_record(out: Path) -> dict:
    try:
        return json.loads((out / "manifests" / "run.json").read_text())
    except FileNotFoundError:
        raise UsageError(f"{out} is not a finished run (no manifests/run.json): curate it first "
                         "(make shards OUT=...)") from None


def _remove_stale(json_path: Path, keys: set[str]) -> int:
    """Delete the image/wav pairs that an earlier export to the same file wrote for clips no longer kept (the
    official loader takes every pair in the folders)."""
    try:
        old = set(json.loads(json_path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return 0
    for key in old - keys:
        (json_path.parent / "images" / f"{key}.jpg").unlink(missing_ok=True)
        (json_path.parent / "audios" / f"{key}.wav").unlink(missing_ok=True)
    return len(old - keys)


def export_moments(out: str | Path, json_path: str | Path | None = None) -> Export:
    """Write the official moments file of a run's kept clips (default `OUT/official/top1_boxes_top10_moments.json`)
    with their images and wavs beside it."""
    out = Path(out).resolve()
    record = _run_record(out)
    cfg = config_from_dict(dict(record["config"], out=str(out)))
    cache = out / "cache" / record["cache_dir"]
    target = Path(json_path).resolve() if json_path else out / "official" / FILE_NAME
    rows = [r for r in read_parquet(out / "manifests" / "clips.parquet").to_pylist() if r["status"] == "ok"]
    moments = {}
    for row in sorted(rows, key=lambda r: r["clip_id"]):
        cached = read_cached(cache_path(cache, row["clip_id"]))
        key = official_key(row["ytid"], row["start_s"], row["end_s"], row["clip_id"])
        moments[key] = frame_numbers(cached.selected, cached.ranks, cached.times)  # official: 1-based
        atomic_write_bytes(target.parent / "images" / f"{key}.jpg", square_jpeg(cached.jpgs[0], cfg.write.jpeg_quality))
        atomic_write_bytes(target.parent / "audios" / f"{key}.wav", wav_16k(cached.flac))
    removed = _remove_stale(target, set(moments))
    write_json(target, moments)
    return Export(target, len(moments), removed)
