"""Config sections of stage 2 (the GAN), the demo-world probe and the generation-based evaluation.

Sections of `TrainConfig` (`[stage2]`, `[probe]`, `[gen_eval]`), kept in their own module beside the model
hyperparameters they size; `check` adds their problems to the config's list (all reported at once).
"""

from __future__ import annotations

from dataclasses import dataclass

RESOLUTIONS = (32, 64, 128)  # generator output sizes (4x4 doubled 3, 4 or 5 times)


@dataclass(frozen=True)
class Stage2Config:
    resolution: int = 64  # 64 trains on CPU on the demo shards; 128 is the paper's (GPU)
    z_dim: int = 64
    shared_dim: int = 64  # the embedding's linear map, joined with z into the condition vector
    g_width: int = 24  # ~0.9 M generator parameters at 64 px (FINDINGS: twice the width is 3-4x slower)
    d_width: int = 16  # ~0.3 M discriminator parameters
    # the budget is a step count, so the same command gives the same model on any machine: 1,450 steps are what
    # `make train` reached in 18 min on the 2-core reference machine (~70-90 min where torch is 4-5x slower;
    # docs/training_budgets_ddp.md, "Budgets are step counts")
    steps: int = 1450
    # a guard, not a budget (0: none): stop earlier with a warning in the log, budget.json and eval.json. 10x the
    # reference machine's time; a resumed run counts the time already spent
    max_minutes: float = 180.0
    batch_size: int = 64
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.0  # BigGAN's Adam betas (0, 0.999)
    beta2: float = 0.999
    ema_decay: float = 0.999  # target; warmed up as min(target, (1 + step) / (10 + step))
    diffaug: str = "translation,color"  # DiffAugment policy on D's inputs: comma list of translation,cutout,color
    # weight of G's embedding-consistency loss: 1 - cos(stage-1 embedding of the generated image, its condition)
    # (0 = off). The frozen, label-free stage-1 encoder tells G which content the embedding stands for
    embed_consistency: float = 1.0
    moments: int = 3  # frames per clip trained on (jpg, top2.jpg, ...), each with its own embedding
    log_every: int = 25
    sample_every: int = 200  # samples_<step>.png
    checkpoint_every: int = 200  # last.pt (resume) and generator.pt (EMA weights for sampling)
    standing_stats_batches: int = 8  # batch-norm statistics of the EMA generator, re-estimated before saving
    # an icgan_biggan_imagenet_res128/ folder: start G from the released IC-GAN generator (its shape replaces
    # z_dim and g_width; resolution must be its 128; needs 2048-d stage-1 embeddings; docs/official_weights.md)
    init_official: str | None = None


@dataclass(frozen=True)
class ProbeConfig:
    """The demo-world probe: a small CNN trained on real frames (category presence + object scale)."""

    image_size: int = 64  # generated images are resized to this
    width: int = 16
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    threshold: float = 0.5  # a category is "present" when its sigmoid probability exceeds this


@dataclass(frozen=True)
class GenEvalConfig:
    """Evaluation by generation from held-out audio (docs/training.md "Evaluation by generation")."""

    n_z: int = 4  # samples per audio input
    gains_db: str = "-12,-7.5,-3,1.5,6"  # the volume sweep, comma-separated dB
    n_mix_pairs: int = 40  # two-category mixtures of held-out clips
    batch_size: int = 64
    seed: int = 0
    inception_weights: str | None = None  # torchvision or pytorch-fid Inception-v3 file: FID/IS (never downloaded)


DIFFAUG_POLICIES = ("translation", "cutout", "color")


def parse_gains(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def check(s2: Stage2Config, probe: ProbeConfig, gen: GenEvalConfig, problems: list[str]) -> None:
    """Range checks of the three sections, appended to `problems`."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(s2.resolution in RESOLUTIONS, f"stage2.resolution: must be one of {', '.join(map(str, RESOLUTIONS))}")
    for name in ("z_dim", "shared_dim", "g_width", "d_width", "steps", "batch_size", "log_every", "sample_every",
                 "checkpoint_every", "standing_stats_batches"):
        need(getattr(s2, name) >= 1, f"stage2.{name}: must be >= 1")
    need(1 <= s2.moments <= 10, "stage2.moments: must be in 1..10")
    need(s2.max_minutes >= 0, "stage2.max_minutes: must be >= 0")
    need(s2.g_lr > 0 and s2.d_lr > 0, "stage2.g_lr and stage2.d_lr: must be > 0")
    need(0 <= s2.beta1 < 1 and 0 <= s2.beta2 < 1, "stage2.beta1 and stage2.beta2: must be in [0, 1)")
    need(0 <= s2.ema_decay < 1, "stage2.ema_decay: must be in [0, 1)")
    need(s2.embed_consistency >= 0, "stage2.embed_consistency: must be >= 0")
    bad = [p for p in s2.diffaug.split(",") if p.strip() and p.strip() not in DIFFAUG_POLICIES]
    need(not bad, f"stage2.diffaug: unknown policies {bad} (known: {', '.join(DIFFAUG_POLICIES)})")
    for name in ("image_size", "width", "steps", "batch_size"):
        need(getattr(probe, name) >= 1, f"probe.{name}: must be >= 1")
    need(probe.lr > 0, "probe.lr: must be > 0")
    need(0 < probe.threshold < 1, "probe.threshold: must be in (0, 1)")
    need(gen.n_z >= 1 and gen.batch_size >= 1, "gen_eval.n_z and gen_eval.batch_size: must be >= 1")
    need(gen.n_mix_pairs >= 0, "gen_eval.n_mix_pairs: must be >= 0")
    try:
        need(len(parse_gains(gen.gains_db)) >= 2, "gen_eval.gains_db: needs at least two gains")
    except ValueError:
        problems.append(f"gen_eval.gains_db: expected comma-separated numbers, got {gen.gains_db!r}")
