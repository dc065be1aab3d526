"""q answered from a process's copy of an account's label index (gateway/store/search.py):
the same answers as brute force for every query; changes made by another instance seen
by the very next search; the copy made again when the audit events it follows are gone;
memory bounded however many accounts are searched; needles that can match nothing.
Real Redis (one server and a Cluster); the copy is used from the first key here
(``min_keys = 0``) instead of from 20,000.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import on_one_server_and_a_cluster
from interleave import Before
from test_listing_index import (
    ACCOUNT,
    DAY_MS,
    Keys,
    assert_same,
    brute,
    indexed,
    queries,
    spread,
)

from gateway.context import Gateway
from gateway.renewal import ALERTS, alert_range
from gateway.store import CLI_ACTOR as CLI
from gateway.store import (
    KeyQuery,
    Store,
    copy_sync,
    label_newest,
    ordered_lines,
    ordered_pages,
    steps,
)
from gateway.store import search as search_module
from gateway.store.copy_values import INACTIVE_AT, Filters
from gateway.store.label_copy import AccountCopy
from gateway.store.lua import constant
from gateway.store.packed_index import PackedIndex
from gateway.store.search import LabelSearch
from gateway.store.used_order import MOVES_KEPT

redis_url = on_one_server_and_a_cluster()


@pytest.fixture
def searched(gateway: Gateway) -> Gateway:
    """The gateway's store answering q from its copy from the first key, made by the
    search that needs it (not in the background while Redis answers)."""
    search = gateway.store.label_search
    search.min_keys, search.in_redis_while_made = 0, 0
    return gateway


@pytest.fixture
async def other(gateway: Gateway) -> AsyncIterator[Store]:
    """Another instance's store on the same Redis."""
    store = Store.from_url(gateway.settings.store_url, gateway.settings.store_prefix,
                           gateway.store.clock)
    yield store
    await store.close()


def stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq)


async def labelled_keys(store: Store, **counts: int) -> None:
    """``counts[account]`` keys in each account, labelled ``label 0``, ``label 1``, …"""
    for account, count in counts.items():
        for i in range(count):
            await store.create_key(f"kgk-{account}-{i:010X}", account, f"label {i}", [],
                                   "d" * 64)


def used_copy(store: Store, builds: int) -> None:
    search = store.label_search
    assert ACCOUNT in search.copies and search.builds == builds, (search.builds,
                                                                  list(search.copies))


async def test_q_from_the_copy_answers_as_brute_force(searched, clock):
    keys = Keys(searched.store, 11)
    await spread(searched, keys, clock, 240)
    rng = random.Random(12)
    asked = [q for q in queries(rng, int(clock() * 1000), 400) if q.q]
    asked += [KeyQuery(q=needle, sort=sort, descending=desc, per_page=per_page, page=page)
              for needle in ("a", "kgk", "-", "ss", "ß", "日本", "zzz-none", "KGK-ACME-",
                             "-a", "e-1", "kgk-acme-f", "acme-", "Me-")
              for sort in ("creationDate", "label", "appKey")
              for desc in (True, False) for per_page, page in ((5, 1), (5, 4), (1000, 1))]
    assert len(asked) > 100
    for query in asked:
        await assert_same(searched.store, query)
    used_copy(searched.store, builds=1)


async def test_more_matches_than_the_script_is_handed_answer_as_brute_force(searched, clock):
    """Past max_passed matches the script is told only their number (q alone, or q
    within a status), or matches q itself (with other filters): the same answers
    either way."""
    searched.store.label_search.max_passed = 3
    searched.store.label_search.max_passed_filtered = 3
    keys = Keys(searched.store, 13)
    await spread(searched, keys, clock, 120)
    rng = random.Random(14)
    asked = [q for q in queries(rng, int(clock() * 1000), 150) if q.q]
    # q within a status: counted in the copy's lines of that status
    asked += [KeyQuery(q=needle, status=status, sort=sort, descending=desc, page=page,
                       per_page=5)
              for needle in ("a", "e", "-", "kgk") for status in ("active", "inactive")
              for sort in ("creationDate", "label", "lastUsed") for desc in (True, False)
              for page in (1, 3)]
    for query in asked:
        await assert_same(searched.store, query)
    used_copy(searched.store, builds=1)


async def test_another_instances_changes_are_seen_by_the_next_search(searched, other, clock):
    store = searched.store
    keys = Keys(store, 21)
    for label in ("zebra 1", "zebra 2", "horse", "ZÈBRE", "donkey"):
        await keys.create(label)
    for needle in ("zebra", "zèbre", "e"):
        await assert_same(store, KeyQuery(q=needle, per_page=100))
    used_copy(store, builds=1)
    made = Keys(other, 22)
    await made.create("Zebra crossing")  # created
    await other.update_key(ACCOUNT, keys.made[2], label="zebra now")  # relabelled in
    await other.update_key(ACCOUNT, keys.made[1], label="no longer")  # relabelled out
    await other.delete_key(ACCOUNT, keys.made[0], actor=CLI)  # deleted
    await other.update_key(ACCOUNT, keys.made[3], label="ZÉBRÉ")  # not ASCII either way
    await other.update_key(ACCOUNT, keys.made[4], status="inactive")  # not its label
    for needle in ("zebra", "zèbre", "zébré", "no longer", "e", "donkey"):
        await assert_same(store, KeyQuery(q=needle, per_page=100))
        await assert_same(store, KeyQuery(q=needle, status="active", per_page=100))
    page, total = await indexed(store, KeyQuery(q="zebra", per_page=100))
    assert total == 2 and set(page) == {made.made[0], keys.made[2]}
    store.label_search.max_passed = 0  # counted, not handed over: the keys read again too
    for needle in ("zebra", "zèbre", "zébré", "e"):
        await assert_same(store, KeyQuery(q=needle, per_page=100))
    used_copy(store, builds=1)  # taken in from the events, not copied again


async def test_creation_order_is_the_copys_own_for_keys_copied_and_read_again(searched,
                                                                             other, clock):
    """The copy keeps each key's creation date, so q's matches in creation order are
    sorted in this process (no script): for keys copied and for keys another instance
    made, relabelled, deactivated or renewed since, whose dates were read again. A date
    wrong by a day moves a key."""
    store = searched.store
    keys = Keys(store, 31)
    for i in range(30):
        clock.advance(DAY_MS / 1000)
        await keys.create(f"zebra {i}" if i % 2 else f"horse {i}")
    await assert_same(store, KeyQuery(q="zebra", per_page=100))
    used_copy(store, builds=1)
    made = Keys(other, 32)
    for i in range(4):
        clock.advance(DAY_MS / 1000)
        await made.create(f"zebra new {i}")
    await other.update_key(ACCOUNT, keys.made[0], label="zebra relabelled")  # the oldest
    await other.update_key(ACCOUNT, keys.made[3], status="inactive")
    await other.renew_token(ACCOUNT, keys.made[5], "f" * 64, keep_old=False, actor=CLI)
    await other.delete_key(ACCOUNT, keys.made[7], actor=CLI)
    for status in (None, "active", "inactive"):
        for desc in (True, False):
            query = KeyQuery(q="zebra", status=status, sort="creationDate",
                             descending=desc, per_page=100)
            found = await store.label_search.matches(
                ACCOUNT, "zebra", True, None, (0, 100), Filters(status), "creationDate",
                desc)
            expected, total = await brute(store, query)
            assert found is not None and found.count == total, query
            if status != "inactive":  # one match there: walked by the script instead
                assert found.ordered and found.keys == expected, query
            await assert_same(store, query)
            await assert_same(store, KeyQuery(q="zebra", status=status, sort="creationDate",
                                              descending=desc, per_page=3, page=2))
    used_copy(store, builds=1)


