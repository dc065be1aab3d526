"""One account's copy of its label index, kept in a process's memory, and q's matches
in it: the structure alone, with no I/O (search.py keeps the copies and reads them from
Redis, and says why a process keeps one).

The copy is the label index's members ('folded label NUL key') as lines of two byte
strings, as they are and lowered as Lua's ``string.lower`` lowers them (ASCII only, as
the script's pass in Redis does: a match means the same), in the order of the keys'
token scores (scripts/status_runs.lua: the active keys' by token date, then the inactive
keys'), so that a status filter and a token date range (a renewal alert level) are one
span of lines per status, found by bisecting the scores. Each line ends with its key's
roles as tag bytes (one bit per role the copy tags: the account's largest roles), so that
a role filter is part of the same regular expression. Each line's creation date is kept
beside it, so q's matches are put in creation order here too. A key read again since the
copy was made is searched from what it is now, kept aside, and its line is blanked in place
(its length, and so every other line's place, kept), so that searching and counting stay
single passes in C over each span: ``bytes.find`` and ``bytes.count``, and for the number
of lines holding q (and a role) a regular expression that takes in the rest of each
matching line. The copy's index by key (key_index.py) finds a key's line, for
blanking it and for checking q on a given set of keys (a role's holders).
"""

from __future__ import annotations

import re
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import add, itemgetter, mul, sub
from typing import TYPE_CHECKING

from .copy_values import ANY_KEY, Filters, Fresh, Matches
from .key_index import LINES_PER_START, KeyIndex
from .steps import mapped, release, slices

if TYPE_CHECKING:
    from .ordered_lines import OrderedLines
    from .used_order import UsedOrder

# the listing's orders that the copy puts q's matches in itself: those of what each
# line holds, and creation order (a creation date never changes: the copy keeps each
# line's); the others need a number per match, which the listing script reads
ORDERS = ("label", "appKey", "creationDate")
# what a line read again is overwritten with: no label or key holds it
BLANK = b"\x01"
# where a line's tag bytes begin (after the member), and what each is: four roles' bits
# over TAG_BASE (control characters that no label or key holds)
TAG_MARK, TAG_BASE, ROLES_PER_TAG = b"\x02", 0x10, 4
# the roles a copy tags, at most (the account's largest: a smaller one's holders are few
# enough to check one by one, AccountCopy.among)
TAGGED_ROLES = 16
# q's matches are first estimated from this part of the copy (one byte in this many),
# in this many slices spread over it
SAMPLED_PART, SAMPLE_SLICES = 8, 64


