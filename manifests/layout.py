"""Where everything in a curation run's output folder (OUT) lives. This is the only module that names OUT's
folders and files.

OUT is a local folder or an object-store URL (`s3://bucket/prefix`), and its layout is the same on both
(README, "Output folder"). Every location here is built with `join`, so a local OUT gives local paths and a URL
gives URLs of the same scheme. `curation` writes these files and `training` reads some of them (a curated OUT's
`labels.json` and the demo world's `truth.parquet`). This module does no I/O and imports no file-system library:
reading and writing go through `curation.storage`.

```
OUT/raw/<clip_id>.mp4, <clip_id>.fetch.json   fetched clips and how each was fetched
OUT/raw/source_index/<sha1[:16]>.parquet      one listing per SOURCE archive pass
OUT/raw/demo_clips.parquet, demo_world.json, truth.parquet    the demo world
OUT/cache/<key>/<clip_id>.npz                 per-clip results (key: the clip stage's fingerprint)
OUT/cache/yt-dlp/                             yt-dlp's cache
OUT/maps/<clip_id>.npy                        localisation maps (`score.save_maps`)
OUT/ssl/<settings>/model.pt, loss.jsonl, restarts.json, restarts/<k>/   an ssl-train model
OUT/ssl/bank-<key>.pt                         a published localiser's reference bank
OUT/inputs/<clip_id><suffix>                  local `path` rows, uploaded for the workers (object store)
OUT/inputs/<option>/<sha256[:16]>/<name>      a given checkpoint or moments file, uploaded once (object store)
OUT/manifests/clips.parquet, frames.parquet, shards.parquet, run.json, truth_metrics.json
OUT/shards/<name>-%06d.tar, <name>.wids.json, labels.json
OUT/report.html, OUT/official/<file>           `report` and `export-moments`
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SHARD_PATTERN = "{name}-{index:06d}.tar"
SOURCE_INDEX = "source_index"  # in the raw folder
LABELS = "labels.json"  # in the shard folder
FETCH_RECORD_SUFFIX = ".fetch.json"  # beside a raw clip: the suffix that replaces its `.mp4`


def join(base: str | os.PathLike, *names: str) -> str:
    """`base/name/...` for a local path or a URL alike."""
    return "/".join([str(base).rstrip("/"), *names])


def parent(location: str | os.PathLike) -> str:
    """The folder holding `location` (a local path or a URL)."""
    head, sep, _ = str(location).rstrip("/").rpartition("/")
    return head or (sep and "/") or "."


def name_of(location: str | os.PathLike) -> str:
    """The last part of `location`: a file name."""
    return str(location).rstrip("/").rpartition("/")[2]


def raw_clip_name(clip_id: str) -> str:
    return f"{clip_id}.mp4"


def clip_in(raw_dir: str | os.PathLike, clip_id: str) -> str:
    """A raw clip in the raw folder `raw_dir`."""
    return join(raw_dir, raw_clip_name(clip_id))


def source_index_in(raw_dir: str | os.PathLike) -> str:
    """The folder of archive listings in the raw folder `raw_dir`."""
    return join(raw_dir, SOURCE_INDEX)


def cache_file(cache_dir: str | os.PathLike, clip_id: str) -> str:
    """A clip's result in the cache folder `cache_dir`."""
    return join(cache_dir, f"{clip_id}.npz")


def shard_name(name: str, index: int) -> str:
    """The file name of shard `index` of the shard set `name`."""
    return SHARD_PATTERN.format(name=name, index=index)


def wids_index_name(name: str) -> str:
    return f"{name}.wids.json"


def labels_in(shard_dir: str | os.PathLike) -> str:
    """The label names (index = `cls`) of the shards in `shard_dir`."""
    return join(shard_dir, LABELS)


@dataclass(frozen=True)
class ModelFiles:
    """A trained localisation model's files: the checkpoint (`model`), and beside it its loss log, the record
    of its restarts and the restarts' own folders."""

    model: str

    @property
    def folder(self) -> str:
        return parent(self.model)

    @property
    def loss_log(self) -> str:
        return join(self.folder, "loss.jsonl")

    @property
    def restarts_record(self) -> str:
        return join(self.folder, "restarts.json")

    def restart(self, k: int) -> ModelFiles:
        """The files of restart `k`, trained in a folder of their own."""
        return ModelFiles(join(self.folder, "restarts", str(k), "model.pt"))