async def test_the_newest_matches_are_read_from_the_copys_end_however_they_were_made(
    searched, other, clock, monkeypatch
):
    """Newest first, q's matches are read from the copy's end (label_newest.py), so a
    page costs the same whether they were made last or long ago. Labels made in
    sequence (``build-old``, then ``other``), tokens renewed since (a renewed key's line
    sits at the copy's end, its creation far back), keys deactivated, and changes another
    instance made after the copy: every page as brute force, each read from the end.
    Chunks of 16 lines, so that the reading starts past chunks that hold no match."""
    monkeypatch.setattr(label_newest, "CHUNK_LINES", 16)
    store = searched.store
    keys = Keys(store, 61)
    for i in range(90):
        clock.advance(DAY_MS / 1000 * (1 + i % 3))
        roles = ("orders-reader",) if i % 2 else ("orders-writer",)
        await keys.create(f"build-old {i}" if i < 30 else f"other {i}", roles)
    for i in range(0, 30, 4):  # old keys' tokens renewed now: newest in token order
        clock.advance(DAY_MS / 1000)
        await store.renew_token(ACCOUNT, keys.made[i], "e" * 64, keep_old=False, actor=CLI)
    for i in range(1, 90, 7):
        await store.update_key(ACCOUNT, keys.made[i], status="inactive")
    await assert_same(store, KeyQuery(q="build", per_page=5))
    used_copy(store, builds=1)
    made = Keys(other, 62)
    clock.advance(DAY_MS / 1000)
    await made.create("build-old new", ("orders-reader",))
    await other.update_key(ACCOUNT, keys.made[40], label="build-old relabelled")
    await other.update_key(ACCOUNT, keys.made[2], label="no longer")
    await other.delete_key(ACCOUNT, keys.made[6], actor=CLI)
    await other.renew_token(ACCOUNT, keys.made[10], "f" * 64, keep_old=False, actor=CLI)
    await other.update_key(ACCOUNT, keys.made[14], status="inactive")
    now_ms = int(clock() * 1000)
    asked = [KeyQuery(q=needle, sort=sort, status=status, role=role, token_created=dates,
                      per_page=per_page, page=page)
             for needle in ("build-old", "old 1", "other", "d-o", "zzz")
             for sort in ("creationDate", "creationDateToken")
             for status in (None, "active", "inactive")
             for role in (None, "orders-reader")
             for dates in (None, (now_ms - 30 * DAY_MS, None))
             for per_page, page in ((5, 1), (5, 3), (100, 1))]
    before = store.label_search.read_back_searches
    for query in asked:
        await assert_same(store, query)
    assert store.label_search.read_back_searches - before == len(asked)
    # past the first pages, the matches are read from the copy's lines in the sort's
    # order (ordered_lines.py), with a renewal filter too
    monkeypatch.setattr(search_module, "NEWEST_FIRST", 5)
    monkeypatch.setattr(search_module, "ORDERED_HERE", -1)
    store.label_search.max_passed = 8
    expected = in_lines = 0
    for query in asked:
        before = store.label_search.read_back_searches
        before_in_order = store.label_search.in_order_searches
        await assert_same(store, query)
        read_back = query.page * query.per_page <= 5
        ordered = not read_back
        assert store.label_search.read_back_searches - before == read_back, query
        assert store.label_search.in_order_searches - before_in_order == ordered, query
        expected += read_back
        in_lines += ordered
    assert 0 < expected < len(asked) and 0 < in_lines < len(asked)
    used_copy(store, builds=1)


async def test_tokens_renewed_in_another_order_than_their_keys_were_made(
    searched, clock, monkeypatch
):
    """Every token renewed lately, the oldest keys' last: the copy's end holds the oldest
    keys, so reading back stops only past them, within its budget of lines; past that
    budget the page is found the other ways. Brute force's answers either way."""
    store = searched.store
    keys = Keys(store, 63)
    for i in range(60):
        clock.advance(DAY_MS / 1000)
        await keys.create(f"renewed {i}", ("orders-reader",))
    for app_key in reversed(keys.made):
        clock.advance(60)
        await store.renew_token(ACCOUNT, app_key, "e" * 64, keep_old=False, actor=CLI)
    asked = [KeyQuery(q=needle, sort=sort, per_page=per_page, page=page)
             for needle in ("renewed", "ed 1", "d 5")
             for sort in ("creationDate", "creationDateToken")
             for per_page, page in ((5, 1), (5, 4), (100, 1))]
    search = store.label_search
    before = search.read_back_searches
    for query in asked:
        await assert_same(store, query)
    assert search.read_back_searches - before == len(asked)
    # no line read beyond the pages asked for: in token order (the lines' own) reading
    # back still stops in time, in creation order only where every match is asked for
    monkeypatch.setattr(label_newest, "READ_BACK_BUDGET", 0)
    expected = 0
    for query in asked:
        before = search.read_back_searches
        await assert_same(store, query)
        _, total = await brute(store, query)
        read_back = query.sort == "creationDateToken" or total <= query.page * query.per_page
        assert search.read_back_searches - before == read_back, query
        expected += read_back
    assert 0 < expected < len(asked)
    used_copy(store, builds=1)


@pytest.mark.parametrize("sort", ["label", "creationDate", "creationDateToken", "appKey",
                                  "status"])
