"""q's matches, and pages with a status, renewal or role filter, in label, creation,
token date, key and status order, read from the copy's lines again in that order, kept
beside the copy's own (label_copy.py keeps those in token score order). No I/O.

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

A line is the copy's line lowered (the member as the copy lowers it, the prefix every key
shares cut off, then TAG_MARK and its role tag bytes), with its key's status byte after
the tags, so that a status and a tagged role are part of the same regular expression,
then two date bytes: which of DATE_BUCKETS runs of the copy's lines in token score order
it is in. A token date range (a renewal alert level) holds some runs whole and cuts at
most two per status: q's lines in the runs it holds are counted by one regular
expression (their date bytes a byte class), and those of the runs it cuts (~245 lines
each at 1,000,000 keys) are checked one by one. There the chunks are counted only as the
page is looked for, from the order's nearer end (:class:`ChunkCounts`), and the total
comes from the range's span of the copy's own lines, which are in token score order (a
quarter of them for the orange level): a page near either end costs that span's count
and a few chunks, one in the middle half the chunks, where counting every chunk cost
up to twice as much as q alone. The date bytes are UTF-8 continuation bytes, so no
needle is found in them. A line read in the page's chunk is checked against the range
through the copy's index by key only when the range cuts its date bucket.
When lowering changed the key's name, UPPER_MARK comes before TAG_MARK where the name
is its lowered form in capitals (as keygate makes names: a tenth less to scan and keep
at 1,000,000 keys), else CASE_MARK and the name as it is (past the prefix), from which
the member is named; when lowering changed a folded label (which keygate never writes),
WHOLE_MARK and the member as it is. The creation order
is the listing's: creation date, then key. A key read again since the copy was made
(``AccountCopy.fresh``) has its line here blanked as in the token-ordered copy (``at``
says where each of its lines is here), and is searched from what it is now, merged in
order.

With no q, a status, a token date range (a renewal alert level) and a tagged role are
counted from each chunk's ``tails``: its lines' token scores, sorted, by their tag bytes
and status byte (two bisections per chunk for a token date range), so a filtered page at
any depth is found with no pass over the lines; a line read from the page's chunk is
checked against the date range through the copy's index by key. About 40 bytes per key
and order: 32 for the lines and their places, 8 for the token scores (1,000,000 keys of
the benchmark: 40 MB each). The orders are made together, each line once.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, pairwise, repeat
from operator import add, floordiv, ge, itemgetter
from typing import Any

from .copy_values import INACTIVE_AT, Filters, Fresh, Matches, token_date
from .label_copy import BLANK, TAG_BASE, TAG_MARK, AccountCopy
from .records import ACTIVE, INACTIVE
from .steps import lines_of, mapped, release, slices, sorted_in_steps

# the orders kept: the listing's sort names (last-use order, when asked for:
# used_order.py)
ORDERS_KEPT = ("label", "creationDate", "creationDateToken", "appKey")
LAST_USED = "lastUsed"
# a line's tail: its tag bytes and status byte (the date bytes after them left out)
TAIL = re.compile(b"\x02([\x10-\x1f]*)")
# status order is read from the key-ordered lines, one status after the other
STATUS_ORDER_OF = {"status": "appKey"}
# the lines are counted in chunks of about this many bytes (~570 at 1,000,000 keys): a
# page is read from the one it starts in, past those before it
CHUNK_BYTES = 1 << 16
# what a line holds after the lowered member when lowering changed it: a mark alone for
# a key's name that is its lowered form in capitals, the name as it is after another,
# or (a folded label with capitals) the member as it is
UPPER_MARK, CASE_MARK, WHOLE_MARK = b"\x05", b"\x04", b"\x03"
# the status byte, after the role tag bytes
STATUS_BYTE = {ACTIVE: bytes([TAG_BASE]), INACTIVE: bytes([TAG_BASE | 1])}
# after the status byte, two date bytes: the line's place among DATE_BUCKETS runs of the
# copy's lines in token score order, so that q within a token date range is counted in
# the same pass: the runs the range holds whole are a byte class, and the lines of the
# two runs it cuts are checked one by one (~245 a run at 1,000,000 keys). Six bits of it
# in each byte, over 0x80: UTF-8 continuation bytes, which no needle (UTF-8, with no
# control character) starts with, so that no needle is found in them
DATE_BUCKETS, DATE_WIDTH = 1 << 12, 2
DATE_BYTES = b"[\x80-\xbf]{2}"


@dataclass
class OrderedLines:
    """An account's copy's lines in one of ORDERS_KEPT (see the module notes), where the chunks
    they are counted in start (each at a line's start; the last entry the end), each
    chunk's first line's place in the order, and where the line of each of the copy's
    lines is here (``at``, by the copy's line number)."""

    lines: bytearray
    bounds: list[int]
    firsts: list[Any]
    at: array
    # the token scores of each chunk's lines, sorted, by their tail (tag bytes and
    # status byte): a page with no q is counted from them, with no pass over the lines,
    # within a token date range too (a renewal alert level)
    tails: list[dict[bytes, array]]

    @classmethod
    def of(cls, copy: AccountCopy, sort: str, last_used: Sequence[int] | None = None,
           ) -> OrderedLines:
        """The lines of ``copy`` in the order ``sort``; in last-use order, by
        ``last_used`` (each line's, by its number). Blanked lines (keys read again) are
        left out: their ``at`` is 0."""
        return cls.all_of(copy, (sort,), last_used)[sort]

    @classmethod
    def all_of(cls, copy: AccountCopy, sorts: Sequence[str],
               last_used: Sequence[int] | None = None) -> dict[str, OrderedLines]:
        """:meth:`of` for each of ``sorts``: each line made once for all of them, the
        keys sorted once for the orders by key and by a date, each step over the lines a
        map in C over at most a step's lines (steps.py). At 1,000,000 keys the four
        orders took ~6 s instead of 12.6, with ~200 MB held meanwhile."""
        count = copy.count
        if not count:
            return {sort: cls(bytearray(b"\n"), [1, 1], [], array("I"), [{}])
                    for sort in sorts}
        # each line of the copy as kept and lowered (the text starts and ends with '\n')
        as_kept = lines_of(bytes(copy.members))
        per = _per_bucket(count)
        status_of = {False: STATUS_BYTE[ACTIVE], True: STATUS_BYTE[INACTIVE]}
        statuses = map(status_of.__getitem__, map(ge, copy.scores, repeat(INACTIVE_AT)))
        date_of = [date_bytes(bucket) for bucket in range(-(-count // per))]
        dates = map(date_of.__getitem__, map(floordiv, range(count), repeat(per)))
        made = list(map(_line, lines_of(bytes(copy.lowered)), as_kept,
                        map(add, statuses, dates)))
        kept = list(compress(range(count), map(BLANK[0].__ne__, map(itemgetter(0), as_kept))))
        # each line's member (a blanked line's: its blank) and key
        named = mapped(_before_tags, as_kept)
        release(as_kept)
        keys = mapped(_key_part, named)
        by_key = sorted_in_steps(kept, keys.__getitem__) if set(sorts) - {"label"} else []
        release(keys)
        orders = {}
        for sort in sorts:
            if sort == "label":
                order = sorted_in_steps(kept, named.__getitem__)
            elif sort == "appKey":
                order = by_key
            else:  # a date (creation, token, last use), then key: a stable sort
                order = sorted_in_steps(by_key, (
                    copy.created if sort == "creationDate"
                    else last_used if sort == LAST_USED and last_used is not None
                    else list(map(token_date, copy.scores))).__getitem__)
            orders[sort] = cls._made(copy, sort, order, made, named, last_used)
        release(made, named, kept, by_key)
        return orders

    @classmethod
    def _made(cls, copy: AccountCopy, sort: str, order: list[int], made: list[bytes],
              named: list[bytes], last_used: Sequence[int] | None) -> OrderedLines:
        """The ordered lines of ``copy``'s lines ``order`` (each made: ``made``; its
        member: ``named``)."""
        count, scores, prefix = copy.count, copy.scores, copy.prefix
        # a step at a time (steps.py)
        in_order = mapped(made.__getitem__, order)
        steps = list(slices(len(in_order)))
        body = bytearray(b"\n" + b"\n".join([b"\n".join(in_order[step]) for step in steps])
                         + b"\n")
        # where each line starts here, in order; then by the copy's line number
        places: list[int] = []
        start = 1
        for step in steps:
            found = list(accumulate(map(add, map(len, in_order[step]), repeat(1)),
                                    initial=start))
            start = found.pop()
            places += found
        release(in_order)
        at = array("I", bytes(4 * count))
        for step in steps:
            deque(map(at.__setitem__, order[step], places[step]), maxlen=0)
        used = last_used if last_used is not None else bytes(count)
        # each chunk's start: the first line starting at or past CHUNK_BYTES after the
        # previous chunk's
        bounds = [1]
        while (cut := body.find(b"\n", bounds[-1] + CHUNK_BYTES - 1) + 1) and cut < len(body):
            bounds.append(cut)
        firsts = []
        for bound in bounds:
            line = order[bisect_left(places, bound)]
            firsts.append(_place(sort, _member(named[line], prefix), copy.created[line],
                                 copy.scores[line], used[line]))
        bounds.append(len(body))
        tails = []
        for low, high in pairwise(bounds):
            # each distinct tail's scores picked out in C (a chunk holds a few tails)
            ended = TAIL.findall(body, low, high)
            first = bisect_left(places, low)
            scored = list(map(scores.__getitem__, order[first:first + len(ended)]))
            tails.append({tail: array("q", sorted(compress(scored, map(tail.__eq__, ended))))
                          for tail in set(ended)})
        release(places)
        return cls(body, bounds, firsts, at, tails)

    @property
    def nbytes(self) -> int:
        return len(self.lines) + len(self.at) * self.at.itemsize + sum(
            len(scores) * scores.itemsize for scored in self.tails for scores in scored.values())

    def blank(self, line: int, score: int) -> None:
        """Blank the line of the copy's line ``line`` (its key read again; its token
        score as the copy holds it), unless it is blank or left out here already."""
        start = self.at[line]
        if not start or self.lines[start] == BLANK[0]:
            return
        end = self.lines.index(b"\n", start)
        tail = bytes(self.lines[self.lines.index(TAG_MARK, start) + 1:end - DATE_WIDTH])
        scored = self.tails[bisect_right(self.bounds, start) - 1][tail]
        del scored[bisect_left(scored, score)]
        self.lines[start:end] = BLANK * (end - start)

    def held(self, tail: re.Pattern[bytes], ranges: list[tuple[int, int]] | None) -> list[int]:
        """How many lines of each chunk end with a tail that ``tail`` matches (and hold
        a token score in one of ``ranges``; None: any)."""
        matching = {t for scored in self.tails for t in scored if tail.fullmatch(t)}
        if ranges is None:
            return [sum(len(s) for t, s in scored.items() if t in matching)
                    for scored in self.tails]
        return [sum(bisect_left(s, high) - bisect_left(s, low)
                    for t, s in scored.items() if t in matching for low, high in ranges)
                for scored in self.tails]


def _before_tags(line: bytes) -> bytes:
    return line.partition(TAG_MARK)[0]


def _key_part(member: bytes) -> bytes:
    return member.partition(b"\0")[2]


def _line(lowered: bytes, line: bytes, status: bytes) -> bytes:
    """A copy's line here: lowered, what lowering changed, its tags, its status byte
    and date bytes (``status``)."""
    if lowered == line:
        return lowered + status
    cut = lowered.index(TAG_MARK)
    low, tags, member = lowered[:cut], lowered[cut:], line[:cut]
    label, _, rest = member.partition(b"\0")
    if low.startswith(label + b"\0"):
        if low[len(label) + 1:].upper() == rest:
            return low + UPPER_MARK + tags + status
        return low + CASE_MARK + rest + tags + status
    return low + WHOLE_MARK + member + tags + status


def _per_bucket(count: int) -> int:
    """How many of a copy's ``count`` lines (in token score order) each date bucket
    holds."""
    return max(1, -(-count // DATE_BUCKETS))


def date_bytes(bucket: int) -> bytes:
    return bytes((0x80 | bucket >> 6, 0x80 | bucket & 0x3F))


def buckets_class(first: int, end: int) -> bytes:
    """A regular expression for the date bytes of the buckets ``first`` to ``end``
    (excluded; at least one)."""
    (high, low), (last_high, last_low) = date_bytes(first), date_bytes(end - 1)
    if high == last_high:
        return b"%c[%c-%c]" % (high, low, last_low)
    between = (b"|[%c-%c][\x80-\xbf]" % (high + 1, last_high - 1)
               if high + 1 < last_high else b"")
    return b"(?:%c[%c-\xbf]%s|%c[\x80-%c])" % (high, low, between, last_high, last_low)


def dated_runs(copy: AccountCopy, low: int, high: int) -> tuple[bytes | None, list[int]]:
    """The lines whose token scores are in [``low``, ``high``): a regular expression for
    the date bytes of the buckets they fill whole (None: none), and the copy's numbers of
    the others (in the two buckets the range cuts)."""
    count, per = copy.count, _per_bucket(copy.count)
    first, end = bisect_left(copy.scores, low), bisect_left(copy.scores, high)
    whole_from, whole_to = -(-first // per), (end // per if end < count else -(-count // per))
    if whole_from >= whole_to:
        return None, list(range(first, end))
    return (buckets_class(whole_from, whole_to),
            [*range(first, whole_from * per), *range(min(whole_to * per, end), end)])


def _member(kept: bytes, prefix: bytes) -> str:
    """A member as the copy keeps it (the prefix cut off), as the label index holds it."""
    return kept.replace(b"\0", b"\0" + prefix, 1).decode()


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

    parts = ([filters.status] if sort != "status" or filters.status
             else [INACTIVE, ACTIVE] if descending else [ACTIVE, INACTIVE])
    held: dict[str | None, Sequence[int]]
    totals: dict[str | None, int] = {}
    if patterns is None:  # no q, or one every key holds: counted from each chunk's tails
        held = {status: order.held(re.compile(tags + status_pattern(status)),
                                   ranges_of(status))
                for status in parts}
    elif dated:
        # counted chunk by chunk as the page is looked for (from the order's nearer end),
        # the totals from the span of the range in the copy's own lines (token order)
        held = _dated_held(copy, order, line_of, parts, ranges_of)
        totals = {status: _total(copy, needle, Filters(status, filters.dates, filters.role))
                  for status in parts}
    else:
        held = _counted(order, line_of, parts)
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
             parts: list[str | None]) -> dict[str | None, Sequence[int]]:
    """How many lines of each chunk ``line_of`` matches, by status of ``parts``: one
    pass, both statuses' lines told apart by their status byte, caught."""
    chunks = pairwise(order.bounds)
    if len(parts) == 1:
        line = line_of(parts[0])
        return {parts[0]: [len(line.findall(order.lines, low, high)) for low, high in chunks]}
    held: dict[str | None, list[int]] = {ACTIVE: [], INACTIVE: []}
    line = line_of(None, caught=True)
    for low, high in chunks:
        statuses = line.findall(order.lines, low, high)
        active = statuses.count(STATUS_BYTE[ACTIVE])
        held[ACTIVE].append(active)
        held[INACTIVE].append(len(statuses) - active)
    return held


def _dated_held(copy: AccountCopy, order: OrderedLines,
                line_of: Callable[..., re.Pattern[bytes]], parts: list[str | None],
                ranges_of: Callable[[str | None], list[tuple[int, int]] | None],
                ) -> dict[str | None, Sequence[int]]:
    """How many lines of each chunk hold q (``line_of``, by status) and a token score in
    the ranges of each of ``parts`` (statuses), each chunk counted when first asked
    for: the lines in the date buckets the ranges fill whole in a pass over the chunk
    (their date bytes a byte class); those of the buckets they cut checked one by one
    (:func:`dated_runs`), here."""
    held: dict[str | None, Sequence[int]] = {}
    for status in parts:
        classes: list[bytes] = []
        cut: dict[int, int] = {}
        line = line_of(status)
        for low, high in ranges_of(status) or ():
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
        held[status] = ChunkCounts(order, whole_lines, cut)
    return held


class ChunkCounts(Sequence[int]):
    """The lines of each chunk of ``order`` that ``line`` matches (None: none), plus
    ``also`` (by chunk), each chunk counted once, when first asked for."""

    def __init__(self, order: OrderedLines, line: re.Pattern[bytes] | None,
                 also: dict[int, int]):
        self.order, self.line, self.also = order, line, also
        self.known: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.order.bounds) - 1

    def __getitem__(self, chunk):  # type: ignore[override]
        if isinstance(chunk, slice):
            return [self[i] for i in range(*chunk.indices(len(self)))]
        count = self.known.get(chunk)
        if count is None:
            found = (len(self.line.findall(self.order.lines, self.order.bounds[chunk],
                                           self.order.bounds[chunk + 1]))
                     if self.line is not None else 0)
            count = self.known[chunk] = found + self.also.get(chunk, 0)
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
        self.now = sorted((_place(self.sort, f.member, f.created, f.score, f.last_used),
                           f.member)
                          for f in self.fresh if f.member is not None)

    @property
    def count(self) -> int:
        return self.total if self.total is not None else sum(self.held) + len(self.now)

    def _bucket_within(self, bucket: int) -> bool | None:
        """Whether every line of date bucket ``bucket`` holds a token score in the
        ranges (True), none does (False), or some may (None: checked one by one)."""
        scores, per = self.copy.scores, _per_bucket(self.copy.count)
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
                    found += [(None, _member_at(lines, start, prefix))
                              for start in starts[:need - len(found)]]
                else:
                    for start in starts:
                        if len(found) >= need:
                            break
                        member = _member_at(lines, start, prefix)
                        # the line's date bucket says, unless the ranges cut it
                        end = lines.index(b"\n", start)
                        inside = self._bucket_within((lines[end - 2] & 0x3F) << 6
                                                     | lines[end - 1] & 0x3F)
                        if inside is None:
                            score = self.copy.scores[self.copy.line_number(_key(member))]
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


def _member_at(lines: bytearray, start: int, prefix: bytes) -> str:
    """The member of the line starting at ``start`` (the shared prefix put back)."""
    tags = lines.index(TAG_MARK, start)
    whole = lines.find(WHOLE_MARK, start, tags)
    if whole != -1:
        return _member(bytes(lines[whole + 1:tags]), prefix)
    case = lines.find(CASE_MARK, start, tags)
    if case != -1:
        label = lines[start:lines.index(b"\0", start, case)]
        return (label + b"\0" + prefix + lines[case + 1:tags]).decode()
    if lines[tags - 1] == UPPER_MARK[0]:
        label, _, rest = bytes(lines[start:tags - 1]).partition(b"\0")
        return (label + b"\0" + prefix + rest.upper()).decode()
    return _member(bytes(lines[start:tags]), prefix)


def _place(sort: str, member: str, created: int, score: int, last_used: int = 0) -> Any:
    """A key's place in ``sort``, from its member, creation date, token score and last
    use."""
    if sort == "label":
        return member
    if sort in ("appKey", "status"):
        return _key(member)
    if sort == LAST_USED:
        return last_used, _key(member)
    return created if sort == "creationDate" else token_date(score), _key(member)


def _place_read(copy: AccountCopy, sort: str, member: str) -> Any:
    """The place in ``sort`` of a member read from the lines (its key not read again)."""
    if sort in ("creationDate", "creationDateToken", LAST_USED):
        line = copy.line_number(_key(member))
        used = copy.used.last_used[line] if copy.used is not None else 0
        return _place(sort, member, copy.created[line], copy.scores[line], used)
    return _place(sort, member, 0, 0)


def _key(member: str) -> str:
    return member.partition("\0")[2]
