"""Failure budgets under concurrency: guesses sent all at once, over many connections,
get no more checks than guesses sent one after the other.

Every front door runs as ``keygate serve`` runs it (real ports, real Redis). What is
counted is what was checked: a wrong token for a real key adds one to that key's
wrong-token counter in the store (its own budget set far out of reach), and a made-up
key costs one store read (HMGET) before it can be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from conftest import Key
from decider import PORTS

from gateway.app import Listening, build_gateway, running
from gateway.context import Gateway
from gateway.credentials import new_link_secret
from gateway.ratelimit import KEY
from gateway.store import CLI_ACTOR

BUDGET = 10
GUESSES = 200


@pytest.fixture
async def serving(make_settings) -> AsyncIterator[Callable[..., Any]]:
    """keygate serving every port, with an address budget of BUDGET a day and a per-key
    budget out of reach (so the key's counter counts every wrong token checked). Several
    calls: several processes on one store."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))

        async def serve() -> tuple[Gateway, Listening, aiohttp.ClientSession]:
            settings = make_settings(store_prefix=prefix, auth_failure_limit=BUDGET,
                                     auth_failure_key_limit=1_000_000, **PORTS)
            gw = build_gateway(settings)
            listening = await stack.enter_async_context(running(gw))
            return gw, listening, session

        yield serve


async def new_key(gw: Gateway) -> Key:
    issued = await gw.lifecycle.create("acme", "k", ["user-admin-restricted", "orders-writer"],
                                       CLI_ACTOR)
    assert issued.token is not None
    return Key(issued.record.app_key, issued.token)


async def checked_wrong_tokens(gw: Gateway, app_key: str) -> int:
    """Wrong tokens for ``app_key`` checked in this window (the key's failure counter)."""
    window = math.floor(gw.clock() / gw.settings.auth_failure_window)
    value = await gw.store.redis.get(gw.store.names.failure_counter(KEY, window, app_key))
    return int(value or 0)


async def store_reads(gw: Gateway, command: str = "hmget") -> int:
    stats = await gw.store.redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def send(session: aiohttp.ClientSession, door: str, listening: Listening,
               headers: dict[str, str]) -> int:
    """One request through ``door`` with the key/token pair in ``headers``; its status
    (a 429 checked for its shape on the way)."""
    if door == "proxy":
        request = session.get(listening.proxy + "/orders/1", headers={**headers,
                                                                       "Host": "api.test"})
    elif door == "decision":
        assert listening.decision is not None
        request = session.get(listening.decision + "/traefik", headers={
            **headers, "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "api.test", "X-Forwarded-Uri": "/orders/1"})
    elif door == "login":
        request = session.post(listening.management + "/api/v1/auth/login", json={
            "appKey": headers["X-API-AppKey"], "appToken": headers["X-API-AppToken"]})
    else:
        request = session.get(listening.management + "/api/v1/accounts/acme/keys",
                              headers=headers)
    async with request as response:
        if response.status == 429:
            body = await response.json()
            assert body["error"]["code"] == "too_many_failures", body
            assert 1 <= int(response.headers["Retry-After"]) <= 86_401
        else:
            await response.read()
        return response.status


async def all_at_once(session: aiohttp.ClientSession, door: str, listening: Listening,
                      headers: list[dict[str, str]]) -> list[int]:
    return list(await asyncio.gather(*(send(session, door, listening, h) for h in headers)))


@pytest.mark.parametrize("door", ["proxy", "decision", "login", "management"])
async def test_concurrent_wrong_tokens_get_no_more_checks_than_the_budget(serving, door):
    gw, listening, session = await serving()
    key = await new_key(gw)
    guesses = [{"X-API-AppKey": key.app_key, "X-API-AppToken": gw.fmt.new_token()}
               for _ in range(GUESSES)]
    statuses = await all_at_once(session, door, listening, guesses)
    assert statuses.count(401) == BUDGET and statuses.count(429) == GUESSES - BUDGET, statuses
    assert await checked_wrong_tokens(gw, key.app_key) == BUDGET
    # the address is spent: the right token too waits for the window's end
    assert await send(session, door, listening, key.headers) == 429


async def test_concurrent_made_up_keys_cost_no_more_store_reads_than_the_budget(serving):
    gw, listening, session = await serving()
    guesses = [{"X-API-AppKey": f"kgk-acme-{uuid.uuid4().hex[:10].upper()}",
                "X-API-AppToken": gw.fmt.new_token()} for _ in range(GUESSES)]
    assert all(gw.fmt.key_account(g["X-API-AppKey"]) == "acme" for g in guesses)
    before = await store_reads(gw)
    statuses = await all_at_once(session, "proxy", listening, guesses)
    assert statuses.count(401) == BUDGET and statuses.count(429) == GUESSES - BUDGET, statuses
    assert await store_reads(gw) - before <= BUDGET


async def test_the_right_token_under_concurrency_is_not_refused_by_its_own_successes(
    serving, upstream
):
    """Nine of ten failures spent, then 200 requests with the right token at once (its
    key not yet in the cache): all pass, and the budget left is still exactly one."""
    gw, listening, session = await serving()
    spender = await new_key(gw)
    wrong = [{"X-API-AppKey": spender.app_key, "X-API-AppToken": gw.fmt.new_token()}
             for _ in range(BUDGET - 1)]
    assert await all_at_once(session, "proxy", listening, wrong) == [401] * (BUDGET - 1)
    key = await new_key(gw)
    statuses = await all_at_once(session, "proxy", listening, [key.headers] * GUESSES)
    assert statuses == [200] * GUESSES
    assert await send(session, "proxy", listening, wrong[0]) == 401
    assert await send(session, "proxy", listening, wrong[0]) == 429
    assert await send(session, "proxy", listening, key.headers) == 429


async def test_processes_on_one_store_check_at_most_one_each_beyond_the_budget(serving):
    """Two processes on one store, half the guesses each, all at once: exactly the
    budget's worth answered 401, and at most one check more (in the process that did
    not spend the last of the budget, before it learns that it is spent)."""
    first = await serving()
    second = await serving()
    key = await new_key(first[0])
    guesses = [{"X-API-AppKey": key.app_key, "X-API-AppToken": first[0].fmt.new_token()}
               for _ in range(GUESSES)]
    statuses = await asyncio.gather(*(
        send(session, "proxy", listening, g)
        for (_, listening, session), g in zip([first, second] * (GUESSES // 2), guesses,
                                              strict=True)))
    assert statuses.count(401) == BUDGET and statuses.count(429) == GUESSES - BUDGET
    assert await checked_wrong_tokens(first[0], key.app_key) <= BUDGET + 1


async def test_concurrent_made_up_token_links_cost_no_more_store_reads_than_the_budget(
    serving
):
    """A link is a credential too: opening made-up ones all at once takes (GETDEL) no
    more links than the budget allows."""
    gw, listening, session = await serving()

    async def open_link() -> int:
        url = f"{listening.management}/api/v1/token-links/{new_link_secret()}"
        async with session.post(url) as response:
            await response.read()
            return response.status

    before = await store_reads(gw, "getdel")
    statuses = await asyncio.gather(*(open_link() for _ in range(GUESSES)))
    assert statuses.count(410) == BUDGET and statuses.count(429) == GUESSES - BUDGET
    assert await store_reads(gw, "getdel") - before <= BUDGET
