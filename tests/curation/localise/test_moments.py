"""The official moments file read as a selection: key matching in both namings, the list-wrapped top level,
1-based numbering, clips it does not list, and files that cannot be used."""

import json

import numpy as np
import pytest

from curation.config import ConfigError, ScoreConfig, SelectConfig, load_config
from curation.errors import ClipError
from curation.localise.moments import MomentsError, MomentsScorer, frame_numbers, official_key, read_moments
from curation.select import select_moments

TIMES = np.arange(100) / 10.0  # a 10-s clip at 10 fps


def _scorer(tmp_path, data, first_frame: int = 1) -> MomentsScorer:
    path = tmp_path / "moments.json"
    path.write_text(json.dumps(data))
    return MomentsScorer(ScoreConfig(scorer="moments", moments=str(path), moments_first_frame=first_frame))


def test_keys_match_clips_in_either_naming(tmp_path):
    scorer = _scorer(tmp_path, {"9fhhMaXTraI_44000_54000": [47, 46], "G_JwMzRLRNo_000252": [2, 1],
                                "a1b2c3d4e5f6": [5]})
    assert scorer.frames_of("9fhhMaXTraI_0044000_0054000", "9fhhMaXTraI", 44.0) == [47, 46]
    assert scorer.frames_of("G_JwMzRLRNo_0252000_0262000", "G_JwMzRLRNo", 252.0) == [2, 1]
    assert scorer.frames_of("a1b2c3d4e5f6", None, 0.0) == [5]  # a non-YouTube clip by its own id
    with pytest.raises(ClipError) as err:
        scorer.frames_of("9fhhMaXTraI_0045000_0055000", "9fhhMaXTraI", 45.0)
    assert err.value.kind == "not_in_moments"


def test_the_list_wrapped_top_level_is_read(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps([["header"], {"9fhhMaXTraI_44000_54000": [47, 46, 45]}]))
    assert read_moments(path) == {"9fhhMaXTraI_44000_54000": [47, 46, 45]}


def test_listed_frames_are_kept_in_the_files_order(tmp_path):
    scorer = _scorer(tmp_path, {"9fhhMaXTraI_44000_54000": [47, 46, 45, 23, 101]})
    result = scorer.clip_scores([47, 46, 45, 23, 101], TIMES)  # 101 is past the clip's 100 frames: dropped
    moments = select_moments(TIMES, result.scores, SelectConfig(top_k=3), given=True)
    np.testing.assert_array_equal(moments.selected, [46, 45, 44])  # 1-based numbers: frame 47 is at 4.6 s
    assert moments.ranks[46] == 1 and moments.ranks[22] == 4
    zero_based = _scorer(tmp_path, {"x": [0]}, first_frame=0).clip_scores([0], TIMES)
    assert zero_based.scores[0] == 1.0
    with pytest.raises(ClipError) as err:
        scorer.clip_scores([150, 160], TIMES)
    assert err.value.kind == "moments_out_of_range"


def test_exported_numbers_start_with_the_selection_then_follow_the_ranks():
    ranks = np.arange(1, 101)[::-1].copy()  # the last frame ranks first
    numbers = frame_numbers(np.array([10, 50]), ranks, TIMES)
    assert numbers == [11, 51, 100, 99, 98, 97, 96, 95, 94, 93]
    assert official_key("9fhhMaXTraI", 44.0, 54.0, "ignored") == "9fhhMaXTraI_44000_54000"


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no such file"),
    ("{not json", "cannot read"),
    ('{"9fhhMaXTraI_44000_54000": "47"}', "not a list of frame numbers"),
    ("[1, 2]", "is not a moments file"),
])
def test_an_unusable_file_is_one_line(tmp_path, content, expected):
    path = tmp_path / "moments.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MomentsError) as err:
        read_moments(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_new_score_options_leave_other_runs_cache_keys_alone():
    """Updating must not rescore a run that uses neither a moments file nor a published checkpoint."""
    cfg = load_config(None, {"score.scorer": "synchrony"})
    same = load_config(None, {"score.scorer": "synchrony", "score.checkpoint_format": "native",
                              "score.moments": "unused.json"})
    assert cfg.clip_stage_fingerprint(None) == same.clip_stage_fingerprint(None)
    moments = load_config(None, {"score.scorer": "moments", "score.moments": "a.json"})
    other = load_config(None, {"score.scorer": "moments", "score.moments": "a.json", "score.moments_first_frame": 0})
    assert moments.clip_stage_fingerprint("d") != other.clip_stage_fingerprint("d")


def test_the_moments_scorer_without_a_file_is_a_config_error():
    with pytest.raises(ConfigError, match="score.moments: SCORER=moments needs MOMENTS="):
        load_config(None, {"score.scorer": "moments"})
