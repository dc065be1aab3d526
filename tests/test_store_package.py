"""The store as a package: its Lua scripts are files that load on the real Redis, the
audit step and the invalidation notice are written once (the prelude), and every refused
change raises its own exception and writes nothing — no record, no audit event, no
notice."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import orjson
import pytest
from conftest import on_one_server_and_a_cluster

from gateway.context import Gateway
from gateway.credentials import link_id
from gateway.store import (
    CLI_ACTOR,
    GrantExists,
    KeyNameTaken,
    KeyNotFound,
    NoRenewalPending,
    OwnKey,
    RenewalPending,
    RenewalRefused,
    StoreRefusal,
    TokenLinkPending,
)
from gateway.store.core import FOLLOWUP_CLEARED_MARKER_MS
from gateway.store.lua import SCRIPTS, source
from gateway.store.names import glob_escape

# the store, cache and revocation behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

SCRIPT_DIR = files("gateway.store") / "scripts"
# the scripts run through StoreCore.change: they take the shared header
KEY_CHANGES = {"create_key", "update_key", "delete_key", "renew_token", "end_renewal"}
GRANT_CHANGES = {"add_grant", "update_grant", "remove_grant"}
CHANGES = KEY_CHANGES | GRANT_CHANGES


def lua(name: str) -> str:
    """A script file without its comments."""
    text = (SCRIPT_DIR / f"{name}.lua").read_text(encoding="utf-8")
    return re.sub(r"--[^\n]*", "", text)


def lua_files() -> set[str]:
    return {p.name.removesuffix(".lua") for p in SCRIPT_DIR.iterdir() if p.name.endswith(".lua")}


def test_every_lua_file_is_a_registered_script_or_a_fragment_one_uses():
    fragments = {name for needed in SCRIPTS.values() for name in needed}
    assert lua_files() == set(SCRIPTS) | fragments
    assert set(SCRIPTS) >= CHANGES


def test_the_audit_step_and_the_notice_of_a_change_are_written_once():
    """XADD only in the prelude's audit() (and in the last-use script, to the moves
    stream, which is no audit stream: its second name); a change of a key hash
    publishes only through the prelude's committed(), which audits first, or (a grant,
    whose audit stream is in the granting account's slot) through granted(), which
    records the audit event as the follow-up that apply_followup.lua writes with
    audit()."""
    for name in lua_files() - {"prelude", "record_last_used"}:
        assert "XADD" not in lua(name), name
    assert re.findall(r"XADD', (\w+\[\d\])", lua("record_last_used")) == ["KEYS[2]"]
    for name in CHANGES:
        assert "PUBLISH" not in lua(name), name
    for name in KEY_CHANGES:
        assert "committed(" in lua(name), name
    for name in GRANT_CHANGES:
        assert "granted(" in lua(name), name
    assert "audit(" in lua("apply_followup")
    assert lua("prelude").count("XADD") == 1
    assert lua("prelude").count("PUBLISH") == lua("grant_snapshot").count("PUBLISH") == 1


async def test_every_script_loads_on_the_store_as_registered(gateway: Gateway):
    """Each script's text (its fragments, then its file) compiles on the server, under
    the digest the client runs it by."""
    scripts = gateway.store.scripts
    for name in SCRIPTS:
        digest = await gateway.store.redis.script_load(source(name))
        assert digest == getattr(scripts, name).sha, name


@contextlib.asynccontextmanager
async def nothing_written(gateway: Gateway, account: str, *app_keys: str) -> AsyncIterator[None]:
    """The keys' hashes, the account's indexes and audit stream are the same after the
    block, and nothing was published on the invalidation channel meanwhile."""
    store = gateway.store
    r = store.redis

    async def state() -> tuple[Any, ...]:
        hashes = [await r.hgetall(store.names.key(k)) for k in app_keys]
        return (hashes, await r.xlen(store.names.account(account, "audit")),
                await r.zrange(store.names.account(account, "keys"), 0, -1),
                await r.zrange(store.names.account(account, "ext"), 0, -1))

    before = await state()
    pubsub = r.pubsub()
    await pubsub.subscribe(store.channel)
    try:
        assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
        yield
        # a notice published by the block has reached us by the time PING's answer does
        await pubsub.ping()
        heard = []
        while True:
            message = await pubsub.get_message(timeout=2)
            assert message is not None, "PING was not answered"
            if message["type"] != "message":  # the answer to PING
                break
            heard.append(message["data"])
        assert heard == []
    finally:
        await pubsub.aclose()
    assert await state() == before


async def test_nothing_written_sees_a_change_and_its_notice(gateway: Gateway):
    """The check the refusal tests rely on fails on a change, and on a notice alone."""
    key = await gateway.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
    with pytest.raises(AssertionError):
        async with nothing_written(gateway, "acme", key.record.app_key):
            await gateway.store.update_key("acme", key.record.app_key, actor=CLI_ACTOR,
                                           label="changed")
    with pytest.raises(AssertionError):
        async with nothing_written(gateway, "acme", key.record.app_key):
            await gateway.store.redis.publish(gateway.store.channel, "anything")


async def test_grant_refusals_are_typed_and_write_nothing(gateway: Gateway):
    own = await gateway.lifecycle.create("acme", "own", ["owner"], CLI_ACTOR)
    partner = await gateway.lifecycle.create("beta", "partner", ["orders-reader"], CLI_ACTOR)
    gone = await gateway.lifecycle.create("beta", "gone", ["orders-reader"], CLI_ACTOR)
    added = await gateway.store.add_grant("acme", partner.record.app_key, "p",
                                          ["orders-reader"], CLI_ACTOR)
    assert (added.owner, added.label, added.roles, added.status) == (
        "beta", "p", ("orders-reader",), "active")
    assert added == await gateway.store.get_grant("acme", partner.record.app_key)
    assert await gateway.store.delete_key("beta", gone.record.app_key, actor=CLI_ACTOR)
    never = gateway.fmt.new_key("beta")
    cases = [(own.record.app_key, OwnKey), (partner.record.app_key, GrantExists),
             (gone.record.app_key, KeyNotFound), (never, KeyNotFound)]
    for app_key, refusal in cases:
        async with nothing_written(gateway, "acme", app_key):
            with pytest.raises(refusal) as refused:
                await gateway.store.add_grant("acme", app_key, "again", ["owner"], CLI_ACTOR)
        assert isinstance(refused.value, StoreRefusal)


async def test_renewal_refusals_are_typed_keep_their_reason_and_write_nothing(
    gateway: Gateway,
):
    pending = await gateway.lifecycle.create("acme", "pending", ["orders-reader"], CLI_ACTOR)
    linked = await gateway.lifecycle.create("acme", "linked", ["orders-reader"], CLI_ACTOR,
                                            delivery="link")
    idle = await gateway.lifecycle.create("acme", "idle", ["orders-reader"], CLI_ACTOR)
    app_key = pending.record.app_key
    assert await gateway.lifecycle.renew("acme", app_key, CLI_ACTOR, keep_old=True)
    for key, refusal, reason in ((app_key, RenewalPending, "pending"),
                                 (linked.record.app_key, TokenLinkPending, "link")):
        async with nothing_written(gateway, "acme", key):
            with pytest.raises(refusal) as refused:
                await gateway.lifecycle.renew("acme", key, CLI_ACTOR, keep_old=False)
        assert isinstance(refused.value, RenewalRefused) and refused.value.reason == reason
    assert linked.link_secret is not None
    assert await gateway.store.link_valid(link_id(linked.link_secret))  # still unopened
    for finish in (True, False):
        async with nothing_written(gateway, "acme", idle.record.app_key):
            with pytest.raises(NoRenewalPending):
                await gateway.store.end_renewal("acme", idle.record.app_key, finish=finish,
                                                actor=CLI_ACTOR)
    # absence is not a refusal
    missing = gateway.fmt.new_key("acme")
    assert await gateway.store.end_renewal("acme", missing, finish=True, actor=CLI_ACTOR) is None
    assert await gateway.lifecycle.renew("acme", missing, CLI_ACTOR) is None


async def test_a_key_name_is_never_issued_twice_and_the_refusal_writes_nothing(
    gateway: Gateway,
):
    live = await gateway.lifecycle.create("acme", "live", ["owner"], CLI_ACTOR)
    dead = await gateway.lifecycle.create("acme", "dead", ["orders-reader"], CLI_ACTOR)
    assert await gateway.store.delete_key("acme", dead.record.app_key, actor=CLI_ACTOR)
    for app_key in (live.record.app_key, dead.record.app_key):
        async with nothing_written(gateway, "acme", app_key):
            with pytest.raises(KeyNameTaken):
                await gateway.store.create_key(app_key, "acme", "again", ["owner"],
                                               gateway.hasher.digest("another token"),
                                               CLI_ACTOR)
    assert (await gateway.store.get_key("acme", live.record.app_key)).label == "live"


async def test_concurrent_grants_of_one_key_one_wins_the_others_are_refused(gateway: Gateway):
    partner = await gateway.lifecycle.create("beta", "partner", ["orders-reader"], CLI_ACTOR)
    outcomes = await asyncio.gather(
        *(gateway.store.add_grant("acme", partner.record.app_key, f"p{i}", ["orders-reader"],
                                  CLI_ACTOR) for i in range(20)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 19 and all(isinstance(o, GrantExists) for o in refused)
    events, _ = await gateway.store.audit_events(
        "acme", accept=lambda e: e.action == "external-key.add")
    assert len(events) == 1


# -- a grant change interrupted between its two slots ------------------------------------
async def _grant_audit(gateway: Gateway, account: str) -> list[tuple[str, Any, Any]]:
    entries = await gateway.store.redis.xrange(gateway.store.names.account(account, "audit"))
    return [(f["action"], orjson.loads(f["before"]), orjson.loads(f["after"]))
            for _, f in entries if f["action"].startswith("external-key.")]


async def _crash_after_the_key_slot(gateway: Gateway, change: str, app_key: str,
                                    args: list[Any]) -> None:
    """What a keygate killed between the two steps of a grant change leaves: the change
    in the key's hash, its follow-up not applied (its id unique, as every change's)."""
    store = gateway.store
    await store.change(getattr(store.scripts, change + "_grant"), "acme", app_key,
                       "external-key." + change, CLI_ACTOR, keys=[store.names.key(app_key)],
                       args=[*args, f"crashed-{change}-{uuid.uuid4().hex[:8]}"])


async def _leftovers(gateway: Gateway, app_key: str) -> tuple[list[str], list[str]]:
    """Follow-ups still in the key's hash, and done markers kept longer than a cleared
    follow-up's (a marker outlives the clearing a little, for a slow replay)."""
    store = gateway.store
    fields = [f for f in await store.redis.hkeys(store.names.key(app_key))
              if f.startswith("fu:")]
    markers = [n async for n in store.redis.scan_iter(
        match=glob_escape(store.names.account("acme", "done:")) + "*")
        if await store.redis.pttl(n) > FOLLOWUP_CLEARED_MARKER_MS]
    return fields, markers


