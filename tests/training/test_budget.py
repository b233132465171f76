import json

import pytest

from training import budget


def test_a_time_capped_stage_is_reported_with_steps_reached_and_planned(tmp_path):
    budget.record(tmp_path / "stage1", 300, 300, "steps", 12.3)
    rec = budget.record(tmp_path / "stage2", 1450, 389, "time_cap", 1080.0, cap_minutes=18.0)
    budget.record(tmp_path / "stage3", 300, 150, "early_stopping", 40.0)
    assert json.loads((tmp_path / "stage2" / "budget.json").read_text()) == rec
    found = budget.collect(tmp_path)
    assert found["under_trained"] == ["stage2"]  # early stopping is chosen, not a shortfall
    assert found["budget"]["stage2"]["steps_reached"] == 389 and found["budget"]["stage3"]["steps_planned"] == 300
    message = budget.warning("stage2", rec)
    assert "step 389 of 1450 planned" in message and "18 min" in message and "under-trained" in message
    assert budget.warning("stage1", found["budget"]["stage1"]) is None
    with pytest.raises(ValueError, match="stop reason"):
        budget.record(tmp_path, 1, 1, "tired", 1.0)
