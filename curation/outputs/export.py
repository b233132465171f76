"""`python -m curation export-moments`: a curated run in the official Sound2Scene layout.

Writes, beside the JSON, `images/<key>.jpg` (the best moment, 224 x 224) and `audios/<key>.wav` (the clip, 16 kHz
mono) for every kept clip, so the official `train.py --data_path <that folder>` runs on our curation unchanged.
Reads only the run's manifests and per-clip cache files; every file is written whole (temp file + rename, or one
upload: OUT and the JSON's place may each be a local folder or on an object store, through `curation.storage`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage
from curation.clip_cache import cache_path, read_cached
from curation.config import config_from_dict
from curation.localise.moments import FILE_NAME, frame_numbers, official_key, square_jpeg, wav_16k
from curation.provenance import read_run_record
from manifests.io import json_bytes
from manifests.layout import OfficialFiles, RunLayout


@dataclass(frozen=True)
class Export:
    json_path: str
    n_clips: int
    removed: int  # pairs of an earlier export at the same place whose clip is no longer kept


def _remove_stale(files: OfficialFiles, keys: set[str]) -> int:
    """Delete the image/wav pairs that an earlier export to the same file wrote for clips no longer kept (the
    official loader takes every pair in the folders)."""
    try:
        old = set(json.loads(storage.read_bytes(files.moments)))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return 0
    for key in old - keys:
        storage.remove(files.image(key))
        storage.remove(files.audio(key))
    return len(old - keys)


def export_moments(out: str | os.PathLike, json_path: str | os.PathLike | None = None) -> Export:
    """Write the official moments file of a run's kept clips (default `OUT/official/top1_boxes_top10_moments.json`)
    with their images and wavs beside it."""
    layout = RunLayout(storage.resolve(out))
    record = read_run_record(layout.out)
    cfg = config_from_dict(dict(record["config"], out=layout.out))
    cache = layout.cache(record["cache_dir"])
    files = OfficialFiles(storage.resolve(json_path)) if json_path else layout.official(FILE_NAME)
    clips = pq.read_table(pa.BufferReader(storage.read_bytes(layout.clips_manifest)))
    rows = [r for r in clips.to_pylist() if r["status"] == "ok"]
    moments = {}
    for row in sorted(rows, key=lambda r: r["clip_id"]):
        cached = read_cached(cache_path(cache, row["clip_id"]))
        key = official_key(row["ytid"], row["start_s"], row["end_s"], row["clip_id"])
        moments[key] = frame_numbers(cached.selected, cached.ranks, cached.times)  # official: 1-based
        storage.write_bytes(files.image(key), square_jpeg(cached.jpgs[0], cfg.write.jpeg_quality))
        storage.write_bytes(files.audio(key), wav_16k(cached.flac))
    removed = _remove_stale(files, set(moments))
    storage.write_bytes(files.moments, json_bytes(moments))
    return Export(files.moments, len(moments), removed)
