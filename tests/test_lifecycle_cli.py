"""`keygate keys renew|finish-renewal|undo-renewal` and `keygate audit`, run as an operator
runs them: `python -m gateway …` in a subprocess against the private redis-server.

Whether a token works is asked of an in-process gateway on the same store, prefix and
server secret (real store, real hasher, real Casbin), never of the store directly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import build_gateway
from gateway.context import Gateway
from gateway.errors import Unauthorized
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECRET = "lifecycle-cli-secret-" + "z" * 40
TIMEOUT = 30  # seconds a command may take before the test fails (not a timing check)
TOKEN_LINE = re.compile(r"^API token\s+(kgt_[0-9A-Za-z]{36})$", re.MULTILINE)


@pytest.fixture
def cli_env(redis_url: str) -> dict[str, str]:
    if not redis_url.startswith("redis://"):
        pytest.skip("the CLI tests need the private redis-server (memory:// is per process)")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    return {
        **base,
        "KEYGATE_STORE_URL": redis_url,
        "KEYGATE_SECRET": SECRET,
        "KEYGATE_STORE_PREFIX": f"lcli-{uuid.uuid4().hex[:12]}:",
    }


@pytest.fixture
async def local(cli_env: dict[str, str]) -> AsyncIterator[Gateway]:
    """A gateway in this process on the CLI's store, to check what the CLI did."""
    gw = build_gateway(load_settings(env=cli_env))
    yield gw
    await gw.close()


class Cli:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.stderr: list[str] = []

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=TIMEOUT,
            check=False,
        )
        self.stderr.append(result.stderr)
        return result

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
        return result.stdout

    def fails(self, code: int, *args: str) -> str:
        result = self(*args)
        assert result.returncode == code, (args, result.returncode, result.stdout,
                                           result.stderr)
        assert result.stdout == ""
        return result.stderr

    def create(self, account: str = "acme", role: str = "owner") -> tuple[str, str]:
        row = json.loads(self.ok("keys", "create", "--account", account, "--label", "x",
                                 "--role", role, "--json"))
        return row["appKey"], row["appToken"]

    def renew(self, app_key: str, *flags: str) -> tuple[str, str]:
        out = self.ok("keys", "renew", app_key, *flags)
        match = TOKEN_LINE.search(out)
        assert match, out
        assert f"API key    {app_key}" in out
        return match[1], out

    def audit(self, *args: str) -> list[dict[str, Any]]:
        out = self.ok("audit", "--account", "acme", "--json", *args)
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    return Cli(cli_env)


async def works(gw: Gateway, app_key: str, token: str) -> bool:
    headers = {"X-API-AppKey": app_key, "X-API-AppToken": token}
    try:
        await gw.pipeline.check(headers, "acme", "orders", "read")
    except Unauthorized as refusal:
        assert refusal.code == "invalid_credentials"
        return False
    return True


