"""The native localiser's checkpoint file (written by `ssl-train`, read by the scorer and by resume).

One torch file: the format tag, the model's config and CPU weights, the optimizer, the step, the reference
banks the contrastive score compares against, and the training config. Read with `weights_only=True`.
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


def load_checkpoint(path: str | Path) -> tuple[AVLocalizer, dict[str, torch.Tensor] | None, dict]:
    """A checkpoint written by `ssl-train`: the model (eval mode), its reference banks, and the raw blob."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ssl-train checkpoint (format {CHECKPOINT_FORMAT}): for a published "
                              "EZ-VSL / FNAC / SLAVC checkpoint set score.checkpoint_format = auto")
    model = AVLocalizer(SSLModelConfig.from_dict(blob["model_config"]))
    load_state_strict(model, blob["model"], str(path))
    return model.eval(), blob["bank"], blob


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
