"""An account's change history cannot be evicted by others' requests: change events and
access events are kept and capped apart, and listed together, newest first."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from conftest import on_one_server_and_a_cluster

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.store import ACCESS_ID_PREFIX, CLI_ACTOR, Actor
from gateway.store.records import AUDIT_FIELDS

# the store, audit and export behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

AUDIT = "/api/v1/accounts/acme/audit"


@pytest.fixture
async def small_caps(make_settings, clock, aiohttp_client) -> Any:
    gw = build_gateway(make_settings(audit_max_events=1000, audit_max_access_events=10),
                       clock=clock)
    gw.start()
    client = await aiohttp_client(build_management_app(gw))
    issued = await gw.lifecycle.create("acme", "admin", ["user-admin-restricted"], CLI_ACTOR)
    headers = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
    yield gw, client, headers
    await gw.close()


async def listing(client: Any, headers: dict[str, str], query: str = "") -> dict[str, Any]:
    response = await client.get(f"{AUDIT}?{query}", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_denials_by_other_accounts_keys_never_trim_change_events(small_caps, make_key):
    """The attack from the issue: 70 keys of another account, one denied request each,
    used to push all of acme's key.create events out of its capped stream."""
    gw, client, headers = small_caps
    created = [await gw.lifecycle.create("acme", f"k{i}", ["orders-reader"], CLI_ACTOR)
               for i in range(5)]
    for i in range(70):
        outsider = await gw.lifecycle.create("beta", f"o{i}", ["orders-reader"], CLI_ACTOR)
        headers_o = {"X-API-AppKey": outsider.record.app_key, "X-API-AppToken": outsider.token}
        with pytest.raises(Exception):  # noqa: B017 - 403 no_grant, sampled into acme's log
            await gw.pipeline.check(headers_o, "acme", "orders", "read", client="")
    await gw.denials.drain()
    access = gw.store.names.account("acme", "access")
    assert await gw.store.redis.xlen(access) <= 10 + 100  # MAXLEN ~
    items = (await listing(client, headers, "limit=500&action=key.create"))["items"]
    targets = {e["target"] for e in items}
    assert {c.record.app_key for c in created} <= targets


async def test_changes_and_access_events_are_listed_together_newest_first(small_caps):
    gw, client, headers = small_caps
    actor = Actor("kgk-acme-SOMEONE000")
    # Redis numbers stream entries by its own clock in milliseconds, per stream: events of
    # the two streams within one millisecond may list in either order, so space them
    for i in range(6):
        await asyncio.sleep(0.002)
        await gw.store.append_access_event("acme", actor, "access.denied", "orders", {"n": i})
        await asyncio.sleep(0.002)
        await gw.store.update_key("acme", headers["X-API-AppKey"], label=f"l{i}")
    everything = (await listing(client, headers, "limit=500"))["items"]
    kinds = [e["action"] for e in everything[:12]]
    assert kinds == ["key.update", "access.denied"] * 6
    access_ids = [e["id"] for e in everything if e["action"] == "access.denied"]
    assert all(i.startswith(ACCESS_ID_PREFIX) for i in access_ids)
    # paging through both streams with the cursor visits every event once, in order
    seen, cursor = [], None
    while True:
        page = await listing(client, headers, "limit=5" + (f"&cursor={cursor}" if cursor else ""))
        seen += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
        assert cursor == page["items"][-1]["id"]
    assert [e["id"] for e in seen] == [e["id"] for e in everything]


