"""Parallel input: worker processes prepare images ahead of the model, in order, reporting unreadable ones.

Workers hand over uint8 H×W×C pixels — a quarter of the bytes of float32, and already the
channels-last layout that convolutions on a GPU prefer — so inter-process and host-to-device
traffic stays small, and the float work happens once, on the device (`device.py`, then the
evaluation transform's `normalise`).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from .._util.errors import LoaderWorkerError
from .datasets import LabelledImages

MAX_DEFAULT_WORKERS = 16
PREFETCH_PER_WORKER = 2


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
    labels: list  # class ids, or multi-hot rows (lists of 0/1) for multi-label data
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


def _leave_interrupts_to_the_parent(_: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: the workers ignore it, so the main process decides
    (a training run finishes its step and saves) and shuts them down when the block ends. SIGTERM, which the
    parent sends to stop a worker at once, ends it whatever handler it inherited from the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _explain(error: RuntimeError) -> LoaderWorkerError:
    return LoaderWorkerError(
        f"A data-loading worker process failed ({error}). This is usually memory: the system's or the shared "
        "memory that carries images between processes (/dev/shm; in Docker raise --shm-size). Use fewer "
        "--workers, or --workers 0 to load in the main process. A training run continues from its last "
        "checkpoint with --resume."
    )


def _terminate_workers(iterator: Any) -> None:
    """End the loader's workers now. Its own shutdown waits up to 5 s for each worker to finish the item under way
    (minutes, for a shard of images) before terminating it, longer than a scheduler's grace period after SIGTERM.
    As that shutdown does, the workers leave torch's SIGCHLD watch first, which would report their ends as
    failures."""
    from torch.utils.data import _utils

    if getattr(iterator, "_worker_pids_set", False):
        _utils.signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    for worker in getattr(iterator, "_workers", []):
        worker.terminate()


@contextlib.contextmanager
def ordered_results(task: Task, workers: int, pin_memory: bool = False) -> Iterator[Iterator[Any]]:
    """task[0], task[1], … in order, computed ahead by `workers` processes (in this process when 0).

    The processes live exactly as long as the block. A worker that dies (killed for memory, crashed)
    raises LoaderWorkerError here instead of leaving the loop waiting.
    """
    loader = DataLoader(
        task, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory, collate_fn=_as_is,
        prefetch_factor=PREFETCH_PER_WORKER if workers else None, worker_init_fn=_leave_interrupts_to_the_parent,
    )  # fmt: skip
    iterator = iter(loader)
    try:
        yield iterator
    except RuntimeError as error:
        if "DataLoader worker (pid" in str(error):  # how torch reports a dead or killed worker
            raise _explain(error) from error
        raise
    except KeyboardInterrupt:  # the work is abandoned (Ctrl-C, SIGTERM): the items under way are not waited for
        _terminate_workers(iterator)
        raise
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def load_examples(
    dataset: LabelledImages,
    indices: Sequence[int],
    ids: Sequence[int],
    transform: Callable[[Image.Image, int], np.ndarray],
) -> LoadedImages:
    """Decode and transform images (`transform(image, id)` → H×W×3 uint8); the unreadable are reported by name,
    not raised."""
    pixels, loaded, labels, failures = [], [], [], []
    dataset.about_to_read(indices)
    for index, image_id in zip(indices, ids):
        try:  # the transform too: it refuses what no model input should come from (e.g. extreme shapes)
            image, label = dataset.example(index)
            pixels.append(transform(image, image_id))
        except (OSError, ValueError) as error:
            failures.append((dataset.name_of(index), str(error)))
            continue
        loaded.append(image_id)
        labels.append(label)  # an int, or a multi-hot row
    return LoadedImages(stack_images(pixels) if pixels else None, loaded, labels, failures)
