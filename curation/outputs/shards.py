"""Write stage: WebDataset samples -> shard tars (webdataset's TarWriter), their wids index, shard rows.

The samples themselves (a clip's JPEGs, FLAC, label, metadata) are `sample_media`'s; this module writes tars.

Shards are byte-identical for the same inputs and config: samples go in clip-id order, tar headers carry a
fixed mtime/owner, and each shard is written to a temp file and renamed, so a killed run never leaves a
half-written shard under its final name (`curation.storage.atomic_output`, on a local disk or an object store).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import webdataset as wds

from curation import storage
from manifests.io import json_bytes
from manifests.layout import shard_name, wids_index_name

_TAR_MTIME = 0  # fixed header time: byte-identical shards across runs


@dataclass(frozen=True)
class ShardInfo:
    shard: str  # file name inside the shard folder
    split: str | None
    n_samples: int
    bytes: int
    sha256: str
    clip_ids: tuple[str, ...]


class _Counting:
    """A write-only stream that hashes and counts what passes through it (the shard's sha256 and size without
    reading the file back)."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.stream.write(data)

    def tell(self) -> int:
        return self.size


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_shard(samples: Iterable[dict], shard_dir: str, shard: str, split: str | None) -> ShardInfo:
    """Write one shard (`samples` in their final order) and commit it under its name only once complete
    (`storage.atomic_output`: temp file + rename locally, one upload on an object store)."""
    keys = []
    with storage.atomic_output(storage.join(str(shard_dir), shard)) as stream:
        counted = _Counting(stream)
        writer = wds.TarWriter(counted, mtime=_TAR_MTIME, user="s2s", group="s2s", mode=0o444)
        for sample in samples:
            writer.write(sample)
            keys.append(sample["__key__"])
        writer.close()
    return ShardInfo(shard=shard, split=split, n_samples=len(keys), bytes=counted.size,
                     sha256=counted.digest.hexdigest(), clip_ids=tuple(keys))


def write_shard_set(samples: Iterable[dict], shard_dir: str, name: str, split: str | None,
                    samples_per_shard: int) -> list[ShardInfo]:
    """Write `samples` (already in their final order) as `name-000000.tar`, `name-000001.tar`, ..."""
    return [write_shard(chunk, shard_dir, shard_name(name, index), split)
            for index, chunk in enumerate(chunks(samples, samples_per_shard))]


def write_wids_index(shard_dir: str, name: str, infos: list[ShardInfo]) -> str:
    """`name.wids.json`: the shard list with sample counts, for random access with `wids`; returns where."""
    index = storage.join(str(shard_dir), wids_index_name(name))
    storage.write_bytes(index, json_bytes(
        {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
         "shardlist": [{"url": i.shard, "nsamples": i.n_samples, "filesize": i.bytes, "sha256": i.sha256}
                       for i in infos]}))
    return index


def remove_stale_shards(shard_dir: str, keep: set[str]) -> list[str]:
    """Delete shard tars and indexes a previous run left that this run did not write."""
    stale = [n for n in storage.listdir(str(shard_dir)) if n.endswith((".tar", ".wids.json")) and n not in keep]
    for name in stale:
        storage.remove(storage.join(str(shard_dir), name))
    return sorted(stale, key=lambda n: (not n.endswith(".tar"), n))
