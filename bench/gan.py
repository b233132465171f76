"""GAN training throughput: images/s of the stage-2 train step (D step + G step + EMA) on synthetic data.

The prepared GPU check of issue #6: `python -m bench.gan --resolution 128 --g-width 64 --d-width 64 --steps 300
--bf16` on a CUDA machine trains the 128x128 generator for a few hundred steps with bf16 autocast and reports
images/s (warm-up steps excluded). On CPU, `python -m bench.gan --steps 20` times the demo's 64 px setting.
Writes `<out>/gan.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from manifests.io import write_json
from training.models.gan import Discriminator, GANConfig, Generator, count_parameters, update_ema
from training.recipes.stage2_gan import diff_augment


def measure(gcfg: GANConfig, steps: int, warmup: int, batch: int, bf16: bool, diffaug: str,
            device: torch.device) -> dict:
    torch.manual_seed(0)
    g, d = Generator(gcfg).to(device), Discriminator(gcfg).to(device)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.0, 0.999))
    real = torch.rand(batch, 3, gcfg.resolution, gcfg.resolution, device=device) * 2 - 1
    emb = F.normalize(torch.randn(batch, gcfg.embed_dim, device=device), dim=1)
    use_bf16 = bf16 and device.type == "cuda"
    losses, t0 = [], 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            z = torch.randn(batch, gcfg.z_dim, device=device)
            with torch.no_grad():
                fake = g(z, emb)
            loss_d = (F.relu(1 - d(diff_augment(real, diffaug), emb).float()).mean()
                      + F.relu(1 + d(diff_augment(fake, diffaug), emb).float()).mean())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss_g = -d(diff_augment(g(z, emb), diffaug), emb).float().mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        update_ema(g_ema, g, step, 0.999)
        losses.append((loss_d.item(), loss_g.item()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "resolution": gcfg.resolution, "batch": batch, "bf16": use_bf16,
            "g_params": count_parameters(g), "d_params": count_parameters(d), "steps": steps,
            "steps_per_s": steps / seconds, "images_per_s": steps * batch / seconds,
            "final_loss_d": losses[-1][0], "final_loss_g": losses[-1][1],
            "max_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gan", description=__doc__)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--g-width", type=int, default=24)
    p.add_argument("--d-width", type=int, default=16)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--diffaug", default="translation,color")
    p.add_argument("--out", default="work/bench")
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gcfg = GANConfig(resolution=a.resolution, embed_dim=a.embed_dim, g_width=a.g_width, d_width=a.d_width)
    result = measure(gcfg, a.steps, a.warmup, a.batch, a.bf16, a.diffaug, device)
    write_json(Path(a.out) / "gan.json", result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
