"""Data-parallel ssl-train under torchrun: which rank this process is, and the few collectives training needs.

Each rank decodes its own share of the training clips and draws its own part of every batch; the image maps and
audio vectors of all ranks are gathered, so every pair's negatives are the whole global batch, and
DistributedDataParallel sums the ranks' gradients into the gradient of the global batch's loss. Rank 0 alone
reads and writes checkpoints and logs and hands what it read to the others, so no shared filesystem is assumed.
Without torchrun (WORLD_SIZE unset or 1) every call here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's share of `items`: every size-th from its rank."""
        return items[self.rank::self.size]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's `x` stacked in rank order along dim 0 (equal shapes on every rank). The other ranks' parts
        are constants here: the loss's gradient reaches each rank's model through its own part, and DDP adds the
        ranks' gradients up."""
        if self.size == 1:
            return x
        received = [torch.zeros_like(x) for _ in range(self.size)]
        dist.all_gather(received, x.detach().contiguous())
        return torch.cat(received[:self.rank] + [x] + received[self.rank + 1:])

    def from_main(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def join(device: torch.device) -> World:
    """The torchrun process group this process belongs to (joined once: nccl on CUDA, gloo on the CPU), or the
    single-process world."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def leave() -> None:
    """Leave the process group, if this process joined one (the end of ssl-train)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
