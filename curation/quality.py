"""Data-quality filters: still video, silent audio, near-duplicate clips, overlapping windows.

Per clip (on the worker, from the frames and audio already decoded for scoring) `measure` computes ~3 KB of
signals: a motion level, a loudness level, per frame at 5 fps a coarse picture hash (an index key: which
clips to compare) and the signs of the frame's fine detail (what identifies the footage), the sound's
spectral peaks (what identifies the recording), its loudness envelope and its fine mean spectrum. They travel
in the clip's small outcome, so the client groups duplicates over the whole run with a band index (no
all-pairs comparison) and never sees media. `docs/quality_filters.md` says what the duplicate check compares,
how the thresholds were chosen and what was tried.
"""

from __future__ import annotations

import base64
import bisect
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft

from curation.config import FilterConfig

SIGNALS_VERSION = 2  # 1 (no `version` key): smooth-picture hashes and a 16-band spectrum, never compared now
GRID = (32, 36)  # thumbnail (rows, cols) for motion and detail; 4 x 4 blocks of it make the 8 x 9 hash grid
HASH_STEP = 2  # every 2nd decoded frame (5 fps at the default 10): half the bytes and time, shifts still resolved
BLOCK_S = 0.1  # audio envelope block
FLAT_GRID_STD = 2.0  # a hash grid flatter than this (grey levels) is a blank frame: its bits are noise
MAX_BUCKET = 64  # index keys shared by more clips than this (title cards, black frames) select no candidates
MIN_SHARED_KEYS = 1  # a candidate pair shares at least this many index keys (a static scene has few hashes)
# (shift, bits): 2 bands of a hash; a copy's hash with a few flipped bits often keeps one of them, and a clip has
# ~30 distinct hashes, so copies share several keys; 32-bit keys keep chance collisions rare at 200k clips
BANDS = ((32, 32), (0, 32))
FLOOR_DB = -80.0
# Fine detail: DCT coefficients (u, v) of the 32 x 36 thumbnail with u, v < 12 and u + v >= 8, i.e. 4-6 cycles
# across the frame and finer: a smooth scene (gradients, soft blobs, a blurred backdrop) has no energy there,
# a copy's re-encoding and resizing keep it. Per coefficient 2 bits: significant (|c| >= DETAIL_LEVEL) and sign.
_U, _V = np.mgrid[0:GRID[0], 0:GRID[1]]
DETAIL_MASK = (_U < 12) & (_V < 12) & (_U + _V >= 8)
DETAIL_BITS = int(DETAIL_MASK.sum())  # 108
DETAIL_BYTES = 2 * ((DETAIL_BITS + 7) // 8)  # significance bits, then sign bits
DETAIL_LEVEL = 15.0  # |c| of an orthonormal DCT: 15 ~ a pattern of +-1 grey level over the whole thumbnail
DETAIL_MIN = 16  # a frame with fewer significant coefficients has no detail to compare
# Spectral peaks: 128-ms frames every 32 ms (7.8 Hz bins at any sample rate), 150 Hz - 5 kHz
STFT_S, HOP_S = 0.128, 0.032
PEAK_FMIN, PEAK_FMAX = 150.0, 5000.0
PEAK_RANGE_DB = 40.0  # a peak is within this much of the clip's loud level (codec noise and masked hiss are not)
LOUD_PERCENTILE = 90  # the loud level: this percentile over hops of each hop's loudest bin
PEAK_ONSET_DB = 6.0  # ... above its bin's mean over the previous PEAK_PAST hops (steady components are not)
PEAK_PAST = 8
PEAK_AREA = (3, 9)  # ... and the largest value of its (hops, bins) neighbourhood
PEAKS_PER_S = 30  # the loudest peaks kept (a rate over the whole clip: the choice does not depend on a shift)
PEAKS_MIN_PER_S = 2.0  # fewer peaks in the shared stretch (either clip): the sound is steady, peaks say nothing
PEAK_TOL = 1  # hops either side a peak of a copy may move (a shift is not a whole number of hops)
PEAK_TOL_BINS = 1  # bins either side (7.8 Hz)
RIVAL_GAP = 3  # hops beyond an alignment's window where another alignment's peak match makes the match ambiguous
# Fine mean spectrum for steady sounds: quarter-tone bands, 100 Hz - 6.4 kHz (a semitone apart is 2 bands)
SPECTRUM_BANDS = 100.0 * 2.0 ** (np.arange(145) / 24)
SPECTRUM_RANGE = 40.0  # dB below the loudest band that the spectrum comparison looks at
MIN_OVERLAP_FRACTION = 0.5  # duplicates share at least half of the shorter clip (and dup_min_overlap_s)
AUDIO_SEARCH = 2  # envelope blocks searched either side of the video's alignment (its 0.2-s grid)
MIN_AUDIO_STD_DB = 1.0  # an envelope flatter than this (silence, steady noise) says nothing about identity


@dataclass(frozen=True)
class Signals:
    """What the filters need of one clip; JSON-ready (it is stored in the clip's outcome and cache file)."""

    motion: float  # grey levels (green): 98th percentile over thumbnail blocks of their standard deviation in time
    loud_db: float  # dBFS: the 90th percentile of 100-ms block levels (silent clips stay low all through)
    vhash: str  # base64 of big-endian uint64 dHashes of the smooth picture, one per HASH_STEP frames
    flat: str  # base64 of packed bits: which hashed frames are blank (not indexed)
    vdetail: str  # base64, per hashed frame DETAIL_BYTES: packed significance bits, then packed sign bits
    apeaks: str  # base64 of uint32 spectral peaks, hop << 16 | bin (HOP_S, 1 / STFT_S Hz), by hop
    aenv: str  # base64 of int8 block levels in dB (gain shifts it, correlation ignores that)
    aspec: str  # base64 of int8 mean levels (dB below the loudest) in the quarter-tone SPECTRUM_BANDS
    seconds: float  # time spent here (the filters' cost per clip)
    version: int = SIGNALS_VERSION


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


def _detail(thumbs: np.ndarray) -> np.ndarray:
    """(T, DETAIL_BYTES) uint8: per thumbnail the significance and sign bits of its fine DCT coefficients."""
    coefficients = scipy.fft.dctn(thumbs, axes=(1, 2), norm="ortho")[:, DETAIL_MASK]
    return np.concatenate([np.packbits(np.abs(coefficients) >= DETAIL_LEVEL, axis=1),
                           np.packbits(coefficients > 0, axis=1)], axis=1)


def _envelope_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Block levels in dBFS, floored at -80: below that, codec noise and digital silence differ at random."""
    block = int(round(BLOCK_S * sample_rate))
    n = len(audio) // block
    power = np.square(audio[: n * block].reshape(n, block), dtype=np.float64).mean(axis=1)
    return np.clip(10 * np.log10(power + 1e-12), FLOOR_DB, 0)


def _spectrogram(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(hops, bins) power of 128-ms Hann frames every 32 ms, and the bins' frequencies (Hz)."""
    size, hop = int(round(STFT_S * sample_rate)), int(round(HOP_S * sample_rate))
    if len(audio) < size:  # shorter than one frame (a tiled short clip's own waveform can be)
        return np.zeros((0, size // 2 + 1), np.float32), np.fft.rfftfreq(size, 1 / sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(audio, size)[::hop]
    power = np.square(np.abs(scipy.fft.rfft(frames * np.hanning(size).astype(np.float32), axis=1)))
    return power, np.fft.rfftfreq(size, 1 / sample_rate)


def _area_max(x: np.ndarray) -> np.ndarray:
    """The largest value of each cell's PEAK_AREA neighbourhood (a separable running maximum: scipy's
    maximum_filter takes several times longer on a clip's spectrogram)."""
    out = x.copy()
    for axis, size in enumerate(PEAK_AREA):
        source = out.copy()
        for k in range(1, size // 2 + 1):
            ahead, behind = [slice(None)] * 2, [slice(None)] * 2
            ahead[axis], behind[axis] = slice(k, None), slice(None, -k)
            np.maximum(out[tuple(ahead)], source[tuple(behind)], out=out[tuple(ahead)])
            np.maximum(out[tuple(behind)], source[tuple(ahead)], out=out[tuple(behind)])
    return out


def _peaks(power: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Spectral peaks as uint32 hop << 16 | bin, by hop: local maxima of the dB spectrogram that rise
    PEAK_ONSET_DB above their bin's recent past, within PEAK_RANGE_DB of the loud level; the loudest
    PEAKS_PER_S a second. Peaks are where sound starts or changes: a recording's own, unchanged by a gain or
    re-encoding, absent from steady tones."""
    in_band = np.flatnonzero((freqs >= PEAK_FMIN) & (freqs <= PEAK_FMAX))
    if len(power) <= PEAK_PAST or not len(in_band):
        return np.zeros(0, np.uint32)
    level = 10 * np.log10(power[:, in_band[0]:in_band[-1] + 1] + 1e-10)
    sums = np.cumsum(np.concatenate([np.repeat(level[:1], PEAK_PAST, axis=0), level]), axis=0)
    past = np.concatenate([level[:1], (sums[PEAK_PAST:-1] - sums[:-PEAK_PAST - 1]) / PEAK_PAST])  # previous hops
    loud = np.percentile(level.max(axis=1), LOUD_PERCENTILE)  # the loud level: of the loudest bin of most hops
    peak = (level == _area_max(level)) & (level >= loud - PEAK_RANGE_DB) & (level - past >= PEAK_ONSET_DB)
    peak[0] = False  # no past to rise from
    hops, bins = np.nonzero(peak)
    keep = np.sort(np.argsort(-level[hops, bins], kind="stable")[: int(PEAKS_PER_S * len(level) * HOP_S)])
    return (hops[keep].astype(np.uint32) << np.uint32(16)) | (bins[keep] + in_band[0]).astype(np.uint32)


def _spectrum_db(power: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Mean power per quarter-tone band (dB below the loudest band, floored at -100): a steady tone's
    envelope and peaks are the same whatever its pitch, its spectrum is not. A band narrower than the FFT's
    bins takes the bin at its centre."""
    mean = power.mean(axis=0) if len(power) else np.zeros(len(freqs))
    edges = np.searchsorted(freqs, SPECTRUM_BANDS)
    centres = np.searchsorted(freqs, np.sqrt(SPECTRUM_BANDS[1:] * SPECTRUM_BANDS[:-1]))
    sums = np.add.reduceat(mean, np.minimum(edges[:-1], len(mean) - 1))
    counts = np.diff(edges)
    levels = np.where(counts > 0, sums / np.maximum(counts, 1), mean[np.minimum(centres, len(mean) - 1)])
    db = 10 * np.log10(levels + 1e-12)
    return np.clip(db - db.max(), -100, 0)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def measure(frames: np.ndarray, audio: np.ndarray, sample_rate: int) -> Signals:
    """The clip's filter signals from its decoded frames (T, H, W, 3) and mono audio."""
    started = time.perf_counter()
    thumbs = _thumbnails(frames[::HASH_STEP])
    motion = float(np.percentile(thumbs.std(axis=0), 98)) if len(thumbs) > 1 else 0.0
    hashes, flat = _dhash(thumbs)
    env = _envelope_db(audio, sample_rate)
    loud = float(np.percentile(env, 90)) if len(env) else FLOOR_DB
    power, freqs = _spectrogram(audio, sample_rate)
    return Signals(motion=round(motion, 3), loud_db=round(loud, 2), vhash=_b64(hashes.astype(">u8")),
                   flat=_b64(np.packbits(flat)), vdetail=_b64(_detail(thumbs)), apeaks=_b64(_peaks(power, freqs)),
                   aenv=_b64(np.round(env).astype(np.int8)),
                   aspec=_b64(np.round(_spectrum_db(power, freqs)).astype(np.int8)),
                   seconds=round(time.perf_counter() - started, 5))


def signals_dict(signals: Signals) -> dict:
    return asdict(signals)


@dataclass(frozen=True)
class Fingerprint:
    """A clip's decoded duplicate fingerprint: flat arrays (what `Fingerprints` stores per clip)."""

    hashes: np.ndarray  # (n,) uint64 at 10 / HASH_STEP fps
    flat: np.ndarray  # (n,) bool
    detail: np.ndarray  # (n * DETAIL_BYTES,) uint8
    peaks: np.ndarray  # (p,) uint32 hop << 16 | bin
    env: np.ndarray  # (m,) int8 dB at 1 / BLOCK_S Hz
    spectrum: np.ndarray  # (len(SPECTRUM_BANDS) - 1,) int8 dB
    motion: float


# the Fingerprint arrays (every field but motion) and their dtypes: the columns a run's outcomes keep per clip
ARRAYS = {"hashes": np.uint64, "flat": np.bool_, "detail": np.uint8, "peaks": np.uint32, "env": np.int8,
          "spectrum": np.int8}


def fingerprint(signals: dict) -> Fingerprint:
    """The fingerprint of stored signals. Signals of an older version (cache files written before the detail
    and peak signals existed) give an empty one: such a clip is judged still and silent but never compared."""
    def decode(key: str, dtype) -> np.ndarray:
        return np.frombuffer(base64.b64decode(signals[key]), dtype=dtype)

    if signals.get("version", 1) != SIGNALS_VERSION:
        return Fingerprint(*(np.zeros(0, dtype) for dtype in ARRAYS.values()), motion=signals["motion"])
    hashes = decode("vhash", ">u8").astype(np.uint64)
    flat = np.unpackbits(decode("flat", np.uint8))[: len(hashes)].astype(bool)
    return Fingerprint(hashes, flat, decode("vdetail", np.uint8), decode("apeaks", np.uint32), decode("aenv", np.int8),
                       decode("aspec", np.int8), signals["motion"])


@dataclass(frozen=True)
class Fingerprints:
    """Many clips' duplicate fingerprints as flat arrays in clip-id order (no Python object per clip: the
    duplicate search holds a whole run's at once). Row i's `name` array is
    `arrays[name][ends[name][i]:ends[name][i + 1]]`, for each name in ARRAYS."""

    ids: list[str]  # sorted
    arrays: dict[str, np.ndarray]  # every clip's in turn
    ends: dict[str, np.ndarray]  # (n + 1,) int64 each
    motion: np.ndarray  # (n,) float64

    @classmethod
    def of(cls, fps: dict[str, Fingerprint]) -> Fingerprints:
        ids = sorted(fps)
        clips = [fps[cid] for cid in ids]
        arrays, ends = {}, {}
        for name, dtype in ARRAYS.items():
            parts = [getattr(c, name) for c in clips]
            ends[name] = np.r_[0, np.cumsum([len(a) for a in parts], dtype=np.int64)].astype(np.int64)
            arrays[name] = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        return cls(ids, arrays, ends, np.array([c.motion for c in clips], dtype=np.float64))

    @classmethod
    def from_columns(cls, ids: list[str], columns: dict[str, tuple[np.ndarray, np.ndarray]],
                     motion: np.ndarray) -> Fingerprints:
        """From (values, ends) per name in ARRAYS, rows in `ids` order (sorted)."""
        return cls(ids, {n: columns[n][0].astype(d, copy=False) for n, d in ARRAYS.items()},
                   {n: columns[n][1].astype(np.int64, copy=False) for n in ARRAYS}, motion.astype(np.float64))

    def __len__(self) -> int:
        return len(self.ids)

    def clip(self, i: int) -> Fingerprint:
        """Row i as a Fingerprint (views, no copies)."""
        return Fingerprint(**{n: a[self.ends[n][i]:self.ends[n][i + 1]] for n, a in self.arrays.items()},
                           motion=float(self.motion[i]))


def _index(fps: Fingerprints) -> tuple[np.ndarray, np.ndarray]:
    """(key, clip index) of every distinct band value of every clip's non-blank frame hashes, sorted by key."""
    hashes, flat = fps.arrays["hashes"], fps.arrays["flat"]
    owner = np.repeat(np.arange(len(fps), dtype=np.int64), np.diff(fps.ends["hashes"]))[~flat]
    hashes = hashes[~flat]
    if len(hashes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.concatenate([((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
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


def _shifts(n: int, m: int, min_overlap: int) -> range:
    """Shifts (b index - a index) at which sequences of n and m items overlap by at least min_overlap."""
    return range(-(n - min_overlap), m - min_overlap + 1)


def footage_alignments(a: Fingerprint, b: Fingerprint, cfg: FilterConfig, min_overlap: int) -> list[int]:
    """Shifts (b index - a index) with enough overlap at which dup_frames of the overlapping frames' smooth-picture
    hashes match: the footage may be the same there (a necessary condition, not identity)."""
    close = np.bitwise_count(a.hashes[:, None] ^ b.hashes[None, :]) <= cfg.dup_hamming
    same = (close & ~a.flat[:, None] & ~b.flat[None, :]) | (a.flat[:, None] & b.flat[None, :])
    n, m = same.shape
    return [s for s in _shifts(n, m, min_overlap) if np.diagonal(same, offset=s).mean() >= cfg.dup_frames]


@dataclass(frozen=True)
class Match:
    """One channel's verdict at one alignment: whether it allows a duplicate, and whether it identifies one."""

    consistent: bool
    identifies: bool
    score: float | None = None  # the channel's similarity there (detail: frames matching; peaks: fraction matched)


def detail_match(a: Fingerprint, b: Fingerprint, shift: int, cfg: FilterConfig) -> Match:
    """Fine detail along one alignment (b frame = a frame + shift). A frame pair is compared when either frame
    has DETAIL_MIN significant coefficients; it matches when the coefficients significant in both with the same
    sign are dup_detail of the more detailed frame's. With at least half the overlap compared, dup_frames of
    the compared pairs must match (and then the picture identifies the footage); with less, the picture has too
    little detail to say anything (smooth or blank footage): consistent, not identifying."""
    da, db = a.detail.reshape(-1, DETAIL_BYTES), b.detail.reshape(-1, DETAIL_BYTES)
    i0, j0 = max(0, -shift), max(0, shift)
    k = min(len(da) - i0, len(db) - j0)
    x, y = da[i0:i0 + k], db[j0:j0 + k]
    half = DETAIL_BYTES // 2
    sig_x, sig_y = x[:, :half], y[:, :half]
    agree = np.bitwise_count(sig_x & sig_y & ~(x[:, half:] ^ y[:, half:])).sum(axis=1)
    most = np.maximum(np.bitwise_count(sig_x).sum(axis=1), np.bitwise_count(sig_y).sum(axis=1))
    compared = most >= DETAIL_MIN
    if k == 0 or compared.sum() < 0.5 * k:
        return Match(True, False)
    frames = float((agree[compared] >= cfg.dup_detail * most[compared]).mean())
    return Match(frames >= cfg.dup_frames, frames >= cfg.dup_frames, frames)


def _split(peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (peaks >> np.uint32(16)).astype(np.int64), (peaks & np.uint32(0xFFFF)).astype(np.int64)


def peak_offsets(a: Fingerprint, b: Fingerprint) -> tuple[np.ndarray, np.ndarray]:
    """(hop offset b - a, number of a's peaks with a peak of b within PEAK_TOL_BINS bins and PEAK_TOL hops) for
    every offset at which some peak pair coincides."""
    ta, fa = _split(a.peaks)
    tb, fb = _split(b.peaks)
    i, j = np.nonzero(np.abs(fa[:, None] - fb[None, :]) <= PEAK_TOL_BINS)
    if len(i) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = tb[j] - ta[i]
    low = int(d.min()) - PEAK_TOL
    # distinct (offset, peak of a) with the offset within PEAK_TOL of the pair's: each peak counts once an offset
    keys = np.unique(np.concatenate([(d + k - low) * len(ta) + i for k in range(-PEAK_TOL, PEAK_TOL + 1)]))
    offsets, counts = np.unique(keys // len(ta), return_counts=True)
    return offsets + low, counts


def peaks_match(a: Fingerprint, b: Fingerprint, offsets: np.ndarray, matched: np.ndarray, lo: int, hi: int,
                cfg: FilterConfig) -> Match | None:
    """The peaks at the best hop offset in [lo, hi]; None when either clip has fewer than PEAKS_MIN_PER_S peaks
    a second in the shared stretch (a steady or silent sound: peaks say nothing)."""
    ta, _ = _split(a.peaks)
    tb, _ = _split(b.peaks)
    n_a, n_b = len(a.env) * BLOCK_S / HOP_S, len(b.env) * BLOCK_S / HOP_S  # clip lengths in hops
    mid = (lo + hi) / 2  # peak counts in the stretch shared at the window's centre
    start, stop = max(0.0, -mid), min(n_a, n_b - mid)
    inside_a = int(((ta >= start) & (ta < stop)).sum())
    inside_b = int(((tb - mid >= start) & (tb - mid < stop)).sum())
    if min(inside_a, inside_b) < PEAKS_MIN_PER_S * max(stop - start, 0) * HOP_S:
        return None
    window = (offsets >= lo) & (offsets <= hi)
    best = int(matched[window].max()) if window.any() else 0
    score = best / max(1, min(inside_a, inside_b))
    # a rhythmic sound (a pulse, a beat, an engine) matches itself one period away as well as here: then the peaks
    # fit many alignments and say nothing about this one (distinct recordings of one rhythm would pass as copies)
    far = (offsets < lo - RIVAL_GAP) | (offsets > hi + RIVAL_GAP)
    rival = int(matched[far].max()) / max(1, min(inside_a, inside_b)) if far.any() else 0.0
    return Match(score >= cfg.dup_peaks, score >= cfg.dup_peaks and rival < cfg.dup_peaks, score)


def envelope_correlations(a: np.ndarray, b: np.ndarray, min_overlap: int) -> dict[int, float]:
    """Pearson correlation of the envelopes at each shift (b index - a index) with enough overlap."""
    found = {}
    for shift in _shifts(len(a), len(b), min_overlap):
        x, y = (a[-shift:], b) if shift < 0 else (a, b[shift:])
        k = min(len(x), len(y))
        x, y = x[:k], y[:k]
        if x.std() > 0 and y.std() > 0:
            found[shift] = float(np.corrcoef(x, y)[0, 1])
    return found


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest band difference (dB) of two spectra, each relative to its loudest band and floored SPECTRUM_RANGE
    below it (gain-free; the floor ignores bands a codec or the noise floor decides)."""
    a, b = (np.maximum(x.astype(np.float32) - x.max(), -SPECTRUM_RANGE) for x in (a, b))
    return float(np.abs(a - b).max())


def min_overlap_steps(a: int, b: int, seconds_per_step: float, cfg: FilterConfig) -> int:
    return max(1, int(round(cfg.dup_min_overlap_s / seconds_per_step)), int(np.ceil(MIN_OVERLAP_FRACTION * min(a, b))))


def smooth_sound_match(a: Fingerprint, b: Fingerprint, block_shift: int, corr: dict[int, float],
                       cfg: FilterConfig) -> Match:
    """A sound without peaks: consistent when the fine spectra agree (dup_spectrum_db) and, unless both envelopes
    are flat, the envelopes correlate dup_audio_corr near the alignment. Never identifying: two recordings of
    one steady or slowly swelling sound look alike here."""
    if spectrum_distance(a.spectrum, b.spectrum) > cfg.dup_spectrum_db:
        return Match(False, False)
    if a.env.std() < MIN_AUDIO_STD_DB and b.env.std() < MIN_AUDIO_STD_DB:
        return Match(True, False)
    best = max((corr.get(block_shift + d, -1.0) for d in range(-AUDIO_SEARCH, AUDIO_SEARCH + 1)), default=-1.0)
    return Match(best >= cfg.dup_audio_corr, False, best)


def alignments(a: Fingerprint, b: Fingerprint, cfg: FilterConfig,
               fps: float) -> Iterator[tuple[Match, Callable[[], tuple[Match, bool]]]]:
    """At each alignment the smooth-picture hashes propose (dup_frames of the frames within dup_hamming bits):
    the fine-detail match (`detail_match`), and a call that compares the sound there: (its match, whether it had
    peaks: `peaks_match`, else `smooth_sound_match` of a sound without peaks). Nothing for signals of an older
    version, which have no fine detail."""
    if not len(a.detail) or not len(b.detail):
        return
    hash_s = HASH_STEP / fps
    min_overlap = min_overlap_steps(len(a.hashes), len(b.hashes), hash_s, cfg)
    if min(len(a.hashes), len(b.hashes)) < min_overlap:
        return
    shifts = footage_alignments(a, b, cfg, min_overlap)
    if not shifts:
        return
    offsets, matched = peak_offsets(a, b)
    corr = envelope_correlations(a.env.astype(np.float32), b.env.astype(np.float32),
                                 min_overlap_steps(len(a.env), len(b.env), BLOCK_S, cfg))
    reach = hash_s / 2 / HOP_S + PEAK_TOL  # a hashed frame stands for HASH_STEP decoded frames

    def sound_at(shift: int) -> tuple[Match, bool]:
        centre = shift * hash_s / HOP_S
        sound = peaks_match(a, b, offsets, matched, int(np.floor(centre - reach)), int(np.ceil(centre + reach)), cfg)
        if sound is None:
            return smooth_sound_match(a, b, int(round(shift * hash_s / BLOCK_S)), corr, cfg), False
        return sound, True

    for shift in shifts:
        yield detail_match(a, b, shift, cfg), functools.partial(sound_at, shift)


def is_duplicate(a: Fingerprint, b: Fingerprint, cfg: FilterConfig, fps: float) -> bool:
    """Same footage and same recording at one alignment: there the fine detail and the sound must both be
    consistent, and at least one of them must identify (`alignments`): a smooth picture and a steady sound are
    shared by distinct clips, so together they never make a duplicate."""
    for picture, sound_at in alignments(a, b, cfg, fps):
        if not picture.consistent:
            continue
        sound, _ = sound_at()
        if sound.consistent and (picture.identifies or sound.identifies):
            return True
    return False


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


# Which rejection a clip that several filters hit is recorded under: the first of these. A duplicate first:
# its group's representative stands for it (whatever else is wrong with the copy is wrong with the
# representative, which the other filters judge); then the properties of the clip's own content (still
# picture, then silent sound, both also measured on every duplicate); overlap last, as it says only where the
# window lies in its video, not what it holds.
REJECTION_ORDER = ("duplicate", "still", "silent", "overlap")


def judge(windows: list[tuple[str, str | None, float, float]], signals: dict[str, dict], cfg: FilterConfig,
          fps: float) -> Verdicts:
    """Apply the filters to a run: `signals` per measured clip, `windows` for the valid clip-list rows (only
    those sharing a ytid can overlap)."""
    loud = np.array([signals[cid]["loud_db"] for cid in sorted(signals)], dtype=np.float64)
    return judge_measured(windows, Fingerprints.of({cid: fingerprint(s) for cid, s in signals.items()}), loud,
                          cfg, fps)


def judge_measured(windows: list[tuple[str, str | None, float, float]], fps_: Fingerprints, loud_db: np.ndarray,
                   cfg: FilterConfig, fps: float) -> Verdicts:
    """`judge` over fingerprint arrays (`loud_db` aligned with their rows). Every filter judges every measured
    clip on its own (a still or silent clip is still compared for duplicates); a clip several rejecting filters
    hit is recorded under the first of REJECTION_ORDER."""
    ids = fps_.ids
    still, silent = fps_.motion < cfg.still_motion, loud_db < cfg.silent_db
    dup_group = find_duplicates(fps_, cfg, fps)
    overlap_of = overlaps(windows)

    def rows_of(names) -> np.ndarray:  # `ids` is sorted: a binary search per name, no index of every clip
        hit = np.zeros(len(ids), dtype=bool)
        found = (bisect.bisect_left(ids, cid) for cid in names)
        hit[[i for i, cid in zip(found, names, strict=True) if i < len(ids) and ids[i] == cid]] = True
        return hit

    checks = {"duplicate": (cfg.reject_duplicates, rows_of([c for c, g in dup_group.items() if c != g]),
                            lambda i: f"near-duplicate of {dup_group[ids[i]]}"),
              "still": (cfg.reject_still, still,
                        lambda i: f"video barely changes (motion {fps_.motion[i]:.2f} < {cfg.still_motion})"),
              "silent": (cfg.reject_silent, silent,
                         lambda i: f"audio below {cfg.silent_db} dBFS for most of the clip ({loud_db[i]:.1f})"),
              "overlap": (cfg.reject_overlaps, rows_of(list(overlap_of)),
                          lambda i: f"window overlaps {overlap_of.get(ids[i])}")}
    rejected: dict[str, tuple[str, str]] = {}
    taken = np.zeros(len(ids), dtype=bool)
    for kind in REJECTION_ORDER:
        enabled, hit, message = checks[kind]
        if enabled:
            for i in np.flatnonzero(hit & ~taken).tolist():
                rejected[ids[i]] = (kind, message(i))
            taken |= hit
    return Verdicts(ids, still, silent, dup_group, overlap_of, dict(sorted(rejected.items())))
