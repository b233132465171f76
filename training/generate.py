"""`python -m training generate`: sound -> image, and the paper's controllability, as labelled grids.

Inference is audio -> stage-3 audio encoder -> EMA generator(z, embedding), several z per input (the same z in
every column of a sweep, so only the manipulated input changes along a row). With --official DIR: the released
Sound2Scene model instead (training/official.py; docs/official_weights.md). Inputs are audio files (any rate
soundfile reads; resampled to the front end's) or `shard:<clip key>` (the clip's flac from the shards).
Modes (one per call):
  default          rows = inputs, columns = z
  --gain-db A B..  volume: the waveform scaled by each gain (rows = input x z)
  --mix            the sum of two waveforms: rows = a, b, a+b; columns = z
  --interpolate I  normalise((1-a) audio + a image) for a in --alphas; I = an image file or shard:<key>
  --edit I         an image's embedding moved along the volume direction (audio at +gain minus at -gain):
                   normalise(image + s (loud - quiet)) for s in --strengths
Grid cells (--grid-scale): `linear` (default) maps the generator's [-1, 1] to 0..255; `official` stretches each
image to its own min..max, as the official code's torchvision.utils.make_grid(normalize=True, scale_each=True).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from manifests.io import atomic_write_bytes
from training.audio import fit_length
from training.checkpoint import ResumeError
from training.config import ConfigError, TrainConfig, load_config
from training.data import meta, open_image, resolve_shards
from training.embedding_cache import FrozenEncoder, load_encoder
from training.models.audio_encoder import AudioEncoder
from training.models.biggan import BigGANGenerator
from training.models.gan import Generator
from training.models.image_encoder import embed, encoder_input
from training.models.official_audio import Sound2SceneAudioEncoder
from training.official import load_official_audio_encoder, load_official_generator, load_official_swav, release_paths
from training.recipes.stage2_gan import load_generator, to_uint8
from training.recipes.stage3_audio import load_audio_encoder


@dataclass
class SoundToImage:
    """The three trained parts of inference, on one device."""

    audio: AudioEncoder | Sound2SceneAudioEncoder
    generator: Generator | BigGANGenerator
    image: FrozenEncoder | None  # None: the release without swav.pth.tar (no image embeddings)
    device: torch.device
    generator_step: int = 0

    @torch.no_grad()
    def embed_audio(self, waves: torch.Tensor, gain_db: float = 0.0) -> torch.Tensor:
        """(B, samples) waveforms (scaled by gain_db, clipped to [-1, 1]) -> (B, D) audio embeddings."""
        waves = (waves * 10 ** (gain_db / 20)).clamp(-1, 1)
        return torch.cat([self.audio(w.to(self.device)) for w in waves.split(32)])

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, D) L2-normalised stage-1 embeddings."""
        if self.image is None:
            raise FileNotFoundError("image embeddings (--interpolate, --edit) need the SwAV weights "
                                    "swav.pth.tar in the --official folder")
        x = encoder_input(images.to(self.device), self.image.cfg)
        return torch.cat([embed(self.image.model, c) for c in x.split(64)])

    @torch.no_grad()
    def generate(self, emb: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Every embedding with every z: (B, D) x (Z, z_dim) -> (B, Z, 3, R, R) in [-1, 1]."""
        b, n = emb.shape[0], z.shape[0]
        e = F.normalize(emb.to(self.device).float(), dim=-1).repeat_interleave(n, dim=0)
        zz = z.to(self.device).repeat(b, 1)
        out = torch.cat([self.generator(zc, ec) for zc, ec in zip(zz.split(64), e.split(64), strict=True)])
        return out.clamp(-1, 1).view(b, n, *out.shape[1:])

    def noise(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn(n, self.generator.cfg.z_dim, generator=torch.Generator().manual_seed(seed))


def load_models(out: str | Path, device: torch.device) -> SoundToImage:
    """The audio encoder (stage3/best.pt), the EMA generator (stage2/generator.pt), the image encoder."""
    out = Path(out)
    ckpt = out / "stage3" / "best.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} does not exist: run `python -m training stage3` first")
    audio, _ = load_audio_encoder(ckpt, device)
    generator, meta = load_generator(out / "stage2" / "generator.pt", device)
    return SoundToImage(audio, generator, load_encoder(out, device), device, int(meta["step"]))


def load_official_models(folder: str | Path, device: torch.device) -> SoundToImage:
    """The released audio encoder and IC-GAN generator (+ SwAV ResNet-50 when its file is there)."""
    paths = release_paths(folder)
    audio = load_official_audio_encoder(paths["audio"]).to(device)
    generator = load_official_generator(paths["generator"]).requires_grad_(False).to(device)
    image = load_official_swav(paths["swav"], device) if paths["swav"].is_file() else None
    return SoundToImage(audio, generator, image, device)


# ---------------------------------------------------------------- inputs
def _shard_sample(cfg: TrainConfig, key: str) -> dict:
    import webdataset as wds

    train, evaluation = resolve_shards(cfg.data)
    for url in dict.fromkeys(evaluation + train):
        for sample in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()):
            if sample["__key__"] == key:
                return sample
    raise FileNotFoundError(f"no clip {key!r} in the shards of {cfg.data.shards!r}")


def load_audio(spec: str, cfg: TrainConfig, audio_cfg) -> torch.Tensor:
    """A file path or shard:<key> -> (samples,) float32 waveform at the front end's rate and length."""
    centre_s = None  # a file: its middle (audio.crop "moment"); a shard sample: its best frame
    if spec.startswith("shard:"):
        sample = _shard_sample(cfg, spec[6:])
        data, centre_s = sample["flac"], meta(sample).get("frame_t")
    else:
        data = Path(spec).read_bytes()
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    wave = torch.from_numpy(wave.mean(axis=1))
    if rate != audio_cfg.sample_rate:
        import torchaudio

        wave = torchaudio.functional.resample(wave, rate, audio_cfg.sample_rate)
    return torch.from_numpy(fit_length(wave.numpy(), audio_cfg, centre_s))


def load_image(spec: str, cfg: TrainConfig, size: int | None) -> torch.Tensor:
    """A file path or shard:<key> (its best frame) -> (3, size, size) in [-1, 1], squashed to a square; size None:
    the whole frame at full resolution (3, H, W), for an encoder that prepares it itself (SwAV: swav_resize)."""
    data = _shard_sample(cfg, spec[6:])["jpg"] if spec.startswith("shard:") else Path(spec).read_bytes()
    img = open_image(data, size)
    if size is not None:
        img = img.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(127.5).sub(1)


# ---------------------------------------------------------------- grids
def labelled_grid(cells: list[list[np.ndarray]], row_labels: list[str], col_labels: list[str]) -> Image.Image:
    """(H, W, 3) uint8 cells in rows, with a label column on the left and a header row on top."""
    h, w = cells[0][0].shape[:2]
    left, top, gap = max(60, 6 * max(len(s) for s in row_labels) + 8), 16, 2
    n_cols = max(len(r) for r in cells)
    canvas = Image.new("RGB", (left + n_cols * (w + gap), top + len(cells) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(col_labels):
        draw.text((left + j * (w + gap) + 2, 2), text, fill="black")
    for i, row in enumerate(cells):
        y = top + i * (h + gap)
        draw.text((2, y + h // 2 - 5), row_labels[i], fill="black")
        for j, cell in enumerate(row):
            canvas.paste(Image.fromarray(cell), (left + j * (w + gap), y))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


GRID_SCALES = ("linear", "official")


def stretch_each(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) -> (B, H, W, 3) uint8, each image stretched to its own range: the official grids'
    torchvision.utils.make_grid(images, normalize=True, scale_each=True) (per image: clamp to [min, max], then
    (x - min) / max(max - min, 1e-5)), saved as save_image does (x * 255 + 0.5, clamped, truncated)."""
    x = images.detach().float().cpu()
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - low) / (high - low).clamp_min(1e-5)
    return x.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _rows(images: torch.Tensor, scale: str = "linear") -> list[list[np.ndarray]]:
    """(rows, cols, 3, R, R) in [-1, 1] -> rows of uint8 cells: `linear` maps [-1, 1] to 0..255 (to_uint8);
    `official` stretches each image to its own range (stretch_each)."""
    if scale not in GRID_SCALES:
        raise ValueError(f"grid scale {scale!r}: expected one of {', '.join(GRID_SCALES)}")
    to_cells = stretch_each if scale == "official" else to_uint8
    return [list(to_cells(r)) for r in images]


# ---------------------------------------------------------------- the modes
def grid_plain(m: SoundToImage, waves: torch.Tensor, names: list[str], n_z: int, seed: int,
               scale: str = "linear") -> Image.Image:
    images = m.generate(m.embed_audio(waves), m.noise(n_z, seed))
    return labelled_grid(_rows(images, scale), names, [f"z{k}" for k in range(n_z)])


def grid_gain(m: SoundToImage, waves: torch.Tensor, names: list[str], gains: list[float], n_z: int,
              seed: int, scale: str = "linear") -> Image.Image:
    z = m.noise(n_z, seed)
    per_gain = torch.stack([m.generate(m.embed_audio(waves, g), z) for g in gains], dim=2)  # (B, Z, G, ...)
    rows = _rows(per_gain.flatten(0, 1), scale)
    labels = [f"{name} z{k}" for name in names for k in range(n_z)]
    return labelled_grid(rows, labels, [f"{g:+g} dB" for g in gains])


def grid_mix(m: SoundToImage, waves: torch.Tensor, names: list[str], n_z: int, seed: int,
             scale: str = "linear") -> Image.Image:
    if waves.shape[0] != 2:
        raise ValueError("--mix needs exactly two audio inputs")
    mixed = torch.cat([waves, (waves[0] + waves[1]).clamp(-1, 1)[None]])
    images = m.generate(m.embed_audio(mixed), m.noise(n_z, seed))
    return labelled_grid(_rows(images, scale), [names[0], names[1], "mix"], [f"z{k}" for k in range(n_z)])


def grid_interpolate(m: SoundToImage, waves: torch.Tensor, names: list[str], image: torch.Tensor,
                     alphas: list[float], seed: int, scale: str = "linear") -> Image.Image:
    a, v = m.embed_audio(waves), m.embed_images(image[None])
    z = m.noise(1, seed)
    cols = torch.stack([m.generate(F.normalize((1 - al) * a + al * v, dim=-1), z)[:, 0] for al in alphas], dim=1)
    return labelled_grid(_rows(cols, scale), names, [f"a={al:g}" for al in alphas])


def volume_direction(m: SoundToImage, waves: torch.Tensor, gain_db: float) -> torch.Tensor:
    """Mean over inputs of enc(loud) - enc(quiet): the audio embedding's volume direction."""
    return (m.embed_audio(waves, gain_db) - m.embed_audio(waves, -gain_db)).mean(0)


def grid_edit(m: SoundToImage, waves: torch.Tensor, image: torch.Tensor, strengths: list[float], gain_db: float,
              n_z: int, seed: int, scale: str = "linear") -> Image.Image:
    direction = volume_direction(m, waves, gain_db)
    v = m.embed_images(image[None])[0]
    embs = F.normalize(torch.stack([v + s * direction for s in strengths]), dim=-1)
    images = m.generate(embs, m.noise(n_z, seed)).transpose(0, 1)  # rows = z, columns = strength
    return labelled_grid(_rows(images, scale), [f"z{k}" for k in range(n_z)], [f"s={s:+g}" for s in strengths])


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", nargs="+", required=True, help="audio files or shard:<clip key>")
    parser.add_argument("--out", required=True, help="the PNG grid to write")
    parser.add_argument("--train-dir", default=None,
                        help="the training output folder with the checkpoints (default: work/demo/train)")
    parser.add_argument("--official", metavar="DIR",
                        help="generate with the released Sound2Scene model in DIR instead of a training folder "
                             "(sound2scene.pth, icgan_biggan_imagenet_res128/, optional swav.pth.tar)")
    parser.add_argument("--config", help="TOML config file (its `out` is the training folder)")
    parser.add_argument("--shards", help="shard folder or pattern, for shard:<key> inputs (default: work/demo/shards)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config option")
    parser.add_argument("--n-z", type=int, default=4, help="noise vectors per input (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--gain-db", type=float, nargs="+", help="volume sweep, e.g. -12 -6 0 6")
    mode.add_argument("--mix", action="store_true", help="the sum of the two audio inputs")
    mode.add_argument("--interpolate", metavar="IMAGE", help="image file or shard:<key> to interpolate towards")
    mode.add_argument("--edit", metavar="IMAGE", help="image file or shard:<key> to edit along the volume direction")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    parser.add_argument("--strengths", type=float, nargs="+", default=[-2, -1, 0, 1, 2])
    parser.add_argument("--direction-gain-db", type=float, default=6.0, help="loud/quiet = +/- this gain")
    parser.add_argument("--grid-scale", choices=GRID_SCALES, default="linear",
                        help="grid cells: linear = [-1, 1] mapped to 0..255 (default); official = each image "
                             "stretched to its own range, as make_grid(normalize=True, scale_each=True)")
    return parser


def run(cfg: TrainConfig, args: argparse.Namespace) -> Path:
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = torch.device("cuda" if cfg.runtime.device != "cpu" and torch.cuda.is_available() else "cpu")
    m = load_official_models(args.official, device) if args.official else load_models(cfg.out, device)
    acfg = m.audio.cfg.audio
    waves = torch.stack([load_audio(a, cfg, acfg) for a in args.audio])
    names = [Path(a).stem if not a.startswith("shard:") else a[6:] for a in args.audio]
    # the image of --interpolate / --edit: SwAV prepares the whole frame itself (swav_resize); the small
    # encoder's frames are first squashed to the generator's resolution
    size = None if m.image is not None and m.image.cfg.kind == "swav" else m.generator.cfg.resolution
    scale = args.grid_scale
    if args.gain_db:
        grid = grid_gain(m, waves, names, args.gain_db, args.n_z, args.seed, scale)
    elif args.mix:
        grid = grid_mix(m, waves, names, args.n_z, args.seed, scale)
    elif args.interpolate:
        grid = grid_interpolate(m, waves, names, load_image(args.interpolate, cfg, size), args.alphas, args.seed,
                                scale)
    elif args.edit:
        grid = grid_edit(m, waves, load_image(args.edit, cfg, size), args.strengths, args.direction_gain_db,
                         args.n_z, args.seed, scale)
    else:
        grid = grid_plain(m, waves, names, args.n_z, args.seed, scale)
    return save_png(grid, args.out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        overrides = {k: v for k, v in (("out", args.train_dir), ("data.shards", args.shards)) if v is not None}
        path = run(load_config(args.config, overrides, args.set), args)
    except (ConfigError, ResumeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
