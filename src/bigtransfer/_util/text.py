"""Text a person reads: file names that print whatever their bytes, counts with their nouns, sizes in the unit
that fits."""

from __future__ import annotations

from typing import Any


def printable(name: Any) -> str:
    """A file name as text that can be printed, written to JSON or CSV: bytes that are not UTF-8 (which Python
    keeps as lone surrogates) shown as \\xNN escapes instead of failing or writing invalid text."""
    return str(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def plural(count: int, noun: str) -> str:
    """ "1 shard", "2 shards", "3 classes": a count as a person writes it."""
    return f"{count:,} {noun}{'' if count == 1 else 'es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


def parameter_count(count: int) -> str:
    """A parameter count to three significant figures in the unit that fits: "23.5 M", "51.4 k", "812"
    (a bundled model's 0.05 M would print as "0.0 M" at one decimal)."""
    return _in_units(count, (("G", 1e9), ("M", 1e6), ("k", 1e3)), "")


def byte_size(count: int) -> str:
    """A file size in the unit that fits: "1.2 GB", "34.5 MB", "812 kB", "90 B" (decimal units, as `ls -h --si`)."""
    return _in_units(count, (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)), " B")


def _in_units(count: int, units: tuple[tuple[str, float], ...], bare: str) -> str:
    for unit, scale in units:
        if count >= scale * 0.9995:  # what rounds to 1.00 of this unit
            value = count / scale
            return f"{value:.{0 if value >= 99.95 else 1 if value >= 9.995 else 2}f} {unit}"
    return f"{count}{bare}"
