"""One policy version across instances: two (or three) keygates on one Redis and one
store prefix, each reading its own copy of the policy files, as in a deployment.

A reload on one instance is followed by the others; an instance whose files differ says
so in /readyz, in a metric and once in its log; a reload that would remove a role still
held is refused, naming the accounts and counts, unless forced; a broken file keeps the
old policy; requests in flight during reloads are never answered with an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Key, ProxyTestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import build_gateway, reload_policy
from gateway.context import Gateway
from gateway.management import build_management_app
from gateway.settings import PROJECT_ROOT
from gateway.store import CLI_ACTOR

RELOAD = "/api/v1/policy/reload"
READER_LINE = "p, orders-reader, *, orders, read, allow"


@dataclass
class Instance:
    gw: Gateway
    management: Any
    proxy: Any
    policies: Path

    @property
    def examples(self) -> Path:
        return self.policies / "examples.csv"

    async def readyz(self) -> dict[str, Any]:
        response = await self.management.get("/readyz")
        assert response.status == 200
        return await response.json()

    def metric(self, name: str, **labels: str) -> float | None:
        text = self.gw.telemetry.exposition().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    def metric_labels(self, name: str) -> list[dict[str, str]]:
        text = self.gw.telemetry.exposition().decode()
        return [s.labels for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == name]

    def reloads(self, result: str = "success") -> float:
        return self.metric("keygate_policy_reloads_total", result=result) or 0.0

    async def key(self, account: str, roles: list[str], label: str = "k") -> Key:
        issued = await self.gw.lifecycle.create(account, label, roles, CLI_ACTOR)
        assert issued.token is not None
        return Key(issued.record.app_key, issued.token)

    async def reload(self, key: Key, body: Any = None) -> tuple[int, dict[str, Any]]:
        response = await self.management.post(RELOAD, headers=key.headers, json=body)
        return response.status, await response.json()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def error_shape(body: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    error = body["error"]
    assert set(error) <= {"code", "message", "status", "requestId", "details"}
    assert (error["status"], error["code"]) == (status, code), error
    assert error["requestId"] and error["message"]
    return error


async def until(condition: Callable[[], Any], seconds: float = 10.0) -> float:
    """Wait (bounded) for what happens in the background; returns the seconds waited."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "the condition never held"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def instances(
    make_settings: Callable[..., Any], clock: Any, aiohttp_client: Any, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """``await instances("a")``: a keygate with its own copy of the shipped policies, on
    the store prefix shared by every instance of the test, started as in production."""
    prefix = f"sync-{uuid.uuid4().hex[:10]}:"
    started: list[Gateway] = []

    async def make(name: str, policies: Path | None = None, **overrides: Any) -> Instance:
        if policies is None:
            policies = tmp_path / name
            shutil.copytree(PROJECT_ROOT / "policies", policies)
        settings = make_settings(store_prefix=prefix, policies_dir=str(policies), **overrides)
        gw = build_gateway(settings, clock=clock)
        gw.start()
        started.append(gw)
        instance = Instance(gw, await aiohttp_client(build_management_app(gw)),
                            await aiohttp_client(ProxyTestServer(gw)), policies)
        await until(lambda: gw.policy_sync.announcement is not None)
        return instance

    yield make
    for gw in started:
        await gw.close()


