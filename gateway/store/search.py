"""q's matches in an account with many keys, from a copy of its label index kept in this
process.

``q`` is a case-folded substring of a key's label or of its name. Inside Redis it is
answered by one pass over the account's label index (listing.py): at 1,000,000 keys the
pass costs about 0.6 s of Redis time, during which Redis serves nobody else, and no Redis
structure answers a substring faster for what a key may cost in memory (handing even a
contiguous copy of the labels to a script costs ~60 ms at that size; a trigram index,
several kilobytes per key). So, for an account with at least ``min_keys`` generated keys,
each process keeps a copy of the label index (label_copy.py) and finds q there in C:
tens of milliseconds at 1,000,000 keys, on the process's CPU instead of Redis's.

Coherence comes from the account's audit stream, the log of every change: each script
that creates, changes or deletes a key appends its event in the same step. The copy
remembers the last event it took in; before each search it reads the events after it
(one round trip) and reads again the label and status of every key a ``key.*`` event
names (a second one, only when there are such events), so a search sees every change
committed before it began, on whichever instance (the copy then blanks the key's line:
counting the lines holding q stays one pass in C, ~18 ms for 111,111 matches at
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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from .label_copy import AccountCopy, Matches, member_of
from .names import LISTED, Keyspace
from .records import INACTIVE

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
# events read per round trip while taking in changes
EVENTS_CHUNK = 1_000
# the actions that can change an account's label index
KEY_ACTIONS = ("key.create", "key.update", "key.delete")


@dataclass(frozen=True)
class Candidates:
    """The keys another filter of a search leaves: how many there were when asked, and
    how to read them (at most the number given; None when there are more by then)."""

    count: int
    read: Callable[[int], Awaitable[list[str] | None]]


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
