"""One clip through fetch -> decode -> score -> select, its result stored as one atomic cache file.

A clip that has its cache file (`curation.clip_cache`) is done: a rerun skips it. Plain functions, no Dask: the
pipeline maps `process_group` over groups of clips (`scoring_workers` splits the same work across CPU and
scoring workers).
"""

from __future__ import annotations

import io
import logging
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from curation import storage
from curation.clip_cache import (
    ClipJob,
    ClipSummary,
    cache_path,
    cached_summary,
    read_cached,
    read_summary,
    write_cached,
)
from curation.config import RunConfig
from curation.decode import DecodedClip, read_frames
from curation.errors import ClipError
from curation.fetch.clip import FetchGate, fetch_job
from curation.fetch_decode import decode_job
from curation.localise.clip_scores import ClipScores
from curation.localise.scorers import load_scorer, scorer_kind
from curation.outputs.sample_media import encode_flac, encode_jpeg
from curation.quality import measure, signals_dict
from curation.select import select_moments
from manifests.io import atomic_write_bytes
from manifests.layout import RunLayout

log = logging.getLogger(__name__)


def _moment_arrays(times: np.ndarray, scores: np.ndarray, contrastive: np.ndarray | None, frames, cfg: RunConfig):
    """Rank and select the clip's moments; JPEG the chosen frames (`frames(indices)` decodes them)."""
    basis = contrastive if cfg.select.clip_score == "score_contrastive" else None
    moments = select_moments(times, scores, cfg.select, basis, given=scorer_kind(cfg.score.scorer).given_moments)
    arrays = {"rank": moments.ranks, "selected": moments.selected}
    for i, frame in enumerate(frames(moments.selected)):
        arrays[f"jpg{i}"] = np.frombuffer(encode_jpeg(frame, cfg.write.jpeg_quality), dtype=np.uint8)
    return moments, arrays


def _minor_page_faults() -> int:
    """The calling thread's minor page faults so far (the process's where the OS counts no thread's own)."""
    return resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)).ru_minflt


def scored_arrays(job: ClipJob, clip: DecodedClip, clip_scores: ClipScores, cfg: RunConfig, layout: RunLayout,
                  started: float, score_s: float, score_page_faults: int) -> tuple[ClipSummary, dict[str, np.ndarray]]:
    """A scored clip's summary and cache arrays: moments, JPEGs of the chosen frames, FLAC, maps (with
    `score.save_maps` also written to the local `layout`'s maps folder), quality."""
    moments, arrays = _moment_arrays(clip.times, clip_scores.scores, clip_scores.contrastive,
                                     lambda idx: clip.frames[idx], cfg)
    arrays.update(t=clip.times, score=clip_scores.scores,
                  flac=np.frombuffer(encode_flac(clip.audio, clip.sample_rate), dtype=np.uint8))
    if clip_scores.contrastive is not None:
        arrays["contrastive"] = clip_scores.contrastive
    if clip_scores.maps is not None:
        arrays["maps"] = clip_scores.maps.astype(np.float16)
        if cfg.score.save_maps:
            buf = io.BytesIO()
            np.save(buf, arrays["maps"])
            atomic_write_bytes(layout.clip_map(job.clip_id), buf.getvalue())
    quality = signals_dict(measure(clip.frames, clip.audio, clip.sample_rate))
    summary = ClipSummary(job.clip_id, scored=True, clip_score=moments.clip_score, n_frames=len(clip.times),
                          seconds=time.perf_counter() - started, score_s=score_s, score_page_faults=score_page_faults,
                          quality=quality, audio_tiled=clip.audio_tiled)
    return summary, arrays


def _score_clip(job: ClipJob, cfg: RunConfig, raw_dir: Path, started: float, gate: FetchGate | None):
    scorer = load_scorer(cfg.score)
    clip_scorer = scorer.for_clip(job)  # e.g. a clip a moments file does not list fails here, before it is fetched
    clip = decode_job(job, cfg, raw_dir, gate)
    faults_before, score_started = _minor_page_faults(), time.perf_counter()
    clip_scores = clip_scorer.score(clip)
    score_s, score_page_faults = time.perf_counter() - score_started, _minor_page_faults() - faults_before
    summary, arrays = scored_arrays(job, clip, clip_scores, cfg, RunLayout.of_raw(raw_dir), started, score_s,
                                    score_page_faults)
    return summary, arrays, scorer.model_id


def process_clip(job: ClipJob, cfg: RunConfig, raw_dir: Path, cache_dir: str,
                 gate: FetchGate | None = None) -> ClipSummary:
    """Process one clip unless its cache file exists (and holds under `decode.short_clips`); every failure becomes
    a recorded summary."""
    cached = cached_summary(cache_path(cache_dir, job.clip_id), cfg.decode.short_clips)
    return cached if cached is not None else _process_uncached(job, cfg, raw_dir, cache_dir, gate)


