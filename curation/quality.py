"""Data-quality filters: still video, silent audio, near-duplicate clips, overlapping windows.

Per clip (on the worker, from the frames and audio already decoded for scoring) `measure` computes ~0.8 KB
of signals: a motion level, a loudness level, 64-bit difference hashes of thumbnails at 5 fps, a loudness
envelope at 10 Hz and a band spectrum. They travel in the clip's small outcome, so the client groups
duplicates over the whole run with a band index (no all-pairs comparison) and never sees media.
`docs/quality_filters.md` says how the thresholds were chosen and what they measure.
"""

from __future__ import annotations

import base64
import bisect
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

from curation.config import FilterConfig

GRID = (32, 36)  # thumbnail (rows, cols) for motion; 4 x 4 blocks of it make the 8 x 9 hash grid
HASH_STEP = 2  # every 2nd decoded frame (5 fps at the default 10): half the bytes and time, shifts still resolved
BLOCK_S = 0.1  # audio envelope block
FLAT_GRID_STD = 2.0  # a hash grid flatter than this (grey levels) is a blank frame: its bits are noise
MAX_BUCKET = 64  # index keys shared by more clips than this (title cards, black frames) select no candidates
MIN_SHARED_KEYS = 1  # a candidate pair shares at least this many index keys (a static scene has few hashes)
# (shift, bits): 2 bands of a hash; a copy's hash with a few flipped bits often keeps one of them, and a clip has
# ~30 distinct hashes, so copies share several keys; 32-bit keys keep chance collisions rare at 200k clips
BANDS = ((32, 32), (0, 32))
FLOOR_DB = -80.0
SPECTRUM_BANDS = np.geomspace(60.0, 6000.0, 17)  # 16 bands; above 6 kHz low-bitrate re-encodes cut
SPECTRUM_FRAME = 1024
SPECTRUM_RANGE = 40.0  # dB below the loudest band that the spectrum comparison looks at
MIN_OVERLAP_FRACTION = 0.5  # duplicates share at least half of the shorter clip (and dup_min_overlap_s)
MOTION_RATIO = 3.0  # copies move alike: motion levels (+ MOTION_FLOOR) within this factor (a frozen frame of a
MOTION_FLOOR = 0.5  # moving scene has the scene's hashes, not its motion)
AUDIO_SEARCH = 2  # audio blocks searched either side of the video's alignment (its 0.2-s grid)
MIN_AUDIO_STD_DB = 1.0  # an envelope flatter than this (silence, steady noise) says nothing about identity


@dataclass(frozen=True)
class Signals:
    """What the filters need of one clip; JSON-ready (it is stored in the clip's outcome and cache file)."""

    motion: float  # grey levels (green): 98th percentile over thumbnail blocks of their standard deviation in time
    loud_db: float  # dBFS: the 90th percentile of 100-ms block levels (silent clips stay low all through)
    vhash: str  # base64 of big-endian uint64 dHashes, one per HASH_STEP frames
    flat: str  # base64 of packed bits: which hashed frames are blank (not indexed)
    aenv: str  # base64 of int8 block levels in dB (gain shifts it, correlation ignores that)
    aspec: str  # base64 of int8 mean levels (dB) in SPECTRUM_BANDS log-spaced bands: tells steady sounds apart
    seconds: float  # time spent here (the filters' cost per clip)


def _thumbnails(frames: np.ndarray) -> np.ndarray:
    """(T, 32, 36) float32 block means of the green channel (close to luma at a third of the work; every 2nd
    pixel, as the blocks average them anyway). Block edges follow the frame's own size, so a copy decoded a
    few pixels narrower gets the same blocks."""
    green = frames[:, ::2, ::2, 1]
    rows, cols = GRID
    row_edges = np.linspace(0, green.shape[1], rows + 1).astype(np.int64)
    col_edges = np.linspace(0, green.shape[2], cols + 1).astype(np.int64)
    sums = np.add.reduceat(np.add.reduceat(green, row_edges[:-1], axis=1, dtype=np.uint32), col_edges[:-1], axis=2)
    return sums.astype(np.float32) / np.outer(np.diff(row_edges), np.diff(col_edges)).astype(np.float32)


