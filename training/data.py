"""Reading curated shards (README "Shard format"): shard lists, sample selection, decoding, the pipelines.

Each loader is an explicit `wds.DataPipeline` of steps. Training pipelines split shards by node (DDP rank) and
by DataLoader worker, shuffle with a seeded buffer, and optionally resample shards with a fixed epoch length;
the same seed gives the same batches. Which clips a stage may see is decided per sample from its json `split`
and a hash of its key, so the evaluation split and the validation slice are held out whatever shards are given.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import random
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from training.audio import load_waveform
from training.config import AudioConfig, DataConfig

HANDLERS = {"reraise": wds.reraise_exception, "warn": wds.warn_and_continue}
IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics (SwAV's input)


def imagenet_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] (generated or decoded) -> a network's ImageNet-normalised input at
    size x size (squashed, antialiased bilinear), as the PIL transforms prepare shard frames; differentiable."""
    x = images.float().add(1).div(2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return imagenet_normalise(x)


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float images in [0, 1] -> ImageNet-normalised (T.Normalize(IMAGE_MEAN, IMAGE_STD))."""
    mean = torch.tensor(IMAGE_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------- shard lists
def _bucket_listing(spec: str) -> bool:
    """An `s3://` folder or glob of shards (one listing request), not a shard's own URL."""
    return spec.startswith("s3://") and "::" not in spec and not spec.endswith(".tar")


def _listed(spec: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(spec)
    pattern = path if any(c in path for c in "*?[") else f"{path.rstrip('/')}/*.tar"
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(pattern))


def _expand(spec: str) -> list[str]:
    """A folder, glob, brace pattern or URL (several joined by `::`; an `s3://` folder or glob is listed) ->
    shard urls, in a stable order."""
    urls: list[str] = []
    for part in wds.shardlists.expand_urls(spec):
        if _bucket_listing(part):
            urls += _listed(part)
        elif "://" in part:
            urls.append(part)
        elif Path(part).is_dir():
            urls += sorted(str(p) for p in Path(part).glob("*.tar"))
        elif any(c in part for c in "*?["):
            urls += sorted(glob.glob(part))
        else:
            urls.append(part)
    return urls


def resolve_shards(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(training shards, evaluation shards). A folder splits by file name (`*-<eval_split>-*.tar` is
    evaluation); patterns are used as given (evaluation defaults to the same shards, filtered by split)."""
    marker = f"-{cfg.eval_split}-"
    train = _expand(cfg.shards)
    folder = "::" not in cfg.shards and (Path(cfg.shards).is_dir() or _bucket_listing(cfg.shards))
    if folder:
        evaluation = [u for u in train if marker in Path(u).name]
        train = [u for u in train if marker not in Path(u).name]
    else:
        evaluation = list(train)
    if cfg.eval_shards:
        evaluation = _expand(cfg.eval_shards)
    if not train:
        raise FileNotFoundError(f"no training shards in {cfg.shards!r}")
    missing = [u for u in train + evaluation if "://" not in u and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shards not found: {', '.join(missing[:5])}")
    return train, evaluation


# ---------------------------------------------------------------- which clips a stage sees
def meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample's json metadata (decoded once, cached in the sample)."""
    if "_meta" not in sample:
        sample["_meta"] = json.loads(sample["json"])
    return sample["_meta"]


def _with_meta(sample: dict[str, Any]) -> dict[str, Any]:
    meta(sample)  # a sample whose json does not parse fails here, under the configured handler
    return sample


def in_val(key: str, fraction: float) -> bool:
    """Deterministic validation slice: a stable hash of the clip key, independent of shard layout."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) < fraction * 16**8


def _is_selected(sample: dict, eval_split: str, val_fraction: float, part: str) -> bool:
    if part == "all":
        return True
    if meta(sample).get("split") == eval_split:
        return part == "eval"
    if part == "eval":
        return False
    return in_val(sample["__key__"], val_fraction) == (part == "val")


def selector(cfg: DataConfig, part: str) -> Callable[[dict], bool]:
    """Sample filter: "train" (minus the validation slice), "val", "eval" (the evaluation split) or "all"."""
    if part not in ("train", "val", "eval", "all"):
        raise ValueError(f"unknown data part {part!r}")
    return partial(_is_selected, eval_split=cfg.eval_split, val_fraction=cfg.val_fraction, part=part)


# ---------------------------------------------------------------- decoding
def moment_names(k: int) -> list[str]:
    """Shard members of the first k moments: jpg, top2.jpg, top3.jpg, ..."""
    return ["jpg"] + [f"top{i}.jpg" for i in range(2, k + 1)]


def held_moments(sample: dict, k: int) -> list[tuple[int, float | None]]:
    """(index, time) of the first k moments whose frame the shard holds: index i is member moment_names(k)[i]
    and json moments[i]; a sample without `moments` has one, its best frame (json frame_t; None if absent)."""
    info = meta(sample)
    times = [m["t"] for m in info.get("moments", [])] or [info.get("frame_t")]
    return [(i, t) for i, (name, t) in enumerate(zip(moment_names(k), times, strict=False)) if name in sample]


def open_image(data: bytes, min_side: int | None) -> Image.Image:
    """Decode a JPEG, letting libjpeg scale it down by 2/4/8 while keeping both sides >= min_side (None: at
    full resolution, as PIL's plain `Image.open(...).convert("RGB")`)."""
    img = Image.open(io.BytesIO(data))
    if min_side is not None:
        img.draft("RGB", (min_side, min_side))
    return img.convert("RGB")


def decode_audio(sample: dict, cfg: AudioConfig, moments: int = 1, rng: np.random.Generator | None = None
                 ) -> dict:
    """A sample's waveform (fitted to cfg.seconds, see fit_length), label, identity and the time of its best frame.

    With audio.crop "moment", moments > 1 and an rng, the waveform is centred on one of the sample's first
    `moments` moments that the shard holds (drawn at random; its index in `moment`), else on the best frame."""
    frame_t = meta(sample).get("frame_t")
    index, centre = 0, frame_t
    if cfg.crop == "moment" and moments > 1 and rng is not None:
        held = held_moments(sample, moments)
        if held:
            index, centre = held[rng.integers(len(held))]
    return {"wave": load_waveform(sample["flac"], cfg, centre), "url": sample["__url__"],
            "key": sample["__key__"], "label": int(sample["cls"]), "frame_t": float(frame_t or 0.0),
            "moment": index}


def collate(samples: list[dict]) -> dict[str, Any]:
    """Stack arrays/tensors/numbers into tensors; keep strings and dicts as lists."""
    out: dict[str, Any] = {}
    for name, first in samples[0].items():
        values = [s[name] for s in samples]
        if isinstance(first, np.ndarray):
            out[name] = torch.from_numpy(np.stack(values))
        elif isinstance(first, torch.Tensor):
            out[name] = torch.stack(values)
        elif isinstance(first, (int, float, bool)):
            out[name] = torch.tensor(values)
        else:
            out[name] = values
    return out


# ---------------------------------------------------------------- pipelines
def _open_shards(data: Iterable[dict], handler: Callable) -> Iterator[dict]:
    """webdataset's `url_opener`, except that `s3://` shards are read through fsspec (s3fs: credentials and
    endpoint from the AWS environment and config files, `AWS_ENDPOINT_URL` included)."""
    for source in data:
        if not source["url"].startswith("s3://"):
            yield from wds.tariterators.url_opener([source], handler=handler)
            continue
        try:
            import fsspec

            yield dict(source, stream=fsspec.open(source["url"], "rb").open())
        except Exception as exn:  # noqa: BLE001 - the configured handler decides, as for any other shard
            if not handler(exn):
                break


def _tar_samples(data: Iterable[dict], handler: Callable) -> Iterator[dict]:
    """Shard urls -> samples (webdataset's `tarfile_to_samples`, opening shards with `_open_shards`)."""
    files = wds.tariterators.tar_file_expander(_open_shards(data, handler), handler=handler)
    return wds.tariterators.group_by_keys(files, handler=handler)


def pipeline(urls: list[str], cfg: DataConfig, *, select: Callable[[dict], bool],
             steps: Iterable[Any], batch_size: int, seed: int | None,
             partial: bool = True) -> wds.DataPipeline:
    """Shards -> samples -> `select` -> (shuffle) -> `steps` (pipeline stages, see `mapped`) -> batches.

    seed=None: one ordered pass over all of `urls` (validation, statistics, evaluation, caching).
    seed=int: training order: shards split by rank, shuffled or resampled, a seeded shuffle buffer."""
    handler = HANDLERS[cfg.handler]
    if seed is None:
        stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_worker]
    elif cfg.resample:  # every rank and worker draws its own shard sequence (seeded by rank and worker)
        stages = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(urls, seed=seed), wds.split_by_node, wds.split_by_worker]
    stages += [wds.pipelinefilter(_tar_samples)(handler=handler), wds.map(_with_meta, handler=handler),
               wds.select(select)]
    if seed is not None:
        stages.append(wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 64),
                                  rng=random.Random(seed)))
    stages += list(steps)
    stages.append(wds.batched(batch_size, collation_fn=collate, partial=partial))
    pipe = wds.DataPipeline(*stages)
    if seed is not None and cfg.resample:
        pipe = pipe.with_epoch(nbatches=cfg.epoch_batches)
    return pipe


def mapped(fn: Callable[[dict], Any], cfg: DataConfig) -> Any:
    """A per-sample pipeline step whose failures go to the configured handler."""
    return wds.map(fn, handler=HANDLERS[cfg.handler])


def loader(pipe: wds.DataPipeline, workers: int) -> Iterable[dict]:
    """Batches from `pipe`, decoded in `workers` DataLoader processes (0: in this process)."""
    if workers == 0:
        return pipe
    return torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=workers, persistent_workers=True)


def forever(batches: Iterable[dict]) -> Iterator[dict]:
    """Epoch after epoch of batches; an epoch without a single batch is an error, not a hang."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("a training epoch produced no batch on this rank: fewer training shards than "
                               "ranks x loader workers, or fewer clips than one batch (use data.resample = true "
                               "or a smaller batch_size)")
