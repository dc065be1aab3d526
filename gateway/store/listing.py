"""Reading keys in bulk: an account's keys page by page or all of them in chunks.

A page is served from the account's listing indexes, which the scripts that change a
key keep up to date in the same step (scripts/key_rules.lua):

* ``created`` (creation date) and ``tokens`` (token date), packed sets
  (scripts/packed.lua) in status runs (scripts/status_runs.lua: an inactive key at its
  date plus INACTIVE_AT), so a status filter is a range of ranks and either order is the
  merge of two runs;
* ``holding:{role}``: the keys holding each role, a packed set scored as ``tokens``,
  beside the set of the role names in use (``roles``), so that a count by any status,
  role and token date range is a count of ranks per run (three small sets read, whatever
  the number of keys);
* ``uses`` (last use, a packed set), ``labels`` (a packed set of the folded label then
  the key, all at score 0, so in byte order) and ``statuses`` (a packed set: 0 active,
  1 inactive, each part in key order, which also gives the key order);
* ``labels:zones`` and ``labels:zone-dates``: the label index cut into zones of 512 to
  1,024 members, each with its keys' token dates (least, greatest, and the periods of
  about 19 hours they fall in, per status), so that a walk in label order with a status
  or renewal filter skips the zones that cannot match.

A packed set keeps a sorted set's order in small sorted sets that Redis encodes
compactly (some 35 bytes an entry instead of 120); an entry is found by its score, so a
key's scores are read from its hash where a sorted set's would be read by member.

One read-only script (scripts/list_keys.lua) picks the page: no temporary key, one round
trip, then the page's keys read whole. In an account whose copy this process keeps for q
(search.py), a status, renewal or role filter with no q is read from the copy instead, in
every order (ordered_lines.py; last-use order once the copy is kept in it too,
used_order.py): the script walks the sort's index for a filter not in its order, which
costs seconds for a deep page at 1,000,000 keys.

``q`` keeps its meaning — a case-folded substring of the label or of the key. In an
account with many keys this process finds its matches in its own copy of the label
index (search.py) and hands them to the script; in a smaller one the script matches it
over the label index (one pass over the account's keys inside Redis, unless a status,
role or renewal filter gives a smaller set to check). An index
that answered substrings in sublinear time (trigrams) would cost some forty set entries
per key (a 20-character label and a 20-character key), several kilobytes: far past the
memory a key may cost (see the README's Performance section).

An account whose keys were written before the indexes existed, or in an older keygate's
layout (its creation index a sorted set, ``keys``, or not in status runs; role sets
without token dates, marked complete with ''), is indexed on its first listing or
export (:meth:`KeyListing.index_listing`, or ``keygate store migrate`` for all).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .copy_values import INACTIVE_AT, Filters
from .core import unavailable, unavailable_iter
from .layout import StoreLayout
from .lua import constant
from .names import LISTED, OLDER_CREATION_INDEX, OLDER_INDEXES, OLDER_MARKS, is_role
from .packed_index import MAX_SCORE, PackedIndex, counts_of
from .records import ACTIVE, INACTIVE, KeyRecord, label_fold
from .search import Candidates


@dataclass(frozen=True)
class KeyQuery:
    q: str = ""
    status: str | None = None
    role: str | None = None
    sort: str = "creationDate"
    descending: bool = True
    page: int = 1
    per_page: int = 20
    # only keys whose token was issued in [start, end) ms (None: no bound); each renewal
    # alert level is such a range (gateway.renewal.alert_range)
    token_created: tuple[int | None, int | None] | None = None
    # only keys whose every role passes this (the roles a caller may act on), and
    # ``own_key`` whatever its roles
    may_act_on: Callable[[str], bool] | None = None
    own_key: str = ""

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.status or self.role or self.token_created
                    or self.may_act_on)

    def accepts(self, record: KeyRecord) -> bool:
        """The filters' meaning, one record at a time (the indexes answer the same)."""
        if self.status and record.status != self.status:
            return False
        if self.role and self.role not in record.roles:
            return False
        if self.q:
            needle = self.q.casefold()
            if needle not in record.label.casefold() and needle not in record.app_key.casefold():
                return False
        if self.token_created is not None:
            start, end = self.token_created
            if (start is not None and record.token_created < start) or (
                end is not None and record.token_created >= end
            ):
                return False
        if self.may_act_on is not None and record.app_key != self.own_key:
            return all(self.may_act_on(role) for role in record.roles)
        return True


