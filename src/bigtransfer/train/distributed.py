"""Multi-process training with torchrun: process group, device, DDP wrapping, rank-0-only side effects."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..loading import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None) -> Distributed:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    wanted = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=wanted)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    if wanted.type == "cuda":
        wanted = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(wanted)
    return Distributed(dist.get_rank(), dist.get_world_size(), wanted)


def wrap(model: torch.nn.Module, context: Distributed) -> torch.nn.Module:
    if context.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sync_gradients(model: torch.nn.Module, last_micro_batch: bool):
    """DDP all-reduces gradients only on the last micro-batch of an optimiser step (`no_sync` before)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    return contextlib.nullcontext()


def barrier(context: Distributed) -> None:
    if context.world_size > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
