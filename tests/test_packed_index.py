"""Packed sorted sets (gateway/store/scripts/packed.lua) against Redis's own sorted sets.

Every operation is run on a packed set and on a plain sorted set of the same entries, on
the real server (and on a Redis Cluster: every name of a packed set shares its hash
slot); their answers must be the same, and the packed set must keep its rules (caps,
counts, fences) after every step."""

from __future__ import annotations

import random
import uuid

import pytest
import redis.asyncio as aioredis
from conftest import on_one_server_and_a_cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store import Store
from gateway.store.lua import Script, source
from gateway.store.packed_index import PACK_CAP, PAGE_CAP, PackedIndex, position, whole_score

redis_url = on_one_server_and_a_cluster()


@pytest.fixture
async def store(redis_url):
    store = Store.from_url(redis_url, prefix=f"pk-{uuid.uuid4().hex[:8]}:")
    yield store
    await store.close()


def packed(store: Store) -> tuple[PackedIndex, str]:
    """A packed set and the name of its plain twin, in one account's slot."""
    name = store.names.account("acme", f"uses-{uuid.uuid4().hex[:6]}")
    return PackedIndex(store.scripts, name), name + "-plain"


async def same(store: Store, index: PackedIndex, plain: str,
               caps: tuple[int, int] | None = None) -> None:
    redis = store.redis
    whole = [(m, int(s)) for m, s in await redis.zrange(plain, 0, -1, withscores=True)]
    assert await index.card() == len(whole)
    assert await index.range(0, len(whole) + 10) == whole
    assert await index.problems(caps) == []
    for low, high in [(0, 3), (4, 4), (7, 29), (30, 40)]:
        assert await index.count(low, high) == await redis.zcount(plain, low, high)


class SmallCaps:
    """The packed set's own script with caps of 8 entries a bucket and 3 buckets a page,
    so that a few hundred steps cut, merge and drop buckets and pages many times."""

    caps = (8, 3)

    def __init__(self, store: Store):
        text = source("packed_index").replace("local PACK_CAP = 120", "local PACK_CAP = 8")
        text = text.replace("local PAGE_CAP = 120", "local PAGE_CAP = 3")
        assert text.count("_CAP = ") == 2 and "CAP = 120" not in text
        self.client = store.redis
        self.packed_index = Script(store.scripts, text)


async def test_many_entries_in_any_order_keep_every_answer_of_a_sorted_set(store):
    """Entries enough for several pages of buckets, added in a random order and at few
    scores (ties broken by member, in byte order: members of any case and bytes), then
    a third removed: ranks, ranges from either end, counts and card agree."""
    rng = random.Random(7)
    index, plain = packed(store)
    members = {f"{rng.choice(['kgk-acme-', 'Z', 'a', 'é', ''])}{rng.randrange(10**6)}"
               for _ in range(PACK_CAP * PAGE_CAP)}
    entries = [(rng.randrange(40) * 1_000_003, m) for m in sorted(members)]
    rng.shuffle(entries)
    for first in range(0, len(entries), 500):
        chunk = entries[first:first + 500]
        assert await index.add(chunk) == len(chunk)
        await store.redis.zadd(plain, {m: s for s, m in chunk})
    assert await index.add(entries[:10]) == 0  # held already: left as they are
    doomed = entries[::3]
    assert await index.remove(doomed) == len(doomed)
    assert await index.remove(doomed[:5]) == 0
    await store.redis.zrem(plain, *[m for _, m in doomed])
    await same(store, index, plain)
    size = await store.redis.zcard(plain)
    for start in (0, 1, PACK_CAP - 1, PACK_CAP, size // 2, size - 3, size, size + 5):
        for descending in (False, True):
            got = await index.range(start, 150, descending)
            want = await store.redis.zrange(plain, start, start + 149, withscores=True,
                                            desc=descending)
            assert got == [(m, int(s)) for m, s in want], (start, descending)
    for low, high in [(0, 0), (0, 40 * 1_000_003), (3_000_009, 3_000_009), (5, 3_000_008),
                      (12_000_036, 4_000_012), (39_000_117, 2**52 - 1)]:
        assert await index.count(low, high) == await store.redis.zcount(plain, low, high)
    for score, member in rng.sample(entries, 40):
        rank = await store.redis.zrank(plain, member)
        if rank is not None:
            assert await index.rank(score, member) == rank
    # the set's names are all in the account's slot, and a listpack each
    redis = store.redis
    tree = [n async for n in redis.scan_iter(match=f"{index.name}*", count=1000)
            if n != plain]
    assert len([n for n in tree if n.startswith(f"{index.name}:p:")]) >= 2
    assert all("{acme}" in n for n in tree if store.names.clustered)
    for name in rng.sample(tree, 30):
        assert await redis.object("encoding", name) == "listpack"


async def test_an_emptied_set_leaves_nothing(store):
    index, plain = packed(store)
    entries = [(n % 7, f"k{n:05d}") for n in range(PACK_CAP * 3)]
    await index.add(entries)
    assert await index.remove(reversed(entries)) == len(entries)
    assert [n async for n in store.redis.scan_iter(match=f"{index.name}*")] == []
    assert await index.card() == 0 and await index.range(0, 10) == []
    assert await index.count(0, 10) == 0 and await index.rank(3, "k") == 0


async def test_keys_made_in_date_order_fill_their_buckets(store):
    """Entries added at the end (keys made one after the other, a creation or token
    date) leave each bucket full: half as many names as a cut in the middle would."""
    index, _ = packed(store)
    for first in range(0, PACK_CAP * 20, 200):
        await index.add([(1_700_000_000_000 + n, f"kgk-acme-{n:06d}")
                         for n in range(first, first + 200)])
    buckets = [n async for n in store.redis.scan_iter(match=f"{index.name}:b:*")]
    assert len(buckets) <= 21


async def run_steps(store: Store, *phases: list[tuple[bool, int, int]]) -> None:
    """Adds and removes on a packed set with SmallCaps and on its plain twin (a member
    moved to another score is removed at its old one first): after each phase, the
    same answers and the rules kept; then emptied, nothing of it left."""
    _, plain = packed(store)
    small = SmallCaps(store)
    index = PackedIndex(small, plain[: -len("-plain")])  # type: ignore[arg-type]
    held: dict[str, int] = {}
    for steps in phases:
        for add, score, n in steps:
            member = f"m{n}"
            if add:
                if member in held:
                    assert await index.remove([(held[member], member)]) == 1
                assert await index.add([(score, member)]) == 1
                held[member] = score
            else:
                gone = await index.remove([(held.get(member, score), member)])
                assert gone == (member in held)
                held.pop(member, None)
        await store.redis.delete(plain)
        if held:
            await store.redis.zadd(plain, held)
        await same(store, index, plain, small.caps)
    assert await index.remove([(s, m) for m, s in held.items()]) == len(held)
    assert [n async for n in store.redis.scan_iter(match=f"{index.name}*")] == [plain] * bool(held)


async def test_a_long_run_of_adds_and_removes_that_grows_and_shrinks(store):
    """Thousands of steps: the set grows to many pages, shrinks to a few entries (every
    bucket merged, every page dropped on the way), grows again; checked at each turn."""
    rng = random.Random(3)
    await run_steps(store, *([(rng.random() < adds, rng.randrange(31), rng.randrange(size))
                              for _ in range(steps)]
                             for adds, size, steps in [(0.9, 400, 700), (0.1, 400, 1500),
                                                       (0.8, 60, 300), (0.2, 400, 900)]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 30), st.integers(0, 400)),
                      min_size=1, max_size=600))
