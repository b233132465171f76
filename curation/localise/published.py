"""Published localisers (EZ-VSL, FNAC, SLAVC): their checkpoints as their training loops write them, scored with
the front end they were trained on.

EZ-VSL (Mo & Morgado, ECCV 2022) and FNAC (Sun et al., CVPR 2023) share one module layout (`imgnet`, `img_proj`,
`audnet`, `aud_proj`); SLAVC (Mo & Morgado, NeurIPS 2022) has two projections per modality (`img_proj1/2`,
`aud_proj1/2`) and momentum copies of everything, unused at test time. Their `best.pth` / `latest.pth` hold
`model`, `optimizer`, `epoch` and `best_cIoU` / `best_Auc`, which become numpy float64 after the second epoch: the
safe loader is allowed exactly the numpy globals that rebuild those scalars. docs/localisers_and_moments.md says
which published models load and which do not.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curation import storage
from curation.config import RunConfig, ScoreConfig
from curation.decode import DecodedClip
from curation.errors import CheckpointError
from curation.localise.bank import build_bank, load_bank, null_threshold, sample_ids, save_bank
from curation.localise.device import DeviceScorer, FrameScores, ModelInputs
from curation.localise.model import (
    AVLocalizer,
    CheckpointKeyError,
    EZVSLSpectrogram,
    ResNet18Trunk,
    SSLModelConfig,
    audio_windows,
    load_state_strict,
    stretched,
)

if TYPE_CHECKING:
    from curation.clip_cache import ClipJob

log = logging.getLogger(__name__)

TEMPERATURE = 0.03  # the authors' tau: maps and scores are cosine / 0.03, as their test code reports them
SAMPLE_RATE = 16000  # VGGSound's rate, the only one these models were trained at
WINDOW_S = 3.0
IMAGE_SIZE = 224
LAYOUTS = {"ezvsl": "EZ-VSL / FNAC", "slavc": "SLAVC"}
_KINDS = {"native": "an ssl-train checkpoint", "ezvsl": "an EZ-VSL / FNAC checkpoint", "slavc": "a SLAVC checkpoint"}
# Other published localisers and why they do not load (named in the error a user gets).
_OTHER_LAYOUTS = {"state_dict": "an SSL-TIE checkpoint (`state_dict`)",
                  "model_state_dict": "an LVS / Senocak et al. checkpoint (`model_state_dict`)"}


def _numpy_scalar_globals() -> list[tuple[object, str]]:
    """What unpickling a numpy float64 needs (numpy 2 names it numpy._core, checkpoints from numpy 1 numpy.core)."""
    from numpy._core.multiarray import scalar

    return [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"),
            (np.dtype, "numpy.dtype"), (np.dtypes.Float64DType, "numpy.dtypes.Float64DType")]


def safe_load(path: str | Path):
    """torch.load with weights_only=True plus numpy float64 scalars; any failure is one CheckpointError line."""
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file (give the path of a .pth file)") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder: give the .pth file inside it") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        allowed = {name for _, name in _numpy_scalar_globals()}
        refused = ""
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            refused = ", ".join(name for name in found if name not in allowed)
        except Exception:  # not even a torch file: the first message says enough
            pass
        if refused:
            raise CheckpointError(f"checkpoint {path} holds Python objects the safe loader refuses ({refused}); "
                                  "only tensors, numbers and numpy float64 scalars are loaded") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first[:160]}): give the best.pth or "
                              "latest.pth an EZ-VSL, FNAC or SLAVC run wrote, or a model.pt from ssl-train") from None


def _state_dict(blob, path: str) -> dict[str, torch.Tensor]:
    """The model's tensors, `module.` (DDP) prefixes removed; a bare state dict is accepted too."""
    if not isinstance(blob, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(blob).__name__}, not a dict with a 'model' entry")
    for key, what in _OTHER_LAYOUTS.items():
        if key in blob and "model" not in blob:
            raise CheckpointError(f"checkpoint {path} is {what}: not supported (EZ-VSL, FNAC and SLAVC are)")
    state = blob.get("model", blob)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(sorted(map(str, blob))[:8])
        raise CheckpointError(f"checkpoint {path} has no model state dict under 'model' (top-level keys: {keys})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_layout(state: dict[str, torch.Tensor], path: str) -> str:
    """`ezvsl` or `slavc`, from the module names; anything else is a CheckpointError naming what was found."""
    prefixes = {key.split(".", 1)[0] for key in state}
    if {"imgnet", "img_proj1", "audnet", "aud_proj1"} <= prefixes:
        return "slavc"
    if {"imgnet", "img_proj", "audnet", "aud_proj"} <= prefixes:
        return "ezvsl"
    found = ", ".join(sorted(prefixes)[:8])
    hint = " (an audio encoder alone, like Sound2Scene's sound2scene.pth?)" if prefixes == {"audnet"} else ""
    raise CheckpointError(f"checkpoint {path} is not an EZ-VSL, FNAC or SLAVC localiser: it has modules {found}"
                          f"{hint}; expected imgnet, img_proj, audnet, aud_proj (SLAVC: img_proj1/2, aud_proj1/2)")


class SLAVCLocalizer(nn.Module):
    """SLAVC's test-time model: the mean of two projections' cosine maps (its `use_mom_eval` off, the default)."""

    def __init__(self, dim: int):
        super().__init__()
        widths = SSLModelConfig().widths
        self.imgnet = ResNet18Trunk(3, widths, True)
        self.img_proj1, self.img_proj2 = nn.Conv2d(widths[-1], dim, 1), nn.Conv2d(widths[-1], dim, 1)
        self.audnet = ResNet18Trunk(1, widths, True)
        self.aud_proj1, self.aud_proj2 = nn.Linear(widths[-1], dim), nn.Linear(widths[-1], dim)
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def image_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Both projections' L2-normalised maps side by side, / sqrt(2): their dot product with `audio_vectors`
        is the mean of the two cosines, `localise`'s map (what the reference bank compares)."""
        feats = self.imgnet((images - self.image_mean) / self.image_std)
        maps = (F.normalize(self.img_proj1(feats), dim=1), F.normalize(self.img_proj2(feats), dim=1))
        return torch.cat(maps, dim=1) / 2**0.5

    def audio_vectors(self, spectrograms: torch.Tensor) -> torch.Tensor:
        audio = torch.amax(self.audnet(spectrograms), dim=(2, 3))
        vectors = (F.normalize(self.aud_proj1(audio), dim=1), F.normalize(self.aud_proj2(audio), dim=1))
        return torch.cat(vectors, dim=1) / 2**0.5

    def localise(self, images: torch.Tensor, spectrograms: torch.Tensor) -> torch.Tensor:
        feats = self.imgnet((images - self.image_mean) / self.image_std)
        audio = torch.amax(self.audnet(spectrograms), dim=(2, 3))
        maps = []
        for img_proj, aud_proj in ((self.img_proj1, self.aud_proj1), (self.img_proj2, self.aud_proj2)):
            maps.append(torch.einsum("bchw,bc->bhw", F.normalize(img_proj(feats), dim=1),
                                     F.normalize(aud_proj(audio), dim=1)))
        return (maps[0] + maps[1]) / 2


def _check_momentum(state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """SLAVC's weights without the momentum copies, once those are checked to mirror them key for key."""
    main = {k: v for k, v in state.items() if not k.startswith("momentum_")}
    momentum = {k.removeprefix("momentum_"): v for k, v in state.items() if k.startswith("momentum_")}
    missing = sorted(f"momentum_{k}" for k in main if k not in momentum)
    unexpected = sorted(f"momentum_{k}" for k in momentum if k not in main)
    mismatched = sorted(f"momentum_{k} {tuple(v.shape)} vs {tuple(main[k].shape)}"
                        for k, v in momentum.items() if k in main and v.shape != main[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(path, missing, unexpected, mismatched)
    return main


def load_published(path: str | Path, layout: str = "auto") -> tuple[nn.Module, str]:
    """A published checkpoint as a model in eval mode with a `localise(images, spectrograms)` method, and its
    layout. Every key must fit (strict); the projection width is read from the file (the authors' --out_dim)."""
    path = str(path)
    state = _state_dict(safe_load(path), path)
    found = detect_layout(state, path)
    if layout not in ("auto", found):
        raise CheckpointError(f"checkpoint {path} is {_KINDS[found]}, not {_KINDS.get(layout, layout)}: set "
                              f"score.checkpoint_format = auto (or {found})")
    if found == "slavc":
        state = _check_momentum(state, path)
        model: nn.Module = SLAVCLocalizer(dim=int(state["img_proj1.weight"].shape[0]))
    else:
        model = AVLocalizer(SSLModelConfig(dim=int(state["img_proj.weight"].shape[0])))
    load_state_strict(model, state, path)
    return model.eval(), found


def checkpoint_format(path: str | Path) -> str:
    """`native` for a file written by ssl-train, else the published layout (or a CheckpointError)."""
    from curation.localise.checkpoint import CHECKPOINT_FORMAT

    blob = safe_load(path)
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT:
        return "native"
    return detect_layout(_state_dict(blob, str(path)), str(path))


def resolve_checkpoint(cfg: RunConfig) -> RunConfig:
    """The run's config with `score.checkpoint_format` made concrete, once the checkpoint has loaded here (a bad
    file is one line at start, not a failure on every worker)."""
    from curation.localise.checkpoint import load_checkpoint

    score = cfg.score
    if not storage.isfile(score.checkpoint):
        raise CheckpointError(f"score.checkpoint: no such file {score.checkpoint} (CHECKPOINT= a .pth file, or "
                              "leave it empty to train a model on the clips first)")
    local = storage.local_copy(score.checkpoint)  # a checkpoint on an object store is checked in a local copy
    found = checkpoint_format(local)
    if score.checkpoint_format not in ("auto", found):
        raise CheckpointError(f"checkpoint {score.checkpoint} is {_KINDS[found]}, not {_KINDS[score.checkpoint_format]}"
                              ": set score.checkpoint_format = auto (CHECKPOINT_FORMAT=auto)")
    if found == "native":
        load_checkpoint(local)
    else:
        load_published(local, found)
        if cfg.decode.sample_rate != SAMPLE_RATE:
            raise CheckpointError(f"{LAYOUTS[found]} models take {SAMPLE_RATE} Hz audio: set decode.sample_rate = "
                                  f"{SAMPLE_RATE} (it is {cfg.decode.sample_rate})")
    return replace(cfg, score=replace(score, checkpoint_format=found))


def resized(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (T, 3, 224, 224) uint8, their test transform `Resize((224, 224), BICUBIC)`."""
    return stretched(frames, IMAGE_SIZE)


def images(frames: np.ndarray) -> torch.Tensor:
    """`resized` frames as floats in [0, 1]."""
    return resized(frames).float() / 255.0


class PublishedScorer(DeviceScorer):
    """Scores frames with a published localiser: map = cosine / 0.03 over its 7 x 7 grid, score = the map's max.
    There is no reference bank of its own: with one built from the run's clips (`score.bank`,
    `localise.bank.ensure_bank`) the contrastive score is the calibrated margin of `localise.bank`, in the same
    units; without one there is none. Runs on `score.device` in `score.precision`."""

    def __init__(self, cfg: ScoreConfig):
        from curation.localise.checkpoint import file_digest

        torch.set_num_threads(1)  # one worker process per core
        self.model, self.layout = load_published(cfg.checkpoint, cfg.checkpoint_format)
        self.front = EZVSLSpectrogram(SAMPLE_RATE).eval()
        self.place([self.model, self.front], cfg.device, cfg.precision, cfg.batch_size)
        digest = file_digest(cfg.checkpoint)
        self.model_id = f"ssl-{self.layout}-{digest[:12]}"
        self.threshold = null_threshold(load_bank(cfg.bank, digest), cfg.bank_quantile) if cfg.bank else None

    def features(self, clip: DecodedClip, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Image maps and audio vectors of the frames `idx` of `clip`, each scaled by 1 / sqrt(0.03), so their
        dot products are the authors' cosine / 0.03 (what the bank stores)."""
        specs = self._spectrograms(torch.from_numpy(clip.audio), torch.from_numpy(clip.times[idx]))
        scale = TEMPERATURE ** -0.5
        return (self.model.image_maps(self.device_images(resized(clip.frames[idx]))) * scale,
                self.model.audio_vectors(specs) * scale)

    def forward(self, images: torch.Tensor, specs: torch.Tensor) -> FrameScores:
        """The per-batch math: images in [0, 1] and spectrograms on the device -> per-frame map maximum, map, and
        the margin over the bank's threshold when there is a bank."""
        loc = self.model.localise(images, specs) / TEMPERATURE
        best = loc.flatten(1).amax(dim=1)
        return FrameScores(best, loc, None if self.threshold is None else best - self.threshold)

    def _spectrograms(self, audio: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """EZ-VSL's spectrogram of the 3-s window centred on each time (`EZVSLSpectrogram`), made on the device."""
        return self.front(audio_windows(audio.to(self.device), times.to(self.device), WINDOW_S, SAMPLE_RATE))

    def batch(self, clip: DecodedClip, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.device_images(resized(clip.frames[rows])),
                self._spectrograms(torch.from_numpy(clip.audio), torch.from_numpy(clip.times[rows])))

    def inputs(self, clip: DecodedClip) -> ModelInputs:
        """The resized frames and the clip's waveform: the spectrograms are made where the model runs (shipping
        them cost 205 KB a frame, the waveform 64 KB a second of clip)."""
        return ModelInputs(resized(clip.frames), torch.from_numpy(clip.audio), torch.from_numpy(clip.times))

    def frame_audio(self, inputs: ModelInputs) -> torch.Tensor:
        return self._spectrograms(inputs.audio, inputs.times)


def ensure_bank(cfg: RunConfig, jobs: list[ClipJob], out: str | Path | storage.RunFolder) -> RunConfig:
    """The run's config with `score.bank` set when a published localiser scores with the margin: a bank built
    once from `score.bank_clips` of the run's local or already-fetched clips (a sample fixed by clip id), one
    moment each, with the scorer's own front end, and kept at `OUT/ssl/bank-<key>.pt` (reused by later runs).
    Without 2 such clips there is no bank (a warning). An ssl-train checkpoint carries its own bank; other
    scorers and settings pass through. Built in a workspace of OUT (`storage.Workspace`): with OUT on an object
    store, clips fetched into it are not read, and the bank is uploaded."""
    from curation.fetch.clip import raw_path
    from curation.localise.checkpoint import file_digest

    score = cfg.score
    if (score.scorer != "ssl" or score.checkpoint_format not in ("ezvsl", "slavc") or score.contrast != "margin"
            or score.bank or score.bank_clips == 0):
        return cfg
    folder = storage.run_folder(out)
    with folder.workspace("s2s-bank-") as ws:
        raw_dir = Path(ws.layout.raw)
        local = [j for j in jobs if j.path is not None or raw_path(raw_dir, j.clip_id).is_file()]
        if len(local) < 2:  # e.g. a YouTube list not fetched yet: no margin, the raw score ranks and cuts clips
            log.warning("reference bank: fewer than 2 local or fetched clips, so no margin (score_contrastive) in "
                        "this run; fetch first (SCORER=none) and rerun for one")
            return cfg
        wanted = set(sample_ids([j.clip_id for j in local], score.bank_clips))
        chosen = [j for j in local if j.clip_id in wanted]
        digest = file_digest(score.checkpoint)
        key = hashlib.sha256(json.dumps([digest, [j.clip_id for j in chosen], cfg.decode.__dict__]).encode())
        bank = folder.layout.bank(key.hexdigest()[:12])
        if not storage.exists(bank):
            scorer = PublishedScorer(replace(score, bank=None))
            save_bank(ws.local(bank), build_bank(_bank_moments(chosen, cfg, raw_dir), scorer.features), digest)
            ws.commit(bank)
    log.info("reference bank: %s", bank)
    return replace(cfg, score=replace(score, bank=bank))


def _bank_moments(jobs: list[ClipJob], cfg: RunConfig, raw_dir: Path):
    """(decoded clip, one frame index drawn by its clip id) of each clip of `jobs` that decodes."""
    from curation.errors import ClipError
    from curation.fetch_decode import decode_job

    for job in jobs:
        try:
            clip = decode_job(job, cfg, raw_dir)
        except ClipError as exc:
            log.info("reference bank: clip %s left out (%s)", job.clip_id, exc.kind)
            continue
        seed = int.from_bytes(hashlib.sha1(job.clip_id.encode()).digest()[:4], "big")
        yield clip, np.random.default_rng(seed).integers(len(clip.times), size=1)
