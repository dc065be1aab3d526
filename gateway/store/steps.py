"""Work over a million items in a thread, in steps short enough that the event loop
keeps running. No I/O.

A copy is made in a thread (search.py), but a thread runs Python only while it holds
the interpreter's lock, which a call into C (``dict(zip(...))``, ``list(map(...))``, a
join over every key) keeps until it returns: at 1,000,000 keys such calls took 0.1–0.45 s
each, during which the event loop, and every request of the process, waited. Here they
are cut into steps of at most STEP items, between which the lock passes (the interpreter
lets a waiting thread in at the next Python step). A sort is not cut: merging sorted
steps took longer in one call than the whole sort (~0.2 s at 1,000,000 keys)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

# items per step: ~15–30 ms of the calls above
STEP = 1 << 16
# bytes of text per step (~60,000 lines of a copy)
PART_BYTES = 1 << 21

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def slices(count: int) -> Iterable[slice]:
    """The slices of ``count`` items, a step each."""
    return (slice(start, start + STEP) for start in range(0, count, STEP))


def mapped(function: Callable[..., T], *sequences: Sequence[Any]) -> list[T]:
    """``list(map(function, *sequences))``, a step at a time."""
    found: list[T] = []
    for part in slices(min(map(len, sequences))):
        found += map(function, *(sequence[part] for sequence in sequences))
    return found


def keyed(keys: Sequence[K], values: Sequence[V]) -> dict[K, V]:
    """``dict(zip(keys, values))`` (as many of each), a step at a time."""
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    found: dict[K, V] = {}
    for part in slices(len(keys)):
        found.update(zip(keys[part], values[part], strict=True))
    return found


def parts(text: bytes | bytearray, start: int = 1) -> Iterator[tuple[int, int]]:
    """``text`` from ``start`` on (a text of lines that ends with a newline) as ranges
    of about PART_BYTES, each ending right after a newline."""
    low = start
    while low < len(text):
        high = text.find(b"\n", low + PART_BYTES - 1) + 1 or len(text)
        yield low, high
        low = high


def lines_of(text: bytes) -> list[bytes]:
    """The lines of ``text`` (which starts and ends with a newline): ``text.split(b"\\n")``
    without the empty first and last, a part at a time."""
    lines: list[bytes] = []
    for low, high in parts(text):
        lines += text[low:high - 1].split(b"\n")
    return lines


def found_in_parts(pattern: re.Pattern[bytes], text: bytes) -> list[Any]:
    """``pattern.findall(text)`` for a pattern that matches within a line, a part at a
    time."""
    found: list[Any] = []
    for low, high in parts(text, 0):
        found += pattern.findall(text, low, high)
    return found
