"""Shard URL patterns (`…/shard-{000000..000099}.tar`, `a.tar::b.tar`) expanded as webdataset expands them, once
their names are counted: braceexpand builds every name of a range before the first, so one mistyped range
(`{000000..99999999}`) took 7.9 GB and kept growing."""

from __future__ import annotations

from .tar_reading import webdataset_library

MAX_SHARD_NAMES = 1_000_000  # 2 billion images at the default 2,000 per shard


def expand_pattern(source: str) -> list[str]:
    """The shard URLs of `source` (webdataset's `expand_urls`), once counted: at most MAX_SHARD_NAMES."""
    wds = webdataset_library()
    count = sum(_names(part) for part in source.split("::"))
    if count > MAX_SHARD_NAMES:
        raise ValueError(
            f"{source} names {count:,} shards, beyond the limit of {MAX_SHARD_NAMES:,}: check the {{first..last}} "
            "range."
        )
    return list(wds.shardlists.expand_urls(source))


def _names(pattern: str) -> int:
    """How many names braceexpand makes of `pattern` (its grammar: ranges, comma lists, nesting, backslash
    escapes), counted without making them."""
    count, depth, start, pos = 1, 0, 0, 0
    while pos < len(pattern):
        if pattern[pos] == "\\":
            pos += 2
            continue
        if pattern[pos] == "{":
            start = pos if depth == 0 else start
            depth += 1
        elif pattern[pos] == "}":
            depth -= 1
            if depth == 0:
                count *= _group(pattern[start + 1 : pos])
        pos += 1
    return count  # unbalanced braces: braceexpand's own error follows


def _group(expression: str) -> int:
    import braceexpand  # webdataset's, there once `expand_pattern` found webdataset

    numbers = braceexpand.int_range_re.match(expression)
    if numbers:
        first, last, step = numbers.groups()
        step = (int(step) or 1) if step else 1
        first, last = int(first), int(last)
        return len(range(first, last + 1, step) if first < last else range(first, last - 1, -step))
    letters = braceexpand.char_range_re.match(expression)
    if letters:
        return len(braceexpand.make_char_range(*letters.groups()))
    items = _comma_items(expression)
    return _names(expression) if items is None else sum(_names(item) for item in items)


def _comma_items(sequence: str) -> list[str] | None:
    """The comma-separated items of `{a,b,…}`, or None when it is not a list (then its braces are literal)."""
    items, depth, start, pos = [], 0, 0, 0
    while pos < len(sequence):
        if sequence[pos] == "\\":
            pos += 2
            continue
        if sequence[pos] == "{":
            depth += 1
        elif sequence[pos] == "}":
            depth -= 1
        elif sequence[pos] == "," and depth == 0:
            items.append(sequence[start:pos])
            start = pos + 1
        pos += 1
    return None if depth or not items else [*items, sequence[start:]]