async def test_a_reload_on_one_instance_is_followed_by_the_other(instances):
    a, b = await instances("a"), await instances("b")
    admin = await a.key("acme", ["policy-admin"], "policy admin")
    reader = await a.key("acme", ["orders-reader"])
    assert (await b.proxy.get("/orders/1", headers=reader.headers)).status == 200
    before = a.gw.policy.version
    assert (await b.readyz())["policy"]["inSync"] is True

    invalidations = b.metric("keygate_cache_invalidations_total")
    for instance in (a, b):  # the change reaches both copies, as a deployment's would
        edit(instance.examples, READER_LINE, "p, orders-reader, *, orders, read, deny")
    status, body = await a.reload(admin)
    assert status == 200, body
    version = body["version"]
    assert body == {"version": version, "previous": before, "lines": a.gw.policy.lines,
                    "announced": True, "forced": False}
    await until(lambda: b.gw.policy.version == version)

    assert (await b.proxy.get("/orders/1", headers=reader.headers)).status == 403
    for instance in (a, b):
        ready = await instance.readyz()
        assert ready["policyVersion"] == version
        assert ready["policy"] | {"loadedAt": None} == {
            "version": version, "announced": version, "inSync": True, "loadedAt": None,
            "lastRefused": None}
        assert ready["pid"] == os.getpid()
        assert ready["policy"]["loadedAt"].endswith("Z")
        assert instance.metric("keygate_policy_info", version=version) == 1
        assert instance.metric("keygate_policy_in_sync") == 1
        assert instance.metric_labels("keygate_policy_announced_info") == [{"version": version}]
        assert instance.reloads() == 1
    announced = await a.gw.store.announced_policy()
    assert announced is not None and (announced.version, announced.by) == (version, admin.app_key)
    # an announcement is no key change: the other instance's credential cache stays
    assert b.metric("keygate_cache_invalidations_total") == invalidations
    assert b.gw.store.cached_lookup(reader.app_key, "acme") is not None
    events, _ = await a.gw.store.audit_events("acme", accept=lambda e: e.action == "policy.reload")
    assert [(e.actor, e.before, e.after) for e in events] == [
        (admin.app_key, {"version": before}, {"version": version, "forced": False})]

    # the key changes the channel always carried still reach the other instance
    await a.gw.store.update_key("acme", reader.app_key, status="inactive")
    await until(lambda: b.gw.store.cached_lookup(reader.app_key, "acme") is None)
    assert (await b.proxy.get("/orders/1", headers=reader.headers)).status == 401


async def test_an_instance_with_other_files_says_so_once_per_change(instances, caplog):
    caplog.set_level(logging.INFO, logger="keygate.policy")
    a, b = await instances("a"), await instances("b")
    admin = await a.key("acme", ["policy-admin"])
    old = b.gw.policy.version

    def out_of_sync_warnings() -> int:
        return sum(1 for r in caplog.records if getattr(r, "event", "") == "policy.out_of_sync")

    edit(a.examples, READER_LINE, READER_LINE + "\np, orders-reader, *, invoices, read, allow")
    status, body = await a.reload(admin)
    assert status == 200
    await until(lambda: b.gw.policy_sync.announcement.version == body["version"])
    ready = await b.readyz()
    assert ready["policyVersion"] == old  # it serves what its own files say
    assert ready["policy"]["announced"] == body["version"]
    assert ready["policy"]["inSync"] is False
    assert b.metric("keygate_policy_in_sync") == 0
    assert b.metric_labels("keygate_policy_announced_info") == [{"version": body["version"]}]
    assert (await a.readyz())["policy"]["inSync"] is True
    assert out_of_sync_warnings() == 1
    warning = next(r for r in caplog.records if getattr(r, "event", "") == "policy.out_of_sync")
    assert old in warning.getMessage() and body["version"] in warning.getMessage()

    for _ in range(3):  # the same announcement again: no new warning
        assert (await a.reload(admin))[0] == 200
    await until(lambda: a.reloads() == 4)
    await asyncio.sleep(0.2)
    assert out_of_sync_warnings() == 1

    # its files catch up; a reload there (SIGHUP's work) brings it back in sync
    shutil.copy(a.examples, b.examples)
    assert await reload_policy(b.gw)
    assert (await b.readyz())["policy"] == {
        "version": body["version"], "announced": body["version"], "inSync": True,
        "loadedAt": (await b.readyz())["policy"]["loadedAt"], "lastRefused": None}
    assert b.metric("keygate_policy_in_sync") == 1
    assert any(getattr(r, "event", "") == "policy.in_sync" for r in caplog.records)