@dataclass
class AccountCopy:
    """One account's label index as of the event ``last_event``, in token score order,
    and the keys read again since.

    The members are kept without the prefix that every key of the copy shares
    (``kgk-acme-`` for the names keygate gives): a third of the bytes a search scans. A
    needle is then found in three places: in a member as kept; across the prefix's
    end, as a head the prefix ends with and a tail the rest of the key starts with; and
    in the prefix itself, where every key of the copy holds it.

    A key read again is searched from what it is now, and its line in the copy is
    blanked (overwritten with BLANK, which no needle holds, its length and so every
    other line's place kept): searches and counts then run in C over the copy as it is,
    with no key to leave out one by one."""

    # '\n' + 'folded label NUL key without the prefix' + TAG_MARK + tag bytes + '\n', ...
    members: bytearray
    lowered: bytearray
    prefix: bytes
    scores: array  # each line's token score, ascending
    created: array  # each line's creation date
    # where every LINES_PER_START-th line starts: a list, which bisect reads twice as
    # fast as an array (no number made per look)
    starts: list[int]
    roles: tuple[str, ...]  # the tagged roles: role i is bit i of a line's tag bytes
    last_event: str
    index: KeyIndex
    fresh: dict[str, Fresh] = field(default_factory=dict)
    # the lines again in the listing's label and creation orders (ordered_lines.py), by
    # the sort's name, once made
    orders: dict[str, OrderedLines] = field(default_factory=dict)
    # the numbers of the lines blanked, in the order they were
    blanked: list[int] = field(default_factory=list)
    # the last use of every line and the keys used since, once the lines are kept in
    # last-use order too (used_order.py)
    used: UsedOrder | None = None

    @classmethod
    def of(cls, members: Sequence[str], last_event: str,
           scores: Sequence[int] | None = None, role_bits: Sequence[int] | None = None,
           roles: Sequence[str] = (), created: Sequence[int] | None = None) -> AccountCopy:
        """The copy of ``members``, in the order of their keys' token ``scores`` (each
        member's; none given: all 0, active), each tagged with the bits of the ``roles``
        it holds (``role_bits``: bit i is ``roles[i]``; none given: none), with its
        key's creation date (``created``; none given: all 0)."""
        roles = tuple(roles[:TAGGED_ROLES])
        width = _tag_width(len(roles))
        count = len(members)
        scores = scores if scores is not None else [0] * count
        role_bits = role_bits if role_bits is not None else [0] * count
        created = created if created is not None else [0] * count
        order = sorted(range(count), key=scores.__getitem__)
        mark = TAG_MARK.decode()
        tags = {bits: mark + "".join(chr(TAG_BASE | (bits >> (ROLES_PER_TAG * j)) & 0xF)
                                     for j in range(width))
                for bits in set(role_bits)}
        lines = mapped(str.__add__, mapped(members.__getitem__, order),
                       mapped(tags.__getitem__, mapped(role_bits.__getitem__, order)))
        # joined, encoded, cut and lowered a step's lines at a time (steps.py)
        parts = [("\n".join(lines[step])).encode() for step in slices(count)]
        release(lines)
        prefix = _shared_prefix(parts, count)
        if prefix:  # each member holds one NUL, before its key
            parts = [part.replace(b"\0" + prefix, b"\0") for part in parts]
        joined = b"\n" + b"\n".join(parts) + b"\n" if count else b"\n"
        lowered = b"\n" + b"\n".join([part.lower() for part in parts]) + b"\n" if count else b"\n"
        del parts
        index, starts = KeyIndex.of(joined, TAG_MARK)
        return cls(bytearray(joined), bytearray(lowered), prefix,
                   array("q", map(scores.__getitem__, order)),
                   array("q", map(created.__getitem__, order)), starts, roles, last_event,
                   index)

    @property
    def count(self) -> int:
        return len(self.scores)

    @property
    def nbytes(self) -> int:
        """The memory the copy's strings and arrays hold (not the keys read again)."""
        arrays = (self.scores, self.created, self.index.entries, self.index.buckets)
        return len(self.members) + len(self.lowered) + sum(
            len(part) * part.itemsize for part in arrays) + sys.getsizeof(self.starts) + sum(
            map(sys.getsizeof, self.starts)) + sum(o.nbytes for o in self.orders.values()) + (
            len(self.used.last_used) * 8 if self.used is not None else 0)

    @property
    def tag_width(self) -> int:
        return _tag_width(len(self.roles))

    def tags(self, role: str) -> bool:
        """Whether the copy's lines say which keys hold ``role``."""
        return role in self.roles

    def read_again(self, app_key: str, member: str | None, token_score: int = 0,
                   roles: Iterable[str] = (), created: int = 0, last_used: int = 0) -> None:
        """``app_key`` is now ``member`` (None: it has none, deleted or not in the
        account), with that token score, roles, creation date and last use: searched
        from them, its line in the copy blanked."""
        prefix = self.prefix.decode()
        line = (self._line_of(app_key[len(prefix):].encode())
                if app_key.startswith(prefix) else None)
        if self.used is not None:  # a use taken in since may be newer than the read
            moved = self.used.moved.pop(app_key, None)
            last_used = max(last_used, moved.last_used if moved else 0)
        self.fresh[app_key] = Fresh(member, token_score, frozenset(roles), created, last_used,
                                    member.encode().lower() if member is not None else b"")
        if line is not None:
            start, member_end, _ = line
            end = member_end + 1 + self.tag_width  # its tag bytes too
            number = self._number_of(start)
            for order in self.orders.values():
                order.blank(number, self.scores[number])
            self.members[start:end] = self.lowered[start:end] = BLANK * (end - start)
            self.blanked.append(number)

    def line_read(self, app_key: str) -> tuple[int, Fresh] | None:
        """The number of the line of ``app_key`` (None: the copy holds none, or it was
        read again) and what the line says of it, as a key read again would."""
        prefix = self.prefix
        rest = app_key.encode()
        if not rest.startswith(prefix):
            return None
        line = self._line_of(rest[len(prefix):])
        if line is None:
            return None
        start, member_end, nul = line
        members, number = self.members, self._number_of(start)
        tags = members[member_end + 1:member_end + 1 + self.tag_width]
        roles = frozenset(role for i, role in enumerate(self.roles)
                          if tags[i // ROLES_PER_TAG] & (1 << i % ROLES_PER_TAG))
        member = members[start:nul + 1] + prefix + members[nul + 1:member_end]
        return number, Fresh(member.decode(), self.scores[number], roles,
                             self.created[number], lowered=member.lower())

    def line_number(self, app_key: str) -> int:
        """The number of the line of a key the copy holds a line for (not read again)."""
        prefix = self.prefix.decode()
        line = self._line_of(app_key[len(prefix):].encode())
        if line is None or not app_key.startswith(prefix):
            raise KeyError(app_key)
        return self._number_of(line[0])

    def _number_of(self, start: int) -> int:
        """The number (0-based, in score order) of the line starting at ``start``."""
        block = bisect_right(self.starts, start) - 1
        return block * LINES_PER_START + self.members.count(b"\n", self.starts[block], start)

    def _start(self, line: int) -> int:
        """Where line ``line`` (0-based, in score order) starts; the copy's end past the
        last."""
        if line >= len(self.scores):
            return len(self.members)
        at, members = self.starts[line // LINES_PER_START], self.members
        for _ in range(line % LINES_PER_START):
            at = members.index(b"\n", at) + 1
        return at

    def spans_of(self, filters: Filters) -> list[tuple[int, int]]:
        """Where the lines of the keys whose token scores ``filters`` allow are: one span
        per status."""
        spans = []
        for low, high in filters.score_ranges:
            first, last = bisect_left(self.scores, low), bisect_left(self.scores, high)
            if first < last:
                spans.append((self._start(first), self._start(last)))
        return spans

    def within(self, filters: Filters) -> int:
        """How many lines the token scores ``filters`` allow hold (blanked ones
        included; their roles not looked at)."""
        return sum(bisect_left(self.scores, high) - bisect_left(self.scores, low)
                   for low, high in filters.score_ranges)

    def tag_pattern(self, role: str | None) -> bytes:
        """A regular expression for the tag bytes of a line whose key holds ``role``
        (one of the tagged roles; None: any key)."""
        if role is None:
            return re.escape(TAG_MARK)
        byte, bit = divmod(self.roles.index(role), ROLES_PER_TAG)
        holding = bytes(v for v in range(TAG_BASE, TAG_BASE + 16) if v & (1 << bit))
        return (re.escape(TAG_MARK) + b"[\x10-\x1f]{%d}" % byte + b"[" + holding + b"]")

    def tag_bit(self, role: str) -> tuple[int, int]:
        """Which of a line's tag bytes says whether its key holds ``role`` (a tagged
        role), and the bit in it."""
        byte, bit = divmod(self.roles.index(role), ROLES_PER_TAG)
        return byte, 1 << bit

    def holds(self, member_end: int, role: str | None) -> bool:
        """Whether the key of the line whose member ends at ``member_end`` holds
        ``role`` (None: any key)."""
        if role is None:
            return True
        byte, bit = self.tag_bit(role)
        return bool(self.lowered[member_end + 1 + byte] & bit)

    def _line_of(self, rest: bytes) -> tuple[int, int, int] | None:
        """Where the line of the key whose name past the shared prefix is ``rest``
        starts, ends (its member's end: its tag bytes follow), and holds its NUL; None
        when the copy holds none (a key made since, or read again)."""
        index, buckets, members = self.index.entries, self.index.buckets, self.members
        hashed = hash(rest) & 0xFFFFFFFF
        top = hashed >> 16
        end_of_bucket = buckets[top + 1]
        at = bisect_left(index, hashed << 32, buckets[top], end_of_bucket)
        width = self.tag_width
        while at < end_of_bucket and index[at] >> 32 == hashed:
            start = index[at] & 0xFFFFFFFF
            end = members.index(b"\n", start) - width - 1
            nul = members.find(b"\0", start, end)  # none in a blanked line
            if nul != -1 and members[nul + 1:end] == rest:
                return start, end, nul
            at += 1
        return None

    def patterns_of(self, needle: bytes) -> list[bytes] | None:
        """What a line holding ``needle`` (lowered) holds as kept, the shared prefix cut
        off: the needle, or its tail after the NUL when its head ends the prefix; None
        when the prefix holds it (every key does)."""
        lowered_prefix = self.prefix.lower()
        if needle in lowered_prefix:
            return None
        return [needle] + [b"\0" + needle[i:] for i in range(1, len(needle))
                           if lowered_prefix.endswith(needle[:i])]

    def estimate(self, needle: bytes, filters: Filters = ANY_KEY) -> int:
        """About how many keys ``filters`` allow (a tagged role only) hold ``needle``,
        from a sample of one byte in SAMPLED_PART (all of them when the prefix holds
        it)."""
        patterns = self.patterns_of(needle)
        if patterns is None:
            return self.within(filters)
        line = (line_pattern(patterns, self.tag_pattern(filters.role))
                if filters.role is not None else None)
        return sum(_estimate(self.lowered, patterns, low, high, line)
                   for low, high in self.spans_of(filters))

    def fresh_holding(self, needle: bytes, filters: Filters = ANY_KEY,
                      in_use_order: bool = False) -> list[Fresh]:
        """The keys read again since the copy was made whose member now holds ``needle``
        (lowered) and whose token score and roles ``filters`` allow; ``in_use_order``:
        with the keys used since (their lines blanked in last-use order alone)."""
        fresh: Iterable[Fresh] = self.fresh.values()
        if in_use_order and self.used is not None:  # (a key read again is moved no more)
            fresh = chain(fresh, self.used.moved.values())
        if not needle:
            return [f for f in fresh if f.member is not None and filters.allow(f.score, f.roles)]
        return [f for f in fresh
                if f.member is not None and needle in f.lowered and filters.allow(f.score, f.roles)]

    def matches(self, needle: bytes, keep: int, count_all: bool,
                filters: Filters = ANY_KEY) -> Matches | None:
        """The keys that ``filters`` allow (a tagged role only) whose member holds
        ``needle`` (lowered, with no control character), and how many: their members
        only up to ``keep`` of them (past it, None), and None altogether when more match
        and ``count_all`` is false; their creation dates worked out when asked for."""
        fresh = self.fresh_holding(needle, filters)
        fresh_found = [f.member for f in fresh]
        spans, role = self.spans_of(filters), filters.role
        tag = self.tag_pattern(role) if role is not None else b""
        patterns = self.patterns_of(needle)
        if patterns is None:
            return self._all_match(keep, count_all, fresh, spans, role)
        lowered = self.lowered

        def counted() -> int:  # the lines holding q (and the role), counted in C
            return sum(_lines_holding(lowered, patterns, low, high, tag)
                       for low, high in spans) + len(fresh_found)

        # Estimated first from a sample of the copy: a whole count costs as much as the
        # search itself (~15 ms at 1,000,000 keys), so it is made only when the sample
        # says there are more than ``keep`` (or the search finds more). With a role, the
        # sample's lines that hold q and the role (q alone may match ten times more).
        line = line_pattern(patterns, tag) if role is not None else None
        if sum(_estimate(lowered, patterns, low, high, line) for low, high in spans) > keep:
            if count_all:
                count = counted()
                if count > keep:
                    return Matches(None, count)
            # not counted: a count of the patterns' occurrences (in C, a bound on the
            # members holding them) spares naming up to ``keep`` keys only to drop them
            elif role is None and sum(lowered.count(pattern, low, high)
                                      for pattern in patterns
                                      for low, high in spans) + len(fresh_found) > keep:
                return None
        found: list[bytearray] = []  # lines as kept, made members together at the end
        found_at: list[int] = []  # where they start
        members, room = self.members, keep - len(fresh_found)
        for start, end in self._holding(patterns, spans, role):
            if len(found) >= room:  # more than ``keep``, which the first part did not show
                break
            found.append(members[start:end])
            found_at.append(start)
        else:
            if room >= 0:
                return Matches(self._members_of(found) + fresh_found,
                               len(found) + len(fresh_found),
                               dates=lambda: self._created_at(found_at)
                               + [f.created for f in fresh])
        if not count_all:
            return None
        return Matches(None, counted())

    def ordered(self, found: Matches, sort: str, descending: bool) -> Matches | None:
        """``found`` in the listing's order ``sort`` (one of ORDERS), as
        scripts/list_keys.lua orders them (code point order is UTF-8's byte order,
        Redis's); None when they cannot be (not named, or another order)."""
        if found.members is None or sort not in ORDERS:
            return None
        if sort == "label":  # the label index's order: its members'
            ordered = sorted(found.members, reverse=descending)
        elif sort == "appKey":
            ordered = sorted(found.members, key=key_of, reverse=descending)
        elif found.dates is None:
            return None
        else:  # by creation date, then key (the script's order_by), in C
            keys = map(itemgetter(2), map(str.partition, found.members, repeat("\0")))
            ordered = list(map(itemgetter(2), sorted(
                zip(found.dates(), keys, found.members, strict=True), reverse=descending)))
        return Matches(ordered, found.count, ordered=True)

    def _created_at(self, line_starts: list[int]) -> list[int]:
        """The creation dates of the lines that start at ``line_starts``: each line's
        number found in C (the nearest kept start before it, then the newlines between),
        no Python line run per line."""
        kept = self.starts
        blocks = list(map(sub, map(bisect_right, repeat(kept), line_starts), repeat(1)))
        between = map(self.members.count, repeat(b"\n"), map(kept.__getitem__, blocks),
                      line_starts)
        lines = map(add, map(mul, blocks, repeat(LINES_PER_START)), between)
        return list(map(self.created.__getitem__, lines))

    def _members_of(self, lines: list[bytearray]) -> list[str]:
        """Lines as kept (their members alone), as members: the prefix put back, each
        decoded (in C, for all at once: a step per line in Python costs as much as
        finding it)."""
        if not lines:
            return []
        return (b"\n".join(lines).replace(b"\0", b"\0" + self.prefix)
                .decode().split("\n"))

    async def among(self, needle: bytes, keys: Iterable[str]) -> Matches | None:
        """Which of ``keys`` hold ``needle`` (as :meth:`matches`, their members), in the
        order given; None when one of them is not in the copy (made after it and not
        read again since: the caller then leaves q to the script)."""
        members, lowered, fresh = self.members, self.lowered, self.fresh
        prefix, lowered_prefix = self.prefix.decode(), self.prefix.lower()
        every = needle in lowered_prefix
        # a needle that starts in the prefix and ends in the rest of the key
        crossing = not every and any(lowered_prefix.endswith(needle[:i])
                                     for i in range(1, len(needle)))
        found: list[str] = []
        cut = len(prefix)
        for app_key in keys:
            if app_key in fresh:
                member = fresh[app_key].member
                if member is not None and needle in member.encode().lower():
                    found.append(member)
                continue
            line = self._line_of(app_key[cut:].encode()) if app_key.startswith(prefix) else None
            if line is None:
                return None
            start, end, nul = line
            held = every or needle in lowered[start:end] or (
                crossing and needle in lowered[start:nul + 1] + lowered_prefix
                + lowered[nul + 1:end])
            if held:
                found.append((members[start:nul + 1] + self.prefix
                              + members[nul + 1:end]).decode())
        return Matches(found, len(found))

    def _holding(self, patterns: list[bytes], spans: list[tuple[int, int]],
                 role: str | None) -> Iterator[tuple[int, int]]:
        """Where the member of each line in ``spans`` that holds one of ``patterns``
        (and whose key holds ``role``) starts and ends, once."""
        lowered = self.lowered
        if role is not None:
            # found in C by the regular expression of :func:`_lines_holding` (a line
            # matched at most once), so that a line holding q whose key does not hold
            # the role costs no step in Python
            line = line_pattern(patterns, self.tag_pattern(role))
            for low, high in spans:
                for found in line.finditer(lowered, low, high):
                    at = found.start()
                    yield lowered.rfind(b"\n", 0, at) + 1, lowered.index(TAG_MARK, at)
            return
        # bytes.find scans faster than the regular expression (~14 against ~17 ms for
        # 11,111 matches at 1,000,000 keys); a member found by one pattern may be found
        # by another: remembered only then
        seen: set[int] | None = set() if len(patterns) > 1 else None
        for low, high in spans:
            for pattern in patterns:
                at = lowered.find(pattern, low, high)
                while at != -1:
                    start = lowered.rfind(b"\n", 0, at) + 1
                    end = lowered.index(TAG_MARK, at)
                    if seen is None:
                        yield start, end
                    elif start not in seen:
                        seen.add(start)
                        yield start, end
                    at = lowered.find(pattern, end, high)

    def _all_match(self, keep: int, count_all: bool, fresh: list[Fresh],
                   spans: list[tuple[int, int]], role: str | None) -> Matches | None:
        """Every key of the copy holds the needle (in the prefix): those in ``spans``
        (holding ``role``) whose lines are not blanked, and the keys read again that hold
        it (``fresh``)."""
        # a blanked line has no tag mark left
        tagged = re.compile(self.tag_pattern(role))
        count = sum(len(tagged.findall(self.lowered, low, high))
                    for low, high in spans) + len(fresh)
        if count > keep:
            return Matches(None, count) if count_all else None
        members, width = self.members, self.tag_width
        lines = [(s, e) for low, high in spans for s, e in _lines(members, low, high)
                 if not members.startswith(BLANK, s) and self.holds(e - width - 1, role)]
        found = [members[s:e - width - 1] for s, e in lines]
        fresh_found = [f.member for f in fresh if f.member is not None]
        return Matches(self._members_of(found) + fresh_found, count,
                       dates=lambda: self._created_at([s for s, _ in lines])
                       + [f.created for f in fresh])


def key_of(member: str) -> str:
    return member[member.index("\0") + 1:]


def _tag_width(roles: int) -> int:
    """How many tag bytes a line has for that many tagged roles."""
    return -(-roles // ROLES_PER_TAG)


def _estimate(lowered: bytearray, patterns: list[bytes], low: int, high: int,
              line: re.Pattern[bytes] | None = None) -> int:
    """About how many times ``patterns`` occur in ``lowered`` between ``low`` and
    ``high`` (with ``line``: how many lines it matches): counted in slices spread over
    it, one byte in SAMPLED_PART in all (labels that share a beginning may sit together:
    a single slice would miss them)."""
    def count(start: int, end: int) -> int:
        if line is not None:
            return len(line.findall(lowered, start, end))
        return sum(lowered.count(pattern, start, end) for pattern in patterns)

    step = (high - low) // SAMPLE_SLICES
    width = step // SAMPLED_PART
    if not width:  # too little to sample: counted whole
        return count(low, high)
    return sum(count(at, at + width)
               for at in range(low, low + step * SAMPLE_SLICES, step)) * SAMPLED_PART


def line_pattern(patterns: list[bytes], tag: bytes = b"") -> re.Pattern[bytes]:
    """A line holding one of ``patterns`` (and ending with tag bytes that ``tag``
    matches, when given): each match takes in the rest of its line, up to its tag, so no
    line is matched twice (the empty group makes each match that findall finds an empty
    string, which Python does not allocate)."""
    either = b"|".join(re.escape(pattern) for pattern in patterns)
    rest = rb"[^\n\x02]*" + tag if tag else rb"[^\n]*"
    return re.compile(b"(?:" + either + b")" + rest + b"()")


def _lines_holding(lowered: bytearray, patterns: list[bytes], low: int, high: int,
                   tag: bytes = b"") -> int:
    """How many lines between ``low`` and ``high`` :func:`line_pattern` matches,
    counted in C."""
    return len(line_pattern(patterns, tag).findall(lowered, low, high))


def _lines(members: bytes | bytearray, low: int = 0,
           high: int | None = None) -> Iterator[tuple[int, int]]:
    """Where each line between ``low`` and ``high`` starts and ends."""
    start = max(low, 1)
    high = len(members) if high is None else high
    while start < high:
        end = members.find(b"\n", start)
        yield start, end
        start = end + 1


def _shared_prefix(parts: list[bytes], count: int) -> bytes:
    """The longest prefix of the first member's key that every member's key starts with,
    in lines joined by parts (each line a member, which holds one NUL, right before its
    key, then TAG_MARK and tags): the longest for which as many lines hold NUL and it as
    there are lines."""
    if not count:
        return b""
    first = parts[0].partition(b"\n")[0].partition(b"\0")[2].partition(TAG_MARK)[0]
    low, high = 0, len(first)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(part.count(b"\0" + first[:mid]) for part in parts) == count:
            low = mid
        else:
            high = mid - 1
    return first[:low]