async def test_equal_ids_in_both_streams_are_each_listed_once(small_caps):
    """Stream ids are per stream: the same id can name a change and an access event."""
    gw, client, headers = small_caps
    for stream in ("audit", "access"):
        await gw.store.redis.xadd(gw.store.names.account("acme", stream),
                                  {"event": '{"action": "x.' + stream + '"}'},
                                  id="9999999999999-0")
    ids = []
    cursor = None
    while True:
        page = await listing(client, headers, "limit=1" + (f"&cursor={cursor}" if cursor else ""))
        ids += [e["id"] for e in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert ids[:2] == ["9999999999999-0", ACCESS_ID_PREFIX + "9999999999999-0"]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("cursor", [
    "1-99999999999999999999999", "99999999999999999999999-1", "18446744073709551616-0",
    "a1-99999999999999999999999", "1-x", "a", "a-", "-1", "1--1", "１-1",
])
async def test_a_cursor_beyond_a_stream_id_is_a_400_not_a_500(small_caps, cursor):
    _, client, headers = small_caps
    response = await client.get(f"{AUDIT}?cursor={cursor}", headers=headers)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "bad_query"


@pytest.mark.parametrize("cursor", ["0-0", "a0-0", "00-000"])
async def test_the_smallest_stream_id_as_a_cursor_is_an_empty_page(small_caps, cursor):
    """Nothing is older than 0-0: an empty last page (Redis refuses ``(0-0`` as the
    exclusive bound, which was a 500)."""
    _, client, headers = small_caps
    assert await listing(client, headers, f"cursor={cursor}") == {"items": [], "next": None}


async def test_the_largest_stream_id_is_a_valid_cursor(small_caps):
    _, client, headers = small_caps
    top = "18446744073709551615-18446744073709551615"
    for cursor in (top, ACCESS_ID_PREFIX + top):
        page = await listing(client, headers, f"cursor={cursor}")
        assert page["items"]  # everything is older than the largest id


async def test_events_are_stored_field_by_field_and_an_older_layout_still_reads(small_caps):
    """Every entry holds the same fields in the same order (so Redis keeps their names
    once per stream node: no account, which the stream's name says, and no JSON wrapper
    in each event), and an event an older keygate wrote (one JSON field, ``event``) is
    listed exactly as before, beside the new ones."""
    gw, client, headers = small_caps
    made = await gw.lifecycle.create("acme", "new one", ["orders-reader"],
                                     Actor("cli", "req-new"))
    stream = gw.store.names.account("acme", "audit")
    (_, fields), = await gw.store.redis.xrevrange(stream, count=1)
    assert tuple(fields) == AUDIT_FIELDS
    assert fields["action"] == "key.create" and fields["target"] == made.record.app_key
    assert fields["requestId"] == "req-new" and "acme" not in fields.values()
    old = {"time": 1700000000123, "account": "acme", "actor": "cli", "action": "key.update",
           "target": made.record.app_key, "requestId": "req-old"}
    await gw.store.redis.xadd(stream, {"event": orjson.dumps(old).decode(),
                                       "before": '{"label":"a"}', "after": '{"label":"b"}'})
    # newest first: the older layout's entry was appended last
    older, newer = (await listing(client, headers, "limit=2"))["items"]
    same = ("account", "actor", "action", "target", "requestId")
    assert {k: older[k] for k in same} == {k: old[k] for k in same}
    assert older["time"] == "2023-11-14T22:13:20.123Z"
    assert (older["before"], older["after"]) == ({"label": "a"}, {"label": "b"})
    assert {k: newer[k] for k in same} == {
        "account": "acme", "actor": "cli", "action": "key.create",
        "target": made.record.app_key, "requestId": "req-new"}
    assert newer["time"] == datetime.fromtimestamp(
        int(fields["time"]) / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_a_creation_event_is_stored_without_what_every_new_key_has(small_caps):
    """A creation event leaves out the status active and a token issued at the event's
    time, and keeps its label and roles as an array (some 70 bytes of each key's
    memory); the audit log shows them as ever. An
    event that holds them (written before, or a token issued at another time) is shown
    as written."""
    gw, client, headers = small_caps
    made = await gw.lifecycle.create("acme", "lean", ["orders-reader"], Actor("cli", ""))
    stream = gw.store.names.account("acme", "audit")
    (_, fields), = await gw.store.redis.xrevrange(stream, count=1)
    # its label and roles, nothing before
    assert (fields["before"], orjson.loads(fields["after"])) == ("", ["lean", "orders-reader"])
    older = dict(fields, time=str(int(fields["time"]) - 5), after=orjson.dumps(
        {"label": "old", "roles": [], "status": "inactive",
         "creationDateToken": int(fields["time"]) - 7}).decode())
    await gw.store.redis.xadd(stream, older)
    # newest first: the entry written as an older keygate did was appended last
    as_written, lean = (await listing(client, headers, "limit=2&action=key.create"))["items"]
    assert lean["after"] == {"label": "lean", "roles": ["orders-reader"], "status": "active",
                               "creationDateToken": made.record.token_created}
    assert made.record.token_created == int(fields["time"])
    assert as_written["after"] == {"label": "old", "roles": [], "status": "inactive",
                                "creationDateToken": int(fields["time"]) - 7}


async def test_a_follow_up_written_before_the_upgrade_is_audited_as_written(small_caps):
    """A grant's follow-up that an older keygate left pending (a crash between its two
    steps) carries the older layout's event header: applied, it is audited in that layout,
    and listed."""
    gw, client, headers = small_caps
    made = await gw.lifecycle.create("acme", "granted", ["orders-reader"], CLI_ACTOR)
    old = {"time": 1700000000456, "account": "acme", "actor": "cli",
           "action": "external-key.add", "target": made.record.app_key, "requestId": ""}
    followup = orjson.dumps({"id": "f-1", "index": "none", "score": 0,
                             "event": orjson.dumps(old).decode(), "before": {},
                             "after": {"roles": ["orders-reader"]}}).decode()
    assert await gw.store.apply_followup(made.record.app_key, "acme", followup) == 1
    (item,) = (await listing(client, headers, "action=external-key.add"))["items"]
    same = ("account", "actor", "action", "target", "requestId")
    assert {k: item[k] for k in same} == {k: old[k] for k in same}
    assert item["time"] == "2023-11-14T22:13:20.456Z"
    assert item["after"] == {"roles": ["orders-reader"]}
