"""The console view of a training run: a progress bar on a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm


def duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class StepProgress:
    """Steps done, loss, learning rate, images/s and the time left.

    On a terminal, a tqdm bar (messages are printed above it). Where the output goes to a file or a
    pipe, a bar would be one ever-growing line of carriage returns, so a plain line is printed every
    `every_s` seconds and at the last step instead.
    """

    def __init__(self, total: int, initial: int, enabled: bool, stream: TextIO | None = None, every_s: float = 30.0):
        self.stream = stream or sys.stderr
        self.total, self.initial, self.every_s, self.enabled = total, initial, every_s, enabled
        self.lines = enabled and not self.stream.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="step", file=self.stream, disable=not enabled or self.lines)
        self.began = self.last_line = time.monotonic()

    def update(self, row: dict) -> None:
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", img_s=f"{row['images_per_s']:.0f}")
        self.bar.update(1)
        now = time.monotonic()
        if self.lines and (now - self.last_line >= self.every_s or row["step"] == self.total):
            self.last_line = now
            done = row["step"] - self.initial
            left = (now - self.began) / max(done, 1) * (self.total - row["step"])
            self.note(f"step {row['step']}/{self.total}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  "
                      f"{row['images_per_s']:.0f} img/s  {duration(now - self.began)} elapsed, {duration(left)} left")  # fmt: skip

    def note(self, message: str) -> None:
        """A line for the user (eval results, resuming), kept clear of the bar."""
        if self.enabled:
            tqdm.write(message, file=self.stream) if not self.lines else print(message, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()
