"""Listing from the indexes the change scripts keep (gateway/store/listing.py): every
filter, q, sort, order and page answers what a brute-force filter and sort over the same
keys answers, on the real Redis; the indexes stay right after any sequence of changes;
indexes built for older data (lazily or by ``keygate store migrate``) equal those the
scripts keep; the renewal gauge's counts are the brute-force counts; and abusive
queries cost bounded work and leave nothing behind.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import on_one_server_and_a_cluster
from interleave import Before
from older_layouts import creation_index_as_sorted_set, hashes_written_the_longer_way

from gateway.app import build_gateway
from gateway.cli import main
from gateway.context import Gateway
from gateway.renewal import ALERTS, alert_range, renewal_alert
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR as CLI
from gateway.store import LAYOUT, SORT_FIELDS, KeyQuery, Store
from gateway.store.lua import constant
from gateway.store.names import (
    LISTED,
    OLDER_CREATION_INDEX,
    OLDER_INDEXES,
    glob_escape,
    is_role,
)
from gateway.store.packed_index import PackedIndex
from gateway.store.records import label_fold

# the store, cache and revocation behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

ACCOUNT = "acme"
ROLES = ("owner", "orders-reader", "orders-writer", "rare")
LABELS = (
    "alpha", "Alpha", "beta key", "Straße", "STRASSE", "café", "CAFÉ", "ĲSSEL", "日本",
    "under_score", "percent %", "dot.star .*", "[bracket]", "(paren)", "a", "zz", "key 99",
    "Z", "ǅungla", "ﬁsh", "ß",
)
DAY_MS = 86_400_000


async def brute(store: Store, query: KeyQuery) -> tuple[list[str], int]:
    """The answer by definition: every key read, filtered by KeyQuery.accepts, sorted."""
    records = [r for r in await store.all_keys(ACCOUNT) if query.accepts(r)]
    records.sort(key=SORT_FIELDS[query.sort], reverse=query.descending)
    start = (query.page - 1) * query.per_page
    return [r.app_key for r in records[start : start + query.per_page]], len(records)


async def indexed(store: Store, query: KeyQuery) -> tuple[list[str], int]:
    records, total = await store.list_keys(ACCOUNT, query)
    return [r.app_key for r in records], total


async def assert_same(store: Store, query: KeyQuery) -> None:
    assert await indexed(store, query) == await brute(store, query), query


def no_owner(role: str) -> bool:
    return role != "owner"


class Keys:
    """Makes keys in the store directly, with names of any order."""

    def __init__(self, store: Store, seed: int):
        self.store = store
        self.random = random.Random(seed)
        self.made: list[str] = []

    async def create(self, label: str | None = None, roles: tuple[str, ...] | None = None) -> str:
        app_key = f"kgk-{ACCOUNT}-{uuid.UUID(int=self.random.getrandbits(128)).hex[:10].upper()}"
        if self.random.random() < 0.3:
            app_key = app_key.lower()  # upper and lower case both sort and match
        label = label if label is not None else self.random.choice(LABELS)
        if roles is None:
            roles = tuple(self.random.sample(ROLES[:3], self.random.randint(0, 2)))
        await self.store.create_key(app_key, ACCOUNT, label, roles, "d" * 64)
        self.made.append(app_key)
        return app_key


def queries(rng: random.Random, now_ms: int, count: int) -> Iterator[KeyQuery]:
    """Every sort and order for each single filter, then random combinations."""
    ranges = [alert_range(level, 3, now_ms) for level in ALERTS] + [
        (now_ms - 40 * DAY_MS, now_ms - 10 * DAY_MS)
    ]
    singles: list[dict[str, Any]] = [
        {}, {"status": "active"}, {"status": "inactive"}, {"role": "owner"}, {"role": "rare"},
        {"role": "ghost"}, {"q": "a"}, {"q": "STRASSE"}, {"q": "kgk-acme-"},
        {"token_created": ranges[1]}, {"token_created": ranges[3]},
        {"may_act_on": no_owner, "own_key": ""},
    ]
    for filters, sort, descending in itertools.product(singles, SORT_FIELDS, (True, False)):
        for page, per_page in ((1, 7), (3, 7), (1, 1000)):
            yield KeyQuery(sort=sort, descending=descending, page=page, per_page=per_page,
                           **filters)
    needles = ["", "a", "ß", "ss", "%", ".*", "[", "(", "%z", "e", "9", "-", "é", "z"]
    for _ in range(count):
        yield KeyQuery(
            q=rng.choice(needles),
            status=rng.choice([None, "active", "inactive"]),
            role=rng.choice([None, None, *ROLES]),
            token_created=rng.choice([None, None, *ranges]),
            may_act_on=rng.choice([None, None, no_owner]),
            sort=rng.choice(list(SORT_FIELDS)),
            descending=rng.random() < 0.5,
            page=rng.choice([1, 1, 2, 5, 40]),
            per_page=rng.choice([1, 3, 10, 50]),
        )


async def spread(gateway: Gateway, keys: Keys, clock: Any, n: int) -> None:
    """``n`` keys created over ten months, some deactivated, renewed, used, a few rare."""
    store = gateway.store
    for i in range(n):
        clock.advance(keys.random.randint(0, 9) * DAY_MS / 1000)
        roles = ("rare",) if i % 97 == 5 else None
        app_key = await keys.create(roles=roles)
        if keys.random.random() < 0.3:
            await store.update_key(ACCOUNT, app_key, status="inactive")
    for app_key in keys.random.sample(keys.made, n // 4):
        await store.renew_token(ACCOUNT, app_key, "e" * 64, keep_old=False, actor=CLI)
    await store.record_last_used(
        {k: int(clock() * 1000) - keys.random.randint(0, 10**9) for k in keys.made[::3]}
    )


# -- every query against brute force --------------------------------------------------------
async def test_every_filter_sort_and_page_answers_as_brute_force(gateway, clock):
    keys = Keys(gateway.store, 1)
    await spread(gateway, keys, clock, 240)
    rng = random.Random(2)
    for query in queries(rng, int(clock() * 1000), 400):
        await assert_same(gateway.store, query)


async def test_pages_past_the_middle_walked_from_the_end_answer_as_brute_force(gateway, clock):
    """A page past the middle of dense matches is walked from the index's other end and
    read back in order: every page, both directions, of each filter dense enough to be
    walked, including the one whose walk skips the keys made after a token-date range."""
    keys = Keys(gateway.store, 7)
    await spread(gateway, keys, clock, 150)
    now_ms = int(clock() * 1000)
    filters: list[dict[str, Any]] = [
        {"status": "active"}, {"role": "orders-reader"}, {"q": "a"},
        {"token_created": (now_ms - 400 * DAY_MS, now_ms - 60 * DAY_MS)},
        {"token_created": alert_range("red", 3, now_ms)},  # the oldest: from the oldest end
        {"status": "active", "q": "a"},
        # the role's holders in token date order, both statuses merged, counted per run
        {"role": "orders-reader", "token_created": (None, now_ms - 20 * DAY_MS)},
    ]
    for extra, sort, descending in itertools.product(filters, SORT_FIELDS, (True, False)):
        _, total = await indexed(gateway.store, KeyQuery(**extra))
        assert total > 20, extra  # dense enough that the walk is cheaper than a sort
        for page in range(1, total // 11 + 2):
            await assert_same(gateway.store, KeyQuery(
                sort=sort, descending=descending, page=page, per_page=11, **extra))


async def test_own_key_is_listed_whatever_its_roles(gateway, clock):
    keys = Keys(gateway.store, 3)
    mine = await keys.create("mine", ("owner",))
    await keys.create("other", ("owner",))
    await keys.create("reader", ("orders-reader",))
    query = KeyQuery(may_act_on=no_owner, own_key=mine, sort="label", descending=False)
    assert await indexed(gateway.store, query) == ([mine, keys.made[2]], 2)
    await assert_same(gateway.store, query)
    # filtered by a role the caller may not act on: its own key alone, if it holds it
    # and passes the other filters, and is a key of the account listed
    elsewhere = "kgk-beta-0000000001"
    await gateway.store.create_key(elsewhere, "beta", "other", ("owner",), "d" * 64)
    for own, extra, expected in (
        (mine, {}, ([mine], 1)),
        (mine, {"page": 2, "per_page": 1}, ([], 1)),
        (mine, {"q": "other"}, ([], 0)),
        (mine, {"status": "inactive"}, ([], 0)),
        (keys.made[1], {"q": "other"}, ([keys.made[1]], 1)),
        (keys.made[2], {}, ([], 0)),  # its own key does not hold the role
        ("", {}, ([], 0)),
        ("kgk-elsewhere-0000000000", {}, ([], 0)),  # no such key
        (elsewhere, {"q": "other"}, ([], 0)),  # not of this account
    ):
        query = KeyQuery(role="owner", may_act_on=no_owner, own_key=own, **extra)
        assert await indexed(gateway.store, query) == expected, (own, extra)
        await assert_same(gateway.store, query)


async def test_deep_pages_in_key_order_skip_by_bisection(gateway, clock):
    """appKey order merges the status index's two parts; every offset, both directions,
    with the statuses interleaved."""
    keys = Keys(gateway.store, 4)
    for i in range(60):
        app_key = await keys.create()
        if i % 3 == 0:
            await gateway.store.update_key(ACCOUNT, app_key, status="inactive")
    for descending, per_page in itertools.product((True, False), (1, 4, 7)):
        for page in range(1, 62 // per_page + 2):
            await assert_same(gateway.store, KeyQuery(
                sort="appKey", descending=descending, page=page, per_page=per_page))


async def test_old_tokens_newest_first_skip_the_keys_made_after_them(gateway, clock):
    """The renewal alert's red keys are the oldest; newest first, the walk starts after
    the keys made since the range's end (a token is never older than its key), yet a
    token an instance with a slow clock renewed just before its key's creation date
    is still found: the skip leaves a day's margin."""
    keys = Keys(gateway.store, 5)
    old = []
    for _ in range(5):
        clock.advance(60)
        old.append(await keys.create())
    clock.advance(200 * DAY_MS / 1000)
    made_at = int(clock() * 1000)
    skewed = await keys.create()
    clock.advance(-3600)  # another instance, an hour behind, renews it
    await gateway.store.renew_token(ACCOUNT, skewed, "e" * 64, keep_old=False, actor=CLI)
    clock.advance(3600 + 10 * DAY_MS / 1000)
    for _ in range(30):  # listed first newest first, none of them matching
        clock.advance(60)
        await keys.create()
    before_it = (None, made_at - 1_800_000)  # its token, not its key, is before this
    for per_page, page in ((2, 1), (2, 2), (3, 2), (50, 1)):
        await assert_same(gateway.store, KeyQuery(token_created=before_it, per_page=per_page,
                                                  page=page))
    assert await indexed(gateway.store, KeyQuery(token_created=before_it, per_page=50)) == (
        [skewed, *reversed(old)], 6)