async def test_q_in_the_orders_made_with_the_copy_is_read_from_its_ordered_lines(
    searched, other, clock, monkeypatch, sort
):
    """In label, creation, token date, key and status order, q's page is read from the
    copy's lines in that order (ordered_lines.py; status order from the key-ordered
    lines, a status after the other), wherever q's matches sit, however deep the page,
    and within a status, a token date range (a renewal alert level: date buckets of ten
    lines, so that ranges cut some and fill others) and a tagged role too: labels made
    in sequence, keys made in the same
    millisecond, names in upper and lower case, labels that are not ASCII, and changes
    another instance made after the copy (a key made, relabelled into and out of q's
    matches, deleted, deactivated, renewed, a role given and taken). Every page as brute
    force,
    each read that way. Chunks of a few lines, so that a page is found past chunks that
    hold no match, and past those before it, some of them counted from their tails
    because every line in them starts with q."""
    monkeypatch.setattr(ordered_lines, "CHUNK_BYTES", 64)
    # the copy made in steps of a few keys and bytes (steps.py): its sorts by bucket
    monkeypatch.setattr(steps, "STEP", 4)
    monkeypatch.setattr(steps, "PART_BYTES", 32)
    monkeypatch.setattr(ordered_lines, "DATE_BUCKETS", 4)
    # every page read from the ordered lines, however few match (newest first too)
    monkeypatch.setattr(search_module, "ORDERED_HERE", -1)
    monkeypatch.setattr(search_module, "NEWEST_FIRST", 0)
    store = searched.store
    keys = Keys(store, 64)
    for i in range(40):
        if i % 3 == 0:  # three keys in each millisecond: ordered by key there
            clock.advance(0.001)
        label = f"build-old {i}" if i < 25 else f"other {i}" if i < 35 else None
        await keys.create(label, ("orders-reader",) if i % 2 else ("orders-writer",))
        if i == 16:
            middle_ms = int(clock() * 1000)
    for i in (3, 8, 21, 30):
        await store.update_key(ACCOUNT, keys.made[i], status="inactive")
    await assert_same(store, KeyQuery(q="build", sort=sort, per_page=5))
    used_copy(store, builds=1)
    kept = store.label_search.copies[ACCOUNT].orders
    order = kept["appKey" if sort == "status" else sort]
    assert len(order.bounds) > 10
    # labels made in sequence: the lines of some chunks all start with "build", and
    # those chunks are counted from their tails (changes since blank lines in them)
    holding = [order.all_hold(chunk, [b"build"]) for chunk in range(len(order.tails))]
    assert any(holding) and not all(holding)
    made = Keys(other, 65)
    clock.advance(0.001)
    await made.create("build-old new", ("orders-reader",))
    await made.create("Straße build", ("orders-reader",))
    await other.update_key(ACCOUNT, keys.made[30], label="build-old relabelled")
    await other.update_key(ACCOUNT, keys.made[2], label="no longer")
    await other.delete_key(ACCOUNT, keys.made[6], actor=CLI)
    await other.update_key(ACCOUNT, keys.made[14], status="inactive")
    await other.update_key(ACCOUNT, keys.made[8], status="active")
    await other.update_key(ACCOUNT, keys.made[9], roles=["orders-writer"])
    await other.update_key(ACCOUNT, keys.made[10], roles=["orders-reader"])
    clock.advance(0.001)
    await other.renew_token(ACCOUNT, keys.made[12], "f" * 64, keep_old=False, actor=CLI)
    await other.renew_token(ACCOUNT, keys.made[13], "f" * 64, keep_old=False, actor=CLI)
    asked = [KeyQuery(q=needle, sort=sort, descending=descending, status=status, role=role,
                      per_page=per_page, page=page)
             for needle in ("build-old", "old 1", "build", "me-", "e-a", "STRASSE", "zzz")
             for descending in (True, False)
             for status in (None, "active", "inactive")
             for role in (None, "orders-reader")
             for per_page, page in ((5, 1), (5, 3), (4, 9), (100, 1))]
    search = store.label_search
    before = search.in_order_searches
    for query in asked:
        await assert_same(store, query)
    assert search.in_order_searches - before == len(asked)
    # within token dates: the lines of the date buckets that a range fills counted in
    # one pass, those of the buckets it cuts one by one
    dated = [KeyQuery(q=needle, sort=sort, descending=descending, status=status, role=role,
                      token_created=dates, per_page=per_page, page=page)
             for needle in ("build", "old 1", "me-")
             for descending in (True, False)
             for status in (None, "inactive")
             for role in (None, "orders-reader")
             for dates in ((middle_ms, None), (None, middle_ms),
                           (middle_ms - 3, middle_ms + 2), (middle_ms, middle_ms))
             for per_page, page in ((5, 1), (4, 3))]
    before = search.in_order_searches
    for query in dated:
        await assert_same(store, query)
    assert search.in_order_searches - before == len(dated)
    # where few of the range's keys hold q, the other ways (cheaper than a pass over
    # every line), in label order too
    monkeypatch.setattr(search_module, "ORDERED_HERE", 1_000)
    before = search.in_order_searches
    for query in dated[::5]:
        await assert_same(store, query)
    assert search.in_order_searches == before
    monkeypatch.setattr(search_module, "ORDERED_HERE", -1)
    # last-use order: the first page asked in it found the other ways while the copy's
    # lines are put in that order (in the background)
    before = search.in_order_searches
    await assert_same(store, KeyQuery(q="build", sort="lastUsed", per_page=5))
    assert search.in_order_searches == before
    # every page, each found past the chunks before it
    for needle in ("build", "old 1", "e-a", "me-"):
        for descending in (True, False):
            for page in range(1, 15):
                query = KeyQuery(q=needle, sort=sort, descending=descending, per_page=3,
                                 page=page)
                before = search.in_order_searches
                await assert_same(store, query)
                assert search.in_order_searches == before + 1, query
    used_copy(store, builds=1)


async def test_pages_with_no_q_are_read_from_a_copy_kept_as_brute_force(
    searched, other, clock, monkeypatch
):
    """A status, renewal or role filter with no q, in every order and at any depth, is
    read from the account's copy when one is kept (search.py filtered: counted from
    each chunk's sorted token scores by tail, the page read from its chunk); changes
    another instance made since are seen. Every page as brute force; the first page in
    last-use order (while the copy is put in that order), a caller's role limits, a
    role the copy does not tag and an account with no copy kept are left to the
    script."""
    monkeypatch.setattr(ordered_lines, "CHUNK_BYTES", 64)
    # the copy made in steps of a few keys and bytes (steps.py): its sorts by bucket
    monkeypatch.setattr(steps, "STEP", 4)
    monkeypatch.setattr(steps, "PART_BYTES", 32)
    store = searched.store
    keys = Keys(store, 67)
    for i in range(45):
        clock.advance(DAY_MS / 1000 * (1 + i % 4))
        await keys.create(f"key {i}", ("orders-reader",) if i % 3 else ("owner",))
    for i in range(0, 45, 5):
        await store.update_key(ACCOUNT, keys.made[i], status="inactive")
    search = store.label_search
    # no copy kept yet: the script answers (the listing then makes one ahead, as for q)
    await assert_same(store, KeyQuery(status="inactive", per_page=5))
    assert search.filtered_searches == 0
    await assert_same(store, KeyQuery(q="key", per_page=5))
    used_copy(store, builds=1)
    clock.advance(DAY_MS / 1000)
    await Keys(other, 68).create("key new", ("owner",))
    await other.update_key(ACCOUNT, keys.made[7], status="inactive")
    await other.update_key(ACCOUNT, keys.made[10], status="active")
    await other.update_key(ACCOUNT, keys.made[11], roles=["owner"])
    await other.delete_key(ACCOUNT, keys.made[12], actor=CLI)
    await other.renew_token(ACCOUNT, keys.made[2], "f" * 64, keep_old=False, actor=CLI)
    now_ms = int(clock() * 1000)
    asked = [KeyQuery(sort=sort, descending=descending, status=status, role=role,
                      token_created=dates, per_page=per_page, page=page)
             for sort in ("creationDate", "creationDateToken", "label", "appKey", "status")
             for descending in (True, False)
             for status in (None, "active", "inactive")
             for role in (None, "owner")
             for dates in (None, (now_ms - 30 * DAY_MS, None), (None, now_ms - 60 * DAY_MS))
             for per_page, page in ((5, 1), (4, 3), (100, 1))
             if status or role or dates]
    before = search.filtered_searches
    for query in asked:
        await assert_same(store, query)
    assert search.filtered_searches - before == len(asked)
    for query in (KeyQuery(status="inactive", sort="lastUsed", per_page=5),
                  KeyQuery(status="inactive", may_act_on=lambda r: r != "owner", per_page=5),
                  KeyQuery(role="ghost", per_page=5), KeyQuery(status="bogus", per_page=5)):
        before = search.filtered_searches
        await assert_same(store, query)
        assert search.filtered_searches == before, query
    used_copy(store, builds=1)