async def test_the_first_instance_announces_and_a_later_one_never_overwrites(
    instances, tmp_path
):
    a = await instances("a")
    first = await a.gw.store.announced_policy()
    assert first is not None and first.version == a.gw.policy.version
    assert "pid" in first.by and not first.forced

    other = tmp_path / "other"
    shutil.copytree(PROJECT_ROOT / "policies", other)
    edit(other / "examples.csv", READER_LINE, READER_LINE + "\np, extra, *, orders, read, allow")
    b = await instances("b", other)
    ready = await b.readyz()
    assert ready["policy"]["announced"] == a.gw.policy.version != ready["policyVersion"]
    assert ready["policy"]["inSync"] is False
    assert await a.gw.store.announced_policy() == first  # starting never overwrites
    assert (await a.readyz())["policy"]["inSync"] is True


async def test_removing_a_role_still_held_is_refused_with_counts_unless_forced(
    instances, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="keygate.policy")
    a, b = await instances("a"), await instances("b")
    admin = await a.key("acme", ["policy-admin"])
    await a.key("acme", ["catalog-reader"], "one")
    inactive = await a.key("acme", ["catalog-reader", "orders-reader"], "two")
    await a.gw.store.update_key("acme", inactive.app_key, status="inactive")
    gone = await a.key("acme", ["catalog-reader"], "deleted")
    assert await a.gw.store.delete_key("acme", gone.app_key)
    await a.key("beta", ["catalog-reader"])
    outsider = await a.key("beta", ["orders-reader"])
    assert (await a.gw.store.add_grant("gamma", outsider.app_key, "partner",
                                       ["catalog-reader"], CLI_ACTOR)).roles == ("catalog-reader",)
    held = {"acme": {"catalog-reader": 2}, "beta": {"catalog-reader": 1},
            "gamma": {"catalog-reader": 1}}
    assert {account: roles.get("catalog-reader") for account, roles in
            (await a.gw.store.role_holders()).items() if "catalog-reader" in roles} == {
        "acme": 2, "beta": 1, "gamma": 1}

    before = a.gw.policy.version
    drop = "p, catalog-reader, *, catalog, read, allow"
    for instance in (a, b):
        edit(instance.examples, drop + "\n", "")
        edit(instance.examples, "p, user-admin-restricted, *, role:catalog-reader, assign, allow",
             "")
    status, body = await a.reload(admin)
    error = error_shape(body, 409, "roles_still_held")
    assert error["details"] == {"held": held, "roles": ["catalog-reader"], "accounts": 3,
                                "keys": 4, "truncated": False}
    assert "'catalog-reader'" in error["message"] and "4 key(s) in 3 account(s)" in error["message"]
    assert "acme: catalog-reader ×2" in error["message"]
    assert '{"force": true}' in error["message"]  # says how to force it
    assert a.gw.policy.version == before and (await a.readyz())["policyVersion"] == before
    assert a.reloads("failure") == 1
    # its files are not what it serves, and it says so until a reload succeeds
    refused = (await a.readyz())["policy"]["lastRefused"]
    assert set(refused) == {"code", "at", "version"} and refused["at"].endswith("Z")
    assert refused["code"] == "roles_still_held"
    assert refused["version"] not in (None, before)
    assert a.gw.policy_sync.status().refused.reason == error["message"]  # for the log
    # /readyz answers anyone: the code, never the accounts and counts of the reason
    probe = await (await a.management.get("/readyz")).text()
    assert "acme" not in probe and "catalog-reader" not in probe
    assert a.metric("keygate_policy_refused") == 1

    # a third instance whose files drop the role *and* differ in another line: the force
    # below binds the version it produced, not this one
    c = await instances("c")
    assert c.gw.policy.version == before
    shutil.copy(a.examples, c.examples)
    edit(c.examples, READER_LINE, READER_LINE + "\np, x, *, orders, read, allow")

    status, body = await a.reload(admin, {"force": True})
    assert status == 200 and body["forced"] is True and body["previous"] == before
    assert (await a.readyz())["policy"]["lastRefused"] is None
    assert a.metric("keygate_policy_refused") == 0
    await until(lambda: b.gw.policy.version == body["version"])  # same files: follows
    assert (await b.readyz())["policy"]["inSync"] is True
    await until(lambda: c.gw.policy_sync.announcement.version == body["version"])
    await asyncio.sleep(0.1)
    assert c.gw.policy.version == before  # refused: it would drop held roles unforced
    assert (await c.readyz())["policy"]["inSync"] is False
    assert (await c.readyz())["policy"]["lastRefused"]["code"] == "roles_still_held"
    assert c.gw.policy_sync.status().refused.reason.startswith(
        "the new policy no longer defines 'catalog-reader'")
    assert c.metric("keygate_policy_refused") == 1
    assert any(getattr(r, "event", "") == "policy.forced" for r in caplog.records)
    events, _ = await a.gw.store.audit_events("acme", accept=lambda e: e.action == "policy.reload")
    assert events[0].after == {"version": body["version"], "forced": True}


