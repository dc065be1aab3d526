"""The metrics port and what it counts: /metrics only there, a scrape that costs the same
whatever the number of keys (the renewal gauge is counted in the background), and
denial accounting that made-up account names cannot grow.

Real stack: the private redis-server (commands counted with INFO commandstats), the
proxy port as served, the metrics and management applications in-process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from conftest import FakeClock, Key, ProxyTestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from relay import Relay

from gateway.app import build_gateway
from gateway.context import Gateway
from gateway.errors import StoreUnavailable
from gateway.management import build_management_app
from gateway.management.metrics import build_metrics_app
from gateway.renewal_gauge import COMPUTED, GAUGE, RenewalGauge
from gateway.store import CLI_ACTOR
from gateway.usage import MAX_HELD, UNKNOWN_ACCOUNT

DENIED = "keygate_access_denied_total"
# what a client connection and our own probes send; everything else is keygate's work
NOT_KEYGATES = {"info", "ping", "client", "hello", "subscribe", "unsubscribe", "select"}


@pytest.fixture
def real_redis(redis_url: str) -> str:
    if redis_url.startswith("memory://"):
        pytest.skip("counts commands on (and relays to) a real redis-server")
    return redis_url


async def commands(gateway: Gateway) -> dict[str, int]:
    stats = await gateway.store.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


async def quiet_gauge(gateway: Gateway) -> None:
    """Stop the renewal gauge's background count, whose first round runs as the gateway
    starts and may fall inside a test's window: it reads the accounts with EXISTS too,
    which the denials' checks are counted by."""
    await gateway.renewal_gauge.stop()


def keygate_commands(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        name: after[name] - before.get(name, 0)
        for name in after
        if name not in NOT_KEYGATES and after[name] != before.get(name, 0)
    }


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples if s.name == name
    }


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture
async def metrics(gateway: Gateway, aiohttp_client: Callable[..., Any]) -> Any:
    return await aiohttp_client(build_metrics_app(gateway))


@pytest.fixture
async def quiet_gateway(
    make_settings: Callable[..., Any], clock: FakeClock
) -> AsyncIterator[Gateway]:
    """A started gateway whose renewal gauge counts only when the test says so."""
    gw = build_gateway(make_settings(metrics_listen=""), clock=clock)
    gw.start()
    yield gw
    await gw.close()


async def scrape(client: Any) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    return await response.text()


# -- where /metrics is served ------------------------------------------------------------
async def test_the_management_port_no_longer_serves_metrics(management):
    for path in ("/metrics", "/api/v1/metrics"):
        response = await management.get(path)
        assert response.status == 404
        body = orjson.loads(await response.read())
        assert body["error"]["status"] == 404 and body["error"]["requestId"]
        assert "keygate_" not in await response.text()
    for path in ("/healthz", "/api/v1/healthz", "/readyz", "/api/v1/readyz"):
        assert (await management.get(path)).status == 200


async def test_the_metrics_port_serves_metrics_and_nothing_else(metrics, admin_key):
    assert "keygate_access_denied" in await scrape(metrics)
    for path in ("/api/v1/metrics", "/healthz", "/api/v1/accounts/acme/keys",
                 "/api/v1/token-links/" + "A" * 43, "/"):
        response = await metrics.get(path, headers=admin_key.headers)
        assert response.status == 404, path
        assert orjson.loads(await response.read())["error"]["code"] == "not_found"
    response = await metrics.post("/metrics", data=b"x")
    assert response.status == 405
    assert orjson.loads(await response.read())["error"]["status"] == 405


# -- the renewal gauge: counted in the background, rendered from memory ------------------
async def test_a_scrape_sends_no_command_to_the_store(
    quiet_gateway, aiohttp_client, real_redis
):
    gw = quiet_gateway
    for i in range(30):
        await gw.lifecycle.create("acme" if i % 2 else "beta", f"k{i}", ["orders-reader"],
                                  CLI_ACTOR)
    client = await aiohttp_client(build_metrics_app(gw))
    await gw.renewal_gauge.refresh()
    before = await commands(gw)
    for _ in range(5):
        text = await scrape(client)
    assert keygate_commands(before, await commands(gw)) == {}
    gauge = samples(text, GAUGE)
    assert gauge[(("account", "acme"), ("level", "none"))] == 15
    assert gauge[(("account", "beta"), ("level", "none"))] == 15


async def test_a_scrape_answers_from_the_last_count_while_the_store_is_gone(
    make_settings, clock, aiohttp_client, real_redis
):
    relay = await Relay(int(real_redis.rsplit(":", 1)[1].split("/")[0])).start()
    gw = build_gateway(make_settings(store_url=relay.url, metrics_listen=""), clock=clock)
    try:
        client = await aiohttp_client(build_metrics_app(gw))
        text = await scrape(client)
        assert samples(text, GAUGE) == {}  # nothing counted yet: no made-up zeros
        assert samples(text, COMPUTED) == {(): 0.0}

        await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        await gw.renewal_gauge.refresh()
        counted_at = clock()
        clock.advance(600)
        relay.cut()
        with pytest.raises(StoreUnavailable):
            await gw.renewal_gauge.refresh()  # a failed count keeps the last one
        text = await scrape(client)
        assert samples(text, GAUGE)[(("account", "acme"), ("level", "none"))] == 1
        assert samples(text, COMPUTED) == {(): counted_at}
        help_text = families(text)[GAUGE].documentation
        assert "renewal_gauge_interval (300 s)" in help_text and COMPUTED in help_text
    finally:
        await gw.close()
        await relay.close()


