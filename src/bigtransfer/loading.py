"""Parallel input: worker processes prepare images ahead of the model, and 8-bit batches become model input
on the model's device (pinned, asynchronous copies; rescale and normalise where the model runs).

Workers hand over uint8 H×W×C pixels — a quarter of the bytes of float32, and already the
channels-last layout that convolutions on a GPU prefer — so inter-process and host-to-device
traffic stays small, and the float work happens once, on the device.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

MAX_DEFAULT_WORKERS = 16
PREFETCH_PER_WORKER = 2


class LoaderWorkerError(RuntimeError):
    """A loading worker process died; the message says what usually causes it and what to try."""


class Task(Protocol):
    """Indexable work: `task[i]` computes item i in a worker process, so a task must pickle."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class LoadedImages(NamedTuple):
    """What a worker returns for some images (a NamedTuple, so the pinning thread pins the pixels).

    Only the pixels travel as a tensor (one shared-memory segment); the small fields are plain lists,
    which pickle for far less than a tensor's segment costs to hand over.
    """

    pixels: torch.Tensor | None  # uint8 N×H×W×3 of the images that loaded, None when none did
    ids: list[int]  # which images they are (batch positions, or dataset indices)
    labels: list[int]
    failures: list[tuple[str, str]]  # (image name, error) of those that could not be read


def stack_images(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Equal-shape uint8 arrays as one N×H×W×C tensor. In a loading worker it is built directly in shared
    memory (as torch's own collate does), so handing it to the main process copies nothing."""
    shape = (len(arrays), *arrays[0].shape)
    if get_worker_info() is None:
        return torch.from_numpy(np.stack(arrays))
    storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(math.prod(shape))
    stacked = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    np.stack(arrays, out=stacked.numpy())
    return stacked


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and schedulers restrict)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """Loading processes for each training process: its share of the cores, at most 16.

    No core is kept back for the main process: it mostly waits, for the device or for data. On the
    2-core development machine, 2 workers trained a decode-bound folder faster than 1.
    """
    share = available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, share))


def resolve_workers(workers: int | None) -> int:
    if workers is None:
        return default_workers()
    if workers < 0:
        raise ValueError(f"--workers must be ≥ 0 (0 loads in the main process), got {workers}.")
    return workers


def _as_is(item: Any) -> Any:  # the loader's collate_fn: task items are already batches
    return item


def _explain(error: RuntimeError) -> LoaderWorkerError:
    return LoaderWorkerError(
        f"A data-loading worker process failed ({error}). This is usually memory: the system's or the shared "
        "memory that carries images between processes (/dev/shm; in Docker raise --shm-size). Use fewer "
        "--workers, or --workers 0 to load in the main process. A training run continues from its last "
        "checkpoint with --resume."
    )


@contextlib.contextmanager
def ordered_results(task: Task, workers: int, pin_memory: bool = False) -> Iterator[Iterator[Any]]:
    """task[0], task[1], … in order, computed ahead by `workers` processes (in this process when 0).

    The processes live exactly as long as the block. A worker that dies (killed for memory, crashed)
    raises LoaderWorkerError here instead of leaving the loop waiting.
    """
    loader = DataLoader(
        task, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory, collate_fn=_as_is,
        prefetch_factor=PREFETCH_PER_WORKER if workers else None,
    )  # fmt: skip
    iterator = iter(loader)
    try:
        yield iterator
    except RuntimeError as error:
        if "DataLoader worker (pid" in str(error):  # how torch reports a dead or killed worker
            raise _explain(error) from error
        raise
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def resolve_device(name: str | int | torch.device | None) -> torch.device:
    """The device asked for (an int is a CUDA index, -1 the CPU, as in transformers' pipelines), else CUDA when
    there is one; a clear error for CUDA where torch sees none."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cpu" if name == -1 else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use --device cpu, or install "
            "a CUDA build of PyTorch on a machine with an NVIDIA driver."
        )
    return device


def use_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """The layout asked for; by default channels-last on CUDA (the workers' 8-bit layout, what compiled
    kernels prefer; eager on an H200 within 1 % of contiguous), contiguous on CPU (R50x1 trained slightly
    slower channels-last on 2 cores)."""
    return channels_last if channels_last is not None else device.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without blocking the host: pinned first when the target is a GPU."""
    if device.type == "cuda":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def gather_pixels(loaded: Sequence[LoadedImages], device: torch.device) -> torch.Tensor | None:
    """The uint8 pixels of several worker results as one N×H×W×3 batch on `device` (joined there)."""
    parts = [to_device(item.pixels, device) for item in loaded if item.pixels is not None]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def model_input(
    pixels: torch.Tensor,
    rescale: float | None = 1 / 255,
    mean: Sequence[float] | float | None = 0.5,
    std: Sequence[float] | float | None = 0.5,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 N×H×W×C → float32 N×C×H×W: × rescale, then (x − mean) / std, as the processors compute it."""
    values = pixels.permute(0, 3, 1, 2).float()
    if rescale is not None:
        values = values * rescale
    if mean is not None and std is not None:
        values = (values - _per_channel(mean, values)) / _per_channel(std, values)
    return values.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _per_channel(value: Sequence[float] | float, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(value, (int, float)):
        return float(value)
    return to_device(torch.tensor(value, dtype=like.dtype), like.device).view(1, -1, 1, 1)
