"""`ssl-export`: an ssl-train model written as a published localiser's checkpoint, for the authors' own code.

EZ-VSL's `best.pth` (its test.py strips `module.` and loads `model` strictly into `EZVSL(tau, out_dim)`): the
model's weights under the published module names, prefixed `module.` as its DDP training loop saves them, plus
`optimizer`, `epoch`, `best_cIoU`, `best_Auc`. Only a model of the published layout and inputs can be read that
way: torchvision ResNet-18 widths, the stem max-pool, 224 px, no colour branch, EZ-VSL's front end (3 s, 16 kHz).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from curation.errors import CheckpointError
from curation.localise.checkpoint import checkpoint_blob, file_digest
from curation.localise.model import SSLModelConfig
from manifests.io import atomic_write_bytes

# what EZ-VSL's model is, as SSLModelConfig fields (dim is free: the authors' --out_dim)
PUBLISHED_LAYOUT = {"widths": (64, 128, 256, 512), "image_maxpool": True, "image_size": 224, "colour_branch": 0,
                    "sample_rate": 16000, "window_s": 3.0, "preprocess": "ezvsl"}
_NOT_PUBLISHED = ("image_mean", "image_std")  # the model's input normalisation, a constant in their code


def published_layout_problems(cfg: SSLModelConfig) -> list[str]:
    """The fields of `cfg` that keep it from EZ-VSL's layout, as `name = ours (needs theirs)`."""
    return [f"{name} = {getattr(cfg, name)} (needs {want})" for name, want in PUBLISHED_LAYOUT.items()
            if getattr(cfg, name) != want]


def export_ezvsl(checkpoint: str | Path, to: str | Path) -> Path:
    """Write the model of ssl-train `checkpoint` (its chosen model, not its ensemble members) as EZ-VSL's
    best.pth at `to`. The `optimizer` entry is empty: the file is for evaluation, not for resuming their
    training. `s2s_source` records where it came from (their loader ignores it)."""
    blob = checkpoint_blob(checkpoint)
    cfg = SSLModelConfig.from_dict(blob["model_config"])
    problems = published_layout_problems(cfg)
    if problems:
        raise CheckpointError(f"{checkpoint} is not of the published EZ-VSL layout, so their code cannot read it: "
                              f"{'; '.join(problems)} (train with configs/vggsound.toml's [ssl] preset)")
    state = {f"module.{k}": v for k, v in blob["model"].items() if k not in _NOT_PUBLISHED}
    out = {"model": state, "optimizer": {}, "epoch": 0, "best_cIoU": 0.0, "best_Auc": 0.0,
           "s2s_source": {"checkpoint_sha256": file_digest(checkpoint), "step": int(blob["step"]),
                          "out_dim": cfg.dim}}
    buf = io.BytesIO()
    torch.save(out, buf)
    to = Path(to)
    to.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(to, buf.getvalue())
    return to
