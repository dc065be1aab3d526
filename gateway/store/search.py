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

The copy is in token score order (each status's keys by token date) and each line is
tagged with the roles it holds of the account's largest, so q within a status, a token
date range (a renewal alert level) and such a role is counted in C too: the count is
the page's total, and the script walks the sort's index for the page checking each key
(or takes the matches handed over, when they are few). Each line's creation date is kept
too (it never changes), so q's matches in creation order, the listing's default, are
sorted here like those in label or key order: the page is a slice of them, where the
script read a date for each match (~20 ms for 11,111 at 1,000,000 keys). It is read
(copy_sync.py) in chunks: the label index by value, then the token and creation date
indexes by ranks with their scores (a key that a change meanwhile shifts past a chunk's end is found
missing and read again), then each tagged role's holders by ranks while no event is
appended (so none shifted); the four reads run at once. At 1,000,000 keys it is made
in 12–15 s (about a quarter reading, the rest joining, ordering and indexing in a
thread, in steps that let the event loop run: steps.py), holding up to about 700 bytes
per key of the process's memory for the while (peak RSS 658–676 MB at 1,000,000 keys, the
copy 234 MB).

So it is made ahead: a listing that shows the account holds at least ``min_keys`` keys
starts making it in the background (:meth:`LabelSearch.warm`), since a search usually
follows (an administrator opens the list, then types). One build per account at a time,
however many listings ask, and only where the copy fits beside the copies kept: a
listing never drops another account's copy (a search does), so listing accounts that do
not fit together in ``max_keys`` does not make their copies over and over. A process
makes one copy at a time, whatever the account: making one holds several times the
copy's size while it lasts, so at most one account's worth. A search that finds no copy
of its account (made ahead or not, being made or not) is answered by the script's own
pass when the account is small enough for that pass to cost less than waiting (at most
``SEARCH_IN_REDIS_WHILE_MADE`` keys, about 60 ms), and the copy is made in the
background for the searches after it (an API client that searches without listing
first); in a larger account the search waits for the copy.

Coherence comes from the account's audit stream, the log of every change: each script
that creates, changes or deletes a key, or renews its token, appends its event in the
same step. The copy remembers the last event it took in; before each search it reads
the events after it (one round trip) and reads again the label, status, token date and
roles of every key such an event names (a second one, only when there are such
events), so a search sees every change committed before it began, on whichever instance
(the copy then blanks the key's line: counting the lines holding q stays one pass in C,
~18 ms for 111,111 matches at 1,000,000 keys, where counting them one by one took ~60).
The copy is made again when the events it needs are gone (the stream trimmed past its
last event, or deleted) and when more keys were read again than a tenth of its size.
Only a complete label index is copied (an account whose indexes are being built for an
older keygate's data is searched in Redis until they are); members written with no
event otherwise come only from ``keygate store copy``, which is made with keygate
stopped.

With a role the copy does not tag (held by one key in ``HOLDERS_BEFORE_COUNT`` or
fewer, or past ``TAGGED_ROLES``), q may be checked on the role's holders instead
(:meth:`AccountCopy.among`): their members are found through the copy's index by key.
Checking a holder costs about 1.5 µs here, where counting q's matches over the whole
copy costs about 16 ns per key, and the script's own check reads each holder's label
from its hash (~4.5 µs, on Redis's CPU); but a page found that way costs some 4–8 µs
per holder in all (its holders read from Redis, checked, their matches handed to the
script), where a page counted in the copy's lines costs 24–45 ns per key (at 1,000,000
keys, 10,000 holders of a role with q: 38–78 ms, where q with a role held by half the
keys took 24–46 ms, as the machine's speed varies). So the holders are checked first
when they are fewer than one key in HOLDERS_BEFORE_COUNT (200: the two costs' ratio,
160–175 in those runs), and otherwise when q matches too many keys to hand over.

Past the first pages newest first, and in label, creation, token date, key and status
order, the page is found instead in the copy's lines kept again in that order
(ordered_lines.py, ordered_pages.py), counted in chunks and read from the chunk the
page starts in: the script's walk checks every key between q's matches, which is long when they sit
together far from where it starts (labels made in sequence: ``key 1…``) or when the
page is deep; within a renewal filter (a token date range) too, where more than
``ORDERED_HERE`` match in the range's lines (fewer are put in order here or handed
over). So in last-use order, once the lines are kept in it too: made when a page in that
order is first asked for, in the background (the script answers meanwhile), and kept
current from the account's moves stream, which the script writing last uses appends
to (used_order.py: last use changes with requests and appends no audit event).

A kept copy also answers a page with a status, renewal or role filter and no q
(:meth:`LabelSearch.filtered`), in the same orders and at any depth, where the listing
script walks the sort's index checking each key for a filter not in its order (seconds
for a deep page at 1,000,000 keys): each chunk of the ordered lines keeps its lines'
token scores by tags and status, so the page is found by counts alone.

