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

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal
from torch import nn

from curation.config import RunConfig, ScoreConfig
from curation.decode import DecodedClip
from curation.errors import CheckpointError
from curation.score import ScoreResult
from curation.ssl_model import AVLocalizer, CheckpointKeyError, ResNet18Trunk, SSLModelConfig, load_state_strict

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
    from curation.ssl_train import CHECKPOINT_FORMAT

    blob = safe_load(path)
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT:
        return "native"
    return detect_layout(_state_dict(blob, str(path)), str(path))


def resolve_checkpoint(cfg: RunConfig) -> RunConfig:
    """The run's config with `score.checkpoint_format` made concrete, once the checkpoint has loaded here (a bad
    file is one line at start, not a failure on every worker)."""
    from curation.ssl_train import load_checkpoint

    score = cfg.score
    if not Path(score.checkpoint).is_file():
        raise CheckpointError(f"score.checkpoint: no such file {score.checkpoint} (CHECKPOINT= a .pth file, or "
                              "leave it empty to train a model on the clips first)")
    found = checkpoint_format(score.checkpoint)
    if score.checkpoint_format not in ("auto", found):
        raise CheckpointError(f"checkpoint {score.checkpoint} is {_KINDS[found]}, not {_KINDS[score.checkpoint_format]}"
                              ": set score.checkpoint_format = auto (CHECKPOINT_FORMAT=auto)")
    if found == "native":
        load_checkpoint(score.checkpoint)
    else:
        load_published(score.checkpoint, found)
        if cfg.decode.sample_rate != SAMPLE_RATE:
            raise CheckpointError(f"{LAYOUTS[found]} models take {SAMPLE_RATE} Hz audio: set decode.sample_rate = "
                                  f"{SAMPLE_RATE} (it is {cfg.decode.sample_rate})")
    return replace(cfg, score=replace(score, checkpoint_format=found))


def spectrograms(audio: np.ndarray, times: np.ndarray, rate: int) -> np.ndarray:
    """EZ-VSL's audio front end for each frame: (T, 1, 257, 200) float32 at 16 kHz.

    A 3-s window centred on the frame (shifted inward at the clip's edges; a clip shorter than 3 s is tiled, as
    their loader does), clipped to [-1, 1], scipy's spectrogram (Tukey window, constant detrend, density),
    log(S + 1e-7) / 12."""
    width = int(round(WINDOW_S * rate))
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if len(x) < width:
        x = np.tile(x, width // max(len(x), 1) + 1)[:width] if len(x) else np.zeros(width, dtype=np.float32)
    starts = np.clip(np.round(np.asarray(times) * rate).astype(np.int64) - width // 2, 0, len(x) - width)
    windows = np.lib.stride_tricks.sliding_window_view(x, width)[starts]
    _, _, spec = signal.spectrogram(windows, rate, nperseg=512, noverlap=274)
    return (np.log(spec + 1e-7) / 12.0).astype(np.float32)[:, None]


def images(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> (T, 3, 224, 224) floats in [0, 1]: the whole frame resized bicubic (aspect not
    kept, as their test transform `Resize((224, 224), BICUBIC)`). Resized as uint8, channels-last: within one grey
    level of PIL's bicubic and ~15x faster than resizing floats."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True, align_corners=False)
    return x.float() / 255.0


class PublishedScorer:
    """Scores frames with a published localiser: map = cosine / 0.03 over its 7 x 7 grid, score = the map's max.
    With a reference bank (`score.bank`, built from the run's clips by `curation.bank.ensure_bank`) the
    contrastive score is the calibrated margin of `curation.bank`, in the same units; without one there is none."""

    def __init__(self, cfg: ScoreConfig):
        from curation.bank import load_bank, null_threshold
        from curation.ssl_train import file_digest

        torch.set_num_threads(1)  # one worker process per core
        self.model, self.layout = load_published(cfg.checkpoint, cfg.checkpoint_format)
        self.batch_size = cfg.batch_size
        digest = file_digest(cfg.checkpoint)
        self.model_id = f"ssl-{self.layout}-{digest[:12]}"
        self.threshold = null_threshold(load_bank(cfg.bank, digest), cfg.bank_quantile) if cfg.bank else None

    def features(self, clip: DecodedClip, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Image maps and audio vectors of the frames `idx` of `clip`, each scaled by 1 / sqrt(0.03), so their
        dot products are the authors' cosine / 0.03."""
        specs = torch.from_numpy(spectrograms(clip.audio, clip.times[idx], clip.sample_rate))
        scale = TEMPERATURE ** -0.5
        return (self.model.image_maps(images(clip.frames[idx])) * scale,
                self.model.audio_vectors(specs) * scale)

    def score(self, clip: DecodedClip) -> ScoreResult:
        maps = []
        with torch.inference_mode():
            for lo in range(0, len(clip.times), self.batch_size):
                image_maps, vectors = self.features(clip, np.arange(lo, min(lo + self.batch_size, len(clip.times))))
                maps.append(AVLocalizer.localization(image_maps, vectors))
        loc = torch.cat(maps)
        scores = loc.flatten(1).amax(dim=1).numpy().astype(np.float32)
        return ScoreResult(scores=scores, maps=loc.numpy().astype(np.float32),
                           contrastive=None if self.threshold is None else scores - np.float32(self.threshold))