SORT_FIELDS: dict[str, Callable[[KeyRecord], Any]] = {
    "creationDate": lambda r: (r.created, r.app_key),
    "creationDateToken": lambda r: (r.token_created, r.app_key),
    "label": lambda r: (r.label.casefold(), r.app_key),
    "appKey": lambda r: (r.app_key,),
    "status": lambda r: (r.status, r.app_key),
    "lastUsed": lambda r: (r.last_used or 0, r.app_key),
}

_STATUS_SCORE = {ACTIVE: "0", INACTIVE: "1"}

# the members of a zone of the label index as index_zones makes them
ZONE = constant("status_runs", "ZONE_SPLIT") // 2


def _bound(value: int | None) -> str:
    return "" if value is None else str(value)


class KeyListing(StoreLayout):
    @unavailable
    async def list_keys(self, account: str, query: KeyQuery) -> tuple[list[KeyRecord], int]:
        """One page of the account's generated keys and the total that match."""
        if "\0" in query.q:
            # no label or key holds a NUL, and the label index separates the folded
            # label from the key with one: a needle holding it would match across
            return [], 0
        names = self.names
        keys = names.listing(account)
        if query.role:
            keys.append(names.role_holders(account, query.role))
        if query.role and query.may_act_on is not None and not query.may_act_on(query.role):
            # every key holding the role holds one the caller may not act on: only the
            # caller's own key may be listed (answered here, where the script would
            # read every holder's hash to leave each out)
            own = await self._load([query.own_key]) if query.own_key else []
            found = [r for r in own
                     if r is not None and r.account == account and query.accepts(r)]
            start = (query.page - 1) * query.per_page
            return found[start:start + query.per_page], len(found)
        allowed = ""
        if query.may_act_on is not None:
            # a role that comes into use after this read is not in the list: the keys
            # holding it are left out, never shown unjudged
            in_use = await self.redis.smembers(names.account(account, "roles"))
            allowed = orjson.dumps(sorted(r for r in in_use
                                          if is_role(r) and query.may_act_on(r)))
        dates = query.token_created or (None, None)
        args = [
            query.sort, "1" if query.descending else "0", (query.page - 1) * query.per_page,
            query.per_page,
            # a status no key has matches none
            _STATUS_SCORE.get(query.status, "2") if query.status else "",
            _bound(dates[0]), _bound(dates[1]), query.q.casefold(), names.keys_of(account),
            allowed, query.own_key, "1" if query.role else "0",
        ]
        if query.q:
            # q's matches are counted within the status, token date and role filters
            # (the copy keeps its lines in token score order, tagged with the largest
            # roles): that count is the total; with the caller's role exclusions, too
            # many matches to hand over are left to the script, which matches q in the
            # cheapest candidate set
            with_status = query.status in (ACTIVE, INACTIVE)
            counted = not query.may_act_on and (with_status or not query.status)
            among = None
            if query.role:
                # the role's holders: q may be checked on them in this process's copy
                holders = keys[-1]

                async def read(most: int) -> list[str] | None:
                    found = await PackedIndex(self.scripts, holders).range(0, most + 1)
                    return None if len(found) > most else [k for k, _ in found]

                async def size() -> int:
                    return int(await self.redis.hget(*counts_of(holders)) or 0)
                among = Candidates(size, read)
            found = await self.label_search.matches(
                account, query.q.casefold(), counted, among,
                ((query.page - 1) * query.per_page, query.per_page),
                Filters(query.status if with_status else None, dates, query.role or None),
                query.sort, query.descending)
            if found is not None and found.count == 0:
                return [], 0
            if found is not None and found.members is not None and found.ordered:
                # every match, counted and in the listing's order: the page is a slice
                start = (query.page - 1) * query.per_page - found.first
                page = [m.partition("\0")[2]
                        for m in found.members[start:start + query.per_page]]
                return [r for r in await self._load(page) if r is not None], found.count
            if found is not None and found.members is not None:
                # their members, the folded label known with each key (no label or key
                # holds a newline)
                args += ["given", "\n".join(found.members)]
            elif found is not None:
                args.append(f"total:{found.count}")
        elif ((query.status in (ACTIVE, INACTIVE) or query.role or query.token_created)
              and query.status in (ACTIVE, INACTIVE, None, "") and not query.may_act_on):
            # a status, renewal or role filter with no q: from this process's copy of the
            # account when one is kept (search.py filtered), at any depth in every order
            found = await self.label_search.filtered(
                account, Filters(query.status or None, dates, query.role or None),
                query.sort, query.descending,
                ((query.page - 1) * query.per_page, query.per_page))
            if found is not None and found.members is not None:
                start = (query.page - 1) * query.per_page - found.first
                page = [m.partition("\0")[2]
                        for m in found.members[start:start + query.per_page]]
                return [r for r in await self._load(page) if r is not None], found.count
        result = await self.scripts.list_keys(keys=keys, args=args)
        if result == ["unindexed"]:
            await self.index_listing(account)
            result = await self.scripts.list_keys(keys=keys, args=args)
        total, page = int(result[0]), result[1:]
        records = [r for r in await self._load(page) if r is not None]
        if total >= self.label_search.min_keys:
            # an account searched in a copy: made now, before the search that follows
            self.label_search.warm(account)
        return records, total

    @unavailable
    async def index_listing(self, account: str, chunk: int = 500) -> int:
        """Build the account's listing indexes from its key records (once per account
        whose keys were written before them). Every change keeps the indexes up to date
        meanwhile and each chunk is one script that reads what it lists, so they are
        right when the pass ends; only then are they marked complete. Answers how many
        keys were listed."""
        listing = self.names.listing(account)
        listed = 0
        async for names in self.key_chunks(account, chunk):
            hashes = [self.names.key(n) for n in names]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in hashes:
                    pipe.hget(name, "label")
                labels = await pipe.execute()
            args: list[Any] = [account]
            for name, label in zip(names, labels, strict=True):
                args += [name, label or "", label_fold(label or "")]
            listed += await self.scripts.index_listing(keys=[*listing, *hashes], args=args)
        await self.index_zones(account)
        roles = self.names.account(account, "roles")
        in_use = await self.redis.smembers(roles)
        await self.redis.sadd(roles, LISTED)
        # an older keygate's marks and sets of role holders (it kept no token dates in
        # them): the scripts no longer keep them, and nothing reads them now
        older = [name for r in in_use if is_role(r)
                 for name in (self.names.older_role_set(account, r),
                              self.names.older_holders(account, r))]
        await self.redis.srem(roles, *OLDER_MARKS)
        # an older layout's indexes (sorted sets where packed sets are now) and role sets
        await self.redis.delete(*(self.names.account(account, what) for what in OLDER_INDEXES),
                                *older)
        return listed

    @unavailable
    async def index_zones(self, account: str) -> None:
        """Cut the account's label index into zones of ZONE_SPLIT / 2 members, with their
        keys' token dates (scripts/index_zones.lua): from the last rank down, one script
        per zone, while keygate serves."""
        listing = self.names.listing(account)
        size = int(await self.redis.hget(*counts_of(self.names.account(account, "labels")))
                   or 0)
        for rank in range((max(size - 1, 0) // ZONE) * ZONE, -1, -ZONE):
            await self.scripts.index_zones(keys=listing,
                                           args=[rank, self.names.keys_of(account)])

    @unavailable
    async def listing_indexed(self, account: str) -> bool:
        """Whether the account's listing indexes hold all its keys."""
        return bool(await self.redis.sismember(self.names.account(account, "roles"), LISTED))

    @unavailable
    async def listing_current(self, account: str) -> bool:
        """Whether they do in this keygate's layout: the listing script's own check, asked
        for an empty page."""
        args = ["creationDate", "1", 0, 0, "", "", "", "", self.names.keys_of(account), "",
                "", "0"]
        result = await self.scripts.list_keys(keys=self.names.listing(account), args=args)
        return result != ["unindexed"]

    @unavailable
    async def count_token_dates(
        self, account: str, ranges: Sequence[tuple[int | None, int | None]], chunk: int = 500
    ) -> list[int]:
        """How many of the account's keys have their token issued in each [start, end)
        range (ms, None: no bound): one ZCOUNT per status run each, whatever the number
        of keys (the indexes built first, ``chunk`` keys at a time, for an account older
        than them)."""
        if not await self.listing_indexed(account):
            await self.index_listing(account, chunk)
        tokens = PackedIndex(self.scripts, self.names.account(account, "tokens"))
        runs = [Filters(dates=dates).score_ranges for dates in ranges]
        return [sum([await tokens.count(low, high - 1) for low, high in score_ranges])
                for score_ranges in runs]

    @unavailable
    async def migrate(self) -> dict[str, int]:
        """Build the indexes missing from accounts written by an older keygate, or in its
        layout (the listing indexes, the owners set), account by account while keygate
        serves, then record this keygate's layout (layout.py); idempotent. Answers how
        many keys were listed per account that needed it. :class:`NewerLayout`, with
        nothing written, when a later keygate migrated the store."""
        await self._check_layout()
        listed = {}
        # scanned as well: an account an older keygate made during the upgrade is in no
        # set (accounts.py)
        for account in await self.accounts(rescan=True):
            if not await self.redis.sismember(self.names.account(account, "owners"), ""):
                await self.index_owners(account)
            if not await self.listing_current(account):
                listed[account] = await self.index_listing(account)
            await self._finish_account_followups(account)
        await self._record_layout()
        return listed

    async def _finish_account_followups(self, account: str, chunk: int = 500) -> None:
        """Apply the grant follow-ups a crashed keygate left in the hashes of the
        account's keys (grants.py): reads the field names of every key, a chunk at a
        time."""
        async for names in self.key_chunks(account, chunk):
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hkeys(self.names.key(name))
                fields = await pipe.execute()
            for name, found in zip(names, fields, strict=True):
                if any(f.startswith("fu:") for f in found):
                    await self.finish_followups(name)

    @unavailable
    async def account_exists(self, account: str) -> bool:
        """Whether the account has generated keys, external keys or settings: the
        accounts that exist as far as keygate knows (one round trip)."""
        return bool(
            await self.redis.exists(
                self.names.account(account, "created"),
                self.names.account(account, OLDER_CREATION_INDEX),
                self.names.account(account, "ext"),
                self.names.account(account, "settings"),
            )
        )

    @unavailable
    async def all_keys(self, account: str) -> list[KeyRecord]:
        """Every generated key of the account in creation order, read from its hashes
        whatever the layout its indexes are in (``key_chunks``), at once: for small
        accounts (and the tests' oracle); an export reads them a chunk at a time
        (:meth:`iter_keys`)."""
        found: dict[str, KeyRecord] = {}
        async for names in self.key_chunks(account, 500):
            found.update((r.app_key, r) for r in await self._load(names) if r is not None)
        return sorted(found.values(), key=lambda r: (r.created, r.app_key))

    async def _load(self, names: Sequence[str], chunk: int = 500) -> list[KeyRecord | None]:
        records: list[KeyRecord | None] = []
        for offset in range(0, len(names), chunk):
            batch = names[offset : offset + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hgetall(self.names.key(name))
                hashes = await pipe.execute()
            records += [KeyRecord.from_hash(n, h) for n, h in zip(batch, hashes, strict=True)]
        return records

    @unavailable_iter
    async def iter_keys(self, account: str, chunk: int = 500) -> AsyncIterator[list[KeyRecord]]:
        """All generated keys of an account in creation order, a chunk at a time (bounded
        memory), each listed once though keys change meanwhile.

        The creation index holds each status as a run (scripts/status_runs.lua), and a
        key moves between the runs when its status changes, at the same date. Each round
        reads both runs from the last key listed in one script, and lists the keys
        before the first date that a run read to its limit may hold more of: a key is
        listed in the round that reaches its date, from whichever run holds it then, and
        a delete shifts no other key. When more keys share a date than a round reads,
        they are read a chunk at a time by name (scripts/keys_at_date.lua).
        """
        if not await self.listing_current(account):
            # an account of an older layout: its keys listed in the creation index first
            await self.index_listing(account)
        index = self.names.account(account, "created")
        created = PackedIndex(self.scripts, index)
        runs = ((0, INACTIVE_AT - 1), (INACTIVE_AT, MAX_SCORE))
        position: tuple[int, str] = (-1, "")  # the last key listed: (creation date, name)
        while True:
            batches = await created.first_in(
                [(base + max(position[0], 0), high) for base, high in runs], chunk)
            found: list[tuple[int, str]] = []
            limit: int | None = None  # the first date a run may hold unread keys at
            for (base, _), batch in zip(runs, batches, strict=True):
                found += [(score - base, name) for name, score in batch]
                if len(batch) == chunk:
                    last = batch[-1][1] - base
                    limit = last if limit is None else min(limit, last)
            fresh = sorted(e for e in found
                           if e > position and (limit is None or e[0] < limit))
            if not fresh:
                if limit is None:
                    return
                # more keys share the date ``limit`` (the next key's) than a round reads:
                # those after the last listed, by name, so memory stays bounded however
                # many share it
                date = limit
                after = position[1] if date == position[0] else ""
                names = await self.scripts.keys_at_date(keys=[index],
                                                        args=[date, after, chunk])
                fresh = [(date, name) for name in names]
                if not fresh:  # none left at that date: from the next one
                    position = (date + 1, "")
                    continue
            position = fresh[-1]
            records = await self._load([name for _, name in fresh], chunk)
            yield [r for r in records if r is not None]
