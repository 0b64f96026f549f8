"""Ctrl-C during training as a request, not an exception: the signal only sets a flag, and the loop stops at
the next step boundary, so a checkpoint never holds a half-applied optimiser step (big_transfer stops the
same way). A second Ctrl-C stops at once, without saving. Under torchrun, which forwards the signal to every
process and kills them 30 s later, the step under way (or a measurement in progress) must end within that time."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist

from .distributed import Distributed


class StopRequest:
    """Whether the user asked the run to stop; set by the signal handler that `listening` installs."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame) -> None:
        if self.requested:  # asked twice: the user wants out now, wherever the loop is
            raise KeyboardInterrupt("stopped at once, without saving: the last saved checkpoint is intact")
        self.requested = True

    @contextlib.contextmanager
    def listening(self) -> Iterator[StopRequest]:
        """SIGINT sets the flag for the duration of the block (only the main thread can own a signal)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def agreed(self, context: Distributed) -> bool:
        """The request as every process sees it: one stopping alone would leave the others waiting in a collective.
        Asked on the gloo group, with a CPU flag, so a GPU run does not wait for its device at every step."""
        if context.world_size == 1:
            return self.requested
        flag = torch.tensor([int(self.requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=context.patient_group)
        return bool(flag.item())