async def test_an_interrupted_grant_works_at_once_and_its_follow_up_lands_exactly_once(
    gateway: Gateway,
):
    """The grant authorizes as soon as the key's slot has it; the index entry and the
    audit event follow before the next change of that grant, each once, in order."""
    partner = await gateway.lifecycle.create("beta", "partner", ["orders-reader"], CLI_ACTOR)
    app_key, store = partner.record.app_key, gateway.store
    grant = orjson.dumps({"roles": ["orders-reader"], "status": "active", "label": "p",
                          "added": store.now_ms()}).decode()
    await _crash_after_the_key_slot(gateway, "add", app_key,
                                    [grant, store.now_ms()])
    looked_up = await store.auth_lookup(app_key, "acme")
    assert looked_up.grant is not None and looked_up.grant.roles == ("orders-reader",)
    assert await store.all_grants("acme") == [] and await _grant_audit(gateway, "acme") == []
    assert (await _leftovers(gateway, app_key))[0] == ["fu:acme"]

    # the next change of the grant applies the pending follow-up first
    await store.update_grant("acme", app_key, {"label": "renamed"}, CLI_ACTOR)
    assert [g.label for g in await store.all_grants("acme")] == ["renamed"]
    assert [a for a, _, _ in await _grant_audit(gateway, "acme")] == [
        "external-key.add", "external-key.update"]
    assert await _leftovers(gateway, app_key) == ([], [])


