"""The duplicate check on real encoded clips (numpy scenes + ffmpeg, copies made with the ffmpeg CLI, decoded
by the pipeline's decoder): what copies must be grouped, what distinct look-alikes must never be, and which
rejection a clip that several filters hit is recorded under."""

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from curation.config import DecodeConfig, FilterConfig
from curation.decode import decode_clip
from curation.quality import REJECTION_ORDER, judge, measure, signals_dict

W, H, FPS, SR, SECONDS = 288, 224, 10, 16000, 7.0
N, SAMPLES = int(SECONDS * FPS), int(SECONDS * SR)


def _encode(frames: np.ndarray, audio: np.ndarray, dst: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        wav = Path(tmp) / "a.wav"
        sf.write(wav, audio, SR, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                        f"{W}x{H}", "-r", str(FPS), "-i", "pipe:0", "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
                        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac",
                        "-b:a", "64k", "-ar", "44100", str(dst)], input=frames.tobytes(), check=True)
    return dst


def _copy(src: Path, dst: Path, *options: str, start: float = 0.0, seconds: float = 6.0) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-ss", str(start), "-i", str(src), "-t", str(seconds),
                    *options, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-b:a", "64k", str(dst)], check=True)
    return dst


def _smooth(rng: np.random.Generator, cells: tuple[int, int], width: int) -> np.ndarray:
    """(H, width, 3) in 0..1 without fine detail: a coarse random grid, bilinearly upsampled."""
    def interp(n: int, size: int) -> np.ndarray:
        return np.array([np.interp(np.linspace(0, n - 1, size), np.arange(n), e) for e in np.eye(n)]).T

    return np.einsum("hi,cij,wj->hwc", interp(cells[0], H), rng.uniform(0, 1, (3, *cells)), interp(cells[1], width))


