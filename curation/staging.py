"""The client's own files, where the workers can read them: a user's checkpoint or moments file uploaded once,
content-addressed (`stage_inputs`), when OUT is on an object store (`storage.RunFolder.share`). A clip's raw files
pass through a task's workspace (`storage.Workspace`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

from curation import storage
from curation.config import RunConfig


def file_sha256(path: str | Path) -> str:
    """The sha256 of a local file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(storage.READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_inputs(cfg: RunConfig, out: str | os.PathLike | storage.RunFolder) -> tuple[RunConfig, dict[str, dict]]:
    """The run's config with its given checkpoint / moments file where the workers can read it, and what was
    uploaded, for run.json ({option: {"given": the client's path, "sha256": ...}}). A URL, or any file of a local
    OUT's run, is used in place; a file only the client sees is uploaded once to
    `OUT/inputs/<option>/<sha256[:16]>/<name>` (content-addressed: a rerun, or another run with the same bytes,
    finds it there and uploads nothing)."""
    folder = storage.run_folder(out)
    score, given = cfg.score, {}
    for option in ("checkpoint", "moments"):
        path = getattr(score, option)
        if score.scorer != ("ssl" if option == "checkpoint" else "moments") or not folder.client_only(path):
            continue
        digest = file_sha256(path)
        score = replace(score, **{option: folder.share(path, folder.layout.given_input(option, digest,
                                                                                      Path(path).name))})
        given[f"score.{option}"] = {"given": path, "sha256": digest}
    return replace(cfg, score=score), given