# -- the indexes after any sequence of changes ----------------------------------------------
PACKED = ("created", "tokens", "uses", "labels", "statuses")


async def packed_sets(gateway: Gateway) -> list[str]:
    """The names of the account's packed sets: the creation date, token date, last-use,
    label and status indexes, and the holders of each role in use."""
    names = gateway.store.names
    in_use = await gateway.store.redis.smembers(names.account(ACCOUNT, "roles"))
    return [*(names.account(ACCOUNT, what) for what in PACKED),
            *(names.role_holders(ACCOUNT, role) for role in sorted(in_use) if is_role(role))]


async def drop_packed_sets(gateway: Gateway) -> None:
    for name in await packed_sets(gateway):
        await PackedIndex(gateway.store.scripts, name).drop()


async def snapshot(gateway: Gateway) -> dict[str, Any]:
    """Every listing index of the account, as data (role holders left empty are gone);
    each packed set is checked against its rules too."""
    redis = gateway.store.redis
    out: dict[str, Any] = {}
    for name in gateway.store.names.listing(ACCOUNT):
        if not name.endswith((":roles", *(f":{what}" for what in PACKED))):
            # (role names in use: only ever grows, checked apart)
            out[name] = await redis.zrange(name, 0, -1, withscores=True)
    for name in await packed_sets(gateway):
        index = PackedIndex(gateway.store.scripts, name)
        assert await index.problems() == []
        if entries := await index.range(0, 10**9):
            out[name] = entries
    return out


