"""The command line in-process: ``gateway.cli.main([...])`` on the private Redis, its
exit statuses and what it prints (tests/test_cli.py runs one of each family as an
operator does, in a subprocess; these cover the rest without paying for one each).

Whether a change took effect is asked of an in-process gateway on the same store
(real store, real hasher, real Casbin), never of the store directly. A command runs
its own event loop, so from an async test it runs in a thread.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import Ran

from gateway.app import build_gateway
from gateway.context import Gateway
from gateway.demo import DemoPorts, demo_settings
from gateway.errors import ConfigError, Forbidden, Unauthorized
from gateway.sessions.service import SigningKeysUnavailable
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR, KeyQuery
from gateway.views import iso


@pytest.fixture(autouse=True)
def _restored_logging(restored_logging: None) -> None:
    """Every test here runs main(), which sets up logging."""


@pytest.fixture
async def local(env: dict[str, str]) -> AsyncIterator[Gateway]:
    gw = build_gateway(load_settings(env=env))
    yield gw
    await gw.close()


async def in_thread(cli: Callable[..., Ran], *argv: str) -> Ran:
    return await asyncio.to_thread(cli, *argv)


async def allowed(gw: Gateway, app_key: str, token: str, action: str = "read") -> bool:
    headers = {"X-API-AppKey": app_key, "X-API-AppToken": token}
    try:
        await gw.pipeline.check(headers, "acme", "orders", action)
    except (Unauthorized, Forbidden):
        return False
    return True


# -- the parser: version, help, usage errors ---------------------------------------------
def test_version_is_the_installed_distributions(cli):
    ran = cli("--version")
    assert ran.code == 0
    assert ran.out == f"keygate {importlib.metadata.version('keygate')}\n"


@pytest.mark.parametrize("argv", [("--help",), ("keys", "delete", "--help")])
def test_help_documents_the_exit_statuses(cli, argv):
    ran = cli(*argv)
    assert ran.code == 0
    assert "exit status:\n  0  done\n  1  refused, or what the command names does not exist" \
        in ran.out
    assert "  2  bad configuration or usage" in ran.out


@pytest.mark.parametrize("argv", [
    (),
    ("keys", "create", "--account", "Not_An_Account", "--label", "x"),
    ("external-keys", "list", "--account", "-"),
    ("audit", "--account", "acme", "--limit", "0"),
    ("settings", "set", "--account", "acme", "--renewal-period-months", "4"),
    ("settings", "set", "--account", "acme"),
    ("demo", "--proxy-port", "70000"),
    ("external-keys", "update", "--account", "acme", "kgk-beta-0000000000", "--status", "gone"),
])
def test_usage_errors_exit_2(cli, argv):
    assert cli(*argv).code == 2


def test_serve_with_no_workers_is_a_usage_error(cli, env):
    ran = cli("serve", "--workers", "0")
    assert (ran.code, ran.err) == (2, "keygate: --workers: give 1 or more worker processes\n")


EXPLAIN = ("policy", "explain", "--account", "acme", "--resource", "orders", "--action",
           "read", "--role", "orders-reader")


@pytest.mark.parametrize(("argv", "argument"), [
    (("--config", "", "policy", "check"), "--config"),
    (("--config=", "demo"), "--config"),
    (("policy", "check", ""), "DIR"),
    (("policy", "test", "--policies", ""), "--policies"),
    (("policy", "test", "--policies="), "--policies"),
    (("policy", "test", ""), "FILE"),
    ((*EXPLAIN, "--policies", ""), "--policies"),
    (("policy", "diff", "", "policies"), "OLD"),
    (("policy", "diff", "policies", ""), "NEW"),
    (("export", "--account", "acme", "-o", ""), "-o/--output"),
])
def test_an_empty_path_is_a_usage_error_naming_the_argument(cli, monkeypatch, argv, argument):
    """``Path("")`` is the current directory: ``--policies ""`` and ``policy check ""``
    fell back to the policies_dir setting and checked it (exit 0), ``policy diff ""``
    read the directory the command ran in, and an empty ``--config`` was a "config
    file ." error. Each is argparse's usage error now, before anything runs."""
    monkeypatch.delenv("KEYGATE_CONFIG", raising=False)
    ran = cli(*argv)
    assert ran.code == 2, (ran.out, ran.err)
    assert ran.out == ""
    usage, error = ran.err.rstrip("\n").rsplit("\n", 1)
    assert usage.startswith("usage: keygate"), ran.err
    expected = "the TOML config file's path" if argument == "--config" else (
        "a path (for the current directory, write '.')")
    assert f"error: argument {argument}: empty; give {expected}" in error, ran.err


