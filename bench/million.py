"""Listing at 1,000,000 keys in one account: every page type timed, Redis memory per key.

The keys are made by the store's own create script (``Store.create_key``, many at a
time), so each carries its indexes and its creation audit event exactly as in
production; their creation dates span a year (a clock moved by the loader), one in ten
is then deactivated, one in three used, and one in a hundred holds the role owner.

Run by ``python bench/run.py --million`` (rows of BENCHMARKS.md with all the others), or
``--million-only`` (these rows alone, put in place in BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bench.fixtures import private_redis
from bench.measure import put_in_place
from gateway.renewal import alert_range
from gateway.renewal_gauge import RenewalGauge
from gateway.store import KeyQuery, Store
from gateway.store.names import glob_escape

ACCOUNT = "million"
MEASURED_APART = "The 1,000,000-key rows were measured apart:"
YEAR_S = 365 * 86_400
ROLES = ("orders-reader", "orders-writer")


CROCKFORD32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def key_name(i: int) -> str:
    """The ``i``-th key's name, random-looking as keygate's own are (10 characters of
    Crockford base32 from a bijection of ``i``): keys share only ``kgk-million-``, as
    an account's keys do, which q's copy of the label index keeps once."""
    value = (i * 0x9E3779B97F4A7C15 + 0x1234567) % 32**10
    return f"kgk-{ACCOUNT}-" + "".join(
        CROCKFORD32[(value >> (5 * (9 - d))) & 31] for d in range(10))


class MovingClock:
    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


async def load(store: Store, clock: MovingClock, count: int, batch: int = 2000) -> None:
    start = clock.now
    for first in range(0, count, batch):
        clock.now = start + YEAR_S * first / count
        made = []
        for i in range(first, min(count, first + batch)):
            roles = ["owner"] if i % 100 == 0 else [ROLES[i % 2]]
            made.append(store.create_key(key_name(i), ACCOUNT, f"key {i}",
                                         roles, "d" * 64))
        await asyncio.gather(*made)
        await asyncio.gather(*(
            store.update_key(ACCOUNT, key_name(i), status="inactive")
            for i in range(first, min(count, first + batch), 10)
        ))
        await store.record_last_used({
            key_name(i): int(clock.now * 1000) - i % 1000
            for i in range(first, min(count, first + batch), 3)
        })


async def tree_memory(client: aioredis.Redis, name: str) -> int:
    """The memory of a packed set: its root, counts, pages and buckets."""
    total = await client.memory_usage(name, samples=0) or 0
    async for each in client.scan_iter(match=glob_escape(name) + ":*", count=1000):
        total += await client.memory_usage(each, samples=0) or 0
    return total


async def loop_waits(waits: list[float], every: float = 0.001) -> None:
    """Add to ``waits`` how long each of the event loop's 1 ms sleeps took past its
    time, until cancelled."""
    last = time.perf_counter()
    while True:
        await asyncio.sleep(every)
        now = time.perf_counter()
        waits.append(now - last - every)
        last = now


async def timed(store: Store, query: KeyQuery, repeat: int = 5) -> tuple[float, int]:
    times, total = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        _, total = await store.list_keys(ACCOUNT, query)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), total


def page_types(now_ms: int, count: int) -> list[tuple[str, KeyQuery]]:
    deep = max(1, count // 50 - 10)
    pages: list[tuple[str, KeyQuery]] = [
        ("plain (creation order)", KeyQuery(per_page=50)),
        (f"plain, deep page {deep:,}", KeyQuery(per_page=50, page=deep)),
    ]
    for sort in ("creationDateToken", "label", "appKey", "status", "lastUsed"):
        pages.append((f"sort {sort}", KeyQuery(sort=sort, per_page=50)))
    pages += [
        ("sort appKey, deep page", KeyQuery(sort="appKey", per_page=50, page=deep)),
        ("sort label, deep page", KeyQuery(sort="label", per_page=50, page=deep)),
        ("status active (90 %)", KeyQuery(status="active", per_page=50)),
        ("status inactive (10 %), deep page", KeyQuery(status="inactive", per_page=50,
                                                       page=max(1, deep // 10))),
        # the worst page of a walked filter: the middle (a page past it walks from the end)
        ("status inactive, middle page", KeyQuery(status="inactive", per_page=50,
                                                  page=max(1, count // 10 // 100))),
        ("status active, middle page", KeyQuery(status="active", per_page=50,
                                                page=max(1, count * 9 // 10 // 100))),
        ("status inactive, sort label", KeyQuery(status="inactive", sort="label",
                                                 per_page=50)),
        ("role owner (1 %)", KeyQuery(role="owner", per_page=50)),
        ("role orders-reader (50 %)", KeyQuery(role="orders-reader", per_page=50)),
        ("role owner, deep page", KeyQuery(role="owner", per_page=50,
                                            page=max(1, count // 100 // 50))),
        ("renewal red", KeyQuery(token_created=alert_range("red", 3, now_ms), per_page=50)),
        ("renewal orange, sort label",
         KeyQuery(token_created=alert_range("orange", 3, now_ms), sort="label", per_page=50)),
        ("status + role + renewal", KeyQuery(
            status="active", role="orders-writer",
            token_created=alert_range("orange", 3, now_ms), per_page=50)),
        ("role owner + renew-only caller",
         KeyQuery(role="owner", may_act_on=lambda r: r != "owner", per_page=50)),
        ("q 'key 99' (substring)", KeyQuery(q="key 99", per_page=50)),
        ("q 'key 12345' (few)", KeyQuery(q="key 12345", per_page=50)),
        ("q + role owner", KeyQuery(q="key 9", role="owner", per_page=50)),
        # q matching more keys than the process hands to the script (MATCHES_PASSED)
        ("q 'key 9' (111,111 matches)", KeyQuery(q="key 9", per_page=50)),
        ("q 'key 9' + status inactive", KeyQuery(q="key 9", status="inactive", per_page=50)),
        ("q 'key 9' + role orders-reader (50 %)",
         KeyQuery(q="key 9", role="orders-reader", per_page=50)),
        ("q 'key 9' + renewal orange", KeyQuery(
            q="key 9", token_created=alert_range("orange", 3, now_ms), per_page=50)),
        # q's matches made together long ago (keys 100,000 to 199,999, and 1, 10-19, …),
        # and far from either end of the label order: newest first they are read from
        # the copy's end, in label order from its label-ordered lines
        ("q 'key 1' (made long ago)", KeyQuery(q="key 1", per_page=50)),
        ("q 'key 1' by token date", KeyQuery(q="key 1", sort="creationDateToken",
                                             per_page=50)),
        ("q 'key 1' + role orders-reader", KeyQuery(q="key 1", role="orders-reader",
                                                    per_page=50)),
        ("q 'key 1', page 100", KeyQuery(q="key 1", per_page=50, page=100)),
        ("q 'key 1' in label order", KeyQuery(q="key 1", sort="label", per_page=50)),
        ("q 'key 1' in label order, page 2,000",
         KeyQuery(q="key 1", sort="label", per_page=50, page=2000)),
        # deep pages of those matches in every order the copy keeps lines in
        # (ordered_lines.py), and within a role
        ("q 'key 1', page 1,100", KeyQuery(q="key 1", per_page=50, page=1100)),
        ("q 'key 1' oldest first, page 1,000",
         KeyQuery(q="key 1", descending=False, per_page=50, page=1000)),
        ("q 'key 1' by token date, page 1,100",
         KeyQuery(q="key 1", sort="creationDateToken", per_page=50, page=1100)),
        ("q 'key 1' in key order, page 1,000",
         KeyQuery(q="key 1", sort="appKey", per_page=50, page=1000)),
        ("q 'key 1' in status order, page 1,000",
         KeyQuery(q="key 1", sort="status", per_page=50, page=1000)),
        ("q 'key 1' + role orders-reader in label order",
         KeyQuery(q="key 1", role="orders-reader", sort="label", per_page=50)),
        # q within a renewal level in an order the level is not a run of, deep: the
        # level's whole date buckets counted in the same pass (ordered_lines.py)
        ("q 'key 1' + renewal red in label order, page 100", KeyQuery(
            q="key 1", token_created=alert_range("red", 3, now_ms), sort="label",
            per_page=50, page=100)),
        ("q 'key 5' + renewal orange oldest first, page 100", KeyQuery(
            q="key 5", token_created=alert_range("orange", 3, now_ms), descending=False,
            per_page=50, page=100)),
        ("q 'key 1' + renewal red in key order, page 2,000", KeyQuery(
            q="key 1", token_created=alert_range("red", 3, now_ms), sort="appKey",
            per_page=50, page=2000)),
        # a filter not in the sort's order, deep: from the copy's ordered lines once the
        # account's copy is kept (the rows above made it)
        ("role orders-reader, page 2,000", KeyQuery(role="orders-reader", per_page=50,
                                                    page=2000)),
        ("renewal orange oldest first", KeyQuery(
            token_created=alert_range("orange", 3, now_ms), descending=False, per_page=50)),
        ("renewal orange in key order, page 2,000", KeyQuery(
            token_created=alert_range("orange", 3, now_ms), sort="appKey", per_page=50,
            page=2000)),
        ("renewal red in label order, page 2,000", KeyQuery(
            token_created=alert_range("red", 3, now_ms), sort="label", per_page=50,
            page=2000)),
        ("role owner in status order", KeyQuery(role="owner", sort="status",
                                                descending=False, per_page=50)),
        # from the copy's lines in last-use order (used_order.py)
        ("renewal orange by last use, page 2,000", KeyQuery(
            token_created=alert_range("orange", 3, now_ms), sort="lastUsed", per_page=50,
            page=2000)),
        ("status inactive by last use, oldest first, page 1,000", KeyQuery(
            status="inactive", sort="lastUsed", descending=False, per_page=50, page=1000)),
        ("role orders-reader by last use, page 2,000", KeyQuery(
            role="orders-reader", sort="lastUsed", per_page=50, page=2000)),
        ("q 'key 1' by last use, page 1,000", KeyQuery(
            q="key 1", sort="lastUsed", per_page=50, page=1000)),
        ("q 'key 5' + renewal orange by last use, page 100", KeyQuery(
            q="key 5", token_created=alert_range("orange", 3, now_ms), sort="lastUsed",
            per_page=50, page=100)),
        # q held by every key: in the prefix every key shares (counted from the ordered
        # lines' chunk tails), and in every label (a count of every line)
        ("q 'kgk' (every key's prefix), page 10,000", KeyQuery(q="kgk", per_page=50,
                                                               page=10_000)),
        ("q 'key' (every label), page 10,000", KeyQuery(q="key", per_page=50,
                                                        page=10_000)),
        ("q 'key' (every label) in status order, page 10,000",
         KeyQuery(q="key", sort="status", per_page=50, page=10_000)),
        # a deep page of q's matches: sorted, not walked
        ("q 'key 99', page 100", KeyQuery(q="key 99", per_page=50, page=100)),
        ("q 'key 99', page 100 in label order",
         KeyQuery(q="key 99", sort="label", per_page=50, page=100)),
    ]
    return pages


async def million(
    redis_url: str, count: int = 1_000_000, prefix: str = "million:"
) -> dict[str, Any]:
    """Load ``count`` keys into one account; time each page type; Redis memory per key."""
    client = aioredis.from_url(redis_url, decode_responses=True)
    clock = MovingClock(time.time() - YEAR_S)
    store = Store.from_url(redis_url, prefix=prefix, clock=clock,
                           audit_max_events=count)  # every creation event kept: measured
    before = (await client.info("memory"))["used_memory"]
    started = time.perf_counter()
    await load(store, clock, count)
    loaded_in = time.perf_counter() - started
    after = (await client.info("memory"))["used_memory"]
    names = store.names
    parts = {what: await client.memory_usage(names.account(ACCOUNT, what), samples=0) or 0
             for what in ("audit",)}
    # a packed set (gateway/store/scripts/packed.lua): its root and every name under it
    for what in ("created", "tokens", "uses", "labels", "statuses"):
        parts[f"{what} (packed)"] = await tree_memory(client, names.account(ACCOUNT, what))
    for role in ("owner", *ROLES):
        parts[f"holding:{role} (packed)"] = await tree_memory(
            client, names.role_holders(ACCOUNT, role))
    sample = [key_name(i) for i in range(0, count, max(1, count // 1000))]
    hashes = [await client.memory_usage(names.key(k), samples=0) or 0 for k in sample]
    clock.now = time.time()
    now_ms = int(clock.now * 1000)
    # the renewal gauge's count: the accounts from their set, two counts per level;
    # beside it the scan of every name that reading the accounts once was (migrate's)
    gauge = RenewalGauge(store, 300.0, clock, CollectorRegistry())
    started = time.perf_counter()
    await store.accounts(rescan=True)
    scanned_in = time.perf_counter() - started
    gauge_times = []
    for _ in range(5):
        started = time.perf_counter()
        await gauge.refresh()
        gauge_times.append(time.perf_counter() - started)
    # the first listing of a process starts copying the account's label index in the
    # background (gateway/store/search.py); a search meanwhile waits for it
    # (the copy is made in a thread: how long the event loop, which serves every other
    # request of the process, waited at most meanwhile)
    waits: list[float] = []
    ticks = asyncio.create_task(loop_waits(waits))
    started = time.perf_counter()
    await store.list_keys(ACCOUNT, KeyQuery(per_page=50))
    listed_in = time.perf_counter() - started
    await store.list_keys(ACCOUNT, KeyQuery(q="no label holds this", per_page=50))
    copied_in = time.perf_counter() - started
    ticks.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticks
    waits.sort()
    copy = store.label_search.copies.get(ACCOUNT)
    # both strings, the token scores, the index by key
    copy_bytes = copy.nbytes if copy is not None else 0
    # the first page asked in last-use order puts the copy's lines in that order, in the
    # background (gateway/store/used_order.py); the script answers that page
    store.label_search.follow_uses_every = 3600.0  # the uses below taken in when timed
    started = time.perf_counter()
    await store.list_keys(ACCOUNT, KeyQuery(status="inactive", sort="lastUsed", per_page=50))
    first_by_use = time.perf_counter() - started
    making = store.label_search.ordering_by_use.get(ACCOUNT)
    if making is not None:
        await making
    used_order_in = time.perf_counter() - started
    used_bytes = copy.nbytes - copy_bytes if copy is not None else 0
    # then 10,000 keys used (spread over the account), taken in from the moves stream
    # (by the process's follower every second; here at once, to time it); the pages
    # below check them one by one
    moved = count // 10_000 or 1
    await store.record_last_used({key_name(i): now_ms - i % 5000
                                  for i in range(0, count, moved)})
    started = time.perf_counter()
    if copy is not None:
        await store.label_search.sync.take_in_moves(ACCOUNT, copy)
    after_moves = time.perf_counter() - started
    pages = {}
    for name, query in page_types(now_ms, count):
        pages[name] = await timed(store, query)
    await store.close()
    await client.aclose()
    return {
        "count": count, "loaded_in": loaded_in, "per_key": (after - before) / count,
        "parts": {k: v / count for k, v in parts.items()},
        "hash": statistics.mean(hashes), "pages": pages,
        "copied_in": copied_in, "listed_in": listed_in, "copy_bytes": copy_bytes,
        "loop_wait_max": waits[-1] if waits else 0.0,
        "loop_wait_p99": waits[int(len(waits) * 0.99)] if waits else 0.0,
        "first_by_use": first_by_use, "used_order_in": used_order_in,
        "used_bytes": used_bytes, "after_moves": after_moves, "moved": len(range(0, count, moved)),
        "gauge": statistics.median(gauge_times), "scanned_in": scanned_in,
        "names": await client.dbsize(),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    n, parts = result["count"], result["parts"]
    index_bytes = sum(v for k, v in parts.items() if k != "audit")
    where = ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
    worst = max(result["pages"].items(), key=lambda item: item[1][0])
    return [
        (f"{n:,} keys in one account: Redis memory per key (target ≤ 600 B)",
         f"{result['per_key']:.0f} B: key hash {result['hash']:.0f} B, indexes "
         f"{index_bytes:.0f} B, creation audit event {parts['audit']:.0f} B "
         f"(per index: {where}); loaded in {result['loaded_in']:.0f} s"),
        (f"{n:,} keys: a page of 50 (median of 5; target ≤ 50 ms)",
         "; ".join(f"{name}: {ms:.1f} ms ({total:,})"
                   for name, (ms, total) in result["pages"].items())),
        (f"{n:,} keys: slowest page", f"{worst[0]}: {worst[1][0]:.1f} ms"),
        (f"{n:,} keys: q's copy of the label index, per process",
         f"made ahead by the first listing (answered in {result['listed_in'] * 1000:.1f} ms) "
         f"in {result['copied_in']:.2f} s, a search meanwhile waiting for it; "
         f"{result['copy_bytes'] / n:.0f} B per key of process memory, none in Redis; "
         f"the process's event loop meanwhile (the copy made in a thread) late by "
         f"{result['loop_wait_max'] * 1000:.0f} ms at most, p99 of its 1 ms sleeps "
         f"{result['loop_wait_p99'] * 1000:.1f} ms"),
        (f"{n:,} keys: the copy's lines in last-use order",
         f"made for the first page asked in that order (answered by the script meanwhile, "
         f"in {result['first_by_use'] * 1000:.0f} ms) in {result['used_order_in']:.2f} s; "
         f"{result['used_bytes'] / n:.0f} B per key more; {result['moved']:,} keys used "
         f"then taken in from the moves stream in {result['after_moves'] * 1000:.1f} ms "
         f"(by each process every second, off the pages; the pages above were measured "
         f"with those keys checked one by one)"),
        (f"{n:,} keys: the renewal gauge's count (median of 5)",
         f"{result['gauge'] * 1000:.1f} ms: the accounts read from their set, two counts of ranks "
         f"per level; a scan of the store's {result['names']:,} names for the accounts "
         f"(`keygate store migrate`'s read) took {result['scanned_in'] * 1000:.0f} ms"),
    ]


def million_only(report: Path, count: int = 1_000_000) -> None:
    """These rows alone, on a redis-server of their own, put in place in the report's
    table (``python bench/run.py --million-only``)."""
    with private_redis() as (redis_url, _):
        figures = rows(asyncio.run(million(redis_url, count)))
    put_in_place(report, figures, MEASURED_APART, "python bench/run.py --million-only")