async def random_changes(gateway: Gateway, keys: Keys, clock: Any, steps: int) -> None:
    store, rng = gateway.store, keys.random
    for _ in range(steps):
        clock.advance(rng.randint(0, 20) * DAY_MS / 1000)
        live = [k for k in keys.made if await store.get_key(ACCOUNT, k)]
        action = rng.choice(
            ["create", "create", "label", "roles", "status", "delete", "renew-now",
             "renew-later", "finish", "undo", "used"] if live else ["create"]
        )
        target = rng.choice(live) if live else ""
        if action == "create":
            await keys.create()
        elif action == "label":
            await store.update_key(ACCOUNT, target, label=rng.choice(LABELS))
        elif action == "roles":
            await store.update_key(ACCOUNT, target,
                                   roles=rng.sample(ROLES, rng.randint(0, 3)))
        elif action == "status":
            await store.update_key(ACCOUNT, target,
                                   status=rng.choice(["active", "inactive"]))
        elif action == "delete":
            await store.delete_key(ACCOUNT, target)
        elif action.startswith("renew"):
            try:
                await store.renew_token(ACCOUNT, target, "f" * 64,
                                        keep_old=action == "renew-later", actor=CLI)
            except Exception as exc:  # a pending renewal refuses another
                assert type(exc).__name__ == "RenewalPending"
        elif action in ("finish", "undo"):
            try:
                await store.end_renewal(ACCOUNT, target, finish=action == "finish", actor=CLI)
            except Exception as exc:
                assert type(exc).__name__ == "NoRenewalPending"
        else:
            await store.record_last_used({target: int(clock() * 1000)})


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_indexes_stay_right_after_any_sequence_of_changes(gateway, clock, seed):
    keys = Keys(gateway.store, seed)
    await random_changes(gateway, keys, clock, 150)
    rng = random.Random(seed)
    for query in itertools.islice(queries(rng, int(clock() * 1000), 150), 0, None, 5):
        await assert_same(gateway.store, query)
    kept = await snapshot(gateway)
    # a policy reload's count of the keys holding each role, from the role sets, is the
    # count by reading every key (what it reads while an account is not indexed yet)
    holding = Counter(role for r in await gateway.store.all_keys(ACCOUNT) for role in r.roles)
    assert (await gateway.store.role_holders()).get(ACCOUNT, {}) == dict(holding)
    # the same indexes built from the records alone (as for data older than them)
    await wipe_indexes(gateway)
    assert (await gateway.store.role_holders(chunk=7)).get(ACCOUNT, {}) == dict(holding)
    await gateway.store.index_listing(ACCOUNT)
    assert await snapshot(gateway) == kept
    in_use = await gateway.store.redis.smembers(gateway.store.names.account(ACCOUNT, "roles"))
    held = {r for r in await gateway.store.all_keys(ACCOUNT) for r in r.roles}
    assert held | {LISTED} <= in_use and "" not in in_use


# -- data written before the indexes --------------------------------------------------------
async def older_creation_index(gateway: Gateway) -> None:
    """The creation index as keygate wrote it before it held each status as a run: a
    sorted set (``keys``), every key at its creation date, whatever its status; the
    account's indexes not marked complete in this layout."""
    store = gateway.store
    await creation_index_as_sorted_set(store, ACCOUNT)
    index = store.names.account(ACCOUNT, OLDER_CREATION_INDEX)
    for record in await store.all_keys(ACCOUNT):
        await store.redis.zadd(index, {record.app_key: record.created})
    roles = store.names.account(ACCOUNT, "roles")
    if await store.redis.srem(roles, LISTED):
        await store.redis.sadd(roles, "")


async def wipe_indexes(gateway: Gateway) -> None:
    """The account as an older keygate left it: no listing index (but the creation-date
    one, which it had), no 'lf' field."""
    await older_creation_index(gateway)
    redis, names = gateway.store.redis, gateway.store.names
    await drop_packed_sets(gateway)
    await redis.delete(*names.listing(ACCOUNT))
    for app_key in await redis.zrange(names.account(ACCOUNT, OLDER_CREATION_INDEX), 0, -1):
        await redis.hdel(names.key(app_key), "lf")


