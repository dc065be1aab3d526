"""q's matches in an account with many keys, from a copy of its label index kept in this
process.

``q`` is a case-folded substring of a key's label or of its name. Inside Redis it is
answered by one pass over the account's label index (listing.py): at 1,000,000 keys the
pass costs about 0.6 s of Redis time, during which Redis serves nobody else, and no Redis
structure answers a substring faster for what a key may cost in memory (handing even a
contiguous copy of the labels to a script costs ~60 ms at that size; a trigram index,
several kilobytes per key). So, for an account with at least ``min_keys`` generated keys,
each process keeps the label index's members ('folded label NUL key') in two byte
strings, as they are and lowered as Lua's ``string.lower`` lowers them (ASCII only, as
the pass in Redis does: the match means the same), and finds q with ``bytes.find``:
tens of milliseconds at 1,000,000 keys, on the process's CPU instead of Redis's.

Coherence comes from the account's audit stream, the log of every change: each script
that creates, changes or deletes a key appends its event in the same step. The copy
remembers the last event it took in; before each search it reads the events after it
(one round trip) and reads again the label of every key a ``key.*`` event names (a
second one, only when there are such events), so a search sees every change committed
before it began, on whichever instance. A key read again is searched from its fresh
member, and its line in the strings is blanked (found through the copy's index by key,
:class:`KeyIndex`), so that counts and searches stay single passes in C (a count of the
lines holding q is one regular expression over the copy: ~18 ms for 111,111 matches at
1,000,000 keys, where counting them one by one took ~60). The copy is made again when the
events it needs are gone (the stream trimmed past its last event, or deleted) and when
more keys were read again than a tenth of its size. Only a complete label index is
copied (an account whose indexes are being built for an older keygate's data is
searched in Redis until they are); members written with no event otherwise come only
from ``keygate store copy``, which is made with keygate stopped.

With a role filter, q may be checked on the role's holders instead
(:meth:`AccountCopy.among`): their members are found through the copy's index by key
(made with the copy, in a thread: ~0.7 s of the ~1.4 s a copy of 1,000,000 keys takes).
Checking a holder costs about 1.5 µs, where counting q's matches over the
whole copy costs about 16 ns per key, and the script's own check reads each holder's
label from its hash (~4.5 µs, on Redis's CPU). So the holders are checked first when
they are few beside the copy (under one in ``HOLDERS_BEFORE_COUNT``), and otherwise
when q matches too many keys to hand over.

Memory: about 53 bytes per key (both strings, the keys' shared prefix kept once, and 8
for the index by key), and the keys read again, per process; at most ``max_keys`` keys
in all accounts' copies together (the least recently searched account's copy is dropped
first; an account larger than that is searched in Redis).
"""

from __future__ import annotations

import asyncio
import re
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate

import orjson
import redis.asyncio as aioredis

from .names import LISTED, Keyspace
from .records import ACTIVE, INACTIVE

# an account with fewer keys is searched in Redis: the pass there costs ~12 ms at 20,000
SEARCH_INDEX_FROM = 20_000
# keys in all accounts' copies together, per process (~105 MB at most)
SEARCH_INDEX_MAX_KEYS = 2_000_000
READ_CHUNK = 10_000
# matches handed to the listing script, at most; past it the script is told only their
# number (q the only filter) or matches q itself (with other filters)
MATCHES_PASSED = 50_000
# ... with other filters, or for a page deep in q's matches: the script then checks each
# key it walks for q by reading its label (~4.5 µs), where a match handed over costs
# ~1.5 µs in all (made here, sent, split and checked): so more are handed over (at most
# ~8 MB per search)
MATCHES_PASSED_FILTERED = 250_000
WALK_STEP_COST, HANDED_OVER_COST = 4.5, 1.5
# a filter's keys are checked before q's matches are counted when they are fewer than
# one in this many of the copy's keys (what each costs: see the module notes)
HOLDERS_BEFORE_COUNT = 100
# what a line read again is overwritten with: no label or key holds it
BLANK = b"\x01"
# q's matches are first estimated from this part of the copy (one byte in this many),
# in this many slices spread over it
SAMPLED_PART, SAMPLE_SLICES = 8, 64
# events read per round trip while taking in changes
EVENTS_CHUNK = 1_000
# the actions that can change an account's label index
KEY_ACTIONS = ("key.create", "key.update", "key.delete")


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
class Candidates:
    """The keys another filter of a search leaves: how many there were when asked, and
    how to read them (at most the number given; None when there are more by then)."""

    count: int
    read: Callable[[int], Awaitable[list[str] | None]]


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


