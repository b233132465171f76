"""The official Sound2Scene moments format (`top1_boxes_top10_moments.json`), both ways.

The file maps `<ytid>_<start_ms>_<end_ms>` to the 10 best frame numbers of the clip at 10 fps, best first. The
numbers are 1-based: the official README calls them "the 47th frame" and has users extract frames at 10 fps, which
ffmpeg numbers from 1; so frame n is at (n - 1) / 10 s into the clip (`score.moments_first_frame` = 0 reads a
0-based file). `SCORER=moments` curates from such a file (a local path or a URL) instead of scoring;
`export-moments` writes one from a curated run, with the `images/<key>.jpg` + `audios/<key>.wav` pairs the
official data loader reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
from PIL import Image
from scipy.signal import resample_poly

from curation import storage
from curation.config import RunConfig, ScoreConfig
from curation.errors import ClipError, UsageError
from curation.localise.clip_scores import ClipScores
from curation.localise.scorers import Scorer, ScorerKind

if TYPE_CHECKING:
    from curation.clip_cache import ClipJob

FPS = 10  # the official frames are extracted at 10 fps
TOP = 10
SIDE = 224  # the official images/<key>.jpg are 224 x 224
RATE = 16000  # and the audios/<key>.wav 16 kHz mono
FILE_NAME = "top1_boxes_top10_moments.json"
# `<ytid>_<start_ms>_<end_ms>` (official; ours zero-padded) or the mirrors' `<ytid>_<start:06d>`
_KEY_MS = re.compile(r"(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>\d+)_(?P<end>\d+)")
_KEY_S = re.compile(r"(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>\d{6})")


class MomentsError(UsageError):
    """A moments file that cannot be used (missing, not JSON, not the official form)."""


def read_moments(path: str | Path) -> dict[str, list[int]]:
    """The file's {key: frame numbers}; the top level may also be a list holding that dict (one third-party
    reader indexes the official file at [1])."""
    try:
        data = json.loads(storage.read_bytes(str(path)))
    except FileNotFoundError:
        raise MomentsError(f"score.moments: no such file {path} (MOMENTS= a {FILE_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MomentsError(f"score.moments: cannot read {path} as JSON ({exc})") from None
    if isinstance(data, list):
        dicts = [item for item in data if isinstance(item, dict)]
        data = {k: v for item in dicts for k, v in item.items()} if dicts else None
    if not isinstance(data, dict) or not data:
        raise MomentsError(f"score.moments: {path} is not a moments file (expected {{\"<ytid>_<start_ms>_<end_ms>\": "
                           "[frame numbers, best first], ...}})")
    for key, numbers in data.items():
        if not isinstance(numbers, list) or not numbers or not all(type(n) is int and n >= 0 for n in numbers):
            raise MomentsError(f"score.moments: {path}: entry {key!r} is {numbers!r}, not a list of frame numbers")
    return data


def official_key(ytid: str | None, start_s: float, end_s: float, clip_id: str) -> str:
    """`<ytid>_<start_ms>_<end_ms>` (unpadded, as the official file); a clip without a YouTube id keeps its id."""
    return f"{ytid}_{round(start_s * 1000)}_{round(end_s * 1000)}" if ytid else clip_id


def _digest(path: str | Path) -> str:
    return hashlib.sha256(storage.read_bytes(str(path))).hexdigest()


class MomentsScorer(Scorer):
    """Not a model: the frames a moments file names. Keys match a clip by YouTube id and start, in either naming,
    or by clip id; a clip the file does not list fails as `not_in_moments` before it is fetched (`for_clip`)."""

    def __init__(self, cfg: ScoreConfig):
        self.path, self.first_frame = cfg.moments, cfg.moments_first_frame
        self.by_start: dict[tuple[str, int], list[int]] = {}
        self.by_id = read_moments(cfg.moments)
        for key, numbers in self.by_id.items():
            if m := _KEY_MS.fullmatch(key):
                self.by_start[(m["ytid"], int(m["start"]))] = numbers
            elif m := _KEY_S.fullmatch(key):
                self.by_start[(m["ytid"], int(m["start"]) * 1000)] = numbers
        self.model_id = f"moments-{_digest(cfg.moments)[:12]}"

    def frames_of(self, clip_id: str, ytid: str | None, start_s: float) -> list[int]:
        numbers = self.by_start.get((ytid, round(start_s * 1000))) if ytid else None
        numbers = numbers or self.by_id.get(clip_id)
        if numbers is None:
            raise ClipError("not_in_moments", f"{clip_id} is not listed in the moments file {self.path}")
        return numbers

    def for_clip(self, job: ClipJob) -> Scorer:
        return _ListedFrames(self, self.frames_of(job.clip_id, job.ytid, job.start_s))

    def warm(self, clip) -> int:
        """Nothing to warm: it reads a file, it runs no model (no frame scored)."""
        return 0

    def clip_scores(self, numbers: list[int], times: np.ndarray) -> ClipScores:
        """The listed frames as scores: the i-th of k scores (k - i) / k, every other frame 0; `select_moments`
        with `given=True` then keeps them in the file's order."""
        fps = 1.0 / (times[1] - times[0]) if len(times) > 1 else FPS
        index = [int(round((n - self.first_frame) / FPS * fps)) for n in numbers]
        index = list(dict.fromkeys(i for i in index if 0 <= i < len(times)))  # nearest decoded frame, once each
        if not index:
            raise ClipError("moments_out_of_range", f"frame numbers {numbers} fall outside the clip's "
                                                    f"{len(times)} frames")
        scores = np.zeros(len(times), dtype=np.float32)
        scores[index] = (len(index) - np.arange(len(index))) / len(index)
        return ClipScores(scores=scores)