Memory: about 74 bytes per key (both strings, the keys' shared prefix kept once, a
tag mark and a byte per four tagged roles; 8 each for the token score, the creation
date and the index by key; 2 for every 16th line's start), about 42 more per order for
the ordered lines and 8 per order for their chunks' token scores (four orders: about
274 MB at 1,000,000 keys in all), and the keys read
again, per process; at most ``max_keys`` keys in all accounts' copies together (the
least recently searched account's copy is dropped first; an account larger than that is
searched in Redis).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from .connection import CLIENT_FAILURES
from .copy_sync import READ_CHUNK, CopySync
from .copy_values import ANY_KEY, Filters, Matches
from .label_copy import TAGGED_ROLES, AccountCopy
from .label_newest import newest
from .lua import Scripts
from .names import LISTED, Keyspace
from .ordered_lines import LAST_USED
from .ordered_pages import in_order, keeps
from .packed_index import counts_of

if TYPE_CHECKING:
    from .core import Observer

log = logging.getLogger("keygate.store")

# an account with fewer keys is searched in Redis: the pass there costs ~12 ms at 20,000
SEARCH_INDEX_FROM = 20_000
# a search that finds no copy of its account is answered in Redis while the copy is made
# when the account has at most this many keys (a pass of ~60 ms), and otherwise waits
# for the copy
SEARCH_IN_REDIS_WHILE_MADE = 100_000
# keys in all accounts' copies together, per process (~130 MB at most)
SEARCH_INDEX_MAX_KEYS = 2_000_000
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
HOLDERS_BEFORE_COUNT = 200
# the newest matches of q read from a copy's end for a page of the default listing, at
# most (page 500 of 50): each costs a line's decoding and a place in a heap (~2 µs)
NEWEST_READ_BACK = 25_000
# ... at once up to this many (page 20 of 50); a deeper page's matches, when no more
# than ``MATCHES_PASSED``, are all found and put in order here (cheaper by then)
NEWEST_FIRST = 1_000
# an account kept in last-use order takes in the uses written since, every this many
# seconds (used_order.py)
FOLLOW_USES_EVERY = 1.0
# in creation order, q's matches are found in the copy's creation-ordered lines
# (ordered_lines.py: one count over them all, ~25 ms at 1,000,000 keys) when about this many or
# more match; fewer are found and put in order here (AccountCopy.ordered, ~2 µs each)
ORDERED_HERE = 5_000


@dataclass(frozen=True)
class Candidates:
    """The keys another filter of a search leaves: how to ask how many there are (only
    when the search needs them), and how to read them (at most the number given; None
    when there are more by then)."""

    size: Callable[[], Awaitable[int]]
    read: Callable[[int], Awaitable[list[str] | None]]


