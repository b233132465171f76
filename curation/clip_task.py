"""One clip through fetch -> decode -> score -> select, its result stored as one atomic cache file.

The cache file (`OUT/cache/<config fingerprint>/<clip_id>.npz`) is what makes a run resumable: a rerun
skips every clip that has one, and shards are assembled from these files only. Plain functions, no Dask:
the pipeline maps `process_group` over groups of clips.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curation.config import RunConfig
from curation.decode import decode_clip
from curation.errors import ClipError
from curation.fetch import fetch_local, raw_path
from curation.score import load_scorer
from curation.select import select_moments
from curation.write import encode_flac, encode_jpeg
from manifests.io import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipJob:
    """What a worker needs to know about one clip."""

    clip_id: str
    path: str | None
    url: str | None
    start_s: float
    end_s: float


@dataclass(frozen=True)
class ClipOutcome:
    """The small per-clip result a task returns to the client (bulk data stays in the cache file)."""

    clip_id: str
    scored: bool
    error_kind: str | None = None
    error: str | None = None
    clip_score: float | None = None
    n_frames: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class CachedClip:
    """A scored clip as read back from its cache file."""

    outcome: ClipOutcome
    times: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    selected: np.ndarray
    jpgs: list[bytes]
    flac: bytes
    model_id: str


def cache_path(cache_dir: Path, clip_id: str) -> Path:
    return cache_dir / f"{clip_id}.npz"


def _save(path: Path, outcome: ClipOutcome, arrays: dict[str, np.ndarray], model_id: str | None) -> None:
    meta = json.dumps({"outcome": asdict(outcome), "model_id": model_id}).encode()
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(meta, dtype=np.uint8), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_cached(path: Path) -> CachedClip:
    """Load one cache file (never pickles: plain arrays and a JSON header)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes())
        outcome = ClipOutcome(**meta["outcome"])
        if not outcome.scored:
            empty = np.zeros(0)
            return CachedClip(outcome, empty, empty, empty, empty, [], b"", meta["model_id"] or "")
        n_jpgs = sum(1 for key in data.files if key.startswith("jpg"))
        return CachedClip(outcome=outcome, times=data["t"], scores=data["score"], ranks=data["rank"],
                          selected=data["selected"], jpgs=[data[f"jpg{i}"].tobytes() for i in range(n_jpgs)],
                          flac=data["flac"].tobytes(), model_id=meta["model_id"])


def read_outcome(path: Path) -> ClipOutcome:
    with np.load(path, allow_pickle=False) as data:
        return ClipOutcome(**json.loads(data["meta"].tobytes())["outcome"])


def _fetch(job: ClipJob, raw_dir: Path):
    if job.path is not None:
        return fetch_local(job.path, job.clip_id, job.start_s, job.end_s, raw_dir)
    existing = raw_path(raw_dir, job.clip_id)
    if existing.is_file():  # fetched by an earlier run or by another tool
        return fetch_local(existing, job.clip_id, 0.0, job.end_s - job.start_s, raw_dir)
    raise ClipError("unsupported_source", f"no fetcher for {job.url!r} in this build (YouTube/URL: issue #4)")


def _score_clip(job: ClipJob, cfg: RunConfig, raw_dir: Path, started: float):
    fetched = _fetch(job, raw_dir)
    clip = decode_clip(fetched.path, fetched.offset_s, fetched.offset_s + job.end_s - job.start_s, cfg.decode,
                       fetched.info)
    scorer = load_scorer(cfg.score)
    scores = scorer.score(clip).scores
    moments = select_moments(clip.times, scores, cfg.select)
    arrays = {"t": clip.times, "score": scores, "rank": moments.ranks, "selected": moments.selected,
              "flac": np.frombuffer(encode_flac(clip.audio, clip.sample_rate), dtype=np.uint8)}
    for i, frame_index in enumerate(moments.selected):
        jpg = encode_jpeg(clip.frames[frame_index], cfg.write.jpeg_quality)
        arrays[f"jpg{i}"] = np.frombuffer(jpg, dtype=np.uint8)
    outcome = ClipOutcome(job.clip_id, scored=True, clip_score=moments.clip_score, n_frames=len(clip.times),
                          seconds=time.perf_counter() - started)
    return outcome, arrays, scorer.model_id


def process_clip(job: ClipJob, cfg: RunConfig, raw_dir: Path, cache_dir: Path) -> ClipOutcome:
    """Process one clip unless its cache file exists; every failure becomes a recorded outcome."""
    path = cache_path(cache_dir, job.clip_id)
    if path.exists():
        return read_outcome(path)
    started = time.perf_counter()
    try:
        outcome, arrays, model_id = _score_clip(job, cfg, raw_dir, started)
    except ClipError as exc:
        outcome = ClipOutcome(job.clip_id, scored=False, error_kind=exc.kind, error=str(exc),
                              seconds=time.perf_counter() - started)
        arrays, model_id = {}, None
    except Exception as exc:  # a bug must not sink the run; not cached, so a rerun tries the clip again
        log.exception("unexpected failure on clip %s", job.clip_id)
        return ClipOutcome(job.clip_id, scored=False, error_kind="internal_error",
                           error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - started)
    _save(path, outcome, arrays, model_id)
    return outcome


def warm_up(score_cfg) -> str:
    """Import the decoders and build the scorer on a worker before its first task (once per process)."""
    import decord  # noqa: F401
    import torchcodec.decoders  # noqa: F401

    return load_scorer(score_cfg).model_id


def process_group(jobs: list[ClipJob], cfg: RunConfig, raw_dir: str, cache_dir: str) -> list[ClipOutcome]:
    """One Dask task: a group of clips, processed in order on one worker."""
    raw, cache = Path(raw_dir), Path(cache_dir)
    raw.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    return [process_clip(job, cfg, raw, cache) for job in jobs]
