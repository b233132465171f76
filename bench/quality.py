"""Data-quality filters on two kinds of world: precision and recall per filter, and their cost per clip.

(a) The planted world: demo-world clips (12 s, each with its own background; categories shared, so similar
content abounds) plus planted cases made with the ffmpeg CLI from the encoded clips: re-encoded, resized,
shifted (0.4-1 s), re-cut, gain-changed (-9 dB, -6 dB, +6 dB), combined and late-cut copies (the
near-duplicates), slow-moving clips and their copies, still images with sound and copies of them, silent
clips, short overlapping windows of one ytid, and look-alikes that must not match (same footage with other
sound, same still image with other sound, different clips of one category).
(b) The decoy world: distinct clips built to fool a check of smooth pictures and steady sounds: groups sharing a
smooth drifting scene, a still smooth scene or a moving test pattern (ffmpeg's testsrc2), each clip blended with
its own overlay (a textured or a soft object, a block texture or a smooth field), and a category sound shared
by the group but not its fine structure (a tone at the clip's own pitch, steady or beeping in the group's
rhythm; noise of one colour and envelope, the clip's own realisation). Every duplicate found there is false.

Runs the whole pipeline (synchrony scorer) on each world and scores clips.parquet against the plan; also
times `measure` on a decoded clip and the duplicate index on synthetic fingerprints of 20k and 100k clips.
Writes `<out>/quality.json`. Run: `python -m bench.quality [--base 24] [--decoys 12] [--out work/bench]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from curation.clip_cache import cache_path, read_summary
from curation.config import DecodeConfig, FilterConfig, load_config
from curation.decode import decode_clip
from curation.demo import generate_world
from curation.pipeline import RunPaths, run
from curation.quality import (
    DETAIL_BYTES,
    SPECTRUM_BANDS,
    Fingerprint,
    alignments,
    candidate_pairs,
    fingerprint,
    measure,
    signals_dict,
    spectrum_distance,
)
from manifests.io import write_json
from manifests.layout import RunLayout

FPS = 10.0
ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
          "-threads", "1", "-y"]
# name -> (input options, output options) of a near-duplicate copy of a clip's [0, 10) window
COPIES = {
    "reenc": ([], ["-t", "10", "-crf", "33"]),
    "resized": ([], ["-t", "10", "-vf", "scale=144:112", "-crf", "23"]),
    "shifted": (["-ss", "0.7"], ["-t", "10", "-crf", "26"]),
    "recut": (["-ss", "3.0"], ["-t", "9", "-crf", "23"]),
    "gain": ([], ["-t", "10", "-af", "volume=0.35", "-crf", "23"]),
    "combo": (["-ss", "0.4"], ["-t", "10", "-vf", "scale=192:150", "-af", "volume=2.0", "-crf", "30"]),
    "late": (["-ss", "5.0"], ["-t", "7", "-crf", "23"]),  # shares only 5 s with the original's [0, 10)
    "shift1": (["-ss", "1.0"], ["-t", "10", "-crf", "26"]),
    # 3/4 size, 0.5 s later, -6 dB (the copy of a slow-moving clip that the still filter once kept from comparison)
    "small": (["-ss", "0.5"], ["-t", "10", "-vf", "scale=216:168", "-af", "volume=0.5", "-crf", "28"]),
}
SLOW_COPIES = ("small", "shift1")  # the copies of each slow-moving clip (its first 2.5 s played 4x slower)
STILL_COPIES = ("small",)  # of the first two still images with sound


def _ffmpeg(args: list[str]) -> None:
    """Write args[-1] atomically (a killed build leaves no half file under the final name)."""
    tmp = Path(args[-1]).with_suffix(".tmp.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", *args[:-1], str(tmp)], check=True)
    tmp.replace(args[-1])


def _plan(raw: Path, kinds: dict[str, str], n_base: int) -> list[dict]:
    """Clip-list rows with their planted truth (`video`: whose footage, `audio`: whose sound; `still`,
    `silent`) and how each planted file is made (`make`: ffmpeg arguments, `stage`: 0 before 1)."""
    base = [f"demo{i:05d}" for i in range(n_base)]
    rows = []

    def add(clip_id, path, start, end, video, audio, silent=False, ytid="", make=None, stage=0):
        rows.append({"clip_id": clip_id, "path": str(path), "start_s": start, "end_s": end, "ytid": ytid,
                     "video": video, "audio": audio, "still": video.startswith("frozen") or
                     kinds.get(video) == "sound_only", "silent": silent, "make": make, "stage": stage})

    def copy(src: Path, name: str, out: Path) -> list[str]:
        pre, post = COPIES[name]
        return [*pre, "-i", str(src), *post, *ENCODE, str(out)]

    dup_bases, still_bases, silent_bases, overlap_bases = base[:12], base[12:16], base[16:20], base[20:22]
    for b in base[:20] + base[22:]:
        add(b, raw / f"{b}.mp4", 0.0, 10.0, b, b)
    names = list(COPIES)
    for i, b in enumerate(dup_bases):  # two copies each, the copy kinds in turn
        for name in (names[i % len(names)], names[(i + 4) % len(names)]):
            add(f"{b}_{name}", raw / f"{b}_{name}.mp4", 0.0, float(COPIES[name][1][1]), b, b,
                make=copy(raw / f"{b}.mp4", name, raw / f"{b}_{name}.mp4"))
    for i, b in enumerate(still_bases):  # a frozen frame of b, with the sound of two other clips (no duplicates)
        for k, other in enumerate((base[(i + 5) % 12], base[(i + 7) % 12])):
            cid = f"still_{b}_{other}"
            add(cid, raw / f"{cid}.mp4", 0.0, 10.0, f"frozen_{b}", other,
                make=["-ss", "4", "-i", str(raw / f"{b}.mp4"), "-i", str(raw / f"{other}.mp4"), "-map", "0:v:0",
                      "-map", "1:a:0", "-vf", "trim=end_frame=1,tpad=stop_mode=clone:stop_duration=12", "-t", "12",
                      "-crf", "23", *ENCODE, str(raw / f"{cid}.mp4")])
            if i < 2 and k == 0:  # a copy of a still image with sound: still, and a duplicate
                for name in STILL_COPIES:
                    add(f"{cid}_{name}", raw / f"{cid}_{name}.mp4", 0.0, 10.0, f"frozen_{b}", other, stage=1,
                        make=copy(raw / f"{cid}.mp4", name, raw / f"{cid}_{name}.mp4"))
    for b in still_bases[:2]:  # a slow-moving clip (b's first 2.5 s, 4x slower, with b's sound) and its copies
        slow = raw / f"slow_{b}.mp4"
        add(f"slow_{b}", slow, 0.0, 10.0, f"slow_{b}", b,
            make=["-i", str(raw / f"{b}.mp4"), "-filter:v", "setpts=4*PTS", "-r", "10", "-t", "11", "-crf", "23",
                  *ENCODE, str(slow)])
        for name in SLOW_COPIES:
            add(f"slow_{b}_{name}", raw / f"slow_{b}_{name}.mp4", 0.0, float(COPIES[name][1][1]), f"slow_{b}", b,
                stage=1, make=copy(slow, name, raw / f"slow_{b}_{name}.mp4"))
    for i, b in enumerate(silent_bases):  # b's footage, muted (digital silence) or with -66 dBFS hiss
        src = "anullsrc=r=44100:cl=mono" if i % 2 else "anoisesrc=r=44100:a=0.0005"
        add(f"{b}_mute", raw / f"{b}_mute.mp4", 0.0, 10.0, b, "silence" if i % 2 else "hiss", silent=True,
            make=["-i", str(raw / f"{b}.mp4"), "-f", "lavfi", "-i", src, "-map", "0:v:0", "-map", "1:a:0", "-t", "10",
                  "-crf", "23", *ENCODE, str(raw / f"{b}_mute.mp4")])
    for b, other in zip(base[22:24], base[:2], strict=True):  # b's footage dubbed with another clip's sound
        add(f"{b}_dub", raw / f"{b}_dub.mp4", 0.0, 10.0, b, other,
            make=["-i", str(raw / f"{b}.mp4"), "-i", str(raw / f"{other}.mp4"), "-map", "0:v:0", "-map", "1:a:0",
                  "-t", "10", "-crf", "23", *ENCODE, str(raw / f"{b}_dub.mp4")])
    for b, ytid in zip(overlap_bases, ("OVERLAPaaaa", "OVERLAPbbbb"), strict=True):  # windows of one ytid
        for start, end in ((0.0, 4.5), (3.5, 8.0), (8.0, 12.0)):  # 1-s overlap, then adjacent (no overlap)
            add(None, raw / f"{b}.mp4", start, end, f"{b}@{start}", f"{b}@{start}", ytid=ytid)
    return rows


def _make_media(rows: list[dict]) -> None:
    """Make the planted files (originals before the copies made of them), skipping those already made."""
    with ThreadPoolExecutor(2) as pool:
        for stage in (0, 1):
            jobs = [r["make"] for r in rows if r["make"] and r["stage"] == stage and not Path(r["path"]).exists()]
            list(pool.map(_ffmpeg, jobs))


def _write_clip_list(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "ytid", "path", "start_s", "end_s", "label"])
        for row in rows:
            writer.writerow([row["clip_id"] or "", row["ytid"], row["path"], row["start_s"], row["end_s"],
                             row.get("label") or row["video"].split("@")[0][-9:]])
    return path


def build_world(folder: Path, n_base: int = 24) -> tuple[Path, list[dict]]:
    """The planted world's clip list (csv) and its rows with truth."""
    world = generate_world(folder, n_clips=n_base, seed=7, duration_s=12.0)
    kinds = json.loads(world.world_json.read_text())["counts"]["clip_kinds"]
    rows = _plan(world.raw_dir, kinds, n_base)
    _make_media(rows)
    return _write_clip_list(folder / "planted.csv", rows), rows