async def layout_one(gateway: Gateway) -> None:
    """The account as layout 1 kept it: its token date, last-use, label, status and role
    holders' indexes sorted sets (``tok``, ``used``, ``label``, ``status``,
    ``holders:{role}``) as its creation index (``keys``), its indexes marked complete
    with ':status-runs'; no packed set."""
    redis, names = gateway.store.redis, gateway.store.names
    await creation_index_as_sorted_set(gateway.store, ACCOUNT)
    await drop_packed_sets(gateway)
    labels = names.account(ACCOUNT, "labels")
    await redis.delete(f"{labels}:zones", f"{labels}:zone-dates")
    roles = names.account(ACCOUNT, "roles")
    await redis.srem(roles, LISTED)
    await redis.sadd(roles, ":status-runs")
    for r in await gateway.store.all_keys(ACCOUNT):
        token_score = r.token_created + (INACTIVE_AT if r.status != "active" else 0)
        await redis.zadd(names.account(ACCOUNT, "tok"), {r.app_key: token_score})
        await redis.zadd(names.account(ACCOUNT, "used"), {r.app_key: r.last_used or 0})
        await redis.zadd(names.account(ACCOUNT, "status"), {r.app_key: int(r.status != "active")})
        await redis.zadd(names.account(ACCOUNT, "label"),
                         {f"{label_fold(r.label)}\0{r.app_key}": 0})
        for role in r.roles:
            await redis.zadd(names.older_holders(ACCOUNT, role), {r.app_key: token_score})


async def layout_two(gateway: Gateway) -> None:
    """The account as layout 2 kept it: its creation index the sorted set ``keys`` (in
    status runs), every other index as now, marked complete with ':layout-2'; its keys'
    hashes written the longer way (the digests in hex, the own grant an object, the
    creation date always)."""
    store = gateway.store
    await creation_index_as_sorted_set(store, ACCOUNT)
    await hashes_written_the_longer_way(store, ACCOUNT)
    roles = store.names.account(ACCOUNT, "roles")
    await store.redis.srem(roles, LISTED)
    await store.redis.sadd(roles, ":layout-2")


async def test_layout_two_is_indexed_again_and_its_creation_sorted_set_removed(
    gateway, clock
):
    """An account of layout 2 is listed once its first listing has put its keys in the
    packed creation index, then removed the sorted set and the older mark; keys made,
    changed and deleted before that listing are in it (or not) as they should be, and
    every key is read once by a pass meanwhile."""
    store = gateway.store
    redis, names = store.redis, store.names
    keys = Keys(store, 31)
    await spread(gateway, keys, clock, 50)
    await layout_two(gateway)
    older = names.account(ACCOUNT, OLDER_CREATION_INDEX)
    assert await redis.zcard(older) == 50
    assert not await store.listing_current(ACCOUNT)
    clock.advance(60)
    made = await keys.create("made meanwhile")
    await store.delete_key(ACCOUNT, keys.made[0], actor=CLI)
    await store.update_key(ACCOUNT, keys.made[1], status="inactive", roles=["rare"])
    await store.renew_token(ACCOUNT, keys.made[2], "b" * 64, keep_old=False, actor=CLI)
    # a pass over the keys meanwhile reads each live key once: the older index's, then
    # those made since (a key changed since is in both)
    seen = [name async for chunk in store.key_chunks(ACCOUNT, 7) for name in chunk]
    assert len(seen) == len(set(seen)) == 50 and made in seen and keys.made[0] not in seen
    live = {r.app_key for r in await store.all_keys(ACCOUNT)}
    assert len(live) == 50 and keys.made[0] not in live and made in live
    holding = Counter(role for r in await store.all_keys(ACCOUNT) for role in r.roles)
    assert (await store.role_holders()).get(ACCOUNT, {}) == dict(holding)
    await assert_same(store, KeyQuery(sort="creationDate", per_page=1000))
    await assert_same(store, KeyQuery(status="inactive", sort="creationDate",
                                      descending=False, per_page=7, page=2))
    assert await store.listing_current(ACCOUNT)
    assert not await redis.exists(older)
    in_use = await redis.smembers(names.account(ACCOUNT, "roles"))
    assert LISTED in in_use and ":layout-2" not in in_use
    after = await snapshot(gateway)
    assert len(after[names.account(ACCOUNT, "created")]) == 50
    await wipe_indexes(gateway)
    await store.index_listing(ACCOUNT)
    assert await snapshot(gateway) == after


async def previous_layout(gateway: Gateway) -> None:
    """The account as the layout before kept it: as layout 1, but the keys holding a
    role in a plain set (``roles:{role}``), token dates without their status, marked
    complete with ''."""
    await layout_one(gateway)
    redis, names = gateway.store.redis, gateway.store.names
    roles = names.account(ACCOUNT, "roles")
    await redis.srem(roles, ":status-runs")
    await redis.sadd(roles, "")
    for record in await gateway.store.all_keys(ACCOUNT):
        await redis.zadd(names.account(ACCOUNT, "tok"), {record.app_key: record.token_created})
        for role in record.roles:
            await redis.zrem(names.older_holders(ACCOUNT, role), record.app_key)
            await redis.sadd(names.older_role_set(ACCOUNT, role), record.app_key)


