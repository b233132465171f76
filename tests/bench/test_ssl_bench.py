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


def test_the_gpu_check_runs_on_cpu_with_a_tiny_model(tmp_path):
    """The command prepared for a GPU machine runs here end to end: bare model, scorer across clips, a pipeline
    run with a scoring worker, the checks (a tiny localiser trained first stands in for the demo model)."""
    from curation.clip_cache import ClipJob
    from curation.config import load_config
    from curation.demo import generate_world
    from curation.localise.train import load_training_clips, train
    from manifests.readers import read_clip_table

    world = generate_world(tmp_path / "train", n_clips=4, seed=3, duration_s=3.0)
    jobs = [ClipJob(r["clip_id"], r["path"], None, r["start_s"], r["end_s"])
            for r in read_clip_table(world.clips_path).to_pylist()]
    cfg = load_config(None, {"ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.dim": 16, "ssl.n_mels": 16,
                             "ssl.hop": 640, "ssl.batch_size": 8, "ssl.steps": 5, "ssl.bank_size": 4})
    checkpoint = train(load_training_clips(jobs, cfg, world.raw_dir, progress=False), cfg, tmp_path / "model.pt",
                       progress=False)
    args = ["--device", "cpu", "--precision", "bf16", "--checkpoint", str(checkpoint), "--clips", "4", "--batch", "32",
            "--clips-per-task", "2", "--repeats", "1", "--workers", "2", "--out", str(tmp_path / "bench")]
    assert main(args) == 0
    result = json.loads((tmp_path / "bench" / "ssl_cpu_bf16.json").read_text())
    assert result["bare_model_frames_per_s"] > 0 and result["scorer_across_clips_frames_per_s"] > 0
    assert result["in_pipeline"][0]["scorer_frames_per_s"] > 0 and result["frames_timed"] == 4 * 80
    assert result["neighbour_independent"] is True and result["spearman_vs_cpu_fp32_per_clip"] > 0.9
