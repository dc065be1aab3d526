"""Making an account's copy of its label index from Redis, and keeping it current from
the account's audit stream: the reads that search.py's module notes describe (search.py
keeps the copies and decides when each is made; label_copy.py and ordered_lines.py are
the copy itself, copy_reads.py joins the reads in C)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Protocol

import orjson
import redis.asyncio as aioredis

from .copy_reads import TokenOrder, creation_dates, in_token_order, member_of
from .copy_values import token_score
from .label_copy import AccountCopy
from .lua import Scripts
from .names import Keyspace, is_role
from .ordered_lines import LAST_USED, ORDERS_KEPT, OrderedLines
from .packed_index import PackedIndex, counts_of, whole_score
from .records import ACTIVE, grant_fields
from .steps import release
from .used_order import MOVES_KEPT, UsedOrder, drop_use_order, last_use_by_line, with_uses

# members read per round trip while a copy is made
READ_CHUNK = 10_000
# events read per round trip while taking in changes
EVENTS_CHUNK = 1_000
# moves stream entries read per round trip
MOVES_READ = 16
# keys moved in last-use order followed one by one, at most (or one in MOVED_PART of
# the copy's): past them the order is made again (each page checks each of them, ~1.5
# µs a key: 15 ms for the 10,000 of a copy of 1,000,000 keys)
MOVED_AT_MOST, MOVED_PART = 1_000, 100
# the actions that can change a key's line in the copy: its label, status, roles or
# token date
KEY_ACTIONS = ("key.create", "key.update", "key.delete", "token.renew", "token.renew-now",
               "token.finish-renewal", "token.undo-renewal")


class ReadLimits(Protocol):
    """What a copy is read within (LabelSearch's, which tests change): members per round
    trip, the most a copy holds, and which roles it tags (the largest, up to
    ``tagged_roles``)."""

    read_chunk: int
    max_keys: int
    tagged_roles: int


class CopySync:
    """Reads an account's copy from Redis (:meth:`build`) and the changes since
    (:meth:`take_in`)."""

    def __init__(self, client: aioredis.Redis, names: Keyspace, scripts: Scripts,
                 limits: ReadLimits):
        self.redis = client
        self.names = names
        self.scripts = scripts
        self.limits = limits
        self.builds = 0  # copies read, for tests

    async def build(self, account: str) -> AccountCopy | None:
        """The account's copy, made from its indexes and current as of its last event;
        None when the label index holds more than ``max_keys`` or changes faster than
        it can be read."""
        label = self.names.account(account, "labels")
        audit = self.names.account(account, "audit")
        # the last event before the reads: every change after it is taken in after
        last_event = await self._newest_event(audit)
        # the four reads at once: Redis answers one while this process parses another's
        # answer (a third less time at 100,000 keys than one after the other)
        members, (keys, scores), (made, made_scores), (roles, role_bits) = await asyncio.gather(
            self._by_value(label),
            self._by_ranks(self.names.account(account, "tokens")),
            self._by_ranks(self.names.account(account, "created")),
            self._holders(account, audit))
        if members is None:
            return None
        self.builds += 1
        # ~8 s of joining, lowering, indexing and ordering at 1,000,000 keys: in a
        # thread, in steps (steps.py), so that the event loop serves this process's other
        # requests meanwhile; the reads are emptied there, a step at a time
        copy, ordered = await asyncio.to_thread(
            _copy_of, members, keys, scores, made, made_scores, roles, role_bits, last_event)
        if not await self.take_in(account, copy):
            return None  # changing faster than it can be read: searched in Redis
        if ordered.unplaced:
            # keys whose token score or creation date the reads by ranks missed (shifted
            # by a change meanwhile): read as they are now
            await self.read_again(account, copy, ordered.unplaced)
        return copy

    async def _by_value(self, label: str) -> list[str] | None:
        """The label index's members in order; None past ``max_keys``. Read by value
        from the last one read, not by rank: a member added or removed meanwhile shifts
        no other (its event is taken in afterwards)."""
        members: list[str] = []
        after: list[object] = ["", ""]  # from the first
        while True:
            flat = await self.scripts.packed_index(
                keys=[label], args=["after", *after, self.limits.read_chunk])
            chunk = flat[0::2]
            members += chunk
            if len(members) > self.limits.max_keys:
                return None
            if len(chunk) < self.limits.read_chunk:
                return members
            after = [0, chunk[-1]]

    async def _newest_event(self, audit: str) -> str:
        newest = await self.redis.xrevrange(audit, count=1)
        return newest[0][0] if newest else "0-0"

    async def _by_ranks(self, index: str) -> tuple[list[str], list[int]]:
        """The members of one of the account's dated indexes (token or creation date, or
        last uses: packed sets) in order, and their scores. Read by ranks: a key
        that a change meanwhile shifts past a chunk's end is missed or read twice; the
        key changed is read again from its event, a key missed is found missing
        (in_token_order) and read again."""
        keys: list[str] = []
        scores: list[int] = []
        while True:
            flat = await self.scripts.packed_index(
                keys=[index], args=["range", len(keys), self.limits.read_chunk, "0"])
            keys += flat[0::2]
            try:  # a whole number's score is written as one (up to 17 digits)
                read = list(map(int, flat[1::2]))
            except ValueError:
                read = list(map(int, map(float, flat[1::2])))
            scores += read
            if len(flat) < 2 * self.limits.read_chunk or len(keys) > self.limits.max_keys:
                return keys, scores

    async def _holders(self, account: str, audit: str) -> tuple[list[str], dict[str, int]]:
        """The roles the copy tags (the account's largest, up to ``tagged_roles``: a
        role past them is checked on its holders one by one, as a tagged role held by
        fewer keys than one in ``holders_before_count`` is with q) and the bits of those
        each holder holds (bit i: role i).

        Read by ranks, each role's holders while no event is appended to the account's
        audit stream (every change of a key appends one in the same step, so none
        shifted a holder past a chunk's end); a role whose holders change throughout
        three reads is not tagged."""
        in_use = [r for r in await self.redis.smembers(self.names.account(account, "roles"))
                  if is_role(r)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for role in in_use:
                pipe.hget(*counts_of(self.names.role_holders(account, role)))
            sizes = [int(n or 0) for n in await pipe.execute()]
        ranked = sorted(zip(sizes, in_use, strict=True), key=lambda s: (-s[0], s[1]))
        roles: list[str] = []
        bits: dict[str, int] = {}
        for size, role in ranked[:self.limits.tagged_roles]:
            if not size:
                break
            holders = await self._read_unchanged(self.names.role_holders(account, role),
                                                 audit)
            if holders is None:
                continue
            # in a thread: a loop over ~500,000 holders held the event loop ~0.2 s
            await asyncio.to_thread(_add_bit, bits, holders, 1 << len(roles))
            roles.append(role)
        return roles, bits

    async def _read_unchanged(self, index: str, audit: str) -> list[str] | None:
        for _ in range(3):
            before = await self._newest_event(audit)
            members: list[str] = []
            while True:
                chunk = [k for k, _ in await PackedIndex(self.scripts, index).range(
                    len(members), self.limits.read_chunk)]
                members += chunk
                if len(chunk) < self.limits.read_chunk or len(members) > self.limits.max_keys:
                    break
            if await self._newest_event(audit) == before:
                return members
        return None

    async def take_in(self, account: str, copy: AccountCopy) -> bool:
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
            await self.read_again(account, copy, changed)
        if copy.used is not None:
            await self.take_in_moves(account, copy)
        return True

    async def order_by_use(self, account: str, copy: AccountCopy) -> None:
        """Keep ``copy``'s lines in last-use order too (used_order.py): the account's
        moves stream made (or an entry appended: where this read starts from), then its
        last-use index read by ranks, a key that a use meanwhile shifted past a chunk's
        end read by key (a key used meanwhile is in the stream too)."""
        moves = self.names.account(account, "moves")
        used_index = self.names.account(account, "uses")
        moves_from = await self.redis.xadd(moves, {"k": "", "t": ""}, maxlen=MOVES_KEPT,
                                           approximate=False)
        keys, times = await self._by_ranks(used_index)
        # the lines as they are now (one copy of each string, which the steps below read
        # without copying it again): those blanked from here on are blanked in the order
        # once it is made (AccountCopy.blanked)
        frozen = dataclasses.replace(copy, members=bytes(copy.members),
                                     lowered=bytes(copy.lowered), orders={})
        last_used, unread = await asyncio.to_thread(last_use_by_line, frozen, keys, times)
        del keys, times
        for app_key, at in (await self._uses_of(unread)).items():
            last_used[frozen.line_number(app_key)] = at
        # the keys read again before the stream's entry were read with the uses then
        uses = await self._uses_of([k for k, f in copy.fresh.items() if f.member is not None])
        order = await asyncio.to_thread(OrderedLines.of, frozen, LAST_USED, last_used)
        del frozen
        copy.orders[LAST_USED] = order
        for number in copy.blanked:
            order.blank(number, copy.scores[number])
        with_uses(copy, uses)
        copy.used = UsedOrder(last_used, moves_from)

    async def _uses_of(self, keys: list[str]) -> dict[str, int]:
        """The last use of each of ``keys``, from its hash, as the last-use index holds
        it (0: never, or deleted)."""
        uses: dict[str, int] = {}
        for first in range(0, len(keys), self.limits.read_chunk):
            chunk = keys[first:first + self.limits.read_chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for app_key in chunk:
                    pipe.hget(self.names.key(app_key), "lastUsed")
                read = await pipe.execute()
            for app_key, at in zip(chunk, read, strict=True):
                uses[app_key] = whole_score(at)
        return uses

    async def take_in_moves(self, account: str, copy: AccountCopy) -> None:
        """Take in the uses appended to the account's moves stream since the last taken
        in; drop the copy's last-use order when those are gone, or when more keys moved
        than MOVED_PART of the copy (made again when next asked for). Two readers at once
        (a page and the follower, search.py) take in the same uses alike."""
        used = copy.used
        moves = self.names.account(account, "moves")
        while used is not None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xrange(moves, min="-", max="+", count=1)
                pipe.xrange(moves, min="(" + used.moves_from, max="+", count=MOVES_READ)
                first, entries = await pipe.execute()
            if copy.used is not used:
                return  # dropped (or made again) meanwhile
            if not first or _after(first[0][0], used.moves_from):
                drop_use_order(copy)  # the uses since the last taken in are not all there
                return
            for entry, fields in entries:
                keys, times = fields.get("k", ""), fields.get("t", "")
                for app_key, at in zip(keys.split("\n") if keys else (),
                                       times.split("\n") if times else (), strict=False):
                    used.move(copy, app_key, _number(at) or 0)
                if _after(entry, used.moves_from):  # (another reader may be ahead)
                    used.moves_from = entry
            if len(used.moved) > max(MOVED_AT_MOST, copy.count // MOVED_PART):
                drop_use_order(copy)
                return
            if len(entries) < MOVES_READ:
                return

    async def read_again(self, account: str, copy: AccountCopy, keys: Iterable[str]) -> None:
        keys = list(keys)
        async with self.redis.pipeline(transaction=False) as pipe:
            for app_key in keys:
                pipe.hmget(self.names.key(app_key), "acct", "label", "lf", "status",
                           "tokCreated", f"g:{account}", "created", "lastUsed")
            found = await pipe.execute()
        for app_key, (owner, label, folded, status, token_date, grant, created,
                      last_used) in zip(keys, found, strict=True):
            if owner != account:
                copy.read_again(app_key, None)
                continue
            # the creation date as the creation date index's status runs hold it
            copy.read_again(app_key, member_of(app_key, label, folded),
                            token_score(_number(token_date), status == ACTIVE),
                            _roles(grant),
                            token_score(_number(created or token_date), True),
                            _number(last_used) or 0)


def _number(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _roles(grant: str | None) -> list[str]:
    """The roles a key's grant in its own account holds ('g:' field: JSON)."""
    try:
        roles = grant_fields(grant).get("roles") if grant else None
    except (orjson.JSONDecodeError, AttributeError):
        return []
    return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []


def _after(event: str, other: str) -> bool:
    """Whether stream id ``event`` comes after ``other``."""
    def parts(value: str) -> tuple[int, int]:
        ms, _, seq = value.partition("-")
        return int(ms), int(seq or 0)
    return parts(event) > parts(other)


def _keys_named(events: list[tuple[str, dict[str, str]]], account: str) -> set[str]:
    """The keys of ``account`` that the key events of its stream name (records.py
    AUDIT_FIELDS; an older keygate's, in one JSON field)."""
    named = set()
    for _, fields in events:
        if "event" in fields:
            try:
                event = orjson.loads(fields["event"])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict) or event.get("account") != account:
                continue
        else:
            event = fields
        if event.get("action") in KEY_ACTIONS and isinstance(event.get("target"), str):
            named.add(event["target"])
    return named


def _add_bit(bits: dict[str, int], holders: Iterable[str], bit: int) -> None:
    """Give each of ``holders`` ``bit`` in ``bits``."""
    for key in holders:
        bits[key] = bits.get(key, 0) | bit


def _copy_of(members: list[str], keys: list[str], scores: list[int], made: list[str],
             made_scores: list[int], roles: list[str], role_bits: dict[str, int],
             last_event: str) -> tuple[AccountCopy, TokenOrder]:
    """The copy of what :meth:`CopySync.build` read, with its orders (each read emptied
    once used: ~100 MB each at 1,000,000 keys), and the reads' token order (its keys to
    read again)."""
    created_of = creation_dates(made, made_scores)
    release(made, made_scores)
    ordered = in_token_order(members, keys, scores, role_bits, created_of)
    release(members, keys, scores, role_bits, created_of)
    copy = AccountCopy.of(ordered.members, last_event, ordered.scores, ordered.role_bits,
                          roles, ordered.created)
    release(ordered.members, ordered.scores, ordered.role_bits, ordered.created)
    copy.orders.update(OrderedLines.all_of(copy, ORDERS_KEPT))
    return copy, ordered