async def test_the_previous_layout_is_rebuilt_and_its_role_sets_removed(gateway, clock):
    """An account indexed by the previous keygate (role sets without token dates, token
    dates without their status) answers as brute force once its first listing has
    built the indexes again, and nothing of the old layout is left; changes made before
    that listing are kept."""
    keys = Keys(gateway.store, 23)
    await spread(gateway, keys, clock, 70)
    await previous_layout(gateway)
    redis, names = gateway.store.redis, gateway.store.names
    older = [names.older_role_set(ACCOUNT, role) for role in ROLES]
    assert await redis.exists(*older)
    assert not await gateway.store.listing_indexed(ACCOUNT)
    # a policy reload reads the keys themselves meanwhile, and counts right
    holding = Counter(role for r in await gateway.store.all_keys(ACCOUNT) for role in r.roles)
    assert (await gateway.store.role_holders()).get(ACCOUNT, {}) == dict(holding)
    await gateway.store.update_key(ACCOUNT, keys.made[0], status="inactive",
                                   roles=["rare"])
    await assert_same(gateway.store, KeyQuery(role="rare", status="inactive", per_page=1000))
    assert await gateway.store.listing_indexed(ACCOUNT)
    assert not await redis.exists(*older)
    in_use = await redis.smembers(names.account(ACCOUNT, "roles"))
    assert LISTED in in_use and "" not in in_use
    after = await snapshot(gateway)
    await wipe_indexes(gateway)
    await gateway.store.index_listing(ACCOUNT)
    assert await snapshot(gateway) == after


async def test_layout_one_is_indexed_again_and_its_last_use_set_removed(gateway, clock):
    """An account of layout 1 is not listed from indexes it lacks: its first listing
    builds the packed sets, then removes the sorted sets and the older mark (never taken
    for a role); uses and changes made before that listing are in them."""
    keys = Keys(gateway.store, 29)
    await spread(gateway, keys, clock, 60)
    kept = await snapshot(gateway)
    await layout_one(gateway)
    redis, names = gateway.store.redis, gateway.store.names
    assert not await gateway.store.listing_indexed(ACCOUNT)
    assert ":status-runs" not in (await gateway.store.role_holders()).get(ACCOUNT, {})
    used_at = int(clock() * 1000)
    await gateway.store.record_last_used({keys.made[1]: used_at})
    await gateway.store.update_key(ACCOUNT, keys.made[2], status="inactive")
    await gateway.store.update_key(ACCOUNT, keys.made[3], status="active")
    await assert_same(gateway.store, KeyQuery(sort="lastUsed", per_page=1000))
    await assert_same(gateway.store, KeyQuery(sort="status", per_page=1000))
    await assert_same(gateway.store, KeyQuery(sort="appKey", status="inactive", page=2,
                                              per_page=5))
    await assert_same(gateway.store, KeyQuery(sort="lastUsed", descending=False, page=3,
                                              per_page=9))
    assert await gateway.store.listing_indexed(ACCOUNT)
    assert not await redis.exists(*(names.account(ACCOUNT, what) for what in OLDER_INDEXES),
                                  *(names.older_holders(ACCOUNT, role) for role in ROLES))
    in_use = await redis.smembers(names.account(ACCOUNT, "roles"))
    assert LISTED in in_use and ":status-runs" not in in_use
    after = await snapshot(gateway)
    uses = after[names.account(ACCOUNT, "uses")]
    assert (keys.made[1], used_at) in uses and len(uses) == 60
    statuses = dict(kept[names.account(ACCOUNT, "statuses")])
    statuses.update({keys.made[2]: 1, keys.made[3]: 0})
    assert dict(after[names.account(ACCOUNT, "statuses")]) == statuses
    # what the first listing built is what the indexes of this layout hold
    await wipe_indexes(gateway)
    await gateway.store.index_listing(ACCOUNT)
    assert await snapshot(gateway) == after


async def test_older_data_is_indexed_on_its_first_listing(gateway, clock):
    keys = Keys(gateway.store, 21)
    await spread(gateway, keys, clock, 80)
    kept = await snapshot(gateway)
    await wipe_indexes(gateway)
    assert not await gateway.store.listing_indexed(ACCOUNT)
    # changes made before the indexes are built are kept in them meanwhile
    await gateway.store.update_key(ACCOUNT, keys.made[0], label="Øresund")
    await gateway.store.update_key(ACCOUNT, keys.made[1], status="inactive")
    await gateway.store.renew_token(ACCOUNT, keys.made[2], "a" * 64, keep_old=False, actor=CLI)
    await assert_same(gateway.store, KeyQuery(sort="label", q="s", per_page=1000))
    assert await gateway.store.listing_indexed(ACCOUNT)
    after = await snapshot(gateway)
    await wipe_indexes(gateway)
    await gateway.store.index_listing(ACCOUNT)
    assert await snapshot(gateway) == after
    assert after != kept  # the three changes are in them


async def test_a_new_account_is_indexed_from_its_first_key(gateway):
    assert await indexed(gateway.store, KeyQuery(status="active")) == ([], 0)
    assert not await gateway.store.redis.exists(
        gateway.store.names.account(ACCOUNT, "roles"))  # listing an empty account writes nothing
    await Keys(gateway.store, 5).create("first", ("owner",))
    assert await gateway.store.listing_indexed(ACCOUNT)


@pytest.fixture
async def local(env: dict[str, str], clock: Any) -> AsyncIterator[Gateway]:
    gw = build_gateway(load_settings(env=env), clock=clock)
    yield gw
    await gw.close()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        root.handlers[:] = handlers
        root.setLevel(level)
        return code, out

    return run


