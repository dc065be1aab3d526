"""Work over a million items in a thread, in steps short enough that the event loop
keeps running. No I/O.

A copy is made in a thread (search.py), but a thread runs Python only while it holds
the interpreter's lock, which a call into C (``dict(zip(...))``, ``list(map(...))``, a
join over every key) keeps until it returns: at 1,000,000 keys such calls took 0.1–0.45 s
each, during which the event loop, and every request of the process, waited. Here they
are cut into steps of at most STEP items, between which the lock passes (the interpreter
lets a waiting thread in at the next Python step). A sort of a million items (~0.2 s in
one call) is made as a bucket sort: the items dealt into buckets of about a step each by
quantiles of a sample of their keys, each bucket sorted apart (merging sorted steps
took longer in one call than the whole sort). Freeing a million items is one call too
(~50–100 ms): :func:`release` empties a list or dict a step at a time."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

# items per step: ~15–30 ms of the calls above
STEP = 1 << 16
# bytes of text per step (~60,000 lines of a copy)
PART_BYTES = 1 << 21
# the keys sampled per bucket of a sort in steps, for its quantiles
SAMPLED = 16

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


def sorted_in_steps(items: Sequence[T], key: Callable[[T], Any]) -> list[T]:
    """``sorted(items, key=key)``, no call over more than about a step's items: each
    item dealt into the bucket of its key among quantiles of a sample of the keys (an
    item at a quantile, and so every item of an equal key, in the same bucket, in the
    order given), then each bucket sorted apart. The same order: both are stable. A
    bucket of one key repeated (keys never used, in last-use order) is one sorted run,
    which the sort takes in one pass."""
    if len(items) <= STEP:
        return sorted(items, key=key)
    keys = mapped(key, items)
    buckets = -(-len(items) // STEP)
    sample = sorted(keys[::max(1, len(keys) // (buckets * SAMPLED))])
    bounds = sample[SAMPLED::SAMPLED]
    where = mapped(partial(bisect_right, bounds), keys)
    dealt: list[list[int]] = [[] for _ in range(len(bounds) + 1)]
    for at, bucket in enumerate(where):
        dealt[bucket].append(at)
    del where
    found: list[T] = []
    for bucket in dealt:
        found += map(items.__getitem__, sorted(bucket, key=keys.__getitem__))
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


def release(*held: list[Any] | dict[Any, Any]) -> None:
    """Empty each of ``held`` (lists and dicts, which their holder then drops at no
    cost), a step at a time."""
    for items in held:
        if isinstance(items, dict):
            while items:
                for _ in range(min(STEP, len(items))):
                    items.popitem()
        else:
            while items:
                del items[-STEP:]
