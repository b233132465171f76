"""`python -m training gen-eval`: judge images generated from held-out (evaluation-split) audio.

Always: `gen_r_at_k` (the paper's R@k variant: generated image -> real frames, see generated_retrieval) and
`fd_generated` = Fréchet distance between stage-1 embeddings of the generated images (gen_eval.n_z per
evaluation clip) and of the real evaluation frames (`fd_generated_reference`: training vs evaluation real
frames, the floor), and `samples.png` (a row per evaluation clip, one per label: its real frame, then samples).
With Inception-v3 weights (gen_eval.inception_weights: torchvision's or pytorch-fid's file, training/inception.py;
never downloaded): `fid`, `is`.
On the demo world (truth beside the shards; training/probe.py judges the images):
  class_acc             generated images whose most probable category is the clip's sound category, over the
                        clips where exactly one category sounds (chance 1/K)
  class_acc_image_cond  the same from the evaluation frames' own image embeddings (the generator alone)
  size_spearman_image_cond  the generator alone: Spearman between the evaluation frames' truth scale and the
                        probe's scale of the images generated from their embeddings (the ceiling of volume control)
  mix_both_rate_image_cond  the generator alone: evaluation frames that show two objects (truth; how many:
                        mix_image_cond_frames), images from their embeddings where the probe finds both
  volume_size_spearman  per such clip: Spearman between the gain on its waveform (gen_eval.gains_db) and the
                        probe's scale of the images (mean over the same n_z noise vectors at every gain);
                        averaged over clips (`..._pooled`: one Spearman over all clip x gain points)
  mix_both_rate         the sum of two such clips' waveforms of different categories: fraction of images where
                        the probe's probabilities of both categories exceed probe.threshold
                        (`mix_top2_rate`: the two categories are the probe's top two)
Results are merged into OUT/eval.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from manifests.io import write_json
from manifests.layout import labels_in
from training import cli
from training.config import TrainConfig
from training.config_gan import GenEvalConfig, ProbeConfig, parse_gains
from training.data import resolve_shards
from training.demo_truth import find_truth
from training.evaluate import candidate_sets, frechet_distance, protocol, retrieval
from training.generate import SoundToImage, labelled_grid, load_models, save_png
from training.probe import audible, frame_truth, judge, load_or_train, spearman
from training.recipes.stage2_gan import load_frames, to_uint8
from training.recipes.stage3_audio import audio_batches


def eval_audio(m: SoundToImage, cfg: TrainConfig, urls: list[str]
               ) -> tuple[torch.Tensor, list[str], list[int], list[float]]:
    """Waveforms, keys, labels and best-frame times of the evaluation split, decoded as the audio encoder was
    trained."""
    trained = dataclasses.replace(cfg, audio=m.audio.cfg.audio)
    waves, keys, labels, frame_t = [], [], [], []
    for batch in audio_batches(urls, trained, "eval", 64):
        waves.append(batch["wave"])
        keys += batch["key"]
        labels += batch["label"].tolist()
        frame_t += batch["frame_t"].tolist()
    if not keys:
        raise FileNotFoundError(f"no clips of split {cfg.data.eval_split!r} in the evaluation shards")
    return torch.cat(waves), keys, labels, frame_t


def class_and_volume(m: SoundToImage, probe, size: int, waves: torch.Tensor, cats: list[int], gains: list[float],
                     z: torch.Tensor) -> dict[str, Any]:
    """class_acc at 0 dB and the gain -> probe-scale Spearman, over single-category clips."""
    sizes = []  # (clips, gains): mean probe scale over z
    correct = []
    target = torch.tensor(cats)
    for g in gains:
        images = m.generate(m.embed_audio(waves, g), z)  # (B, Z, 3, R, R)
        probs, scale = judge(probe, images.flatten(0, 1).cpu(), size)
        sizes.append(scale.view(len(cats), -1).mean(1).numpy())
        if g == 0:
            correct = (probs.argmax(1).view(len(cats), -1) == target[:, None]).float()
    if not len(correct):  # 0 dB not in the sweep: judge categories separately
        probs, _ = judge(probe, m.generate(m.embed_audio(waves), z).flatten(0, 1).cpu(), size)
        correct = (probs.argmax(1).view(len(cats), -1) == target[:, None]).float()
    sizes = np.stack(sizes, axis=1)
    per_clip = np.array([spearman(np.array(gains), s) for s in sizes])
    return {"class_acc": float(correct.mean()), "class_acc_clips": len(cats),
            "volume_size_spearman": float(np.nanmean(per_clip)) if np.isfinite(per_clip).any() else float("nan"),
            "volume_size_spearman_pooled": spearman(np.repeat([gains], len(cats), axis=0).ravel(), sizes.ravel()),
            "volume_mean_scale_by_gain": {f"{g:+g}": float(s) for g, s in zip(gains, sizes.mean(0), strict=True)}}


def image_conditioned(m: SoundToImage, probe, size: int, threshold: float, truth: pd.DataFrame, keys: list[str],
                      frame_t: list[float], e_real: np.ndarray, z: torch.Tensor) -> dict[str, Any]:
    """The generator alone, from the evaluation frames' own image embeddings, judged against the frame's truth:
    the ceilings of class_acc, volume and mixing whatever the audio encoder does."""
    facts = [frame_truth(truth, k, t) for k, t in zip(keys, frame_t, strict=True)]
    seen = [i for i, (_, _, main) in enumerate(facts) if main >= 0]
    if not seen:
        return {}
    probs, scale = judge(probe, m.generate(torch.from_numpy(e_real[seen]), z).flatten(0, 1).cpu(), size)
    probs = probs.view(len(seen), z.shape[0], -1)
    target = torch.tensor([facts[i][2] for i in seen])[:, None]
    result = {"class_acc_image_cond": float((probs.argmax(2) == target).float().mean()),
              "size_spearman_image_cond": spearman(np.array([facts[i][1] for i in seen]),
                                                   scale.view(len(seen), -1).mean(1).numpy())}
    two = [r for r, i in enumerate(seen) if facts[i][0].sum() == 2]
    result["mix_image_cond_frames"] = len(two)
    if two:
        present = torch.from_numpy(np.stack([facts[seen[r]][0] for r in two])).bool()[:, None, :]
        both = ((probs[two] > threshold) | ~present).all(2)
        result["mix_both_rate_image_cond"] = float(both.float().mean())
    return result


def mix_rates(m: SoundToImage, probe, size: int, waves: torch.Tensor, cats: list[int], n_pairs: int,
              threshold: float, z: torch.Tensor, seed: int) -> dict[str, Any]:
    """Two-category mixtures of single-category clips: both categories present / top two."""
    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(len(cats)) for j in range(i + 1, len(cats)) if cats[i] != cats[j]]
    if not pairs or n_pairs == 0:
        return {}
    pairs = [pairs[k] for k in rng.choice(len(pairs), min(n_pairs, len(pairs)), replace=False)]
    mixed = torch.stack([(waves[i] + waves[j]).clamp(-1, 1) for i, j in pairs])
    probs, _ = judge(probe, m.generate(m.embed_audio(mixed), z).flatten(0, 1).cpu(), size)
    probs = probs.view(len(pairs), z.shape[0], -1)
    a = torch.tensor([cats[i] for i, _ in pairs])[:, None]
    b = torch.tensor([cats[j] for _, j in pairs])[:, None]
    pa, pb = probs.gather(2, a[..., None].expand(-1, z.shape[0], 1)), probs.gather(2, b[..., None].expand(
        -1, z.shape[0], 1))
    both = ((pa > threshold) & (pb > threshold)).float()
    top2 = probs.topk(2, dim=2).indices
    in_top2 = ((top2 == a[..., None]).any(2) & (top2 == b[..., None]).any(2)).float()
    return {"mix_both_rate": float(both.mean()), "mix_top2_rate": float(in_top2.mean()), "mix_pairs": len(pairs)}


def generated_retrieval(e_gen: np.ndarray, e_real: np.ndarray, labels: np.ndarray, n_z: int, cfg: TrainConfig,
                        kind: str) -> dict[str, Any]:
    """The paper's R@k variant: the image generated from a clip's audio is the query, the real best frames the
    candidates (the same candidate sets as `evaluate`), each of the n_z samples a query, R@k averaged over them.
    The paper embeds both with CLIP ViT-B/32, which cannot be loaded offline; here the frozen stage-1 encoder,
    which stage 2's embedding-consistency loss trains G against (so it is not an independent judge)."""
    candidates = candidate_sets(len(e_real), cfg.evaluate.n_candidates, cfg.evaluate.seed)
    per_z = [retrieval(e_gen.reshape(len(e_real), n_z, -1)[:, k], e_real, labels, candidates) for k in range(n_z)]
    out = {f"gen_{name}": float(np.mean([r[name] for r in per_z]))
           for name in ("r_at_1", "r_at_5", "r_at_10", "median_rank", "top1_same_label")}
    out["gen_r_at_k_protocol"] = protocol(len(e_real), len(candidates[0]), cfg.evaluate.seed,
                                          f"stage-1 {kind} embedding of an image generated from the clip's audio "
                                          f"(each of {n_z} noise vectors a query; R@k averaged over them)",
                                          f"stage-1 {kind} embedding of each clip's real best frame (jpg); the "
                                          "paper's features are CLIP ViT-B/32 (not available offline)")
    return out