class _ListedFrames(Scorer):
    """One clip's scorer: the frames the moments file lists for it."""

    def __init__(self, scorer: MomentsScorer, numbers: list[int]):
        self.scorer, self.numbers, self.model_id = scorer, numbers, scorer.model_id

    def score(self, clip) -> ClipScores:
        return self.scorer.clip_scores(self.numbers, clip.times)


class MomentsKind(ScorerKind):
    given_moments = True

    def prepare(self, cfg: RunConfig, jobs: list[ClipJob], out: storage.RunFolder,
                progress: bool) -> tuple[RunConfig, str | None]:
        return resolve_moments(cfg)

    def build(self, score: ScoreConfig) -> Scorer:
        return MomentsScorer(score)


def resolve_moments(cfg: RunConfig) -> tuple[RunConfig, str]:
    """Check the moments file now (one line if it is wrong) and make it the selection: every listed clip is kept
    (no clip-score threshold or quantile). Returns the config and the file's sha256 (part of the cache key)."""
    read_moments(cfg.score.moments)
    return replace(cfg, select=replace(cfg.select, keep_quantile=None, min_clip_score=None)), _digest(cfg.score.moments)


def frame_numbers(selected: np.ndarray, ranks: np.ndarray, times: np.ndarray, first_frame: int = 1) -> list[int]:
    """The clip's 10 best frames as 10-fps numbers: the moments the run selected first (in order, so a run that
    reads the file back keeps the same ones), then the other frames by rank."""
    chosen = set(selected.tolist())
    order = list(selected) + [i for i in np.argsort(ranks, kind="stable") if i not in chosen]
    numbers = (int(round(times[i] * FPS)) + first_frame for i in order)
    return list(dict.fromkeys(numbers))[:TOP]


def square_jpeg(jpg: bytes, quality: int) -> bytes:
    """The frame resized whole to 224 x 224 (bicubic, as the official and EZ-VSL loaders resize)."""
    image = Image.open(io.BytesIO(jpg)).convert("RGB").resize((SIDE, SIDE), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def wav_16k(flac: bytes) -> bytes:
    """The clip's audio as 16 kHz mono 16-bit PCM WAV."""
    audio, rate = soundfile.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != RATE:
        audio = resample_poly(audio, RATE, rate).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(audio, -1.0, 1.0), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()