async def test_store_migrate_builds_what_is_missing_and_only_once(local, cli, clock):
    keys = Keys(local.store, 31)
    await spread(local, keys, clock, 50)
    kept = await snapshot(local)
    await wipe_indexes(local)
    code, out = await asyncio.to_thread(cli, "store", "migrate", "--json")
    assert code == 0 and json.loads(out) == {"indexed": {ACCOUNT: 50}, "layout": LAYOUT}
    assert await snapshot(local) == kept
    code, out = await asyncio.to_thread(cli, "store", "migrate")
    assert code == 0 and out.splitlines() == [
        "every account's indexes are complete", f"the store's layout is {LAYOUT}, this keygate's"]


async def test_a_creation_index_not_run_by_status_is_rebuilt(local, cli, clock):
    """An account a previous keygate indexed, with its inactive keys among the active ones
    in the creation index: its first listing rebuilds it, as does ``store migrate``."""
    keys = Keys(local.store, 33)
    await spread(local, keys, clock, 60)
    assert any(r.status == "inactive" for r in await local.store.all_keys(ACCOUNT))
    kept = await snapshot(local)
    await older_creation_index(local)
    assert not await local.store.listing_current(ACCOUNT)
    await assert_same(local.store, KeyQuery(status="inactive", per_page=1000))
    assert await local.store.listing_current(ACCOUNT)
    assert await snapshot(local) == kept
    await older_creation_index(local)
    code, out = await asyncio.to_thread(cli, "store", "migrate", "--json")
    assert code == 0 and json.loads(out) == {"indexed": {ACCOUNT: 60}, "layout": LAYOUT}
    assert await snapshot(local) == kept


# -- zones of the label index -------------------------------------------------------------
PERIOD = constant("status_runs", "ZONE_PERIOD")
INACTIVE_AT = constant("status_runs", "INACTIVE_AT")


async def assert_zones_hold_their_keys(gateway: Gateway) -> int:
    """Every label member's zone record (status_runs.lua) holds its key's status and
    token date: the least and greatest date of that status, and its period (or '~').
    Answers how many zones there are."""
    redis, names = gateway.store.redis, gateway.store.names
    label = names.account(ACCOUNT, "labels")
    fences = await redis.zrange(f"{label}:zones", 0, -1)
    records = await redis.hgetall(f"{label}:zone-dates")
    scores = dict(await PackedIndex(gateway.store.scripts,
                                    names.account(ACCOUNT, "tokens")).range(0, 10**9))
    for member, _ in await PackedIndex(gateway.store.scripts, label).range(0, 10**9):
        fence = fences[bisect.bisect_right(fences, member) - 1]
        record = records[fence]
        if record == "*":
            continue
        least0, most0, least1, most1, *marks = record.split()
        score = int(scores[member.partition("\0")[2]])
        status = 1 if score >= INACTIVE_AT else 0
        date = score - status * INACTIVE_AT
        least, most = ((least0, most0), (least1, most1))[status]
        assert int(least) <= date <= int(most), (member, record)
        assert marks == ["~"] or f"{status}.{date // PERIOD}" in marks, (member, record)
    return len(fences)


async def test_label_zones_skip_no_key_that_matches(gateway, clock):
    """Past ZONE_SPLIT keys the label index is cut into zones as keys come; labels in
    creation order ("key 1", "key 2", ...) put a token date range in a few zones, and a
    walk in label order with a status or token date filter skips the others. Every such
    page answers as brute force after splits, renewals, status changes, relabels and
    deletes (which widen records or leave them wider), with the zones of an index kept
    before zones (unknown: walked) and once index_zones has cut it again."""
    store, rng = gateway.store, random.Random(61)
    made: list[str] = []
    for first in range(0, 2600, 200):
        clock.advance(4 * DAY_MS / 1000)
        batch = [(i, f"kgk-{ACCOUNT}-{uuid.uuid4().hex[:10].upper()}")
                 for i in range(first, first + 200)]
        for at in range(0, len(batch), 20):
            await asyncio.gather(*(store.create_key(k, ACCOUNT, f"key {i}", ["orders-reader"],
                                                    "d" * 64) for i, k in batch[at:at + 20]))
        made += [k for _, k in batch]
    for app_key in rng.sample(made, 300):
        await store.update_key(ACCOUNT, app_key, status="inactive")
    for app_key in rng.sample(made, 60):
        await store.renew_token(ACCOUNT, app_key, "e" * 64, keep_old=False, actor=CLI)
    for app_key in rng.sample(made, 20):
        await store.update_key(ACCOUNT, app_key, label=f"key {rng.randrange(10**6)}")
    for app_key in rng.sample(made, 20):
        await store.delete_key(ACCOUNT, app_key)
    assert await assert_zones_hold_their_keys(gateway) > 3
    now = int(clock() * 1000)
    windows = [alert_range(level, 3, now) for level in ALERTS] + [
        (now - 30 * DAY_MS, now - 20 * DAY_MS), (None, now - 40 * DAY_MS)]
    # a millisecond's window: only the keys of one date, within one period of a zone
    records = await store.all_keys(ACCOUNT)
    windows += [(r.token_created, r.token_created + 1) for r in rng.sample(records, 3)]

    async def every_filter() -> None:
        records = await store.all_keys(ACCOUNT)  # brute force over one read of the keys
        for window, status, descending in itertools.product(
                [None, *windows], [None, "active", "inactive"], (True, False)):
            if window is None and status is None:
                continue
            for page in (1, 2, 9):
                query = KeyQuery(sort="label", descending=descending, token_created=window,
                                 status=status, page=page, per_page=40)
                matching = sorted((r for r in records if query.accepts(r)),
                                  key=SORT_FIELDS["label"], reverse=descending)
                expected = [r.app_key for r in matching[(page - 1) * 40:page * 40]]
                assert await indexed(store, query) == (expected, len(matching)), query

    await every_filter()
    # an index kept before zones: its first zone is unknown, then cut again
    label = store.names.account(ACCOUNT, "labels")
    await store.redis.delete(f"{label}:zones", f"{label}:zone-dates")
    await store.update_key(ACCOUNT, made[-1], label="key 0")
    assert await store.redis.hgetall(f"{label}:zone-dates") == {"": "*"}
    await every_filter()
    await store.index_zones(ACCOUNT)
    assert await assert_zones_hold_their_keys(gateway) > 3
    assert "*" not in (await store.redis.hgetall(f"{label}:zone-dates")).values()
    await every_filter()


