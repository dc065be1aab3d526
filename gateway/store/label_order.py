"""q's matches in label order, read from a second, label-ordered copy of the label index
kept beside the copy's own lines (label_copy.py keeps those in token score order). No I/O.

The listing script finds a page in label order by walking the label index from the
order's first key, checking each key's label for q (~2 µs a key), when it is given only
the number of q's matches. That walk is short when the matches are spread over the
label order, and long when they sit together far from where it starts: labels made in
sequence are (``key 1…`` is the span ``key 1``–``key 199999`` of the label index, and
newest label first the walk starts at ``key 999999``): at 1,000,000 keys, ``q='key 1'``
walked some 890,000 keys, 1.8 s. Handing all 111,111 matches over instead costs ~170 ms.

Here the lines are cut into chunks of about CHUNK_BYTES, and q's matches are counted in
each (in C, the count the listing needs anyway: one pass, as in the token-ordered copy);
the chunks before the page's are then skipped by their counts, and the page read from
the chunk it starts in, a match at a time (``bytes.find``/``bytes.rfind``): a search
costs that pass and at most a chunk's matches, whatever the page's depth and wherever
q's matches sit (20–31 ms at 1,000,000 keys, page 2,000 included).

A line is the member lowered as the token-ordered copy lowers its lines (ASCII only,
the prefix every key shares cut off after the NUL), and, when the key's name is not in
lower case, TAG_MARK and the name as it is (past the prefix), from which the member is
named. The lines are those of the token-ordered copy, in the other order. A key read
again since the copy was made (changed, made or deleted: ``AccountCopy.fresh``) is not
blanked here (there is no index by key to find its line): its line is skipped while
reading, its count taken off by what the token-ordered copy held for it (``Fresh.was``),
and the key is searched from what it is now, merged in order. About 33 bytes per key
(1,000,000 keys of the benchmark: 33 MB; making them adds ~55 MB to the copy's peak).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from .label_copy import TAG_MARK, AccountCopy, Fresh, Matches, line_pattern

# the lines are counted in chunks of about this many bytes (~500 at 1,000,000 keys): a
# page is read from the one it starts in, past those before it
CHUNK_BYTES = 1 << 16
# members made into lines at once (their strings held meanwhile, ~6 MB)
MADE_AT_ONCE = 50_000
# what a line whose member lowering changed before its key holds after the lowered
# member: the member as it is (no label or key holds a control character)
WHOLE_MARK = b"\x03"


@dataclass(frozen=True)
class LabelOrder:
    """An account's label index members in its order, lowered (see the module notes),
    and where the chunks they are counted in start (each at a line's start; the last
    entry the end)."""

    lines: bytes  # '\n' + 'lowered member' [+ TAG_MARK + 'key past the prefix'] + '\n', ...
    bounds: list[int]
    # each chunk's first member (the prefix put back), in order: where a key read again
    # had its line
    firsts: list[str]

    @classmethod
    def of(cls, members: Sequence[str], prefix: bytes,
           placed: Sequence[str] | None = None) -> LabelOrder:
        """The lines of ``members`` (in the label index's order), each key's ``prefix``
        cut off (the token-ordered copy's shared prefix); only those in ``placed`` (the
        token-ordered copy's members) when it leaves some out."""
        if placed is not None and len(placed) != len(members):
            kept = set(placed)
            members = [m for m in members if m in kept]
        if not members:
            return cls(b"\n", [1], [])
        parts = []
        for first in range(0, len(members), MADE_AT_ONCE):
            joined = "\n".join(members[first:first + MADE_AT_ONCE]).encode()
            if prefix:  # each member holds one NUL, before its key
                joined = joined.replace(b"\0" + prefix, b"\0")
            parts.append(b"\n".join(map(_line, joined.lower().split(b"\n"),
                                        joined.split(b"\n"))))
        body = b"\n" + b"\n".join(parts) + b"\n"
        del parts
        # each chunk's start: the first line starting at or past CHUNK_BYTES after the
        # previous chunk's
        bounds = [1]
        while (cut := body.find(b"\n", bounds[-1] + CHUNK_BYTES - 1) + 1) and cut < len(body):
            bounds.append(cut)
        firsts = [_member_at(body, at, prefix)[0] for at in bounds]
        bounds.append(len(body))
        return cls(body, bounds, firsts)

    @property
    def nbytes(self) -> int:
        return len(self.lines)


def _line(lowered: bytes, member: bytes) -> bytes:
    """A member's line: lowered, then what lowering changed (the key's name, or in
    a folded label, which keygate never writes, the whole member)."""
    if lowered == member:
        return lowered
    label, _, rest = member.partition(b"\0")
    if lowered.startswith(label + b"\0"):
        return lowered + TAG_MARK + rest
    return lowered + WHOLE_MARK + member


def in_label_order(copy: AccountCopy, needle: bytes, offset: int, size: int,
                   descending: bool) -> Matches | None:
    """The keys of the listing in label order (``descending``: from the last) whose
    member holds ``needle`` (lowered, with no control character), from the ``offset``-th
    on, ``size`` of them, and how many hold it in all: their members, ordered (from
    ``first``, the offset). None when the copy keeps no label order, or every key holds
    the needle (in the shared prefix: a walk finds the page at once)."""
    order, patterns = copy.label_order, copy.patterns_of(needle)
    if order is None or patterns is None:
        return None
    lines, line, prefix, fresh = order.lines, line_pattern(patterns), copy.prefix, copy.fresh
    chunks = list(pairwise(order.bounds))
    held = [len(line.findall(lines, low, high)) for low, high in chunks]
    firsts = order.firsts
    for f in fresh.values():
        if f.was is not None and any(p in f.was.lower() for p in patterns):
            # its line, counted above, is no longer the key's
            was = f.was.replace(b"\0", b"\0" + prefix, 1).decode()
            held[bisect_right(firsts, was) - 1] -= 1
    # the keys read again that hold q now, in ascending order
    now = sorted(f.member for f in copy.fresh_holding(needle) if f.member is not None)
    # the chunks before the page's are skipped, with the keys read again that come
    # before each chunk's end in this order (``taken`` of them)
    before = taken = 0
    walked = range(len(chunks) - 1, -1, -1) if descending else range(len(chunks))
    for at in walked:
        left = len(now) - taken
        if descending:  # those from the chunk's first member on
            also = left - bisect_left(now, firsts[at], 0, left)
        elif at + 1 < len(chunks):  # those before the next chunk's first member
            also = bisect_left(now, firsts[at + 1], taken) - taken
        else:
            also = left
        if before + held[at] + also > offset:
            break
        before, taken = before + held[at] + also, taken + also
    else:
        at = -1  # the page is past every match
    found: list[str] = []
    need = offset - before + size
    for chunk in (walked[walked.index(at):] if at != -1 else ()):
        if held[chunk]:
            low, high = chunks[chunk]
            _read(lines, patterns, low, high, need, prefix, fresh, descending, found)
            if len(found) == need:
                break
    rest = (now[max(len(now) - taken - need, 0):len(now) - taken] if descending
            else now[taken:taken + need])
    merged = sorted(found + rest, reverse=descending)
    return Matches(merged[offset - before:need], sum(held) + len(now), ordered=True,
                   first=offset)


def _read(lines: bytes, patterns: list[bytes], low: int, high: int, want: int,
          prefix: bytes, fresh: dict[str, Fresh], descending: bool, found: list[str]) -> None:
    """Add to ``found``, up to ``want`` in all, the members of the lines between ``low``
    and ``high`` that hold one of ``patterns`` (from the last when ``descending``),
    the keys read again (``fresh``) left out."""
    if descending:
        last = [lines.rfind(p, low, high) for p in patterns]
        while (at := max(last)) != -1:
            start = lines.rfind(b"\n", 0, at) + 1
            _take(lines, start, prefix, fresh, found)
            if len(found) == want:
                return
            last = [lines.rfind(p, low, start) if was >= start else was
                    for p, was in zip(patterns, last, strict=True)]
        return
    next_at = [lines.find(p, low, high) for p in patterns]
    while (at := min((a for a in next_at if a != -1), default=-1)) != -1:
        start = lines.rfind(b"\n", 0, at) + 1
        end = _take(lines, start, prefix, fresh, found)
        if len(found) == want:
            return
        next_at = [lines.find(p, end, high) if was != -1 and was < end else was
                   for p, was in zip(patterns, next_at, strict=True)]


def _member_at(lines: bytes, start: int, prefix: bytes) -> tuple[str, int]:
    """The member of the line starting at ``start`` (the shared prefix put back), and
    where the line ends."""
    end = lines.index(b"\n", start)
    whole = lines.find(WHOLE_MARK, start, end)
    if whole != -1:
        label, _, rest = lines[whole + 1:end].partition(b"\0")
    else:
        nul = lines.index(b"\0", start, end)
        mark = lines.find(TAG_MARK, nul, end)
        label, rest = lines[start:nul], lines[nul + 1:end] if mark == -1 else lines[mark + 1:end]
    return (label + b"\0" + prefix + rest).decode(), end


def _take(lines: bytes, start: int, prefix: bytes, fresh: dict[str, Fresh],
          found: list[str]) -> int:
    """Add the member of the line starting at ``start`` to ``found`` unless its key was
    read again; where the line ends."""
    member, end = _member_at(lines, start, prefix)
    if member.partition("\0")[2] not in fresh:
        found.append(member)
    return end
