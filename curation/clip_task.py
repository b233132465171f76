"""One clip through fetch -> decode -> score -> select, its result stored as one atomic cache file.

The cache file (`OUT/cache/<config fingerprint>/<clip_id>.npz`) is what makes a run resumable: a rerun
skips every clip that has one, and shards are assembled from these files only. Plain functions, no Dask:
the pipeline maps `process_group` over groups of clips.
"""

from __future__ import annotations

import io
import json
import logging
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from curation import storage
from curation.config import FetchConfig, RunConfig
from curation.decode import DecodedClip, decode_clip, read_frames
from curation.errors import ClipError
from curation.fetch import DEFAULT_FETCH, FetchGate, fetch_local, fetch_remote
from curation.moments import MomentsScorer
from curation.quality import measure, signals_dict
from curation.score import load_scorer
from curation.select import select_moments
from curation.staging import stage_in, stage_out
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
    ytid: str | None = None


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
    score_s: float = 0.0  # time inside the scorer (throughput of the model within the pipeline)
    score_page_faults: int = 0  # minor page faults while scoring: memory handed back to the OS and faulted in again
    from_cache: bool = False  # read back from an earlier run's cache file, not processed now
    quality: dict | None = None  # the data-quality filters' signals (curation.quality.Signals, ~0.8 KB)


@dataclass(frozen=True)
class CachedClip:
    """A scored clip as read back from its cache file."""

    outcome: ClipOutcome
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
    return storage.join(str(cache_dir), f"{clip_id}.npz")


def _save(path: str, outcome: ClipOutcome, arrays: dict[str, np.ndarray], model_id: str | None) -> None:
    meta = json.dumps({"outcome": asdict(outcome), "model_id": model_id}).encode()
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(meta, dtype=np.uint8), **arrays)
    storage.write_bytes(path, buf.getvalue())  # whole or not at all: temp file + rename, or one PUT


def _npz(path: str):
    """An npz reader (never pickles); an object store's file is read whole in one request."""
    source = io.BytesIO(storage.read_bytes(path)) if storage.is_url(path) else path
    return np.load(source, allow_pickle=False)


def read_cached(path: str) -> CachedClip:
    """Load one cache file (never pickles: plain arrays and a JSON header)."""
    with _npz(path) as data:
        meta = json.loads(data["meta"].tobytes())
        outcome = ClipOutcome(**meta["outcome"])
        if not outcome.scored:
            empty = np.zeros(0)
            return CachedClip(outcome, empty, empty, None, None, empty, empty, [], b"", meta["model_id"] or "")
        n_jpgs = sum(1 for key in data.files if key.startswith("jpg"))
        return CachedClip(outcome=outcome, times=data["t"], scores=data["score"],
                          contrastive=data["contrastive"] if "contrastive" in data.files else None,
                          maps=data["maps"] if "maps" in data.files else None, ranks=data["rank"],
                          selected=data["selected"], jpgs=[data[f"jpg{i}"].tobytes() for i in range(n_jpgs)],
                          flac=data["flac"].tobytes(), model_id=meta["model_id"])


@dataclass(frozen=True)
class ClipScores:
    """A scored clip's per-frame arrays, without its media: what frames.parquet needs."""

    times: np.ndarray
    scores: np.ndarray
    contrastive: np.ndarray | None
    ranks: np.ndarray
    selected: np.ndarray


def read_scores(path: str) -> ClipScores:
    """The per-frame arrays of a scored clip's cache file; its JPEGs and FLAC are never decompressed (an npz
    member is only read when asked for; a local file's are not even read from disk)."""
    with _npz(path) as data:
        return ClipScores(times=data["t"], scores=data["score"],
                          contrastive=data["contrastive"] if "contrastive" in data.files else None,
                          ranks=data["rank"], selected=data["selected"])


@dataclass(frozen=True)
class ClipMedia:
    """What a scored clip's shard sample needs of its cache file: moments, JPEGs, FLAC, model id."""

    times: np.ndarray
    scores: np.ndarray
    selected: np.ndarray
    jpgs: list[bytes]
    flac: bytes
    model_id: str


def read_media(path: str) -> ClipMedia:
    """A scored clip's sample parts from its cache file; the members a sample does not use (ranks, saliency
    maps: the larger part of an ssl-scored clip's file) are never read."""
    with _npz(path) as data:
        n_jpgs = sum(1 for key in data.files if key.startswith("jpg"))
        return ClipMedia(times=data["t"], scores=data["score"], selected=data["selected"],
                         jpgs=[data[f"jpg{i}"].tobytes() for i in range(n_jpgs)], flac=data["flac"].tobytes(),
                         model_id=json.loads(data["meta"].tobytes())["model_id"])