async def test_a_broken_file_is_refused_with_its_line_and_the_old_policy_serves(instances):
    a = await instances("a")
    admin = await a.key("acme", ["policy-admin"])
    reader = await a.key("acme", ["orders-reader"])
    before = a.gw.policy.version
    lines = a.examples.read_text().splitlines()
    a.examples.write_text("\n".join([*lines, "p, orders-reader, *, orders, write, maybe"]) + "\n")
    status, body = await a.reload(admin)
    error = error_shape(body, 400, "policy_invalid")
    line = len(lines) + 1
    assert f"examples.csv:{line}: effect must be allow or deny" in error["message"]
    assert error["details"] == {"file": "examples.csv", "line": line}
    assert a.gw.policy.version == before and (await a.readyz())["policyVersion"] == before
    assert (await a.proxy.get("/orders/1", headers=reader.headers)).status == 200
    assert a.reloads("failure") == 1 and a.reloads() == 0
    refused = (await a.readyz())["policy"]["lastRefused"]
    assert (refused["version"], refused["code"]) == (None, "policy_invalid")
    assert "effect must be allow or deny" in a.gw.policy_sync.status().refused.reason

    shutil.rmtree(a.policies)  # no directory at all: refused too, without a line
    status, body = await a.reload(admin)
    error = error_shape(body, 400, "policy_invalid")
    assert "details" not in error and "policies_dir" in error["message"]
    assert (await a.proxy.get("/orders/1", headers=reader.headers)).status == 200


@pytest.mark.parametrize("matcher", [
    "hasRole(r.sub, p.sub) && (",  # does not parse
    "hasRole(r.sub, p.sub) && nosuch(r.obj)",  # a function the model does not have
    "hasRole(r.sub, p.sub) && r.foo == p.obj",  # a token the request does not define
])
async def test_a_model_whose_matcher_cannot_be_evaluated_is_refused(
    instances, tmp_path, matcher
):
    """Casbin compiles the matcher only when it first decides: such a model used to load,
    be announced, and then answer every request, the reload endpoint's own included,
    with a 500. It is refused like a broken policy file; the running policy serves on."""
    model = tmp_path / "model.conf"
    shutil.copy(PROJECT_ROOT / "model.conf", model)
    a = await instances("a", model_path=str(model))
    admin = await a.key("acme", ["policy-admin", "api-keys-viewer"])
    reader = await a.key("acme", ["orders-reader"])
    before = a.gw.policy.version
    lines = model.read_text().splitlines()
    model.write_text("\n".join(f"m = {matcher}" if line.startswith("m = ") else line
                               for line in lines) + "\n")
    status, body = await a.reload(admin)
    error = error_shape(body, 400, "policy_invalid")
    assert "cannot evaluate its matcher" in error["message"]
    assert a.gw.policy.version == before and a.reloads("failure") == 1
    assert (await a.proxy.get("/orders/1", headers=reader.headers)).status == 200
    listed = await a.management.get("/api/v1/accounts/acme/keys", headers=admin.headers)
    assert listed.status == 200


async def test_only_a_key_allowed_policy_reload_in_its_own_account_may_reload(instances):
    a = await instances("a")
    allowed = [await a.key("acme", ["policy-admin"]), await a.key("acme", ["owner"], "owner")]
    refused = [await a.key("acme", ["orders-writer"]),
               await a.key("acme", ["user-admin-restricted"]),
               await a.key("acme", ["api-keys-viewer"])]
    # granted policy-admin in acme, but acme is not the account that owns it
    outsider = await a.key("beta", ["orders-reader"])
    assert (await a.gw.store.add_grant("acme", outsider.app_key, "partner", ["policy-admin"],
                                       CLI_ACTOR)).roles == ("policy-admin",)
    for key in [*refused, outsider]:
        status, body = await a.reload(key)
        error_shape(body, 403, "not_permitted")
        assert "'policy'" in body["error"]["message"]
    for key in allowed:
        assert (await a.reload(key))[0] == 200
    assert a.reloads() == 2

    no_credentials = await a.management.post(RELOAD)
    error_shape(await no_credentials.json(), 401, "missing_credentials")
    token = allowed[0].token
    other_token = token[:-1] + ("y" if token.endswith("x") else "x")  # never the same
    for headers in (
        {"X-API-AppKey": allowed[0].app_key, "X-API-AppToken": other_token},
        {"X-API-AppKey": "kgk-acme-" + "Z" * 20, "X-API-AppToken": token},
        {"X-API-AppKey": "not a key", "X-API-AppToken": token},
    ):
        response = await a.management.post(RELOAD, headers=headers)
        error_shape(await response.json(), 401, "invalid_credentials")
    response = await a.management.post(RELOAD, headers={"X-API-AppKey": "k" * 5000,
                                                        "X-API-AppToken": token})
    assert response.status == 400 and token not in await response.text()

    # as the builtin policy's comment says: a deny line takes it from owner keys
    edit(a.examples, READER_LINE, READER_LINE + "\np, owner, *, policy, reload, deny")
    assert (await a.reload(allowed[0]))[0] == 200
    error_shape((await a.reload(allowed[1]))[1], 403, "not_permitted")
    assert a.reloads() == 3


async def test_requests_in_flight_during_reloads_get_the_old_or_the_new_answer(instances):
    """Between two policies that both allow a read and disagree on a write (the one
    refuses it, the other allows it), requests sent without pause throughout twenty
    reloads get the old policy's answer or the new one's — both are seen, so the swap
    reaches requests — never an error."""
    a = await instances("a")
    admin = await a.key("acme", ["policy-admin"])
    reader = await a.key("acme", ["orders-reader"])
    one = a.examples.read_text()
    other = one.replace(READER_LINE, "p, orders-reader, acme, orders, read, allow\n"
                        "p, orders-reader, acme, orders, write, allow")
    answers: dict[tuple[str, int], int] = {}
    stop = asyncio.Event()

    async def client(method: str) -> None:
        while not stop.is_set():
            response = await a.proxy.request(method, "/orders/1", headers=reader.headers)
            await response.read()
            answers[(method, response.status)] = answers.get((method, response.status), 0) + 1

    clients = [asyncio.create_task(client(m)) for m in ("GET", "GET", "GET", "POST")]
    versions = set()
    try:
        for turn in range(20):
            a.examples.write_text(other if turn % 2 == 0 else one)
            status, body = await a.reload(admin)
            assert status == 200, body
            versions.add(body["version"])
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert len(versions) == 2 and a.reloads() == 20
    assert set(answers) == {("GET", 200), ("POST", 403), ("POST", 200)}, answers
    assert answers[("GET", 200)] > 40, answers


async def test_the_file_watch_reloads_within_a_few_intervals(instances):
    a = await instances("a", policy_watch_interval=0.2)
    b = await instances("b")  # no watch: it follows A's announcement
    before = a.gw.policy.version
    for instance in (a, b):
        edit(instance.examples, READER_LINE, READER_LINE + "\np, extra, *, orders, read, allow")
    waited = await until(lambda: a.gw.policy.version != before, seconds=5)
    assert waited < 1.0, f"the watch took {waited:.2f} s at 0.2 s intervals"
    await until(lambda: b.gw.policy.version == a.gw.policy.version)
    announced = await a.gw.store.announced_policy()
    assert announced is not None and announced.version == a.gw.policy.version
    assert "file watch" in announced.by

    # a broken edit is refused once, not at every poll
    good = a.gw.policy.version
    a.examples.write_text(a.examples.read_text() + "g, loop, loop\n")
    await until(lambda: a.reloads("failure") == 1, seconds=5)
    await asyncio.sleep(0.7)
    assert a.reloads("failure") == 1 and a.gw.policy.version == good