def _process_uncached(job: ClipJob, cfg: RunConfig, raw_dir: Path, cache_dir: str,
                      gate: FetchGate | None) -> ClipSummary:
    """Fetch, decode and score a clip whose cache file is not usable, and write it."""
    started = time.perf_counter()
    try:
        summary, arrays, model_id = _score_clip(job, cfg, raw_dir, started, gate)
    except ClipError as exc:
        summary = ClipSummary(job.clip_id, scored=False, error_kind=exc.kind, error=str(exc),
                              seconds=time.perf_counter() - started)
        arrays, model_id = {}, None
    except Exception as exc:  # a bug must not sink the run; not cached, so a rerun tries the clip again
        log.exception("unexpected failure on clip %s", job.clip_id)
        return ClipSummary(job.clip_id, scored=False, error_kind="internal_error",
                           error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - started)
    write_cached(cache_path(cache_dir, job.clip_id), summary, arrays, model_id)
    return summary


def import_decoders() -> None:
    """Import the decoders on a worker before its first task (once per process)."""
    import decord  # noqa: F401
    import torchcodec.decoders  # noqa: F401


def blank_clip(cfg: RunConfig) -> DecodedClip:
    """A black, silent 10-s 16:9 clip at the decode settings: what warm-ups score."""
    d, n_frames = cfg.decode, int(10 * cfg.decode.fps)
    return DecodedClip(frames=np.zeros((n_frames, d.short_side, d.short_side * 16 // 9, 3), dtype=np.uint8),
                       times=np.arange(n_frames) / d.fps, audio=np.zeros(10 * d.sample_rate, dtype=np.float32),
                       sample_rate=d.sample_rate, window_s=d.window_s)


class WarmedUp(NamedTuple):
    model_id: str  # the scorer the worker built
    frames_scored: int  # of the blank clip (0 for a scorer that runs no model)


def warm_up(cfg: RunConfig) -> WarmedUp:
    """Ready a worker before its first scoring task (once per process): import the decoders, build the scorer
    and score one blank 10-s 16:9 clip, so the first real clips pay neither the model's first-call costs nor
    the heap's growth (~7,000 page faults, a quarter of a clip's scoring time)."""
    import_decoders()
    scorer = load_scorer(cfg.score)
    blank = blank_clip(cfg)
    frames = scorer.warm(blank)
    measure(blank.frames, blank.audio, blank.sample_rate)  # the filters' first call pays numpy's set-up, not a clip
    return WarmedUp(scorer.model_id, frames)


def _process_in(ws: storage.Workspace, job: ClipJob, cfg: RunConfig, cache_dir: str,
                gate: FetchGate | None) -> ClipSummary:
    """`process_clip` in a workspace: the clip's earlier fetch is brought there first, what it makes is committed
    after (nothing to move when OUT is local)."""
    if (cached := cached_summary(cache_path(cache_dir, job.clip_id), cfg.decode.short_clips)) is not None:
        return cached  # nothing of the clip is brought into the workspace
    with ws.clip(job.clip_id, job.path) as path:
        return _process_uncached(replace(job, path=path), cfg, Path(ws.layout.raw), cache_dir, gate)


def process_group(jobs: list[ClipJob], cfg: RunConfig, folder: storage.RunFolder, cache_dir: str,
                  gate: FetchGate | None = None) -> list[ClipSummary]:
    """One Dask task: a group of clips, processed in order on one worker in a workspace of OUT (`folder`). Once
    `gate` says the run is stopping, the rest of the group is left out (those clips stay pending). `cache_dir`
    is a local folder or a URL."""
    storage.makedirs(cache_dir)
    summaries = []
    with folder.workspace("s2s-clip-") as ws:
        Path(ws.layout.raw).mkdir(parents=True, exist_ok=True)
        for job in jobs:
            if gate is not None and gate.stopped():
                break
            summaries.append(_process_in(ws, job, cfg, cache_dir, gate))
    return summaries


def _reselect_uncached(job: ClipJob, cfg: RunConfig, raw_dir: Path, old_cache: str,
                       new_cache: str) -> ClipSummary:
    """Re-rank a scored clip under new selection options without re-scoring (decode only the chosen frames), and
    write its new cache file."""
    target = cache_path(new_cache, job.clip_id)
    old = read_cached(cache_path(old_cache, job.clip_id))
    if not old.summary.scored:
        write_cached(target, old.summary, {}, old.model_id)
        return old.summary
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
    summary = replace(old.summary, clip_score=moments.clip_score, seconds=time.perf_counter() - started)
    write_cached(target, summary, arrays, old.model_id)
    return summary


def _reselect_in(ws: storage.Workspace, job: ClipJob, cfg: RunConfig, old_cache: str,
                 new_cache: str) -> ClipSummary:
    """A clip of `curation select` in a workspace, as `_process_in`: its new cache file, made unless it exists."""
    if storage.exists(cache_path(new_cache, job.clip_id)):
        return read_summary(cache_path(new_cache, job.clip_id))
    with ws.clip(job.clip_id, job.path) as path:
        return _reselect_uncached(replace(job, path=path), cfg, Path(ws.layout.raw), old_cache, new_cache)


def reselect_group(jobs: list[ClipJob], cfg: RunConfig, folder: storage.RunFolder, old_cache: str,
                   new_cache: str) -> list[ClipSummary]:
    """One Dask task of `curation select` (the caches: local folders or URLs, as `process_group`)."""
    storage.makedirs(new_cache)
    with folder.workspace("s2s-clip-") as ws:
        Path(ws.layout.raw).mkdir(parents=True, exist_ok=True)
        return [_reselect_in(ws, job, cfg, old_cache, new_cache) for job in jobs]
