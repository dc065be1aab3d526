"""q's matches, and pages with a status, renewal or role filter, in label, creation,
token date, key and status order, counted in and read from the copy's ordered lines
(ordered_lines.py says what a line holds). No I/O.

The listing script finds a page in such an order by walking the order's index from its
first key, checking each key's label for q (~2–4.5 µs a key), when it is given only the
number of q's matches; otherwise it is handed them all and sorts them. The walk is short
when the matches are spread over the order, and long when they sit together far from
where it starts, or when the page is deep: labels made in sequence sit together in both
orders (``key 1…`` is the span ``key 1``–``key 199999`` of the label index, and the
account's first tenth in creation order). At 1,000,000 keys ``q='key 1'`` walked some
890,000 keys in label order (1.8 s), and its page 600 newest first took 0.43 s; with
a role in label order, 2.1 s.

Here each order's lines are cut into chunks of about CHUNK_BYTES, and q's matches are
counted in each (in C, the count the listing needs anyway: one pass, as in the
token-ordered copy); the chunks before the page's are then skipped by their counts, and
the page read from the chunk it starts in: a search costs that pass and at most a
chunk's matches, whatever the page's depth and wherever q's matches sit.

A chunk whose lines all start with text that holds q (labels made in sequence, or
that share a start, as a team's or an environment's name) is not passed over: its
lines holding q are all its lines, counted from its tails as below. At 1,000,000 keys
labelled alike, q in every label took 61 ms (78 ms in status order) with a pass over
every line; a q that every label holds elsewhere than at a start they share still
costs that pass.

With no q, a status, a token date range (a renewal alert level) and a tagged role are
counted from each chunk's ``tails``: its lines' token scores, sorted, by their tag bytes
and status byte (two bisections per chunk for a token date range), so a filtered page at
any depth is found with no pass over the lines; a line read from the page's chunk is
checked against the date range through the copy's index by key.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .copy_values import Filters, Fresh, Matches
from .label_copy import TAG_BASE, TAG_MARK, AccountCopy, key_of
from .ordered_lines import (
    DATE_BYTES,
    LAST_USED,
    STATUS_BYTE,
    STATUS_ORDER_OF,
    OrderedLines,
    dated_runs,
    member_at,
    per_bucket,
    place,
)
from .records import ACTIVE, INACTIVE


def tags_pattern(copy: AccountCopy, role: str | None) -> bytes:
    """A regular expression for a line's tag bytes (after TAG_MARK) when its key holds
    ``role`` (a tagged role; None: any key)."""
    width = copy.tag_width
    if role is None:
        return b"[\x10-\x1f]{%d}" % width
    byte, bit = copy.tag_bit(role)
    holding = bytes(v for v in range(TAG_BASE, TAG_BASE + 16) if v & bit)
    return b"[\x10-\x1f]{%d}[%s][\x10-\x1f]{%d}" % (byte, holding, width - byte - 1)


def status_pattern(status: str | None) -> bytes:
    """A regular expression for a line's status byte (``status``; None: either)."""
    return re.escape(STATUS_BYTE[status]) if status else b"[\x10\x11]"


def keeps(copy: AccountCopy, sort: str) -> bool:
    """Whether the copy keeps lines in the listing's order ``sort``."""
    return STATUS_ORDER_OF.get(sort, sort) in copy.orders