async def test_pages_in_last_use_order_are_read_from_the_copys_lines_as_brute_force(
    searched, other, clock, monkeypatch
):
    """In last-use order, q's pages and those with a status, renewal or role filter are
    read from the copy's lines kept in that order (used_order.py), made when a page in
    that order is first asked for, at any depth: keys used in the same millisecond
    (ordered by key), never used, used again by another instance after the order was
    made (later, and a late batch holding an older use: a key's last use only moves
    forward), keys made, changed and deleted since, and a key made since and then used.
    Every page as brute force. When the uses it follows are gone (the moves stream cut
    or deleted) or too many keys moved, the order is dropped and made again."""
    monkeypatch.setattr(ordered_lines, "CHUNK_BYTES", 64)
    # the copy made in steps of a few keys and bytes (steps.py): its sorts by bucket
    monkeypatch.setattr(steps, "STEP", 4)
    monkeypatch.setattr(steps, "PART_BYTES", 32)
    monkeypatch.setattr(ordered_lines, "DATE_BUCKETS", 4)
    monkeypatch.setattr(search_module, "ORDERED_HERE", -1)
    store = searched.store
    search = store.label_search
    search.use_order_waits = True
    moves = store.names.account(ACCOUNT, "moves")
    keys = Keys(store, 71)
    for i in range(40):
        clock.advance(DAY_MS / 1000 * (i % 3))
        await keys.create(f"build {i}" if i < 30 else f"other {i}",
                          ("orders-reader",) if i % 2 else ("orders-writer",))
    for i in (3, 8, 21, 30):
        await store.update_key(ACCOUNT, keys.made[i], status="inactive")
    now_ms = int(clock() * 1000)
    # three keys in each millisecond, a fifth never used
    await store.record_last_used({k: now_ms - 1000 + i // 3 for i, k in enumerate(keys.made)
                                  if i % 5})
    # a key made by another instance, read again by this one's copy, then used, all
    # before the copy is kept in last-use order: the stream did not exist to say so
    await assert_same(store, KeyQuery(q="build", per_page=5))
    early = await Keys(other, 74).create("build early", ("orders-reader",))
    await assert_same(store, KeyQuery(q="build", per_page=5))
    assert early in search.copies[ACCOUNT].fresh
    await other.record_last_used({early: now_ms + 100})
    # no stream until a page is asked for in last-use order
    assert not await store.redis.exists(moves)
    await assert_same(store, KeyQuery(q="build", sort="lastUsed", per_page=5))
    copy = search.copies[ACCOUNT]
    assert copy.used is not None and await store.redis.exists(moves)
    first_order = copy.orders["lastUsed"]
    assert len(first_order.bounds) > 10
    # followed between pages: a use is taken in with no page asked
    search.follow_uses_every = 0.02
    await other.record_last_used({keys.made[3]: now_ms + 200})
    for _ in range(250):
        if keys.made[3] in copy.used.moved:
            break
        await asyncio.sleep(0.02)
    assert copy.used.moved[keys.made[3]].last_used == now_ms + 200
    search.follow_uses_every = 3600
    clock.advance(1)
    made = Keys(other, 72)
    fresh_key = await made.create("build new", ("orders-reader",))
    await made.create("other new", ("orders-writer",))
    await other.update_key(ACCOUNT, keys.made[31], label="build relabelled")
    await other.update_key(ACCOUNT, keys.made[2], label="no longer")
    await other.delete_key(ACCOUNT, keys.made[6], actor=CLI)
    await other.update_key(ACCOUNT, keys.made[14], status="inactive")
    await other.update_key(ACCOUNT, keys.made[9], roles=["orders-writer"])
    later = int(clock() * 1000)
    await other.record_last_used({keys.made[1]: later, keys.made[7]: later,
                                  keys.made[13]: later + 1, fresh_key: later + 2})
    # a late batch: older uses, of which only those later than the key's own move it
    await other.record_last_used({keys.made[0]: now_ms - 5000, keys.made[10]: now_ms - 999,
                                  keys.made[1]: now_ms - 2000, keys.made[11]: now_ms + 500})
    asked = [KeyQuery(q=needle, sort="lastUsed", descending=descending, status=status,
                      role=role, token_created=dates, per_page=per_page, page=page)
             for needle in ("build", "d 1", "")
             for descending in (True, False)
             for status in (None, "active", "inactive")
             for role in (None, "orders-reader")
             for dates in (None, (now_ms - 20 * DAY_MS, None))
             for per_page, page in ((5, 1), (4, 3), (100, 1))
             if needle or status or role or dates]
    before = search.in_order_searches + search.filtered_searches
    for query in asked:
        await assert_same(store, query)
    assert search.in_order_searches + search.filtered_searches - before == len(asked)
    assert copy.orders["lastUsed"] is first_order  # followed, not made again
    for descending in (True, False):
        for page in range(1, 12):
            await assert_same(store, KeyQuery(q="build", sort="lastUsed", per_page=3,
                                              page=page, descending=descending))
    # the stream cut past the last entry taken in: made again from the index
    await other.record_last_used({keys.made[4]: later + 10})
    await store.redis.xtrim(moves, maxlen=0)
    await other.record_last_used({keys.made[5]: later + 11})
    await assert_same(store, KeyQuery(q="build", sort="lastUsed", per_page=50))
    assert copy.orders["lastUsed"] is not first_order
    second_order = copy.orders["lastUsed"]
    # deleted: likewise
    await store.redis.delete(moves)
    await other.record_last_used({keys.made[12]: later + 12})
    await assert_same(store, KeyQuery(status="active", sort="lastUsed", per_page=50))
    assert copy.orders["lastUsed"] is not second_order
    # more keys moved than the copy follows one by one: made again
    monkeypatch.setattr(copy_sync, "MOVED_AT_MOST", 3)
    third_order = copy.orders["lastUsed"]
    await other.record_last_used({k: later + 20 for k in keys.made[15:20]})
    await assert_same(store, KeyQuery(q="build", sort="lastUsed", per_page=50))
    assert copy.orders["lastUsed"] is not third_order
    used_copy(store, builds=1)


async def test_the_moves_stream_stays_bounded_whatever_the_uses(searched, clock):
    """However many uses are written, the account's moves stream holds its last
    MOVES_KEPT entries of at most MOVES_PER_ENTRY keys each; a batch of more keys is
    cut into entries, and every key moved is in them."""
    store = searched.store
    moves = store.names.account(ACCOUNT, "moves")
    keys = Keys(store, 73)
    made = [await keys.create(f"key {i}") for i in range(5)]
    await store.redis.xadd(moves, {"k": "", "t": ""})
    start = int(clock() * 1000)
    for i in range(MOVES_KEPT + 20):
        await store.record_last_used({made[i % 5]: start + i})
    assert await store.redis.xlen(moves) == MOVES_KEPT
    per_entry = constant("record_last_used", "MOVES_PER_ENTRY")
    many = {f"kgk-{ACCOUNT}-{i:010X}": start for i in range(per_entry + 5)}
    for app_key in many:
        await store.create_key(app_key, ACCOUNT, "many", [], "d" * 64)
    await store.record_last_used({k: start + 1000 for k in many})
    entries = await store.redis.xrevrange(moves, count=2)
    sizes = [len(fields["k"].split("\n")) for _, fields in entries]
    assert sorted(sizes) == [5, per_entry]
    assert {k for _, f in entries for k in f["k"].split("\n")} == set(many)


def test_a_date_bucket_range_is_matched_by_its_byte_class_alone():
    """The byte class of a run of date buckets (ordered_lines.py) matches the date bytes
    of every bucket in it and of none outside it, across the first byte's changes; and
    no bucket's date bytes start a UTF-8 character, so that no needle is found in them."""
    buckets = ordered_lines.DATE_BUCKETS
    for bucket in range(buckets):
        with pytest.raises(UnicodeDecodeError):
            ordered_lines.date_bytes(bucket).decode()
    every = range(0, buckets, 37)
    for first, end in [(0, 1), (0, 64), (5, 6), (63, 65), (100, 300), (0, buckets),
                       (64, 128), (65, buckets - 1), (127, 129), (4000, buckets)]:
        whole = re.compile(ordered_lines.buckets_class(first, end))
        for bucket in [*every, first, end - 1, end, first - 1, buckets - 1]:
            if 0 <= bucket < buckets:
                held = whole.fullmatch(ordered_lines.date_bytes(bucket)) is not None
                assert held == (first <= bucket < end), (first, end, bucket)


def test_a_needle_of_one_character_is_not_found_in_the_date_bytes():
    """A needle that is one character of two UTF-8 bytes ('é', 'ß') is found only in
    the labels that hold it, in a copy with a date bucket for each line and as many
    lines as the date bytes have values (every pair of them made)."""
    count = ordered_lines.DATE_BUCKETS
    members = sorted([f"label {i}\0kgk-acme-K{i:05d}" for i in range(count - 2)]
                     + ["café\0kgk-acme-CAFE", "straße\0kgk-acme-STRASSE"])
    copy = AccountCopy.of(members, "0-0", scores=list(range(count)))
    for sort in ordered_lines.ORDERS_KEPT:
        copy.orders[sort] = ordered_lines.OrderedLines.of(copy, sort)
        for needle, held in (("é", "café"), ("ß", "straße")):
            found = ordered_pages.in_order(copy, sort, needle.encode(), 0, 10, False,
                                           Filters())
            assert [m.partition("\0")[0] for m in found.members] == [held], (sort, needle)
            assert found.count == 1


