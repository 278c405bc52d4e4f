"""This process's place in a torchrun job: rank, world size, device, and the collectives the
train stage uses (each a no-op in a single process)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from pipeline.mechanism.modeling import resolve_device


@dataclass
class Dist:
    """This process's place in the run (world size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    ctx = Dist(rank, world, local, resolve_device(device, local))
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    if world > 1:
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=ctx.device if backend == "nccl" else None)
    return ctx


def barrier(ctx: Dist) -> None:
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(ctx: Dist, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor
