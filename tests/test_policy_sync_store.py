"""The store side of policy sync and the parts around it: who holds which role, a
reload while Redis is away, the watch setting, and two real ``keygate serve`` processes
following a SIGHUP."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from conftest import TEST_SECRET
from ports import free_port

from gateway.app import build_gateway
from gateway.errors import ConfigError, StoreUnavailable
from gateway.pipeline.authorizer import CasbinAuthorizer
from gateway.policy import Policy
from gateway.policy.sync import PolicyInvalid, PolicySync, RolesStillHeld, files_fingerprint
from gateway.settings import PROJECT_ROOT, load_settings
from gateway.store import CLI_ACTOR, PolicyAnnouncement, Store

MODEL = PROJECT_ROOT / "model.conf"


async def test_role_holders_counts_per_account_and_reads_only_its_own_prefix(
    make_settings, clock
):
    # a prefix holding glob characters must not read another deployment's keys
    tricky = f"t*{uuid.uuid4().hex[:6]}[1]:"
    lookalike = tricky.replace("*", "XX").replace("[1]", "1")
    mine = build_gateway(make_settings(store_prefix=tricky), clock=clock)
    other = build_gateway(make_settings(store_prefix=lookalike), clock=clock)
    try:
        assert await mine.store.role_holders() == {}
        for roles in (["orders-reader"], ["orders-reader", "orders-writer"], []):
            await mine.lifecycle.create("acme", "k", roles, CLI_ACTOR)
        partner = await mine.lifecycle.create("beta", "p", ["catalog-reader"], CLI_ACTOR)
        assert (await mine.store.add_grant("acme", partner.record.app_key, "partner",
                                           ["orders-reader"], CLI_ACTOR)).owner == "beta"
        await other.lifecycle.create("acme", "elsewhere", ["owner"], CLI_ACTOR)
        assert await mine.store.role_holders() == {
            "acme": {"orders-reader": 3, "orders-writer": 1},
            "beta": {"catalog-reader": 1},
        }
        # a removed grant and a deleted key hold nothing any more
        assert await mine.store.remove_grant("acme", partner.record.app_key, CLI_ACTOR)
        assert await mine.store.delete_key("beta", partner.record.app_key)
        assert await mine.store.role_holders() == {
            "acme": {"orders-reader": 2, "orders-writer": 1}}
    finally:
        await mine.close()
        await other.close()


async def test_role_holders_reads_in_chunks(make_settings, clock):
    """Generated keys are counted from the listing's role sets; external keys, and the
    keys of an account whose listing indexes are not complete (an older keygate wrote
    them), are read a chunk at a time."""
    gw = build_gateway(make_settings(), clock=clock)
    try:
        for i in range(7):
            await gw.lifecycle.create("acme", f"k{i}", ["orders-reader"], CLI_ACTOR)
            partner = await gw.lifecycle.create("beta", f"p{i}", ["catalog-reader"],
                                                CLI_ACTOR)
            await gw.store.add_grant("acme", partner.record.app_key, "partner",
                                     ["orders-writer"], CLI_ACTOR)
        expected = {"acme": {"orders-reader": 7, "orders-writer": 7},
                    "beta": {"catalog-reader": 7}}
        assert await gw.store.role_holders(chunk=3) == expected
        # beta as an older keygate left it: no marker of complete indexes, no role sets
        names = gw.store.names
        await gw.store.redis.delete(names.account("beta", "roles"),
                                    names.role_holders("beta", "catalog-reader"))
        assert await gw.store.role_holders(chunk=3) == expected
    finally:
        await gw.close()


async def test_without_the_store_only_a_reload_that_drops_roles_is_held_back(
    tmp_path, closed_port
):
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    holder = CasbinAuthorizer(Policy.load(MODEL, policies))
    store = Store.from_url(f"redis://127.0.0.1:{closed_port}/0", "gone:")
    outcomes: list[bool] = []
    sync = PolicySync(holder, store, MODEL, policies, instance="test",
                      reloaded=outcomes.append)
    examples = policies / "examples.csv"
    try:
        # an emergency deny drops no role: it needs no store, and serves at once
        examples.write_text(examples.read_text() + "p, orders-writer, *, orders, write, deny\n")
        result = await sync.reload()
        assert holder.policy.version == result.version and result.announced is False
        emergency = result.version

        examples.write_text(examples.read_text().replace(
            "p, catalog-reader, *, catalog, read, allow\n", "").replace(
            "p, user-admin-restricted, *, role:catalog-reader, assign, allow\n", ""))
        with pytest.raises(StoreUnavailable):
            await sync.reload()
        assert holder.policy.version == emergency
        forced = await sync.reload(force=True)
        assert forced.forced is True and forced.announced is False
        assert "catalog-reader" not in holder.policy.roles
        assert outcomes == [True, False, True]
        assert sync.status().in_sync is True and sync.status().announced is None
    finally:
        await sync.close()
        await store.close()


async def test_waiters_share_the_reload_they_joined_and_its_refusal(tmp_path, make_settings,
                                                                    clock):
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    gw = build_gateway(make_settings(policies_dir=str(policies)), clock=clock)
    key = await gw.lifecycle.create("acme", "k", ["catalog-reader"], CLI_ACTOR)
    assert key.token
    try:
        examples = policies / "examples.csv"
        examples.write_text(examples.read_text() + "p, broken\n")
        results = await asyncio.gather(*(gw.policy_sync.reload() for _ in range(10)),
                                       return_exceptions=True)
        assert all(isinstance(r, PolicyInvalid) for r in results)
        assert {str(r) for r in results} == {results[0].message}
        assert results[0].file == "examples.csv" and results[0].line is not None

        examples.write_text(examples.read_text().replace("p, broken\n", "").replace(
            "p, catalog-reader, *, catalog, read, allow\n", ""))
        results = await asyncio.gather(*(gw.policy_sync.reload() for _ in range(10)),
                                       return_exceptions=True)
        assert all(isinstance(r, RolesStillHeld) for r in results)
        assert results[0].held == {"acme": {"catalog-reader": 1}}
        versions = {(await gw.policy_sync.reload(force=True)).version for _ in range(2)}
        assert versions == {gw.policy.version}
    finally:
        await gw.close()


def test_the_watch_interval_is_off_or_at_least_a_tenth_of_a_second():
    assert load_settings(env={}).policy_watch_interval == 0
    for raw, wanted in (("0", 0.0), ("2.5", 2.5), ("0.1", 0.1)):
        env = {"KEYGATE_POLICY_WATCH_INTERVAL": raw}
        assert load_settings(env=env).policy_watch_interval == wanted
    for raw in ("0.01", "-1", "nan", "inf", "soon", "1e999"):
        with pytest.raises(ConfigError, match="policy_watch_interval"):
            load_settings(env={"KEYGATE_POLICY_WATCH_INTERVAL": raw})


def test_the_fingerprint_follows_content_not_times(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    first = files_fingerprint(MODEL, policies)
    examples = policies / "examples.csv"
    stat = examples.stat()
    examples.write_text(examples.read_text().replace("orders-reader", "orders-readex"))
    os.utime(examples, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time
    assert examples.stat().st_size == stat.st_size
    assert files_fingerprint(MODEL, policies) != first
    (policies / "notes.txt").write_text("not policy")
    second = files_fingerprint(MODEL, policies)
    assert files_fingerprint(MODEL, policies) == second
    assert files_fingerprint(MODEL, tmp_path / "nowhere") is not None  # no csv: no files
    assert files_fingerprint(tmp_path / "no-model", policies) is None


async def test_an_announcement_names_what_the_store_keeps(make_settings, clock):
    gw = build_gateway(make_settings(), clock=clock)
    try:
        assert await gw.store.announced_policy() is None
        first = PolicyAnnouncement("a" * 16, "someone", 1, False)
        assert await gw.store.announce_policy(first, only_if_none=True)
        assert not await gw.store.announce_policy(
            PolicyAnnouncement("b" * 16, "other", 2), only_if_none=True)
        assert await gw.store.announced_policy() == first
        second = PolicyAnnouncement("c" * 16, "kgk-acme-x", 3, True)
        assert await gw.store.announce_policy(second)
        assert await gw.store.announced_policy() == second
    finally:
        await gw.close()


# -- two real processes ----------------------------------------------------------------


def _instance(tmp_path: Path, name: str, redis_url: str, prefix: str) -> tuple[Path, str, str]:
    policies = tmp_path / f"{name}-policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    management, metrics = free_port(), free_port()
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'proxy_listen = "127.0.0.1:{free_port()}"\n'
        f'management_listen = "127.0.0.1:{management}"\n'
        f'metrics_listen = "127.0.0.1:{metrics}"\n'
        f'store_url = "{redis_url}"\nstore_prefix = "{prefix}"\n'
        f'policies_dir = "{policies}"\n'
    )
    return config, f"http://127.0.0.1:{management}", f"http://127.0.0.1:{metrics}"


async def _readyz(session: aiohttp.ClientSession, url: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/readyz") as response:
                if response.status == 200:
                    return await response.json()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not become ready")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_sighup_on_one_process_is_followed_by_another(tmp_path, redis_url):
    if redis_url.startswith("memory://"):
        pytest.skip("two processes need a shared Redis")
    prefix = f"hup2-{uuid.uuid4().hex[:8]}:"
    (config_a, management_a, _), (config_b, management_b, metrics_b) = (
        _instance(tmp_path, "a", redis_url, prefix), _instance(tmp_path, "b", redis_url, prefix))
    env = {**os.environ, "KEYGATE_SECRET": TEST_SECRET}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) for config in (config_a, config_b)]
    try:
        async with aiohttp.ClientSession() as session:
            before = (await _readyz(session, management_a))["policyVersion"]
            deadline = time.monotonic() + 20
            while (await _readyz(session, management_b))["policy"]["announced"] != before:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            for name in ("a", "b"):
                examples = tmp_path / f"{name}-policies" / "examples.csv"
                examples.write_text(examples.read_text() + "p, extra, *, orders, read, allow\n")
            processes[0].send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while True:
                ready_b = await _readyz(session, management_b)
                if ready_b["policyVersion"] != before:
                    break
                assert time.monotonic() < deadline, "B never followed A's reload"
                await asyncio.sleep(0.05)
            ready_a = await _readyz(session, management_a)
            assert ready_a["policyVersion"] == ready_b["policyVersion"]
            for ready in (ready_a, ready_b):
                assert ready["policy"]["announced"] == ready_a["policyVersion"]
                assert ready["policy"]["inSync"] is True
            async with session.get(metrics_b + "/metrics") as response:
                text = await response.text()
            assert "keygate_policy_in_sync 1.0" in text
            assert f'keygate_policy_announced_info{{version="{ready_a["policyVersion"]}"}} 1.0' \
                in text
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=20) for p in processes] == [0, 0]
