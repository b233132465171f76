"""The frozen stage-1 image encoder and its per-shard embedding cache.

One `.npz` per shard under `OUT/stage1/cache/<encoder sha256[:16]>/` (`<sha256[:16]>-r256b224/` for SwAV,
whose frames are prepared the official way, `swav_resize`: caches of the earlier preparation are not reused),
named by the shard's file name and a hash of its size and mtime (of its URL for remote shards), holding every
clip's key, label, split and the L2-normalised embeddings of its first `moments` frames (jpg, top2.jpg, ...).
A new encoder or a changed shard gets new files; later stages read these instead of running the image encoder.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch import nn

from manifests.io import atomic_write_bytes
from training import distributed
from training.checkpoint import file_sha256, load_checkpoint
from training.config import DataConfig
from training.data import IMAGE_MEAN, IMAGE_STD, mapped, meta, moment_names, open_image, pipeline, selector
from training.models.image_encoder import ImageEncoderConfig, build_image_encoder, embed, swav_resize


@dataclass(frozen=True)
class FrozenEncoder:
    """The stage-1 encoder in eval mode, its input size and the hash that keys its cache."""

    model: nn.Module
    cfg: ImageEncoderConfig
    sha256: str
    embed_dim: int


def encoder_path(out: str | Path) -> Path:
    return Path(out) / "stage1" / "encoder.pt"


def load_encoder(out: str | Path, device: torch.device) -> FrozenEncoder:
    """The frozen encoder written by stage 1 (`OUT/stage1/encoder.pt`)."""
    path = encoder_path(out)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m training stage1` first")
    state = load_checkpoint(path)
    cfg = ImageEncoderConfig.from_dict(state["encoder"])
    model = build_image_encoder(cfg)
    model.load_state_dict(state["model"])
    model.eval().requires_grad_(False).to(device)
    return FrozenEncoder(model, cfg, file_sha256(path), model.out_dim)


def embed_transform(cfg: ImageEncoderConfig) -> T.Compose:
    """A decoded frame (PIL) -> the encoder's input: the whole frame, squashed to a square, ImageNet-normalised.
    SwAV: `swav_resize` (256 x 256, then bicubic 224 x 224, as the official training); small: one antialiased
    resize to image_size x image_size."""
    if cfg.kind == "swav":
        resize = [T.PILToTensor(), swav_resize]
    else:
        resize = [T.Resize((cfg.image_size, cfg.image_size), antialias=True), T.PILToTensor()]
    return T.Compose([*resize, T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGE_MEAN, IMAGE_STD)])


def decode_side(cfg: ImageEncoderConfig) -> int | None:
    """The smallest side a frame is decoded at (JPEG draft scaling): SwAV frames at full resolution, as the
    official training opens them."""
    return None if cfg.kind == "swav" else cfg.image_size


def _decode_moments(sample: dict, moments: int, cfg: ImageEncoderConfig, transform: T.Compose) -> dict:
    names = moment_names(moments)
    present = np.array([name in sample for name in names])
    blank = torch.zeros(3, cfg.image_size, cfg.image_size)
    side = decode_side(cfg)
    images = torch.stack([transform(open_image(sample[n], side)) if n in sample else blank for n in names])
    return {"images": images, "present": present, "key": sample["__key__"], "label": int(sample["cls"]),
            "split": str(meta(sample).get("split"))}


def shard_fingerprint(url: str) -> str:
    """A local shard's size and mtime (a rewritten shard is re-embedded); a remote shard's URL (use versioned
    URLs)."""
    if "://" in url:
        ident = url
    else:
        st = Path(url).stat()
        ident = f"{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()


def cache_file(out: str | Path, encoder: FrozenEncoder, url: str, moments: int) -> Path:
    name = Path(url.split("?")[0]).name.removesuffix(".tar")
    folder = encoder.sha256[:16] + (f"-{encoder.cfg.preprocessing}" if encoder.cfg.preprocessing else "")
    return Path(out) / "stage1" / "cache" / folder / f"{name}.{shard_fingerprint(url)[:16]}.m{moments}.npz"


@torch.no_grad()
def embed_shard(encoder: FrozenEncoder, url: str, data_cfg: DataConfig, moments: int, batch_size: int,
                device: torch.device) -> dict[str, np.ndarray]:
    """Embeddings of every clip's first `moments` frames in one shard (missing frames: zeros, present=False)."""
    decode = partial(_decode_moments, moments=moments, cfg=encoder.cfg, transform=embed_transform(encoder.cfg))
    pipe = pipeline([url], data_cfg, select=selector(data_cfg, "all"), steps=[mapped(decode, data_cfg)],
                    batch_size=batch_size, seed=None)
    keys, labels, splits, present, embs = [], [], [], [], []
    for batch in pipe:
        images = batch["images"].to(device)
        b, k = images.shape[:2]
        embs.append(embed(encoder.model, images.flatten(0, 1)).view(b, k, -1).cpu().numpy())
        keys += batch["key"]
        labels.append(batch["label"].numpy())
        splits += batch["split"]
        present.append(batch["present"].numpy())
    if not keys:
        raise ValueError(f"shard {url} holds no samples")
    emb = np.concatenate(embs) * np.concatenate(present)[..., None]
    return {"keys": np.array(keys), "labels": np.concatenate(labels), "splits": np.array(splits),
            "present": np.concatenate(present), "emb": emb.astype(np.float32)}


def ensure_cache(out: str | Path, encoder: FrozenEncoder, urls: list[str], data_cfg: DataConfig, moments: int,
                 batch_size: int, d: distributed.Dist) -> list[Path]:
    """Cache files for `urls`; missing ones are computed, shards split over ranks, then all ranks wait."""
    paths = [cache_file(out, encoder, url, moments) for url in urls]
    todo = [(u, p) for u, p in zip(urls, paths, strict=True) if not p.exists()]
    for url, path in todo[d.rank::d.world_size]:
        arrays = embed_shard(encoder, url, data_cfg, moments, batch_size, d.device)
        buffer = io.BytesIO()
        np.savez(buffer, url=np.array(url), **arrays)
        atomic_write_bytes(path, buffer.getvalue())
    distributed.barrier(d)
    return paths


@dataclass(frozen=True)
class EmbeddingTable:
    """All cached clips of some shards: rows addressed by (shard url, clip key)."""

    index: dict[tuple[str, str], int]
    emb: np.ndarray  # (clips, moments, dim), zero rows where a moment is missing
    present: np.ndarray  # (clips, moments)
    labels: np.ndarray
    splits: np.ndarray

    def rows(self, urls: list[str], keys: list[str]) -> np.ndarray:
        try:
            return np.array([self.index[(u, k)] for u, k in zip(urls, keys, strict=True)])
        except KeyError as exc:
            raise KeyError(f"no cached image embedding for {exc.args[0]}: the shard changed after stage 1 "
                           "cached it?") from None


def load_table(paths: list[Path], urls: list[str]) -> EmbeddingTable:
    """The cached embeddings of `urls` (their files from `ensure_cache`) as one table."""
    index: dict[tuple[str, str], int] = {}
    parts: list[dict[str, np.ndarray]] = []
    row = 0
    for path, url in zip(paths, urls, strict=True):
        with np.load(path) as z:
            part = {name: z[name] for name in ("keys", "emb", "present", "labels", "splits")}
        for key in part["keys"]:
            index[(url, str(key))] = row
            row += 1
        parts.append(part)
    return EmbeddingTable(index, *(np.concatenate([p[n] for p in parts])
                                   for n in ("emb", "present", "labels", "splits")))
