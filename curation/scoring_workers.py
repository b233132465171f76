"""The per-clip wave when scoring runs on workers of its own (`dask.score_resource`, e.g. GPU workers).

Plain functions over one group of clips; `pipeline` wires them as Dask tasks:
1. `prepare_group` (any worker): a clip with a cache file is done; the others are fetched and decoded, and their
   model inputs made (frames at the model's input size, the audio). Fetch and decode failures are recorded
   summaries, cached as in the per-clip path. The decoded clips stay on this worker.
2. `model_inputs` (the same worker) picks out the small inputs; `score_inputs` (a worker offering the resource)
   scores the group's clips together in batches of `score.batch_size` frames that run across clips
   (`DeviceScorer.score_across`).
3. `finish_group` (where the decoded clips are): moment choice, JPEGs of the chosen frames, FLAC, quality signals
   and one atomic cache file per clip: the same arrays as `clip_task.process_clip` makes from the same scores.
A scoring failure (e.g. CUDA out of memory) fails the group's clips as `internal_error`, not cached, so a rerun
scores them again; a rerun skips every clip with a cache file, as in the per-clip path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from curation import storage
from curation.clip_cache import ClipJob, ClipSummary, cache_path, cached_summary, write_cached
from curation.clip_task import blank_clip, import_decoders, scored_arrays
from curation.config import RunConfig, ScoreConfig
from curation.decode import DecodedClip
from curation.errors import ClipError
from curation.fetch.clip import FetchGate
from curation.fetch_decode import decode_job
from curation.localise.clip_scores import ClipScores
from curation.localise.device import ModelInputs
from curation.localise.scorers import load_scorer
from curation.quality import measure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedClip:
    job: ClipJob
    clip: DecodedClip  # full frames (for the chosen moments' JPEGs) and audio (for the FLAC)
    inputs: ModelInputs
    seconds: float  # spent fetching, decoding and preparing


@dataclass(frozen=True)
class PreparedGroup:
    done: list[ClipSummary]  # clips read from their cache files, or failed before scoring
    clips: list[PreparedClip]


@dataclass(frozen=True)
class GroupScores:
    per_clip: list[ClipScores] | None  # one per prepared clip; None when scoring failed
    error: str | None
    seconds: float
    model_id: str


def input_config(score: ScoreConfig) -> ScoreConfig:
    """The scorer a CPU worker loads to make model inputs: the same model, kept on the CPU."""
    return replace(score, device="cpu", precision="fp32")


def _failed(job: ClipJob, exc: Exception, started: float) -> ClipSummary:
    return ClipSummary(job.clip_id, scored=False, error_kind=exc.kind, error=str(exc),
                       seconds=time.perf_counter() - started)


def _internal_error(job: ClipJob, error: str, seconds: float) -> ClipSummary:
    return ClipSummary(job.clip_id, scored=False, error_kind="internal_error", error=error, seconds=seconds)


def _decode(job: ClipJob, cfg: RunConfig, ws: storage.Workspace, gate: FetchGate | None) -> DecodedClip:
    """Fetch and decode one clip in the workspace (its raw files brought there and committed, as a clip task's)."""
    with ws.clip(job.clip_id, job.path) as path:
        return decode_job(replace(job, path=path), cfg, Path(ws.layout.raw), gate)


def prepare_group(jobs: list[ClipJob], cfg: RunConfig, folder: storage.RunFolder, cache_dir: str,
                  gate: FetchGate | None = None) -> PreparedGroup:
    """Step 1 (any worker): cached clips and failures as summaries, the other clips decoded with their model inputs.
    Once `gate` says the run is stopping, the rest of the group is left out (those clips stay pending)."""
    storage.makedirs(cache_dir)
    scorer = load_scorer(input_config(cfg.score))
    done, clips = [], []
    with folder.workspace("s2s-clip-") as ws:
        Path(ws.layout.raw).mkdir(parents=True, exist_ok=True)
        for job in jobs:
            if gate is not None and gate.stopped():
                break
            path = cache_path(cache_dir, job.clip_id)
            if (cached := cached_summary(path, cfg.decode.short_clips)) is not None:
                done.append(cached)
                continue
            started = time.perf_counter()
            try:
                clip = _decode(job, cfg, ws, gate)
                clips.append(PreparedClip(job, clip, scorer.inputs(clip), time.perf_counter() - started))
            except ClipError as exc:
                summary = _failed(job, exc, started)
                write_cached(path, summary, {}, None)
                done.append(summary)
            except Exception as exc:  # a bug must not sink the run; not cached, so a rerun tries the clip again
                log.exception("unexpected failure on clip %s", job.clip_id)
                done.append(_internal_error(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - started))
    return PreparedGroup(done, clips)


def model_inputs(group: PreparedGroup) -> list[ModelInputs]:
    """What travels to the scoring worker."""
    return [p.inputs for p in group.clips]


def score_inputs(inputs: list[ModelInputs], cfg: RunConfig) -> GroupScores:
    """Step 2 (a scoring worker): the group's clips scored in batches across clips on `score.device`."""
    scorer = load_scorer(cfg.score)
    started = time.perf_counter()
    if not inputs:
        return GroupScores([], None, 0.0, scorer.model_id)
    try:
        per_clip = scorer.score_across(inputs)
    except Exception as exc:  # e.g. CUDA out of memory at this batch size: the clips fail, uncached
        log.exception("scoring a group of %d clips failed", len(inputs))
        return GroupScores(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started, scorer.model_id)
    return GroupScores(per_clip, None, time.perf_counter() - started, scorer.model_id)


def _finish_clip(prepared: PreparedClip, clip_scores: ClipScores, score_s: float, cfg: RunConfig,
                 folder: storage.RunFolder, cache_dir: str, model_id: str) -> ClipSummary:
    job, started = prepared.job, time.perf_counter() - prepared.seconds - score_s
    try:
        with folder.workspace("s2s-clip-") as ws:  # where `score.save_maps` writes, committed to OUT
            summary, arrays = scored_arrays(job, prepared.clip, clip_scores, cfg, ws.layout, started, score_s, 0)
            ws.commit_clip(job.clip_id)
    except ClipError as exc:
        summary, arrays, model_id = _failed(job, exc, started), {}, None
    except Exception as exc:  # not cached, so a rerun tries the clip again
        log.exception("unexpected failure on clip %s", job.clip_id)
        return _internal_error(job, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    write_cached(cache_path(cache_dir, job.clip_id), summary, arrays, model_id)
    return summary


def finish_group(group: PreparedGroup, scores: GroupScores, cfg: RunConfig, folder: storage.RunFolder,
                 cache_dir: str) -> list[ClipSummary]:
    """Step 3 (where the decoded clips are): every clip's cache file from its scores; the group's summaries.
    Each clip is charged its share (by frames) of the scoring task's time as `score_s`."""
    summaries = list(group.done)
    frames = sum(p.inputs.n_frames for p in group.clips) or 1
    for i, prepared in enumerate(group.clips):
        share = scores.seconds * prepared.inputs.n_frames / frames
        if scores.per_clip is None:
            summaries.append(_internal_error(prepared.job, scores.error or "scoring failed", prepared.seconds + share))
            continue
        summaries.append(_finish_clip(prepared, scores.per_clip[i], share, cfg, folder, cache_dir, scores.model_id))
    return summaries


def warm_up(cfg: RunConfig, scoring: bool) -> str:
    """Ready a worker before its first task: decoders, the CPU copy of the model and the quality filters on a
    blank 10-s clip; a scoring worker also builds the scorer on its device and scores the blank clip's inputs
    (a device this machine lacks fails here, in one line, before any clip)."""
    import_decoders()
    blank = blank_clip(cfg)
    inputs = load_scorer(input_config(cfg.score)).inputs(blank)
    measure(blank.frames, blank.audio, blank.sample_rate)
    if scoring:
        scorer = load_scorer(cfg.score)
        scorer.score_across([inputs])
        return f"{scorer.model_id} on {scorer.device} ({scorer.precision})"
    return "prepares inputs"