def test_the_ordered_lines_name_members_as_they_are():
    """A line in any of the orders kept names its member as the label index holds it: a
    key's name in upper, lower or mixed case, and a folded label in capitals (keygate
    writes none, an older store might), each found by q in either case and named
    unchanged. A name in capitals (as keygate makes them) is not kept twice: its
    lowered form says it."""
    members = sorted(["alpha 1\0kgk-acme-ABC", "alpha 2\0kgk-acme-abc", "Alpha 3\0kgk-acme-aBc",
                      "beta\0kgk-acme-XYZ", "ALPHA 4\0kgk-acme-QQQ"])
    copy = AccountCopy.of(members, "0-0", created=[5, 1, 4, 2, 3])
    for sort in ordered_lines.ORDERS_KEPT:
        copy.orders[sort] = ordered_lines.OrderedLines.of(copy, sort)
        lines = copy.orders[sort].lines
        assert b"ABC" not in lines and b"XYZ" not in lines and b"aBc" in lines
    by_date = dict(zip(members, [5, 1, 4, 2, 3], strict=True))

    def key(member: str) -> str:
        return member.partition("\0")[2]

    for sort, place in (("label", None), ("creationDate", by_date.__getitem__),
                        ("creationDateToken", key),  # every token score 0: by key
                        ("appKey", key), ("status", key)):
        for descending in (False, True):
            for needle in (b"alpha", b"e-ab", b"kgk"):
                found = ordered_pages.in_order(copy, sort, needle, 0, 10, descending,
                                               Filters())
                assert found.members == sorted(
                    (m for m in members if needle.decode() in m.lower()), key=place,
                    reverse=descending), (sort, needle)
                assert found.count == len(found.members)


async def test_an_older_keygates_events_keep_the_copy_current(searched, other, clock):
    """During an upgrade an older keygate writes its events in one JSON field: a change
    it records that way is taken in by the next search as any other."""
    store = searched.store
    keys = Keys(store, 41)
    for label in ("zebra 1", "horse", "donkey"):
        await keys.create(label)
    await assert_same(store, KeyQuery(q="zebra", per_page=100))
    used_copy(store, builds=1)
    await other.update_key(ACCOUNT, keys.made[1], label="zebra now")
    audit = store.names.account(ACCOUNT, "audit")
    (event_id, fields), = await store.redis.xrevrange(audit, count=1)
    await store.redis.xdel(audit, event_id)
    older = {"time": int(fields["time"]), "account": ACCOUNT, "actor": fields["actor"],
             "action": fields["action"], "target": fields["target"], "requestId": ""}
    await store.redis.xadd(audit, {"event": orjson.dumps(older).decode(),
                                   "before": fields["before"], "after": fields["after"]})
    page, total = await indexed(store, KeyQuery(q="zebra", per_page=100))
    assert total == 2 and set(page) == {keys.made[0], keys.made[1]}
    used_copy(store, builds=1)


async def test_the_copy_is_made_again_when_the_events_it_follows_are_gone(gateway, clock):
    """Another instance trims the audit stream past the copy's last event (a cap of 5
    events), then the store is emptied and written again: each time the next search
    copies the label index again and answers right."""
    gateway.store.label_search.min_keys = 0
    gateway.store.label_search.in_redis_while_made = 0
    store = gateway.store
    keys = Keys(store, 31)
    for i in range(20):
        await keys.create(f"first {i}")
    await assert_same(store, KeyQuery(q="first 1", per_page=100))
    used_copy(store, builds=1)
    trimming = Store.from_url(gateway.settings.store_url, gateway.settings.store_prefix,
                              clock, audit_max_events=5)
    try:
        for i in range(300):  # MAXLEN ~ trims whole nodes of the stream (100 events)
            await trimming.update_key(ACCOUNT, keys.made[i % 20], label=f"second {i}")
        last = store.label_search.copies[ACCOUNT].last_event
        first = await store.redis.xrange(store.names.account(ACCOUNT, "audit"), count=1)
        assert stream_id(first[0][0]) > stream_id(last)  # the copy's events are gone
        for needle in ("first", "second 29", "second"):
            await assert_same(store, KeyQuery(q=needle, per_page=100))
        used_copy(store, builds=2)
        await store.redis.flushdb()
        fresh = Keys(trimming, 32)
        for i in range(5):
            await fresh.create(f"third {i}")
        for needle in ("first", "second", "third"):
            await assert_same(store, KeyQuery(q=needle, per_page=100))
        used_copy(store, builds=3)
    finally:
        await trimming.close()


async def test_copies_stay_within_their_key_budget_whatever_is_searched(gateway, clock):
    """At most max_keys keys in all copies: searching another account drops the least
    recently searched copy; an account larger than the budget is searched in Redis."""
    search = gateway.store.label_search
    search.min_keys, search.max_keys, search.in_redis_while_made = 0, 50, 0
    store = gateway.store
    await labelled_keys(store, acme=30, beta=30, huge=60)
    for account in ("acme", "beta", "huge", "acme"):
        page, total = await store.list_keys(account, KeyQuery(q="label 1", per_page=100))
        expected = {f"kgk-{account}-{i:010X}" for i in range(30 if account != "huge" else 60)
                    if "label 1" in f"label {i}"}
        assert (set(r.app_key for r in page), total) == (expected, len(expected))
        assert search.kept_keys <= 50
    assert list(search.copies) == ["acme"]  # beta's dropped for acme's; huge never copied


async def test_needles_that_no_label_holds_match_nothing(searched, clock):
    keys = Keys(searched.store, 41)
    for label in ("plain", "two words", "日本"):
        await keys.create(label)
    for needle in ("\n", "plain\ntwo", "\ud800", "two\0words", "x" * 200):
        assert await indexed(searched.store, KeyQuery(q=needle)) == ([], 0), repr(needle)
    assert await brute(searched.store, KeyQuery(q="\n")) == ([], 0)


