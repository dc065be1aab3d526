"""The request path's caches: decisions keyed on everything they depend on, credentials
invalidated at once across stores, never trusted across a lost subscription."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis_cluster
from conftest import ProxyTestServer, on_one_server_and_a_cluster

from gateway.app import build_gateway
from gateway.pipeline.authorizer import CasbinAuthorizer
from gateway.policy import Policy
from gateway.settings import PROJECT_ROOT
from gateway.store import CLI_ACTOR

# the store, cache and revocation behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

MODEL = PROJECT_ROOT / "model.conf"


def _policy(directory: Path, lines: str) -> Policy:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "p.csv").write_text(lines)
    return Policy.load(MODEL, directory)


POLICY = """\
p, reader, *, orders, read, allow
p, writer, *, orders, write, allow
p, reader, acme, invoices, read, allow
p, banned, *, orders, *, deny
"""


@pytest.mark.parametrize(
    ("element", "allowed", "refused"),
    [
        ("roles", (("reader",), "acme", "orders", "read"), (("writer",), "acme", "orders", "read")),
        ("roles (a deny added)", (("reader",), "acme", "orders", "read"),
         (("banned", "reader"), "acme", "orders", "read")),
        ("account", (("reader",), "acme", "invoices", "read"),
         (("reader",), "beta", "invoices", "read")),
        ("resource", (("reader",), "acme", "orders", "read"),
         (("reader",), "acme", "payments", "read")),
        ("action", (("reader",), "acme", "orders", "read"),
         (("reader",), "acme", "orders", "write")),
    ],
)
def test_changing_one_element_of_the_decision_key_changes_the_answer(
    tmp_path, element, allowed, refused
):
    """CVE-2021-32701 class: a cache key that leaves something out serves one request's
    decision to another. Both orders: a warm 'allowed' must not leak into 'refused' and
    a warm 'refused' must not leak into 'allowed'."""
    keeper = CasbinAuthorizer(_policy(tmp_path, POLICY), 1000)
    assert keeper.decide(*allowed) is True
    assert keeper.decide(*refused) is False, element
    other = CasbinAuthorizer(_policy(tmp_path / "again", POLICY), 1000)
    assert other.decide(*refused) is False
    assert other.decide(*allowed) is True, element


def test_role_order_does_not_matter_but_role_set_does(tmp_path):
    keeper = CasbinAuthorizer(_policy(tmp_path, POLICY), 1000)
    assert keeper.decide(("reader", "banned"), "acme", "orders", "read") is False
    assert keeper.decide(("banned", "reader"), "acme", "orders", "read") is False
    assert keeper.decide(("reader",), "acme", "orders", "read") is True


def test_a_new_policy_version_is_never_answered_from_the_old_versions_cache(tmp_path):
    old = _policy(tmp_path / "old", POLICY)
    new = _policy(tmp_path / "new", POLICY.replace("p, reader, *, orders, read, allow\n", ""))
    assert old.version != new.version
    keeper = CasbinAuthorizer(old, 1000)
    assert keeper.decide(("reader",), "acme", "orders", "read") is True
    keeper.policy = new  # what a reload does: swap the reference
    assert keeper.decide(("reader",), "acme", "orders", "read") is False
    keeper.policy = old
    assert keeper.decide(("reader",), "acme", "orders", "read") is True


def test_the_decision_cache_is_bounded(tmp_path):
    keeper = CasbinAuthorizer(_policy(tmp_path, POLICY), 10)
    for n in range(100):
        keeper.decide(("reader",), f"acct-{n}", "orders", "read")
    assert len(keeper._decisions) == 10


# -- credential cache ----------------------------------------------------------------------
async def _hmgets(redis_url: str) -> int:
    """HMGETs served so far, by the server or by every node of the cluster."""
    calls = 0
    for url in redis_cluster.node_urls(redis_url):
        client = aioredis.from_url(url, decode_responses=True)
        try:
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
        calls += stats.get("cmdstat_hmget", {}).get("calls", 0)
    return calls


async def _trusted(gateway, deadline: float = 10.0) -> None:
    limit = time.monotonic() + deadline
    while not gateway.store.cache_trusted:
        assert time.monotonic() < limit, "the invalidation channel never subscribed"
        await asyncio.sleep(0.01)


async def _creation_notice_heard(gateway, redis_url: str, key) -> None:
    """On a cluster a key's creation notice is published on its slot's node and reaches
    the node keygate subscribed on over the cluster bus, a moment later: arriving while
    the first request reads the key, it keeps the answer out of the cache (any notice
    does: the read may be older than the change); arriving after, it drops it. Either
    is a harmless extra read, which a test counting reads must not take for an
    eviction: wait (bounded) until the key is not cached or the notice is surely in,
    and fill the cache again."""
    if not redis_url.startswith("redis+cluster://"):
        return
    deadline = time.monotonic() + 1.0
    while gateway.store.cached_lookup(key.app_key, "acme") is not None:
        if time.monotonic() > deadline:
            return  # heard before the request, or not yet: the counts will say
        await asyncio.sleep(0.005)
    assert (await gateway.store.auth_lookup(key.app_key, "acme")).exists


@pytest.fixture
def real_redis(redis_url):
    if redis_url.startswith("memory://"):
        pytest.skip("counts commands on a real redis-server")
    return redis_url


async def test_a_warm_key_costs_no_store_round_trip_and_a_cold_one_exactly_one(
    proxy, make_key, gateway, real_redis
):
    key = await make_key("acme", ["orders-reader"])
    await _trusted(gateway)
    # on a cluster the key's creation notice may arrive after the first request and drop
    # its answer (a harmless extra read): let it come first, then start cold
    await gateway.store.auth_lookup(key.app_key, "acme")
    await _creation_notice_heard(gateway, real_redis, key)
    gateway.store.forget(key.app_key)
    before = await _hmgets(real_redis)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    assert await _hmgets(real_redis) - before == 1
    for _ in range(20):
        assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    assert await _hmgets(real_redis) - before == 1


async def test_a_wrong_token_is_refused_on_a_cache_hit(proxy, make_key, gateway):
    key = await make_key("acme", ["orders-reader"])
    await _trusted(gateway)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    wrong = gateway.fmt.new_token()
    response = await proxy.get("/orders/1", headers={**key.headers, "X-API-AppToken": wrong})
    assert response.status == 401


async def test_a_change_by_another_process_reaches_this_cache(
    proxy, make_key, gateway, make_settings, real_redis
):
    """Another Store on the same Redis (as another keygate process would be) deactivates
    the key; this process must refuse it without waiting for the cache's TTL."""
    key = await make_key("acme", ["orders-reader"])
    await _trusted(gateway)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    other = build_gateway(gateway.settings)
    try:
        await other.store.update_key("acme", key.app_key, actor=CLI_ACTOR, status="inactive")
    finally:
        await other.close()
    deadline = time.monotonic() + 1.0
    status = 200
    while time.monotonic() < deadline and status != 401:
        status = (await proxy.get("/orders/1", headers=key.headers)).status
        await asyncio.sleep(0.005)
    assert status == 401


