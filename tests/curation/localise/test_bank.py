"""The calibrated cross-dataset margin (curation.localise.bank) on constructed embeddings: chance pairings of the bank's
moments set the threshold, a matched clip clears it and a mismatched one does not, whatever the mix of clips;
an ssl-train checkpoint's scorer uses its own bank or a given bank file of the same model, and an ensemble
checkpoint averages its models' scores and margins."""

import pytest
import torch

from curation.config import ScoreConfig, SelectConfig
from curation.errors import CheckpointError
from curation.localise.bank import bank_matches, null_threshold, sample_ids
from curation.select import keep_clips

DIM, SILENT, BACKGROUND = 8, 6, 7  # directions 0..3 are the categories' objects


def _maps(directions: list[int]) -> torch.Tensor:
    """One 2 x 2 image map per entry: the object's direction at one position, background elsewhere."""
    maps = torch.zeros(len(directions), DIM, 2, 2)
    maps[:, BACKGROUND] = 1.0
    for i, d in enumerate(directions):
        maps[i, :, 0, 1] = 0.0
        maps[i, d, 0, 1] = 1.0
    return maps


def _audio(weights: dict[int, float]) -> torch.Tensor:
    v = torch.zeros(DIM)
    for d, w in weights.items():
        v[d] = w
    return v / v.norm()


def _own(images: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    return torch.einsum("tchw,tc->thw", images, vectors).flatten(1).amax(dim=1)


def test_margin_keeps_matched_clips_and_drops_mismatched_ones_where_a_quantile_cannot():
    # bank: 3 moments of each of 4 categories, each sound 0.6 its own object; the other clips' pictures match a
    # sound at 0.6 when they show its category (2 of 11) and 0 otherwise
    cats = [c for c in range(4) for _ in range(3)]
    bank = {"image": _maps(cats), "audio": torch.stack([_audio({c: 0.6, SILENT: 0.8}) for c in cats])}
    threshold = null_threshold(bank, 0.96)
    assert threshold == pytest.approx(0.6)  # the best 4 % of chance pairings: same-category pictures
    # one matched clip (object 0, its sound) and three mismatched ones (object 1 on screen, the sound of 2,
    # which resembles 1's a little): bad clips are the majority
    images = _maps([0, 1, 1, 1])
    vectors = torch.stack([_audio({0: 0.6, SILENT: 0.8})] + [_audio({2: 0.6, 1: 0.45, SILENT: 0.66})] * 3)
    own = _own(images, vectors)
    margins = {f"c{i}": float(m) for i, m in enumerate(own - threshold)}
    assert margins["c0"] >= 0 > max(margins["c1"], margins["c2"], margins["c3"])
    assert keep_clips(margins, SelectConfig(keep_quantile=None, min_clip_score=0.0)) == {"c0"}
    raw = {f"c{i}": float(s) for i, s in enumerate(own)}
    assert len(keep_clips(raw, SelectConfig(keep_quantile=0.65, min_clip_score=None)) - {"c0"}) == 2
    # the conditional matches (a sound against the bank's pictures) stay available for the mean modes
    audio_side, frame_side = bank_matches(images, vectors, bank)
    assert audio_side.shape == frame_side.shape == (4, 12)


def test_a_bank_of_one_moment_has_no_chance_pairings():
    with pytest.raises(CheckpointError, match="at least 2 moments"):
        null_threshold({"image": _maps([0]), "audio": _audio({0: 1.0})[None]}, 0.9)


def test_bank_sample_does_not_depend_on_the_list_order():
    ids = [f"clip{i:03d}" for i in range(50)]
    chosen = sample_ids(ids, 10)
    assert len(chosen) == 10 and sorted(sample_ids(ids[::-1], 10)) == sorted(chosen)
    assert sample_ids(ids[:5], 10) == ids[:5]


def test_an_ssl_train_checkpoint_scores_the_margin_with_its_own_bank_or_a_given_one(tmp_path):
    import numpy as np

    from curation.config import SSLConfig
    from curation.decode import DecodedClip
    from curation.localise.bank import save_bank
    from curation.localise.checkpoint import file_digest, save_checkpoint
    from curation.localise.model import AVLocalizer, SSLModelConfig
    from curation.localise.score import LearnedScorer

    torch.manual_seed(0)
    model = AVLocalizer(SSLModelConfig(widths=(4, 8, 8, 16), image_maxpool=False, image_size=32, dim=16,
                                       window_s=0.5, hop=640, n_mels=16)).eval()
    own_bank = {"image": torch.nn.functional.normalize(torch.randn(6, 16, 2, 2), dim=1),
                "audio": torch.nn.functional.normalize(torch.randn(6, 16), dim=1)}
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, None, 1, own_bank, SSLConfig())
    clip = DecodedClip(frames=np.random.default_rng(0).integers(0, 255, (5, 36, 64, 3), dtype=np.uint8),
                       times=np.arange(5) / 2, audio=np.random.default_rng(1).normal(0, 0.1, 48000).astype(np.float32),
                       sample_rate=16000, window_s=3.0)
    scorer = LearnedScorer(ScoreConfig(checkpoint=str(path)))
    result = scorer.score(clip)
    assert scorer.thresholds[0] == null_threshold(own_bank, 0.96)
    np.testing.assert_allclose(result.contrastive, result.scores - scorer.thresholds[0], atol=1e-6)
    other = {"image": own_bank["image"][:3] * -1, "audio": own_bank["audio"][:3]}
    save_bank(tmp_path / "bank.pt", other, file_digest(path))
    given = LearnedScorer(ScoreConfig(checkpoint=str(path), bank=str(tmp_path / "bank.pt")))
    assert given.thresholds[0] == null_threshold(other, 0.96) != scorer.thresholds[0]
    save_bank(tmp_path / "stale.pt", other, "0" * 64)
    with pytest.raises(CheckpointError, match="another model"):
        LearnedScorer(ScoreConfig(checkpoint=str(path), bank=str(tmp_path / "stale.pt")))