# -- the renewal gauge's counts --------------------------------------------------------------
async def test_token_date_counts_are_the_alert_levels(gateway, clock):
    keys = Keys(gateway.store, 41)
    await spread(gateway, keys, clock, 120)
    for months_later in (0, 2, 4, 7):
        clock.advance(months_later * 31 * DAY_MS / 1000)
        now = int(clock() * 1000)
        for period in (3, 6):
            counts = await gateway.store.count_token_dates(
                ACCOUNT, [alert_range(level, period, now) for level in ALERTS])
            expected = Counter(renewal_alert(r.token_created, period, now)
                               for r in await gateway.store.all_keys(ACCOUNT))
            assert counts == [expected[level] for level in ALERTS]


# -- abuse --------------------------------------------------------------------------------
async def test_q_is_literal_and_long_q_is_bounded(gateway, clock):
    keys = Keys(gateway.store, 51)
    for label in ("100% sure", "a.b", "a*b", "[x]", "(y)", "^z$", "%z", "back\\slash", "?"):
        await keys.create(label)
    for needle in ("%", ".", "*", "[", "]", "(", "^", "$", "%z", "\\", "?", "a.", ".*",
                   "[x", "%s", "%%", "x" * 200, "é" * 200):
        await assert_same(gateway.store, KeyQuery(q=needle, per_page=100))


async def test_listing_over_http_refuses_a_q_past_its_limit(gateway, management, make_key):
    owner = await make_key("acme", ["owner"])
    headers = {"X-API-AppKey": owner.app_key, "X-API-AppToken": owner.token}
    url = "/api/v1/accounts/acme/keys"
    for q in ("%", ".*", "[", "\\", "x" * 200):
        resp = await management.get(url, params={"q": q}, headers=headers)
        assert resp.status == 200, await resp.text()
    resp = await management.get(url, params={"q": "x" * 201}, headers=headers)
    body = await resp.json()
    assert resp.status == 400 and set(body["error"]) == {"code", "message", "status",
                                                         "requestId"}


async def test_a_nul_in_q_matches_nothing(gateway, management, make_key):
    """No label or key holds a NUL, and the label index separates the folded label from
    the key with one: a ``q`` holding it matches nothing (it matched every key)."""
    owner = await make_key(ACCOUNT, ["owner"], label="plain")
    await make_key(ACCOUNT, ["orders-reader"], label="other")
    for q in ("%00", "plain%00kgk", "%00kgk"):
        answer = await management.get(f"/api/v1/accounts/{ACCOUNT}/keys?q={q}",
                                      headers=owner.headers)
        assert answer.status == 200, await answer.text()
        page = await answer.json()
        assert (page["items"], page["total"]) == ([], 0), q
    await assert_same(gateway.store, KeyQuery(q="\0"))


async def creation_order(store: Store) -> list[str]:
    return [r.app_key for r in sorted(await store.all_keys(ACCOUNT),
                                      key=lambda r: (r.created, r.app_key))]


async def export_while_changing(store: Store, flippable: list[str], doomed: set[str], *,
                                seed: int, flips: int, delete_after: int) -> list[list[str]]:
    """The export's reading (iter_keys, chunks of 5) while, after each chunk, ``flips``
    keys of ``flippable`` (not doomed) get a random status and, once ``delete_after``
    keys were read, one of ``doomed`` (emptied) is deleted: the batches read."""
    rng = random.Random(seed)
    batches: list[list[str]] = []
    async for records in store.iter_keys(ACCOUNT, chunk=5):
        batches.append([r.app_key for r in records])
        for app_key in rng.sample([k for k in flippable if k not in doomed], flips):
            await store.update_key(ACCOUNT, app_key,
                                   status=rng.choice(["active", "inactive"]))
        if sum(map(len, batches)) > delete_after and doomed:
            await store.delete_key(ACCOUNT, doomed.pop(), actor=CLI)
    return batches


async def test_export_reads_each_key_once_in_creation_order_while_keys_change(gateway, clock):
    """The export's reading (iter_keys) while statuses flip, which moves keys between the
    creation index's runs, and keys are deleted; more keys share one date than a chunk."""
    store = gateway.store
    keys = Keys(store, 51)
    await spread(gateway, keys, clock, 60)
    for _ in range(12):
        await keys.create()  # the clock stands still: one creation date
    order = await creation_order(store)
    doomed = {order[20], order[45], order[-3]}
    batches = await export_while_changing(store, order, doomed, seed=7, flips=8,
                                          delete_after=30)
    seen = [k for batch in batches for k in batch]
    assert seen == [k for k in order if k in seen]  # creation order, none twice
    assert set(order) - set(seen) <= {order[20], order[45], order[-3]}