# ---------------------------------------------------------------- (b) the decoy world
WIDTH, HEIGHT, SR = 288, 224, 16000
DECOY_GROUPS = {  # name -> (scene, sound, the group's envelope)
    "smooth_tone": ("smooth", "tone", "steady"), "smooth_noise": ("smooth", "noise", "bursts"),
    "pattern_tone": ("pattern", "tone", "beeps"), "pattern_noise": ("pattern", "noise", "steady"),
    "still_tone": ("still", "tone", "steady"),
}
DECOY_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1",
                "-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "1"]


def _encode(frames: np.ndarray, audio: np.ndarray, dst: Path) -> None:
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        wav, mp4 = Path(tmp) / "a.wav", Path(tmp) / "c.mp4"
        sf.write(wav, audio, SR, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                        f"{WIDTH}x{HEIGHT}", "-r", str(int(FPS)), "-i", "pipe:0", "-i", str(wav), "-map", "0:v:0",
                        "-map", "1:a:0", *DECOY_ENCODE, str(mp4)], input=frames.tobytes(), check=True)
        mp4.replace(dst)


def _test_pattern(seconds: float) -> np.ndarray:
    """ffmpeg's moving test pattern (testsrc2), (n, H, W, 3) float32."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i",
                          f"testsrc2=size={WIDTH}x{HEIGHT}:rate={int(FPS)}:duration={seconds}", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, HEIGHT, WIDTH, 3).astype(np.float32)


def _smooth_field(rng: np.random.Generator, cells: tuple[int, int], width: int = WIDTH) -> np.ndarray:
    """(H, width, 3) in [0, 1]: a coarse random grid, bilinearly upsampled (no fine detail)."""
    def interp(n: int, size: int) -> np.ndarray:
        return np.array([np.interp(np.linspace(0, n - 1, size), np.arange(n), e) for e in np.eye(n)]).T

    coarse = rng.uniform(0, 1, (3, *cells))
    return np.einsum("hi,cij,wj->hwc", interp(cells[0], HEIGHT), coarse, interp(cells[1], width))


def _object(rng: np.random.Generator, n: int, textured: bool) -> tuple[np.ndarray, np.ndarray]:
    """A clip's own object drifting across the frame: colour (n, H, W, 3) and alpha (n, H, W, 1); striped
    with a hard edge, or a soft plain blob."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    size, period, angle = rng.uniform(25, 45), rng.uniform(6, 14), rng.uniform(0, np.pi)
    ends = rng.uniform([size, size], [WIDTH - size, HEIGHT - size], (2, 2))
    colours = rng.uniform(20, 235, (2, 3))
    colour, alpha = [], []
    for f in range(n):
        cx, cy = ends[0] + (ends[1] - ends[0]) * f / max(n - 1, 1)
        d = ((x - cx) ** 2 + (y - cy) ** 2) / size**2
        stripes = np.sin(((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)) * 2 * np.pi / period) > 0
        colour.append(np.where(stripes[..., None], colours[0], colours[1]) if textured
                      else np.broadcast_to(colours[0], (HEIGHT, WIDTH, 3)))
        alpha.append((np.clip(1.5 - d, 0, 1) if textured else np.exp(-2 * d))[..., None])
    return np.stack(colour), np.stack(alpha)


