"""Deterministic synthetic audio-visual world with per-frame ground truth (DESIGN.md, "Demo world").

Every clip has its own background (gradient, noise, distractor blobs), so a model can learn to recognise
the clip instead of the sound source; the truth table makes that shortcut measurable (FINDINGS.md).
Clip kinds (per clip in demo_world.json, counts.clip_kinds): normal single source; mismatched (the object is
silent, the audio is another category's, from an unseen source at its own distance); no-object audio (music
or babble); two sources; sound-only. Mismatched clips come in three variants (counts.clip_variants): `random`
(any other category is heard), `lookalike` (the heard category is the shown one's look-alike, `LOOKALIKE`:
similar shape and colour, or a shared frequency band) and `crowd` (two or three silent objects on screen, the
heard category none of them). Loudness follows apparent size; in a `pulsing` clip (counts.clip_pulsing, half
of each kind) a sounding object swells and shakes with its own sound envelope, in the other half nothing on
screen moves with the sound (as in most real footage). Clips are real h264 + AAC mp4 written by the ffmpeg CLI.

Truth columns (one row per video frame, t = frame / FPS):
  category      primary object's category (for sound-only clips: the category of the sound)
  visible       primary object on screen
  sounding      some source (any category, or a no-object sound) is audible
  matched       the primary object's own sound is audible (independent of `visible`; a good pair
                needs visible & sounding & matched, see `good_pair_mask`)
  scale         primary object's apparent size in 0.25..1, given even while off screen (its distance;
                loudness of its own sound is proportional to it)
  category2/visible2  second source of two-source clips, else null
  sound_category      audible category: the primary's own sound first, else the other source's,
                      -1 for a no-object sound, null when silent
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import soundfile as sf

from curation.errors import UsageError, require_tools
from manifests.io import write_json, write_parquet
from manifests.layout import RunLayout, clip_in
from manifests.schema import CLIP_LIST_SCHEMA, TRUTH_SCHEMA

WIDTH, HEIGHT, FPS, SAMPLE_RATE = 288, 224, 10, 16000
SPRITE_MAX = 140  # object diameter in pixels at scale 1
MIN_SCALE = 0.25
MIN_SEGMENT_S = 1.0
UNIT_RMS = 0.10  # level of a source at scale 1; 2 sources x PEAK_FACTOR x UNIT_RMS + noise stays < 1
PEAK_FACTOR = 4.5  # unit waveforms are limited to PEAK_FACTOR x their RMS
NOISE_RMS = 0.01  # -40 dBFS background noise, always present
KIND_FRACTIONS = {"normal": 0.52, "mismatched": 0.20, "no_object": 0.10, "two_source": 0.12,
                  "sound_only": 0.06}
MISMATCH_VARIANTS = ("random", "lookalike", "crowd")  # dealt in turn over the mismatched clips
PULSING_FRACTION = 0.5  # of each kind's clips, whose sounding objects swell and shake with their sound
FFMPEG_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                 "-g", "10", "-threads", "1", "-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "1",
                 "-movflags", "+faststart", "-fflags", "+bitexact", "-flags:v", "+bitexact",
                 "-flags:a", "+bitexact", "-map_metadata", "-1", "-f", "mp4"]


@dataclass(frozen=True)
class Category:
    """A visual object (shape, colour, texture) paired with a sound (timbre, pitch, pulse rate; 0 = steady)."""

    name: str
    shape: str
    colour: tuple[int, int, int]
    texture: str
    timbre: str
    pitch_hz: float
    pulse_hz: float


CATEGORIES = (
    Category("red circle", "circle", (220, 40, 40), "solid", "sine", 330.0, 2.0),
    Category("blue square", "square", (40, 80, 230), "stripes", "square", 220.0, 0.0),
    Category("green triangle", "triangle", (40, 190, 60), "dots", "saw", 520.0, 3.0),
    Category("yellow star", "star", (240, 220, 40), "solid", "fm", 880.0, 0.0),
    Category("magenta ring", "ring", (210, 50, 200), "checker", "noise", 2000.0, 1.5),
    Category("cyan diamond", "diamond", (40, 210, 220), "stripes", "clicks", 4000.0, 0.0),
    Category("orange cross", "cross", (250, 140, 20), "checker", "chirp", 600.0, 0.0),
    Category("white hexagon", "hexagon", (245, 245, 245), "dots", "square", 110.0, 2.5),
)


# each category's look-alike: round red/magenta (circle, ring), blue/cyan four-gons (square, diamond), pointed
# green/yellow (triangle, star), and orange cross / white hexagon, whose sounds share the 550-1200 Hz band
LOOKALIKE = (4, 5, 3, 2, 0, 1, 7, 6)


@dataclass(frozen=True)
class DemoWorld:
    """Where a generated world lies, and what it holds."""

    raw_dir: Path
    clips_path: Path
    truth_path: Path
    world_json: Path
    n_clips: int
    n_frames: int
    kind_counts: dict[str, int]


class Track(NamedTuple):
    """One source over time: what it looks like (or None) and what it sounds like (-1 no-object, or None)."""

    look: int | None
    sound: int | None
    visible: np.ndarray
    on: np.ndarray
    scale: np.ndarray
    xy: np.ndarray  # (n, 2) position in 0..1 of the free area


def good_pair_mask(truth):
    """Frames where the primary object is visible, something sounds, and the sound is the object's own."""
    return truth["visible"] & truth["sounding"] & truth["matched"]


