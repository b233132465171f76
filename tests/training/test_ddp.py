import json
import os
import subprocess
import sys

from training_fixtures import TINY


def test_two_process_gloo_ddp_run_completes_with_disjoint_shards(tiny_shards, tmp_path):
    """torchrun, 2 CPU processes: stage 1 (SimCLR under DDP), stage 3 and the evaluation; each rank reads its
    own training shard."""
    out = tmp_path / "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training", "all", "--shards", str(tiny_shards), "--out", str(out),
           *[f"--set={s}" for s in TINY], "--set=stage1.batch_size=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((out / "stage3" / f"shards_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["world_size"] for s in seen] == [2, 2]
    urls = [set(s["urls"]) for s in seen]
    assert all(len(u) == 1 for u in urls) and not urls[0] & urls[1]
    assert json.loads((out / "eval.json").read_text())["n_queries"] == 16
    assert proc.stdout.count("evaluate: R@1") == 1  # rank 0 reports
