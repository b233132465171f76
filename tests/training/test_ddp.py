import json
import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from training_fixtures import TINY

from training.config import Stage3Config
from training.distributed import Dist
from training.recipes.stage3_audio import global_batch_loss, info_nce_l2

TIMEOUT_S, STAGE2_MINUTES = 6, 0.3  # stage 2 runs 18 s, 3x the process group's timeout


def test_two_gloo_processes_train_every_stage_past_the_process_group_timeout(tiny_shards, tmp_path):
    """torchrun, 2 CPU processes through all stages, the process-group timeout (6 s) below stage 2's length
    (18 s, ended by its time cap): both ranks train stage 2 on their own shard, so no rank waits for another
    longer than a step (a rank waiting at a barrier through stage 2 fails here with a gloo timeout)."""
    out = tmp_path / "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training", "all", "--shards", str(tiny_shards), "--out", str(out),
           *[f"--set={s}" for s in TINY], "--set=stage1.batch_size=8", f"--set=runtime.dist_timeout_s={TIMEOUT_S}",
           "--set=stage2.steps=100000", f"--set=stage2.max_minutes={STAGE2_MINUTES}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("stage2", "stage3"):
        seen = [json.loads((out / stage / f"shards_rank{r}.json").read_text()) for r in (0, 1)]
        assert [s["world_size"] for s in seen] == [2, 2]
        urls = [set(s["urls"]) for s in seen]
        assert all(len(u) == 1 for u in urls) and not urls[0] & urls[1]  # each rank its own shard
    ranks = [json.loads((out / "stage2" / f"shards_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] > 1  # both ranks ran every step
    result = json.loads((out / "eval.json").read_text())
    stage2 = result["budget"]["stage2"]
    assert stage2["seconds"] > 2 * TIMEOUT_S and stage2["stopped_by"] == "time_cap"
    assert stage2["steps_reached"] == ranks[0]["step"] < stage2["steps_planned"] == 100000
    assert result["under_trained"] == ["stage2"] and result["n_queries"] == 16
    assert result["budget"]["stage3"] == {**result["budget"]["stage3"], "steps_reached": 6, "stopped_by": "steps"}
    assert proc.stdout.count("evaluate: R@1") == 1  # rank 0 reports
    assert "WARNING: stage2 stopped by its time cap" in proc.stderr + proc.stdout


def _gathered_gradient(rank: int, world: int, store: str, out: str) -> None:
    # a collective that never completes fails in a minute instead of holding the test run until its timeout
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    x, v, model = _problem()
    part, net = slice(rank * 4, rank * 4 + 4), DistributedDataParallel(model)  # kept alive through backward
    loss, _ = global_batch_loss(Dist(rank, world, 0, torch.device("cpu")), net(x[part]), v[part],
                                Stage3Config(temperature=0.5))
    loss.backward()
    if rank == 0:
        torch.save(model.weight.grad, out)
    dist.destroy_process_group()


def _problem():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return torch.randn(8, 6, generator=gen), torch.randn(8, 4, generator=gen), torch.nn.Linear(6, 4)


def test_gathered_negatives_give_the_gradient_of_the_global_batch(tmp_path):
    """2 gloo ranks x 4 pairs, negatives gathered, DDP-averaged: the gradient of InfoNCE over all 8 pairs in one
    process. Tolerance: the two sum the same float32 terms in another order (~1e-7 relative)."""
    mp.spawn(_gathered_gradient, args=(2, str(tmp_path / "store"), str(tmp_path / "grad.pt")), nprocs=2)
    x, v, model = _problem()
    info_nce_l2(model(x), v, 0.5).backward()
    gathered = torch.load(tmp_path / "grad.pt")
    assert torch.allclose(gathered, model.weight.grad, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(gathered, 2 * model.weight.grad, rtol=1e-4, atol=1e-6)  # not off by world size