async def test_a_follow_up_applied_but_not_cleared_is_not_applied_twice(gateway: Gateway):
    partner = await gateway.lifecycle.create("beta", "partner", ["orders-reader"], CLI_ACTOR)
    app_key, store = partner.record.app_key, gateway.store
    await store.add_grant("acme", app_key, "p", ["orders-reader"], CLI_ACTOR)
    await _crash_after_the_key_slot(gateway, "remove", app_key, [])
    # the crash came after the follow-up was applied in the granting account's slot
    raw = await store.redis.hget(store.names.key(app_key), "fu:acme")
    applied = await store.scripts.apply_followup(
        keys=[store.names.account("acme", "ext"), store.names.account("acme", "audit"),
              store.names.account("acme", "done:" + orjson.loads(raw)["id"])],
        args=[raw, app_key, store.audit_max_events, 60_000])
    assert applied == 1
    assert await store.finish_followups(app_key) == 0  # replayed: a no-op, then cleared
    assert [a for a, _, _ in await _grant_audit(gateway, "acme")] == [
        "external-key.add", "external-key.remove"]
    assert await store.all_grants("acme") == []
    assert await _leftovers(gateway, app_key) == ([], [])


async def test_migrate_and_delete_finish_the_follow_ups_a_crash_left(gateway: Gateway):
    store = gateway.store
    grant = orjson.dumps({"roles": ["orders-reader"], "status": "active", "label": "p",
                          "added": store.now_ms()}).decode()
    first = await gateway.lifecycle.create("beta", "first", ["orders-reader"], CLI_ACTOR)
    second = await gateway.lifecycle.create("beta", "second", ["orders-reader"], CLI_ACTOR)
    for key in (first, second):
        await _crash_after_the_key_slot(gateway, "add",
                                        key.record.app_key, [grant, store.now_ms()])
    await store.migrate()
    assert await _leftovers(gateway, first.record.app_key) == ([], [])
    assert len(await store.all_grants("acme")) == 2
    await _crash_after_the_key_slot(gateway, "remove",
                                    second.record.app_key, [])
    assert await store.delete_key("beta", second.record.app_key, actor=CLI_ACTOR)
    assert [a for a, _, _ in await _grant_audit(gateway, "acme")] == [
        "external-key.add", "external-key.add", "external-key.remove"]
    assert [g.app_key for g in await store.all_grants("acme")] == [first.record.app_key]
