"""The demo-world probe and the generation metrics, on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from training import gen_eval
from training.config_gan import ProbeConfig, parse_gains
from training.probe import audible, frame_truth, judge, real_accuracy, spearman, train_probe

K = 3


class OracleProbe(nn.Module):
    """Reads K-channel images: category c is present when channel c is bright; scale = total brightness."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("scale_stats", torch.tensor([0.0, 1.0]))

    def forward(self, x):
        m = x.mean(dim=(2, 3))
        return 20 * (m - 0.05), m.sum(1)


class StubModels:
    """embedding = the first K samples of the wave x gain; an image = the embedding in every pixel (x z-free
    noise when `ignore_input`, which makes a generator that does not listen)."""

    def __init__(self, ignore_input: bool = False):
        self.ignore_input = ignore_input

    def embed_audio(self, waves, gain_db=0.0):
        return waves[:, :K] * 10 ** (gain_db / 20)

    def generate(self, emb, z):
        b, n = emb.shape[0], z.shape[0]
        if self.ignore_input:
            emb = torch.rand(b, K, generator=torch.Generator().manual_seed(1))
        return emb[:, None, :, None, None].expand(b, n, K, 8, 8).clone()


def _waves(cats):
    w = torch.zeros(len(cats), 100)
    for i, c in enumerate(cats):
        w[i, c] = 0.1 * (1 + i % 2)
    return w


def test_spearman_known_values():
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert np.isnan(spearman(np.arange(3), np.ones(3)))


def test_metrics_of_a_listening_generator():
    cats = [0, 1, 2, 0, 1, 2]
    gains = parse_gains("-12,-6,0,6")
    z = torch.zeros(2, 4)
    r = gen_eval.class_and_volume(StubModels(), OracleProbe(), 8, _waves(cats), cats, gains, z)
    assert r["class_acc"] == 1.0
    assert r["volume_size_spearman"] == pytest.approx(1.0)
    assert list(r["volume_mean_scale_by_gain"]) == ["-12", "-6", "+0", "+6"]
    mix = gen_eval.mix_rates(StubModels(), OracleProbe(), 8, _waves(cats), cats, 5, 0.5, z, seed=0)
    assert mix["mix_both_rate"] == 1.0 and mix["mix_top2_rate"] == 1.0 and mix["mix_pairs"] == 5


def test_metrics_of_a_generator_that_does_not_listen():
    cats = [0, 1, 2, 0, 1, 2]
    z = torch.zeros(2, 4)
    r = gen_eval.class_and_volume(StubModels(ignore_input=True), OracleProbe(), 8, _waves(cats), cats,
                                  [-6.0, 0.0, 6.0], z)
    assert r["class_acc"] < 1.0
    assert np.isnan(r["volume_size_spearman"])  # the same image at every gain: no correlation at all
    mix = gen_eval.mix_rates(StubModels(ignore_input=True), OracleProbe(), 8, _waves(cats), cats, 12, 0.5, z, 0)
    assert mix["mix_top2_rate"] < 1.0


def test_image_conditioned_ceilings_of_a_faithful_and_a_blind_generator():
    """Frames a (cat 0, small), b (cat 1, large), c (cat 2 with cat 0 beside it); embeddings that hold exactly
    what the frame shows: a generator that draws its embedding reaches every ceiling, a blind one does not."""
    truth = pd.DataFrame({
        "clip_id": ["a", "b", "c"], "t": [0.0, 0.0, 0.0], "category": [0, 1, 2], "visible": [True] * 3,
        "scale": [0.2, 0.9, 0.5], "category2": [np.nan, np.nan, 0.0], "visible2": [None, None, True]})
    e_real = np.array([[0.2, 0, 0], [0, 0.9, 0], [0.2, 0, 0.5]], np.float32)
    z = torch.zeros(2, 4)
    args = (OracleProbe(), 8, 0.5, truth, ["a", "b", "c"], [0.0, 0.0, 0.0], e_real, z)
    r = gen_eval.image_conditioned(StubModels(), *args)
    assert r["class_acc_image_cond"] == 1.0 and r["size_spearman_image_cond"] == pytest.approx(1.0)
    assert r["mix_image_cond_frames"] == 1 and r["mix_both_rate_image_cond"] == 1.0
    blind = gen_eval.image_conditioned(StubModels(ignore_input=True), *args)
    assert blind["class_acc_image_cond"] < 1.0 and blind["size_spearman_image_cond"] < 1.0


def test_frame_truth_and_audible():
    truth = pd.DataFrame({
        "clip_id": ["a", "a", "b"], "t": [0.0, 0.1, 0.0], "category": [1, 1, 2], "visible": [True, False, True],
        "scale": [0.5, 0.6, 0.9], "category2": [np.nan, np.nan, 0.0], "visible2": [None, None, True],
        "sound_category": [1.0, -1.0, 2.0]})
    present, scale, main = frame_truth(truth, "a", 0.02)
    assert main == 1 and scale == pytest.approx(0.5) and present.tolist() == [0, 1, 0]
    present, scale, main = frame_truth(truth, "a", 0.09)
    assert main == -1 and np.isnan(scale) and present.sum() == 0
    present, _, main = frame_truth(truth, "b", 0.0)
    assert main == 2 and present.tolist() == [1, 0, 1]
    assert audible(truth, "a") == {1} and audible(truth, "b") == {2}


def test_probe_learns_colour_and_size():
    """Coloured squares on grey: category = colour, scale = side; a few hundred CPU steps suffice."""
    rng = np.random.default_rng(0)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1.0, -1], [-1, -1, 1.0]])
    n, s = 240, 32
    images = torch.zeros(n, 3, s, s)
    cats, scales = rng.integers(0, K, n), rng.uniform(0.2, 0.9, n)
    for i in range(n):
        side = int(6 + 24 * scales[i])
        y, x = rng.integers(0, s - side + 1, 2)
        images[i, :, y:y + side, x:x + side] = colours[cats[i]][:, None, None]
    data = {"images": images, "presence": torch.nn.functional.one_hot(torch.tensor(cats), K).float(),
            "scale": torch.tensor(scales, dtype=torch.float32), "main": torch.tensor(cats)}
    model = train_probe(data, ProbeConfig(image_size=s, width=4, steps=120, batch_size=32, lr=5e-3), seed=0)
    real = real_accuracy(model, data, s)
    assert real["probe_real_acc"] > 0.9
    assert real["probe_real_scale_spearman"] > 0.8
    probs, scale = judge(model, images[:4], s)
    assert probs.shape == (4, K) and scale.shape == (4,)


def test_inception_score_known_values():
    from training.inception import inception_score

    uniform = np.zeros((4, 10))
    assert inception_score(uniform) == pytest.approx(1.0)  # every image equally unsure: IS 1
    confident = np.full((10, 10), -50.0)
    confident[np.arange(10), np.arange(10)] = 50.0
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-3)  # 10 distinct sure classes: IS 10
