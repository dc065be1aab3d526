"""keygate on Redis Cluster beyond the shared suites (which run on a cluster too): the
``redis+cluster://`` URL format, every change script's names in one slot, a cluster
that loses a master answering the one JSON 503, never a 500, and client connections cut
under load (on one server as well) costing a few 503s, never a 500.

The node-loss test starts a cluster of its own (three masters, no replicas, from the
machine's ``redis-server``), since it kills one of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
import redis_cluster
from conftest import ProxyTestServer
from redis.crc import key_slot

from gateway.app import build_gateway, running
from gateway.errors import ConfigError, StoreUnavailable
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR, KeyQuery
from gateway.store.connection import parse_cluster_url
from gateway.store.core import store_unavailable
from gateway.store.lua import SCRIPTS, source
from gateway.store.names import Keyspace, owner_of


# -- the URL format ------------------------------------------------------------------------
def test_cluster_url_format() -> None:
    parsed = parse_cluster_url("redis+cluster://app:p%40ss@10.0.0.1:7000,node-b,[::1]:7002")
    assert parsed.nodes == (("10.0.0.1", 7000), ("node-b", 6379), ("::1", 7002))
    assert (parsed.username, parsed.password) == ("app", "p@ss")
    assert "p@ss" not in repr(parsed)
    assert parse_cluster_url("redis+cluster://h/").nodes == (("h", 6379),)


@pytest.mark.parametrize("url", [
    "redis+cluster://",
    "redis+cluster://h:0",
    "redis+cluster://h:65536",
    "redis+cluster://h:port",
    "redis+cluster://h,,i",
    "redis+cluster://h,h:6379",
    "redis+cluster://[::1",
    "redis+cluster://h/0",
    "redis+cluster://h?ssl=true",
    "redis+cluster://h#frag",
    "redis+cluster://" + ",".join(f"h{i}" for i in range(17)),
    "redis+cluster://" + "h" * 5000,
    "redis+cluster://hunter2-secret@h",
    "redis+cluster://:hunter2-secret@h:99999",
])
def test_a_bad_cluster_url_is_a_config_error_naming_store_url(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"KEYGATE_STORE_URL": url})
    message = str(raised.value)
    assert message.startswith("setting store_url"), message
    assert len(message) < 1000 and "hunter2" not in message


# -- the layout ------------------------------------------------------------------------------
@pytest.mark.parametrize("app_key", ["kgk-acme-7QX2M4PZ9B", "kgk-my-team-2-ABCDEFGHJK",
                                     "xy-a-0000000000"])
def test_a_key_and_every_record_of_its_account_share_one_slot(app_key: str) -> None:
    names = Keyspace("kg:", clustered=True)
    account = owner_of(app_key)
    together = [names.key(app_key), *names.listing(account),
                *(names.account(account, what) for what in
                  ("ext", "owners", "settings", "audit", "access", "done:1")),
                names.role_holders(account, "orders-reader"), names.keys_of(account) + "x"]
    assert len({key_slot(n.encode()) for n in together}) == 1
    assert names.app_key_of(names.key(app_key)) == app_key
    assert names.account_record(names.account(account, "roles:keys")) == (account,
                                                                          "roles:keys")
    # another account's records are elsewhere (for these two, by CRC16)
    assert key_slot(names.account("beta", "keys").encode()) != key_slot(
        names.account("acme", "keys").encode())


@pytest.mark.parametrize("name", ["no-dashes", "kgk-", "-", "kgk--X", "{evil}", ""])
def test_a_name_that_is_no_key_still_gets_a_name_of_its_own(name: str) -> None:
    names = Keyspace("kg:", clustered=True)
    assert names.app_key_of(names.key(name)) == name


# -- losing a master -----------------------------------------------------------------------
@pytest.fixture
def own_cluster(tmp_path: Path) -> Any:
    why_not = redis_cluster.available()
    if why_not is not None:
        pytest.skip(why_not)
    with redis_cluster.redis_cluster(tmp_path, keep_processes=True) as (url, processes):
        yield url, processes


async def test_a_lost_master_answers_503_never_500(
    own_cluster: Any, make_settings: Callable[..., Any], aiohttp_client: Any
) -> None:
    url, processes = own_cluster
    gateway = build_gateway(make_settings(store_url=url))
    try:
        issued = await gateway.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        gateway.start()
        proxy = await aiohttp_client(ProxyTestServer(gateway))
        app_key = issued.record.app_key
        headers = {"X-API-AppKey": app_key, "X-API-AppToken": issued.token}

        async def call() -> tuple[int, Any]:
            gateway.store.forget(app_key)  # a cold key: the store is asked every time
            started = time.monotonic()
            resp = await proxy.get("/orders/1", headers=headers)
            assert time.monotonic() - started < 12, "a request waited on the lost node"
            return resp.status, await resp.json(content_type=None)

        assert (await call())[0] == 200
        # kill the master serving acme's slot: its keys can no longer be read
        victim = redis_cluster.master_of(url, key_slot(gateway.store.names.key(app_key).encode()))
        processes[victim].kill()
        answers = [await call()]
        deadline = time.monotonic() + 20
        while answers[-1][0] != 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            answers.append(await call())
        assert {status for status, _ in answers} <= {200, 503}, answers
        status, body = answers[-1]
        assert status == 503 and body["error"]["code"] == "store_unavailable", answers
    finally:
        await gateway.close()


def test_a_cluster_that_no_node_of_answers_is_the_stores_503() -> None:
    """redis-py 8.2's error for a topology refresh that reached no node (its connections
    cut at once, under load) means the store cannot serve now, as a lost connection does:
    it once reached the caller as an error of its own (a 500)."""
    unreachable = getattr(redis.exceptions, "RedisClusterUnreachableError", None)
    if unreachable is None:
        pytest.skip("this redis-py has no RedisClusterUnreachableError")
    assert store_unavailable(unreachable("Redis Cluster cannot be connected."))


# -- connections cut under load ------------------------------------------------------------
@pytest.mark.parametrize("where", ["one-server", "cluster"])
async def test_connections_cut_under_load_are_503s_never_500s(
    where: str, request: pytest.FixtureRequest, make_settings: Callable[..., Any]
) -> None:
    """A Redis that closes client connections (its idle ``timeout``, a restart, a load
    balancer) while keygate is busy: redis-py's cluster client then disconnects idle
    connections that other calls are taking, which fail inside redis-py with an
    AttributeError rather than a ConnectionError. Every failed store call must still
    be the store's 503, never an error that would answer 500 (on one server too)."""
    store_url = request.getfixturevalue("cluster_url" if where == "cluster" else "redis_url")
    if store_url.startswith("memory://"):
        pytest.skip("cuts the connections of a real redis-server")
    admins = [aioredis.from_url(url, decode_responses=True)
              for url in redis_cluster.node_urls(store_url)]
    # only this test's keygate's connections are cut, not those of the session's fixtures
    # on the same server (or the admins' own)
    spared = {c["id"] for admin in admins for c in await admin.client_list(_type="normal")}
    gateway = build_gateway(make_settings(store_url=store_url))
    outcomes: Counter[str] = Counter()
    try:
        keys = [(await gateway.lifecycle.create("acme", f"k{i}", ["orders-reader"],
                                                CLI_ACTOR)).record.app_key for i in range(20)]
        stop = asyncio.Event()

        async def reader(n: int) -> None:
            while not stop.is_set():
                try:  # the listener is not started: every lookup reads the store
                    await gateway.store.auth_lookup(keys[n % len(keys)], "acme")
                    outcomes["ok"] += 1
                except StoreUnavailable:
                    outcomes["503"] += 1
                except Exception as exc:  # noqa: BLE001 - what the test looks for
                    outcomes[f"{type(exc).__name__}: {exc}"] += 1
                await asyncio.sleep(0)

        readers = [asyncio.create_task(reader(n)) for n in range(120)]
        cut, rng = 0, random.Random(7)
        for _ in range(150):
            await asyncio.sleep(0.01)
            admin = rng.choice(admins)
            ids = [c["id"] for c in await admin.client_list(_type="normal")
                   if c["id"] not in spared]
            if ids:
                cut += await admin.client_kill_filter(_id=rng.choice(ids))
        stop.set()
        await asyncio.gather(*readers)
    finally:
        for admin in admins:
            await admin.aclose()
        await gateway.close()
    assert cut > 50 and outcomes["ok"] > 1000, (cut, outcomes)
    assert set(outcomes) <= {"ok", "503"}, outcomes