async def test_any_sequence_of_adds_and_removes(store, steps):
    """With small caps (SmallCaps), any sequence of adds and removes keeps every answer
    of a sorted set and the packed set's rules."""
    await run_steps(store, steps)


async def test_members_are_stored_without_the_text_they_share_in_the_same_order(store):
    """The first member gives the cut ('kgk-acme-'): members starting with it are stored
    without it, members that do not (before or after it in byte order, a prefix of it,
    empty) keep their place; at one score and at many, ranks and ranges are a sorted
    set's."""
    index, plain = packed(store)
    assert await index.add([(5, "kgk-acme-7QX2M4PZ9B")]) == 1
    others = ["kgk-acme-", "kgk-acme", "kgk-acmd-zz", "kgk-acmf", "", "zzz", "\x01",
              "kgk-acme-\x00", "kgk-acme-A", "Kgk-acme-A", "kgk-acme--", "é-acme-x"]
    entries = [(5, m) for m in others] + [(n % 3, f"{m}{n}") for n, m in enumerate(others)]
    assert await index.add(entries) == len(entries)
    await store.redis.zadd(plain, {"kgk-acme-7QX2M4PZ9B": 5, **{m: s for s, m in entries}})
    await same(store, index, plain)
    for score, member in entries:
        assert await index.rank(score, member) == await store.redis.zrank(plain, member)
    stored = await store.redis.zrange(f"{index.name}:b:", 0, -1)
    assert "\x017QX2M4PZ9B" in stored and "kgk-acme-7QX2M4PZ9B" not in stored
    assert await index.remove(entries[::2]) == len(entries[::2])
    await store.redis.zrem(plain, *[m for _, m in entries[::2]])
    await same(store, index, plain)


async def test_refuses_a_score_it_cannot_order(store):
    index, _ = packed(store)
    for score in (-1, 2**52, 1.5):
        with pytest.raises(aioredis.ResponseError, match="whole number"):
            await index.add([(score, "k")])
    assert [n async for n in store.redis.scan_iter(match=f"{index.name}*")] == []


def test_a_hash_value_is_scored_as_the_scripts_score_it():
    assert [whole_score(v) for v in (None, "", "x", "nan", "-5", "12.7", "1700000000000")] \
        == [0, 0, 0, 0, 0, 12, 1700000000000]
    assert position(0, "") < position(0, "a") < position(1, "") < position(16, "")
