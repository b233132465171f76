"""First-run errors of `python -m curation run`: one line on stderr saying what to do, exit code 2, no traceback
(the traceback with --debug). Each case fails before any clip is read or any world is built."""

import subprocess
import sys

import pytest

from curation.__main__ import main

WAV = "FwVYUHKoLtQ_000034.wav"


def _curation(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curation", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("case", "expected"), [
    ("unknown_dataset", "dataset: must be one of demo, vggsound, vegas, csv, got 'youtube8m'"),
    ("missing_meta", "clip list not found"),
    ("not_a_checkpoint", "is not a readable PyTorch checkpoint"),
    ("bad_demo_duration", "demo world of 2 clips of 0.35 s"),
])
def test_first_run_errors_are_one_line_and_exit_2(case, expected, tmp_path, shared_real):
    out = ["--out", str(tmp_path / "out")]
    args = {"unknown_dataset": ["--dataset", "youtube8m"],
            "missing_meta": ["--dataset", "vggsound", "--meta", str(tmp_path / "vggsound.csv")],
            "not_a_checkpoint": ["--checkpoint", str(shared_real / WAV)],
            "bad_demo_duration": ["--demo-clips", "2", "--set", "demo.duration_s=0.35"]}[case]
    done = _curation("run", *args, *out, "--quiet")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and expected in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "raw" / "demo_clips.parquet").exists()


def test_a_missing_checkpoint_with_debug_shows_the_traceback(tmp_path):
    done = _curation("run", "--checkpoint", str(tmp_path / "best.pth"), "--out", str(tmp_path / "out"), "--debug")
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "CheckpointError" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: score.checkpoint: no such file")


@pytest.mark.parametrize("command", ["select", "report", "evaluate", "export-moments"])
def test_commands_on_a_folder_that_is_no_finished_run_are_one_line(command, tmp_path, capsys):
    assert main([command, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} is not a finished run (no manifests/run.json)" in err