async def test_the_count_crosses_chunks_and_uses_each_accounts_period(gateway, clock):
    """A small chunk so that 23 keys take several reads, as 1,000,000 would take many."""
    for i in range(23):
        await gateway.lifecycle.create("acme", f"k{i}", ["orders-reader"], CLI_ACTOR)
    clock.advance(4 * 31 * 86_400)  # past 3 months, not past 6
    gauge = RenewalGauge(gateway.store, 300.0, clock, CollectorRegistry(), chunk=5)
    await gauge.refresh()
    assert gauge.counts["acme"] == {"orange": 23}
    await gateway.store.put_setting("acme", "renewalPeriodMonths", 6, CLI_ACTOR)
    await gauge.refresh()
    assert gauge.counts["acme"] == {"none": 23}
    assert gauge.computed_at == clock()


async def test_the_gauge_counts_on_its_own_schedule(make_settings, clock, aiohttp_client):
    gw = build_gateway(make_settings(renewal_gauge_interval=0.05), clock=clock)
    gw.start()
    try:
        client = await aiohttp_client(build_metrics_app(gw))
        await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        deadline = time.monotonic() + 10  # generous: the property is "it happens"
        while samples(await scrape(client), GAUGE).get(
            (("account", "acme"), ("level", "none"))
        ) != 1:
            assert time.monotonic() < deadline, "the background count never ran"
            await asyncio.sleep(0.02)
    finally:
        await gw.close()
    assert gw.renewal_gauge._task is None  # stopped with the gateway


async def test_without_a_metrics_port_nothing_is_counted(quiet_gateway):
    await asyncio.sleep(0.05)
    assert quiet_gateway.renewal_gauge.computed_at is None


# -- denials: bounded whatever account names a client makes up ----------------------------
async def _prefixed_keys(gateway: Gateway) -> set[str]:
    prefix = gateway.settings.store_prefix
    return {name async for name in gateway.store.redis.scan_iter(match=prefix + "*", count=1000)}


async def test_denials_on_made_up_accounts_leave_redis_and_the_series_bounded(
    gateway, proxy, metrics, make_key, real_redis
):
    attacker = await make_key("acme", ["orders-reader"])
    await make_key("beta", ["orders-reader"])  # beta exists; the attacker has no grant there
    keys_before = await _prefixed_keys(gateway)
    made_up = [f"x{uuid.uuid4().hex[:16]}" for _ in range(20_000)]
    # the real ones, amid the flood: one in 250 requests
    targets = [("GET", account) for account in made_up]
    for at in range(0, len(targets), 250):
        targets[at:at] = [("GET", "beta"), ("DELETE", "acme")]
    host, port = proxy.server.host, proxy.server.port

    async def send(share: list[tuple[str, str]]) -> list[int]:
        """One keep-alive connection, requests pipelined (the aiohttp client's own cost
        would dominate the test's time otherwise)."""
        reader, writer = await asyncio.open_connection(host, port)
        head = "".join(
            f"{method} /accounts/{account}/orders/1 HTTP/1.1\r\nHost: t\r\n"
            f"X-API-AppKey: {attacker.app_key}\r\nX-API-AppToken: {attacker.token}\r\n\r\n"
            for method, account in share
        )
        writer.write(head.encode())
        statuses = []
        while len(statuses) < len(share):
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            statuses.append(int(status_line.split()[1]))
        writer.close()
        return statuses

    shares = [targets[i::8] for i in range(8)]
    statuses = [s for share in await asyncio.gather(*map(send, shares)) for s in share]
    assert statuses == [403] * len(targets)
    real = {"beta": sum(a == "beta" for _, a in targets),
            "acme": sum(a == "acme" for _, a in targets)}
    await gateway.denials.drain()

    # Redis: no key per made-up name; at most the real accounts' access streams
    new_keys = await _prefixed_keys(gateway) - keys_before
    prefix = gateway.settings.store_prefix
    # (the policy version the gateway announces once it is subscribed may land meanwhile)
    assert new_keys <= {f"{prefix}acct:beta:access", f"{prefix}acct:acme:access",
                        f"{prefix}policy:version"}
    # the metric: one bucket for every made-up name, real accounts under their names
    counted = samples(await scrape(metrics), DENIED)
    assert counted == {
        (("account", UNKNOWN_ACCOUNT), ("resource", "orders")): 20_000,
        (("account", "beta"), ("resource", "orders")): real["beta"],
        (("account", "acme"), ("resource", "orders")): real["acme"],
    }
    # and the real denials were sampled into their accounts' audit logs
    for account, reason in (("beta", "no_grant"), ("acme", "not_permitted")):
        events, _ = await gateway.store.audit_events(
            account, accept=lambda e: e.action == "access.denied")
        assert [e.actor for e in events] == [attacker.app_key]
        assert events[0].after["reason"] == reason and events[0].after["count"] == 1


