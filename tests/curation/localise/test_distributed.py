"""Data-parallel ssl-train: gathered negatives give the global batch's gradient, and torchrun with two gloo ranks
trains, checkpoints once and resumes a killed run to the weights of an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from curation.demo import generate_world
from curation.localise.checkpoint import checkpoint_blob
from curation.localise.distributed import World
from curation.localise.model import AudioFrontEnd, AVLocalizer, SSLModelConfig
from curation.localise.train import _Trainer, mil_infonce

CFG = SSLModelConfig(widths=(4, 8, 8, 16), image_maxpool=False, image_size=32, colour_branch=4, dim=16,
                     window_s=0.5, hop=320, n_mels=16)
TINY = {"ssl.widths": "[4,8,8,16]", "ssl.image_size": 32, "ssl.dim": 16, "ssl.n_mels": 16, "ssl.hop": 640,
        "ssl.batch_size": 8, "ssl.steps": 12, "ssl.bank_size": 4, "ssl.threads": 1, "ssl.checkpoint_every": 3,
        "ssl.restarts": 1, "ssl.device": "cpu"}


def _global_batch():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 32, 32, generator=gen), torch.randn(8, 8000, generator=gen) * 0.1


def _model() -> AVLocalizer:
    torch.manual_seed(0)
    return AVLocalizer(CFG).train()


def _rank_gradient(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)  # the same summation order as the reference
    model = _model()
    trainer = _Trainer(model, DistributedDataParallel(model), AudioFrontEnd(CFG), torch.optim.SGD(model.parameters()),
                       torch.device("cpu"), World(rank, world, rank), "fp32")
    images, waves = _global_batch()
    part = slice(rank * 4, rank * 4 + 4)
    loss, _ = trainer.loss(images[part], waves[part], 0.07)
    loss.backward()
    torch.save({name: p.grad for name, p in model.named_parameters()}, f"{out}.{rank}")
    dist.destroy_process_group()


def _reference_gradient() -> AVLocalizer:
    """One process over all 8 pairs, each half through the model on its own (per-rank batch statistics)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' summation order
    try:
        model = _model()
        images, waves = _global_batch()
        front = AudioFrontEnd(CFG)
        images = images.contiguous(memory_format=torch.channels_last)  # as _Trainer.loss feeds them
        halves = [model(images[k:k + 4], front(waves[k:k + 4])) for k in (0, 4)]
        loss, _ = mil_infonce(torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves]), 0.07)
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    return model


def test_gathered_negatives_give_the_gradient_of_the_global_batch(tmp_path):
    """2 gloo ranks x 4 pairs against one process over all 8, with each rank's batch norm statistics (as DDP
    computes them: per rank). Tolerance: the same float32 terms summed in another order."""
    out = str(tmp_path / "grad")
    mp.spawn(_rank_gradient, args=(2, str(tmp_path / "store"), out), nprocs=2)
    model = _reference_gradient()
    ranks = [torch.load(f"{out}.{r}") for r in (0, 1)]
    for name, p in model.named_parameters():
        assert p.grad.abs().sum() > 0, name
        for grads in ranks:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5)
    doubled = {name: 2 * p.grad for name, p in model.named_parameters()}
    assert any(not torch.allclose(ranks[0][n], doubled[n], rtol=1e-4, atol=1e-5) for n in doubled)


def _torchrun(out, *, wait: bool = True):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "curation", "ssl-train", "--out", str(out), "--quiet", "--set=demo.clips=8", "--set=demo.seed=3",
            "--set=demo.duration_s=3.0", *[f"--set={k}={v}" for k, v in TINY.items()]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def test_torchrun_two_ranks_train_one_checkpoint_and_resume_a_killed_run(tmp_path, demo_clips):
    for name in ("whole", "killed"):
        demo_clips(tmp_path / name, {"demo.clips": 8, "demo.seed": 3, "demo.duration_s": 3.0})
        generate_world(tmp_path / name, n_clips=8, seed=3, duration_s=3.0)
    proc = _torchrun(tmp_path / "whole")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model: ") == 1  # rank 0 reports
    (whole,) = (tmp_path / "whole" / "ssl").glob("*/model.pt")
    log = [json.loads(line) for line in whole.with_name("loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 13))  # one log, written once per step

    killed = _torchrun(tmp_path / "killed", wait=False)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((tmp_path / "killed" / "ssl").glob("*/model.pt")):
        assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    (partial,) = (tmp_path / "killed" / "ssl").glob("*/model.pt")
    assert checkpoint_blob(partial)["step"] < 12
    resumed = _torchrun(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = checkpoint_blob(whole), checkpoint_blob(partial)
    assert a["step"] == b["step"] == 12
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0)
