"""A shard sample's media and the sample itself: the per-clip JPEG and FLAC encoders and the WebDataset sample.

A clip task encodes its chosen frames and audio once, into the clip's cache file (`clip_task`); the write wave
puts the stored bytes into a sample unchanged (`build_sample`, then `shards.write_shard`). Fixed encoder settings:
the same pixels and audio always give the same bytes, so shards are byte-identical across runs.
"""

from __future__ import annotations

import io
import json

import numpy as np
import soundfile
from PIL import Image


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG with fixed settings (deterministic for the same pixels)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono FLAC of float audio in [-1, 1]."""
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def build_sample(clip_id: str, jpgs: list[bytes], flac: bytes, label_index: int, meta: dict) -> dict:
    """One WebDataset sample: `jpg` is the best moment, `top2.jpg` ... the next ones."""
    sample = {"__key__": clip_id, "jpg": jpgs[0], "flac": flac, "cls": str(label_index).encode(),
              "json": json.dumps(meta, sort_keys=True).encode()}
    for rank, jpg in enumerate(jpgs[1:], start=2):
        sample[f"top{rank}.jpg"] = jpg
    return sample
