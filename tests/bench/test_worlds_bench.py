"""bench.worlds: one default-recipe run per (world, model seed), judged against the world's truth, resumable."""

from __future__ import annotations

import json

from conftest import TINY_SSL

from bench import worlds


def _args(out, model_seeds):
    tiny = [f"--set={k}={v}".replace(" ", "") for k, v in TINY_SSL.items()]
    return ["--presets", "easy", "--world-seeds", "1", "--model-seeds", *model_seeds, "--clips", "12",
            "--duration-s", "3", "--out", str(out), *tiny, "--set=dask.workers=1"]


def test_a_run_that_kept_nothing_misses_precision_and_leaves_the_spread_to_the_others():
    row = {"preset": "hard", "world_seed": 1, "ap": 0.5, "recall": 0.0, "mismatched_kept": 0.0,
           "sound_only_kept": 0.0, "false_duplicates": 0}
    rows = [{**row, "model_seed": 0, "precision": None}, {**row, "model_seed": 1, "precision": 0.95}]
    (summary,) = worlds.summarise(rows)
    assert summary["precision"] == {"mean": 0.95, "min": 0.95, "max": 0.95}
    assert summary["met"]["precision"] is False and summary["met"]["mismatched_kept"] is True
    (alone,) = worlds.summarise(rows[:1])
    assert alone["precision"] is None
    assert "none kept *" in worlds.table([alone])[2]


def test_each_model_seed_is_judged_and_a_wider_rerun_adds_only_the_missing_runs(tmp_path, capsys):
    assert worlds.main(_args(tmp_path, ["0"])) == 0
    path = tmp_path / "worlds" / "worlds.json"
    first = json.loads(path.read_text())
    (row,) = first["rows"]
    assert (row["preset"], row["world_seed"], row["model_seed"]) == ("easy", 1, 0)
    assert all(0.0 <= row[k] <= 1.0 for k in worlds.TARGETS if k != "precision")
    assert row["precision"] is None or 0.0 <= row["precision"] <= 1.0  # None: the tiny model kept nothing
    assert row["false_duplicates"] == 0  # every clip of a demo world is its own footage
    assert set(first["summary"][0]["met"]) == set(worlds.TARGETS)
    run_0 = (tmp_path / "worlds" / "easy-w1-m0" / "manifests" / "clips.parquet").stat().st_mtime_ns

    assert worlds.main(_args(tmp_path, ["0", "1"])) == 0
    second = json.loads(path.read_text())
    assert [r["model_seed"] for r in second["rows"]] == [0, 1]
    assert second["rows"][0] == row  # kept, not run again
    assert (tmp_path / "worlds" / "easy-w1-m0" / "manifests" / "clips.parquet").stat().st_mtime_ns == run_0
    assert "| easy seed 1 (2 model seeds) |" in capsys.readouterr().out
