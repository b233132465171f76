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
import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from curation.decode import DecodedClip
from curation.errors import CheckpointError
from manifests.io import atomic_write_bytes

if TYPE_CHECKING:
    from curation.clip_task import ClipJob
    from curation.config import RunConfig

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
            images.append(maps)
            audios.append(vectors)
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


def ensure_bank(cfg: RunConfig, jobs: list[ClipJob], out: str | Path) -> RunConfig:
    """The run's config with `score.bank` set when a published localiser scores with the margin: a bank built
    once from `score.bank_clips` of the run's local or already-fetched clips (a sample fixed by clip id), one
    moment each, with the scorer's own front end, and kept at `OUT/ssl/bank-<key>.pt` (reused by later runs).
    Without 2 such clips there is no bank (a warning). An ssl-train checkpoint carries its own bank; other
    scorers and settings pass through."""
    from curation import storage
    from curation.clip_task import fetch_job
    from curation.decode import decode_clip
    from curation.errors import ClipError
    from curation.fetch import raw_path
    from curation.published import PublishedScorer
    from curation.ssl_train import file_digest

    score = cfg.score
    if (score.scorer != "ssl" or score.checkpoint_format not in ("ezvsl", "slavc") or score.contrast != "margin"
            or score.bank or score.bank_clips == 0):
        return cfg
    raw_dir = Path(out) / "raw" if not storage.is_url(str(out)) else None
    local = [j for j in jobs if j.path is not None or (raw_dir is not None and raw_path(raw_dir, j.clip_id).is_file())]
    if len(local) < 2:  # e.g. a YouTube list not fetched yet: no margin, the raw score ranks and cuts clips
        log.warning("reference bank: fewer than 2 local or fetched clips, so no margin (score_contrastive) in this "
                    "run; fetch first (SCORER=none) and rerun for one")
        return cfg
    wanted = set(sample_ids([j.clip_id for j in local], score.bank_clips))
    chosen = [j for j in local if j.clip_id in wanted]
    digest = file_digest(score.checkpoint)
    key = hashlib.sha256(json.dumps([digest, [j.clip_id for j in chosen], cfg.decode.__dict__]).encode()).hexdigest()
    url = storage.join(str(out), "ssl", f"bank-{key[:12]}.pt")
    if not storage.exists(url):
        scorer = PublishedScorer(replace(score, bank=None))
        with tempfile.TemporaryDirectory(prefix="s2s-bank-") as scratch:
            fetch_dir = raw_dir or Path(scratch) / "raw"

            def moments():
                for job in chosen:
                    try:
                        fetched = fetch_job(job, fetch_dir, cfg.fetch)
                        clip = decode_clip(fetched.path, fetched.offset_s, fetched.offset_s + job.end_s - job.start_s,
                                           cfg.decode, fetched.info)
                    except ClipError as exc:
                        log.info("reference bank: clip %s left out (%s)", job.clip_id, exc.kind)
                        continue
                    seed = int.from_bytes(hashlib.sha1(job.clip_id.encode()).digest()[:4], "big")
                    yield clip, np.random.default_rng(seed).integers(len(clip.times), size=1)

            local_file = Path(scratch) / "bank.pt"
            save_bank(local_file, build_bank(moments(), scorer.features), digest)
            storage.put_file(local_file, url)
    log.info("reference bank: %s", url)
    return replace(cfg, score=replace(score, bank=url))
