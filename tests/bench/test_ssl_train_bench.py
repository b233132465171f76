"""`python -m bench.ssl_train`: the training-speed bench runs end to end at a small size and says what it timed."""

import json

import pytest
import torch

from bench.ssl_train import main


def test_the_training_bench_times_batch_and_model_parts(tmp_path):
    assert main(["--clips", "4", "--batch", "8", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ssl_train_default_cpu.json").read_text())
    assert result["batch_pairs"] == 8 and result["timed_steps"] == 2 and result["training_clips"] == 4
    assert result["steps_per_s"] > 0  # samples/s is rounded to 0.1: on a slow machine that is more than 1 %
    assert result["samples_per_s"] == pytest.approx(8 * result["steps_per_s"], rel=0.01, abs=0.05)
    assert 0 < result["share_outside_forward_backward"] < 1
    assert 1 <= result["restarts_at_once"] <= result["ensemble_restarts"] and result["ensemble_steps_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --device cuda: this machine has no CUDA device")
