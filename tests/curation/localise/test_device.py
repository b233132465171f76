"""Model scorers on a device: batches across clips, bf16, device errors (on the CPU: the CUDA path is the same code
with another `torch.device`; `python -m bench.ssl --device cuda` checks it on a GPU)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from curation.config import load_config
from curation.decode import DecodedClip, decode_clip
from curation.localise.device import DeviceError, resolve_device
from curation.localise.model import AVLocalizer, SSLModelConfig
from curation.localise.published import PublishedScorer
from curation.localise.score import LearnedScorer


@pytest.fixture(scope="module")
def trained(tiny_localiser):
    """The tiny localiser of conftest.py (trained on an 8-clip demo world) and the world's decoded clips (30 frames
    each)."""
    cfg = tiny_localiser.cfg
    clips = [decode_clip(job.path, 0.0, 3.0, cfg.decode) for job in tiny_localiser.jobs]
    return replace(cfg.score, checkpoint=str(tiny_localiser.checkpoint)), clips


def test_batches_across_clips_give_the_per_clip_scores(trained):
    score_cfg, clips = trained
    scorer = LearnedScorer(replace(score_cfg, batch_size=64))  # 240 frames: 4 batches, 3 clip boundaries inside
    across = scorer.score_across([scorer.inputs(c) for c in clips])
    for clip, result in zip(clips, across, strict=True):
        own = scorer.score(clip)
        # different batch shapes may round differently in the last bits (measured: at most 9e-8)
        np.testing.assert_allclose(result.scores, own.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.contrastive, own.contrastive, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.maps, own.maps, rtol=0, atol=1e-6)


def test_a_clips_scores_do_not_depend_on_the_clips_sharing_its_batches(trained):
    """What makes a resumed run (other clips left to score, so other batch neighbours) write the same bytes."""
    score_cfg, clips = trained
    scorer = LearnedScorer(replace(score_cfg, batch_size=48))
    inputs = [scorer.inputs(c) for c in clips]
    alone = scorer.score_across([inputs[3]])[0]
    for group, at in (([inputs[5], inputs[3], inputs[1]], 1), (inputs[1:5], 2), (inputs, 3)):
        other = scorer.score_across(group)[at]
        for name in ("scores", "contrastive", "maps"):
            assert np.array_equal(getattr(other, name), getattr(alone, name)), name


def test_bf16_scores_stay_close_to_fp32_and_keep_their_order(trained):
    score_cfg, clips = trained
    fp32 = [LearnedScorer(score_cfg).score(c) for c in clips]
    bf16_scorer = LearnedScorer(replace(score_cfg, precision="bf16"))
    bf16 = [bf16_scorer.score(c) for c in clips]
    for name, rank_corr in (("scores", 0.99), ("contrastive", 0.98)):  # measured 0.9988 / 0.9966
        a, b = (np.concatenate([getattr(r, name) for r in results]) for results in (fp32, bf16))
        assert np.abs(a - b).max() < 0.03  # measured 0.009 (bf16 keeps 8 bits of mantissa; scores are cosines)
        assert spearmanr(a, b).statistic >= rank_corr
    across = bf16_scorer.score_across([bf16_scorer.inputs(c) for c in clips])
    assert all(np.abs(x.scores - y.scores).max() < 0.03 for x, y in zip(across, bf16, strict=True))


def test_a_published_model_scores_across_clips_like_clip_by_clip(tmp_path, trained):
    _, clips = trained
    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pth"
    torch.save({"model": AVLocalizer(SSLModelConfig(dim=32)).state_dict()}, checkpoint)
    cfg = replace(load_config(None).score, checkpoint=str(checkpoint), checkpoint_format="ezvsl", batch_size=4)
    scorer = PublishedScorer(cfg)
    short = [DecodedClip(c.frames[:5], c.times[:5], c.audio, c.sample_rate, c.window_s) for c in clips[:2]]
    across = scorer.score_across([scorer.inputs(c) for c in short])  # 10 frames: batches of 4, 4, 2 + 2 padding
    for clip, result in zip(short, across, strict=True):
        own = scorer.score(clip)
        assert result.contrastive is None and result.maps.shape == (5, 7, 7)
        np.testing.assert_allclose(result.scores, own.scores, rtol=0, atol=1e-4)  # cosine / 0.03


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_cuda_device_is_one_clear_line(trained):
    score_cfg, _ = trained
    for build in (lambda: resolve_device("cuda"), lambda: LearnedScorer(replace(score_cfg, device="cuda:0"))):
        with pytest.raises(DeviceError, match=r"score.device = cuda(:0)?: this machine has no CUDA device") as err:
            build()
        assert "\n" not in str(err.value)
    assert resolve_device("auto") == torch.device("cpu")