def in_order(copy: AccountCopy, sort: str, needle: bytes, offset: int, size: int,
             descending: bool, filters: Filters) -> Matches | None:
    """The keys of the listing in the order ``sort`` (``descending``: from the last)
    that ``filters`` allow (a status, a token date range, a tagged role) whose member
    holds ``needle`` (lowered, with no control character; empty, or in the prefix every
    key shares: every key, counted from each chunk's tails instead of a pass over the
    lines), from the ``offset``-th on, ``size`` of them, and how many hold it in all:
    their members, ordered (from ``first``, the offset). None when the copy keeps no
    such order. Within token dates, q's lines are counted by their date bytes
    (:func:`_dated_held`), and a line read is checked against them through the copy's
    index by key.

    In status order (each status's keys in key order, ``active`` first ascending) the
    key-ordered lines are read once per status, counted in the same pass."""
    order = copy.orders.get(STATUS_ORDER_OF.get(sort, sort))
    dated = filters.dates != (None, None)
    if order is None:
        return None
    patterns = copy.patterns_of(needle)
    either = (b"(?<=\n)" if patterns is None  # every key holds it, in the prefix
              else b"(?:" + b"|".join(re.escape(p) for p in patterns) + b")")

    tags = tags_pattern(copy, filters.role)

    def ranges_of(status: str | None) -> list[tuple[int, int]] | None:
        """The token scores a line of ``status`` must hold (None: any)."""
        return Filters(status, filters.dates).score_ranges if dated else None

    def line_of(status: str | None, caught: bool = False,
                dates: bytes = b"") -> re.Pattern[bytes]:
        """Lines holding q, the role and ``status`` (None: either; ``caught``: found
        with their status byte, else with nothing) whose date bytes ``dates`` matches
        (empty: any)."""
        found = b"(" + status_pattern(status) + b")" if caught else status_pattern(status)
        if filters.role is None and not dates and patterns is not None:
            if status is None and not caught:
                # a line holding the needle is not blanked, so it ends with tags, a
                # status byte and date bytes: the rest of it is taken in whole, a third
                # faster than matching them
                return re.compile(either + rb"[^\n]*()")
            # the rest of it taken in whole, its status byte then checked right before
            # the date bytes that end it (a look back of fixed width): a fifth faster
            # than backtracking to them, half as fast again as passing over the tags
            return re.compile(either + rb"[^\n]*+(?<=" + found + DATE_BYTES + b")"
                              + (b"" if caught else b"()"))
        return re.compile(either + rb"[^\n\x02]*+" + re.escape(TAG_MARK) + tags + found
                          + dates + (b"" if caught else b"()"))

    def tails_of(status: str | None) -> re.Pattern[bytes]:
        """The tails (tag bytes and status byte) of the lines holding the role and
        ``status`` (None: either)."""
        return re.compile(tags + status_pattern(status))

    parts = ([filters.status] if sort != "status" or filters.status
             else [INACTIVE, ACTIVE] if descending else [ACTIVE, INACTIVE])
    held: dict[str | None, Sequence[int]]
    totals: dict[str | None, int] = {}
    if patterns is None:  # no q, or one every key holds: counted from each chunk's tails
        held = {status: order.held(tails_of(status), ranges_of(status)) for status in parts}
    elif dated:
        # counted chunk by chunk as the page is looked for (from the order's nearer end),
        # the totals from the span of the range in the copy's own lines (token order)
        held = _dated_held(copy, order, line_of, parts, ranges_of, patterns, tails_of)
        totals = {status: _total(copy, needle, Filters(status, filters.dates, filters.role))
                  for status in parts}
    else:
        held = _counted(order, line_of, parts, patterns, tails_of)
    members: list[str] = []
    total = 0
    for status in parts:
        part = Part(copy, order, sort, line_of(status), held[status],
                    copy.fresh_holding(needle, Filters(status, filters.dates, filters.role),
                                       in_use_order=sort == LAST_USED),
                    descending, ranges_of(status), totals.get(status))
        if offset - total < part.count and len(members) < size:
            members += part.page(max(offset - total, 0), size - len(members))
        total += part.count
    return Matches(members, total, ordered=True, first=offset)


def _counted(order: OrderedLines, line_of: Callable[..., re.Pattern[bytes]],
             parts: list[str | None], patterns: list[bytes],
             tails_of: Callable[[str | None], re.Pattern[bytes]],
             ) -> dict[str | None, Sequence[int]]:
    """How many lines of each chunk ``line_of`` matches, by status of ``parts``: one
    pass, both statuses' lines told apart by their status byte, caught; a chunk whose
    every line holds q (one of ``patterns``) in the start they share counted from its
    tails instead (``tails_of``)."""
    chunks = list(enumerate(pairwise(order.bounds)))
    if len(parts) == 1:
        line, tail = line_of(parts[0]), tails_of(parts[0])
        return {parts[0]: [order.held_in(chunk, tail, None) if order.all_hold(chunk, patterns)
                           else len(line.findall(order.lines, low, high))
                           for chunk, (low, high) in chunks]}
    held: dict[str | None, list[int]] = {ACTIVE: [], INACTIVE: []}
    line = line_of(None, caught=True)
    tail_of = {status: tails_of(status) for status in held}
    for chunk, (low, high) in chunks:
        if order.all_hold(chunk, patterns):
            for status, counts in held.items():
                counts.append(order.held_in(chunk, tail_of[status], None))
            continue
        statuses = line.findall(order.lines, low, high)
        active = statuses.count(STATUS_BYTE[ACTIVE])
        held[ACTIVE].append(active)
        held[INACTIVE].append(len(statuses) - active)
    return held


