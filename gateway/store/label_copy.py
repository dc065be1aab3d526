"""One account's copy of its label index, kept in a process's memory, and q's matches
in it: the structure alone, with no I/O (search.py keeps the copies and reads them from
Redis, and says why a process keeps one).

The copy is the label index's members ('folded label NUL key') as lines of two byte
strings, as they are and lowered as Lua's ``string.lower`` lowers them (ASCII only, as
the script's pass in Redis does: a match means the same), the active keys' lines first,
then the inactive keys'. A key read again since the copy was made is searched from its
member now, kept aside, and its line is blanked in place (its length, and so every other
line's place, kept), so that searching and counting stay single passes in C over each
status's lines: ``bytes.find`` and ``bytes.count``, and for the number of lines holding
q a regular expression that takes in the rest of each matching line. The copy's index
by key (:class:`KeyIndex`) finds a key's line, for blanking it and for checking q on a
given set of keys (a role's holders).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from .records import ACTIVE, INACTIVE

# what a line read again is overwritten with: no label or key holds it
BLANK = b"\x01"
# q's matches are first estimated from this part of the copy (one byte in this many),
# in this many slices spread over it
SAMPLED_PART, SAMPLE_SLICES = 8, 64


def member_of(app_key: str, label: str | None, folded: str | None) -> str | None:
    """A key's member of the label index, as scripts/key_rules.lua's label_member makes
    it: the fold ('lf') when the label is not ASCII, else the label lowered; None when
    the key is not listed (no label: deleted; not ASCII and no fold: not indexed yet)."""
    if label is None:
        return None
    if folded:
        return f"{folded}\0{app_key}"
    if not label.isascii():
        return None
    return f"{label.lower()}\0{app_key}"


@dataclass
class AccountCopy:
    """One account's label index as of the event ``last_event``, and the keys read
    again since (key → its member now, None for none).

    The members are kept without the prefix that every key of the copy shares
    (``kgk-acme-`` for the names keygate gives): a third of the bytes a search scans. A
    needle is then found in three places: in a member as kept; across the prefix's
    end, as a head the prefix ends with and a tail the rest of the key starts with; and
    in the prefix itself, where every key of the copy holds it.

    A key read again is searched from its member now, and its line in the copy is
    blanked (overwritten with BLANK, which no needle holds, its length and so every
    other line's place kept): searches and counts then run in C over the copy as it is,
    with no key to leave out one by one."""

    members: bytearray  # '\n' + 'folded label NUL key without the prefix' + '\n', ...
    lowered: bytearray
    prefix: bytes
    # where the inactive keys' lines begin (the active keys' come first), and how many
    # lines of each status there are (blanked ones included) and are blanked
    inactive_from: int
    lines: dict[str, int]
    last_event: str
    index: KeyIndex
    blanked: dict[str, int] = field(default_factory=lambda: {ACTIVE: 0, INACTIVE: 0})
    # the keys read again: their members now (None: none) and which are inactive
    fresh: dict[str, str | None] = field(default_factory=dict)
    fresh_inactive: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, members: list[str], last_event: str,
           inactive: Container[str] = ()) -> AccountCopy:
        """The copy of ``members``, those of the ``inactive`` keys after the others."""
        active_part = [m for m in members if m.partition("\0")[2] not in inactive]
        inactive_part = [m for m in members if m.partition("\0")[2] in inactive]
        prefix = _shared_prefix(("\n" + "\n".join(members) + "\n").encode(), len(members))

        def lines_of(part: list[str]) -> bytes:
            joined = "".join(m + "\n" for m in part).encode()
            # each member holds one NUL, before its key
            return joined.replace(b"\0" + prefix, b"\0") if prefix else joined

        first, second = lines_of(active_part), lines_of(inactive_part)
        joined = b"\n" + first + second
        return cls(bytearray(joined), bytearray(joined.lower()), prefix, 1 + len(first),
                   {ACTIVE: len(active_part), INACTIVE: len(inactive_part)}, last_event,
                   KeyIndex.of(joined))

    @property
    def count(self) -> int:
        return self.lines[ACTIVE] + self.lines[INACTIVE]

    def read_again(self, app_key: str, member: str | None, inactive: bool = False) -> None:
        """``app_key``'s member is now ``member`` (None: it has none, deleted or not in
        the account), its status inactive or not: searched from it, its line in the copy
        blanked."""
        self.fresh[app_key] = member
        if inactive:
            self.fresh_inactive.add(app_key)
        else:
            self.fresh_inactive.discard(app_key)
        prefix = self.prefix.decode()
        line = (self._line_of(app_key[len(prefix):].encode())
                if app_key.startswith(prefix) else None)
        if line is not None:
            start, end, _ = line
            self.members[start:end] = self.lowered[start:end] = BLANK * (end - start)
            self.blanked[INACTIVE if start >= self.inactive_from else ACTIVE] += 1

    def _span(self, status: str | None) -> tuple[int, int]:
        """Where the lines of keys of ``status`` (None: any) are."""
        if status == ACTIVE:
            return 0, self.inactive_from
        if status == INACTIVE:
            return self.inactive_from, len(self.members)
        return 0, len(self.members)

    def _line_of(self, rest: bytes) -> tuple[int, int, int] | None:
        """Where the line of the key whose name past the shared prefix is ``rest``
        starts, ends, and holds its NUL; None when the copy holds none (a key made
        since, or read again)."""
        index, buckets, members = self.index.entries, self.index.buckets, self.members
        hashed = hash(rest) & 0xFFFFFFFF
        top = hashed >> 16
        end_of_bucket = buckets[top + 1]
        at = bisect_left(index, hashed << 32, buckets[top], end_of_bucket)
        while at < end_of_bucket and index[at] >> 32 == hashed:
            start = index[at] & 0xFFFFFFFF
            end = members.index(b"\n", start)
            nul = members.find(b"\0", start, end)  # none in a blanked line
            if nul != -1 and members[nul + 1:end] == rest:
                return start, end, nul
            at += 1
        return None

    def matches(self, needle: bytes, keep: int, count_all: bool,
                status: str | None = None) -> Matches | None:
        """The keys (of ``status``, None: any) whose member holds ``needle`` (lowered,
        with no control character), and how many: their members only up to ``keep`` of
        them (past it, None), and None altogether when more match and ``count_all`` is
        false."""
        fresh_found = [member for key, member in self.fresh.items()
                       if member is not None and needle in member.encode().lower()
                       and (status is None
                            or (key in self.fresh_inactive) == (status == INACTIVE))]
        lowered_prefix = self.prefix.lower()
        if needle in lowered_prefix:
            return self._all_match(keep, count_all, fresh_found, status)
        patterns = [needle] + [b"\0" + needle[i:] for i in range(1, len(needle))
                               if lowered_prefix.endswith(needle[:i])]
        lowered, (low, high) = self.lowered, self._span(status)
        # Estimated first from a sample of the copy: a whole count costs as much as the
        # search itself (~15 ms at 1,000,000 keys), so it is made only when the sample
        # says there are more than ``keep`` (or the search finds more).
        if _estimate(lowered, patterns, low, high) > keep:
            if count_all:  # the lines holding q, counted in C: none named
                count = _lines_holding(lowered, patterns, low, high) + len(fresh_found)
                if count > keep:
                    return Matches(None, count)
            # not counted: a count of the patterns' occurrences (in C, a bound on the
            # members holding them) spares naming up to ``keep`` keys only to drop them
            elif sum(lowered.count(pattern, low, high)
                     for pattern in patterns) + len(fresh_found) > keep:
                return None
        found: list[bytearray] = []  # lines as kept, made members together at the end
        members, room = self.members, keep - len(fresh_found)
        for start, end in self._holding(patterns, low, high):
            if len(found) >= room:  # more than ``keep``, which the first part did not show
                break
            found.append(members[start:end])
        else:
            if room >= 0:
                return Matches(self._members_of(found) + fresh_found,
                               len(found) + len(fresh_found))
        if not count_all:
            return None
        return Matches(None, _lines_holding(lowered, patterns, low, high) + len(fresh_found))

    def _members_of(self, lines: list[bytearray]) -> list[str]:
        """Lines as kept, as members: the prefix put back, each decoded (in C, for all
        at once: a step per line in Python costs as much as finding it)."""
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
                member = fresh[app_key]
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

    def _holding(self, patterns: list[bytes], low: int,
                 high: int) -> Iterator[tuple[int, int]]:
        """Where each member between ``low`` and ``high`` that holds one of
        ``patterns`` starts and ends, once."""
        lowered = self.lowered
        # a member found by one pattern may be found by another: remembered only then
        seen: set[int] | None = set() if len(patterns) > 1 else None
        for pattern in patterns:
            at = lowered.find(pattern, low, high)
            while at != -1:
                start = lowered.rfind(b"\n", 0, at) + 1
                end = lowered.find(b"\n", at)
                if seen is None:
                    yield start, end
                elif start not in seen:
                    seen.add(start)
                    yield start, end
                at = lowered.find(pattern, end, high)

    def _all_match(self, keep: int, count_all: bool, fresh_found: list[str],
                   status: str | None) -> Matches | None:
        """Every key of the copy holds the needle (in the prefix): those of ``status``
        whose lines are not blanked, and the keys read again that hold it."""
        statuses = (ACTIVE, INACTIVE) if status is None else (status,)
        count = sum(self.lines[s] - self.blanked[s] for s in statuses) + len(fresh_found)
        if count > keep:
            return Matches(None, count) if count_all else None
        members = self.members
        found = [line for line in (members[s:e] for s, e in _lines(members, *self._span(status)))
                 if not line.startswith(BLANK)]
        return Matches(self._members_of(found) + fresh_found, count)


def _estimate(lowered: bytearray, patterns: list[bytes], low: int, high: int) -> int:
    """About how many times ``patterns`` occur in ``lowered`` between ``low`` and
    ``high``: counted in slices spread over it, one byte in SAMPLED_PART in all (the copy
    is in label order, where labels that share a beginning sit together: a single slice
    would miss them)."""
    step = (high - low) // SAMPLE_SLICES
    width = step // SAMPLED_PART
    if not width:  # too little to sample: counted whole
        return sum(lowered.count(pattern, low, high) for pattern in patterns)
    found = sum(lowered.count(pattern, at, at + width)
                for at in range(low, low + step * SAMPLE_SLICES, step) for pattern in patterns)
    return found * SAMPLED_PART


def _lines_holding(lowered: bytearray, patterns: list[bytes], low: int, high: int) -> int:
    """How many lines hold one of ``patterns``, counted in C: a match of one of them
    takes in the rest of its line, so no line is counted twice (the empty group makes
    each match found an empty string, which Python does not allocate)."""
    either = b"|".join(re.escape(pattern) for pattern in patterns)
    return len(re.compile(b"(?:" + either + rb")[^\n]*()").findall(lowered, low, high))


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
    def of(cls, members: bytes) -> KeyIndex:
        """The index of a copy's ``members``: made in a thread, and in steps short
        enough (no sort of the whole array) that the event loop runs between them."""
        groups: list[list[int]] = [[] for _ in range(1 << 16)]
        if len(members) > 2:  # a copy with no member is its newline(s) alone
            lines = members[1:-1].split(b"\n")
            # one start more than lines: where a member after the last would start
            starts = accumulate((len(line) + 1 for line in lines), initial=1)
            for line, start in zip(lines, starts, strict=False):
                hashed = hash(line.partition(b"\0")[2]) & 0xFFFFFFFF
                groups[hashed >> 16].append(hashed << 32 | start)
        entries, buckets = array("Q"), array("I")
        for group in groups:
            buckets.append(len(entries))
            group.sort()
            entries.extend(group)
        buckets.append(len(entries))
        return cls(entries, buckets)

    def __len__(self) -> int:
        return len(self.entries)


def _lines(members: bytes | bytearray, low: int = 0,
           high: int | None = None) -> Iterator[tuple[int, int]]:
    """Where each line between ``low`` and ``high`` starts and ends."""
    start = max(low, 1)
    high = len(members) if high is None else high
    while start < high:
        end = members.find(b"\n", start)
        yield start, end
        start = end + 1


def _shared_prefix(joined: bytes, count: int) -> bytes:
    """The longest prefix of the first member's key that every member's key starts with
    (each member holds one NUL, right before its key): the longest for which as many
    members hold NUL and it as there are members."""
    if not count:
        return b""
    first = joined[1 : joined.index(b"\n", 1)].partition(b"\0")[2]
    low, high = 0, len(first)
    while low < high:
        mid = (low + high + 1) // 2
        if joined.count(b"\0" + first[:mid]) == count:
            low = mid
        else:
            high = mid - 1
    return first[:low]


@dataclass(frozen=True)
class Matches:
    """q's matches in an account: their members of the label index ('folded label NUL
    key'; None: more than were asked for) and how many there are."""

    members: list[str] | None
    count: int

    @property
    def keys(self) -> list[str] | None:
        if self.members is None:
            return None
        return [member.partition("\0")[2] for member in self.members]
