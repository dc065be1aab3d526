"""Failed-authentication budgets: per client address, per key for wrong tokens, shared by
every process on the same store, answered with 429 and Retry-After."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from conftest import Key, ProxyTestServer

from gateway.app import build_gateway
from gateway.errors import TooManyRequests, Unauthorized
from gateway.management import build_management_app
from gateway.ratelimit import address_subject

KEYS = "/api/v1/accounts/acme/keys"


def wrong(key: Key, gw: Any) -> dict[str, str]:
    """The key with another well-formed token (checksum right, so it reaches the store)."""
    return {"X-API-AppKey": key.app_key, "X-API-AppToken": gw.fmt.new_token()}


def made_up() -> dict[str, str]:
    return {"X-API-AppKey": f"kgk-acme-{uuid.uuid4().hex[:10].upper()}",
            "X-API-AppToken": "kgt_" + "A" * 40}


async def too_many(response: Any) -> int:
    assert response.status == 429, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "too_many_failures"
    assert body["error"]["requestId"] == response.headers["X-Request-Id"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    return retry_after


@pytest.fixture
async def limited(make_settings, clock, aiohttp_client) -> Any:
    """A gateway with small budgets (5 per address, 3 per key, per minute)."""
    gw = build_gateway(
        make_settings(auth_failure_limit=5, auth_failure_key_limit=3, auth_failure_window=60),
        clock=clock,
    )
    gw.start()
    management = await aiohttp_client(build_management_app(gw))
    yield gw, management
    await gw.close()


async def test_an_address_past_its_budget_gets_429_even_with_good_credentials(limited, clock):
    gw, management = limited
    issued = await gw.lifecycle.create("acme", "admin", ["user-admin-restricted"],
                                       _cli_actor())
    good = Key(issued.record.app_key, issued.token)
    for _ in range(5):
        assert (await management.get(KEYS, headers=made_up())).status == 401
    await too_many(await management.get(KEYS, headers=made_up()))
    # blocked before authentication: the right credentials do not help this address
    await too_many(await management.get(KEYS, headers=good.headers))
    clock.advance(61)  # the next window
    assert (await management.get(KEYS, headers=good.headers)).status == 200


async def test_wrong_tokens_for_one_key_are_limited_but_its_owner_is_not_locked_out(limited):
    """Per key: past the budget, a wrong token gets 429 from any address; the right
    token still works (key names are public: a lock-out would be a denial of service)."""
    gw, _ = limited
    issued = await gw.lifecycle.create("acme", "k", ["user-admin-restricted"], _cli_actor())
    key = Key(issued.record.app_key, issued.token)
    check = gw.pipeline.check
    for i in range(3):
        with pytest.raises(Unauthorized):
            await check(wrong(key, gw), "acme", "api-keys", "view", client=f"10.0.0.{i}")
    with pytest.raises(TooManyRequests):
        await check(wrong(key, gw), "acme", "api-keys", "view", client="10.0.1.1")
    identity = await check(key.headers, "acme", "api-keys", "view", client="10.0.1.1")
    assert identity.principal.app_key == key.app_key


async def test_the_budget_is_shared_by_every_process_on_the_store(limited, clock):
    """Two gateways on one Redis (as two workers or two instances): one budget."""
    gw, _ = limited
    other = build_gateway(gw.settings, clock=clock)
    try:
        outcomes = []
        for i in range(8):
            gateway = (gw, other)[i % 2]
            try:
                await gateway.pipeline.check(made_up(), "acme", "orders", "read",
                                               client="192.0.2.7")
                outcomes.append(200)
            except TooManyRequests:
                outcomes.append(429)
            except Unauthorized:
                outcomes.append(401)
        assert outcomes[:5] == [401] * 5 and outcomes[5:] == [429] * 3, outcomes
    finally:
        await other.close()


async def test_failures_leave_bounded_traces_in_redis(limited):
    """A flood of made-up keys from one address: one counter per window, no per-key ones;
    a flood of wrong tokens for one key: one more."""
    gw, _ = limited
    prefix = gw.settings.store_prefix
    for _ in range(200):
        with pytest.raises((Unauthorized, TooManyRequests)):
            await gw.pipeline.check(made_up(), "acme", "orders", "read", client="192.0.2.8")
    names = [n async for n in gw.store.redis.scan_iter(match=f"{prefix}rl:*")]
    assert len(names) == 1 and ":a:" in names[0]
    ttl = await gw.store.redis.pttl(names[0])
    assert 0 < ttl <= 62_000


async def test_a_blocked_address_costs_no_store_round_trip(limited):
    gw, _ = limited
    for _ in range(6):
        with pytest.raises((Unauthorized, TooManyRequests)):
            await gw.pipeline.check(made_up(), "acme", "orders", "read", client="192.0.2.9")
    before = (await gw.store.redis.info("commandstats")).get("cmdstat_incr", {}).get("calls")
    for _ in range(100):
        with pytest.raises(TooManyRequests):
            await gw.pipeline.check(made_up(), "acme", "orders", "read", client="192.0.2.9")
    after = (await gw.store.redis.info("commandstats")).get("cmdstat_incr", {}).get("calls")
    assert before == after


async def test_without_a_store_a_failure_is_not_counted_and_not_an_error(
    make_settings, clock, closed_port
):
    """Counting needs the store; when it is gone the failure stays a plain failure (the
    caller answers 401), rather than every mistyped token becoming a 503."""
    gw = build_gateway(make_settings(store_url=f"redis://127.0.0.1:{closed_port}/0"),
                       clock=clock)
    try:
        async with gw.pipeline.limiter.attempt("192.0.2.10") as attempt:
            assert await attempt.failed("kgk-acme-0000000000") is None
    finally:
        await gw.close()


def test_addresses_are_counted_per_ipv4_address_and_ipv6_slash_64():
    assert address_subject("192.0.2.1") == "192.0.2.1"
    assert address_subject("2001:db8:1:2:3:4:5:6") == address_subject("2001:db8:1:2:ffff::1")
    assert address_subject("2001:db8:1:2::1") != address_subject("2001:db8:1:3::1")
    assert address_subject("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_subject("not an address" * 20) == ("not an address" * 20)[:64]


async def test_the_blocked_map_is_bounded(limited):
    gw, _ = limited
    small = type(gw.pipeline.limiter)(gw.store, 0, 0, 60, gw.clock, tracked=50)
    for i in range(500):
        async with small.attempt(f"198.51.{i // 250}.{i % 250}") as attempt:
            assert await attempt.failed() is not None
    assert len(small._blocked) == 50


async def test_many_concurrent_failures_from_one_address_get_the_budgets_worth_of_401s(limited):
    gw, _ = limited

    async def attempt() -> int:
        try:
            await gw.pipeline.check(made_up(), "acme", "orders", "read", client="192.0.2.11")
        except TooManyRequests:
            return 429
        except Unauthorized:
            return 401
        return 200

    outcomes = await asyncio.gather(*(attempt() for _ in range(50)))
    assert outcomes.count(401) == 5 and outcomes.count(429) == 45


def _cli_actor() -> Any:
    from gateway.store import CLI_ACTOR

    return CLI_ACTOR


async def test_proxy_port_passes_the_client_address(limited, aiohttp_client):
    gw, _ = limited
    proxy = await aiohttp_client(ProxyTestServer(gw))
    for _ in range(5):
        assert (await proxy.get("/orders/1", headers=made_up())).status == 401
    await too_many(await proxy.get("/orders/1", headers=made_up()))



async def test_one_addresss_checks_take_turns_in_order_and_a_cancelled_one_passes_its_on(
    limited,
):
    """Checks of one address run one at a time, in the order they came; one cancelled
    while waiting is skipped, and one cancelled just as the turn was handed to it hands
    it on (else every later check of the address would wait for ever); none is left
    behind."""
    limiter = limited[0].pipeline.limiter
    address = "192.0.2.77"
    inside: list[int] = []
    order: list[int] = []
    release = asyncio.Event()

    async def check(i: int) -> None:
        async with limiter.attempt(address):
            inside.append(i)
            assert len(inside) == 1
            order.append(i)
            if i == 0:
                await release.wait()
            await asyncio.sleep(0)
            inside.remove(i)

    tasks = [asyncio.create_task(check(i)) for i in range(50)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == [0]
    tasks[3].cancel()  # while it waits
    await asyncio.sleep(0)
    release.set()  # 0 ends its turn, handing it to 1 ...
    await asyncio.sleep(0)
    for _ in range(100):  # bounded: checks that do not take turns must fail, not hang
        if order[-1] != 0:
            break
        await asyncio.sleep(0)
    assert order == [0, 1]
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert order == [i for i in range(50) if i != 3]
    assert limiter._turns == {}

    # handed over and cancelled before it could run: the turn goes on to the next
    holder = asyncio.Event()

    async def holding() -> None:
        async with limiter.attempt(address):
            await holder.wait()

    first = asyncio.create_task(holding())
    await asyncio.sleep(0)
    handed = asyncio.create_task(check(100))
    after = asyncio.create_task(check(101))
    await asyncio.sleep(0)
    holder.set()
    while not first.done():
        await asyncio.sleep(0)
    handed.cancel()  # its turn was set when first ended; it has not run since
    await asyncio.wait_for(asyncio.gather(handed, after, return_exceptions=True), 10)
    assert order[-1] == 101 and 100 not in order
    assert limiter._turns == {}
