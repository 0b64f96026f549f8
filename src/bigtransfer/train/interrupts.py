"""Ctrl-C (SIGINT) and preemption (SIGTERM, what torchrun, SLURM and Kubernetes send) during training as a
request, not an exception: the signal only sets a flag, and the loop stops at the next step boundary and
saves, so a checkpoint never holds a half-applied optimiser step (big_transfer stops the same way). A second
signal stops at once, without saving. Under torchrun, which forwards the signal to every
process and kills them 30 s later, the step under way (or a measurement in progress) must end within that time."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

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
        with handling(self._handle):
            yield self

    def agreed(self, context: Distributed) -> bool:
        """The request as every process sees it: one stopping alone would leave the others waiting in a collective.
        Asked on the gloo group, with a CPU flag, so a GPU run does not wait for its device at every step."""
        return sum_over_processes(int(self.requested), context) > 0


@contextlib.contextmanager
def handling(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` receives SIGINT and SIGTERM for the duration of the block; outside the main thread, which alone
    owns signals, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def stopped_at_once(message: str) -> Iterator[None]:
    """For work with nothing worth saving (writing shards): SIGINT or SIGTERM raises StoppedAtOnce(`message`) where
    the process is, so every block unwinds — loading workers stopped, partial output removed — and the command
    exits 128 + signal (130, 143). SIGTERM's default would end the process with no clean-up at all. Further
    signals are ignored until the block is left, so they cannot cut that clean-up short."""

    def stop(signum: int, frame: Any) -> None:
        for each in SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise StoppedAtOnce(message, signum)

    with handling(stop):
        yield