def samples_grid(m: SoundToImage, waves: torch.Tensor, labels: list[int], real: torch.Tensor, names: list[str],
                 z: torch.Tensor):
    """One evaluation clip per label: its real frame, then generated samples."""
    firsts = list(dict.fromkeys(labels))
    rows_idx = [labels.index(c) for c in firsts]
    images = m.generate(m.embed_audio(waves[rows_idx]), z)
    cells = [[to_uint8(real[i:i + 1])[0]] + list(to_uint8(images[r])) for r, i in enumerate(rows_idx)]
    row_names = [names[c] if c < len(names) else str(c) for c in firsts]
    return labelled_grid(cells, row_names, ["real"] + [f"z{k}" for k in range(z.shape[0])])


def category_names(shards: str) -> list[str]:
    path = Path(labels_in(shards))
    return json.loads(path.read_text()) if path.is_file() else []


@torch.no_grad()
def run(cfg: TrainConfig, pcfg: ProbeConfig, gcfg: GenEvalConfig) -> dict[str, Any]:
    """All generation-based metrics; merged into OUT/eval.json; writes OUT/samples.png."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    t0 = time.time()
    out = Path(cfg.out)
    device = torch.device("cuda" if cfg.runtime.device != "cpu" and torch.cuda.is_available() else "cpu")
    m = load_models(out, device)
    size = m.generator.cfg.resolution
    train_urls, eval_urls = resolve_shards(cfg.data)
    waves, keys, labels, frame_t = eval_audio(m, cfg, eval_urls)
    z = m.noise(gcfg.n_z, gcfg.seed)
    real_eval, real_keys, _ = load_frames(cfg, eval_urls, 1, size, part="eval")
    real_eval = real_eval[:, 0].float().div(127.5).sub(1)
    order = {k: i for i, k in enumerate(real_keys)}
    real_eval = real_eval[[order[k] for k in keys]]
    generated = m.generate(m.embed_audio(waves), z).flatten(0, 1)
    real_train = load_frames(cfg, train_urls, 1, size, part="train")[0][:, 0].float().div(127.5).sub(1)
    e_gen, e_real, e_train = (m.embed_images(x).cpu().numpy() for x in (generated, real_eval, real_train))
    result: dict[str, Any] = {"fd_generated": frechet_distance(e_gen, e_real),
                              "fd_generated_reference": frechet_distance(e_train, e_real),
                              "generator_step": m.generator_step, "gen_eval_clips": len(keys), "gen_n_z": gcfg.n_z,
                              **generated_retrieval(e_gen, e_real, np.array(labels), gcfg.n_z, cfg, m.image.cfg.kind)}
    names = category_names(cfg.data.shards)
    save_png(samples_grid(m, waves, labels, real_eval, names, z), out / "samples.png")
    if gcfg.inception_weights:
        from training.inception import fid_and_is

        result.update(fid_and_is(gcfg.inception_weights, generated, real_eval, device))
    truth_path = find_truth(cfg.data)
    if truth_path is not None:
        probe, real = load_or_train(cfg, pcfg, truth_path, train_urls, eval_urls)
        probe = probe.to(device)
        truth = pd.read_parquet(truth_path)
        result.update(image_conditioned(m, probe, pcfg.image_size, pcfg.threshold, truth, keys, frame_t, e_real,
                                        z))
        heard = [audible(truth, k) for k in keys]
        single = [i for i, h in enumerate(heard) if len(h) == 1]
        cats = [next(iter(heard[i])) for i in single]
        result.update(real)
        result["chance_class_acc"] = 1 / len(names) if names else None
        if single:
            gains = parse_gains(gcfg.gains_db)
            result.update(class_and_volume(m, probe, pcfg.image_size, waves[single], cats, gains, z))
            result.update(mix_rates(m, probe, pcfg.image_size, waves[single], cats, gcfg.n_mix_pairs,
                                    pcfg.threshold, z, gcfg.seed))
    result["gen_eval_seconds"] = time.time() - t0
    path = out / "eval.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**previous, **result})
    return result


def describe(r: dict[str, Any]) -> str:
    keys = ("gen_r_at_1", "class_acc", "class_acc_image_cond", "volume_size_spearman", "mix_both_rate", "fd_generated",
            "fd_generated_reference", "probe_real_acc", "fid", "is")
    return "gen-eval: " + ", ".join(f"{k} {r[k]:.3f}" for k in keys if isinstance(r.get(k), float))


def main(argv: list[str] | None = None) -> int:
    return cli.run_command(lambda cfg: print(describe(run(cfg, cfg.probe, cfg.gen_eval))), argv, "gen-eval",
                           __doc__)
