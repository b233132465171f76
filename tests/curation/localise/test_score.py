import numpy as np

from curation.config import ScoreConfig
from curation.decode import DecodedClip
from curation.localise.score import NoScorer, SynchronyScorer
from curation.localise.scorers import load_scorer

FPS, SR, SECONDS = 10, 16000, 6


def _clip(rng, envelope_for_video, envelope_for_audio) -> DecodedClip:
    """A 7x7-cell world: cell (1, 5) vibrates (flickers) as strongly as `envelope_for_video` says;
    the audio's loudness follows `envelope_for_audio`."""
    n = FPS * SECONDS
    frames = np.full((n, 70, 70, 3), 100, dtype=np.uint8)
    frames += rng.integers(0, 3, size=frames.shape, dtype=np.uint8)  # sensor noise everywhere
    flicker = 100 + 120 * envelope_for_video * (np.arange(n) % 2)
    frames[:, 10:20, 50:60, :] = flicker[:, None, None, None].astype(np.uint8)
    t = np.arange(n * SR // FPS) / SR
    gain = np.repeat(envelope_for_audio, SR // FPS)
    audio = (0.5 * gain * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return DecodedClip(frames=frames, times=np.arange(n) / FPS, audio=audio, sample_rate=SR, window_s=3.0)


def _bursts(rng) -> np.ndarray:
    """Sound on/off in half-second blocks, like real onsets and pauses."""
    return np.repeat((rng.random(FPS * SECONDS // 5) > 0.5).astype(np.float64), 5)


def test_synchrony_finds_the_region_that_changes_with_the_sound():
    rng = np.random.default_rng(0)
    envelope = _bursts(rng)
    result = SynchronyScorer(grid=7).score(_clip(rng, envelope, envelope))
    assert result.scores.shape == (60,) and result.maps.shape == (60, 7, 7)
    peak_cells = [np.unravel_index(np.argmax(m), m.shape) for m in result.maps]
    assert sum(cell == (1, 5) for cell in peak_cells) >= 55


def test_synchronised_clip_scores_above_an_unsynchronised_one():
    rng = np.random.default_rng(1)
    a, b = _bursts(rng), _bursts(rng)
    scorer = SynchronyScorer(grid=7)
    synced = scorer.score(_clip(rng, a, a)).scores
    unsynced = scorer.score(_clip(rng, a, b)).scores
    assert synced.mean() > 3 * unsynced.mean()
    assert np.all(np.isfinite(synced)) and np.all(synced >= 0)


def test_silent_clip_scores_zero_not_nan():
    rng = np.random.default_rng(2)
    scores = SynchronyScorer(grid=4).score(_clip(rng, rng.random(60), np.zeros(60))).scores
    assert np.all(scores == 0)


def test_scorers_are_built_once_per_process():
    assert load_scorer(ScoreConfig(scorer="synchrony", grid=5)) is load_scorer(ScoreConfig(scorer="synchrony", grid=5))
    assert isinstance(load_scorer(ScoreConfig(scorer="none")), NoScorer)