async def test_unknown_keys_are_remembered_briefly_and_do_not_evict_known_ones(
    proxy, make_key, gateway, real_redis
):
    key = await make_key("acme", ["orders-reader"])
    await _trusted(gateway)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    await _creation_notice_heard(gateway, real_redis, key)
    unknown = {"X-API-AppKey": "kgk-acme-0000000000", "X-API-AppToken": gateway.fmt.new_token()}
    before = await _hmgets(real_redis)
    for _ in range(10):
        assert (await proxy.get("/orders/1", headers=unknown)).status == 401
    assert await _hmgets(real_redis) - before == 1
    # a flood of distinct made-up keys, more than the unknown-key cache holds
    unknown_keys = gateway.store.credential_cache.unknown
    flood_size = unknown_keys.size + 50
    for n in range(flood_size):
        unknown_keys.put(f"kgk-acme-{n:010d}", None)  # type: ignore[arg-type]
    before = await _hmgets(real_redis)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    assert await _hmgets(real_redis) - before == 0, "the known key was evicted"


async def test_after_losing_the_subscription_the_cache_is_flushed_before_it_is_trusted(
    proxy, make_key, gateway, real_redis
):
    """A change whose notice was missed while the subscription was down must be seen
    once it is back: the cache is flushed on every (re)subscribe."""
    key = await make_key("acme", ["orders-reader"])
    await _trusted(gateway)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200
    # (on a cluster the key's creation notice, arriving late, would drop it from the
    # cache after the change below: the stale answer must come from the cache)
    await _creation_notice_heard(gateway, real_redis, key)
    # a change that publishes nothing, as if its notice had been lost
    await gateway.store.redis.hset(gateway.store.names.key(key.app_key), "status", "inactive")
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 200  # stale, cached
    subscriptions = gateway.store.resyncs
    for url in redis_cluster.node_urls(real_redis):  # the subscriber's node, whichever
        admin = aioredis.from_url(url, decode_responses=True)
        try:
            await admin.client_kill_filter(_type="pubsub")
        finally:
            await admin.aclose()
    deadline = time.monotonic() + 10
    while gateway.store.resyncs == subscriptions or not gateway.store.cache_trusted:
        assert time.monotonic() < deadline, "the subscription did not come back"
        await asyncio.sleep(0.01)
    assert (await proxy.get("/orders/1", headers=key.headers)).status == 401


