"""Training throughput of stages 2 and 3: the one-command GPU check (issue 15).

`python -m bench.gan --device cuda` times the trainer's own train steps at the sizes of
`training/configs/gpu.toml` on synthetic data, with bf16 autocast and channels_last as the trainer applies them
on CUDA: stage 2 = `stage2_gan.gan_step` (D step + G step with embedding consistency through a ResNet-50 at
224 px, + EMA; 128 px, widths 64/64, batch 128) in images/s; stage 3 = the audio encoder's step (ResNet-18
width 64 on the full 257 x 1001 spectrogram of 10 s, InfoNCE, Adam; batch 64) in clips/s. Warm-up steps are
excluded; peak GPU memory per stage. `--preset cpu` is the demo setting, `--preset tiny --device cpu` runs the
same code in seconds (tested). Writes `<out>/gan.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from manifests.io import write_json
from training.config import AudioConfig
from training.config_gan import Stage2Config
from training.embedding_cache import FrozenEncoder
from training.models.audio_encoder import AudioEncoder, AudioEncoderConfig
from training.models.gan import GANConfig, count_parameters, update_ema
from training.models.image_encoder import SWAV_IMAGE_SIZE, ImageEncoderConfig, SmallImageEncoder, swav_resnet50
from training.recipes.stage2_gan import build_nets, gan_step
from training.recipes.stage3_audio import info_nce_l2

# stage 2: resolution, G / D widths, batch, DiffAugment; image encoder: small width (0 = SwAV ResNet-50) and input
# size; stage 3: ResNet-18 width, seconds of audio, time / frequency pooling, batch
PRESETS = {
    "gpu": dict(resolution=128, g_width=64, d_width=64, batch=128, diffaug="translation,color,cutout",
                encoder_width=0, image_size=SWAV_IMAGE_SIZE, s3_width=64, seconds=10.0, pool=(1, 1), s3_batch=64),
    "cpu": dict(resolution=64, g_width=24, d_width=16, batch=64, diffaug="translation,color",
                encoder_width=16, image_size=64, s3_width=16, seconds=2.0, pool=(8, 2), s3_batch=64),
    "tiny": dict(resolution=32, g_width=8, d_width=8, batch=8, diffaug="translation,color",
                 encoder_width=8, image_size=32, s3_width=8, seconds=1.0, pool=(2, 1), s3_batch=8),
}


def _timed(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` calls after `warmup` untimed ones (CUDA synchronised at both ends)."""
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def _image_encoder(p: dict, device: torch.device) -> FrozenEncoder:
    """A frozen stage-1 encoder of the preset's kind (random weights: the cost is the same)."""
    if p["encoder_width"]:
        model, cfg = SmallImageEncoder(p["encoder_width"]), ImageEncoderConfig("small", p["image_size"],
                                                                               p["encoder_width"])
    else:
        model, cfg = swav_resnet50(), ImageEncoderConfig("swav", p["image_size"])
    return FrozenEncoder(model.eval().requires_grad_(False).to(device), cfg, "bench", model.out_dim)


def stage2(p: dict, device: torch.device, bf16: bool, channels_last: bool, steps: int, warmup: int) -> dict:
    """images/s of stage 2's train step (gan_step + EMA), as stage2_gan.train runs it on one rank."""
    s2 = Stage2Config(resolution=p["resolution"], g_width=p["g_width"], d_width=p["d_width"], batch_size=p["batch"],
                      diffaug=p["diffaug"])
    encoder = _image_encoder(p, device)
    gcfg = GANConfig(s2.resolution, encoder.embed_dim, s2.z_dim, s2.shared_dim, s2.g_width, s2.d_width)
    nets = build_nets(gcfg, s2, 0, device, channels_last)
    frames = torch.rand(4 * s2.batch_size, 3, s2.resolution, s2.resolution, device=device) * 2 - 1
    if channels_last:
        frames = frames.contiguous(memory_format=torch.channels_last)
    emb = F.normalize(torch.randn(frames.shape[0], encoder.embed_dim, device=device), dim=1)
    rng = torch.Generator(device=device).manual_seed(0)
    losses: list[tuple[float, ...]] = []

    def step(i: int) -> None:
        losses.append(gan_step(nets, frames, emb, encoder, s2, rng, bf16))
        update_ema(nets.g_ema, nets.g, i, s2.ema_decay)

    seconds = _timed(step, steps, warmup, device)
    return {"resolution": s2.resolution, "batch": s2.batch_size, "g_params": count_parameters(nets.g),
            "d_params": count_parameters(nets.disc), "image_encoder": encoder.cfg.kind, "steps": steps,
            "steps_per_s": steps / seconds, "images_per_s": steps * s2.batch_size / seconds,
            "final_loss_d": losses[-1][0], "final_loss_g": losses[-1][1], "max_memory_gb": _peak_gb(device)}


def stage3(p: dict, embed_dim: int, device: torch.device, bf16: bool, channels_last: bool, steps: int,
           warmup: int) -> dict:
    """clips/s of stage 3's train step (audio encoder forward/backward, InfoNCE with L2 logits, Adam)."""
    audio = AudioConfig(seconds=p["seconds"], crop="clip", time_pool=p["pool"][0], freq_pool=p["pool"][1])
    model = AudioEncoder(AudioEncoderConfig(audio, p["s3_width"], embed_dim)).to(device)
    bins = audio.n_fft // 2 + 1
    model.front.set_stats(torch.zeros(bins, device=device), torch.ones(bins, device=device))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    b = p["s3_batch"]
    wave = torch.randn(b, int(audio.seconds * audio.sample_rate), device=device) * 0.1
    target = F.normalize(torch.randn(b, embed_dim, device=device), dim=1)
    losses: list[float] = []

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(wave)
        loss = info_nce_l2(out, target, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    seconds = _timed(step, steps, warmup, device)
    return {"width": p["s3_width"], "seconds_of_audio": audio.seconds, "batch": b, "steps": steps,
            "steps_per_s": steps / seconds, "clips_per_s": steps * b / seconds, "final_loss": losses[-1],
            "max_memory_gb": _peak_gb(device)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--preset", choices=tuple(PRESETS), help="sizes (default: gpu on CUDA, cpu otherwise)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per stage (default 50)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA (bf16 autocast is the default there)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--out", default="work/bench")
    a = p.parse_args(argv)
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda, but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    preset = PRESETS[a.preset or ("gpu" if cuda else "cpu")]
    bf16, channels_last = cuda and not a.no_bf16, cuda and not a.no_channels_last  # CUDA only, as in training
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "preset": a.preset or ("gpu" if cuda else
              "cpu"), "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16": bf16,
              "channels_last": channels_last}
    result["stage2"] = stage2(preset, device, bf16, channels_last, a.steps, a.warmup)
    embed_dim = 2048 if not preset["encoder_width"] else 8 * preset["encoder_width"]
    result["stage3"] = stage3(preset, embed_dim, device, bf16, channels_last, a.steps, a.warmup)
    write_json(Path(a.out) / "gan.json", result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
