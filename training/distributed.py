"""``drwb train`` under ``torchrun``: DistributedDataParallel with the single-process loop unchanged.

``torchrun --nproc-per-node N drwb.py train ...`` sets ``WORLD_SIZE`` / ``RANK``; ``setup`` then starts
the process group (gloo on CPU, NCCL on GPUs). Every rank draws the same seeded epoch order and takes
every N-th index of it (``shard``), so the union of the ranks' samples is the single-process epoch; the
per-rank batch is the global batch / N and DDP averages gradients, so one step sees the same global
batch. Checkpoints, cards, logs and progress bars are written by rank 0 only (``is_main``); the others
wait at a barrier and read the same files on resume. Without ``WORLD_SIZE`` nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist", "setup", "shard"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (a decision all ranks must share)."""
        if not self.active:
            return flag
        value = _shared(1.0 if flag else 0.0)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def least(self, value: int) -> int:
        """The smallest of every rank's ``value``, on every rank (a length all ranks must share)."""
        if not self.active:
            return value
        tensor = _shared(float(value))
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` when distributed (the loop keeps the bare model for saving / validation)."""
        if not self.active:
            return model
        # find_unused_parameters: timm backbones built with num_classes=0 keep head parameters that
        # forward_features never uses; DDP would otherwise wait for their gradients forever.
        return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def _shared(value: float) -> torch.Tensor:
    """A one-number tensor where the process group's backend reduces it (NCCL: on this rank's GPU)."""
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    return torch.tensor([value], device=device)


def setup() -> Dist:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size())


def shard(order: np.ndarray, batch: int, d: Dist) -> np.ndarray:
    """This rank's part of the epoch order: whole global batches only, every ``world``-th index of each.

    Every rank gets the same number of samples (so the same number of steps and no rank waits forever
    at an all-reduce); the global batches are those of the single-process run.
    """
    if not d.active:
        return order
    whole = batch * d.world
    # less than one global batch: equal shares (one smaller step each)
    usable = len(order) - len(order) % whole if len(order) >= whole else len(order) - len(order) % d.world
    return order[:usable][d.rank :: d.world]
