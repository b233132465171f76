import json

import numpy as np
import pytest
from training_fixtures import TINY

from training import evaluate
from training.__main__ import main


def test_retrieval_counts_the_paired_image_among_n_candidates():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1000, 16))
    labels = np.arange(1000) % 4
    candidates = evaluate.candidate_sets(1000, 100, seed=0)
    assert all(len(c) == 100 and c[0] == i and len(set(c)) == 100 for i, c in enumerate(candidates))
    perfect = evaluate.retrieval(image, image, labels, candidates)
    assert perfect["r_at_1"] == 1.0 and perfect["n_candidates"] == 100 and perfect["chance_r_at_1"] == 0.01
    shuffled = evaluate.retrieval(image[rng.permutation(1000)], image, labels, candidates)
    assert shuffled["r_at_1"] < 0.03 and 0.03 < shuffled["r_at_5"] < 0.07  # chance: 0.01 and 0.05
    assert 0.2 < shuffled["top1_same_label"] < 0.3  # 4 labels
    small = evaluate.retrieval(image[:30], image[:30], labels[:30], evaluate.candidate_sets(30, 100, seed=0))
    assert small["n_candidates"] == 30 and small["chance_r_at_10"] == pytest.approx(1 / 3)


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    assert evaluate.frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    assert evaluate.frechet_distance(x, x + [2, 0, 0]) == pytest.approx(4, abs=1e-6)
    # N(0, I) vs N(0, 4I): 3 * (1 + 4 - 2 * 2) = 3
    assert evaluate.frechet_distance(rng.normal(size=(20000, 3)), 2 * rng.normal(size=(20000, 3))) == \
        pytest.approx(3, abs=0.15)
    assert evaluate.frechet_distance(x[:10], rng.normal(size=(10, 3))) > 0  # fewer samples than needed: finite


def test_all_writes_eval_json_and_the_resolved_config(tiny_shards, tmp_path, capsys):
    out = tmp_path / "train"
    args = ["all", "--shards", str(tiny_shards), "--out", str(out)] + [f"--set={s}" for s in TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "R@1" in printed and str(out) in printed
    result = json.loads((out / "eval.json").read_text())
    assert result["n_candidates"] == 10 and result["n_queries"] == 16 and result["chance_r_at_1"] == 0.1
    assert {"r_at_1", "r_at_5", "r_at_10", "fd", "fd_reference", "image_1nn_label_acc"} <= set(result)
    protocol = result["r_at_k_protocol"]
    assert protocol["candidates"] == 10 and "9 other evaluation clips per query" in protocol["negatives"]
    assert "stage-3" in protocol["query_features"] and "best frame" in protocol["candidate_features"]
    assert set(result["budget"]) == {"stage1", "stage2", "stage3"} and result["under_trained"] == []
    assert result["budget"]["stage1"]["steps_reached"] == result["budget"]["stage1"]["steps_planned"] == 6
    assert 'shards = "' + str(tiny_shards) in (out / "config.toml").read_text()


def test_command_line_errors_are_one_clear_line(tiny_shards, tmp_path, capsys):
    assert main(["stage3", "--set", "stage3.lr=fast", "--set", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "stage3.lr: expected float" in err and "bogus: unknown option" in err
    assert main(["evaluate", "--shards", str(tiny_shards), "--out", str(tmp_path)]) == 2
    assert "run `python -m training stage3` first" in capsys.readouterr().err
    assert main(["nonsense"]) == 2