def _dhash(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit difference hashes of (T, 32, 36) thumbnails (8 x 9 grid, left < right), and which are blank."""
    t = len(thumbs)
    grid = thumbs.reshape(t, 8, 4, 9, 4).mean(axis=(2, 4))
    bits = (grid[:, :, 1:] > grid[:, :, :-1]).reshape(t, 64)
    hashes = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)
    return hashes, grid.reshape(t, -1).std(axis=1) < FLAT_GRID_STD


def _envelope_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Block levels in dBFS, floored at -80: below that, codec noise and digital silence differ at random."""
    block = int(round(BLOCK_S * sample_rate))
    n = len(audio) // block
    power = np.square(audio[: n * block].reshape(n, block), dtype=np.float64).mean(axis=1)
    return np.clip(10 * np.log10(power + 1e-12), FLOOR_DB, 0)


def _spectrum_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean power (dB) per band over every 4th 1024-sample frame: a steady tone's envelope is flat whatever its
    pitch, its spectrum is not."""
    n = len(audio) // SPECTRUM_FRAME
    frames = audio[: n * SPECTRUM_FRAME].reshape(n, SPECTRUM_FRAME)[::4]
    power = np.square(np.abs(np.fft.rfft(frames * np.hanning(SPECTRUM_FRAME), axis=1))).mean(axis=0)
    freqs = np.fft.rfftfreq(SPECTRUM_FRAME, 1 / sample_rate)
    band = np.digitize(freqs, SPECTRUM_BANDS) - 1
    levels = [power[band == i].mean() if np.any(band == i) else 0.0 for i in range(len(SPECTRUM_BANDS) - 1)]
    return np.clip(10 * np.log10(np.asarray(levels) + 1e-12), -100, 100)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def measure(frames: np.ndarray, audio: np.ndarray, sample_rate: int) -> Signals:
    """The clip's filter signals from its decoded frames (T, H, W, 3) and mono audio."""
    started = time.perf_counter()
    thumbs = _thumbnails(frames[::HASH_STEP])
    motion = float(np.percentile(thumbs.std(axis=0), 98)) if len(thumbs) > 1 else 0.0
    hashes, flat = _dhash(thumbs)
    env = _envelope_db(audio, sample_rate)
    loud = float(np.percentile(env, 90)) if len(env) else FLOOR_DB
    spectrum = _spectrum_db(audio, sample_rate)
    return Signals(motion=round(motion, 3), loud_db=round(loud, 2), vhash=_b64(hashes.astype(">u8")),
                   flat=_b64(np.packbits(flat)), aenv=_b64(np.round(env).astype(np.int8)),
                   aspec=_b64(np.round(spectrum).astype(np.int8)),
                   seconds=round(time.perf_counter() - started, 5))


def signals_dict(signals: Signals) -> dict:
    return asdict(signals)


@dataclass(frozen=True)
class Fingerprint:
    """A clip's decoded duplicate fingerprint."""

    hashes: np.ndarray  # (n,) uint64 at 10 / HASH_STEP fps
    flat: np.ndarray  # (n,) bool
    env: np.ndarray  # (m,) float32 dB at 1 / BLOCK_S Hz
    spectrum: np.ndarray  # (16,) float32 dB
    motion: float


def fingerprint(signals: dict) -> Fingerprint:
    hashes = np.frombuffer(base64.b64decode(signals["vhash"]), dtype=">u8").astype(np.uint64)
    flat = np.unpackbits(np.frombuffer(base64.b64decode(signals["flat"]), dtype=np.uint8))[: len(hashes)]
    env = np.frombuffer(base64.b64decode(signals["aenv"]), dtype=np.int8).astype(np.float32)
    spectrum = np.frombuffer(base64.b64decode(signals["aspec"]), dtype=np.int8).astype(np.float32)
    return Fingerprint(hashes, flat.astype(bool), env, spectrum, signals["motion"])


@dataclass(frozen=True)
class Fingerprints:
    """Many clips' duplicate fingerprints as flat arrays in clip-id order (no Python object per clip: the
    duplicate search holds a whole run's at once). Row i's hashes are `hashes[hash_ends[i]:hash_ends[i + 1]]`."""

    ids: list[str]  # sorted
    hashes: np.ndarray  # uint64, every clip's in turn
    flat: np.ndarray  # bool, aligned with hashes
    hash_ends: np.ndarray  # (n + 1,) int64
    env: np.ndarray  # float32 dB, every clip's in turn
    env_ends: np.ndarray  # (n + 1,) int64
    spectrum: np.ndarray  # (n, 16) float32 dB
    motion: np.ndarray  # (n,) float64

    @classmethod
    def of(cls, fps: dict[str, Fingerprint]) -> Fingerprints:
        ids = sorted(fps)
        clips = [fps[cid] for cid in ids]

        def joined(arrays: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
            ends = np.r_[0, np.cumsum([len(a) for a in arrays], dtype=np.int64)].astype(np.int64)
            return (np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)), ends

        hashes, hash_ends = joined([c.hashes for c in clips], np.uint64)
        flat, _ = joined([c.flat for c in clips], bool)
        env, env_ends = joined([c.env for c in clips], np.float32)
        spectrum = np.stack([c.spectrum for c in clips]) if clips else np.zeros((0, len(SPECTRUM_BANDS) - 1),
                                                                                   np.float32)
        return cls(ids, hashes, flat, hash_ends, env, env_ends, spectrum,
                   np.array([c.motion for c in clips], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.ids)

    def clip(self, i: int) -> Fingerprint:
        """Row i as a Fingerprint (views, no copies)."""
        h0, h1, e0, e1 = self.hash_ends[i], self.hash_ends[i + 1], self.env_ends[i], self.env_ends[i + 1]
        return Fingerprint(self.hashes[h0:h1], self.flat[h0:h1], self.env[e0:e1], self.spectrum[i],
                           float(self.motion[i]))


def _index(fps: Fingerprints) -> tuple[np.ndarray, np.ndarray]:
    """(key, clip index) of every distinct band value of every clip's non-blank frame hashes, sorted by key."""
    owner = np.repeat(np.arange(len(fps), dtype=np.int64), np.diff(fps.hash_ends))[~fps.flat]
    flat = fps.hashes[~fps.flat]
    if len(flat) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.concatenate([((flat >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
                           | (band << 40) for band, (shift, bits) in enumerate(BANDS)])
    owner = np.tile(owner, len(BANDS))
    order = np.lexsort((owner, keys))
    keys, owner = keys[order], owner[order]
    distinct = np.r_[True, (keys[1:] != keys[:-1]) | (owner[1:] != owner[:-1])]
    return keys[distinct], owner[distinct]


def _candidate_rows(fps: Fingerprints) -> list[tuple[int, int]]:
    """Row pairs (a < b) that share MIN_SHARED_KEYS index keys (an inverted index over sorted keys, no
    all-pairs), sorted."""
    keys, owner = _index(fps)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(keys)])
    useful = (sizes >= 2) & (sizes <= MAX_BUCKET)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for start, size in zip(starts[useful].tolist(), sizes[useful].tolist(), strict=True):
        members = owner[start:start + size].tolist()
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                shared[(a, b)] += 1
    return sorted(pair for pair, n in shared.items() if n >= MIN_SHARED_KEYS)


def candidate_pairs(fps: dict[str, Fingerprint]) -> set[tuple[str, str]]:
    """Clip pairs that share MIN_SHARED_KEYS index keys."""
    table = Fingerprints.of(fps)
    return {(table.ids[a], table.ids[b]) for a, b in _candidate_rows(table)}


def footage_alignments(a: Fingerprint, b: Fingerprint, cfg: FilterConfig, min_overlap: int) -> list[int]:
    """Shifts (b index - a index) with enough overlap at which dup_frames of the overlapping frames match.

    Footage with a static background matches at many shifts; the sound then decides the alignment."""
    close = np.bitwise_count(a.hashes[:, None] ^ b.hashes[None, :]) <= cfg.dup_hamming
    same = (close & ~a.flat[:, None] & ~b.flat[None, :]) | (a.flat[:, None] & b.flat[None, :])
    n, m = same.shape
    return [shift for shift in range(-(n - min_overlap), m - min_overlap + 1)
            if np.diagonal(same, offset=shift).mean() >= cfg.dup_frames]


def envelope_correlations(a: np.ndarray, b: np.ndarray, min_overlap: int) -> dict[int, float]:
    """Pearson correlation of the envelopes at each shift (b index - a index) with enough overlap."""
    found = {}
    for shift in range(-(len(a) - min_overlap), len(b) - min_overlap + 1):
        x, y = (a[-shift:], b) if shift < 0 else (a, b[shift:])
        k = min(len(x), len(y))
        x, y = x[:k], y[:k]
        if x.std() > 0 and y.std() > 0:
            found[shift] = float(np.corrcoef(x, y)[0, 1])
    return found


def _spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest band difference (dB) of two spectra, each relative to its loudest band and floored SPECTRUM_RANGE
    below it (gain-free; the floor ignores bands a codec or the noise floor decides)."""
    a, b = (np.maximum(x - x.max(), -SPECTRUM_RANGE) for x in (a, b))
    return float(np.abs(a - b).max())


def min_overlap_steps(a: int, b: int, seconds_per_step: float, cfg: FilterConfig) -> int:
    return max(1, int(round(cfg.dup_min_overlap_s / seconds_per_step)), int(np.ceil(MIN_OVERLAP_FRACTION * min(a, b))))


def moves_alike(a: Fingerprint, b: Fingerprint) -> bool:
    low, high = sorted((a.motion + MOTION_FLOOR, b.motion + MOTION_FLOOR))
    return high <= MOTION_RATIO * low


def is_duplicate(a: Fingerprint, b: Fingerprint, cfg: FilterConfig, fps: float) -> bool:
    """Same footage and same sound at one alignment: the clips move alike, the frame hashes agree along the
    alignment and the loudness envelopes correlate there (+-AUDIO_SEARCH blocks); for two steady sounds (flat
    envelopes) the band spectra agree instead. Both are relative to the clip's own level, so a gain change
    shifts neither. (A whole-clip spectrum differs between shifted copies of a changing sound, so it only
    decides between steady ones.)"""
    hash_period = HASH_STEP / fps
    min_overlap = min_overlap_steps(len(a.hashes), len(b.hashes), hash_period, cfg)
    if min(len(a.hashes), len(b.hashes)) < min_overlap or not moves_alike(a, b):
        return False
    shifts = footage_alignments(a, b, cfg, min_overlap)
    if not shifts:
        return False
    if a.env.std() < MIN_AUDIO_STD_DB and b.env.std() < MIN_AUDIO_STD_DB:  # both silent or steady: what is heard
        return _spectrum_distance(a.spectrum, b.spectrum) <= cfg.dup_spectrum_db
    corr = envelope_correlations(a.env, b.env, min_overlap_steps(len(a.env), len(b.env), BLOCK_S, cfg))
    ratio = hash_period / BLOCK_S
    return any(corr.get(int(round(s * ratio)) + d, -1.0) >= cfg.dup_audio_corr
               for s in shifts for d in range(-AUDIO_SEARCH, AUDIO_SEARCH + 1))


def duplicate_groups(signals: dict[str, dict], cfg: FilterConfig, fps: float) -> dict[str, str]:
    """clip_id -> its group's representative (the smallest clip_id), for every clip in a group of two or more."""
    return find_duplicates(Fingerprints.of({cid: fingerprint(s) for cid, s in signals.items()}), cfg, fps)


def find_duplicates(fps: Fingerprints, cfg: FilterConfig, fps_rate: float) -> dict[str, str]:
    """`duplicate_groups` over fingerprint arrays: union-find over row indices (rows are in clip-id order, so
    the smallest row of a group is its smallest clip_id)."""
    parent = np.arange(len(fps))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b in _candidate_rows(fps):
        if root(a) != root(b) and is_duplicate(fps.clip(a), fps.clip(b), cfg, fps_rate):
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
    roots = parent
    while not np.array_equal(roots[roots], roots):  # pointer jumping: every row to its group's root
        roots = roots[roots]
    in_group = np.bincount(roots, minlength=len(fps))[roots] > 1
    return {fps.ids[i]: fps.ids[roots[i]] for i in np.flatnonzero(in_group).tolist()}


def overlaps(windows: list[tuple[str, str | None, float, float]]) -> dict[str, str]:
    """clip_id -> the earliest window of the same ytid that overlaps it and starts before it (ties: clip_id);
    the first window of each overlapping run maps to nothing. `windows`: (clip_id, ytid, start_s, end_s)."""
    by_ytid: dict[str, list[tuple[float, str, float]]] = defaultdict(list)
    for clip_id, ytid, start, end in windows:
        if ytid:
            by_ytid[ytid].append((start, clip_id, end))
    found = {}
    for rows in by_ytid.values():
        rows.sort()
        for i, (start, clip_id, _) in enumerate(rows):
            earlier = [cid for s, cid, e in rows[:i] if e > start + 1e-9]
            if earlier:
                found[clip_id] = earlier[0]
    return found


@dataclass(frozen=True)
class Verdicts:
    """The filters' columns for clips.parquet and the clips they reject (clip_id -> (error_kind, message)).

    `still` and `silent` are per measured clip, aligned with `ids` (sorted); the others hold only the clips
    they name."""

    ids: list[str]
    still: np.ndarray
    silent: np.ndarray
    dup_group: dict[str, str]
    overlap_of: dict[str, str]
    rejected: dict[str, tuple[str, str]]


def judge(windows: list[tuple[str, str | None, float, float]], signals: dict[str, dict], cfg: FilterConfig,
          fps: float) -> Verdicts:
    """Apply the filters to a run: `signals` per measured clip, `windows` for the valid clip-list rows (only
    those sharing a ytid can overlap)."""
    loud = np.array([signals[cid]["loud_db"] for cid in sorted(signals)], dtype=np.float64)
    return judge_measured(windows, Fingerprints.of({cid: fingerprint(s) for cid, s in signals.items()}), loud,
                          cfg, fps)


def judge_measured(windows: list[tuple[str, str | None, float, float]], fps_: Fingerprints, loud_db: np.ndarray,
                   cfg: FilterConfig, fps: float) -> Verdicts:
    """`judge` over fingerprint arrays (`loud_db` aligned with their rows).

    A clip that several rejecting filters hit is recorded under the first of: duplicate, still, silent, overlap."""
    ids = fps_.ids
    still, silent = fps_.motion < cfg.still_motion, loud_db < cfg.silent_db
    dup_group = find_duplicates(fps_, cfg, fps)
    overlap_of = overlaps(windows)

    def rows_of(names) -> np.ndarray:  # `ids` is sorted: a binary search per name, no index of every clip
        hit = np.zeros(len(ids), dtype=bool)
        found = (bisect.bisect_left(ids, cid) for cid in names)
        hit[[i for i, cid in zip(found, names, strict=True) if i < len(ids) and ids[i] == cid]] = True
        return hit

    checks = ((cfg.reject_duplicates, "duplicate", rows_of([c for c, g in dup_group.items() if c != g]),
               lambda i: f"near-duplicate of {dup_group[ids[i]]}"),
              (cfg.reject_still, "still", still,
               lambda i: f"video barely changes (motion {fps_.motion[i]:.2f} < {cfg.still_motion})"),
              (cfg.reject_silent, "silent", silent,
               lambda i: f"audio below {cfg.silent_db} dBFS for most of the clip ({loud_db[i]:.1f})"),
              (cfg.reject_overlaps, "overlap", rows_of(list(overlap_of)),
               lambda i: f"window overlaps {overlap_of.get(ids[i])}"))
    rejected: dict[str, tuple[str, str]] = {}
    taken = np.zeros(len(ids), dtype=bool)
    for enabled, kind, hit, message in checks:
        if enabled:
            for i in np.flatnonzero(hit & ~taken).tolist():
                rejected[ids[i]] = (kind, message(i))
            taken |= hit
    return Verdicts(ids, still, silent, dup_group, overlap_of, dict(sorted(rejected.items())))
