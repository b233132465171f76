"""`python -m bench.ssl --device ...`: the GPU check, run here on the CPU, and its error without CUDA."""

import json

import pytest
import torch

from bench.ssl import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_and_does_nothing(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --device cuda: this machine has no CUDA device (torch {torch.__version__}); run it on a "
                   "machine with one, or --device cpu")
    assert list(tmp_path.iterdir()) == []


def test_the_gpu_check_runs_on_cpu_with_a_tiny_model(tmp_path, tiny_localiser):
    """The command prepared for a GPU machine runs here end to end: bare model, scorer across clips, a pipeline
    run with a scoring worker, the checks (conftest.py's tiny localiser stands in for the demo model)."""
    checkpoint = tiny_localiser.checkpoint
    args = ["--device", "cpu", "--precision", "bf16", "--checkpoint", str(checkpoint), "--clips", "4", "--batch", "32",
            "--clips-per-task", "2", "--repeats", "1", "--workers", "2", "--out", str(tmp_path / "bench")]
    assert main(args) == 0
    result = json.loads((tmp_path / "bench" / "ssl_cpu_bf16.json").read_text())
    assert result["bare_model_frames_per_s"] > 0 and result["scorer_across_clips_frames_per_s"] > 0
    assert result["in_pipeline"][0]["scorer_frames_per_s"] > 0 and result["frames_timed"] == 4 * 80
    assert result["neighbour_independent"] is True and result["spearman_vs_cpu_fp32_per_clip"] > 0.9