@dataclass(frozen=True)
class OfficialFiles:
    """The official Sound2Scene data layout (`export-moments`): the moments JSON (`moments`), and beside it
    `images/<key>.jpg` and `audios/<key>.wav` per clip."""

    moments: str

    def image(self, key: str) -> str:
        return join(parent(self.moments), "images", f"{key}.jpg")

    def audio(self, key: str) -> str:
        return join(parent(self.moments), "audios", f"{key}.wav")


class _At:
    """A fixed place in OUT, as an attribute of a RunLayout: `names` joined under its `out`."""

    def __init__(self, *names: str):
        self.names = names

    def __get__(self, layout: RunLayout | None, owner: type | None = None):
        return self if layout is None else join(layout.out, *self.names)


@dataclass(frozen=True)
class RunLayout:
    """The locations in the output folder `out` (a local path or a URL, as given: resolve it first)."""

    out: str

    raw = _At("raw")  # fetched clips, SOURCE's listings, the demo world
    source_index = _At("raw", SOURCE_INDEX)
    demo_clips = _At("raw", "demo_clips.parquet")
    demo_world = _At("raw", "demo_world.json")
    truth = _At("raw", "truth.parquet")
    caches = _At("cache")  # every clip stage's results (`cache`), and yt-dlp's cache
    yt_dlp_cache = _At("cache", "yt-dlp")
    inputs = _At("inputs")  # the client's files, uploaded for workers that cannot see its disk
    manifests = _At("manifests")
    clips_manifest = _At("manifests", "clips.parquet")
    frames_manifest = _At("manifests", "frames.parquet")
    shards_manifest = _At("manifests", "shards.parquet")
    run_record = _At("manifests", "run.json")
    truth_metrics = _At("manifests", "truth_metrics.json")
    shards = _At("shards")
    labels = _At("shards", LABELS)
    report = _At("report.html")

    @classmethod
    def of_raw(cls, raw_dir: str | os.PathLike) -> RunLayout:
        """The layout whose raw folder is `raw_dir` (OUT is its parent)."""
        return cls(parent(raw_dir))

    @classmethod
    def of_shards(cls, shard_dir: str | os.PathLike) -> RunLayout:
        """The layout whose shard folder is `shard_dir` (OUT is its parent)."""
        return cls(parent(shard_dir))

    def raw_clip(self, clip_id: str) -> str:
        return clip_in(self.raw, clip_id)

    def fetch_record(self, clip_id: str) -> str:
        return join(self.raw, f"{clip_id}{FETCH_RECORD_SUFFIX}")

    def cache(self, key: str) -> str:
        """The per-clip results of the clip stage with fingerprint `key`."""
        return join(self.out, "cache", key)

    def clip_map(self, clip_id: str) -> str:
        return join(self.out, "maps", f"{clip_id}.npy")

    def clip_files(self, clip_id: str) -> tuple[str, ...]:
        """What a clip's fetch and scoring leave beside the cache, in upload order: the fetch record, the maps,
        the clip itself last (a clip's record is in place before the clip)."""
        return self.fetch_record(clip_id), self.clip_map(clip_id), self.raw_clip(clip_id)

    def ssl_model(self, settings: str) -> ModelFiles:
        """The model ssl-train makes with the settings whose hash is `settings`."""
        return ModelFiles(join(self.out, "ssl", settings, "model.pt"))

    def bank(self, key: str) -> str:
        """A published localiser's reference bank."""
        return join(self.out, "ssl", f"bank-{key}.pt")

    def input_clip(self, clip_id: str, suffix: str) -> str:
        return join(self.inputs, f"{clip_id}{suffix}")

    def given_input(self, option: str, sha256: str, name: str) -> str:
        """A given checkpoint or moments file, content-addressed."""
        return join(self.inputs, option, sha256[:16], name)

    def manifest(self, name: str) -> str:
        return join(self.manifests, name)

    def official(self, name: str) -> OfficialFiles:
        """The official Sound2Scene layout in OUT (`export-moments`), its moments JSON named `name`."""
        return OfficialFiles(join(self.out, "official", name))
