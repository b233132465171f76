"""A worker's local copy of one clip's `OUT/raw` files when OUT is an object store.

Decoders and ffmpeg need local files, and a worker sees no client filesystem: before a clip is fetched its
earlier fetch (if any) is downloaded into the task's scratch folder, and afterwards what the fetch produced
there is uploaded, the `.fetch.json` record before the clip (a clip's record is in place before the clip, as
on a local disk). A `path` row given as a URL (the client uploads local rows: `pipeline`) is downloaded too.
A user's checkpoint or moments file is uploaded by the client once, content-addressed (`stage_inputs`).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from curation import storage
from curation.config import RunConfig

_FILES = (("raw", ".fetch.json"), ("maps", ".npy"), ("raw", ".mp4"))  # upload order: the clip itself last


def stage_in(clip_id: str, path: str | None, out: str, scratch: Path) -> tuple[str | None, set[str]]:
    """Download the clip's earlier fetch, and its `path` when that is a URL, into `scratch`; returns the local
    path to read instead of `path` and the names already in OUT (not to upload again)."""
    present = set()
    for folder, suffix in _FILES:
        name = f"{folder}/{clip_id}{suffix}"
        if storage.exists(storage.join(out, name)):
            storage.get_file(storage.join(out, name), scratch / name)
            present.add(name)
    if path is None or not storage.is_url(path):
        return path, present
    if path == storage.join(out, "raw", f"{clip_id}.mp4"):  # the demo world's clips are their own raw clips
        return str(scratch / "raw" / f"{clip_id}.mp4"), present
    local = scratch / "inputs" / f"{clip_id}{Path(path).suffix}"
    storage.get_file(path, local)
    return str(local), present


def stage_out(clip_id: str, out: str, scratch: Path, present: set[str]) -> None:
    """Upload what the clip's fetch (and `score.save_maps`) left in `scratch`, then free the scratch space."""
    for folder, suffix in _FILES:
        name = f"{folder}/{clip_id}{suffix}"
        local = scratch / name
        if local.is_file() and name not in present:
            storage.put_file(local, storage.join(out, name))
    for folder, suffix in _FILES:
        (scratch / f"{folder}/{clip_id}{suffix}").unlink(missing_ok=True)
    for leftover in (scratch / "inputs").glob(f"{clip_id}.*"):
        leftover.unlink()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a local file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(storage.READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_inputs(cfg: RunConfig, out: str) -> tuple[RunConfig, dict[str, dict]]:
    """The run's config with its given checkpoint / moments file where the workers can read it, and what was
    uploaded, for run.json ({option: {"given": the client's path, "sha256": ...}}). A URL is used in place; a
    local file is uploaded once to `OUT/inputs/<option>/<sha256[:16]>/<name>` (content-addressed: a rerun, or
    another run with the same bytes, finds it there and uploads nothing)."""
    score, given = cfg.score, {}
    for option in ("checkpoint", "moments"):
        path = getattr(score, option)
        if score.scorer != ("ssl" if option == "checkpoint" else "moments") or not path or storage.is_url(path):
            continue
        digest = file_sha256(path)
        target = storage.join(out, "inputs", option, digest[:16], Path(path).name)
        if not storage.exists(target):
            storage.put_file(path, target)
        score = replace(score, **{option: target})
        given[f"score.{option}"] = {"given": path, "sha256": digest}
    return replace(cfg, score=score), given
