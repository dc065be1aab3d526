"""The accounts keygate knows come from one set kept as keys are created and external
keys granted, not from a scan of every name in Redis: the renewal gauge and the role
holders read it at any number of keys. A store written before the set was kept is
scanned once; ``migrate`` scans again; an account named by a change that never ran, or
whose keys are all gone, is skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from conftest import FakeClock, on_one_server_and_a_cluster

from gateway.app import build_gateway
from gateway.context import Gateway
from gateway.settings import Settings
from gateway.store import CLI_ACTOR, KeyNameTaken
from gateway.store.accounts import CHUNK, COMPLETE

# on one server and on a Redis Cluster (the set has a slot of its own there)
redis_url = on_one_server_and_a_cluster()


@pytest.fixture
async def gateway(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[Gateway]:
    """A gateway whose background work is not started: its policy announcement reads the
    role holders, so the accounts, and its first read of a store with no set would scan
    and mark the set complete while a test here stands for an older keygate's store
    (the set deleted): these tests' reads are then their own."""
    gw = build_gateway(make_settings(), clock=clock)
    yield gw
    await gw.close()


async def named(gateway: Gateway) -> set[str]:
    store = gateway.store
    return set(await store.redis.smembers(store.names.accounts_record))


async def test_the_accounts_are_read_from_their_set_once_it_is_complete(gateway: Gateway):
    store, lifecycle = gateway.store, gateway.lifecycle
    # the first read of a store scans it (here an empty one) and marks the set complete:
    # from now on only what the changes name is found
    assert await store.accounts() == []
    await lifecycle.create("acme", "a", ["owner"], CLI_ACTOR)
    beta = await lifecycle.create("beta", "b", ["orders-reader"], CLI_ACTOR)
    # gamma owns no key: it only grants one of beta's
    await store.add_grant("gamma", beta.record.app_key, "partner", ["orders-reader"],
                          CLI_ACTOR)
    assert await store.accounts() == ["acme", "beta"]
    assert await named(gateway) == {COMPLETE, "acme", "beta", "gamma"}

    # an account an older keygate made (it names none): a scan would find it, the set
    # does not, so the readers do not
    zeta = await lifecycle.create("zeta", "z", ["owner"], CLI_ACTOR)
    await store.redis.srem(store.names.accounts_record, "zeta")
    assert await store.accounts() == ["acme", "beta"]
    assert "zeta" not in await store.role_holders()
    # migrate scans again whatever the set says, and names it
    assert await store.migrate() == {}
    assert "zeta" in await named(gateway)
    assert await store.accounts() == ["acme", "beta", "zeta"]
    assert await store.role_holders() == {
        "acme": {"owner": 1}, "beta": {"orders-reader": 1},
        "gamma": {"orders-reader": 1}, "zeta": {"owner": 1},
    }

    # a refused create names its account first: named, owning nothing, skipped (the
    # name's tombstone is all that is left of an account whose keys were deleted before
    # the set was kept)
    taken = gateway.fmt.new_key("omega")
    await store.redis.hset(store.names.key(taken), "deleted", 1)
    with pytest.raises(KeyNameTaken):
        await store.create_key(taken, "omega", "again", ["owner"],
                               gateway.hasher.digest("another token"), CLI_ACTOR)
    assert "omega" in await named(gateway)
    assert "omega" not in await store.accounts()
    assert "omega" not in await store.role_holders()
    # an account whose last key is gone stays named and is skipped
    assert await store.delete_key("zeta", zeta.record.app_key, actor=CLI_ACTOR)
    assert await store.accounts() == ["acme", "beta"]
    assert "zeta" in await named(gateway)


async def test_a_store_without_the_set_is_scanned_once_and_the_set_made(gateway: Gateway):
    """An older keygate's store: no set. Its first read scans (every master of a
    cluster) and names what it finds, more accounts than one round trip of the set's
    writes and checks takes; the next reads the set alone."""
    store = gateway.store
    await gateway.lifecycle.create("acme", "a", ["owner"], CLI_ACTOR)
    count = CHUNK * 2 + 5
    older = [f"older-{i:05d}" for i in range(count)]
    async with store.redis.pipeline(transaction=False) as pipe:
        for account in older:  # an account record as an older keygate wrote it
            pipe.zadd(store.names.account(account, "keys"), {f"kgk-{account}-X": 1})
        await pipe.execute()
    await store.redis.delete(store.names.accounts_record)

    assert await store.accounts() == sorted(["acme", *older])
    assert await named(gateway) == {COMPLETE, "acme", *older}
    # read from the set from now on: an older account written now is not seen...
    await store.redis.zadd(store.names.account("older-late", "keys"), {"x": 1})
    assert "older-late" not in await store.accounts()
    # ...until a scan is asked for
    assert "older-late" in await store.accounts(rescan=True)
    assert "older-late" in await named(gateway)
