"""An account's copy's lines again in each order the listing keeps (label, creation, token
date and key; last use when a page asks for it: used_order.py), beside the copy's own
(label_copy.py keeps those in token score order): what a line holds and how the orders
are made. No I/O. ordered_pages.py counts q's matches and the filters in them and reads
a page; search.py says when.

Each order's lines are cut into chunks of about CHUNK_BYTES, each chunk keeping its
first line's place in the order and its lines' token scores by tail (tag bytes and
status byte).

A line is the copy's line lowered (the member as the copy lowers it, the prefix every key
shares cut off, then TAG_MARK and its role tag bytes), with its key's status byte after
the tags, so that a status and a tagged role are part of the same regular expression,
then two date bytes: which of DATE_BUCKETS runs of the copy's lines in token score order
it is in. A token date range (a renewal alert level) holds some runs whole and cuts at
most two per status: q's lines in the runs it holds are counted by one regular
expression (their date bytes a byte class), and those of the runs it cuts (~245 lines
each at 1,000,000 keys) are checked one by one. There the chunks are counted only as the
page is looked for, from the order's nearer end (ordered_pages.py), and the total
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

About 40 bytes per key and order: 32 for the lines and their places, 8 for the token
scores (1,000,000 keys of the benchmark: 40 MB each). The orders are made together,
each line once.
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
from os.path import commonprefix
from typing import Any

from .copy_values import INACTIVE_AT, token_date
from .label_copy import BLANK, TAG_BASE, TAG_MARK, AccountCopy, key_of
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
    # what every line of each chunk starts with (its member's part before the tags): a
    # chunk whose every line holds q there is counted from its tails as well, with no
    # pass over its lines (labels made in sequence, or sharing a start, put many such
    # chunks in every order)
    commons: list[bytes]

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
            return {sort: cls(bytearray(b"\n"), [1, 1], [], array("I"), [{}], [b""])
                    for sort in sorts}
        # each line of the copy as kept and lowered (the text starts and ends with '\n')
        as_kept = lines_of(bytes(copy.members))
        per = per_bucket(count)
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
            firsts.append(place(sort, kept_member(named[line], prefix), copy.created[line],
                                 copy.scores[line], used[line]))
        bounds.append(len(body))
        tails, commons = [], []
        for low, high in pairwise(bounds):
            # each distinct tail's scores picked out in C (a chunk holds a few tails)
            ended = TAIL.findall(body, low, high)
            first = bisect_left(places, low)
            numbers = order[first:first + len(ended)]
            scored = list(map(scores.__getitem__, numbers))
            tails.append({tail: array("q", sorted(compress(scored, map(tail.__eq__, ended))))
                          for tail in set(ended)})
            # the lines' common start is that of the least and the greatest of them
            common = commonprefix(list(map(made.__getitem__, numbers))) or b""
            commons.append(common.partition(TAG_MARK)[0])
        release(places)
        return cls(body, bounds, firsts, at, tails, commons)

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
        return [_held(scored, matching.__contains__, ranges) for scored in self.tails]

    def held_in(self, chunk: int, tail: re.Pattern[bytes],
                ranges: list[tuple[int, int]] | None) -> int:
        """:meth:`held` for the chunk ``chunk`` alone."""
        return _held(self.tails[chunk], tail.fullmatch, ranges)

    def all_hold(self, chunk: int, patterns: Sequence[bytes]) -> bool:
        """Whether every line of the chunk ``chunk`` holds one of ``patterns`` before
        its tags (in the start they share; a line blanked since is no longer counted in
        the chunk's tails)."""
        common = self.commons[chunk]
        return any(pattern in common for pattern in patterns)


def _held(scored: dict[bytes, array], matches: Callable[[bytes], object],
          ranges: list[tuple[int, int]] | None) -> int:
    """How many of a chunk's lines (their token scores ``scored`` by tail) end with a
    tail that ``matches`` and hold a token score in one of ``ranges`` (None: any)."""
    if ranges is None:
        return sum(len(s) for t, s in scored.items() if matches(t))
    return sum(bisect_left(s, high) - bisect_left(s, low)
               for t, s in scored.items() if matches(t) for low, high in ranges)


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


def per_bucket(count: int) -> int:
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
    count, per = copy.count, per_bucket(copy.count)
    first, end = bisect_left(copy.scores, low), bisect_left(copy.scores, high)
    whole_from, whole_to = -(-first // per), (end // per if end < count else -(-count // per))
    if whole_from >= whole_to:
        return None, list(range(first, end))
    return (buckets_class(whole_from, whole_to),
            [*range(first, whole_from * per), *range(min(whole_to * per, end), end)])


def kept_member(kept: bytes, prefix: bytes) -> str:
    """A member as the copy keeps it (the prefix cut off), as the label index holds it."""
    return kept.replace(b"\0", b"\0" + prefix, 1).decode()


def member_at(lines: bytearray, start: int, prefix: bytes) -> str:
    """The member of the line starting at ``start`` (the shared prefix put back)."""
    tags = lines.index(TAG_MARK, start)
    whole = lines.find(WHOLE_MARK, start, tags)
    if whole != -1:
        return kept_member(bytes(lines[whole + 1:tags]), prefix)
    case = lines.find(CASE_MARK, start, tags)
    if case != -1:
        label = lines[start:lines.index(b"\0", start, case)]
        return (label + b"\0" + prefix + lines[case + 1:tags]).decode()
    if lines[tags - 1] == UPPER_MARK[0]:
        label, _, rest = bytes(lines[start:tags - 1]).partition(b"\0")
        return (label + b"\0" + prefix + rest.upper()).decode()
    return kept_member(bytes(lines[start:tags]), prefix)


def place(sort: str, member: str, created: int, score: int, last_used: int = 0) -> Any:
    """A key's place in ``sort``, from its member, creation date, token score and last
    use."""
    if sort == "label":
        return member
    if sort in ("appKey", "status"):
        return key_of(member)
    if sort == LAST_USED:
        return last_used, key_of(member)
    return created if sort == "creationDate" else token_date(score), key_of(member)