async def test_renew_finish_undo_and_audit(cli, local):
    app_key, t0 = cli.create()
    assert await works(local, app_key, t0)

    t1, out = cli.renew(app_key)
    assert "Both tokens work until `keygate keys finish-renewal KEY`." in out
    assert t1 != t0
    assert await works(local, app_key, t0) and await works(local, app_key, t1)

    err = cli.fails(1, "keys", "renew", app_key, "--now")
    assert app_key in err and "pending" in err and "finish or undo" in err
    assert await works(local, app_key, t0) and await works(local, app_key, t1)

    assert cli.ok("keys", "finish-renewal", app_key).strip() == f"{app_key}: finish-renewal done"
    assert not await works(local, app_key, t0)
    assert await works(local, app_key, t1)
    err = cli.fails(1, "keys", "finish-renewal", app_key)
    assert "no token renewal is pending" in err and app_key in err
    assert await works(local, app_key, t1)

    t2, out = cli.renew(app_key, "--now")
    assert "The old token no longer works." in out
    assert not await works(local, app_key, t1)
    assert await works(local, app_key, t2)

    t3, _ = cli.renew(app_key)
    assert cli.ok("keys", "undo-renewal", app_key).strip() == f"{app_key}: undo-renewal done"
    assert not await works(local, app_key, t3)
    assert await works(local, app_key, t2)
    record = await local.store.get_key("acme", app_key)
    assert record is not None and record.new_token_created is None
    err = cli.fails(1, "keys", "undo-renewal", app_key)
    assert "no token renewal is pending" in err and app_key in err

    audit_json = cli.ok("audit", "--account", "acme", "--json")
    events = [json.loads(line) for line in audit_json.splitlines()]
    assert [e["action"] for e in events] == [
        "token.undo-renewal", "token.renew", "token.renew-now", "token.finish-renewal",
        "token.renew", "key.create",
    ]
    for event in events:
        assert event["actor"] == "cli" and event["target"] == app_key
        assert event["account"] == "acme"
    undo, renew3, renew_now, finish, renew1, create = events
    assert set(renew1["after"]) == {"creationDateNewToken"} and renew1["before"] == {}
    assert set(finish["before"]) == {"creationDateToken", "creationDateNewToken"}
    assert finish["after"]["creationDateToken"] == finish["before"]["creationDateNewToken"]
    assert renew_now["after"]["creationDateToken"] > renew_now["before"]["creationDateToken"]
    assert set(undo["before"]) == {"creationDateNewToken"} and undo["after"] == {}
    assert create["after"]["roles"] == ["owner"]

    renewals = cli.audit("--action", "token.renew")
    assert [e["id"] for e in renewals] == [renew3["id"], renew1["id"]]

    plain = cli.ok("audit", "--account", "acme", "--limit", "2").splitlines()
    assert len(plain) == 2
    assert "token.undo-renewal" in plain[0] and app_key in plain[0] and "by cli" in plain[0]
    assert "token.renew " in plain[1]

    # no token and no digest in any audit output or any error output
    everything = audit_json + "\n".join(plain) + "\n".join(cli.stderr)
    for token in (t0, t1, t2, t3):
        assert token not in everything
        assert local.hasher.digest(token) not in everything


async def test_renew_refused_while_a_link_is_unopened(cli, local):
    issued = await local.lifecycle.create("acme", "linked", ["orders-reader"], CLI_ACTOR,
                                          delivery="link")
    app_key = issued.record.app_key
    err = cli.fails(1, "keys", "renew", app_key)
    assert app_key in err and "link" in err and "unopened" in err
    assert issued.link_secret is not None
    opened = await local.lifecycle.open_link(issued.link_secret)
    assert opened is not None and await works(local, app_key, opened.token)
    new, _ = cli.renew(app_key, "--now")
    assert await works(local, app_key, new)
    assert not await works(local, app_key, opened.token)
    events, _ = await local.store.audit_events("acme")
    assert [e.action for e in events] == ["token.renew-now", "token.link-opened", "key.create"]


def test_unknown_and_malformed_keys(cli):
    missing = "kgk-acme-0000000000"
    for command in (("renew", missing, "--now"), ("undo-renewal", missing)):
        err = cli.fails(1, "keys", *command)
        assert f"no API key {missing} in account acme" in err
    # not a key of this deployment: no such key either (1), not a configuration error
    err = cli.fails(1, "keys", "finish-renewal", "not-a-key")
    assert err == "keygate: no API key not-a-key\n"


async def test_a_key_of_another_account_is_renewed_in_its_own_account(cli, local):
    issued = await local.lifecycle.create("beta", "b", ["orders-reader"], CLI_ACTOR)
    app_key = issued.record.app_key
    cli.renew(app_key)
    out = cli.ok("audit", "--account", "beta", "--json", "--action", "token.renew")
    assert [json.loads(line)["target"] for line in out.splitlines()] == [app_key]
    assert (await local.store.audit_events("acme"))[0] == []
    record = await local.store.get_key("beta", app_key)
    assert record is not None and record.new_token_created is not None


def test_audit_refuses_the_memory_store(cli_env):
    cli = Cli({**cli_env, "KEYGATE_STORE_URL": "memory://"})
    err = cli.fails(2, "audit", "--account", "acme")
    assert "store_url" in err
