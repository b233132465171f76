"""Helpers for the training tests: tiny shards in the curated format (README "Shard format"), written with
webdataset's TarWriter, and a tiny trainer config. The world: 4 categories, each a coloured square with a tone
of its own pitch; the square's size and the tone's loudness follow the same per-clip scale, so audio predicts
both category and size."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds
from PIL import Image

from training.config import load_config

COLOURS = [(220, 40, 40), (40, 80, 230), (40, 190, 60), (240, 220, 40)]
PITCHES = [220.0, 440.0, 880.0, 1760.0]
RATE, SECONDS, W, H = 16000, 1.0, 72, 56


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _frame(rng: np.random.Generator, cat: int, scale: float) -> bytes:
    img = np.clip(rng.normal(rng.uniform(60, 190, 3), 10, (H, W, 3)), 0, 255).astype(np.uint8)
    side = int(8 + 36 * scale)
    y, x = rng.integers(0, H - side), rng.integers(0, W - side)
    img[y:y + side, x:x + side] = COLOURS[cat]
    return _jpeg(img)


def _flac(rng: np.random.Generator, cat: int, scale: float) -> bytes:
    t = np.arange(int(RATE * SECONDS)) / RATE
    wave = 0.4 * scale * np.sin(2 * np.pi * PITCHES[cat] * t + rng.uniform(0, 6)) + rng.normal(0, 0.005, t.size)
    buf = io.BytesIO()
    sf.write(buf, wave, RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def write_tiny_shards(folder: Path, train_shards: int = 2, per_shard: int = 24, test: int = 16,
                      seed: int = 0) -> Path:
    """`tiny-train-%06d.tar` x train_shards and one `tiny-test-000000.tar`, curated-shard layout."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = 0
    for name, count in [(f"tiny-train-{k:06d}", per_shard) for k in range(train_shards)] + [("tiny-test-000000", test)]:
        split = "test" if "test" in name else "train"
        with wds.TarWriter(str(folder / f"{name}.tar")) as sink:
            for _ in range(count):
                cat, scale, key = index % 4, float(rng.uniform(0.1, 1.0)), f"tiny{index:05d}"
                meta = {"clip_id": key, "dataset": "tiny", "ytid": None, "start_s": 0.0, "end_s": SECONDS,
                        "label": f"cat{cat}", "split": split, "frame_t": 0.5, "score": 1.0, "rank": 1,
                        "ssl_model": "none", "moments": [{"t": 0.5, "score": 1.0}, {"t": 0.8, "score": 0.5}]}
                sink.write({"__key__": key, "jpg": _frame(rng, cat, scale), "top2.jpg": _frame(rng, cat, scale),
                            "flac": _flac(rng, cat, scale), "cls": str(cat).encode(),
                            "json": json.dumps(meta, sort_keys=True).encode()})
                index += 1
    return folder


TINY = [
    "audio.seconds=1.0", "audio.time_pool=2", "audio.stats_clips=64",
    "stage1.moments=2", "stage1.image_size=32", "stage1.width=8", "stage1.steps=6", "stage1.batch_size=16",
    "stage1.log_every=2", "stage1.checkpoint_every=3", "stage1.embed_batch_size=32",
    "stage3.width=8", "stage3.steps=6", "stage3.batch_size=8", "stage3.eval_every=3", "stage3.log_every=1",
    "stage3.target_moments=2", "evaluate.n_candidates=10", "runtime.threads=1", "runtime.device=cpu",
    "data.shuffle_buffer=32",
    # stage 2 and the generation-based evaluation, tiny
    "stage2.resolution=32", "stage2.z_dim=8", "stage2.shared_dim=8", "stage2.g_width=8", "stage2.d_width=8",
    "stage2.steps=2", "stage2.batch_size=8", "stage2.standing_stats_batches=1", "stage2.max_minutes=0",
    "probe.image_size=32", "probe.width=4", "probe.steps=5", "probe.batch_size=8",
    "gen_eval.n_z=2", "gen_eval.gains_db=\"-6,0,6\"", "gen_eval.n_mix_pairs=3",
]


def tiny_config(shards: Path, out: Path, *extra: str):
    return load_config(None, {"data.shards": str(shards), "out": str(out)}, TINY + list(extra))
