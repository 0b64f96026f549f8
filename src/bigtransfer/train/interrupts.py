"""Ctrl-C during training as a request, not an exception: the signal only sets a flag, and the loop stops at
the next step boundary, so a checkpoint never holds a half-applied optimiser step (big_transfer stops the
same way). A second Ctrl-C stops at once, without saving."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist


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

    def agreed(self, world_size: int, device: torch.device) -> bool:
        """The request as every process sees it: one stopping alone would leave the others waiting in a collective."""
        if world_size == 1:
            return self.requested
        flag = torch.tensor([int(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