# -- no node answers at all ------------------------------------------------------------
# redis-py's cluster client raises RedisClusterException, not a RedisError, when no
# startup node answers: still "the store cannot serve now", a 503.
async def test_an_unreachable_cluster_is_503_on_readyz_and_the_proxy_port(
    make_settings: Callable[..., Any], aiohttp_client: Any, closed_port: int
) -> None:
    from gateway.management import build_management_app

    gateway = build_gateway(make_settings(store_url=f"redis+cluster://127.0.0.1:{closed_port}"))
    try:
        management = await aiohttp_client(build_management_app(gateway))
        ready = await management.get("/readyz")
        assert ready.status == 503, await ready.text()
        assert (await ready.json())["error"]["code"] == "store_unavailable"
        proxy = await aiohttp_client(ProxyTestServer(gateway))
        answer = await proxy.get("/orders/1", headers={
            "X-API-AppKey": gateway.settings.credential_format.new_key("acme"),
            "X-API-AppToken": gateway.settings.credential_format.new_token()})
        assert answer.status == 503, await answer.text()
        assert (await answer.json())["error"]["code"] == "store_unavailable"
    finally:
        await gateway.close()


def test_the_cli_on_an_unreachable_cluster_says_so_in_one_line(cli, env, monkeypatch,
                                                                closed_port):
    monkeypatch.setenv("KEYGATE_STORE_URL", f"redis+cluster://:hunter2@127.0.0.1:{closed_port}")
    ran = cli("keys", "list", "--account", "acme")
    assert ran.code == 2 and "does not answer" in ran.err, ran.err
    assert "hunter2" not in ran.err