async def test_reload_bodies_that_are_not_what_it_takes_are_refused(instances):
    a = await instances("a", management_max_body=4096)
    admin = await a.key("acme", ["policy-admin"])
    bad: list[tuple[bytes, str, int, str]] = [
        (b"not json", "application/json", 400, "bad_json"),
        (b"[]", "application/json", 400, "bad_json"),
        (b'"force"', "application/json", 400, "bad_json"),
        (b"[" * 1500 + b"]" * 1500, "application/json", 400, "bad_json"),
        (b'{"force": "yes"}', "application/json", 400, "bad_force"),
        (b'{"force": 1}', "application/json", 400, "bad_force"),
        (b'{"force": null}', "application/json", 400, "bad_force"),
        (b'{"force": true, "why": 1}', "application/json", 400, "unknown_field"),
        (b'{"force": ' + b"9" * 900 + b"}", "application/json", 400, "bad_json"),
        (b'{"force": "' + b"t" * 900 + b'"}', "application/json", 400, "bad_force"),
        (b"force=true", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{" + b" " * 5000 + b"}", "application/json", 413, "payload_too_large"),
    ]
    for raw, content_type, status, code in bad:
        response = await a.management.post(
            RELOAD, data=raw, headers={**admin.headers, "Content-Type": content_type})
        error = error_shape(await response.json(), status, code)
        assert response.status == status and len(error["message"]) < 300, (raw[:20], error)
    assert a.reloads() == 0 and a.reloads("failure") == 0
    # an empty body, and an empty object, are a plain reload
    response = await a.management.post(RELOAD, headers=admin.headers)
    assert response.status == 200
    assert (await a.reload(admin, {}))[0] == 200


async def test_a_flood_of_reloads_runs_them_one_at_a_time(instances):
    a = await instances("a")
    admin = await a.key("acme", ["policy-admin"])
    # a policy that takes a while to load, so the requests meet a reload running
    (a.policies / "bulk.csv").write_text("".join(
        f"p, bulk-{i}, *, orders-{i}, read, allow\n" for i in range(3000)))
    started = time.monotonic()
    statuses = await asyncio.gather(*(a.reload(admin) for _ in range(40)))
    elapsed = time.monotonic() - started
    assert {status for status, _ in statuses} == {200}
    assert len({body["version"] for _, body in statuses}) == 1
    reloads = a.reloads()
    print(f"40 concurrent reload requests: {reloads:.0f} reloads in {elapsed:.2f} s")
    assert reloads <= 3, reloads  # one running, one waiting that every later request joined


async def test_announcements_are_heard_with_the_credential_cache_off(instances):
    a = await instances("a", credential_cache_size=0)
    b = await instances("b", credential_cache_size=0)
    admin = await a.key("acme", ["policy-admin"])
    for instance in (a, b):
        edit(instance.examples, READER_LINE, READER_LINE + "\np, extra, *, orders, read, allow")
    status, body = await a.reload(admin)
    assert status == 200
    await until(lambda: b.gw.policy.version == body["version"])
    ready = await b.readyz()
    assert ready["credentialCache"] == "bypassed" and ready["policy"]["inSync"] is True


async def test_an_instance_whose_files_break_keeps_serving_and_says_so(instances, caplog):
    caplog.set_level(logging.INFO, logger="keygate.policy")
    a, b = await instances("a"), await instances("b")
    admin = await a.key("acme", ["policy-admin"])
    old = b.gw.policy.version
    edit(a.examples, READER_LINE, READER_LINE + "\np, extra, *, orders, read, allow")
    b.examples.write_text(b.examples.read_text() + "p, half, written\n")
    status, body = await a.reload(admin)
    assert status == 200
    await until(lambda: b.reloads("failure") == 1)
    await until(lambda: b.gw.policy_sync.announcement.version == body["version"])
    assert b.gw.policy.version == old
    assert (await b.readyz())["policy"]["inSync"] is False
    refusal = next(r for r in caplog.records if getattr(r, "event", "") == "policy.refused")
    assert "examples.csv:" in refusal.getMessage()
