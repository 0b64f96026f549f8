"""Ctrl-C (SIGINT) and preemption (SIGTERM, what torchrun, SLURM and Kubernetes send) during training as a
request, not an exception: the signal only sets a flag, and the loop stops at the next step boundary and
saves, so a checkpoint never holds a half-applied optimiser step (big_transfer stops the same way). A second
signal stops at once, without saving. Under torchrun, which forwards the signal to every
process and kills them 30 s later, the step under way (or a measurement in progress) must end within that time."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from .distributed import Distributed, sum_over_processes

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppedAtOnce(KeyboardInterrupt):
    """A second stop signal: raised wherever the loop was, nothing saved. `signal` is the one received."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signal = signum


class StopRequest:
    """Whether a stop was asked for, and by which signal; set by the handler that `listening` installs."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame) -> None:
        if self.requested:  # asked twice: the user wants out now, wherever the loop is
            raise StoppedAtOnce("stopped at once, without saving: the last saved checkpoint is intact", signum)
        self.signal = signum

    @contextlib.contextmanager
    def listening(self) -> Iterator[StopRequest]:
        """SIGINT and SIGTERM set the flag for the duration of the block (only the main thread owns signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def agreed(self, context: Distributed) -> bool:
        """The request as every process sees it: one stopping alone would leave the others waiting in a collective.
        Asked on the gloo group, with a CPU flag, so a GPU run does not wait for its device at every step."""
        return sum_over_processes(int(self.requested), context) > 0
