"""Cross-dataset correspondence: a frame's own audio-visual match, calibrated against a bank of other clips.

A raw localisation score says "some object here matches this sound somewhat", and a clip whose picture shows a
cat while a dog barks off screen can score high; a fixed share of clips kept (`select.keep_quantile`) then
keeps such clips whenever good ones are fewer than that share. The bank (K moments of other clips: their audio
vectors and image maps, stored with an ssl-train checkpoint or built from the run's clips for a published
localiser) gives the model's own null: the scores of sounds paired with pictures of *other* clips. The margin
is the own match minus the `quantile` of those K x (K - 1) cross-clip pairs, so margin >= 0 reads "this pair
matches better than that share of chance pairings", in any model's units and whatever the mix of the dataset.
Memory per worker is the bank alone (K x dim x map positions), whatever the number of clips.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from curation.decode import DecodedClip
from curation.errors import CheckpointError
from manifests.io import atomic_write_bytes

log = logging.getLogger(__name__)
BANK_FORMAT = "s2s-bank-v1"


def bank_matches(image_maps: torch.Tensor, vectors: torch.Tensor,
                 bank: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, K) max-over-map similarity of each frame's own audio with the bank's pictures, and (T, K) of the
    bank's sounds with each frame's picture."""
    audio_side = torch.einsum("kchw,tc->tkhw", bank["image"], vectors).flatten(2).amax(dim=2)
    frame_side = torch.einsum("tchw,kc->tkhw", image_maps, bank["audio"]).flatten(2).amax(dim=2)
    return audio_side, frame_side


def null_threshold(bank: dict[str, torch.Tensor], quantile: float) -> float:
    """The `quantile` of the max-over-map similarity of every bank sound with every *other* bank moment's
    picture: how well chance pairings from different clips match, in the model's own units."""
    pairs = torch.einsum("kchw,jc->kjhw", bank["image"], bank["audio"]).flatten(2).amax(dim=2)
    cross = pairs[~torch.eye(len(pairs), dtype=torch.bool)]
    if not len(cross):
        raise CheckpointError("the reference bank needs at least 2 moments for a margin")
    return float(torch.quantile(cross.double(), quantile))


Features = Callable[[DecodedClip, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def build_bank(moments: Iterable[tuple[DecodedClip, np.ndarray]], features: Features) -> dict[str, torch.Tensor]:
    """A bank from moments of other clips (a decoded clip and the indices of its frames to take): `features` is
    the scorer's own (front end + model: image maps, audio vectors), so the bank lives in its space."""
    images, audios = [], []
    with torch.inference_mode():
        for clip, frames in moments:
            maps, vectors = features(clip, frames)
            images.append(maps.float().cpu())  # a bank file loads anywhere, whatever device built it
            audios.append(vectors.float().cpu())
    if not images:
        raise CheckpointError("no clip to build the reference bank from (give local clips, or fetch them first)")
    return {"image": torch.cat(images), "audio": torch.cat(audios)}


def save_bank(path: str | Path, bank: dict[str, torch.Tensor], model_digest: str) -> None:
    """Write a bank file (atomic), tied to the model it was computed with."""
    buf = io.BytesIO()
    torch.save({"format": BANK_FORMAT, "model": model_digest, "image": bank["image"].contiguous(),
                "audio": bank["audio"].contiguous()}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_bank(path: str | Path, model_digest: str) -> dict[str, torch.Tensor]:
    """A bank file written by `save_bank` for the model with sha256 `model_digest` (another model's is refused)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != BANK_FORMAT:
        raise CheckpointError(f"{path} is not a reference bank (format {BANK_FORMAT})")
    if blob["model"] != model_digest:
        raise CheckpointError(f"reference bank {path} was computed with another model ({blob['model'][:12]}, this "
                              f"one is {model_digest[:12]}): delete it to rebuild")
    return {"image": blob["image"], "audio": blob["audio"]}


def sample_ids(clip_ids: list[str], size: int) -> list[str]:
    """At most `size` clip ids, those whose id hashes lowest (independent of the list's order), in list order."""
    chosen = set(sorted(clip_ids, key=lambda cid: hashlib.sha1(cid.encode()).digest())[:size])
    return [cid for cid in clip_ids if cid in chosen]