def read_outcome(path: str) -> ClipOutcome:
    with _npz(path) as data:
        return ClipOutcome(**json.loads(data["meta"].tobytes())["outcome"])


def fetch_job(job: ClipJob, raw_dir: Path, fetch_cfg: FetchConfig = DEFAULT_FETCH, gate: FetchGate | None = None):
    """The clip's source as a local file under `raw_dir` (fetched once, reused by later runs)."""
    if job.path is not None:
        return fetch_local(job.path, job.clip_id, job.start_s, job.end_s, raw_dir, fetch_cfg)
    return fetch_remote(job.clip_id, job.ytid, job.url, job.start_s, job.end_s, raw_dir, fetch_cfg, gate)


def _moment_arrays(times: np.ndarray, scores: np.ndarray, contrastive: np.ndarray | None, frames, cfg: RunConfig):
    """Rank and select the clip's moments; JPEG the chosen frames (`frames(indices)` decodes them)."""
    basis = contrastive if cfg.select.clip_score == "score_contrastive" else None
    moments = select_moments(times, scores, cfg.select, basis, given=cfg.score.scorer == "moments")
    arrays = {"rank": moments.ranks, "selected": moments.selected}
    for i, frame in enumerate(frames(moments.selected)):
        arrays[f"jpg{i}"] = np.frombuffer(encode_jpeg(frame, cfg.write.jpeg_quality), dtype=np.uint8)
    return moments, arrays


def _minor_page_faults() -> int:
    """The calling thread's minor page faults so far (the process's where the OS counts no thread's own)."""
    return resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)).ru_minflt


def _score_clip(job: ClipJob, cfg: RunConfig, raw_dir: Path, started: float, gate: FetchGate | None):
    scorer = load_scorer(cfg.score)
    # a moments file names the clip's frames: a clip it does not list fails here, before it is fetched
    given = scorer.frames_of(job.clip_id, job.ytid, job.start_s) if isinstance(scorer, MomentsScorer) else None
    fetched = fetch_job(job, raw_dir, cfg.fetch, gate)
    clip = decode_clip(fetched.path, fetched.offset_s, fetched.offset_s + job.end_s - job.start_s, cfg.decode,
                       fetched.info)
    faults_before, score_started = _minor_page_faults(), time.perf_counter()
    result = scorer.score(clip) if given is None else scorer.result(given, clip.times)
    score_s, score_page_faults = time.perf_counter() - score_started, _minor_page_faults() - faults_before
    moments, arrays = _moment_arrays(clip.times, result.scores, result.contrastive,
                                     lambda idx: clip.frames[idx], cfg)
    arrays.update(t=clip.times, score=result.scores,
                  flac=np.frombuffer(encode_flac(clip.audio, clip.sample_rate), dtype=np.uint8))
    if result.contrastive is not None:
        arrays["contrastive"] = result.contrastive
    if result.maps is not None:
        arrays["maps"] = result.maps.astype(np.float16)
        if cfg.score.save_maps:
            buf = io.BytesIO()
            np.save(buf, arrays["maps"])
            atomic_write_bytes(raw_dir.parent / "maps" / f"{job.clip_id}.npy", buf.getvalue())
    quality = signals_dict(measure(clip.frames, clip.audio, clip.sample_rate))
    outcome = ClipOutcome(job.clip_id, scored=True, clip_score=moments.clip_score, n_frames=len(clip.times),
                          seconds=time.perf_counter() - started, score_s=score_s, score_page_faults=score_page_faults,
                          quality=quality)
    return outcome, arrays, scorer.model_id


def process_clip(job: ClipJob, cfg: RunConfig, raw_dir: Path, cache_dir: str,
                 gate: FetchGate | None = None) -> ClipOutcome:
    """Process one clip unless its cache file exists; every failure becomes a recorded outcome."""
    path = cache_path(cache_dir, job.clip_id)
    if storage.exists(path):
        return replace(read_outcome(path), from_cache=True)
    started = time.perf_counter()
    try:
        outcome, arrays, model_id = _score_clip(job, cfg, raw_dir, started, gate)
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


def import_decoders() -> None:
    """Import the decoders on a worker before its first task (once per process)."""
    import decord  # noqa: F401
    import torchcodec.decoders  # noqa: F401


