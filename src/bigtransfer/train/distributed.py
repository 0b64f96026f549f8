"""Multi-process training with torchrun: process group, device, DDP wrapping, rank-0-only side effects."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .._util.device import resolve_device

PATIENT_TIMEOUT = datetime.timedelta(days=1)  # how long the other processes wait while rank 0 measures


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    patient_group: Any = None  # a gloo group with a long timeout, for waiting on rank-0-only work

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for_main(self) -> None:
        """Hold every process here until rank 0 arrives, however long its work takes: NCCL's collectives (and
        DDP's gradient all-reduce) time out after 10 minutes, this group's barrier after a day."""
        if self.world_size > 1:
            dist.barrier(group=self.patient_group)


@contextlib.contextmanager
def process_group(device: str | None) -> Iterator[Distributed]:
    """One run's place among torchrun's processes: the process group is joined when launched by torchrun (gloo on
    CPU, NCCL on GPU) and left when the block ends, errors and Ctrl-C included. A group the caller had already
    set up is used and left alone."""
    wanted = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield Distributed(device=wanted)
        return
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    try:
        if wanted.type == "cuda":
            wanted = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(wanted)
        patient = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
        yield Distributed(dist.get_rank(), dist.get_world_size(), wanted, patient)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


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


def sum_over_processes(value: int, context: Distributed) -> int:
    """`value` summed over every process; on the gloo group, with a CPU tensor, so a GPU run does not wait for its
    device."""
    if context.world_size == 1:
        return value
    total = torch.tensor([value])
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=context.patient_group)
    return int(total.item())


def barrier(context: Distributed) -> None:
    if context.world_size > 1:
        dist.barrier()