# -- scripts missing on the nodes ------------------------------------------------------------
LISTEN = {"proxy_listen": "127.0.0.1:0", "management_listen": "127.0.0.1:0"}
DIGESTS = [hashlib.sha1(source(name).encode(), usedforsecurity=False).hexdigest()
           for name in SCRIPTS]


async def _script_burst(gateway: Any, calls: int = 300) -> Counter[str]:
    """``calls`` changes and listings at once, in accounts on every master; how each
    ended."""
    outcomes: Counter[str] = Counter()

    async def one(n: int) -> None:
        account = f"acct{n % 12}"  # slots on every master
        try:
            if n % 3:
                await gateway.lifecycle.create(account, f"k{n}", ["orders-reader"],
                                               CLI_ACTOR)
            else:
                await gateway.store.list_keys(account, KeyQuery())
            outcomes["ok"] += 1
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            outcomes[f"{type(exc).__name__}: {exc}"] += 1

    await asyncio.gather(*(one(n) for n in range(calls)))
    return outcomes


async def _script_loads(admin: aioredis.Redis) -> int:
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


@pytest.fixture
async def node_admins(request: pytest.FixtureRequest, where: str) -> AsyncIterator[Any]:
    """The store URL (one server, or the session's cluster) and a client of each of its
    nodes."""
    store_url = request.getfixturevalue("cluster_url" if where == "cluster" else "redis_url")
    if store_url.startswith("memory://"):
        pytest.skip("flushes the scripts of a real redis-server")
    admins = [aioredis.from_url(url, decode_responses=True)
              for url in redis_cluster.node_urls(store_url)]
    yield store_url, admins
    for admin in admins:
        await admin.aclose()


@pytest.mark.parametrize("where", ["one-server", "cluster"])
async def test_every_node_has_the_scripts_before_keygate_serves(
    where: str, node_admins: Any, make_settings: Callable[..., Any]
) -> None:
    """Nodes without keygate's scripts (here flushed) when keygate starts: it loads
    them on each before it listens, so a burst of first calls meets no NOSCRIPT. (When
    each call loaded the script it missed, the first burst on a cluster was a burst of
    loads on a cluster client still setting up its connections: some answered 503.)"""
    store_url, admins = node_admins
    for admin in admins:
        assert await admin.script_flush()
    gateway = build_gateway(make_settings(store_url=store_url, **LISTEN))
    try:
        async with running(gateway):
            loaded = [all(await admin.script_exists(*DIGESTS)) for admin in admins]
            assert all(loaded), loaded
            outcomes = await _script_burst(gateway)
    finally:
        await gateway.close()
    assert set(outcomes) == {"ok"}, outcomes