# ---------------------------------------------------------------- visuals
def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r, th = np.hypot(u, v), np.arctan2(v, u)

    def polygon(n: int, apothem: float, rot: float) -> np.ndarray:
        sector = np.mod(th - rot, 2 * np.pi / n) - np.pi / n
        return r * np.cos(sector) <= apothem

    if shape == "star":  # 5 straight-edged points: tip radius 0.95, inner corners at 0.4
        phi, a = np.abs(np.mod(th + 0.7 * np.pi, 2 * np.pi / 5) - np.pi / 5), np.pi / 5
        nx, ny = 0.4 * np.sin(a), 0.95 - 0.4 * np.cos(a)
        return r * (nx * np.cos(phi) + ny * np.sin(phi)) <= 0.95 * nx
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    return {"circle": lambda: r <= 0.95, "ring": lambda: (r <= 0.95) & (r >= 0.55),
            "square": lambda: polygon(4, 0.7, -np.pi / 4), "diamond": lambda: polygon(4, 0.68, 0.0),
            "triangle": lambda: polygon(3, 0.5, np.pi / 6), "hexagon": lambda: polygon(6, 0.85, 0.0)}[shape]()


def _texture_dark(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if texture == "stripes":
        return np.mod((u + v) * 2.5, 1.0) < 0.5
    if texture == "checker":
        return (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 1
    if texture == "dots":
        return np.hypot(np.mod(u * 2.5, 1) - 0.5, np.mod(v * 2.5, 1) - 0.5) < 0.22
    return np.zeros_like(u, dtype=bool)


@lru_cache(maxsize=4096)
def _sprite(category: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB (uint16) and alpha (0..255, uint16) of a category's object, anti-aliased by 2x supersampling."""
    spec = CATEGORIES[category]
    g = (np.arange(2 * size) + 0.5) / size - 1.0
    u, v = np.meshgrid(g, g)
    alpha = _shape_mask(spec.shape, u, v).reshape(size, 2, size, 2).mean(axis=(1, 3))
    dark = _texture_dark(spec.texture, u[::2, ::2], v[::2, ::2])
    rgb = np.asarray(spec.colour, dtype=np.float64) * np.where(dark, 0.45, 1.0)[..., None]
    return rgb.astype(np.uint16), np.round(alpha * 255).astype(np.uint16)[..., None]


def _paste(frame: np.ndarray, category: int, size: int, cx: int, cy: int) -> None:
    rgb, alpha = _sprite(category, size)
    x0, y0 = cx - size // 2, cy - size // 2
    sx, sy = max(0, -x0), max(0, -y0)
    x1, y1 = min(WIDTH, x0 + size), min(HEIGHT, y0 + size)
    x0, y0 = max(0, x0), max(0, y0)
    a, c = alpha[sy:sy + y1 - y0, sx:sx + x1 - x0], rgb[sy:sy + y1 - y0, sx:sx + x1 - x0]
    region = frame[y0:y1, x0:x1].astype(np.uint16)
    frame[y0:y1, x0:x1] = ((a * c + (255 - a) * region + 127) // 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise (HEIGHT, WIDTH, 3): a coarse random grid, bilinearly upsampled."""
    ay = np.array([np.interp(np.linspace(0, cells[0] - 1, HEIGHT), np.arange(cells[0]), e)
                   for e in np.eye(cells[0])]).T
    ax = np.array([np.interp(np.linspace(0, cells[1] - 1, WIDTH), np.arange(cells[1]), e)
                   for e in np.eye(cells[1])]).T
    coarse = rng.normal(size=(3, *cells))
    return np.einsum("hi,cij,wj->hwc", ay, coarse, ax)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A clip's own backdrop: muted gradient, smooth and fine noise, and soft blobs that match no shape."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array(max(HEIGHT, WIDTH))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(angle) + y * np.sin(angle))[..., None]
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    c0, c1 = rng.uniform(50, 190, size=(2, 3))
    img = c0 + (c1 - c0) * ramp + 18 * _smooth_noise(rng, (5, 6)) + rng.normal(0, 5, size=(HEIGHT, WIDTH, 3))
    for _ in range(rng.integers(3, 6)):
        bx, by = rng.uniform(0, 1, 2) * [WIDTH, HEIGHT] / np.array(max(HEIGHT, WIDTH))
        (sa, sb), rot = rng.uniform(0.04, 0.15, 2), rng.uniform(0, np.pi)
        dx, dy = x - bx, y - by
        d = ((dx * np.cos(rot) + dy * np.sin(rot)) / sa) ** 2 + ((dy * np.cos(rot) - dx * np.sin(rot)) / sb) ** 2
        blob = 0.7 * np.exp(-d)[..., None]
        img = img * (1 - blob) + rng.uniform(40, 200, 3) * blob
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_video(rng: np.random.Generator, tracks: list[Track], pulses: list[np.ndarray]) -> bytes:
    """Raw rgb24 frames: the background, then the visible objects, nearer (larger) ones on top."""
    bg = _background(rng)
    n = len(tracks[0].on)
    shake = rng.integers(-2, 3, size=(len(tracks), n, 2))
    frames = np.empty((n, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for f in range(n):
        frame = frames[f]
        frame[:] = bg
        for k in sorted(range(len(tracks)), key=lambda k: tracks[k].scale[f]):
            tr = tracks[k]
            if tr.look is None or not tr.visible[f]:
                continue
            size = int(round(tr.scale[f] * SPRITE_MAX * (1 + 0.08 * pulses[k][f])))
            free = np.array([WIDTH, HEIGHT]) - size - 6
            cx, cy = (size // 2 + 3 + tr.xy[f] * free + shake[k, f] * (pulses[k][f] > 0.05)).astype(int)
            _paste(frame, tr.look, size, int(cx), int(cy))
    return frames.tobytes()


# ---------------------------------------------------------------- audio
@lru_cache(maxsize=64)
def _wavetable(timbre: str, n_harmonics: int) -> np.ndarray:
    phase = np.arange(4096) / 4096
    ks = np.arange(1, n_harmonics + 1, 2 if timbre == "square" else 1)
    return (np.sin(2 * np.pi * np.outer(ks, phase)) / ks[:, None]).sum(axis=0)


def _periodic(timbre: str, f0: np.ndarray | float, n: int, phase0: float = 0.0,
              max_hz: float = 7000.0) -> np.ndarray:
    """Band-limited square or saw wave, with a (possibly time-varying) fundamental `f0`."""
    phase = phase0 + np.cumsum(np.broadcast_to(f0, (n,))) / SAMPLE_RATE
    table = _wavetable(timbre, max(1, int(max_hz // np.max(f0))))
    return table[(np.mod(phase, 1.0) * 4096).astype(int)]


def _carrier(spec: Category, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A category's raw sound (before level, rhythm and gating); clip-random phase only."""
    f, phi = spec.pitch_hz, rng.uniform(0, 1)  # phase in cycles
    if spec.timbre == "sine":
        return np.sin(2 * np.pi * (f * t + phi))
    if spec.timbre in ("square", "saw"):
        return _periodic(spec.timbre, f, t.size, phi)
    if spec.timbre == "fm":  # modulator at half the carrier, index 2
        return np.sin(2 * np.pi * f * t + 2.0 * np.sin(np.pi * (f * t + phi)))
    if spec.timbre == "chirp":  # one octave up-sweep, 1.5 sweeps per second
        return np.sin(2 * np.pi * np.cumsum(f * 2 ** np.mod(1.5 * t + phi, 1.0)) / SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.normal(size=t.size))
    freqs = np.fft.rfftfreq(t.size, 1 / SAMPLE_RATE)
    if spec.timbre == "noise":
        return np.fft.irfft(spectrum * ((freqs > 0.8 * f) & (freqs < 1.2 * f)), n=t.size)
    tk = np.arange(SAMPLE_RATE // 10) / SAMPLE_RATE  # "clicks": 10 per second, decaying resonances at f
    click = np.sin(2 * np.pi * f * tk) * np.exp(-tk / 0.02)
    return np.roll(np.tile(click, t.size // click.size + 1)[: t.size], int(phi * click.size))


def _no_object_sound(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Sound that belongs to no category: a pentatonic melody, or a babble of three gliding voices."""
    if rng.random() < 0.5:
        steps = rng.choice([0, 2, 4, 7, 9, 12, 14, 16], size=int(t[-1] * 4) + 1)
        freq = 261.6 * 2 ** (steps / 12)[(t * 4).astype(int)]
        local = np.mod(t, 0.25)
        return sum(np.sin(2 * np.pi * h * freq * local) / h for h in (1, 2, 3)) * np.exp(-local / 0.12)
    out = np.zeros_like(t)
    for _ in range(3):
        f0 = rng.uniform(100, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 6)))
        syllable = np.repeat(rng.uniform(0, 1, int(t[-1] / 0.2) + 1), int(0.2 * SAMPLE_RATE))[: t.size]
        out += _periodic("saw", f0, t.size, max_hz=3000.0) * syllable * np.sin(np.pi * np.mod(t, 0.2) / 0.2) ** 2
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    """Scale to UNIT_RMS and limit peaks, so the fixed global gain can never clip."""
    x = x / (np.sqrt(np.mean(x**2)) + 1e-12) * UNIT_RMS
    return np.clip(x, -PEAK_FACTOR * UNIT_RMS, PEAK_FACTOR * UNIT_RMS)


def _to_samples(per_frame: np.ndarray, ramp: int = 320) -> np.ndarray:
    """Frame-rate values -> sample rate, smoothed by a 20 ms moving average (no clicks at gates)."""
    x = np.repeat(per_frame.astype(np.float64), SAMPLE_RATE // FPS)
    c = np.concatenate([[0.0], np.cumsum(np.pad(x, (ramp // 2, ramp - ramp // 2 - 1), mode="edge"))])
    return (c[ramp:] - c[:-ramp]) / ramp


def _render_audio(rng: np.random.Generator, tracks: list[Track]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mix of all sounding tracks plus background noise; also each track's per-frame pulse (0..1)."""
    n = len(tracks[0].on)
    t = np.arange(n * SAMPLE_RATE // FPS) / SAMPLE_RATE
    mix = np.clip(rng.normal(0, NOISE_RMS, t.size), -4 * NOISE_RMS, 4 * NOISE_RMS)
    pulses = []
    for tr in tracks:
        if tr.sound is None:
            pulses.append(np.zeros(n))
            continue
        if tr.sound < 0:
            wave, rhythm = _no_object_sound(rng, t), np.ones_like(t)
        else:
            spec = CATEGORIES[tr.sound]
            rate, offset = spec.pulse_hz, rng.uniform(0, 1)
            rhythm = 0.25 + 0.75 * np.sin(np.pi * (rate * t + offset)) ** 2 if rate else np.ones_like(t)
            wave = _carrier(spec, rng, t) * rhythm
        gate = _to_samples(tr.on)
        mix += _unit(wave) * gate * _to_samples(tr.scale)
        pulses.append((rhythm * gate).reshape(n, -1).mean(axis=1) * (tr.sound == tr.look))
    return mix.astype(np.float32), pulses


# ---------------------------------------------------------------- clip plans
def _schedule(rng: np.random.Generator, n: int, min_len: int) -> np.ndarray:
    """Per-frame states from a few segments >= min_len: 0 visible+sounding, 1 off-screen+sounding,
    2 visible+silent; 30..80 % of frames in state 0."""
    for _ in range(10_000):
        k = int(rng.integers(2, min(4, n // min_len) + 1))
        lengths = min_len + rng.multinomial(n - k * min_len, np.full(k, 1 / k))
        states = np.repeat(rng.integers(0, 3, size=k), lengths)
        if 0.3 <= np.mean(states == 0) <= 0.8:
            return states
    raise RuntimeError("no schedule found")  # unreachable for n >= 2 * min_len


def _motion(rng: np.random.Generator, n: int, shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth approach/recede (scale) and drift (position in 0..1 of the free area)."""
    t = np.arange(n) / FPS
    mid, amp = rng.uniform(0.4, 0.75) * shrink, rng.uniform(0.1, 0.3) * shrink
    scale = np.clip(mid + amp * np.sin(2 * np.pi * t / rng.uniform(3, 10) + rng.uniform(0, 6)), MIN_SCALE, 1.0)
    centre, swing = rng.uniform(0.25, 0.75, 2), rng.uniform(0.1, 0.25, 2)
    periods, phases = rng.uniform(3, 9, 2), rng.uniform(0, 6, 2)
    xy = centre + swing * np.sin(2 * np.pi * t[:, None] / periods + phases)
    return scale.astype(np.float32), xy


def _plan_tracks(rng: np.random.Generator, kind: str, cat: int, n: int, variant: str | None = None) -> list[Track]:
    """The sources of one clip; tracks[0] is the primary (its category is the clip's label). `variant`: how a
    mismatched clip is made (MISMATCH_VARIANTS)."""
    min_len = int(round(MIN_SEGMENT_S * FPS))
    st = _schedule(rng, n, min_len)
    other = int((cat + rng.integers(1, len(CATEGORIES))) % len(CATEGORIES))
    if variant == "lookalike":
        other = LOOKALIKE[cat]
    never = np.zeros(n, dtype=bool)
    if kind in ("normal", "two_source", "sound_only"):
        visible = never if kind == "sound_only" else st != 1
        tracks = [Track(cat, cat, visible, st != 2, *_motion(rng, n, 0.75 if kind == "two_source" else 1))]
    else:
        tracks = [Track(cat, None, st != 1, never, *_motion(rng, n, 0.75 if variant == "crowd" else 1)),
                  Track(None, other if kind == "mismatched" else -1, never, st != 2, *_motion(rng, n))]
    if variant == "crowd":  # one or two more silent objects, always on screen, of neither category
        rest = [c for c in range(len(CATEGORIES)) if c not in (cat, other)]
        for look in rng.choice(rest, size=int(rng.integers(1, 3)), replace=False).tolist():
            tracks.append(Track(int(look), None, ~never, never, *_motion(rng, n, 0.6)))
    if kind == "two_source":
        st2 = _schedule(rng, n, min_len)
        while np.sum((st == 0) & (st2 == 0)) < min_len:
            st2 = _schedule(rng, n, min_len)
        tracks.append(Track(other, other, st2 != 1, st2 != 2, *_motion(rng, n, 0.75)))
    return tracks


def _truth(clip_id: str, cat: int, tracks: list[Track]) -> pa.Table:
    primary, n = tracks[0], len(tracks[0].on)
    sound_cat = np.full(n, -2)
    for tr in reversed([tr for tr in tracks if tr.sound is not None]):  # the primary's own sound wins
        sound_cat[tr.on] = tr.sound
    second = tracks[1] if len(tracks) > 1 and tracks[1].look is not None else None
    absent = np.full(n, second is None)
    return pa.table({
        "clip_id": [clip_id] * n, "t": np.arange(n) / FPS, "category": np.full(n, cat, dtype=np.int32),
        "visible": primary.visible, "sounding": np.any([tr.on for tr in tracks], axis=0),
        "matched": primary.on & (primary.sound == cat), "scale": primary.scale,
        "category2": pa.array(np.full(n, second.look if second else 0), pa.int32(), mask=absent),
        "visible2": pa.array(second.visible if second else absent, pa.bool_(), mask=absent),
        "sound_category": pa.array(sound_cat, pa.int32(), mask=sound_cat == -2),
    }, schema=TRUTH_SCHEMA)


# ---------------------------------------------------------------- encoding and the world
def _encode(frames: bytes, audio: np.ndarray, dst: Path) -> None:
    """One ffmpeg run: raw frames on stdin + a temp 16-bit wav -> mp4, renamed into place when complete."""
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=dst.parent) as tmp:
        wav, mp4 = Path(tmp) / "audio.wav", Path(tmp) / "clip.mp4"
        sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0", "-i", str(wav),
               "-map", "0:v:0", "-map", "1:a:0", *FFMPEG_ENCODE, str(mp4)]
        proc = subprocess.run(cmd, input=frames, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {dst.name}: {proc.stderr.decode(errors='replace')[-800:]}")
        os.replace(mp4, dst)


class ClipPlan(NamedTuple):
    """What one clip is: its kind, its mismatch variant (mismatched clips only), its category, and whether
    its sounding objects pulse with their sound."""

    kind: str
    variant: str | None
    category: int
    pulsing: bool


def _clip(raw_dir: Path, seed: int, index: int, plan: ClipPlan, n_frames: int) -> pa.Table:
    """Plan one clip from its own generator (keyed by seed and index), encode it unless present."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    clip_id = f"demo{index:05d}"
    tracks = _plan_tracks(rng, plan.kind, plan.category, n_frames, plan.variant)
    dst = Path(clip_in(raw_dir, clip_id))
    if not dst.exists():
        audio, pulses = _render_audio(rng, tracks)
        if not plan.pulsing:
            pulses = [np.zeros_like(p) for p in pulses]
        _encode(_render_video(rng, tracks, pulses), audio, dst)
    return _truth(clip_id, plan.category, tracks)


def _world_plan(seed: int, n_clips: int) -> list[ClipPlan]:
    """Exact kind counts (rounded fractions, the rest normal) and balanced categories, shuffled by seed; the
    mismatch variants dealt in turn over the mismatched clips, and half of each kind's clips (rounded down)
    pulsing, chosen by seed."""
    counts = {k: int(round(f * n_clips)) for k, f in KIND_FRACTIONS.items() if k != "normal"}
    counts = {"normal": n_clips - sum(counts.values()), **counts}
    rng = np.random.default_rng(seed)
    kinds = rng.permutation(np.repeat(list(counts), list(counts.values()))).tolist()
    cats = rng.permutation(np.arange(n_clips) % len(CATEGORIES))
    pulsing = np.zeros(n_clips, dtype=bool)
    variants: list[str | None] = [None] * n_clips
    for kind in counts:
        members = np.array([i for i, k in enumerate(kinds) if k == kind], dtype=np.int64)
        pulsing[rng.permutation(members)[: int(PULSING_FRACTION * len(members))]] = True
        if kind == "mismatched":
            for j, i in enumerate(members.tolist()):
                variants[i] = MISMATCH_VARIANTS[j % len(MISMATCH_VARIANTS)]
    return [ClipPlan(kinds[i], variants[i], int(cats[i]), bool(pulsing[i])) for i in range(n_clips)]


def _clip_list(raw_dir: Path, cats: np.ndarray, duration_s: float) -> pa.Table:
    n = len(cats)
    return pa.table({
        "clip_id": [f"demo{i:05d}" for i in range(n)], "dataset": ["demo"] * n, "ytid": [None] * n,
        "url": [None] * n, "path": [clip_in(raw_dir, f"demo{i:05d}") for i in range(n)],
        "start_s": [0.0] * n, "end_s": [float(duration_s)] * n,
        "label": [CATEGORIES[c].name for c in cats], "split": ["test" if i % 5 == 0 else "train" for i in range(n)],
        "source_row": np.arange(1, n + 1),
    }, schema=CLIP_LIST_SCHEMA)


def _counts(plans: list[ClipPlan], truth: pa.Table) -> dict:
    df = truth.to_pandas()
    good = good_pair_mask(df)
    kinds = [p.kind for p in plans]
    return {
        "kinds": {k: kinds.count(k) for k in KIND_FRACTIONS}, "frames": len(df),
        "mismatch_variants": {v: sum(p.variant == v for p in plans) for v in MISMATCH_VARIANTS},
        "pulsing_clips": sum(p.pulsing for p in plans),
        "good_pair_frames": int(good.sum()), "good_pair_fraction": round(float(good.mean()), 4),
        "offscreen_sounding_frames": int((~df.visible & df.sounding).sum()),
        "visible_silent_frames": int((df.visible & ~df.sounding).sum()),
        "clip_kinds": {f"demo{i:05d}": k for i, k in enumerate(kinds)},
        "clip_variants": {f"demo{i:05d}": p.variant for i, p in enumerate(plans) if p.variant is not None},
        "clip_pulsing": {f"demo{i:05d}": p.pulsing for i, p in enumerate(plans)},
    }


def world_params(n_clips: int, seed: int, duration_s: float) -> dict:
    """What makes a demo world: two worlds with the same params are the same bytes."""
    return json.loads(json.dumps({
        "n_clips": n_clips, "seed": seed, "duration_s": float(duration_s), "width": WIDTH, "height": HEIGHT,
        "fps": FPS, "sample_rate": SAMPLE_RATE, "sprite_max": SPRITE_MAX, "kind_fractions": KIND_FRACTIONS,
        "mismatch_variants": MISMATCH_VARIANTS, "lookalike": LOOKALIKE, "pulsing_fraction": PULSING_FRACTION,
        "categories": [asdict(c) for c in CATEGORIES],
    }))


def generate_world(out_dir: str | os.PathLike, n_clips: int = 320, seed: int = 0, duration_s: float = 8.0,
                   workers: int = 2) -> DemoWorld:
    """Write the demo world under out_dir/raw (mp4s, truth.parquet, demo_clips.parquet, demo_world.json).

    A complete world with the same parameters is reused as is; a killed run resumes (finished mp4s are
    kept); a folder holding a world with other parameters is refused (UsageError)."""
    n_frames = int(round(duration_s * FPS))
    if n_clips < 1 or workers < 1 or abs(n_frames - duration_s * FPS) > 1e-6 or n_frames < 2 * MIN_SEGMENT_S * FPS:
        raise UsageError(f"demo world of {n_clips} clips of {duration_s} s ({workers} workers): give >= 1 clip "
                         f"(CLIPS=, --demo-clips) of >= {2 * MIN_SEGMENT_S} s, a whole number of frames at {FPS} fps "
                         "(--set demo.duration_s=...)")
    require_tools("ffmpeg")  # the demo world is encoded with the ffmpeg CLI
    layout = RunLayout(str(Path(out_dir).resolve()))
    raw = Path(layout.raw)
    plans = _world_plan(seed, n_clips)
    kinds = [p.kind for p in plans]
    world = DemoWorld(raw, Path(layout.demo_clips), Path(layout.truth), Path(layout.demo_world),
                      n_clips, n_frames, {k: kinds.count(k) for k in KIND_FRACTIONS})
    params = world_params(n_clips, seed, duration_s)
    if world.world_json.exists():
        old = json.loads(world.world_json.read_text()).get("params")
        if old != params:
            changed = sorted(k for k in params if old is None or old.get(k) != params[k])
            raise UsageError(f"{raw} holds a demo world with other parameters (differing: {', '.join(changed)}); "
                             "choose another output folder")
        if _complete(world):
            return world
    write_json(world.world_json, {"params": params})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        truths = list(pool.map(lambda i: _clip(raw, seed, i, plans[i], n_frames), range(n_clips)))
    truth = pa.concat_tables(truths)
    write_parquet(world.truth_path, truth, TRUTH_SCHEMA)
    write_parquet(world.clips_path, _clip_list(raw, np.array([p.category for p in plans]), duration_s),
                  CLIP_LIST_SCHEMA)
    write_json(world.world_json, {"params": params, "counts": _counts(plans, truth)})
    return world


def _complete(world: DemoWorld) -> bool:
    meta = json.loads(world.world_json.read_text())
    return ("counts" in meta and world.truth_path.exists() and world.clips_path.exists()
            and all(Path(clip_in(world.raw_dir, f"demo{i:05d}")).exists() for i in range(world.n_clips)))