async def test_reload_swaps_the_policy_and_refuses_a_broken_one(
    tmp_path, make_settings, clock, aiohttp_client, make_key
):
    """SIGHUP's work: the new policy answers at once (no cached decision of the old one
    survives); a broken file keeps the old policy."""
    import shutil

    from gateway.app import reload_policy
    from gateway.settings import PROJECT_ROOT

    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    gw = build_gateway(make_settings(policies_dir=str(policies)), clock=clock)
    gw.start()
    try:
        proxy = await aiohttp_client(ProxyTestServer(gw))
        issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        headers = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
        assert (await proxy.get("/orders/1", headers=headers)).status == 200

        examples = policies / "examples.csv"
        examples.write_text(examples.read_text().replace(
            "p, orders-reader, *, orders, read, allow", "p, orders-reader, *, orders, read, deny"
        ))
        old_version = gw.policy.version
        assert await reload_policy(gw) is True
        assert gw.policy.version != old_version
        assert (await proxy.get("/orders/1", headers=headers)).status == 403

        examples.write_text(examples.read_text() + "p, broken\n")
        version = gw.policy.version
        assert await reload_policy(gw) is False
        assert gw.policy.version == version
        assert (await proxy.get("/orders/1", headers=headers)).status == 403
    finally:
        await gw.close()


async def test_a_key_asking_for_made_up_accounts_does_not_grow_the_cache(gateway, make_key):
    """The target account comes from the request (host or path): 20,000 made-up ones
    leave the key's cache entry bounded, and its real grants are still served."""
    from gateway.store import MAX_ACCOUNTS_PER_KEY

    key = await make_key("acme", ["orders-reader"])
    store = gateway.store
    for _ in range(100):  # the invalidation channel must be subscribed for caching
        if store.cache_trusted:
            break
        await asyncio.sleep(0.05)
    assert store.cache_trusted
    for i in range(20_000):
        found = await store.auth_lookup(key.app_key, f"made-up-{i}")
        assert found.grant is None
    assert len(store.credential_cache.known.get(key.app_key)) <= MAX_ACCOUNTS_PER_KEY
    assert (await store.auth_lookup(key.app_key, "acme")).grant is not None
    assert store.cached_lookup(key.app_key, "acme") is not None
