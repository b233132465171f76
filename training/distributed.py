"""Process-group setup from torchrun's environment: gloo on CPU, nccl on CUDA; a no-op without torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from training.config import RuntimeConfig


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _device(runtime: RuntimeConfig, local_rank: int) -> torch.device:
    if runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device = cuda, but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(runtime: RuntimeConfig) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent); pick the device and threads."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(runtime, local_rank)
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=runtime.dist_timeout_s) if runtime.dist_timeout_s else None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return Dist(rank, world_size, local_rank, device)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def broadcast_tensor(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's value of `tensor` on every rank (same shape and dtype everywhere)."""
    if d.enabled:
        moved = tensor.to(d.device)
        dist.broadcast(moved, src=0)
        return moved.to(tensor.device)
    return tensor


def all_reduce_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over ranks."""
    if d.enabled:
        moved = tensor.to(d.device)
        dist.all_reduce(moved)
        return moved.to(tensor.device)
    return tensor


def rank0_decides(d: Dist, flag: bool) -> bool:
    """Rank 0's `flag` on every rank: decisions that end a collective loop (a time cap) must agree."""
    if not d.enabled:
        return flag
    return bool(broadcast_tensor(d, torch.tensor([int(flag)])).item())


def all_gather_with_grad(d: Dist, x: torch.Tensor) -> torch.Tensor:
    """(world_size x B, ...) = every rank's `x` in rank order (equal B on every rank); only this rank's part
    carries gradients, so a loss over the global batch back-propagates into the local model alone."""
    if not d.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[d.rank] = x
    return torch.cat(parts)


def own_part(d: Dist, urls: list, what: str) -> list:
    """This rank's share of training shards `urls` (every world_size-th, from its rank), refusing an empty one."""
    mine = urls[d.rank::d.world_size]
    if not mine:
        raise FileNotFoundError(f"{what}: {len(urls)} training shard(s) for {d.world_size} ranks; every rank "
                                "needs at least one (write smaller shards or run fewer processes)")
    return mine


def cleanup_process_group() -> None:
    """Leave the process group (end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