async def test_a_busy_real_account_is_confirmed_once(gateway, proxy, make_key, real_redis):
    key = await make_key("acme", ["orders-reader"])
    await quiet_gauge(gateway)
    before = await commands(gateway)
    for _ in range(50):
        assert (await proxy.delete("/accounts/acme/orders/1", headers=key.headers)).status \
            == 403
    await gateway.denials.drain()
    for _ in range(50):
        assert (await proxy.delete("/accounts/acme/orders/1", headers=key.headers)).status \
            == 403
    await gateway.denials.drain()
    assert keygate_commands(before, await commands(gateway)).get("exists") == 1
    assert gateway.registry.get_sample_value(
        DENIED, {"account": "acme", "resource": "orders"}) == 100


async def test_a_flood_beyond_the_held_cap_is_counted_not_named(
    gateway, metrics, make_key, real_redis
):
    """More unconfirmed names at once than the held map takes: the rest are counted as
    unknown at once, and the map (and the store calls) stop at the cap."""
    key = await make_key("acme", ["orders-reader"])
    await quiet_gauge(gateway)
    before = await commands(gateway)
    extra = 300
    for i in range(MAX_HELD + extra):  # all in one go: the checker has no chance to run
        gateway.denials.record(key.app_key, f"made-up-{i}", "orders", "read", "no_grant", "r")
    unknown = {(("account", UNKNOWN_ACCOUNT), ("resource", "orders")): extra}
    assert samples(await scrape(metrics), DENIED) == unknown
    await gateway.denials.drain()
    unknown[(("account", UNKNOWN_ACCOUNT), ("resource", "orders"))] += MAX_HELD
    assert samples(await scrape(metrics), DENIED) == unknown
    assert keygate_commands(before, await commands(gateway))["exists"] == MAX_HELD


async def test_denials_while_the_store_is_gone_are_counted_as_unknown(
    make_settings, clock, aiohttp_client, real_redis
):
    relay = await Relay(int(real_redis.rsplit(":", 1)[1].split("/")[0])).start()
    gw = build_gateway(make_settings(store_url=relay.url, metrics_listen=""), clock=clock)
    try:
        issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        relay.cut()
        gw.denials.record(issued.record.app_key, "acme", "orders", "write", "not_permitted",
                          "r1")
        await gw.denials.drain()  # returns: the check failed, nothing waits on it
        client = await aiohttp_client(build_metrics_app(gw))
        assert samples(await scrape(client), DENIED) == {
            (("account", UNKNOWN_ACCOUNT), ("resource", "orders")): 1}
    finally:
        await gw.close()
        await relay.close()


async def test_proxy_denials_reach_the_metrics_port(make_settings, clock, aiohttp_client):
    """The same Gateway serves both: what the proxy counts, the metrics port shows."""
    gw = build_gateway(make_settings(), clock=clock)
    try:
        proxy = await aiohttp_client(ProxyTestServer(gw))
        metrics_client = await aiohttp_client(build_metrics_app(gw))
        management = await aiohttp_client(build_management_app(gw))
        issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        key = Key(issued.record.app_key, issued.token or "")
        assert (await proxy.post("/orders/1", headers=key.headers)).status == 403
        response = await management.get("/api/v1/accounts/acme/keys", headers=key.headers)
        assert response.status == 403
        await gw.denials.drain()
        assert samples(await scrape(metrics_client), DENIED) == {
            (("account", "acme"), ("resource", "orders")): 1,
            (("account", "acme"), ("resource", "api-keys")): 1,
        }
    finally:
        await gw.close()


async def test_serve_listens_for_metrics_on_its_own_port_behind_the_guard(make_settings):
    """``running()`` (what ``keygate serve`` runs) opens metrics_listen as a third port;
    the management port does not serve it."""
    import aiohttp

    from gateway.app import running

    settings = make_settings(proxy_listen="127.0.0.1:0", management_listen="127.0.0.1:0",
                             metrics_listen="127.0.0.1:0")
    gw = build_gateway(settings)
    async with running(gw) as urls, aiohttp.ClientSession() as session:
        assert urls.metrics is not None and urls.metrics not in (urls.proxy, urls.management)
        async with session.get(urls.metrics + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Server"] == "keygate"
            assert "keygate_access_denied_total" in await response.text()
        async with session.get(urls.management + "/metrics") as response:
            assert response.status == 404
    off = build_gateway(settings.with_values(metrics_listen=""))
    async with running(off) as urls:
        assert urls.metrics is None
