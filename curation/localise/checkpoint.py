"""The native localiser's checkpoint file (written by `ssl-train`, read by the scorer and by resume).

One torch file: the format tag, the model's config and CPU weights, the optimizer, the step, the reference
banks the contrastive score compares against, and the training config. Read with `weights_only=True`. A file
that `ssl-train` chose among restarts also carries the other restarts (`ensemble`: model config, weights and
bank of each, lowest final loss first), so the scorer can average several models (`score.ensemble`).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from curation.config import SSLConfig
from curation.errors import CheckpointError
from curation.localise.model import AVLocalizer, SSLModelConfig, load_state_strict
from manifests.io import atomic_write_bytes

CHECKPOINT_FORMAT = "s2s-ssl-v1"


def save_checkpoint(path: Path, model: AVLocalizer, optimizer, step: int, bank: dict[str, torch.Tensor] | None,
                    train_cfg: SSLConfig) -> None:
    buf = io.BytesIO()
    state = {key: value.cpu() for key, value in model.state_dict().items()}  # loads anywhere, CUDA-trained or not
    torch.save({"format": CHECKPOINT_FORMAT, "model_config": model.cfg.to_dict(), "model": state,
                "optimizer": optimizer.state_dict() if optimizer is not None else None, "step": step,
                "bank": bank, "train_config": json.dumps(train_cfg.__dict__, default=list)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_blob(path: str | Path) -> dict:
    """The raw blob of a checkpoint written by `ssl-train` (weights, banks, step, config), without building a
    model: what reading its step or carrying it into another checkpoint needs."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ssl-train checkpoint (format {CHECKPOINT_FORMAT}): for a published "
                              "EZ-VSL / FNAC / SLAVC checkpoint set score.checkpoint_format = auto")
    return blob


def _built(entry: dict, where: str) -> AVLocalizer:
    """The model (eval mode) of a checkpoint blob or ensemble member: its config, its weights loaded strictly."""
    model = AVLocalizer(SSLModelConfig.from_dict(entry["model_config"]))
    load_state_strict(model, entry["model"], where)
    return model.eval()


def load_checkpoint(path: str | Path) -> tuple[AVLocalizer, dict[str, torch.Tensor] | None, dict]:
    """A checkpoint written by `ssl-train`: the model (eval mode), its reference banks, and the raw blob."""
    blob = checkpoint_blob(path)
    return _built(blob, str(path)), blob["bank"], blob


def with_ensemble(blob: dict, others: list[dict]) -> bytes:
    """The bytes of checkpoint `blob` carrying `others` (checkpoint blobs of the other restarts, best first) as
    ensemble members: their model configs, weights and banks (no optimizer)."""
    members = [{"model_config": o["model_config"], "model": o["model"], "bank": o["bank"]} for o in others]
    buf = io.BytesIO()
    torch.save({**blob, "ensemble": members}, buf)
    return buf.getvalue()


def load_members(path: str | Path, count: int) -> list[tuple[AVLocalizer, dict[str, torch.Tensor] | None]]:
    """The checkpoint's model and at most `count - 1` of the ensemble members it carries (fewer when it holds
    fewer), each with its reference bank, best first."""
    model, bank, blob = load_checkpoint(path)
    members = [(model, bank)]
    for k, member in enumerate(blob.get("ensemble", [])[: count - 1]):
        members.append((_built(member, f"{path} (ensemble member {k + 1})"), member["bank"]))
    return members


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