def test_an_empty_keygate_config_is_the_same_usage_error(cli, monkeypatch, tmp_path):
    """``--config`` defaults to ``$KEYGATE_CONFIG``: an empty one is an empty path,
    unless ``--config`` names a file."""
    monkeypatch.setenv("KEYGATE_CONFIG", "")
    ran = cli("policy", "check")
    assert ran.code == 2 and ran.out == "", ran.err
    assert "error: argument --config: empty; give the TOML config file's path" in ran.err
    assert "KEYGATE_CONFIG" in ran.err
    config = tmp_path / "keygate.toml"
    config.write_text("routes = []\n")
    ran = cli("--config", str(config), "policy", "check")
    assert ran.code == 0, ran.err
    assert "0 errors" in ran.out


def test_config_is_taken_after_the_command_too(cli, monkeypatch, tmp_path):
    """``keygate policy check --config FILE`` as well as ``keygate --config FILE policy
    check``: the routes of the file given after the command are checked, and it wins
    over one given before and over ``$KEYGATE_CONFIG``."""
    monkeypatch.delenv("KEYGATE_CONFIG", raising=False)
    with_routes = tmp_path / "routes.toml"
    with_routes.write_text('[[routes]]\nname = "o"\npath_prefix = "/orders"\n'
                           'upstream = "http://127.0.0.1:9"\nresource = "orders"\n'
                           'account = "acme"\n')
    without = tmp_path / "empty.toml"
    without.write_text("routes = []\n")
    for argv in (("policy", "check", "--config", str(with_routes)),
                 ("--config", str(without), "policy", "check", "--config", str(with_routes))):
        ran = cli(*argv)
        assert ran.code == 0, ran.err
        assert "routes OK: 1 (o)" in ran.out and "resource 'catalog'" in ran.out, ran.out
    monkeypatch.setenv("KEYGATE_CONFIG", str(without))
    ran = cli("policy", "check", "--config", str(with_routes))
    assert "routes OK: 1 (o)" in ran.out, ran.out
    ran = cli("policy", "check")
    assert "routes: none configured" in ran.out, ran.out
    ran = cli("policy", "check", "--config", str(tmp_path / "missing.toml"))
    assert ran.code == 2 and "missing.toml" in ran.err, ran.err