async def test_a_needle_across_the_keys_shared_prefix_is_found_as_in_the_members():
    """The copy keeps the members without the prefix every key shares; a needle is found
    in the members as kept, across the prefix's end, and in the prefix itself (every
    key), exactly as in the whole members, keys read again since included, whether all
    the copy's keys are searched, those of one status, or only some given keys
    (``among``)."""

    labels = ["alpha", "kgk-acme-7q in a label", "beta 7q", "-", "me-7", "zoo zoo"]
    keys = [f"kgk-acme-7Q{i:04X}" for i in range(40)]
    members = {k: f"{labels[i % len(labels)]}\0{k}" for i, k in enumerate(keys)}
    inactive = set(keys[::4]) | set(keys[5:9])
    listed = sorted(members.values())
    copy = AccountCopy.of(listed, "0-0", [INACTIVE_AT if m.partition("\0")[2] in inactive
                                          else 0 for m in listed])
    assert copy.prefix == b"kgk-acme-7Q00"  # the longest every key starts with
    # read again since: one relabelled, one deleted, one new that shares less, one
    # deactivated, one activated
    copy.read_again(keys[3], f"now 7q\0{keys[3]}")
    copy.read_again(keys[4], None)
    copy.read_again("kgk-acme-8Z0001", "other\0kgk-acme-8Z0001", INACTIVE_AT)
    copy.read_again(keys[10], members[keys[10]], INACTIVE_AT)
    copy.read_again(keys[5], members[keys[5]])
    members[keys[3]] = f"now 7q\0{keys[3]}"
    del members[keys[4]]
    members["kgk-acme-8Z0001"] = "other\0kgk-acme-8Z0001"
    inactive |= {"kgk-acme-8Z0001", keys[10]}
    inactive -= {keys[5]}
    needles = ["a", "7q", "-7q", "acme-7q0", "kgk-acme-7q00", "kgk-acme-7q001", "q001",
               "e-7", "me-7", "0001", "kgk", "kgk-acme-8", "7q in", "label", "zz",
               "q00", "other", "now 7q", "001", "-", "zoo", "o"]  # twice in a label
    for needle in needles:
        expected = sorted(k for k, m in members.items() if needle in m.lower())
        for keep, count_all in ((1000, True), (1000, False), (2, True), (2, False)):
            found = copy.matches(needle.encode(), keep, count_all)
            if len(expected) > keep and not count_all:
                assert found is None, needle
                continue
            assert found is not None and found.count == len(expected), (needle, found)
            if len(expected) <= keep:
                assert sorted(found.keys or []) == expected, needle
            else:
                assert found.keys is None, needle
        for status in ("active", "inactive"):
            of_status = sorted(k for k in expected if (k in inactive) == (status == "inactive"))
            for keep in (1000, 2):
                found = copy.matches(needle.encode(), keep, True, Filters(status))
                assert found is not None and found.count == len(of_status), (needle, status)
                assert found.keys is None if len(of_status) > keep else (
                    sorted(found.keys or []) == of_status), (needle, status)
        some = [k for i, k in enumerate(members) if i % 3]
        among = await copy.among(needle.encode(), some)
        assert among is not None and among.keys == [k for k in some if k in expected], needle
        assert among.count == len(among.keys)
    # a key the copy has not seen (made after it, its event not taken in): not judged
    assert await copy.among(b"a", [keys[0], "kgk-acme-7Q9999"]) is None
    assert await copy.among(b"a", [keys[0], "kgk-other-1"]) is None


async def test_the_index_by_key_finds_every_key_when_hashes_meet():
    """300,000 keys: some of their 32-bit hashes meet (about ten pairs); each key of a
    pair is still judged by its own label, not its partner's."""

    rng = random.Random(51)
    rests = sorted({f"{rng.getrandbits(50):013X}" for _ in range(300_000)})
    copy = AccountCopy.of([f"<{i}>\0kgk-acme-{r}" for i, r in enumerate(rests)], "0-0")
    by_hash: dict[int, list[int]] = {}
    for i, rest in enumerate(rests):
        by_hash.setdefault(hash(rest.encode()) & 0xFFFFFFFF, []).append(i)
    pairs = [group for group in by_hash.values() if len(group) > 1]
    assert pairs  # the case under test happens
    for group in pairs:
        for i in group:
            for j in group:
                found = await copy.among(f"<{j}>".encode(), [f"kgk-acme-{rests[i]}"])
                assert found is not None and found.count == (i == j), (i, j)
    assert len(copy.index) == len(rests)
    assert len(AccountCopy.of([], "0-0").index) == 0


async def test_q_with_a_role_held_by_fewer_keys_is_checked_on_its_holders(searched, other,
                                                                          clock):
    """q matching more keys than the script is handed, with a role held by fewer that
    the copy does not tag (only the largest role is tagged here): q is checked on the
    role's holders in the copy (through its index by key), and the pages and totals are
    brute force's, keys changed by another instance since the copy included; a role held
    by more than that is left to the script."""
    store = searched.store
    store.label_search.max_passed = 12
    store.label_search.tagged_roles = 1
    keys = Keys(store, 61)
    await spread(searched, keys, clock, 200)  # 'rare' held by 3 keys, the others by ~50
    asked = [KeyQuery(q=needle, role=role, status=status, sort=sort, page=page, per_page=5)
             for needle in ("a", "e", "kgk-acme-", "-", "9")
             for role in ("rare", "owner", "ghost")
             for status in (None, "inactive")
             for sort in ("creationDate", "label") for page in (1, 2)]
    for before_count in (10**9, 1):  # holders checked after q's matches are counted, before
        store.label_search.holders_before_count = before_count
        for query in asked:
            await assert_same(store, query)
    assert store.label_search.among_searches > 0  # the holders were checked in the copy
    holders = [k for k in keys.made if "rare" in (await store.get_key(ACCOUNT, k)).roles]
    assert len(holders) == 3
    await other.update_key(ACCOUNT, holders[0], label="one, relabelled")
    await other.update_key(ACCOUNT, holders[1], label="one too", roles=["orders-reader"])
    made = Keys(other, 63)
    await made.create("a new one", roles=("rare",))
    for query in [*asked, KeyQuery(q="one", role="rare"), KeyQuery(q="ONE", role="rare")]:
        if query.role == "rare":
            await assert_same(store, query)
    page, total = await indexed(store, KeyQuery(q="one", role="rare", per_page=10))
    assert sorted(page) == sorted([holders[0], made.made[0]]) and total == 2
    used_copy(store, builds=1)


async def test_a_label_changed_since_the_copy_read_it_is_sorted_by_its_label_now(
    searched, monkeypatch
):
    """The matches handed to the listing script carry the folded label the copy knows;
    one that is no longer the key's (changed after the copy took in its events) is read
    again from the key, so a page in label order is brute force's."""
    store = searched.store
    # more matches than max_passed: handed to the script (up to max_passed_filtered), not
    # put in order in this process (nor read from its label order), where the page is
    # that of the copy's last events
    store.label_search.max_passed = 5
    monkeypatch.setattr(search_module, "in_order", lambda *_: None)
    keys = Keys(store, 71)
    for i in range(1, 7):
        await keys.create(f"alpha {i}")
    for i in range(100):  # few matches among many keys: sorted, not walked in label order
        await keys.create(f"beta {i}")
    await assert_same(store, KeyQuery(q="alpha", sort="label", per_page=10))
    copy = store.label_search.copies[ACCOUNT]
    # what a copy holds for a key relabelled between its last events and the script
    copy.read_again(keys.made[2], f"alpha 9 was\0{keys.made[2]}")
    copy.read_again(keys.made[4], f"alpha 0 was\0{keys.made[4]}")
    for desc in (False, True):
        await assert_same(store, KeyQuery(q="alpha", sort="label", descending=desc,
                                          per_page=10))


