"""A clip task's records: the job it gets, the summary it returns, the cache file it leaves.

`ClipJob` is what a worker is told about one clip; `ClipSummary` is the small per-clip record a task returns to
the client (the client keeps them as `summary_table.SummaryTable` columns); the bulk data (scores, maps, JPEGs,
FLAC) stays in the clip's cache file (`OUT/cache/<config fingerprint>/<clip_id>.npz`), read back here as
`CachedClip`, `CachedScores` or `CachedMedia`. The cache file is what makes a run resumable: a rerun skips
every clip that has one, and shards, manifests, reports and exports are assembled from these files only. An
npz of plain arrays and a JSON header (the summary under its key "outcome", and the model id): never pickled.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from curation import storage
from manifests.layout import cache_file


@dataclass(frozen=True)
class ClipJob:
    """What a worker needs to know about one clip."""

    clip_id: str
    path: str | None
    url: str | None
    start_s: float
    end_s: float
    ytid: str | None = None


@dataclass(frozen=True)
class ClipSummary:
    """The small per-clip record a task returns to the client; bulk data stays in the cache file. The cache
    file's JSON header holds it under the key "outcome" (the type's earlier name, kept so that every cache file
    written before is still read)."""

    clip_id: str
    scored: bool
    error_kind: str | None = None
    error: str | None = None
    clip_score: float | None = None
    n_frames: int = 0
    seconds: float = 0.0
    score_s: float = 0.0  # time inside the scorer (throughput of the model within the pipeline)
    score_page_faults: int = 0  # minor page faults while scoring: memory handed back to the OS and faulted in again
    from_cache: bool = False  # read back from an earlier run's cache file, not processed now
    quality: dict | None = None  # the data-quality filters' signals (curation.quality.Signals, ~4 KB)
    # scored with less audio than one window, tiled (decode.short_clips = tile); false in files cached before
    # the option existed, which never scored such a clip
    audio_tiled: bool = False


@dataclass(frozen=True)
class CachedClip:
    """A scored clip as read back from its cache file."""

    summary: ClipSummary
    times: np.ndarray
    scores: np.ndarray
    contrastive: np.ndarray | None
    maps: np.ndarray | None  # (T, h, w) float16
    ranks: np.ndarray
    selected: np.ndarray
    jpgs: list[bytes]
    flac: bytes
    model_id: str


def cache_path(cache_dir: str | Path, clip_id: str) -> str:
    """Where a clip's cache file is: a local path or a URL under OUT."""
    return cache_file(cache_dir, clip_id)


def write_cached(path: str, summary: ClipSummary, arrays: dict[str, np.ndarray], model_id: str | None) -> None:
    meta = json.dumps({"outcome": asdict(summary), "model_id": model_id}).encode()
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(meta, dtype=np.uint8), **arrays)
    storage.write_bytes(path, buf.getvalue())  # whole or not at all: temp file + rename, or one PUT


def _npz(path: str):
    """An npz reader (never pickles); an object store's file is read whole in one request."""
    return np.load(storage.load_source(path), allow_pickle=False)


def read_cached(path: str) -> CachedClip:
    """Load one cache file (never pickles: plain arrays and a JSON header)."""
    with _npz(path) as data:
        meta = json.loads(data["meta"].tobytes())
        summary = ClipSummary(**meta["outcome"])
        if not summary.scored:
            empty = np.zeros(0)
            return CachedClip(summary, empty, empty, None, None, empty, empty, [], b"", meta["model_id"] or "")
        n_jpgs = sum(1 for key in data.files if key.startswith("jpg"))
        return CachedClip(summary=summary, times=data["t"], scores=data["score"],
                          contrastive=data["contrastive"] if "contrastive" in data.files else None,
                          maps=data["maps"] if "maps" in data.files else None, ranks=data["rank"],
                          selected=data["selected"], jpgs=[data[f"jpg{i}"].tobytes() for i in range(n_jpgs)],
                          flac=data["flac"].tobytes(), model_id=meta["model_id"])


@dataclass(frozen=True)
class CachedScores:
    """A scored clip's per-frame arrays as read back from its cache file, without its media: what frames.parquet
    needs (the scorer's own per-clip arrays, maps included, are `localise.clip_scores.ClipScores`)."""

    times: np.ndarray
    scores: np.ndarray
    contrastive: np.ndarray | None
    ranks: np.ndarray
    selected: np.ndarray


def read_scores(path: str) -> CachedScores:
    """The per-frame arrays of a scored clip's cache file; its JPEGs and FLAC are never decompressed (an npz
    member is only read when asked for; a local file's are not even read from disk)."""
    with _npz(path) as data:
        return CachedScores(times=data["t"], scores=data["score"],
                            contrastive=data["contrastive"] if "contrastive" in data.files else None,
                            ranks=data["rank"], selected=data["selected"])


@dataclass(frozen=True)
class CachedMedia:
    """What a scored clip's shard sample needs of its cache file: moments, JPEGs, FLAC, model id."""

    times: np.ndarray
    scores: np.ndarray
    selected: np.ndarray
    jpgs: list[bytes]
    flac: bytes
    model_id: str


def read_media(path: str) -> CachedMedia:
    """A scored clip's sample parts from its cache file; the members a sample does not use (ranks, saliency
    maps: the larger part of an ssl-scored clip's file) are never read."""
    with _npz(path) as data:
        n_jpgs = sum(1 for key in data.files if key.startswith("jpg"))
        return CachedMedia(times=data["t"], scores=data["score"], selected=data["selected"],
                           jpgs=[data[f"jpg{i}"].tobytes() for i in range(n_jpgs)], flac=data["flac"].tobytes(),
                           model_id=json.loads(data["meta"].tobytes())["model_id"])


def read_summary(path: str) -> ClipSummary:
    """The clip's summary from its cache file's header (no array is read)."""
    with _npz(path) as data:
        return ClipSummary(**json.loads(data["meta"].tobytes())["outcome"])


def reusable(summary: ClipSummary, short_clips: str) -> bool:
    """Whether a cached summary holds under `decode.short_clips`, which the cache key leaves out
    (`RunConfig.clip_stage_fingerprint`): a clip with less audio than one window failed `too_short` under
    `reject` (and before the option existed) and is scored, tiled, under `tile`. Every other summary is the same
    under both."""
    return summary.error_kind != "too_short" if short_clips == "tile" else not summary.audio_tiled


def cached_summary(path: str, short_clips: str) -> ClipSummary | None:
    """The clip's cached summary (marked `from_cache`) where its cache file exists and holds under
    `decode.short_clips`; None where the clip is to be processed (again)."""
    if not storage.exists(path):
        return None
    summary = read_summary(path)
    return replace(summary, from_cache=True) if reusable(summary, short_clips) else None