def warm_up(cfg: RunConfig) -> str:
    """Ready a worker before its first scoring task (once per process): import the decoders, build the scorer
    and score one blank 10-s 16:9 clip, so the first real clips pay neither the model's first-call costs nor
    the heap's growth (~7,000 page faults, a quarter of a clip's scoring time)."""
    import_decoders()
    scorer = load_scorer(cfg.score)
    d = cfg.decode
    n_frames = int(10 * d.fps)
    blank = DecodedClip(frames=np.zeros((n_frames, d.short_side, d.short_side * 16 // 9, 3), dtype=np.uint8),
                        times=np.arange(n_frames) / d.fps, audio=np.zeros(10 * d.sample_rate, dtype=np.float32),
                        sample_rate=d.sample_rate, window_s=d.window_s)
    if not isinstance(scorer, MomentsScorer):  # reads a file, no model to warm
        scorer.score(blank)
    measure(blank.frames, blank.audio, blank.sample_rate)  # the filters' first call pays numpy's set-up, not a clip
    return scorer.model_id


def _process_staged(job: ClipJob, cfg: RunConfig, out: str, scratch: Path, cache_dir: str,
                    gate: FetchGate | None) -> ClipOutcome:
    """`process_clip` with OUT on an object store: the clip's raw files pass through the task's scratch folder."""
    if storage.exists(cache_path(cache_dir, job.clip_id)):
        return replace(read_outcome(cache_path(cache_dir, job.clip_id)), from_cache=True)
    path, present = stage_in(job.clip_id, job.path, out, scratch)
    try:
        return process_clip(replace(job, path=path), cfg, scratch / "raw", cache_dir, gate)
    finally:
        stage_out(job.clip_id, out, scratch, present)


def process_group(jobs: list[ClipJob], cfg: RunConfig, raw_dir: str, cache_dir: str,
                  gate: FetchGate | None = None) -> list[ClipOutcome]:
    """One Dask task: a group of clips, processed in order on one worker. Once `gate` says the run is
    stopping, the rest of the group is left out (those clips stay pending). `raw_dir` and `cache_dir` are
    local folders or URLs (then each clip's files pass through a scratch folder of this task's own)."""
    remote = storage.is_url(raw_dir)
    if not remote:
        Path(raw_dir).mkdir(parents=True, exist_ok=True)
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="s2s-clip-") as scratch:
        (Path(scratch) / "raw").mkdir()
        for job in jobs:
            if gate is not None and gate.stopped():
                break
            outcomes.append(_process_staged(job, cfg, storage.parent(raw_dir), Path(scratch), cache_dir, gate)
                            if remote else process_clip(job, cfg, Path(raw_dir), cache_dir, gate))
    return outcomes


def reselect_clip(job: ClipJob, cfg: RunConfig, raw_dir: Path, old_cache: str, new_cache: str) -> ClipOutcome:
    """Re-rank a scored clip under new selection options without re-scoring: decode only the chosen frames."""
    target = cache_path(new_cache, job.clip_id)
    if storage.exists(target):
        return read_outcome(target)
    old = read_cached(cache_path(old_cache, job.clip_id))
    if not old.outcome.scored:
        _save(target, old.outcome, {}, old.model_id)
        return old.outcome
    started = time.perf_counter()
    fetched = fetch_job(job, raw_dir, cfg.fetch)

    def frames(indices: np.ndarray) -> np.ndarray:
        return read_frames(fetched.path, fetched.offset_s, old.times[indices], cfg.decode, fetched.info)

    moments, arrays = _moment_arrays(old.times, old.scores, old.contrastive, frames, cfg)
    arrays.update(t=old.times, score=old.scores, flac=np.frombuffer(old.flac, dtype=np.uint8))
    if old.contrastive is not None:
        arrays["contrastive"] = old.contrastive
    if old.maps is not None:
        arrays["maps"] = old.maps
    outcome = replace(old.outcome, clip_score=moments.clip_score, seconds=time.perf_counter() - started)
    _save(target, outcome, arrays, old.model_id)
    return outcome


def reselect_group(jobs: list[ClipJob], cfg: RunConfig, raw_dir: str, old_cache: str,
                   new_cache: str) -> list[ClipOutcome]:
    """One Dask task of `curation select`."""
    Path(new_cache).mkdir(parents=True, exist_ok=True)
    return [reselect_clip(job, cfg, Path(raw_dir), old_cache, new_cache) for job in jobs]