def _textured(seed: int, px_per_frame: float) -> np.ndarray:
    """A scene of 8-px random blocks panned right at `px_per_frame`."""
    rng = np.random.default_rng(seed)
    scene = np.kron(rng.integers(30, 226, (H // 8, W // 8 + 20, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return np.stack([scene[:, int(i * px_per_frame):int(i * px_per_frame) + W] for i in range(N)])


def _bursts(seed: int) -> np.ndarray:
    """Noise bursts of random length and level: a recording's own fine structure."""
    rng = np.random.default_rng(seed)
    levels = np.repeat(rng.uniform(0.01, 0.3, int(SECONDS * 5)), SR // 5)
    return (levels * rng.standard_normal(SAMPLES)).astype(np.float32)


def _signals(path: Path, seconds: float = 6.0) -> dict:
    clip = decode_clip(path, 0.0, seconds, DecodeConfig())
    return signals_dict(measure(clip.frames, clip.audio, clip.sample_rate))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, dict]:
    """Signals of: an original and its copies; a slow-moving clip and its copy; a still image with sound and its
    copy; six distinct clips sharing a smooth drifting scene and a steady category sound (each its own object
    and pitch or noise realisation)."""
    tmp = tmp_path_factory.mktemp("dups")
    original = _encode(_textured(0, 2.0), _bursts(0), tmp / "original.mp4")
    slow = _encode(_textured(1, 0.1), _bursts(1), tmp / "slow.mp4")
    still = _encode(_textured(2, 0.0), _bursts(2), tmp / "still.mp4")
    small = ("-vf", "scale=216:168", "-af", "volume=0.5", "-crf", "28")  # 3/4 size, -6 dB
    paths = {"original": original, "slow": slow, "still": still,
             "reenc": _copy(original, tmp / "reenc.mp4", "-crf", "33"),
             "resized": _copy(original, tmp / "resized.mp4", "-vf", "scale=144:112"),
             "shift05": _copy(original, tmp / "shift05.mp4", start=0.5),
             "shift1": _copy(original, tmp / "shift1.mp4", start=1.0),
             "recut": _copy(original, tmp / "recut.mp4", start=2.0, seconds=4.0),
             "quieter": _copy(original, tmp / "quieter.mp4", "-af", "volume=0.5"),
             "slow_copy": _copy(slow, tmp / "slow_copy.mp4", *small, start=0.5),
             "still_copy": _copy(still, tmp / "still_copy.mp4", *small, start=0.5)}
    scene_rng = np.random.default_rng(7)
    wide = 50 + 150 * _smooth(scene_rng, (4, 8), 2 * W)
    scene = np.stack([wide[:, i:i + W] for i in (np.arange(N) * 1.5).astype(int)])
    y, x = np.mgrid[0:H, 0:W]
    t = np.arange(SAMPLES) / SR
    for i in range(6):  # the look-alikes
        rng = np.random.default_rng(100 + i)
        cx, cy, size = rng.uniform(60, W - 60), rng.uniform(60, H - 60), rng.uniform(25, 40)
        d = ((x - cx) ** 2 + (y - cy) ** 2) / size**2
        if i % 2:  # a soft plain blob
            alpha, colour = np.exp(-2 * d)[..., None], rng.uniform(20, 235, 3)
        else:  # a striped disc
            alpha = np.clip(1.5 - d, 0, 1)[..., None]
            colour = np.where((np.sin(x * 2 * np.pi / rng.uniform(6, 12)) > 0)[..., None], 220.0, 40.0)
        frames = np.clip(scene * (1 - 0.8 * alpha) + 0.8 * alpha * colour, 0, 255).astype(np.uint8)
        if i < 4:  # one steady harmonic tone, a semitone apart
            sound = sum(np.sin(2 * np.pi * k * 220 * 2 ** (i / 12) * t) / k for k in range(1, 6))
        else:  # one colour of noise, its own realisation
            sound = np.convolve(rng.standard_normal(SAMPLES), np.ones(4) / 4, mode="same")
        sound = (0.1 * sound / np.sqrt(np.mean(sound**2)) + 0.003 * rng.standard_normal(SAMPLES)).astype(np.float32)
        paths[f"lookalike{i}"] = _encode(frames, sound, tmp / f"lookalike{i}.mp4")
    return {name: _signals(path, 4.0 if name == "recut" else 6.0) for name, path in paths.items()}


COPIES = ("original", "reenc", "resized", "shift05", "shift1", "recut", "quieter")


def test_copies_are_grouped(media):
    signals = {name: media[name] for name in (*COPIES, "slow", "slow_copy")}
    groups = judge([], signals, FilterConfig(), FPS).dup_group
    assert groups == {**dict.fromkeys(COPIES, "original"), "slow": "slow", "slow_copy": "slow"}


def test_distinct_clips_sharing_a_smooth_scene_and_a_steady_sound_are_never_grouped(media):
    lookalikes = {name: s for name, s in media.items() if name.startswith("lookalike")}
    assert len(lookalikes) == 6
    assert judge([], lookalikes, FilterConfig(), FPS).dup_group == {}
    # nor with the copies around (other footage, other sound)
    assert set(judge([], media, FilterConfig(), FPS).dup_group) == {*COPIES, "slow", "slow_copy", "still",
                                                                      "still_copy"}


def test_a_still_copy_joins_its_group(media):
    # a copy of a still image with sound, and a copy of a moving clip that the still filter flags (a re-encode of
    # a slow-moving clip can measure below still_motion while its original does not): every filter judges every
    # clip, so both are compared for duplicates whatever their motion
    signals = {"still": media["still"], "still_copy": media["still_copy"], "slow": media["slow"],
               "slow_copy": {**media["slow_copy"], "motion": 0.3}}
    v = judge([], signals, FilterConfig(), FPS)
    assert v.dup_group == {"still": "still", "still_copy": "still", "slow": "slow", "slow_copy": "slow"}
    assert dict(zip(v.ids, v.still.tolist(), strict=True)) == {"slow": False, "slow_copy": True, "still": True,
                                                               "still_copy": True}
    assert {cid: kind for cid, (kind, _) in v.rejected.items()} == {"still_copy": "duplicate", "still": "still",
                                                                      "slow_copy": "duplicate"}


def test_a_clip_several_filters_reject_is_recorded_under_the_first_of_the_order(media):
    assert REJECTION_ORDER == ("duplicate", "still", "silent", "overlap")
    # still_copy: a still duplicate; quiet: a silent duplicate in an overlapping window; hush: silent, overlapping
    signals = {"still": media["still"], "still_copy": media["still_copy"], "original": media["original"],
               "quiet": {**media["reenc"], "loud_db": -70.0}, "hush": {**media["lookalike0"], "loud_db": -70.0}}
    windows = [("original", "ytid_______", 0.0, 6.0), ("quiet", "ytid_______", 5.0, 11.0),
               ("hush", "ytid_______", 10.0, 16.0)]
    every = {"reject_duplicates": True, "reject_still": True, "reject_silent": True, "reject_overlaps": True}

    def kinds(**off) -> dict[str, str]:
        v = judge(windows, signals, FilterConfig(**{**every, **off}), FPS)
        return {cid: kind for cid, (kind, _) in v.rejected.items()}

    assert kinds() == {"still_copy": "duplicate", "quiet": "duplicate", "still": "still", "hush": "silent"}
    assert kinds(reject_duplicates=False) == {"still_copy": "still", "still": "still", "quiet": "silent",
                                              "hush": "silent"}
    assert kinds(reject_duplicates=False, reject_still=False, reject_silent=False) == {"quiet": "overlap",
                                                                                       "hush": "overlap"}
    v = judge(windows, signals, FilterConfig(**every), FPS)  # recorded whatever is rejected
    assert v.overlap_of == {"quiet": "original", "hush": "quiet"} and v.silent.sum() == 2


def test_signals_stay_small(media):
    assert max(len(str(s)) for s in media.values()) < 4096  # a 6-s clip; ~3 KB of base64 for 10 s
