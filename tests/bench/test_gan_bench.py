import json

from bench import gan


def test_the_gpu_check_runs_on_cpu_in_the_tiny_preset(tmp_path):
    """The command prepared for a GPU machine (stage 2 and 3 train steps, images/s and clips/s) runs here."""
    assert gan.main(["--device", "cpu", "--preset", "tiny", "--steps", "2", "--warmup", "1",
                     "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gan.json").read_text())
    assert result["bf16"] is False and result["channels_last"] is False  # CUDA-only switches, as in training
    assert result["stage2"]["images_per_s"] > 0 and result["stage2"]["resolution"] == 32
    assert result["stage3"]["clips_per_s"] > 0 and result["stage3"]["batch"] == 8