def test_a_path_argument_that_is_not_empty_still_counts(cli, monkeypatch, tmp_path):
    """The check is for emptiness only: '.' is the current directory, as written."""
    monkeypatch.delenv("KEYGATE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    ran = cli("policy", "check", ".")
    assert ran.code == 2, ran.err  # no policy files here: the command itself says so
    assert "argument" not in ran.err and "usage:" not in ran.err, ran.err


# -- keys that are not there -----------------------------------------------------------
CHANGES = [("activate",), ("deactivate",), ("delete",), ("renew",), ("renew", "--now"),
           ("finish-renewal",), ("undo-renewal",)]


@pytest.mark.parametrize("command", CHANGES)
def test_a_key_that_does_not_exist_is_no_api_key_exit_1(cli, env, command):
    name, *flags = command
    for app_key, where in (
        ("not-a-key", ""),  # not even shaped like one of this deployment's keys
        ("xyz-acme-0000000000", ""),  # another deployment's prefix
        ("kgk-acme-0000000000", " in account acme"),  # well-formed, never issued
    ):
        ran = cli("keys", name, app_key, *flags)
        assert (ran.code, ran.out) == (1, ""), (command, app_key)
        assert ran.err == f"keygate: no API key {app_key}{where}\n"


def test_a_key_name_cannot_write_to_the_operators_terminal(cli, env):
    ran = cli("keys", "delete", "\x1b]0;owned\x07\x1b[2J")
    assert ran.code == 1
    assert "\x1b" not in ran.err and "\x07" not in ran.err
    assert ran.err == "keygate: no API key '\\x1b]0;owned\\x07\\x1b[2J'\n"


# -- --json everywhere data is printed -------------------------------------------------
async def test_keys_commands_print_json_rows_without_digests(cli, local):
    created = (await in_thread(cli, "keys", "create", "--account", "acme", "--label", "j",
                               "--role", "orders-reader", "--json")).json()
    app_key, token = created["appKey"], created["appToken"]
    rows = [created]
    for argv in (("keys", "list", "--account", "acme", "--json"),
                 ("keys", "deactivate", app_key, "--json"),
                 ("keys", "activate", app_key, "--json"),
                 ("keys", "renew", app_key, "--json"),
                 ("keys", "undo-renewal", app_key, "--json"),
                 ("keys", "renew", app_key, "--json"),
                 ("keys", "finish-renewal", app_key, "--json")):
        ran = await in_thread(cli, *argv)
        assert ran.code == 0, (argv, ran.err)
        rows.append(ran.json())
    created_, listed, off, on, renewed, undone, renewed_again, finished = rows
    assert [row["appKey"] for row in listed] == [app_key] and "appToken" not in listed[0]
    assert (off["status"], on["status"]) == ("inactive", "active")
    assert renewed["appToken"] != token and renewed["creationDateNewToken"] is not None
    assert undone["creationDateNewToken"] is None and "appToken" not in undone
    assert finished["creationDateToken"] == renewed_again["creationDateNewToken"]
    assert await allowed(local, app_key, renewed_again["appToken"])
    assert not await allowed(local, app_key, token)
    ran = await in_thread(cli, "keys", "delete", app_key, "--json")
    assert ran.json() == {"appKey": app_key, "deleted": True}
    everything = json.dumps(rows)
    for secret in (token, renewed["appToken"], renewed_again["appToken"]):
        assert local.hasher.digest(secret) not in everything


def test_policy_check_json_names_the_roles_and_routes(cli, tmp_path):
    config = tmp_path / "keygate.toml"
    config.write_text('[[routes]]\nname = "orders"\npath_prefix = "/orders"\n'
                      'upstream = "http://127.0.0.1:9"\naccount = "acme"\nresource = "orders"\n')
    ran = cli("--config", str(config), "policy", "check", "--json")
    assert ran.code == 0
    checked = ran.json()
    assert checked["routes"] == ["orders"]
    assert {"owner", "orders-reader"} <= set(checked["policy"]["roles"])
    assert "routes OK: 1 (orders)" in cli("--config", str(config), "policy", "check").out


def test_policy_check_refuses_routes_that_serve_would_refuse(cli, tmp_path):
    config = tmp_path / "keygate.toml"
    config.write_text('[[routes]]\nname = "files"\npath_prefix = "/files"\n'
                      'upstream = "ftp://127.0.0.1:21"\naccount = "acme"\nresource = "files"\n')
    ran = cli("--config", str(config), "policy", "check")
    assert (ran.code, ran.out) == (2, "")
    assert "routes[0].upstream" in ran.err and "ftp://" in ran.err


# -- external keys ---------------------------------------------------------------------
async def test_external_keys_grant_change_and_remove_through_the_cli(cli, local):
    partner = await local.lifecycle.create("beta", "partner", ["owner"], CLI_ACTOR)
    app_key, token = partner.record.app_key, partner.token
    assert token is not None
    assert not await allowed(local, app_key, token)

    ran = await in_thread(cli, "external-keys", "add", "--account", "acme", app_key,
                          "--role", "orders-reader", "--label", "partner", "--json")
    assert ran.code == 0, ran.err
    added = ran.json()
    assert added | {"addedDate": None} == {
        "appKey": app_key, "label": "partner", "roles": ["orders-reader"],
        "status": "active", "account": "beta", "addedDate": None,
    }
    assert await allowed(local, app_key, token)
    assert not await allowed(local, app_key, token, "write")

    listed = await in_thread(cli, "external-keys", "list", "--account", "acme", "--json")
    assert listed.json() == [added]
    text = (await in_thread(cli, "external-keys", "list", "--account", "acme")).out
    assert app_key in text and "beta" in text and "orders-reader" in text

    ran = await in_thread(cli, "external-keys", "update", "--account", "acme", app_key,
                          "--status", "inactive", "--json")
    assert ran.json()["status"] == "inactive"
    assert not await allowed(local, app_key, token)
    ran = await in_thread(cli, "external-keys", "update", "--account", "acme", app_key,
                          "--status", "active", "--role", "orders-writer")
    assert ran.code == 0 and "orders-writer" in ran.out
    assert await allowed(local, app_key, token, "write")

    ran = await in_thread(cli, "external-keys", "remove", "--account", "acme", app_key)
    assert ran.code == 0
    assert not await allowed(local, app_key, token)
    ran = await in_thread(cli, "external-keys", "remove", "--account", "acme", app_key)
    assert (ran.code, ran.err) == (
        1, f"keygate: {app_key} is not an external key of account acme\n"
    )
    events, _ = await local.store.audit_events("acme")
    assert [(e.action, e.actor) for e in events if e.action.startswith("external-key")] == [
        ("external-key.remove", "cli"), ("external-key.update", "cli"),
        ("external-key.update", "cli"), ("external-key.add", "cli"),
    ]


async def test_external_key_refusals(cli, local):
    partner = await local.lifecycle.create("beta", "partner", ["owner"], CLI_ACTOR)
    own = await local.lifecycle.create("acme", "own", ["owner"], CLI_ACTOR)
    key = partner.record.app_key

    async def add(*argv: str) -> Ran:
        return await in_thread(cli, "external-keys", "add", "--account", "acme", *argv)

    assert (await add(key, "--role", "orders-reader")).code == 0
    again = await add(key, "--role", "orders-reader")
    assert again.code == 1 and "already an external key of account acme" in again.err
    mine = await add(own.record.app_key, "--role", "orders-reader")
    assert mine.code == 1 and "belongs to account acme itself" in mine.err
    for missing in ("kgk-beta-0000000000", "not-a-key"):
        ran = await add(missing, "--role", "orders-reader")
        assert (ran.code, ran.err) == (1, f"keygate: no API key {missing}\n")
    no_roles = await add(key)  # the roles are what a grant is: required
    assert no_roles.code == 2 and "the following arguments are required: --role" in no_roles.err
    unknown_role = await add(key, "--role", "emperor")
    assert unknown_role.code == 2 and "'emperor' is not a role" in unknown_role.err
    bad_label = await add(key, "--role", "orders-reader", "--label", "evil\x1b[2J")
    assert bad_label.code == 2 and "--label" in bad_label.err and "\x1b" not in bad_label.err
    nothing = await in_thread(cli, "external-keys", "update", "--account", "acme", key)
    assert nothing.code == 2 and "at least one of --label, --role, --status" in nothing.err
    stranger = await in_thread(cli, "external-keys", "update", "--account", "gamma", key,
                               "--status", "inactive")
    assert (stranger.code, stranger.err) == (
        1, f"keygate: {key} is not an external key of account gamma\n"
    )


# -- the store's layout -----------------------------------------------------------------
async def test_a_first_command_records_a_new_stores_layout_and_a_newer_one_is_left_alone(
    cli, local
):
    """``keys create`` on a new store used to leave it unrecorded, so that ``serve`` then
    warned that migrate had work to do; and a command of an older keygate wrote into a
    store a later one had migrated. As ``serve`` does: a new store is recorded in this
    keygate's layout, a newer one is refused (exit 2) before anything is written."""
    from gateway.store import LAYOUT

    assert (await local.store.layout()).store is None
    ran = await in_thread(cli, "keys", "create", "--account", "acme", "--label", "first",
                          "--role", "owner")
    assert ran.code == 0, ran.err
    assert (await local.store.layout()).store == LAYOUT
    records = local.store.redis
    await records.set(local.store.names.layout_record, LAYOUT + 1)
    keys_before = await local.store.list_keys("acme", KeyQuery())
    ran = await in_thread(cli, "keys", "create", "--account", "acme", "--label", "second",
                          "--role", "owner")
    assert ran.code == 1 and f"layout ({LAYOUT + 1}) is newer" in ran.err, ran.err
    assert "nothing was written" in ran.err
    assert await local.store.list_keys("acme", KeyQuery()) == keys_before


# -- account settings ------------------------------------------------------------------
async def test_account_settings_get_and_set(cli, local, tmp_path):
    # an account keygate knows nothing of is not answered with defaults, nor made by a
    # setting or an export (a misspelt account): exit 1, nothing written
    for argv in (("settings", "get", "--account", "acme"),
                 ("settings", "set", "--account", "acme", "--renewal-period-months", "6"),
                 ("export", "--account", "acme", "-o", str(tmp_path / "x.xlsx"))):
        ran = await in_thread(cli, *argv)
        assert (ran.code, ran.out) == (1, ""), ran.err
        assert ran.err == ("keygate: no account acme (it holds no keys, grants no external "
                           "keys and has no settings)\n")
    assert not (tmp_path / "x.xlsx").exists()
    assert not await local.store.account_exists("acme")
    assert (await local.store.audit_events("acme"))[0] == []
    await local.lifecycle.create("acme", "first", ["owner"], CLI_ACTOR)
    ran = await in_thread(cli, "settings", "get", "--account", "acme", "--json")
    assert ran.json() == {"renewalPeriodMonths": 3}
    ran = await in_thread(cli, "settings", "set", "--account", "acme",
                          "--renewal-period-months", "6", "--json")
    assert ran.json() == {"renewalPeriodMonths": 6}
    ran = await in_thread(cli, "settings", "get", "--account", "acme")
    assert ran.out == "account acme: renewal reminder after 6 months (renewalPeriodMonths)\n"
    assert await local.store.get_settings("acme") == {"renewalPeriodMonths": "6"}
    events, _ = await local.store.audit_events("acme")
    assert [(e.action, e.actor) for e in events][0] == ("settings.update", "cli")
    # without a subcommand, `settings` is still the reference (README, test_docs)
    assert cli("settings").out.startswith("| setting | environment | default | meaning |")


# -- demo ------------------------------------------------------------------------------
def test_demo_explains_a_busy_upstream_port(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = cli("demo", "--upstream-port", str(port), "--proxy-port", "0",
                  "--management-port", "0")
    assert (ran.code, ran.out) == (2, "")
    assert f"cannot listen on 127.0.0.1:{port}" in ran.err
    assert "choose another port with --upstream-port" in ran.err


def test_demo_explains_a_busy_proxy_port(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = cli("demo", "--upstream-port", "0", "--proxy-port", str(port),
                  "--management-port", "0")
    assert (ran.code, ran.out) == (2, "")
    assert f"setting proxy_listen: cannot listen on 127.0.0.1:{port}" in ran.err
    assert "choose another port with --proxy-port" in ran.err


def test_demo_ports_and_metrics(tmp_path: Path):
    from gateway.demo import DEMO_CONFIG

    settings = load_settings(DEMO_CONFIG, env={})
    default = demo_settings(settings, DemoPorts(), 9000)
    assert default.metrics_listen is None  # the demo takes no port it was not given
    assert default.proxy_listen == settings.proxy_listen
    assert {route["upstream"] for route in default.routes} == {"http://127.0.0.1:9000"}
    chosen = demo_settings(settings, DemoPorts(9001, 8180, 8181, 9118), 9001)
    assert (chosen.proxy_listen, chosen.management_listen, chosen.metrics_listen) == (
        ("127.0.0.1", 8180), ("127.0.0.1", 8181), ("127.0.0.1", 9118)
    )
    configured = load_settings(DEMO_CONFIG, env={"KEYGATE_METRICS_LISTEN": "127.0.0.1:9200"})
    assert demo_settings(configured, DemoPorts(), 9000).metrics_listen == ("127.0.0.1", 9200)


# -- export ----------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["csv", "xlsx"])
def test_export_to_a_path_that_cannot_be_written_is_a_usage_error(cli, env, tmp_path, form):
    assert cli("keys", "create", "--account", "acme", "--label", "k", "--role", "owner").code == 0
    target = tmp_path / "missing-dir" / f"keys.{form}"
    ran = cli("export", "--account", "acme", "--format", form, "-o", str(target))
    assert ran.code == 2 and "--output" in ran.err and str(target) in ran.err
    assert "Traceback" not in ran.err and len(ran.err.splitlines()) == 1, ran.err


def test_export_to_xlsx_writes_a_workbook_both_sheets(cli, env, tmp_path):
    import zipfile

    assert cli("keys", "create", "--account", "acme", "--label", "k", "--role", "owner").code == 0
    target = tmp_path / "keys.xlsx"
    ran = cli("export", "--account", "acme", "-o", str(target))
    assert ran.code == 0, ran.err
    with zipfile.ZipFile(target) as workbook:
        assert {"xl/worksheets/sheet1.xml", "xl/worksheets/sheet2.xml"} <= set(
            workbook.namelist())
    # --sheet is the CSV's choice: with the workbook it is a mistake, said before any work
    ran = cli("export", "--account", "acme", "--sheet", "external", "-o", str(tmp_path / "y"))
    assert ran.code == 2 and "--sheet: CSV only" in ran.err
    assert not (tmp_path / "y").exists()
    ran = cli("export", "--account", "acme", "--format", "csv", "--sheet", "external",
              "-o", str(tmp_path / "ext.csv"))
    assert ran.code == 0 and (tmp_path / "ext.csv").stat().st_size > 0


# -- jwt rotate --------------------------------------------------------------------------
async def test_jwt_rotate_adds_a_key_that_a_running_instance_signs_with(cli, local, env):
    local.start()
    first = (await local.sessions.ready()).current.kid
    ran = await in_thread(cli, "jwt", "rotate", "--json")
    assert ran.code == 0, ran.err
    rotated = ran.json()
    assert rotated["previous"] == first and rotated["kid"] != first
    assert rotated["keys"] == [first, rotated["kid"]]  # published, not signing yet
    assert rotated["signsFrom"] > iso(int(time.time() + 300) * 1000)
    for _ in range(200):  # heard on the invalidation channel
        if rotated["kid"] in local.sessions.ring.keys:
            break
        await asyncio.sleep(0.01)
    assert local.sessions.ring.current.kid == first
    assert [k["kid"] for k in local.sessions.jwks()["keys"]] == [first, rotated["kid"]]
    text = await in_thread(cli, "jwt", "rotate", "--now")
    assert text.code == 0 and text.out.startswith("new signing key "), text.err
    urgent = text.out.split()[3]
    for _ in range(200):
        if local.sessions.ring.current.kid == urgent:
            break
        await asyncio.sleep(0.01)
    assert local.sessions.ring.current.kid == urgent


async def test_a_new_server_secret_alone_is_refused_at_start_until_jwt_rotate(cli, local, env,
                                                                           monkeypatch):
    """The README's rotation of the server secret, done without `keygate jwt rotate` while
    the old line was still there: no stored signing key opens. keygate refuses to start
    saying to run it (it started, and answered logins, sessions and the JWKS with 500s),
    and `keygate jwt rotate`, which refused with the same advice, makes the key."""
    await local.sessions.ready()  # the first key, sealed under the old secret
    monkeypatch.setenv("KEYGATE_SECRET", "n" * 40)  # the new secret alone
    new_only = {**env, "KEYGATE_SECRET": "n" * 40}
    alone = build_gateway(load_settings(env=new_only))
    try:
        with pytest.raises(ConfigError, match="run `keygate jwt rotate`"):
            await alone.sessions.check_at_start()
        with pytest.raises(SigningKeysUnavailable):  # a request: 503, never a 500
            await alone.sessions.ready()
    finally:
        await alone.close()
    ran = await in_thread(cli, "jwt", "rotate", "--json")
    assert ran.code == 0, ran.err
    assert ran.json()["previous"] is None
    again = build_gateway(load_settings(env=new_only))
    try:
        await again.sessions.check_at_start()
        assert (await again.sessions.ready()).current.kid == ran.json()["kid"]
    finally:
        await again.close()


async def test_jwt_rotate_is_refused_when_the_keys_come_from_files(cli, env, tmp_path,
                                                                   monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (tmp_path / "k.pem").write_bytes(pem)
    monkeypatch.setenv("KEYGATE_JWT_PRIVATE_KEY_FILES", str(tmp_path / "k.pem"))
    ran = await in_thread(cli, "jwt", "rotate")
    assert ran.code == 1 and "jwt_private_key_files" in ran.err


def _pem(private_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


@pytest.mark.parametrize("made", ["p384", "rsa", "missing"])
async def test_a_signing_key_file_that_does_not_load_is_a_configuration_error(
        cli, env, tmp_path, monkeypatch, made):
    """A P-384, an RSA or a missing file in jwt_private_key_files: `jwt rotate` exits 2
    with serve's `configuration error:` line (it said `keygate: setting …` and exited 1,
    as if the store had refused), and writes no key."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    named = tmp_path / "k.pem"
    if made == "p384":
        named.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    elif made == "rsa":
        named.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    monkeypatch.setenv("KEYGATE_JWT_PRIVATE_KEY_FILES", str(named))
    monkeypatch.setenv("KEYGATE_PROXY_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("KEYGATE_MANAGEMENT_LISTEN", "127.0.0.1:0")
    served = await in_thread(cli, "serve")
    assert served.code == 2
    error = served.err.splitlines()[-1]  # after serve's log lines
    assert error.startswith("keygate: configuration error: setting jwt_private_key_files: ")
    for argv in (("jwt", "rotate"), ("jwt", "rotate", "--json"),
                 ("jwt", "rotate", "--format", "json")):
        ran = await in_thread(cli, *argv)
        assert ran.code == 2, (argv, ran.err)
        assert ran.err.splitlines() == [error], argv
    gw = build_gateway(load_settings(env=env))  # nothing was stored
    try:
        assert await gw.store.signing_keys() == []
    finally:
        await gw.close()


async def test_jwt_rotate_says_when_the_previous_key_may_be_dropped(cli, local, env,
                                                                    monkeypatch):
    """`--format json` as the policy commands take it (and `--json`, as before), with
    the previous key's last signing time and the time after which no token it signed
    can still be valid: that plus the longest token lifetime (session_ttl, identity
    token lifetime) and jwt_leeway, when keygate drops it from the JWKS."""
    monkeypatch.setenv("KEYGATE_SESSION_TTL", "3600")
    monkeypatch.setenv("KEYGATE_IDENTITY_TOKEN_TTL", "7200")  # the longest lifetime
    monkeypatch.setenv("KEYGATE_JWT_LEEWAY", "30")
    first = (await local.sessions.ready()).current.kid
    ran = await in_thread(cli, "jwt", "rotate", "--format", "json")
    assert ran.code == 0, ran.err
    rotated = ran.json()
    assert rotated["previous"] == first
    assert rotated["previousSignsUntil"] == rotated["signsFrom"]
    signs_from = datetime.fromisoformat(rotated["signsFrom"])
    until = datetime.fromisoformat(rotated["previousVerifiesUntil"])
    # 7200 s and the leeway (keygate's own bound: a whole second over it, never under)
    assert until - signs_from == timedelta(seconds=7200 + 30 + 1)
    # the previous key stays published exactly until then, and not a second longer
    checked = build_gateway(load_settings(env={**env, "KEYGATE_SESSION_TTL": "3600",
                                               "KEYGATE_IDENTITY_TOKEN_TTL": "7200",
                                               "KEYGATE_JWT_LEEWAY": "30"}))
    try:
        ring = await checked.sessions.ready()
        dropped_at = int(until.timestamp())
        assert first in ring.at(dropped_at - 1).keys
        assert first not in ring.at(dropped_at).keys
    finally:
        await checked.close()

    # --now: the key that signs now (the first: the new one has not started) stops
    # signing at once, and is dropped as long after that
    text = await in_thread(cli, "jwt", "rotate", "--now", "--format", "text")
    assert text.code == 0, text.err
    urgent = text.out.split()[3]
    assert f"; {first} signs until " in text.out and "may be dropped after that" in text.out
    stopped = datetime.fromisoformat(text.out.split(f"{first} signs until ")[1].split()[0])
    shown = datetime.fromisoformat(text.out.split(" verifies until ")[1].split()[0])
    assert stopped < signs_from and shown - stopped == timedelta(seconds=7231)
    again = await in_thread(cli, "jwt", "rotate", "--json")  # --json prints JSON as before
    assert again.code == 0 and again.json()["previous"] == urgent


@pytest.mark.parametrize("argv", [
    ("keys", "list", "--json"),  # a required option missing
    ("settings", "set", "--account", "acme", "--renewal-period-months", "4", "--json"),
    ("keys", "create", "--account", "a b", "--label", "x", "--json"),
    ("policy", "explain", "--account", "acme", "--resource", "r", "--action", "a",
     "--format", "json"),  # neither --role nor --key
    ("policy", "check", "--format=json", "--no-such-option"),
])
def test_a_usage_error_of_a_command_asked_for_json_is_a_json_document_too(cli, argv):
    """argparse's own refusals as well as keygate's: the CI step parsing the output gets
    a document; the person reading standard error gets argparse's usage."""
    ran = cli(*argv)
    assert ran.code == 2
    error = json.loads(ran.out)["error"]
    assert error["exitStatus"] == 2 and error["message"]
    assert "usage: keygate" in ran.err or error["message"] in ran.err


def test_a_usage_error_without_json_prints_nothing_on_standard_output(cli):
    ran = cli("keys", "list")
    assert (ran.code, ran.out) == (2, "") and "--account" in ran.err