def test_an_ensemble_checkpoint_scores_the_mean_of_its_models_each_against_its_own_bank(tmp_path):
    import numpy as np

    from curation.config import SSLConfig
    from curation.decode import DecodedClip
    from curation.localise.checkpoint import load_checkpoint, save_checkpoint, with_ensemble
    from curation.localise.model import AVLocalizer, SSLModelConfig
    from curation.localise.score import LearnedScorer

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = AVLocalizer(SSLModelConfig(widths=(4, 8, 8, 16), image_maxpool=False, image_size=32, dim=16,
                                           window_s=0.5, hop=640, n_mels=16)).eval()
        bank = {"image": torch.nn.functional.normalize(torch.randn(6, 16, 2, 2), dim=1),
                "audio": torch.nn.functional.normalize(torch.randn(6, 16), dim=1)}
        paths.append(tmp_path / f"restart{seed}.pt")
        save_checkpoint(paths[-1], model, None, 1, bank, SSLConfig())
    blobs = [load_checkpoint(p)[2] for p in paths]
    ensemble = tmp_path / "model.pt"
    ensemble.write_bytes(with_ensemble(blobs[0], blobs[1:]))
    clip = DecodedClip(frames=np.random.default_rng(0).integers(0, 255, (5, 36, 64, 3), dtype=np.uint8),
                       times=np.arange(5) / 2, audio=np.random.default_rng(1).normal(0, 0.1, 48000).astype(np.float32),
                       sample_rate=16000, window_s=3.0)
    singles = [LearnedScorer(ScoreConfig(checkpoint=str(p))).score(clip) for p in paths]
    for count in (1, 2, 3, 5):  # more than it holds: all three
        used = singles[:count]
        result = LearnedScorer(ScoreConfig(checkpoint=str(ensemble), ensemble=count)).score(clip)
        for field in ("scores", "contrastive", "maps"):
            expected = np.mean([getattr(r, field) for r in used], axis=0)
            np.testing.assert_allclose(getattr(result, field), expected, atol=1e-6)
    assert not np.allclose(singles[0].contrastive, singles[1].contrastive)  # the members differ
    with pytest.raises(CheckpointError, match="one model's bank"):
        LearnedScorer(ScoreConfig(checkpoint=str(ensemble), ensemble=2, bank=str(paths[0])))
