"""q's copy's index by key (label_copy.py): where each key's line is, found without a
dict of a million entries, and where every LINES_PER_START-th line starts."""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from itertools import accumulate

from .steps import found_in_parts, lines_of

# a line's start is kept for one line in this many (the others found from it in C)
LINES_PER_START = 16


@dataclass(frozen=True)
class KeyIndex:
    """The copy's members by key: for each, its key's (without the shared prefix) 32-bit
    hash shifted up and its line's start in ``members`` below, sorted (``entries``), and
    where the entries of each value of the hash's top 16 bits begin (``buckets``), so
    that a key's line is found by bisecting some 15 entries at 1,000,000 keys, not the
    whole array. Python's hash of bytes is salted per process, which is what an index
    kept in this process needs; two keys whose hashes meet are told apart by reading
    their lines."""

    entries: array
    buckets: array

    @classmethod
    def of(cls, members: bytes, key_end: bytes) -> tuple[KeyIndex, list[int]]:
        """The index of a copy's ``members`` (each line's key between its NUL and
        ``key_end``, its tag mark), and where every LINES_PER_START-th line starts: made
        in a thread, and in steps short enough (no sort of the whole array) that the
        event loop runs between them."""
        groups: list[list[int]] = [[] for _ in range(1 << 16)]
        starts: list[int] = []
        if len(members) > 2:  # a copy with no member is its newline(s) alone
            # each line's start (one more: where a line after the last would start) and
            # key, found in C
            line_starts = list(accumulate(map((1).__add__, map(len, lines_of(members))),
                                          initial=1))
            starts = line_starts[:-1:LINES_PER_START]
            keys = found_in_parts(re.compile(rb"\0([^\n" + re.escape(key_end) + rb"]*)"),
                                  members)
            for hashed, start in zip(map(hash, keys), line_starts, strict=False):
                hashed &= 0xFFFFFFFF
                groups[hashed >> 16].append(hashed << 32 | start)
        entries, buckets = array("Q"), array("I")
        for group in groups:
            buckets.append(len(entries))
            group.sort()
            entries.extend(group)
        buckets.append(len(entries))
        return cls(entries, buckets), starts

    def __len__(self) -> int:
        return len(self.entries)