def _dated_held(copy: AccountCopy, order: OrderedLines,
                line_of: Callable[..., re.Pattern[bytes]], parts: list[str | None],
                ranges_of: Callable[[str | None], list[tuple[int, int]] | None],
                patterns: list[bytes], tails_of: Callable[[str | None], re.Pattern[bytes]],
                ) -> dict[str | None, Sequence[int]]:
    """How many lines of each chunk hold q (``line_of``, by status) and a token score in
    the ranges of each of ``parts`` (statuses), each chunk counted when first asked
    for: the lines in the date buckets the ranges fill whole in a pass over the chunk
    (their date bytes a byte class); those of the buckets they cut checked one by one
    (:func:`dated_runs`), here; a chunk whose every line holds q (one of ``patterns``)
    in the start they share, from its tails (``tails_of``)."""
    held: dict[str | None, Sequence[int]] = {}
    for status in parts:
        classes: list[bytes] = []
        cut: dict[int, int] = {}
        line = line_of(status)
        ranges = ranges_of(status)
        for low, high in ranges or ():
            whole, lines = dated_runs(copy, low, high)
            classes += [whole] if whole else []
            for number in lines:
                start = order.at[number]  # 0: a line left out of this order
                if start and line.search(order.lines, start,
                                         order.lines.index(b"\n", start)):
                    chunk = bisect_right(order.bounds, start) - 1
                    cut[chunk] = cut.get(chunk, 0) + 1
        whole_lines = (line_of(status, dates=b"(?:" + b"|".join(classes) + b")")
                       if classes else None)
        held[status] = ChunkCounts(order, whole_lines, cut, patterns, tails_of(status),
                                   ranges)
    return held


class ChunkCounts(Sequence[int]):
    """The lines of each chunk of ``order`` that ``line`` matches (None: none), plus
    ``also`` (by chunk), each chunk counted once, when first asked for; a chunk whose
    every line holds one of ``patterns`` in the start they share: its lines whose tail
    ``tail`` matches and whose token score is in ``ranges``, from its tails."""

    def __init__(self, order: OrderedLines, line: re.Pattern[bytes] | None,
                 also: dict[int, int], patterns: list[bytes], tail: re.Pattern[bytes],
                 ranges: list[tuple[int, int]] | None):
        self.order, self.line, self.also = order, line, also
        self.patterns, self.tail, self.ranges = patterns, tail, ranges
        self.known: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.order.bounds) - 1

    def __getitem__(self, chunk):  # type: ignore[override]
        if isinstance(chunk, slice):
            return [self[i] for i in range(*chunk.indices(len(self)))]
        count = self.known.get(chunk)
        if count is None:
            if self.order.all_hold(chunk, self.patterns):
                count = self.order.held_in(chunk, self.tail, self.ranges)
            else:
                found = (len(self.line.findall(self.order.lines, self.order.bounds[chunk],
                                               self.order.bounds[chunk + 1]))
                         if self.line is not None else 0)
                count = found + self.also.get(chunk, 0)
            self.known[chunk] = count
        return count


def _total(copy: AccountCopy, needle: bytes, filters: Filters) -> int:
    """How many keys ``filters`` allow (a status, a token date range, a tagged role)
    hold ``needle``: the copy's lines (those of keys used since too, blanked in last-use
    order alone) counted over the range's span of its token-ordered lines, and the keys
    read again."""
    found = copy.matches(needle, 0, True, filters)
    assert found is not None  # counted whatever the number (count_all)
    return found.count