async def test_a_burst_of_first_calls_waits_for_the_cluster_discovery(
    cluster_url: str, make_settings: Callable[..., Any]
) -> None:
    """The first calls of a store just made, all at once, whatever path made it (the
    CLI, a test, a process whose start did not reach the store): none is sent before
    the cluster client knows which master serves which slot. Sent before, it went to
    any master and met MOVED, and every few MOVED the client closed every connection
    to discover the cluster again, under the calls still using them: 503s."""
    admins = [aioredis.from_url(url, decode_responses=True)
              for url in redis_cluster.node_urls(cluster_url)]
    gateway = build_gateway(make_settings(store_url=cluster_url))
    try:
        before = [await _moved(admin) for admin in admins]
        outcomes = await _script_burst(gateway)
        moved = [await _moved(admin) - was for admin, was in zip(admins, before, strict=True)]
    finally:
        await gateway.close()
        for admin in admins:
            await admin.aclose()
    assert set(outcomes) == {"ok"}, outcomes
    assert moved == [0] * len(admins), moved


async def _moved(admin: aioredis.Redis) -> int:
    return int((await admin.info("errorstats")).get("errorstat_MOVED", {}).get("count", 0))


@pytest.mark.parametrize("where", ["one-server", "cluster"])
async def test_scripts_flushed_while_serving_are_loaded_once_per_node(
    where: str, node_admins: Any, make_settings: Callable[..., Any]
) -> None:
    """Every node loses the scripts while keygate serves (a restart, SCRIPT FLUSH, a
    replica promoted that never had them), then a burst of calls that run them: every
    call succeeds, and the calls that met NOSCRIPT together caused one load of each
    node, not one per call (on a cluster, each was a load on every master)."""
    store_url, admins = node_admins
    gateway = build_gateway(make_settings(store_url=store_url))
    try:
        assert await gateway.store.ping()  # the client set up, as `keygate serve` does
        for admin in admins:
            assert await admin.script_flush()
        before = [await _script_loads(admin) for admin in admins]
        outcomes = await _script_burst(gateway)
        loads = [await _script_loads(admin) - was for admin, was in zip(admins, before,
                                                                         strict=True)]
        loaded = [all(await admin.script_exists(*DIGESTS)) for admin in admins]
    finally:
        await gateway.close()
    assert set(outcomes) == {"ok"}, outcomes
    assert loads == [len(SCRIPTS)] * len(admins), loads  # every script, once per node
    assert all(loaded), loaded


async def test_a_replica_has_the_scripts_before_a_failover_promotes_it(
    own_cluster: Any, tmp_path: Path, make_settings: Callable[..., Any]
) -> None:
    """A replica keygate knows when it starts gets the scripts too (Redis does not
    replicate them): promoted by a failover, it runs the scripts of the slots it takes
    over without a single NOSCRIPT."""
    url, _ = own_cluster
    port, replica_process = redis_cluster.add_replica(tmp_path, url, master=0)
    replica = aioredis.Redis(port=port, decode_responses=True)
    gateway = build_gateway(make_settings(store_url=url, **LISTEN))
    try:
        async with running(gateway):
            assert all(await replica.script_exists(*DIGESTS))
            redis_cluster.fail_over(url, port)
            # one call at a time first: the client follows the slots that moved (a burst
            # meeting MOVED at once makes redis-py's client rediscover the cluster, closing
            # connections under the others: 503s of the failover, not of the scripts)
            for n in range(12):
                await gateway.store.list_keys(f"acct{n}", KeyQuery())
            outcomes = await _script_burst(gateway)
            stats = await replica.info("commandstats")
            errors = await replica.info("errorstats")
    finally:
        await gateway.close()
        await replica.aclose()
        replica_process.terminate()
        replica_process.wait(timeout=10)
    assert set(outcomes) == {"ok"}, outcomes
    assert stats["cmdstat_evalsha"]["calls"] > 0, stats  # the burst reached it
    assert "errorstat_NOSCRIPT" not in errors, errors