def _overlay(rng: np.random.Generator, n: int, blocks: bool) -> np.ndarray:
    """A clip's own full-frame overlay, drifting: random blocks (detail) or a smooth field (none)."""
    if blocks:
        cells = int(rng.integers(6, 14))
        block = np.ones((HEIGHT // cells + 1, WIDTH // cells + 1, 1))
        tile = np.kron(rng.uniform(0, 255, (cells, cells + 4, 3)), block)
    else:
        tile = 255 * _smooth_field(rng, (3, 8), 2 * WIDTH)
    wide = np.concatenate([tile[:HEIGHT], tile[:HEIGHT]], axis=1)
    return np.stack([wide[:, i:i + WIDTH] for i in (2 * np.arange(n)) % (wide.shape[1] // 2)])


def _decoy_sound(rng: np.random.Generator, kind: str, pitch: float, envelope: np.ndarray) -> np.ndarray:
    """A harmonic tone at `pitch` or band-limited 1/f noise of the clip's own realisation, under `envelope`,
    plus -50 dBFS hiss; 0.1 RMS."""
    t = np.arange(len(envelope)) / SR
    if kind == "tone":
        wave = sum(np.sin(2 * np.pi * k * pitch * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    else:
        spectrum = np.fft.rfft(rng.normal(size=len(t)))
        f = np.fft.rfftfreq(len(t), 1 / SR)
        wave = np.fft.irfft(spectrum * ((f > 300) & (f < 3000)) / np.sqrt(np.maximum(f, 1) / 300), len(t))
    wave = wave * envelope
    wave = 0.1 * wave / np.sqrt(np.mean(wave**2))
    return (wave + 0.003 * rng.normal(size=len(t))).astype(np.float32)


def build_decoys(folder: Path, per_group: int = 12, seconds: float = 10.0, seed: int = 11) -> tuple[Path, list[dict]]:
    """The decoy world's clip list (csv) and rows (every clip distinct: no duplicates)."""
    raw = Path(RunLayout(str(folder)).raw)
    raw.mkdir(parents=True, exist_ok=True)
    n, n_samples = int(seconds * FPS), int(seconds * SR)
    t = np.arange(n_samples) / SR
    rng = np.random.default_rng(seed)
    envelopes = {"steady": np.ones(n_samples),
                 "beeps": np.convolve(np.sin(2 * np.pi * 1.5 * t) > 0, np.ones(160) / 160, mode="same"),
                 "bursts": np.repeat(rng.uniform(0.05, 1, int(seconds * 4) + 1), SR // 4)[:n_samples]}
    pattern = None
    rows = []
    for g, (scene_kind, sound, envelope) in enumerate(DECOY_GROUPS.values()):
        group = list(DECOY_GROUPS)[g]
        scene_rng = np.random.default_rng([seed, g])
        wide = 60 + 140 * _smooth_field(scene_rng, (4, 8), 2 * WIDTH)  # the group's smooth scene, panned
        scene = np.stack([wide[:, i:i + WIDTH] for i in (np.arange(n) * 1.5).astype(int)])
        for i in range(per_group):
            cid = f"{group}_{i:02d}"
            path = raw / f"{cid}.mp4"
            rows.append({"clip_id": cid, "path": str(path), "start_s": 0.0, "end_s": seconds, "ytid": "",
                         "video": cid, "audio": cid, "group": group, "still": scene_kind == "still",
                         "silent": False})
            if path.exists():
                continue
            clip_rng = np.random.default_rng([seed, g, i])
            if scene_kind == "pattern":
                pattern = _test_pattern(seconds) if pattern is None else pattern
                alpha = clip_rng.uniform(0.25, 0.4)
                frames = (1 - alpha) * pattern[:n] + alpha * _overlay(clip_rng, n, blocks=i % 2 == 0)
            else:
                colour, alpha = _object(clip_rng, 1 if scene_kind == "still" else n, textured=i % 2 == 0)
                frames = scene[:1] if scene_kind == "still" else scene
                frames = np.broadcast_to(frames * (1 - 0.8 * alpha) + 0.8 * alpha * colour, scene.shape)
            audio = _decoy_sound(clip_rng, sound, 220 * 2 ** (i / 12), envelopes[envelope])  # a semitone apart
            _encode(np.clip(frames, 0, 255).astype(np.uint8), audio, path)
    return _write_clip_list(folder / "decoys.csv", [{**r, "label": r["group"]} for r in rows]), rows


# ---------------------------------------------------------------- measurement
def _pr(truth: set, predicted: set) -> dict:
    hit = len(truth & predicted)
    return {"truth": len(truth), "predicted": len(predicted), "correct": hit,
            "precision": round(hit / len(predicted), 4) if predicted else 1.0,
            "recall": round(hit / len(truth), 4) if truth else 1.0}


def _plan_of(clips: pd.DataFrame, rows: list[dict]) -> dict[str, dict]:
    by_key = {(r["path"], r["start_s"]): r for r in rows}
    return {c.clip_id: by_key[(c.path, c.start_s)] for c in clips.itertuples()}


def score_filters(clips: pd.DataFrame, rows: list[dict]) -> dict:
    """Precision / recall per filter: per clip for still and silent, per clip pair for duplicates and overlaps;
    the copies of each kind found (a copy is found when it is in its original's group)."""
    plan = _plan_of(clips, rows)
    measured = clips[clips["still"].notna()]
    footage = {cid: (plan[cid]["video"], plan[cid]["audio"]) for cid in measured.clip_id}
    dup_truth = {(a, b) for a, b in combinations(sorted(footage), 2) if footage[a] == footage[b]}
    groups = measured.dropna(subset=["dup_group"]).groupby("dup_group")["clip_id"].apply(sorted)
    dup_pred = {pair for members in groups for pair in combinations(members, 2)}
    group_of = dict(zip(measured.clip_id, measured.dup_group, strict=True))
    windows = {cid: (r["ytid"], r["start_s"], r["end_s"]) for cid, r in plan.items() if r["ytid"]}
    overlap_truth = {(a, b) for a, b in combinations(sorted(windows), 2) if windows[a][0] == windows[b][0]
                     and max(windows[a][1], windows[b][1]) < min(windows[a][2], windows[b][2])}
    overlap_pred = {tuple(sorted((c.clip_id, c.overlap_of))) for c in clips.itertuples()
                    if isinstance(c.overlap_of, str)}
    copies: dict[str, list[int]] = {}
    for cid in measured.clip_id:
        kind = next((name for name in COPIES if cid.endswith(f"_{name}")), None)
        if kind:
            original = cid[: -len(kind) - 1]
            if original in group_of:
                found = isinstance(group_of[cid], str) and group_of[cid] == group_of[original]
                copies.setdefault(kind, [0, 0])[0] += found
                copies[kind][1] += 1
    return {"still": _pr({c for c in measured.clip_id if plan[c]["still"]}, set(measured.clip_id[measured["still"]])),
            "silent": _pr({c for c in measured.clip_id if plan[c]["silent"]},
                          set(measured.clip_id[measured["silent"].astype(bool)])),
            "duplicate_pairs": _pr(dup_truth, dup_pred), "overlap_pairs": _pr(overlap_truth, overlap_pred),
            "copies_found": {k: f"{found}/{n}" for k, (found, n) in sorted(copies.items())},
            "clips_in_false_groups": len({c for pair in dup_pred - dup_truth for c in pair}),
            "clips_measured": len(measured)}


def pair_evidence(a: Fingerprint, b: Fingerprint, cfg: FilterConfig) -> dict | None:
    """What the duplicate check saw of a pair, at the alignments the smooth pictures allow (None: no such
    alignment): the best fine-detail score (frames matching), the best peak score, whether the sound had
    peaks, the spectra's distance."""
    seen = list(alignments(a, b, cfg, FPS))
    if not seen:
        return None
    found = {"detail": None, "peaks": None, "smooth_sound": False, "spectrum_db": spectrum_distance(a.spectrum,
                                                                                                     b.spectrum)}
    for picture, sound_at in seen:
        sound, had_peaks = sound_at()
        if not had_peaks:
            found["smooth_sound"] = True
        elif found["peaks"] is None or sound.score > found["peaks"]:
            found["peaks"] = sound.score
        if picture.score is not None and (found["detail"] is None or picture.score > found["detail"]):
            found["detail"] = picture.score
    return found


def margins(clips: pd.DataFrame, rows: list[dict], signals: dict[str, dict]) -> dict:
    """How far the planted cases sit from the default thresholds: the closest true and false cases (false pairs:
    other sound; pairs of one recording with other footage are the picture's to reject)."""
    cfg, plan = FilterConfig(), _plan_of(clips, rows)
    fps = {c: fingerprint(s) for c, s in signals.items() if s}
    true_pairs, false_pairs, same_sound = [], [], []  # same_sound: one recording, other footage (dub, slowed)
    for a, b in combinations(sorted(fps), 2):
        evidence = pair_evidence(fps[a], fps[b], cfg)
        if plan[a]["audio"] != plan[b]["audio"]:
            false_pairs.append(evidence)
        else:
            (true_pairs if plan[a]["video"] == plan[b]["video"] else same_sound).append(evidence)

    def extreme(pairs, key, pick):
        values = [p[key] for p in pairs if p and p[key] is not None]
        return round(pick(values), 3) if values else None

    motion = {c: s["motion"] for c, s in signals.items() if s}
    loud = {c: s["loud_db"] for c, s in signals.items() if s}
    return {"still_motion_max": max((v for c, v in motion.items() if plan[c]["still"]), default=None),
            "other_motion_min": min((v for c, v in motion.items() if not plan[c]["still"]), default=None),
            "silent_db_max": max((v for c, v in loud.items() if plan[c]["silent"]), default=None),
            "other_db_min": min((v for c, v in loud.items() if not plan[c]["silent"]), default=None),
            "dup_true_pairs_aligned": f"{sum(p is not None for p in true_pairs)}/{len(true_pairs)}",
            "dup_true_pairs_peaks_min": extreme(true_pairs, "peaks", min),
            "dup_true_pairs_detail_min": extreme(true_pairs, "detail", min),
            "dup_true_pairs_without_peaks": sum(bool(p and p["peaks"] is None) for p in true_pairs),
            "dup_same_sound_other_footage_detail_max": extreme(same_sound, "detail", max),
            "dup_false_pairs_aligned": f"{sum(p is not None for p in false_pairs)}/{len(false_pairs)}",
            "dup_false_pairs_peaks_max": extreme(false_pairs, "peaks", max),
            "dup_false_pairs_detail_max": extreme(false_pairs, "detail", max),
            "dup_false_pairs_without_peaks_spectrum_min": extreme(
                [p for p in false_pairs if p and p["smooth_sound"]], "spectrum_db", min)}


def cost(paths: RunPaths, clip_ids: list[str]) -> dict:
    """The filters' time per clip (measured inside each clip's task) against the clip's whole task time, and the
    signals' size (JSON bytes, as stored in the outcome and cache file)."""
    outcomes = [read_summary(cache_path(paths.cache, cid)) for cid in clip_ids]
    measured = [o for o in outcomes if o.quality]
    filter_s = sum(o.quality["seconds"] for o in measured) / len(measured)
    clip_s = sum(o.seconds for o in measured) / len(measured)
    return {"filter_ms_per_clip": round(1000 * filter_s, 2), "pipeline_ms_per_clip": round(1000 * clip_s, 1),
            "ratio": round(filter_s / clip_s, 4),
            "signal_bytes_mean": round(float(np.mean([len(json.dumps(o.quality)) for o in measured])))}


def measure_alone(path: str, repeats: int = 7) -> dict:
    """`measure` on one decoded 10-s clip, best of `repeats` (no other work in between)."""
    clip = decode_clip(path, 0.0, 10.0, DecodeConfig())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        signals = measure(clip.frames, clip.audio, clip.sample_rate)
        times.append(time.perf_counter() - started)
    return {"measure_ms_best": round(1000 * min(times), 2), "frames": list(clip.frames.shape),
            "signal_bytes": len(json.dumps(signals_dict(signals)))}


def index_scale(n_clips: int, seed: int = 0) -> dict:
    """The duplicate index over `n_clips` synthetic fingerprints (50 frame hashes drifting a few bits a frame,
    a scene cut every ~3 s): candidate pairs found, time and keys, i.e. what VGGSound's 200k clips would cost."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 2**63, (n_clips, 1), dtype=np.int64).astype(np.uint64)
    flips = np.left_shift(np.uint64(1), rng.integers(0, 64, (n_clips, 50)).astype(np.uint64))
    cuts = rng.random((n_clips, 50)) < 1 / 15
    flips[cuts] = rng.integers(0, 2**63, int(cuts.sum()), dtype=np.int64).astype(np.uint64)
    hashes = np.bitwise_xor.accumulate(np.concatenate([start, flips[:, 1:]], axis=1), axis=1)
    empty = (np.zeros(50 * DETAIL_BYTES, np.uint8), np.zeros(0, np.uint32), np.zeros(100, np.int8),
             np.zeros(len(SPECTRUM_BANDS) - 1, np.int8))
    fps = {f"c{i:07d}": Fingerprint(hashes[i], np.zeros(50, bool), *empty, 10.0) for i in range(n_clips)}
    started = time.perf_counter()
    pairs = candidate_pairs(fps)
    return {"clips": n_clips, "candidate_pairs": len(pairs), "seconds": round(time.perf_counter() - started, 2),
            "all_pairs": n_clips * (n_clips - 1) // 2}


def _run_world(clip_list: Path, run_dir: Path, scorer: str) -> tuple[pd.DataFrame, dict[str, dict], RunPaths,
                                                                      object]:
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(None, {"dataset": "csv", "meta": str(clip_list), "out": str(run_dir), "dask.workers": 2,
                             "score.scorer": scorer})
    summary = run(cfg, progress=False)
    clips = pd.read_parquet(RunLayout(str(run_dir)).clips_manifest)
    signals = {cid: read_summary(cache_path(summary.paths.cache, cid)).quality for cid in clips["clip_id"]}
    return clips, signals, summary.paths, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=24, help="demo clips the planted world starts from (>= 24)")
    parser.add_argument("--decoys", type=int, default=12, help="clips in each group of the decoy world")
    parser.add_argument("--out", default="work/bench")
    parser.add_argument("--scorer", default="synchrony")
    parser.add_argument("--index-sizes", type=int, nargs="*", default=[20000, 100000],
                        help="synthetic clip counts for the duplicate index's scaling")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    clip_list, rows = build_world(out / "quality_world", args.base)
    clips, signals, paths, summary = _run_world(clip_list, out / "quality_run", args.scorer)
    decoy_list, decoy_rows = build_decoys(out / "quality_decoys", args.decoys)
    decoy_clips, decoy_signals, _, decoy_summary = _run_world(decoy_list, out / "quality_decoys_run", args.scorer)
    decoys = score_filters(decoy_clips, decoy_rows)
    decoys["false_pairs_per_group"] = {
        g: int(sum(len(m) * (len(m) - 1) // 2 for m in decoy_clips[decoy_clips.clip_id.str.startswith(g)]
                   .dropna(subset=["dup_group"]).groupby("dup_group")["clip_id"].apply(list))) for g in DECOY_GROUPS}
    reencoded = RunLayout(str(out / "quality_world")).raw_clip("demo00000_reenc")
    result = {"filters": score_filters(clips, rows), "margins": margins(clips, rows, signals),
              "decoys": {"filters": decoys, "margins": margins(decoy_clips, decoy_rows, decoy_signals),
                         "clips": decoy_summary.n_clips, "rejected_by_filter": decoy_summary.filtered},
              "cost": {**cost(paths, clips["clip_id"].tolist()), **measure_alone(reencoded)},
              "index": [index_scale(n) for n in args.index_sizes],
              "scorer": args.scorer, "clips": summary.n_clips, "counts": summary.counts,
              "rejected_by_filter": summary.filtered, "wall_s": round(time.perf_counter() - started, 1),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; 2 cores shared with other jobs"}
    write_json(out / "quality.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