async def test_q_within_roles_statuses_and_token_dates_is_counted_as_in_the_members():
    """The copy keeps its lines in token score order, tagged with the roles it tags (here
    nine: three tag bytes); q within any status, token date range and tagged role is
    counted and named exactly as in the members, keys read again since included (a role
    gained and lost, a renewal, a deactivation, a delete, a new key holding a role)."""
    rng = random.Random(81)
    roles = [f"role-{i}" for i in range(9)]
    words = ["alpha", "beta", "gamma 7", "Delta", "kgk-acme-q", "zz"]
    model: dict[str, tuple[str, int, frozenset[str]]] = {}  # key -> member, score, roles
    for i in range(600):
        key = f"kgk-acme-{rng.getrandbits(40):010X}"
        date = rng.randrange(0, 400) * DAY_MS
        score = date + (INACTIVE_AT if rng.random() < 0.3 else 0)
        held = frozenset(r for r in roles if rng.random() < 0.25)
        model[key] = (f"{rng.choice(words).lower()} {i}\0{key}", score, held)
    listed = sorted(model.values())
    copy = AccountCopy.of([m for m, _, _ in listed], "0-0", [score for _, score, _ in listed],
                          [sum(1 << roles.index(r) for r in held) for _, _, held in listed],
                          roles)
    assert copy.tag_width == 3 and all(copy.tags(r) for r in roles)
    assert list(copy.scores) == sorted(copy.scores)
    some = rng.sample(sorted(model), 40)
    for i, key in enumerate(some):  # read again: changed in every way a key can change
        member, score, held = model[key]
        if i % 5 == 0:
            model.pop(key)
            copy.read_again(key, None)
            continue
        if i % 5 == 1:
            held = held | {roles[i % 9]}
        elif i % 5 == 2:
            held = frozenset()
        elif i % 5 == 3:
            score = (score + 30 * DAY_MS) % INACTIVE_AT
        else:
            score = score % INACTIVE_AT + INACTIVE_AT
        model[key] = (member, score, held)
        copy.read_again(key, member, score, held)
    new = "kgk-acme-NEW0000001"
    model[new] = (f"gamma new\0{new}", 5 * DAY_MS, frozenset({roles[0]}))
    copy.read_again(new, *model[new])
    ranges = [(None, None), (None, 100 * DAY_MS), (50 * DAY_MS, 200 * DAY_MS),
              (399 * DAY_MS, None), (10, 5)]
    for needle in ("a", "gamma", "7", "1", "q0", "kgk-acme-", "e-", "zz 5", "none"):
        for role in (None, *roles[:4], roles[8]):
            for status in (None, "active", "inactive"):
                for dates in ranges:
                    filters = Filters(status, dates, role)
                    expected = sorted(k for k, (m, score, held) in model.items()
                                      if needle in m.lower() and filters.allow(score, held))
                    for keep in (1000, 3):
                        found = copy.matches(needle.encode(), keep, True, filters)
                        assert found is not None and found.count == len(expected), (
                            needle, filters, found)
                        if len(expected) <= keep:
                            assert sorted(found.keys or []) == expected, (needle, filters)
                        else:
                            assert found.keys is None
                    not_counted = copy.matches(needle.encode(), 3, False, filters)
                    assert (not_counted is None) if len(expected) > 3 else (
                        not_counted is not None and not_counted.count == len(expected))
    # past TAGGED_ROLES roles, the rest are not tagged (their holders checked one by one)
    many = [f"r{i}" for i in range(20)]
    assert [copy.tags(r) for r in many] == [False] * 20
    assert AccountCopy.of([], "0-0", [], [], many).tag_width == 4


async def test_q_with_every_filter_is_counted_in_the_copy_as_brute_force(searched, other,
                                                                          clock):
    """q with a status, a role and a renewal alert level (token dates), more matches
    than are handed over: the copy counts them (the total the script is given) and every
    page is brute force's; another instance's renewals, role changes and deactivations
    are seen by the next search with no new copy."""
    store = searched.store
    store.label_search.max_passed = 2
    keys = Keys(store, 83)
    await spread(searched, keys, clock, 180)
    now_ms = int(clock() * 1000)
    ranges = [None, *(alert_range(level, 3, now_ms) for level in ALERTS)]
    asked = [KeyQuery(q=needle, role=role, status=status, token_created=dates, sort=sort,
                      descending=desc, page=page, per_page=4)
             for needle in ("a", "e", "kgk", "9")
             for role in (None, "owner", "orders-reader")
             for status in (None, "active", "inactive")
             for dates in ranges
             for sort, desc in (("creationDate", True), ("creationDateToken", False),
                                ("label", False))
             for page in (1, 3)]

    async def check(queries: list[KeyQuery]) -> None:
        for query in queries:
            await assert_same(store, query)
            found = await store.label_search.matches(
                ACCOUNT, query.q.casefold(), True, None, (0, 4),
                Filters(query.status, query.token_created or (None, None), query.role))
            _, total = await brute(store, query)
            assert found is not None and found.count == total, query
            # all of them, or in order the first page's (the newest, read from the end)
            assert found.members is None or len(found.members) == total or (
                found.ordered and len(found.members) == 4)

    await check(asked)
    used_copy(store, builds=1)
    # another instance renews tokens (now, later then finish), changes roles and status
    renewed = keys.made[:12]
    for i, app_key in enumerate(renewed):
        clock.advance(DAY_MS / 1000)
        if i % 3 == 0:
            await other.renew_token(ACCOUNT, app_key, "f" * 64, keep_old=False, actor=CLI)
        elif i % 3 == 1:
            await other.renew_token(ACCOUNT, app_key, "f" * 64, keep_old=True, actor=CLI)
            await other.end_renewal(ACCOUNT, app_key, finish=True, actor=CLI)
        else:
            await other.update_key(ACCOUNT, app_key, roles=["orders-reader"],
                                   status="inactive" if i % 2 else "active")
    await check([q for q in asked if q.page == 1])
    used_copy(store, builds=1)


@pytest.mark.parametrize("index", ["tokens", "created"])
async def test_keys_shifted_while_the_copy_is_read_are_placed_as_they_are(searched, other,
                                                                         clock, index):
    """The token date index and the creation date index are read by ranks (at once), a
    chunk at a time: another instance deletes the first keys in one's order between two
    of its chunks, which shifts keys that did not change past the next chunk's start. They are found
    missing and read again, so every count and page is still brute force's, from one
    copy."""
    store = searched.store
    store.label_search.read_chunk = 7
    store.label_search.max_passed = 2
    keys = Keys(store, 91)
    await spread(searched, keys, clock, 60)
    name = store.names.account(ACCOUNT, index)
    in_order = [k for k, _ in await PackedIndex(store.scripts, name).range(0, 10**9)]

    async def shift() -> None:
        for app_key in in_order[:4]:
            await other.delete_key(ACCOUNT, app_key, actor=CLI)

    # before the index's second chunk
    shifted = Before(store, "packed_index", shift, nth=2,
                     counted=lambda keys, args: keys == [name] and args[0] == "range")
    now_ms = int(clock() * 1000)
    for needle in ("a", "e", "kgk"):
        for role in (None, "orders-reader"):
            for dates in (None, alert_range("none", 3, now_ms)):
                store.label_search.max_passed = 2
                await assert_same(store, KeyQuery(q=needle, role=role, token_created=dates,
                                                  per_page=5))
                # every match handed over, in creation order from the copy's dates
                store.label_search.max_passed = 1000
                await assert_same(store, KeyQuery(q=needle, role=role, token_created=dates,
                                                  sort="creationDate", descending=False,
                                                  per_page=50))
    assert shifted.fired
    used_copy(store, builds=1)


async def twelve_keys_searched_from_six(gateway: Gateway, seed: int) -> tuple[Store, LabelSearch]:
    """Twelve keys labelled ``key 0`` … ``key 11`` in an account searched in a copy from
    six keys; the store and its search."""
    store = gateway.store
    store.label_search.min_keys = 6
    keys = Keys(store, seed)
    for i in range(12):
        await keys.create(f"key {i}")
    return store, store.label_search


def created_range(keys: list[str], args: list[Any], account: str | None) -> bool:
    """Whether a call of the packed_index script reads the creation index by ranks (of
    ``account``, or of any), as a copy is made."""
    return (keys[0].endswith(":created") and args[0] == "range"
            and (account is None or account in keys[0]))


class HeldBuild:
    """Holds a copy being made at its first read by ranks until released."""

    def __init__(self, store: Store, account: str | None = None):
        """``account``: held at the first read of that account's copy only."""
        self.reached = asyncio.Event()
        self.released = asyncio.Event()
        self.before = Before(store, "packed_index", self.hold,
                             counted=lambda keys, args: created_range(keys, args, account))

    async def hold(self) -> None:
        self.reached.set()
        await self.released.wait()


