"""The store's layout version: ``keygate store migrate`` moves a live store written by an
older keygate into this one's layout while requests are served, then records it; a
store a later keygate migrated is refused — at start, at every readiness probe, and by
``migrate`` — with nothing written."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Key, ProxyTestServer
from older_layouts import creation_index_as_sorted_set, hashes_written_the_longer_way

from gateway.app import check_store_layout
from gateway.context import Gateway
from gateway.errors import ConfigError
from gateway.management import build_management_app
from gateway.store import LAYOUT, NewerLayout
from gateway.store.names import LISTING, glob_escape

ACCOUNTS = [f"team-{i:02d}" for i in range(12)]


async def as_an_older_keygate_left_it(gateway: Gateway) -> None:
    """Every account with its creation index alone (no other listing index, no owners
    set, no label zones), no set of accounts, no layout version."""
    store = gateway.store
    redis, names = store.redis, store.names
    doomed = [names.accounts_record, names.layout_record]
    for account in ACCOUNTS:
        await creation_index_as_sorted_set(store, account)
        await hashes_written_the_longer_way(store, account)
        doomed += [names.account(account, what) for what in LISTING]
        doomed.append(names.account(account, "owners"))
        pattern = glob_escape(names.account(account, "")) + "*"
        doomed += [n async for n in redis.scan_iter(match=pattern)
                   if n.startswith((names.role_holders(account, ""),
                                    # the packed sets' pages, buckets and counts, the
                                    # label index's zones
                                    *(names.account(account, what) + ":"
                                      for what in ("tokens", "uses", "labels",
                                                   "statuses"))))]
    await redis.delete(*doomed)
    assert not await store.listing_current(ACCOUNTS[0])


async def readiness(management: Any) -> dict[str, Any]:
    reply = await management.get("/readyz")
    assert reply.status == 200, await reply.text()
    return (await reply.json())["storeLayout"]


async def test_migrate_while_requests_run_keeps_every_key_authenticating(
    gateway: Gateway, aiohttp_client: Callable[..., Any], make_key: Callable[..., Any]
):
    proxy = await aiohttp_client(ProxyTestServer(gateway))
    management = await aiohttp_client(build_management_app(gateway))
    keys: list[tuple[str, Key]] = []
    for account in ACCOUNTS:
        for i in range(20):
            keys.append((account, await make_key(account, ["orders-reader"], f"k{i}")))
    await as_an_older_keygate_left_it(gateway)
    assert await readiness(management) == {"store": None, "keygate": LAYOUT,
                                           "migrated": False}

    statuses: list[int] = []
    during = 0
    migrating = asyncio.create_task(gateway.store.migrate())
    cycle = itertools.cycle(keys)

    async def requests() -> None:
        nonlocal during
        while not migrating.done():
            account, key = next(cycle)
            async with proxy.get(f"/accounts/{account}/orders", headers=key.headers) as r:
                statuses.append(r.status)
                during += not migrating.done()

    await asyncio.gather(requests(), requests(), requests())
    indexed = await migrating
    assert indexed == {account: 20 for account in ACCOUNTS}
    assert during >= 10, "migrate finished before the requests could run beside it"
    for account, key in keys:  # and every key afterwards
        async with proxy.get(f"/accounts/{account}/orders", headers=key.headers) as r:
            statuses.append(r.status)
    assert set(statuses) == {200}, sorted(set(statuses))

    assert all([await gateway.store.listing_current(a) for a in ACCOUNTS])
    assert await gateway.store.accounts() == ACCOUNTS
    assert await readiness(management) == {"store": LAYOUT, "keygate": LAYOUT,
                                           "migrated": True}
    assert await gateway.store.migrate() == {}  # idempotent


async def test_a_store_a_later_keygate_migrated_is_refused_and_left_alone(
    gateway: Gateway, aiohttp_client: Callable[..., Any], make_key: Callable[..., Any],
    env: dict[str, str], cli: Callable[..., Any]
):
    store = gateway.store
    await make_key("acme", ["owner"])
    later = str(LAYOUT + 1)
    await store.redis.set(store.names.layout_record, later)
    management = await aiohttp_client(build_management_app(gateway))

    # not ready: in the one error shape, saying whose layout is whose
    reply = await management.get("/readyz")
    assert reply.status == 503
    error = (await reply.json())["error"]
    assert error["code"] == "store_layout_newer"
    assert f"layout ({later}) is newer than this keygate's ({LAYOUT})" in error["message"]

    # refused at start, naming the setting
    with pytest.raises(ConfigError, match=r"store_url: the key store's layout"):
        await check_store_layout(store)

    # migrate refuses before writing anything (its first write would be the set of
    # accounts, which nothing else writes meanwhile: the gauge stopped)
    await gateway.renewal_gauge.stop()
    await store.redis.delete(store.names.accounts_record)
    with pytest.raises(NewerLayout):
        await store.migrate()
    assert await store.redis.get(store.names.layout_record) == later
    assert not await store.redis.exists(store.names.accounts_record)

    # and so does the command, with exit status 1 (its own store: the CLI's prefix)
    from gateway.store import Store
    other = Store.from_url(env["KEYGATE_STORE_URL"], prefix=env["KEYGATE_STORE_PREFIX"])
    try:
        await other.redis.set(other.names.layout_record, later)
        ran = await asyncio.to_thread(cli, "store", "migrate")
        assert ran.code == 1 and "newer than this keygate's" in ran.err
        assert "nothing was written" in ran.err
        assert await other.redis.get(other.names.layout_record) == later
        # a version that is not a number is none: migrate writes this keygate's
        await other.redis.set(other.names.layout_record, "garbage")
        ran = await asyncio.to_thread(cli, "store", "migrate", "--json")
        assert ran.code == 0 and ran.json() == {"indexed": {}, "layout": LAYOUT}
        assert await other.redis.get(other.names.layout_record) == str(LAYOUT)
    finally:
        await other.redis.delete(other.names.layout_record, other.names.accounts_record)
        await other.close()


async def test_a_new_store_is_in_this_layout_from_the_start_an_older_one_waits(
    gateway: Gateway, make_key: Callable[..., Any], caplog: pytest.LogCaptureFixture
):
    store = gateway.store
    assert (await store.layout()).store is None  # nothing written under the prefix yet
    await check_store_layout(store)
    assert (await store.layout()).store == LAYOUT
    # one that holds keys and no version is left to migrate, which the log asks for
    await make_key("acme", ["owner"])
    await store.redis.delete(store.names.layout_record)
    with caplog.at_level(logging.WARNING, logger="keygate"):
        await check_store_layout(store)
    assert (await store.layout()).store is None
    assert "run `keygate store migrate`" in caplog.text
