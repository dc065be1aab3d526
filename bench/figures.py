"""The figures that are not load: Redis round trips per request, how fast a second
instance sees a revocation, Redis memory per key, listing and export at many keys."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bench.fixtures import PY, SECRET, commands_total, create_keys
from gateway.app import build_gateway
from gateway.settings import load_settings
from gateway.store import KeyQuery


async def round_trips(redis_urls: list[str], proxy_port: int, keys,
                      warm_key) -> tuple[float, float]:
    """Redis commands per request, for a warm key and for cold ones, counted on every
    node (one server, or each master of a cluster)."""
    clients = [aioredis.from_url(url, decode_responses=True) for url in redis_urls]

    async def commands() -> int:
        return sum([await commands_total(client) for client in clients])

    url = f"http://127.0.0.1:{proxy_port}"
    async with aiohttp.ClientSession() as session:

        async def get(key) -> None:
            app_key, token, account = key
            async with session.get(
                f"{url}/accounts/{account}/orders/1",
                headers={"X-API-AppKey": app_key, "X-API-AppToken": token},
            ) as r:
                await r.read()
                assert r.status == 200, r.status

        for _ in range(5):
            await get(warm_key)
        n = 500
        before = await commands()
        for _ in range(n):
            await get(warm_key)
        warm = (await commands() - before) / n
        cold_keys = keys[:n]
        before = await commands()
        for key in cold_keys:
            await get(key)
        cold = (await commands() - before) / len(cold_keys)
    for client in clients:
        await client.aclose()
    return warm, cold


async def revocation_delays(
    management_a: int, proxy_b: int, admin, clients
) -> list[float]:
    """Seconds from a deactivation answered by instance A's management API until
    instance B's proxy refuses the key (polling), for each client key; B has the key
    in its cache before each deactivation, so this is the invalidation channel's delay."""
    delays = []
    admin_headers = {"X-API-AppKey": admin[0], "X-API-AppToken": admin[1]}
    async with aiohttp.ClientSession() as session:
        for app_key, token, account in clients:
            headers = {"X-API-AppKey": app_key, "X-API-AppToken": token}
            url = f"http://127.0.0.1:{proxy_b}/accounts/{account}/orders/1"
            for _ in range(3):
                async with session.get(url, headers=headers) as r:
                    assert r.status == 200, r.status
            async with session.patch(
                f"http://127.0.0.1:{management_a}/api/v1/accounts/{account}/keys/{app_key}",
                headers=admin_headers, json={"status": "inactive"},
            ) as r:
                assert r.status == 200, await r.text()
            changed = time.monotonic()
            while True:
                async with session.get(url, headers=headers) as r:
                    if r.status == 401:
                        break
                    assert r.status == 200, r.status
                if time.monotonic() - changed > 10:
                    raise RuntimeError("instance B still accepts a deactivated key after 10 s")
            delays.append(time.monotonic() - changed)
    return delays


def memory_rows(count: int, figures: tuple[float, float, dict[str, float],
                                          dict[str, tuple[float, float, int]]],
                ) -> list[tuple[str, str]]:
    """The report's rows of :func:`memory_and_listing`'s figures."""
    per_key, per_key_no_audit, listing, exports = figures
    return [
        (f"Redis memory per key at {count:,} keys (target ≤ 600 B)",
         f"{per_key:.0f} B with its audit event, {per_key_no_audit:.0f} B without"),
        (f"list a page of 50 at {count:,} keys (target ≤ 50 ms)",
         ", ".join(f"{k}: {v:.1f} ms" for k, v in listing.items())),
        (f"export to XLSX (`keygate export`), 1,000 vs {count:,} keys",
         f"peak RSS {exports['small'][0]:.0f} MB vs {exports['bulk'][0]:.0f} MB; "
         f"{exports['small'][1]:.1f} s vs {exports['bulk'][1]:.1f} s; "
         f"{exports['small'][2] / 1e6:.2f} MB vs {exports['bulk'][2] / 1e6:.1f} MB file"),
    ]


async def memory_and_listing(redis_url: str, tmp: Path, count: int):
    """Redis bytes per key at ``count`` keys in one account, export RSS, page listing."""
    prefix = "mem:"
    settings = load_settings(env={}).with_values(
        store_url=redis_url, store_prefix=prefix, secret=SECRET
    )
    client = aioredis.from_url(redis_url, decode_responses=True)
    await create_keys(settings, ["small"], 1000, ["owner"])
    before = (await client.info("memory"))["used_memory"]
    await create_keys(settings, ["bulk"], count, ["owner"])
    after = (await client.info("memory"))["used_memory"]
    audit = await client.memory_usage(f"{prefix}acct:bulk:audit") or 0
    gateway = build_gateway(settings)
    timings = {}
    search = gateway.store.label_search

    async def timed(name: str, query: KeyQuery) -> None:
        start = time.perf_counter()
        await gateway.store.list_keys("bulk", query)
        timings[name] = (time.perf_counter() - start) * 1000

    # the first listing starts making q's copy (gateway/store/search.py); a search that
    # comes before it is made is answered in Redis
    await timed("page (creation order)", KeyQuery(page=10, per_page=50))
    start = time.perf_counter()
    await timed("page filtered by q while its copy is made", KeyQuery(q="key 99", per_page=50))
    if "bulk" in search.warming:
        await search.warming["bulk"]
    timings["q's copy made ahead by the first listing"] = (time.perf_counter() - start) * 1000
    await timed("page filtered by q", KeyQuery(q="key 99", per_page=50))
    await gateway.store.close()
    await client.aclose()
    env = {**os.environ, "KEYGATE_STORE_URL": redis_url, "KEYGATE_STORE_PREFIX": prefix,
           "KEYGATE_SECRET": SECRET}
    exports = {}
    for account in ("small", "bulk"):
        out = tmp / f"export-{account}.xlsx"
        start = time.perf_counter()
        child = subprocess.Popen(
            [PY, "-m", "gateway", "export", "--account", account, "-o", str(out)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, no one else's
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise RuntimeError(f"export of {account} failed")
        exports[account] = (usage.ru_maxrss / 1024, time.perf_counter() - start,
                            out.stat().st_size)
    return (after - before) / count, ((after - before) - audit) / count, timings, exports
