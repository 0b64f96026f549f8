"""Dynamic batching: requests that arrive within a short delay share one forward pass.

One task drains a bounded queue: it takes the oldest request, waits at most `max_delay` for more of the same
input shape and dtype (uint8 pixels and float model input never share a batch) up to `max_batch_size` images,
runs the model once on the batch in a worker thread (the event loop keeps accepting requests meanwhile) and
hands each request its rows. The model sees one batch at a time. A full queue refuses new requests at once
(`QueueFull` → 503) instead of letting latency grow without bound; a request whose caller stopped waiting
(timeout) is dropped before it reaches the model.

It waits only while the server has admitted images that have not reached the queue yet (`on_the_way`): with
none on their way, waiting could only add latency (one client, or every client's next request already queued
behind the running pass), so the batch goes at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests wait than the queue holds: the server is overloaded; retry later."""


@dataclasses.dataclass(eq=False)  # one request is equal to itself only
class Pending:
    inputs: np.ndarray  # N × …, N ≥ 1: uint8 pixels or float32 model input
    done: asyncio.Future
    queued_at: float
    # wall-clock times (ns since the epoch) for the request's trace: the requests of one batch share its times
    queued_ns: int = dataclasses.field(default_factory=time.time_ns)
    batch_began_ns: int | None = None
    batch_ended_ns: int | None = None
    batch_images: int = 0


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    """One forward pass, for the metrics."""

    images: int
    requests: int
    seconds: float


class DynamicBatcher:
    """`await batcher.run(inputs)` → the model's output rows for `inputs` (N × …), computed in a shared batch.

    `model(batch)` takes a NumPy array (B × …) and returns B rows (a NumPy array or a torch tensor), in a thread.
    `on_batch` receives a BatchRecord after each pass (metrics). `max_batch_size` 1 serves one image per pass.
    `on_the_way()` counts the images admitted but not queued yet (None: unknown, so always wait `max_delay`);
    `nudge()` when it drops without a request arriving.
    """

    def __init__(
        self,
        model: Callable[[np.ndarray], Any],
        max_batch_size: int = 32,
        max_delay: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[BatchRecord], None] | None = None,
        on_the_way: Callable[[], int] | None = None,
    ):
        if max_batch_size < 1 or max_delay < 0 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be ≥ 1, max_delay ≥ 0.")
        self.model, self.max_batch_size, self.max_delay, self.max_queue = model, max_batch_size, max_delay, max_queue
        self.on_batch, self.on_the_way = on_batch, on_the_way
        self._queue: list[Pending] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")  # not behind decodes

    @property
    def depth(self) -> int:
        """Images waiting for the model."""
        return sum(len(pending.inputs) for pending in self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued (for at most `timeout` seconds; what is left then fails), then end the task."""
        deadline = time.perf_counter() + timeout
        while self._queue and time.perf_counter() < deadline and self._task is not None and not self._task.done():
            await asyncio.sleep(self.max_delay or 0.001)
        self._fail_queued(RuntimeError("The server is stopping."))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._model_thread.shutdown(wait=False)

    def nudge(self) -> None:
        """Something the gathering batch may be waiting on has changed (a request left before it was queued)."""
        self._arrived.set()

    async def run(self, inputs: np.ndarray) -> Any:
        return await self.enqueue(inputs).done

    def enqueue(self, inputs: np.ndarray) -> Pending:
        """`inputs` queued for a batch: its `done` gets their rows; it records when its batch ran (tracing)."""
        if len(inputs) > self.max_batch_size:
            raise ValueError(f"{len(inputs)} images in one request: at most {self.max_batch_size} (--max-batch-size).")
        if self.depth + len(inputs) > self.max_queue:
            raise QueueFull(f"{self.depth} images are waiting (--max-queue {self.max_queue}): retry shortly.")
        pending = Pending(inputs, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._queue.append(pending)
        self._arrived.set()
        return pending

    async def _serve(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            try:
                while self._queue:
                    batch = await self._gather()
                    if batch:
                        await self._forward(batch)
            except Exception as error:  # a bug here must not leave requests waiting for a task that is gone
                logger.exception("the batching loop failed; its queued requests get the error")
                self._fail_queued(error)

    def _fail_queued(self, error: BaseException) -> None:
        for pending in self._queue:
            if not pending.done.done():
                pending.done.set_exception(error)
        self._queue = []

    async def _gather(self) -> list[Pending]:
        """The oldest live request and those of its kind that fit, waiting up to max_delay after it arrived while
        others are on their way."""
        self._drop_abandoned()
        if not self._queue:
            return []
        first = self._queue[0]
        deadline = first.queued_at + self.max_delay
        while (
            (remaining := deadline - time.perf_counter()) > 0
            and self._fits(first) < self.max_batch_size
            and (self.on_the_way is None or self.on_the_way() > 0)
        ):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
            self._arrived.clear()
        self._drop_abandoned()
        batch, waiting, size = [], [], 0
        for pending in self._queue:
            if _same_kind(pending, first) and size + len(pending.inputs) <= self.max_batch_size:
                batch.append(pending)
                size += len(pending.inputs)
            else:
                waiting.append(pending)
        self._queue = waiting
        return batch

    def _fits(self, first: Pending) -> int:
        return sum(len(pending.inputs) for pending in self._queue if _same_kind(pending, first))

    def _drop_abandoned(self) -> None:
        self._queue = [pending for pending in self._queue if not pending.done.done()]

    async def _forward(self, batch: list[Pending]) -> None:
        began, began_ns = time.perf_counter(), time.time_ns()
        inputs = np.concatenate([pending.inputs for pending in batch])
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._model_thread, self.model, inputs)
            if len(outputs) != len(inputs):
                raise RuntimeError(f"The model returned {len(outputs)} rows for {len(inputs)} inputs.")
        except Exception as error:  # the model failed on this batch: its requests get the error, others go on
            _record(batch, began_ns, len(inputs))
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(error)
            return
        _record(batch, began_ns, len(inputs))
        if self.on_batch is not None:
            self.on_batch(BatchRecord(len(inputs), len(batch), time.perf_counter() - began))
        start = 0
        for pending in batch:
            rows = outputs[start : start + len(pending.inputs)]
            start += len(pending.inputs)
            if not pending.done.done():  # its caller may have timed out meanwhile
                pending.done.set_result(rows)


def _record(batch: list[Pending], began_ns: int, images: int) -> None:
    """The times of the batch's forward pass, the same on each of its requests."""
    ended_ns = time.time_ns()
    for pending in batch:
        pending.batch_began_ns, pending.batch_ended_ns, pending.batch_images = began_ns, ended_ns, images


def _same_kind(pending: Pending, other: Pending) -> bool:
    """Whether two requests' inputs can be one batch: the same shape per image and the same dtype."""
    return pending.inputs.shape[1:] == other.inputs.shape[1:] and pending.inputs.dtype == other.inputs.dtype
