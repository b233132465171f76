"""A clip job's frames and audio: its source fetched into `raw_dir` (once; later runs reuse it) and decoded. The one
fetch -> decode sequence of the per-clip task, ssl-train and a published localiser's reference bank."""

from __future__ import annotations

from pathlib import Path

from curation.clip_cache import ClipJob
from curation.config import DecodeConfig, RunConfig
from curation.decode import DecodedClip, decode_clip
from curation.fetch.clip import FetchGate, fetch_job


def decode_job(job: ClipJob, cfg: RunConfig, raw_dir: Path, gate: FetchGate | None = None,
               decode: DecodeConfig | None = None) -> DecodedClip:
    """The clip of `job`, decoded with `decode` (default: the run's `cfg.decode`)."""
    fetched = fetch_job(job, raw_dir, cfg.fetch, gate)
    return decode_clip(fetched.path, fetched.offset_s, fetched.offset_s + job.end_s - job.start_s,
                       decode or cfg.decode, fetched.info)