async def test_a_listing_makes_the_copy_ahead_of_the_search(gateway, clock):
    """A listing that shows the account holds at least min_keys keys starts making its
    copy in the background, without waiting for it; however many listings ask, one copy
    is made; the search that follows finds it made."""
    store = gateway.store
    search = store.label_search
    search.min_keys = 6
    keys = Keys(store, 101)
    for i in range(5):
        await keys.create(f"early {i}")
    await indexed(store, KeyQuery(per_page=10))
    assert not search.warming and not search.copies  # 5 keys: searched in Redis
    for i in range(5):
        await keys.create(f"later {i}")
    held = HeldBuild(store)
    listed = await asyncio.wait_for(asyncio.gather(*(
        indexed(store, KeyQuery(per_page=3)) for _ in range(20))), 10)
    # every listing answered while the copy is still being made
    assert {total for _, total in listed} == {10}
    await asyncio.wait_for(held.reached.wait(), 10)
    assert list(search.warming) == [ACCOUNT] and search.builds == 0
    # one task for twenty listings (a flood of listings holds no more)
    assert [t.get_coro().__name__ for t in asyncio.all_tasks()].count("_warm") == 1
    # a filtered listing of fewer keys than min_keys asks for nothing more either
    await asyncio.wait_for(indexed(store, KeyQuery(q="early", per_page=3)), 10)
    held.released.set()
    await asyncio.wait_for(search.warming[ACCOUNT], 10)
    used_copy(store, builds=1)
    for needle in ("later", "early", "e", "zzz"):
        await assert_same(store, KeyQuery(q=needle, per_page=100))
    used_copy(store, builds=1)
    await indexed(store, KeyQuery(per_page=3))
    assert not search.warming  # kept: not made again


async def test_a_search_while_the_copy_is_made_is_answered_in_redis_or_waits(gateway, clock):
    """While the account's copy is being made, a search in a small account is answered
    by the script's pass (without waiting); in a larger one it waits for the copy; in
    either, its answer is brute force's."""
    store, search = await twelve_keys_searched_from_six(gateway, 103)
    held = HeldBuild(store)
    await indexed(store, KeyQuery(per_page=3))
    # at once, before the copy being made has its lock: answered in Redis, not held
    await asyncio.wait_for(assert_same(store, KeyQuery(q="key 1", per_page=100)), 10)
    await asyncio.wait_for(held.reached.wait(), 10)
    await asyncio.wait_for(assert_same(store, KeyQuery(q="key 2", per_page=100)), 10)
    assert search.builds == 0 and ACCOUNT in search.warming
    search.in_redis_while_made = 11  # the account now counts as large: the search waits
    waiting = asyncio.ensure_future(indexed(store, KeyQuery(q="key 1", per_page=100)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()
    held.released.set()
    assert await asyncio.wait_for(waiting, 10) == await brute(store, KeyQuery(q="key 1",
                                                                              per_page=100))
    used_copy(store, builds=1)


async def test_a_store_closed_while_a_copy_is_made_ahead_stops_it(gateway, clock, caplog):
    """Closing the store cancels the copy being made ahead, quietly: no error logged, no
    task left running."""
    store = Store.from_url(gateway.settings.store_url, gateway.settings.store_prefix,
                           gateway.store.clock)
    store.label_search.min_keys = 2
    keys = Keys(store, 105)
    for i in range(3):
        await keys.create(f"key {i}")
    held = HeldBuild(store)
    await indexed(store, KeyQuery(per_page=3))
    await asyncio.wait_for(held.reached.wait(), 10)
    task = store.label_search.warming[ACCOUNT]
    await asyncio.wait_for(store.close(), 10)
    assert task.cancelled() and not store.label_search.warming
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


async def test_a_listing_never_drops_another_accounts_copy(gateway, clock):
    """A copy is made ahead only where it fits beside those kept: listings that alternate
    between accounts too large to be kept together make no copy again and again (each is
    ~8 s of CPU at 1,000,000 keys); a search still makes its own account's copy, dropping
    the least recently searched one."""
    store = gateway.store
    search = store.label_search
    search.min_keys, search.max_keys = 5, 15
    await labelled_keys(store, acme=10, beta=10)

    async def listed(account: str) -> None:
        assert (await store.list_keys(account, KeyQuery(per_page=3)))[1] == 10
        if account in search.warming:
            await asyncio.wait_for(search.warming[account], 10)

    await listed("acme")
    assert list(search.copies) == ["acme"] and search.builds == 1
    for account in ("beta", "acme", "beta", "acme"):
        await listed(account)
    assert list(search.copies) == ["acme"] and search.builds == 1
    # a search makes room for its account's copy (in the background: answered in Redis)
    page, total = await store.list_keys("beta", KeyQuery(q="label 3", per_page=10))
    assert ([r.app_key for r in page], total) == (["kgk-beta-0000000003"], 1)
    await asyncio.wait_for(search.warming["beta"], 10)
    assert list(search.copies) == ["beta"] and search.builds == 2
    await listed("acme")
    assert list(search.copies) == ["beta"] and search.builds == 2


async def test_one_copy_is_made_at_a_time(gateway, clock):
    """Making a copy holds several times its size for the while, so a process makes one
    at a time: a search whose account's copy must be made too is answered in Redis in a
    small account, else waits; either way, its copy's reads start only once the other
    copy is made."""
    store = gateway.store
    search = store.label_search
    search.min_keys, search.max_keys = 5, 100
    await labelled_keys(store, acme=10, beta=10)
    beta = {"kgk-beta-0000000001"}
    held = HeldBuild(store, "acme")
    beta_reads = Before(store, "packed_index", asyncio.sleep, nth=0,
                        counted=lambda keys, args: created_range(keys, args, "beta"))
    await store.list_keys("acme", KeyQuery(per_page=3))
    await asyncio.wait_for(held.reached.wait(), 10)
    page, total = await asyncio.wait_for(
        store.list_keys("beta", KeyQuery(q="label 1", per_page=10)), 10)
    assert ({r.app_key for r in page}, total) == (beta, 1)  # in Redis: not held
    search.in_redis_while_made = 5  # beta now counts as large: its search waits
    waiting = asyncio.ensure_future(store.list_keys("beta", KeyQuery(q="label 1",
                                                                     per_page=10)))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not waiting.done() and beta_reads.calls == 0 and search.builds == 0
    held.released.set()
    page, total = await asyncio.wait_for(waiting, 10)
    assert ({r.app_key for r in page}, total) == (beta, 1)
    await asyncio.wait_for(search.warming.get("acme") or asyncio.sleep(0), 10)
    assert beta_reads.calls > 0 and search.builds == 2 and set(search.copies) == {"acme",
                                                                                  "beta"}


async def test_a_copy_waiting_to_be_made_ahead_is_not_made_where_it_no_longer_fits(gateway,
                                                                                   clock):
    """Two accounts listed at once, whose copies do not fit together: the second copy,
    which waited for the first to be made, is not made ahead beside it (nor drops it)."""
    store = gateway.store
    search = store.label_search
    search.min_keys, search.max_keys = 5, 15
    await labelled_keys(store, acme=10, beta=10)
    held = HeldBuild(store, "acme")
    await store.list_keys("acme", KeyQuery(per_page=3))
    await asyncio.wait_for(held.reached.wait(), 10)
    await store.list_keys("beta", KeyQuery(per_page=3))
    assert set(search.warming) == {"acme", "beta"}
    held.released.set()
    await asyncio.wait_for(asyncio.gather(*search.warming.values()), 10)
    assert list(search.copies) == ["acme"] and search.builds == 1


async def test_a_first_search_is_answered_in_redis_while_its_copy_is_made(gateway, clock):
    """A search that finds no copy (no listing came first: an API client), in an account
    small enough for the script's pass, is answered by that pass at once, and the copy is
    made in the background for the searches after it."""
    store, search = await twelve_keys_searched_from_six(gateway, 107)
    held = HeldBuild(store)
    await asyncio.wait_for(assert_same(store, KeyQuery(q="key 1", per_page=100)), 10)
    await asyncio.wait_for(held.reached.wait(), 10)
    assert list(search.warming) == [ACCOUNT] and search.builds == 0
    await asyncio.wait_for(assert_same(store, KeyQuery(q="key 2", per_page=100)), 10)
    held.released.set()
    await asyncio.wait_for(search.warming[ACCOUNT], 10)
    used_copy(store, builds=1)
    await assert_same(store, KeyQuery(q="key 1", per_page=100))
    used_copy(store, builds=1)
