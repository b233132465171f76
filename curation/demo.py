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
How recognisable categories are, and what else a clip holds (busy or moving backgrounds, overlapping sounds,
compression, noise), follows a named preset of `curation.demo_styles` (docs/demo_worlds.md); the default, `easy`,
is the world described here, and every preset keeps the truth columns' meaning.

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

import colorsys
import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import soundfile as sf

from curation.demo_styles import BACKGROUNDS, KIND_FRACTIONS, WorldStyle, preset_style
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
MISMATCH_VARIANTS = ("random", "lookalike", "crowd")  # dealt in turn over the mismatched clips
PULSING_FRACTION = 0.5  # of each kind's clips, whose sounding objects swell and shake with their sound


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
# style `shared_looks`: category i takes shape i // 2 and colour (i // 2 + i % 2) % 4 of these four, so each shape
# and each colour names two categories and no two share both; a category's look-alike is its shape partner (i ^ 1)
_SHARED_SHAPES = ("circle", "square", "triangle", "star")
_SHARED_COLOURS = ((220, 40, 40), (40, 80, 230), (40, 190, 60), (240, 220, 40))
SHARED_LOOKS = tuple((_SHARED_SHAPES[i // 2], _SHARED_COLOURS[(i // 2 + i % 2) % 4]) for i in range(8))
TEXTURES = ("solid", "stripes", "dots", "checker")  # style `texture_pool` draws from these
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "cross", "hexagon", "bar")  # bar: no category's


class Look(NamedTuple):
    """An object as one clip shows it."""

    shape: str
    colour: tuple[int, int, int]
    texture: str


class Recipe(NamedTuple):
    """A world's style and what it makes of the categories, the same for every clip."""

    style: WorldStyle
    categories: tuple[Category, ...]
    lookalike: tuple[int, ...]


def world_recipe(preset: str) -> Recipe:
    """The named preset's style, categories and look-alikes (UsageError for an unknown name)."""
    style = preset_style(preset)
    cats = CATEGORIES
    if style.shared_looks:
        cats = tuple(replace(c, shape=shape, colour=colour) for c, (shape, colour) in zip(cats, SHARED_LOOKS,
                                                                                           strict=True))
    if style.sound_overlap:
        cats = _overlapping_sounds(cats, style.sound_overlap)
    lookalike = tuple(c ^ 1 for c in range(len(cats))) if style.shared_looks else LOOKALIKE
    return Recipe(style, cats, lookalike)


def _overlapping_sounds(cats: tuple[Category, ...], overlap: float) -> tuple[Category, ...]:
    """Pull each pitch toward its band's centre (the geometric mean of the four lowest or of the four highest
    pitches) and each pulse rate toward the mean of its own and its partner's (the category four on), by `overlap`
    (1: four categories share each pitch, partners share a rhythm; timbre still tells them apart)."""
    logs = np.log([c.pitch_hz for c in cats])
    low = logs <= np.median(logs)
    centre = np.where(low, logs[low].mean(), logs[~low].mean())
    pitches = np.exp(logs + overlap * (centre - logs))
    partner = [cats[(i + len(cats) // 2) % len(cats)] for i in range(len(cats))]
    return tuple(replace(c, pitch_hz=round(float(p), 1),
                         pulse_hz=round(c.pulse_hz + overlap * ((c.pulse_hz + q.pulse_hz) / 2 - c.pulse_hz), 3))
                 for c, p, q in zip(cats, pitches, partner, strict=True))


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
    preset: str = "easy"


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
            "triangle": lambda: polygon(3, 0.5, np.pi / 6), "hexagon": lambda: polygon(6, 0.85, 0.0),
            "bar": lambda: (np.abs(u) <= 0.95) & (np.abs(v) <= 0.3)}[shape]()


def _texture_dark(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if texture == "stripes":
        return np.mod((u + v) * 2.5, 1.0) < 0.5
    if texture == "checker":
        return (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 1
    if texture == "dots":
        return np.hypot(np.mod(u * 2.5, 1) - 0.5, np.mod(v * 2.5, 1) - 0.5) < 0.22
    return np.zeros_like(u, dtype=bool)


@lru_cache(maxsize=4096)
def _sprite(look: Look, size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB (uint16) and alpha (0..255, uint16) of an object, anti-aliased by 2x supersampling."""
    g = (np.arange(2 * size) + 0.5) / size - 1.0
    u, v = np.meshgrid(g, g)
    alpha = _shape_mask(look.shape, u, v).reshape(size, 2, size, 2).mean(axis=(1, 3))
    dark = _texture_dark(look.texture, u[::2, ::2], v[::2, ::2])
    rgb = np.asarray(look.colour, dtype=np.float64) * np.where(dark, 0.45, 1.0)[..., None]
    return rgb.astype(np.uint16), np.round(alpha * 255).astype(np.uint16)[..., None]


def _look(recipe: Recipe, rng: np.random.Generator, category: int) -> Look:
    """A category's object as one clip shows it: its colour's hue turned by a clip-random angle within the style's
    spread (HSV, so saturation and brightness stay), its texture drawn from all textures when the style pools
    them. With no spread the colour is the category's exactly."""
    spec = recipe.categories[category]
    turn = rng.uniform(-recipe.style.hue_spread_deg, recipe.style.hue_spread_deg) / 360
    h, sat, val = colorsys.rgb_to_hsv(*(c / 255 for c in spec.colour))
    colour = tuple(round(c * 255) for c in colorsys.hsv_to_rgb((h + turn) % 1.0, sat, val))
    texture = TEXTURES[rng.integers(len(TEXTURES))] if recipe.style.texture_pool else spec.texture
    return Look(spec.shape, colour, texture)


def _paste(frame: np.ndarray, look: Look, size: int, cx: int, cy: int) -> None:
    rgb, alpha = _sprite(look, size)
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


def _texture_background(rng: np.random.Generator) -> np.ndarray:
    """A high-detail backdrop: a grid of tiles, each a fine pattern (stripes at an angle, checker, or pixel noise)
    in two random colours. Fine detail costs bits and hides no smooth region a model could key on."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    rows, cols = int(rng.integers(2, 5)), int(rng.integers(2, 6))
    tile = (y * rows // HEIGHT) * cols + x * cols // WIDTH
    img = np.empty((HEIGHT, WIDTH, 3))
    for k in range(rows * cols):
        c0, c1 = rng.uniform(20, 235, size=(2, 3))
        period, angle, pattern = rng.uniform(2.5, 8), rng.uniform(0, np.pi), rng.integers(3)
        if pattern == 0:
            on = np.mod((x * np.cos(angle) + y * np.sin(angle)) / period, 1.0) < 0.5
        elif pattern == 1:
            on = (np.floor(x / period) + np.floor(y / period)) % 2 == 1
        else:
            on = rng.random((HEIGHT, WIDTH)) < 0.5
        inside = tile == k
        img[inside] = np.where(on[inside][:, None], c1, c0)
    return img.astype(np.uint8)


def _clutter_background(rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    """A gradient backdrop under 10-20 static distractor objects, small to mid-sized, of any shape (most are a
    category's) and half of them in a category's colour. They never sound and are not in the truth."""
    img = _background(rng)
    colours = [c.colour for c in recipe.categories]
    for _ in range(int(rng.integers(10, 21))):
        shape, texture = SHAPES[rng.integers(len(SHAPES))], TEXTURES[rng.integers(len(TEXTURES))]
        colour = colours[rng.integers(len(colours))] if rng.random() < 0.5 else tuple(rng.integers(30, 250, 3))
        look = Look(shape, tuple(int(c) for c in colour), texture)
        _paste(img, look, int(rng.integers(16, 61)), int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
    return img


def _plain_background(rng: np.random.Generator) -> np.ndarray:
    """A low-detail backdrop: two muted colours blended top to bottom, nothing else."""
    c0, c1 = rng.uniform(60, 190, size=(2, 3))
    column = c0 + (c1 - c0) * np.linspace(0, 1, HEIGHT)[:, None]
    return np.repeat(column[:, None], WIDTH, axis=1).astype(np.uint8)


def _backdrop(kind: str, rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    """A background of one of the kinds in `curation.demo_styles.BACKGROUNDS`."""
    if kind == "texture":
        return _texture_background(rng)
    if kind == "clutter":
        return _clutter_background(rng, recipe)
    if kind == "plain":
        return _plain_background(rng)
    return _background(rng)


class Camera(NamedTuple):
    """A camera move over a clip: per frame, the zoom (>= 1) and the view's centre on the backdrop (pixels)."""

    zoom: np.ndarray
    centre: np.ndarray


def _camera(rng: np.random.Generator, n: int) -> Camera:
    """A slow pan and zoom: the zoom goes linearly between two factors in 1.08..1.2 and the view's centre glides
    between two points at which the view (sized for the smaller zoom) stays inside the backdrop."""
    zoom = np.linspace(*rng.uniform(1.08, 1.2, 2), n)
    size = np.array([WIDTH, HEIGHT])
    reach = size / 2 * (1 - 1 / zoom.min())
    ends = size / 2 + rng.uniform(-1, 1, size=(2, 2)) * reach
    return Camera(zoom, np.linspace(ends[0], ends[1], n))


def _camera_views(bg: np.ndarray, camera: Camera | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's backdrop, and how far (pixels, x and y) the pan carries the objects: the scene moves against
    the view's centre, measured from its mid-point. A static camera shows the backdrop as it is."""
    if camera is None:
        return np.broadcast_to(bg, (n, *bg.shape)), np.zeros((n, 2))
    views = np.empty((n, *bg.shape), dtype=np.uint8)
    for f in range(n):
        x = camera.centre[f, 0] + (np.arange(WIDTH) + 0.5 - WIDTH / 2) / camera.zoom[f]
        y = camera.centre[f, 1] + (np.arange(HEIGHT) + 0.5 - HEIGHT / 2) / camera.zoom[f]
        views[f] = bg[np.clip(y, 0, HEIGHT - 1).astype(int)][:, np.clip(x, 0, WIDTH - 1).astype(int)]
    middle = (camera.centre[0] + camera.centre[-1]) / 2
    return views, -(camera.centre - middle) * camera.zoom[:, None]


class Scene(NamedTuple):
    """What a clip shows besides its sources' paths: its backdrop (None: the gradient drawn from the clip's own
    generator, as in the easy world), each track's object (None for a track with none), its camera (None:
    static), and the sigma of its per-frame pixel noise, drawn from `rng`."""

    backdrop: np.ndarray | None
    looks: list[Look | None]
    camera: Camera | None
    noise: float
    rng: np.random.Generator


def _render_video(rng: np.random.Generator, tracks: list[Track], pulses: list[np.ndarray], scene: Scene) -> bytes:
    """Raw rgb24 frames: the background, then the visible objects, nearer (larger) ones on top. Objects keep a
    margin from the edges as wide as the pan carries them, so an object on screen stays wholly on screen."""
    bg = _background(rng) if scene.backdrop is None else scene.backdrop
    n = len(tracks[0].on)
    shake = rng.integers(-2, 3, size=(len(tracks), n, 2))
    views, shift = _camera_views(bg, scene.camera, n)
    margin = np.ceil(np.abs(shift).max(axis=0)).astype(int)
    frames = np.empty((n, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for f in range(n):
        frame = frames[f]
        frame[:] = views[f]
        for k in sorted(range(len(tracks)), key=lambda k: tracks[k].scale[f]):
            tr = tracks[k]
            if tr.look is None or not tr.visible[f]:
                continue
            size = int(round(tr.scale[f] * SPRITE_MAX * (1 + 0.08 * pulses[k][f])))
            free = np.array([WIDTH, HEIGHT]) - size - 6 - 2 * margin
            cx, cy = (size // 2 + 3 + margin + tr.xy[f] * free + shift[f]
                      + shake[k, f] * (pulses[k][f] > 0.05)).astype(int)
            _paste(frame, scene.looks[k], size, int(cx), int(cy))
        if scene.noise:
            frame[:] = np.clip(np.rint(frame + scene.rng.normal(0, scene.noise, frame.shape)), 0, 255)
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


def _sound_bed(rng: np.random.Generator, t: np.ndarray, rms: float) -> np.ndarray:
    """Wind, which belongs to no category: noise darkened toward low frequencies and cut above a clip-random
    300-900 Hz, swelling in slow gusts; at `rms`, peaks limited to 3x."""
    freqs = np.fft.rfftfreq(t.size, 1 / SAMPLE_RATE)
    shaped = np.fft.rfft(rng.normal(size=t.size)) / np.sqrt(1 + freqs / 50) * (freqs < rng.uniform(300, 900))
    wind = np.fft.irfft(shaped, n=t.size) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t
                                                               + rng.uniform(0, 2 * np.pi)))
    return np.clip(wind / (np.sqrt(np.mean(wind**2)) + 1e-12) * rms, -3 * rms, 3 * rms)


def _render_audio(rng: np.random.Generator, tracks: list[Track], recipe: Recipe,
                  scene_rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mix of all sounding tracks plus background noise (and the style's sound bed, drawn from `scene_rng`),
    limited to full scale; also each track's per-frame pulse (0..1)."""
    n = len(tracks[0].on)
    t = np.arange(n * SAMPLE_RATE // FPS) / SAMPLE_RATE
    noise = recipe.style.audio_noise_rms
    mix = np.clip(rng.normal(0, noise, t.size), -4 * noise, 4 * noise)
    pulses = []
    for tr in tracks:
        if tr.sound is None:
            pulses.append(np.zeros(n))
            continue
        if tr.sound < 0:
            wave, rhythm = _no_object_sound(rng, t), np.ones_like(t)
        else:
            spec = recipe.categories[tr.sound]
            rate, offset = spec.pulse_hz, rng.uniform(0, 1)
            rhythm = 0.25 + 0.75 * np.sin(np.pi * (rate * t + offset)) ** 2 if rate else np.ones_like(t)
            wave = _carrier(spec, rng, t) * rhythm
        gate = _to_samples(tr.on)
        mix += _unit(wave) * gate * _to_samples(tr.scale)
        pulses.append((rhythm * gate).reshape(n, -1).mean(axis=1) * (tr.sound == tr.look))
    if recipe.style.sound_bed_rms:
        mix += _sound_bed(scene_rng, t, recipe.style.sound_bed_rms)
    return np.clip(mix, -1.0, 1.0).astype(np.float32), pulses  # a no-op unless a bed and noise top two sources


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


def _plan_tracks(rng: np.random.Generator, kind: str, cat: int, n: int, variant: str | None = None,
                 lookalike: tuple[int, ...] = LOOKALIKE) -> list[Track]:
    """The sources of one clip; tracks[0] is the primary (its category is the clip's label). `variant`: how a
    mismatched clip is made (MISMATCH_VARIANTS); `lookalike`: the world's look-alike of each category."""
    min_len = int(round(MIN_SEGMENT_S * FPS))
    st = _schedule(rng, n, min_len)
    other = int((cat + rng.integers(1, len(CATEGORIES))) % len(CATEGORIES))
    if variant == "lookalike":
        other = lookalike[cat]
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
def _encode(frames: bytes, audio: np.ndarray, dst: Path, crf: int) -> None:
    """One ffmpeg run: raw frames on stdin + a temp 16-bit wav -> mp4 (x264 at quality `crf`), renamed into place
    when complete."""
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=dst.parent) as tmp:
        wav, mp4 = Path(tmp) / "audio.wav", Path(tmp) / "clip.mp4"
        sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0", "-i", str(wav),
               "-map", "0:v:0", "-map", "1:a:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf),
               "-pix_fmt", "yuv420p", "-g", "10", "-threads", "1", "-c:a", "aac", "-b:a", "64k", "-ar", "44100",
               "-ac", "1", "-movflags", "+faststart", "-fflags", "+bitexact", "-flags:v", "+bitexact",
               "-flags:a", "+bitexact", "-map_metadata", "-1", "-f", "mp4", str(mp4)]
        proc = subprocess.run(cmd, input=frames, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {dst.name}: {proc.stderr.decode(errors='replace')[-800:]}")
        os.replace(mp4, dst)


class ClipPlan(NamedTuple):
    """What one clip is: its kind, its mismatch variant (mismatched clips only), its category, whether its
    sounding objects pulse with their sound, its background kind and whether its camera moves."""

    kind: str
    variant: str | None
    category: int
    pulsing: bool
    background: str = "gradient"
    camera: bool = False


def _scene(recipe: Recipe, plan: ClipPlan, tracks: list[Track], seed: int, index: int) -> Scene:
    """What the world's style adds to a clip, from a generator of its own (keyed by seed, index and 1), so the
    easy world's clips draw exactly what they drew before styles existed: its objects' looks, its backdrop (from a
    generator keyed by the category when the style shares scenes per category), its camera and noise."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    looks = [None if tr.look is None else _look(recipe, rng, tr.look) for tr in tracks]
    backdrop = None
    if recipe.style.category_scenes:
        category_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(plan.category, 2)))
        backdrop = _backdrop(plan.background, category_rng, recipe)
    elif plan.background != "gradient":
        backdrop = _backdrop(plan.background, rng, recipe)
    camera = _camera(rng, len(tracks[0].on)) if plan.camera else None
    return Scene(backdrop, looks, camera, recipe.style.video_noise, rng)


def _clip(raw_dir: Path, seed: int, index: int, plan: ClipPlan, n_frames: int, recipe: Recipe) -> pa.Table:
    """Plan one clip from its own generator (keyed by seed and index), encode it unless present."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    clip_id = f"demo{index:05d}"
    tracks = _plan_tracks(rng, plan.kind, plan.category, n_frames, plan.variant, recipe.lookalike)
    dst = Path(clip_in(raw_dir, clip_id))
    if not dst.exists():
        _encode(*_render(rng, tracks, plan, recipe, seed, index), dst, recipe.style.crf)
    return _truth(clip_id, plan.category, tracks)


def _render(rng: np.random.Generator, tracks: list[Track], plan: ClipPlan, recipe: Recipe, seed: int,
            index: int) -> tuple[bytes, np.ndarray]:
    """A planned clip's raw frames and audio, drawn on from the clip's generator `rng`."""
    scene = _scene(recipe, plan, tracks, seed, index)
    audio, pulses = _render_audio(rng, tracks, recipe, scene.rng)
    if not plan.pulsing:
        pulses = [np.zeros_like(p) for p in pulses]
    return _render_video(rng, tracks, pulses, scene), audio


def _exact_counts(shares: dict[str, float], n: int) -> dict[str, int]:
    """How many of n items each share gets: rounded, the first one taking the rest."""
    counts = {k: int(round(f * n)) for k, f in list(shares.items())[1:]}
    return {next(iter(shares)): n - sum(counts.values()), **counts}


def _world_plan(seed: int, n_clips: int, style: WorldStyle) -> list[ClipPlan]:
    """Exact kind counts (rounded fractions, the rest normal) and balanced categories, shuffled by seed; the
    mismatch variants dealt in turn over the mismatched clips, and half of each kind's clips (rounded down)
    pulsing, chosen by seed; then, as exactly, the background kinds and the clips whose camera moves."""
    counts = _exact_counts(style.kind_fractions, n_clips)
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
    backgrounds = _exact_counts(style.backgrounds, n_clips)
    backgrounds = rng.permutation(np.repeat(list(backgrounds), list(backgrounds.values()))).tolist()
    camera = np.zeros(n_clips, dtype=bool)
    camera[rng.permutation(n_clips)[: int(round(style.camera_motion * n_clips))]] = True
    return [ClipPlan(kinds[i], variants[i], int(cats[i]), bool(pulsing[i]), backgrounds[i], bool(camera[i]))
            for i in range(n_clips)]


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
    kinds, backgrounds = [p.kind for p in plans], [p.background for p in plans]
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
        "backgrounds": {b: backgrounds.count(b) for b in BACKGROUNDS if b in backgrounds},
        "clip_backgrounds": {f"demo{i:05d}": b for i, b in enumerate(backgrounds)},
        "camera_clips": [f"demo{i:05d}" for i, p in enumerate(plans) if p.camera],
    }


def world_params(n_clips: int, seed: int, duration_s: float, preset: str = "easy") -> dict:
    """What makes a demo world: two worlds with the same params are the same bytes. The easy world's params are
    those of worlds made before presets existed (so those are reused); another preset adds its name and style."""
    recipe = world_recipe(preset)
    params = {
        "n_clips": n_clips, "seed": seed, "duration_s": float(duration_s), "width": WIDTH, "height": HEIGHT,
        "fps": FPS, "sample_rate": SAMPLE_RATE, "sprite_max": SPRITE_MAX,
        "kind_fractions": recipe.style.kind_fractions, "mismatch_variants": MISMATCH_VARIANTS,
        "lookalike": recipe.lookalike, "pulsing_fraction": PULSING_FRACTION,
        "categories": [asdict(c) for c in recipe.categories],
    }
    if preset != "easy":
        params.update(preset=preset, style=asdict(recipe.style))
    return json.loads(json.dumps(params))


def generate_world(out_dir: str | os.PathLike, n_clips: int = 320, seed: int = 0, duration_s: float = 8.0,
                   workers: int = 2, preset: str = "easy") -> DemoWorld:
    """Write the demo world of a preset (`curation.demo_styles.PRESETS`) under out_dir/raw (mp4s, truth.parquet,
    demo_clips.parquet, demo_world.json).

    A complete world with the same parameters is reused as is; a killed run resumes (finished mp4s are
    kept); a folder holding a world with other parameters is refused (UsageError)."""
    recipe = world_recipe(preset)
    n_frames = int(round(duration_s * FPS))
    if n_clips < 1 or workers < 1 or abs(n_frames - duration_s * FPS) > 1e-6 or n_frames < 2 * MIN_SEGMENT_S * FPS:
        raise UsageError(f"demo world of {n_clips} clips of {duration_s} s ({workers} workers): give >= 1 clip "
                         f"(CLIPS=, --demo-clips) of >= {2 * MIN_SEGMENT_S} s, a whole number of frames at {FPS} fps "
                         "(--set demo.duration_s=...)")
    require_tools("ffmpeg")  # the demo world is encoded with the ffmpeg CLI
    layout = RunLayout(str(Path(out_dir).resolve()))
    raw = Path(layout.raw)
    plans = _world_plan(seed, n_clips, recipe.style)
    kinds = [p.kind for p in plans]
    world = DemoWorld(raw, Path(layout.demo_clips), Path(layout.truth), Path(layout.demo_world),
                      n_clips, n_frames, {k: kinds.count(k) for k in KIND_FRACTIONS}, preset)
    params = world_params(n_clips, seed, duration_s, preset)
    if world.world_json.exists():
        old = json.loads(world.world_json.read_text()).get("params") or {}
        if old != params:
            changed = sorted(k for k in params.keys() | old.keys() if old.get(k) != params.get(k))
            raise UsageError(f"{raw} holds a demo world with other parameters (differing: {', '.join(changed)}); "
                             "choose another output folder")
        if _complete(world):
            return world
    write_json(world.world_json, {"preset": preset, "params": params})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        truths = list(pool.map(lambda i: _clip(raw, seed, i, plans[i], n_frames, recipe), range(n_clips)))
    truth = pa.concat_tables(truths)
    write_parquet(world.truth_path, truth, TRUTH_SCHEMA)
    write_parquet(world.clips_path, _clip_list(raw, np.array([p.category for p in plans]), duration_s),
                  CLIP_LIST_SCHEMA)
    write_json(world.world_json, {"preset": preset, "params": params, "counts": _counts(plans, truth)})
    return world


def _complete(world: DemoWorld) -> bool:
    meta = json.loads(world.world_json.read_text())
    return ("counts" in meta and world.truth_path.exists() and world.clips_path.exists()
            and all(Path(clip_in(world.raw_dir, f"demo{i:05d}")).exists() for i in range(world.n_clips)))