@dataclass
class Part:
    """The lines of one status (or of all) in an order, that ``line`` matches, counted
    in each chunk (``held``), and the keys read again that hold q there (``fresh``)."""

    copy: AccountCopy
    order: OrderedLines
    sort: str
    line: re.Pattern[bytes]
    held: Sequence[int]
    fresh: list[Fresh]
    descending: bool
    # the token scores the lines must hold (None: any)
    ranges: list[tuple[int, int]] | None = None
    # how many hold q in all, when ``held`` counts the chunks only as they are asked for
    # (ChunkCounts): a page is then looked for from the order's nearer end
    total: int | None = None

    def __post_init__(self) -> None:
        # the keys read again that hold q now, in ascending order
        self.now = sorted((place(self.sort, f.member, f.created, f.score, f.last_used),
                           f.member)
                          for f in self.fresh if f.member is not None)

    @property
    def count(self) -> int:
        return self.total if self.total is not None else sum(self.held) + len(self.now)

    def _bucket_within(self, bucket: int) -> bool | None:
        """Whether every line of date bucket ``bucket`` holds a token score in the
        ranges (True), none does (False), or some may (None: checked one by one)."""
        scores, per = self.copy.scores, per_bucket(self.copy.count)
        first, last = bucket * per, min((bucket + 1) * per, len(scores)) - 1
        if first > last:
            return None
        least, most = scores[first], scores[last]
        if any(low <= least and most < high for low, high in self.ranges or ()):
            return True
        if any(low <= most and least < high for low, high in self.ranges or ()):
            return None
        return False

    def page(self, offset: int, size: int) -> list[str]:
        """The members from the ``offset``-th on, ``size`` of them at most; looked for
        from the other end when that is nearer and the chunks are counted as asked for."""
        count = self.count
        if self.total is not None and 2 * offset + size > count:
            other = count - offset - size
            found = self._page(max(other, 0), size + min(other, 0), not self.descending)
            found.reverse()
            return found
        return self._page(offset, size, self.descending)

    def _page(self, offset: int, size: int, descending: bool) -> list[str]:
        order, now, held = self.order, self.now, self.held
        values = [v for v, _ in now]
        firsts, chunks = order.firsts, list(pairwise(order.bounds))
        # the chunks before the page's are skipped, with the keys read again that come
        # before each chunk's end in this order (``taken`` of them)
        before = taken = 0
        walked = range(len(chunks) - 1, -1, -1) if descending else range(len(chunks))
        for at in walked:
            left = len(now) - taken
            if descending:  # those from the chunk's first line on
                also = left - bisect_left(values, firsts[at], 0, left)
            elif at + 1 < len(chunks):  # those before the next chunk's first line
                also = bisect_left(values, firsts[at + 1], taken) - taken
            else:
                also = left
            if before + held[at] + also > offset:
                break
            before, taken = before + held[at] + also, taken + also
        else:
            at = -1  # the page is past every match
        found: list[tuple[Any, str]] = []
        need = offset - before + size
        lines, prefix = order.lines, self.copy.prefix
        for chunk in (walked[walked.index(at):] if at != -1 else ()):
            if held[chunk]:
                low, high = chunks[chunk]
                starts = [lines.rfind(b"\n", 0, m.start()) + 1
                          for m in self.line.finditer(lines, low, high)]
                if descending:
                    starts.reverse()
                if self.ranges is None:
                    found += [(None, member_at(lines, start, prefix))
                              for start in starts[:need - len(found)]]
                else:
                    for start in starts:
                        if len(found) >= need:
                            break
                        member = member_at(lines, start, prefix)
                        # the line's date bucket says, unless the ranges cut it
                        end = lines.index(b"\n", start)
                        inside = self._bucket_within((lines[end - 2] & 0x3F) << 6
                                                     | lines[end - 1] & 0x3F)
                        if inside is None:
                            score = self.copy.scores[self.copy.line_number(key_of(member))]
                            inside = any(low <= score < high for low, high in self.ranges)
                        if inside:
                            found.append((None, member))
                if len(found) >= need:
                    break
        rest = (now[max(len(now) - taken - need, 0):len(now) - taken] if descending
                else now[taken:taken + need])
        if rest:  # merged in order: the lines read need their places too
            found = [(_place_read(self.copy, self.sort, member), member)
                     for _, member in found]
            found = sorted(found + rest, reverse=descending)
        return [m for _, m in found[offset - before:need]]


def _place_read(copy: AccountCopy, sort: str, member: str) -> Any:
    """The place in ``sort`` of a member read from the lines (its key not read again)."""
    if sort in ("creationDate", "creationDateToken", LAST_USED):
        line = copy.line_number(key_of(member))
        used = copy.used.last_used[line] if copy.used is not None else 0
        return place(sort, member, copy.created[line], copy.scores[line], used)
    return place(sort, member, 0, 0)
