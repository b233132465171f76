import numpy as np

from curation.config import SelectConfig
from curation.select import keep_clips, moment_scores, select_moments


def test_ranks_and_top_k_with_a_minimum_gap():
    times = np.arange(10) / 10
    scores = np.array([0.1, 0.9, 0.85, 0.2, 0.3, 0.8, 0.1, 0.0, 0.7, 0.1], dtype=np.float32)
    m = select_moments(times, scores, SelectConfig(top_k=3, min_gap_s=0.3, moment_window_s=0))
    assert m.ranks.tolist() == [7, 1, 2, 6, 5, 3, 8, 10, 4, 9]
    # 0.85 at t=0.2 is too close to 0.9 at t=0.1; 0.8 at t=0.5 and 0.7 at t=0.8 are kept
    assert m.selected.tolist() == [1, 5, 8]
    assert abs(m.clip_score - np.mean([0.9, 0.8, 0.7])) < 1e-6


def test_ties_go_to_the_earlier_frame():
    cfg = SelectConfig(top_k=2, min_gap_s=0.2, moment_window_s=0)
    m = select_moments(np.arange(5) / 10, np.zeros(5, dtype=np.float32), cfg)
    assert m.ranks.tolist() == [1, 2, 3, 4, 5] and m.selected.tolist() == [0, 2]


def test_moment_scores_prefer_the_middle_of_a_good_stretch_to_its_border():
    times = np.arange(12) / 10
    # a good stretch at 0.3-0.8 s; the frame at 0.2 s scores highest (its audio window already holds the sound)
    scores = np.array([0.1, 0.1, 0.95, 0.8, 0.85, 0.9, 0.85, 0.8, 0.8, 0.2, 0.1, 0.1], dtype=np.float32)
    eroded = moment_scores(times, scores, 0.4)  # the lowest score within +-0.2 s
    np.testing.assert_allclose(eroded[:6], [0.1, 0.1, 0.1, 0.1, 0.8, 0.8])
    assert moment_scores(times, scores, 0.0) is scores
    m = select_moments(times, scores, SelectConfig(top_k=1, min_gap_s=0.5, moment_window_s=0.4))
    assert m.selected.tolist() == [4] and abs(m.clip_score - 0.8) < 1e-6  # inside the stretch, not the 0.95
    unfiltered = select_moments(times, scores, SelectConfig(top_k=1, min_gap_s=0.5, moment_window_s=0))
    assert unfiltered.selected.tolist() == [2]


def test_keep_quantile_keeps_exactly_the_top_fraction():
    scores = {f"c{i}": float(i) for i in range(10)}
    assert keep_clips(scores, SelectConfig(keep_quantile=0.3)) == {"c9", "c8", "c7"}
    assert keep_clips(scores, SelectConfig(keep_quantile=None, min_clip_score=7.5)) == {"c8", "c9"}
    assert keep_clips(scores, SelectConfig(keep_quantile=None)) == set(scores)
    assert keep_clips({}, SelectConfig(keep_quantile=0.5)) == set()