class LabelSearch:
    """The copies of this process (see the module notes)."""

    def __init__(self, client: aioredis.Redis, names: Keyspace, scripts: Scripts, *,
                 max_keys: int = SEARCH_INDEX_MAX_KEYS, min_keys: int = SEARCH_INDEX_FROM):
        self.redis = client
        self.names = names
        self.scripts = scripts
        self.max_keys = max_keys
        self.min_keys = min_keys
        self.in_redis_while_made = SEARCH_IN_REDIS_WHILE_MADE
        self.max_passed = MATCHES_PASSED
        self.max_passed_filtered = MATCHES_PASSED_FILTERED
        self.holders_before_count = HOLDERS_BEFORE_COUNT
        self.tagged_roles = TAGGED_ROLES
        self.read_chunk = READ_CHUNK
        self.copies: OrderedDict[str, AccountCopy] = OrderedDict()
        self.sync = CopySync(client, names, scripts, self)
        self.observer: Observer | None = None  # told how long each copy took to make
        self.among_searches = 0  # searches answered among another filter's keys, likewise
        self.read_back_searches = 0  # ... by reading a copy from its end (label_newest.py)
        self.in_order_searches = 0  # ... from its lines in label or creation order
        self.filtered_searches = 0  # pages with no q read from a copy (filtered)
        # one lock per account searched (an account of at least ``min_keys`` keys): a
        # search waits for its own account's copy (and ``_making``), never for another
        # account's search
        self._locks: dict[str, asyncio.Lock] = {}
        # copies being made ahead of a search (warm), by account
        self.warming: dict[str, asyncio.Task[None]] = {}
        # copies being put in last-use order (used_order.py), by account; or, when
        # ``use_order_waits`` (tests), by the page that asks for it
        self.ordering_by_use: dict[str, asyncio.Task[None]] = {}
        self.use_order_waits = False
        # ... and those followed (their moves stream read every ``follow_uses_every`` s)
        self.following_uses: dict[str, asyncio.Task[None]] = {}
        self.follow_uses_every = FOLLOW_USES_EVERY
        # one copy made at a time in this process: making one holds several times its
        # size for the while (see the module notes), so at most one account's worth
        self._making = asyncio.Lock()

    @property
    def builds(self) -> int:
        """Copies made, for tests."""
        return self.sync.builds

    @property
    def kept_keys(self) -> int:
        return sum(c.count + len(c.fresh) for c in self.copies.values())

    async def matches(self, account: str, q: str, count_all: bool,
                      among: Candidates | None = None,
                      page: tuple[int, int] = (0, 0),
                      filters: Filters = ANY_KEY,
                      sort: str = "creationDate", descending: bool = True) -> Matches | None:
        """The keys of ``account`` whose label or name holds ``q`` (case-folded, not
        empty) and how many, their members only up to ``max_passed`` (see
        AccountCopy.matches); None when the account is searched in Redis (fewer keys
        than ``min_keys`` or more than ``max_keys``, or its indexes not complete yet) or
        more match than ``max_passed_filtered`` and ``count_all`` (q the only filter)
        is false.

        ``among``, the keys another filter leaves: when they are few (see the module
        notes) or q matches too many, and they are at most ``max_passed``, the matches
        among them.

        ``page`` (offset, count) and ``sort``: newest first (by creation or token date),
        the pages up to ``NEWEST_READ_BACK`` matches are read from the copy's end
        (label_newest.py), whatever the order the matches were made in. Otherwise,
        where the matches are counted, the script is given their number alone and
        walks the sort's index from the page's nearer end checking each key's label
        (~4.5 µs a key, about one match in every walked / matches keys, when they are
        spread evenly), unless the matches are handed over (~1.5 µs each, up to
        ``max_passed_filtered``): they are when they are fewer than ``max_passed`` or
        the walk would cost more, and not when it would cost less.

        ``filters``: only the keys of that status, token date range and role (the copy
        keeps its lines in token score order, each tagged with the account's largest
        roles), so that q and these filters are counted together in C. A role the copy
        does not tag is left to ``among`` and the script: q's matches are then not
        counted (``count_all`` taken as false)."""
        listed = await self._searchable(account)
        if not listed:
            return None
        if any(c < " " for c in q):
            # no label or key holds a control character (and the copy's own separators
            # and blanked lines are made of them)
            return Matches([], 0)
        try:
            needle = q.encode().lower()
        except UnicodeEncodeError:  # a lone surrogate: no label holds one
            return Matches([], 0)
        if account not in self.copies and listed <= self.in_redis_while_made:
            # no copy yet, in an account this small: the script's pass (about 60 ms at
            # most) answers while the copy is made in the background, where waiting for
            # it would take up to ~0.9 s (made ahead by a listing, or from here)
            self.warm(account, make_room=True)
            return None
        async with self._lock_of(account):
            copy = await self._current(account)
        if copy is None:
            return None
        self.copies.move_to_end(account)
        if sort == LAST_USED:
            await self._in_use_order(account, copy)
        among_count = await among.size() if among is not None else 0
        few = among is not None and among_count <= min(self.max_passed,
                                                       copy.count // self.holders_before_count)
        if filters.role is not None and copy.tags(filters.role) and not few:
            among = None  # the copy's lines say which keys hold it
        elif filters.role is not None:
            # its holders are checked one by one below (few), or by the script (a role
            # the copy does not tag)
            filters = Filters(filters.status, filters.dates)
            count_all = False
        offset, size = page
        # in label, creation, token date, key or status order, the copy's lines in that
        # order answer (below: ordered_lines.py), but for the first pages newest first
        in_lines = count_all and among is None and size > 0 and keeps(copy, sort)
        # newest first (the default listing's order), the copy read from its end
        # (label_newest.py), whatever the order q's matches were made in: at once for the
        # first pages, and for a deeper page in token date order (the lines' own), or in
        # creation order when the matches are too many to order here, where the copy
        # keeps no lines in that order
        read_back = (not few and count_all and among is None and descending
                     and sort in ("creationDate", "creationDateToken")
                     and 0 < offset + size <= NEWEST_READ_BACK)
        if read_back and (offset + size <= NEWEST_FIRST or (not in_lines and (
                sort == "creationDateToken"
                or copy.estimate(needle, filters) > self.max_passed))):
            read_back = False
            found = newest(copy, needle, offset + size, filters,
                           by_token=sort == "creationDateToken")
            if found is not None:
                self.read_back_searches += 1
                return found
        if in_lines and ((sort == "label" and filters.dates == (None, None))
                         or copy.estimate(needle, filters) > ORDERED_HERE):
            # read from the copy's lines in the sort's order (ordered_lines.py): its
            # chunks before the page's skipped, wherever in that order q's matches sit
            # and however deep the page (within token dates, where few match, the
            # other ways cost less than the pass over every line: the estimate counts
            # only the lines of the dates' spans)
            found = in_order(copy, sort, needle, offset, size, descending, filters)
            if found is not None:
                self.in_order_searches += 1
                return found
        found = None if few else copy.matches(
            needle, self.max_passed if count_all else self.max_passed_filtered, count_all,
            filters)
        if read_back and found is not None and found.members is None and found.count:
            # more than the estimate said
            newer = newest(copy, needle, offset + size, filters,
                           by_token=sort == "creationDateToken")
            if newer is not None:
                self.read_back_searches += 1
                return newer
        if count_all and found is not None and found.count:
            # the script's walk for the page: about one match in every over / count keys
            # of the index it walks
            over = _walked_over(copy, sort, filters)
            walked = max(min(offset + size, found.count - offset), 0) * over / found.count
            walk, hand_over = walked * WALK_STEP_COST, found.count * HANDED_OVER_COST
            if (found.members is None and found.count <= self.max_passed_filtered
                    and walk > hand_over):
                # (more than ``max_passed``: handed over unordered, no dates needed)
                found = copy.matches(needle, self.max_passed_filtered, True, filters)
            elif found.members is not None and walk < hand_over:
                found = Matches(None, found.count)  # their number alone: walked
            elif found.members is not None and len(found.members) <= self.max_passed:
                # every match, in the listing's order: the page is a slice of them (a
                # sort here costs less than the script's, which reads a number for each)
                found = copy.ordered(found, sort, descending) or found
        if sort == "label" and found is not None and found.members and not found.ordered:
            # in the label index's order (code point order is UTF-8's byte order): the
            # script's sort of them then takes half the time
            found.members.sort()
        if among is None or (found is not None and found.members is not None):
            return found
        if among_count > self.max_passed:
            return None
        keys = await among.read(self.max_passed)
        if keys is None:
            return None
        self.among_searches += 1
        return await copy.among(needle, keys)

    async def filtered(self, account: str, filters: Filters, sort: str, descending: bool,
                       page: tuple[int, int]) -> Matches | None:
        """A page of the keys of ``account`` that ``filters`` allow (a status, a token
        date range, a tagged role) with no q, from its copy's lines in the sort's order
        (ordered_lines.py: counted from each chunk's tails, the page read from the chunk
        it starts in), when a copy of the account is kept here and nothing else holds
        it; else None (the listing script answers, walking the sort's index for a filter
        not in its order: ~4.5 µs a key walked, seconds for a deep page at 1,000,000
        keys). No copy is made for it: the listing that asks makes one ahead."""
        copy = self.copies.get(account)
        lock = self._lock_of(account)
        offset, size = page
        if (copy is None or lock.locked() or size <= 0
                or not (keeps(copy, sort) or sort == LAST_USED)
                or (filters.role is not None and not copy.tags(filters.role))):
            return None
        async with lock:
            if not await self.sync.take_in(account, copy):
                self.copies.pop(account, None)  # made again by the next search or listing
                return None
        self.copies.move_to_end(account)
        if sort == LAST_USED:
            await self._in_use_order(account, copy)
        found = in_order(copy, sort, b"", offset, size, descending, filters)
        if found is not None:
            self.filtered_searches += 1
        return found

    async def _in_use_order(self, account: str, copy: AccountCopy) -> None:
        """Have ``copy`` kept in last-use order too (used_order.py): made in the
        background, one at a time in this process with the copies (the page asking is
        answered by the script meanwhile), or here when ``use_order_waits``."""
        if copy.used is not None:
            return
        if self.use_order_waits:
            async with self._making:
                if copy.used is None:
                    await self.sync.order_by_use(account, copy)
            self._follow_uses(account, copy)
            return
        if account in self.ordering_by_use:
            return
        _in_background(self.ordering_by_use, account, self._order_by_use(account, copy))

    async def _order_by_use(self, account: str, copy: AccountCopy) -> None:
        try:
            async with self._making:
                if self.copies.get(account) is copy and copy.used is None:
                    await self.sync.order_by_use(account, copy)
        except CLIENT_FAILURES as exc:  # the next page asked in that order tries again
            log.warning("account %s not kept in last-use order: %s", account, exc)
            return
        except Exception:
            log.exception("account %s not kept in last-use order", account)
            return
        self._follow_uses(account, copy)

    def _follow_uses(self, account: str, copy: AccountCopy) -> None:
        """Take in the uses of the account's moves stream every ``follow_uses_every``
        seconds while its copy is kept in last-use order, so that a page asked in it
        takes in those of the last interval alone (8–11 µs a key moved). One follower per
        account, following whichever copy of it is kept, until none is."""
        if account in self.following_uses or copy.used is None:
            return
        _in_background(self.following_uses, account, self._following(account))

    async def _following(self, account: str) -> None:
        warned = False
        while True:
            await asyncio.sleep(self.follow_uses_every)
            copy = self.copies.get(account)
            if copy is None:
                return  # dropped: a copy made again is followed once kept in that order
            if copy.used is None:
                continue  # not in last-use order now: made again when a page asks
            try:  # not under the account's lock: a page waits for no follower (taking
                # in a use twice is the same as once)
                await self.sync.take_in_moves(account, copy)
                warned = False
            except CLIENT_FAILURES as exc:  # tried again at the next interval
                if not warned:
                    log.warning("uses of account %s not taken in: %s", account, exc)
                warned = True
            except Exception:  # the pages take them in meanwhile
                log.exception("uses of account %s no longer followed", account)
                return

    def warm(self, account: str, make_room: bool = False) -> None:
        """Start making the account's copy in the background, unless it is kept or being
        made already: called when a listing shows that the account holds at least
        ``min_keys`` keys, so that the search that usually follows it (an administrator
        who opens the list, then types) finds the copy made, where it would otherwise wait
        for it (about 18 s at 1,000,000 keys). One build per account
        at a time, however many listings ask; a search meanwhile is answered in Redis
        or waits for that one (see the module notes). Only where the copy fits beside
        those kept (``max_keys``), unless ``make_room`` (a search asks): a listing never
        drops another account's copy."""
        if not self.max_keys or account in self.copies or account in self.warming:
            return
        _in_background(self.warming, account, self._warm(account, make_room))

    async def _warm(self, account: str, make_room: bool) -> None:
        try:
            listed = await self._searchable(account)
            if not listed or not (make_room or self._fits(listed)):
                return
            async with self._lock_of(account):
                if account not in self.copies:
                    await self._current(account, ahead=not make_room)
        except CLIENT_FAILURES as exc:  # the search that follows makes it, or says why
            log.warning("copy of account %s's label index not made ahead: %s", account, exc)
        except Exception:
            log.exception("copy of account %s's label index not made ahead", account)

    async def close(self) -> None:
        """Stop the copies being made ahead (a store that closes reads nothing more)."""
        tasks = [*self.warming.values(), *self.ordering_by_use.values(),
                 *self.following_uses.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _searchable(self, account: str) -> int:
        """How many keys the account has when it is searched in a copy (at least
        ``min_keys`` and at most ``max_keys``, its indexes complete), else 0 (and its copy
        is dropped)."""
        if not self.max_keys:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(*counts_of(self.names.account(account, "labels")))
            pipe.sismember(self.names.account(account, "roles"), LISTED)
            listed, complete = await pipe.execute()
        listed = int(listed or 0)
        if not complete or listed < self.min_keys or listed > self.max_keys:
            self.copies.pop(account, None)
            return 0
        return max(listed, 1)

    def _lock_of(self, account: str) -> asyncio.Lock:
        # kept for every account searched here: each holds min_keys keys, so they are few
        return self._locks.setdefault(account, asyncio.Lock())

    def _fits(self, listed: int) -> bool:
        """Whether a copy of ``listed`` keys is made ahead: only where it fits beside
        the copies kept. Dropping one for it is left to a search, so that listings of
        accounts that do not fit together never make their copies again and again
        (~8 s of this process's CPU each at 1,000,000 keys)."""
        return self.kept_keys + listed <= self.max_keys

    async def _current(self, account: str, ahead: bool = False) -> AccountCopy | None:
        copy = self.copies.get(account)
        if copy is not None and await self.sync.take_in(account, copy):
            return copy
        self.copies.pop(account, None)
        async with self._making:
            if ahead:  # asked again: the copy made while this one waited may be kept now
                listed = await self._searchable(account)
                if not listed or not self._fits(listed):
                    return None
            started = time.perf_counter()
            copy = await self.sync.build(account)
            if copy is not None and self.observer is not None:
                self.observer.search_copy_made(time.perf_counter() - started)
        if copy is None:
            return None
        self.copies[account] = copy
        while self.kept_keys > self.max_keys and len(self.copies) > 1:
            self.copies.popitem(last=False)
        return copy



def _in_background(tasks: dict[str, asyncio.Task[None]], account: str,
                   work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` as a task, kept in ``tasks`` under ``account`` while it runs."""
    task = asyncio.get_running_loop().create_task(work)
    tasks[account] = task
    task.add_done_callback(lambda _: tasks.pop(account, None))


def _walked_over(copy: AccountCopy, sort: str, filters: Filters) -> int:
    """About how many keys the listing script's walk in ``sort``'s order steps over to
    pass every key ``filters`` allow (scripts/list_keys.lua): the run of the status in
    creation, key and status order, the token date range's in token date order, else
    every key."""
    if sort in ("creationDate", "appKey", "status"):
        return copy.within(Filters(filters.status))
    if sort == "creationDateToken":
        return copy.within(Filters(filters.status, filters.dates))
    return copy.count
