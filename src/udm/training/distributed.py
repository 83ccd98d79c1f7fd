"""Multi-process training with PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m udm train CONFIG`` (or ``--nnodes`` for
several machines) sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`init` reads them,
picks NCCL on GPUs and gloo on CPUs, and returns who this process is. Every
rank draws the *global* batch's times and noise from the same per-step seed
and keeps its own slice, so N processes with batch B/N each compute exactly
the gradient one process computes with batch B (DDP averages the gradients).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Who this process is: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group if launched by torchrun; otherwise a single-process DistInfo.

    ``device`` None means CUDA when available (one GPU per local rank), else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else local
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return DistInfo(rank, world, local, dev)


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over all ranks (itself when single-process)."""
    if not info.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def gather(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``value`` (same shape on every rank) from all ranks, in rank order."""
    if not info.enabled:
        return value
    parts = [torch.empty_like(value) for _ in range(info.world_size)]
    dist.all_gather(parts, value.contiguous())
    return torch.cat(parts)


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled:
        dist.barrier()