class LabelSearch:
    """The copies of this process (see the module notes)."""

    def __init__(self, client: aioredis.Redis, names: Keyspace, *,
                 max_keys: int = SEARCH_INDEX_MAX_KEYS, min_keys: int = SEARCH_INDEX_FROM):
        self.redis = client
        self.names = names
        self.max_keys = max_keys
        self.min_keys = min_keys
        self.max_passed = MATCHES_PASSED
        self.max_passed_filtered = MATCHES_PASSED_FILTERED
        self.holders_before_count = HOLDERS_BEFORE_COUNT
        self.copies: OrderedDict[str, AccountCopy] = OrderedDict()
        self.builds = 0  # copies made, for tests and metrics
        self.among_searches = 0  # searches answered among another filter's keys, likewise
        self._lock = asyncio.Lock()

    @property
    def kept_keys(self) -> int:
        return sum(c.count + len(c.fresh) for c in self.copies.values())

    async def matches(self, account: str, q: str, count_all: bool,
                      among: Candidates | None = None,
                      page: tuple[int, int] = (0, 0),
                      status: str | None = None) -> Matches | None:
        """The keys of ``account`` whose label or name holds ``q`` (case-folded, not
        empty) and how many, their members only up to ``max_passed`` (see
        AccountCopy.matches); None when the account is searched in Redis (fewer keys
        than ``min_keys`` or more than ``max_keys``, or its indexes not complete yet) or
        more match than ``max_passed_filtered`` and ``count_all`` (q the only filter)
        is false.

        ``among``, the keys another filter leaves: when they are few (see the module
        notes) or q matches too many, and they are at most ``max_passed``, the matches
        among them.

        ``page`` (offset, count): with q alone, where its matches are too many for
        ``max_passed``, the script walks the sort's index from the page's nearer end
        checking each key's label (~4.5 µs a key, about one match in every listed /
        matches keys), unless the matches are handed over (~1.5 µs each, up to
        ``max_passed_filtered``): they are when the walk would cost more.

        ``status``: only the keys of that status (the copy keeps each status's lines
        apart), so that q and a status filter are counted together in C."""
        if not self.max_keys:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.names.account(account, "label"))
            pipe.sismember(self.names.account(account, "roles"), LISTED)
            listed, complete = await pipe.execute()
        if not complete or listed < self.min_keys or listed > self.max_keys:
            self.copies.pop(account, None)
            return None
        if any(c < " " for c in q):
            # no label or key holds a control character (and the copy's own separators
            # and blanked lines are made of them)
            return Matches([], 0)
        try:
            needle = q.encode().lower()
        except UnicodeEncodeError:  # a lone surrogate: no label holds one
            return Matches([], 0)
        async with self._lock:
            copy = await self._current(account)
        if copy is None:
            return None
        self.copies.move_to_end(account)
        few = among is not None and among.count <= min(self.max_passed,
                                                       copy.count // self.holders_before_count)
        found = None if few else copy.matches(
            needle, self.max_passed if count_all else self.max_passed_filtered, count_all,
            status)
        if (count_all and found is not None and found.members is None
                and found.count <= self.max_passed_filtered):
            offset, size = page
            walked = min(offset + size, found.count - offset) * copy.count / found.count
            if walked * WALK_STEP_COST > found.count * HANDED_OVER_COST:
                found = copy.matches(needle, self.max_passed_filtered, True, status)
        if among is None or (found is not None and found.members is not None):
            return found
        if among.count > self.max_passed:
            return None
        keys = await among.read(self.max_passed)
        if keys is None:
            return None
        self.among_searches += 1
        return await copy.among(needle, keys)

    async def _current(self, account: str) -> AccountCopy | None:
        copy = self.copies.get(account)
        if copy is not None and await self._take_in(account, copy):
            return copy
        self.copies.pop(account, None)
        copy = await self._build(account)
        if copy is None:
            return None
        self.copies[account] = copy
        while self.kept_keys > self.max_keys and len(self.copies) > 1:
            self.copies.popitem(last=False)
        return copy

    async def _build(self, account: str) -> AccountCopy | None:
        label = self.names.account(account, "label")
        audit = self.names.account(account, "audit")
        # the last event before the read: every change after it is taken in after
        newest = await self.redis.xrevrange(audit, count=1)
        last_event = newest[0][0] if newest else "0-0"
        members: list[str] = []
        start = "-"
        while True:
            # by value from the last one read, not by rank: a member added or removed
            # meanwhile shifts no other (its event is taken in afterwards)
            chunk = await self.redis.zrange(label, start, "+", bylex=True, offset=0,
                                            num=READ_CHUNK)
            members += chunk
            if len(chunk) < READ_CHUNK:
                break
            start = "(" + chunk[-1]
            if len(members) > self.max_keys:
                return None
        inactive = await self._inactive_keys(account)
        self.builds += 1
        # ~1 s of joining, lowering and indexing at 1,000,000 keys: in a thread, so that
        # the event loop serves this process's other requests between its steps
        copy = await asyncio.to_thread(AccountCopy.of, members, last_event, inactive)
        if not await self._take_in(account, copy):
            return None  # changing faster than it can be read: searched in Redis
        return copy

    async def _inactive_keys(self, account: str) -> set[str]:
        """The account's inactive keys, from its status index (a key whose status
        changes meanwhile is read again from its event)."""
        status = self.names.account(account, "status")
        inactive: set[str] = set()
        read = 0
        while True:
            chunk = await self.redis.zrange(status, 1, 1, byscore=True, offset=read,
                                            num=READ_CHUNK)
            inactive.update(chunk)
            read += len(chunk)
            if len(chunk) < READ_CHUNK:
                return inactive

    async def _take_in(self, account: str, copy: AccountCopy) -> bool:
        """Read the events after the copy's last and the labels of the keys they name;
        False when the copy must be made again."""
        audit = self.names.account(account, "audit")
        changed: set[str] = set()
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xrange(audit, min="-", max="+", count=1)
                pipe.xrange(audit, min="(" + copy.last_event, max="+", count=EVENTS_CHUNK)
                first, events = await pipe.execute()
            if copy.last_event != "0-0" and (not first or _after(first[0][0],
                                                                 copy.last_event)):
                return False  # the events since the copy's last are not all there
            changed.update(_keys_named(events, account))
            if events:
                copy.last_event = events[-1][0]
            if len(changed) + len(copy.fresh) > max(1_000, copy.count // 10):
                return False
            if len(events) < EVENTS_CHUNK:
                break
        if changed:
            await self._read_again(account, copy, changed)
        return True

    async def _read_again(self, account: str, copy: AccountCopy, keys: Iterable[str]) -> None:
        keys = list(keys)
        async with self.redis.pipeline(transaction=False) as pipe:
            for app_key in keys:
                pipe.hmget(self.names.key(app_key), "acct", "label", "lf", "status")
            found = await pipe.execute()
        for app_key, (owner, label, folded, status) in zip(keys, found, strict=True):
            copy.read_again(app_key, member_of(app_key, label, folded)
                            if owner == account else None, status == INACTIVE)


def _after(event: str, other: str) -> bool:
    """Whether stream id ``event`` comes after ``other``."""
    def parts(value: str) -> tuple[int, int]:
        ms, _, seq = value.partition("-")
        return int(ms), int(seq or 0)
    return parts(event) > parts(other)


def _keys_named(events: list[tuple[str, dict[str, str]]], account: str) -> set[str]:
    """The keys of ``account`` that its ``key.*`` events name."""
    named = set()
    for _, fields in events:
        try:
            event = orjson.loads(fields.get("event", ""))
        except orjson.JSONDecodeError:
            continue
        if (isinstance(event, dict) and event.get("action") in KEY_ACTIONS
                and event.get("account") == account and isinstance(event.get("target"), str)):
            named.add(event["target"])
    return named
