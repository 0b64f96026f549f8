"""Limits a user raises through a BIGTRANSFER_* environment variable, read when a limit is used, not at import: a
bad value then fails only what uses it, in one line naming the variable (`import bigtransfer`, and with it every
command, `--version` included, used to raise on BIGTRANSFER_MAX_IMAGE_PIXELS=80M)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvLimit:
    """`limit()` is the variable's value (a positive whole number, or any positive number when `whole` is
    False), or `default` when it is unset or empty; any other value is a ValueError saying what to set."""

    variable: str
    default: int | float
    whole: bool = True

    def __call__(self) -> int | float:
        text = os.environ.get(self.variable, "").strip()
        if not text:
            return self.default
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            value = None
        if value is None or math.isnan(value) or value <= 0:
            form = "a positive whole number" if self.whole else "a positive number"
            raise ValueError(
                f"{self.variable}={text!r} is not {form}: set it to one, such as the default {self.default}, "
                "or unset it."
            )
        return value