async def test_export_of_many_keys_sharing_one_date_reads_a_chunk_at_a_time(gateway, clock):
    """However many keys share one creation date, each round reads at most a chunk of
    each run (it read them all at once, doubling its reads until they fit), and each is
    still listed once, in order, while they change status and some go."""
    store = gateway.store
    keys = Keys(store, 52)
    await spread(gateway, keys, clock, 10)
    tied = [await keys.create() for _ in range(60)]  # the clock stands still
    clock.advance(1)
    for _ in range(5):
        await keys.create()
    order = await creation_order(store)
    doomed = set(random.Random(3).sample(tied, 4))
    batches = await export_while_changing(store, tied, doomed, seed=8, flips=6,
                                          delete_after=20)
    sizes = [len(batch) for batch in batches]
    seen = [k for batch in batches for k in batch]
    assert max(sizes) <= 2 * 5, sizes  # a chunk of each run
    assert seen == [k for k in order if k in seen]  # creation order, none twice
    assert set(order) - set(seen) <= set(random.Random(3).sample(tied, 4))


async def test_concurrent_listings_leave_nothing_behind(gateway, clock):
    keys = Keys(gateway.store, 61)
    await spread(gateway, keys, clock, 60)
    redis, mine = gateway.store.redis, glob_escape(gateway.store.prefix) + "*"
    before = {n async for n in redis.scan_iter(match=mine)}
    rng = random.Random(62)
    batch = list(itertools.islice(queries(rng, int(clock() * 1000), 200), 0, None, 3))
    await asyncio.gather(*(gateway.store.list_keys(ACCOUNT, q) for q in batch))
    assert {n async for n in redis.scan_iter(match=mine)} == before
    assert len(before) > 10


# -- the 1,000,000-key benchmark keeps running ---------------------------------------------
async def test_the_million_key_benchmark_runs_at_a_small_size(redis_url):
    """bench/million.py at 3,000 keys on the private Redis: every page type answers the
    totals its data set implies, and every row carries figures."""
    if not redis_url.startswith("redis://"):
        pytest.skip("the benchmark measures a real redis-server")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.million import million, rows

    prefix = f"million-{uuid.uuid4().hex[:8]}:"
    result = await million(redis_url, 3000, prefix)
    totals = {name: total for name, (_, total) in result["pages"].items()}
    assert totals["plain (creation order)"] == 3000
    assert totals["status active (90 %)"] == 2700
    assert totals["role owner (1 %)"] == 30
    assert totals["role owner + renew-only caller"] == 0
    assert totals["q 'key 12345' (few)"] == 0 and totals["q 'key 99' (substring)"] == 11
    assert all(any(c.isdigit() for c in value) for _, value in rows(result))
    assert result["per_key"] > 0 and all(ms > 0 for ms, _ in result["pages"].values())
    client = aioredis.from_url(redis_url)
    try:
        names = [n async for n in client.scan_iter(match=glob_escape(prefix) + "*", count=1000)]
        for at in range(0, len(names), 1000):
            await client.delete(*names[at : at + 1000])
    finally:
        await client.aclose()


async def test_index_listing_while_a_key_is_deleted_skips_a_live_key(gateway):
    """`keygate store migrate` (or the first listing) builds an older account's listing
    indexes "while keygate serves", walking the creation index by position
    (ZRANGE start..start+chunk-1). A key deleted meanwhile, before the walk's position,
    shifts every later key one place down: the first key of the next chunk is never
    listed, yet the pass marks the indexes complete. That key then has no status, label
    or role entries, and every filtered listing leaves it out for good."""
    store, names = gateway.store, gateway.store.names
    made = [(await store.create_key(f"kgk-acme-{n:010d}", "acme", f"key {n}",
                                    ["orders-reader"], "d" * 64)).app_key
            for n in range(6)]
    # the account as an older keygate left it: only the creation-date index, a sorted set
    await creation_index_as_sorted_set(store, "acme")
    for packed in ("tokens", "uses", "labels", "statuses"):
        await PackedIndex(store.scripts, names.account("acme", packed)).drop()
    await PackedIndex(store.scripts, names.role_holders("acme", "orders-reader")).drop()
    await store.redis.delete(*names.listing("acme"))
    assert not await store.listing_indexed("acme")
    order = await store.redis.zrange(names.account("acme", OLDER_CREATION_INDEX), 0, -1)
    assert sorted(order) == sorted(made)

    async def someone_deletes_the_first_key() -> None:
        assert await store.delete_key("acme", order[0], actor=CLI)

    # the deletion lands between the first chunk of the pass and the second
    hook = Before(store, "index_listing", someone_deletes_the_first_key, nth=1, after=True)
    try:
        await store.index_listing("acme", chunk=2)
    finally:
        hook.restore()
    assert hook.fired
    assert await store.listing_indexed("acme")
    live = sorted(r.app_key for r in await store.all_keys("acme"))
    assert live == sorted(order[1:])
    records, total = await store.list_keys("acme", KeyQuery(status="active", per_page=100))
    active = sorted(r.app_key for r in records)
    assert active == live, f"active keys missing from the index: {set(live) - set(active)}"
    records, total = await store.list_keys("acme", KeyQuery(role="orders-reader",
                                                            per_page=100))
    assert sorted(r.app_key for r in records) == live
