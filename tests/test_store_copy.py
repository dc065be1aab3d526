"""``keygate store copy``: a store copied from one server into a real Redis Cluster (and
back) serves the same keys, grants, links, settings and audit — renamed for the
target's layout, TTLs kept — and a copy never writes into a store that holds data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import TEST_SECRET, Ran
from ports import free_port

from gateway.app import build_gateway
from gateway.context import Gateway
from gateway.credentials import link_id
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR
from gateway.store.copy import TargetNotEmpty, copy_store
from gateway.store.names import glob_escape


def _settings(url: str, prefix: str) -> Any:
    return load_settings(env={"KEYGATE_STORE_URL": url, "KEYGATE_STORE_PREFIX": prefix,
                              "KEYGATE_SECRET": TEST_SECRET})


@pytest.fixture
async def stores(redis_url: str, cluster_url: str) -> AsyncIterator[Callable[[str], Gateway]]:
    if redis_url.startswith("memory://"):
        pytest.skip("copies between real servers")
    prefix = f"copy-{uuid.uuid4().hex[:8]}:"
    made: list[Gateway] = []

    def on(url: str) -> Gateway:
        made.append(build_gateway(_settings(url, prefix)))
        return made[-1]

    yield on
    for gateway in made:
        await gateway.close()


async def _everything(gateway: Gateway) -> dict[str, Any]:
    """What a store serves, read through keygate (so layout-independent)."""
    store = gateway.store
    found: dict[str, Any] = {}
    for account in ("acme", "beta"):
        found[account] = {
            "keys": sorted((r.app_key, r.label, r.roles, r.status, r.token_digests)
                           for r in await store.all_keys(account)),
            "grants": sorted((g.app_key, g.label, g.roles)
                             for g in await store.all_grants(account)),
            "settings": await store.get_settings(account),
            "audit": [(e.action, e.target)
                      for e in (await store.audit_events(account, limit=100))[0]],
        }
    found["accounts"] = await store.accounts()
    return found


async def _fill(gateway: Gateway) -> dict[str, Any]:
    lifecycle, store = gateway.lifecycle, gateway.store
    owner = await lifecycle.create("acme", "owner", ["owner"], CLI_ACTOR)
    linked = await lifecycle.create("acme", "linked", ["orders-reader"], CLI_ACTOR,
                                    delivery="link")
    partner = await lifecycle.create("beta", "partner", ["orders-reader"], CLI_ACTOR)
    await store.add_grant("acme", partner.record.app_key, "partner", ["orders-reader"],
                          CLI_ACTOR)
    await lifecycle.renew("acme", owner.record.app_key, CLI_ACTOR, keep_old=True)
    await store.put_setting("acme", "renewalReminderMonths", "6", CLI_ACTOR)
    return {"owner": owner, "linked": linked, "partner": partner}


async def test_a_copy_into_a_cluster_serves_the_same_store(stores, redis_url, cluster_url):
    source = stores(redis_url)
    made = await _fill(source)
    before = await _everything(source)
    prefix = source.settings.store_prefix
    report = await copy_store(redis_url, cluster_url, prefix)
    assert report.copied > 0 and report.by_kind["key"] == 3

    target = stores(cluster_url)
    assert target.store.names.clustered and not source.store.names.clustered
    assert await _everything(target) == before
    # credentials authenticate on the cluster, with the grant in the other account
    for key, account in ((made["owner"], "acme"), (made["partner"], "acme")):
        lookup = await target.store.auth_lookup(key.record.app_key, account)
        assert lookup.exists and gateway_digest(target, key.token) in lookup.token_digests
    # the unopened link kept its TTL and opens once, on the target
    secret = made["linked"].link_secret
    assert await target.store.redis.pttl(target.store.names.link(link_id(secret))) > 0
    assert await target.lifecycle.open_link(secret) is not None
    assert await target.lifecycle.open_link(secret) is None

    # and back again, into an empty prefix of its own on the single server
    await _drop(source)
    await copy_store(cluster_url, redis_url, prefix)
    again = stores(redis_url)
    back = await _everything(again)
    assert back["acme"]["keys"] == before["acme"]["keys"]
    assert back["acme"]["grants"] == before["acme"]["grants"]


def gateway_digest(gateway: Gateway, token: str) -> str:
    return gateway.hasher.digest(token)


async def _drop(gateway: Gateway) -> None:
    r = gateway.store.redis
    async for name in r.scan_iter(match=glob_escape(gateway.settings.store_prefix) + "*"):
        await r.delete(name)


async def test_a_copy_refuses_a_target_that_holds_anything_and_writes_nothing(
    stores, redis_url, cluster_url
):
    source = stores(redis_url)
    await _fill(source)
    target = stores(cluster_url)
    await target.store.redis.set(target.settings.store_prefix + "stray", "x")
    with pytest.raises(TargetNotEmpty):
        await copy_store(redis_url, cluster_url, source.settings.store_prefix)
    left = [n async for n in target.store.redis.scan_iter(
        match=glob_escape(target.settings.store_prefix) + "*")]
    assert left == [target.settings.store_prefix + "stray"]


def test_the_command_copies_and_refuses_bad_targets(
    env: dict[str, str], cli: Callable[..., Ran], cluster_url: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """One end-to-end run of ``keygate store copy`` in-process, and its refusals."""
    assert cli("keys", "create", "--account", "acme", "--label", "k", "--role",
               "owner").code == 0
    copied = cli("store", "copy", "--to", cluster_url, "--json")
    assert copied.code == 0, copied.err
    assert copied.json()["byKind"]["key"] == 1
    again = cli("store", "copy", "--to", cluster_url)
    assert again.code == 1 and "already holds" in again.err
    for bad in ("memory://", "ftp://x", "redis+cluster://:s3cret@h:99999",
                env["KEYGATE_STORE_URL"]):
        ran = cli("store", "copy", "--to", bad)
        assert ran.code == 2 and "s3cret" not in ran.err + ran.out, (bad, ran.err)
    # a target that does not answer, or refuses the password: a refusal saying which
    # store failed, without a traceback or the password
    closed = free_port()
    for unreachable in (f"redis://:s3cret@127.0.0.1:{closed}/0",
                        env["KEYGATE_STORE_URL"].replace("redis://", "redis://nobody:s3cret@", 1)):
        ran = cli("store", "copy", "--to", unreachable)
        assert ran.code == 1 and "the target store failed" in ran.err, (unreachable, ran.err)
        assert "s3cret" not in ran.err + ran.out and "Traceback" not in ran.err
    # the target from the environment (a password off the command line), or none at all
    monkeypatch.setenv("KEYGATE_COPY_TO", f"redis://:s3cret@127.0.0.1:{closed}/0")
    ran = cli("store", "copy")
    assert ran.code == 1 and "the target store failed" in ran.err and "s3cret" not in ran.err
    monkeypatch.setenv("KEYGATE_COPY_TO", "ftp://:s3cret@x")
    ran = cli("store", "copy")
    assert ran.code == 2 and "KEYGATE_COPY_TO" in ran.err and "s3cret" not in ran.err
    monkeypatch.delenv("KEYGATE_COPY_TO")
    ran = cli("store", "copy")
    assert ran.code == 2 and "KEYGATE_COPY_TO" in ran.err
