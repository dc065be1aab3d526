"""Every change of keys, grants and account settings goes through gateway.lifecycle.

Statically: no module of the gateway package outside gateway/store/ and
gateway/lifecycle.py calls a store change method (checked on the source with ``ast``;
the checker is itself shown to find such a call). By behaviour: the input checks both
callers rely on (labels, roles, statuses, changes, settings, deliveries) are the
lifecycle's, refuse with its typed error before anything is written, and the management
API and the CLI each turn the same refusal into their own error. Real store (the private
redis-server), real policies.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli_store import UsageError, usage_error
from gateway.context import Gateway
from gateway.lifecycle import (
    BadInput,
    UnknownRole,
    checked_changes,
    checked_label,
    checked_roles,
    checked_setting,
)
from gateway.store import (
    CLI_ACTOR,
    GrantExists,
    KeyChanged,
    KeyNotFound,
    KeyQuery,
    LastOwnerKey,
    NoRenewalPending,
    OwnKey,
)

GATEWAY_PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
CHANGE_METHODS = frozenset({
    "create_key", "update_key", "delete_key", "renew_token", "end_renewal",
    "add_grant", "update_grant", "remove_grant", "put_setting",
})


# -- the one path, statically ----------------------------------------------------------
def store_changes(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, expression) of every store change method named in ``source``: an
    attribute in CHANGE_METHODS of an expression whose text contains "store", called or
    merely taken (``change = gateway.store.update_key`` would bypass the path as well)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr in CHANGE_METHODS:
            receiver = ast.unparse(node.value)
            if "store" in receiver.lower():
                found.append((node.lineno, f"{receiver}.{node.attr}"))
    return sorted(found)


def modules_outside_the_path() -> list[Path]:
    """The gateway package's modules that must change the store through the lifecycle."""
    store = GATEWAY_PACKAGE / "store"
    return sorted(
        path for path in GATEWAY_PACKAGE.rglob("*.py")
        if store not in path.parents and path != GATEWAY_PACKAGE / "lifecycle.py"
    )


def test_no_module_changes_the_store_but_through_the_lifecycle():
    modules = modules_outside_the_path()
    names = {path.relative_to(GATEWAY_PACKAGE).as_posix() for path in modules}
    # the callers this is about are among the modules read (the scan is not empty)
    assert {"cli_store.py", "management/keys.py", "management/external_keys.py",
            "management/account_settings.py", "demo.py"} <= names
    bypasses = [
        f"{path.relative_to(GATEWAY_PACKAGE.parent)}:{line}: {call}"
        for path in modules
        for line, call in store_changes(path.read_text(encoding="utf-8"), str(path))
    ]
    assert bypasses == [], "change the store through gateway.lifecycle:\n" + "\n".join(bypasses)


def test_the_checker_finds_a_store_change_and_nothing_else():
    source = '''
async def handler(request, gateway, store):
    await gateway.store.update_key("acme", "k", status="inactive")
    await request.app[GATEWAY].store.put_setting("acme", "renewalPeriodMonths", 6, actor)
    remove = self.store.remove_grant
    await store.create_key("k", "acme", "label", [], "digest")
    await gateway.lifecycle.update("acme", "k", actor=actor, policy=policy, status="active")
    await gateway.store.get_key("acme", "k")
    await lifecycle.put_setting("acme", "renewalPeriodMonths", 6, actor)
'''
    assert store_changes(source) == [
        (3, "gateway.store.update_key"),
        (4, "request.app[GATEWAY].store.put_setting"),
        (5, "self.store.remove_grant"),
        (6, "store.create_key"),
    ]
    # and it reads the lifecycle itself as the store's caller it is
    lifecycle = (GATEWAY_PACKAGE / "lifecycle.py").read_text(encoding="utf-8")
    assert {call for _, call in store_changes(lifecycle)} == {
        f"self.store.{method}" for method in CHANGE_METHODS
    }


# -- the checks, without the store -----------------------------------------------------
@pytest.mark.parametrize(("label", "message"), [
    ("", "non-empty"), ("   ", "non-empty"), ("x" * 201, "at most 200"), (7, "non-empty"),
    ("evil\x1b[2J", "control characters"), ("two\nlines", "control characters"),
])
def test_bad_labels_are_refused_with_the_field_and_code(label, message):
    with pytest.raises(BadInput, match=message) as refused:
        checked_label(label)
    assert (refused.value.field, refused.value.code) == ("label", "bad_label")
    assert isinstance(refused.value, ValueError)  # what older callers catch


def test_roles_are_deduplicated_and_checked_against_the_policy(gateway: Gateway):
    policy = gateway.policy
    assert checked_roles(["orders-reader", "owner", "orders-reader"], policy) == [
        "orders-reader", "owner"]
    with pytest.raises(UnknownRole) as refused:
        checked_roles(["orders-reader", "emperor", "czar"], policy)
    unknown = refused.value
    assert (unknown.field, unknown.code, unknown.role) == ("roles", "unknown_role", "emperor")
    assert unknown.defined == tuple(sorted(policy.roles)) and "owner" in unknown.defined
    for not_a_list in ("owner", ["owner", 3], None):
        with pytest.raises(BadInput) as malformed:
            checked_roles(not_a_list, policy)
        assert malformed.value.code == "bad_roles"


def test_changes_take_label_roles_status_and_at_least_one(gateway: Gateway):
    assert checked_changes({"label": "  new  ", "roles": ["owner", "owner"],
                            "status": "inactive"}, gateway.policy) == {
        "label": "new", "roles": ["owner"], "status": "inactive"}
    # without the policy (a command line checked before the store is reached) the role
    # names are kept for the change itself to check
    assert checked_changes({"roles": ["emperor"]}) == {"roles": ["emperor"]}
    refusals = {
        "empty_change": {},
        "bad_status": {"status": "retired"},
        "bad_label": {"label": "\x07"},
        "unknown_field": {"owner": "beta"},
    }
    for code, changes in refusals.items():
        with pytest.raises(BadInput) as refused:
            checked_changes(changes, gateway.policy)
        assert refused.value.code == code, changes
    with pytest.raises(UnknownRole):
        checked_changes({"roles": ["emperor"]}, gateway.policy)


@pytest.mark.parametrize(("name", "value", "code"), [
    ("renewalPeriodMonths", 4, "bad_renewal_period"),
    ("renewalPeriodMonths", True, "bad_renewal_period"),
    ("renewalPeriodMonths", 6.0, "bad_renewal_period"),
    ("renewalPeriodMonths", "6", "bad_renewal_period"),
    ("tokenLifetime", 6, "unknown_setting"),
])
def test_bad_settings_are_refused(name, value, code):
    with pytest.raises(BadInput) as refused:
        checked_setting(name, value)
    assert (refused.value.field, refused.value.code) == (name, code)


# -- the changes, on the store ---------------------------------------------------------
async def audit_actions(gateway: Gateway, account: str) -> list[str]:
    events, _ = await gateway.store.audit_events(account)
    return [event.action for event in events]


async def test_refused_input_writes_nothing(gateway: Gateway):
    life, policy = gateway.lifecycle, gateway.policy
    key = (await life.create("acme", "k", ["orders-reader"], CLI_ACTOR, policy=policy)).record
    partner = (await life.create("beta", "p", ["orders-reader"], CLI_ACTOR)).record
    grant = await life.add_external("acme", partner.app_key, None, ["orders-reader"],
                                    CLI_ACTOR, policy=policy)
    assert grant.label == ""
    before = (await audit_actions(gateway, "acme"),
              await gateway.store.get_key("acme", key.app_key),
              await gateway.store.get_grant("acme", partner.app_key))

    async def refused(code: str, change: Any) -> None:
        with pytest.raises(BadInput) as refusal:
            await change
        assert refusal.value.code == code

    await refused("bad_label", life.create("acme", "\x1b[31m", ["owner"], CLI_ACTOR))
    await refused("unknown_role", life.create("acme", "k2", ["emperor"], CLI_ACTOR,
                                              policy=policy))
    await refused("bad_delivery", life.create("acme", "k2", ["owner"], CLI_ACTOR, "mail"))
    await refused("unknown_role", life.update("acme", key.app_key, actor=CLI_ACTOR,
                                              policy=policy, roles=["owner", "emperor"]))
    await refused("bad_status", life.update("acme", key.app_key, actor=CLI_ACTOR,
                                            policy=policy, status="deleted"))
    await refused("empty_change", life.update("acme", key.app_key, actor=CLI_ACTOR,
                                              policy=policy))
    await refused("bad_delivery", life.renew("acme", key.app_key, CLI_ACTOR, delivery="mail"))
    await refused("bad_app_key", life.add_external("acme", "not-a-key", None, ["owner"],
                                                   CLI_ACTOR, policy=policy))
    await refused("bad_label", life.add_external("gamma", partner.app_key, " ", ["owner"],
                                                 CLI_ACTOR, policy=policy))
    await refused("unknown_role", life.update_external(
        "acme", partner.app_key, {"roles": ["emperor"]}, CLI_ACTOR, policy=policy))
    await refused("empty_change", life.update_external(
        "acme", partner.app_key, {}, CLI_ACTOR, policy=policy))
    await refused("bad_renewal_period", life.put_setting(
        "acme", "renewalPeriodMonths", 5, CLI_ACTOR))

    after = (await audit_actions(gateway, "acme"),
             await gateway.store.get_key("acme", key.app_key),
             await gateway.store.get_grant("acme", partner.app_key))
    assert after == before
    assert await audit_actions(gateway, "gamma") == []
    assert await gateway.store.get_settings("acme") == {}
    _, total = await gateway.store.list_keys("acme", KeyQuery(per_page=1000))
    assert total == 1


async def test_accepted_input_is_stored_as_checked(gateway: Gateway):
    life, policy = gateway.lifecycle, gateway.policy
    issued = await life.create("acme", "  spaced  ", ["owner", "orders-reader", "owner"],
                               CLI_ACTOR, policy=policy)
    assert (issued.record.label, issued.record.roles) == ("spaced", ("owner", "orders-reader"))
    changed = await life.update("acme", issued.record.app_key, actor=CLI_ACTOR, policy=policy,
                                label=" renamed ", roles=["orders-reader", "orders-reader"])
    assert changed is not None
    assert (changed.label, changed.roles) == ("renamed", ("orders-reader",))
    assert await life.put_setting("acme", "renewalPeriodMonths", 6, CLI_ACTOR) == 6
    assert await gateway.store.get_settings("acme") == {"renewalPeriodMonths": "6"}
    assert await audit_actions(gateway, "acme") == ["settings.update", "key.update",
                                                    "key.create"]


async def test_the_stores_answers_and_refusals_come_back_unchanged(gateway: Gateway):
    life, policy = gateway.lifecycle, gateway.policy
    owner = (await life.create("acme", "owner", ["owner"], CLI_ACTOR, policy=policy)).record
    partner = (await life.create("beta", "p", ["orders-reader"], CLI_ACTOR)).record
    missing = gateway.fmt.new_key("acme")

    assert await life.update("acme", missing, actor=CLI_ACTOR, policy=policy,
                             status="inactive") is None
    assert await life.delete("acme", missing, actor=CLI_ACTOR) is False
    assert await life.end_renewal("acme", missing, finish=True, actor=CLI_ACTOR) is None
    assert await life.update_external("acme", partner.app_key, {"status": "inactive"},
                                      CLI_ACTOR, policy=policy) is None
    assert await life.remove_external("acme", partner.app_key, CLI_ACTOR) is False

    with pytest.raises(KeyChanged):
        await life.update("acme", owner.app_key, actor=CLI_ACTOR, policy=policy,
                          label="x", expect_roles=["orders-reader"])
    with pytest.raises(LastOwnerKey):
        await life.update("acme", owner.app_key, actor=CLI_ACTOR, policy=policy,
                          status="inactive", keep_an_owner=True)
    with pytest.raises(LastOwnerKey):
        await life.delete("acme", owner.app_key, actor=CLI_ACTOR, keep_an_owner=True)
    with pytest.raises(NoRenewalPending):
        await life.end_renewal("acme", owner.app_key, finish=False, actor=CLI_ACTOR)
    with pytest.raises(OwnKey):
        await life.add_external("acme", owner.app_key, None, ["orders-reader"], CLI_ACTOR,
                                policy=policy)
    with pytest.raises(KeyNotFound):
        await life.add_external("acme", gateway.fmt.new_key("beta"), None, ["orders-reader"],
                                CLI_ACTOR, policy=policy)
    await life.add_external("acme", partner.app_key, "partner", ["orders-reader"], CLI_ACTOR,
                            policy=policy)
    with pytest.raises(GrantExists):
        await life.add_external("acme", partner.app_key, None, ["owner"], CLI_ACTOR,
                                policy=policy)
    with pytest.raises(KeyChanged):
        await life.remove_external("acme", partner.app_key, CLI_ACTOR, expect_roles=["owner"])
    # without the guards asked for, the same changes go through
    assert await life.remove_external("acme", partner.app_key, CLI_ACTOR) is True
    assert await life.delete("acme", owner.app_key, actor=CLI_ACTOR) is True


# -- one refusal, each caller's error ----------------------------------------------------
async def test_both_callers_turn_the_lifecycles_refusal_into_their_error(
    gateway: Gateway, management: Any, admin_key: Any, cli: Callable[..., Any],
    env: dict[str, str],
):
    refusal = UnknownRole("emperor", gateway.policy.roles)

    response = await management.post(
        "/api/v1/accounts/acme/keys", headers=admin_key.headers,
        json={"label": "k", "roles": ["orders-reader", "emperor"]},
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["code"], error["message"]) == (refusal.code, str(refusal))

    ran = await asyncio.to_thread(cli, "keys", "create", "--account", "acme", "--label", "k",
                                  "--role", "orders-reader", "--role", "emperor")
    assert ran.code == 2
    assert ran.err == f"keygate: {usage_error(refusal)}\n"
    assert "--role: 'emperor' is not a role defined in the policies (" in ran.err


def test_the_cli_names_the_flag_of_each_refused_input():
    def worded(refusal: BadInput) -> str:
        error = usage_error(refusal)
        assert isinstance(error, UsageError)
        return str(error)

    assert worded(BadInput("label", "label must not contain control characters",
                           "bad_label")) == "--label: label must not contain control characters"
    assert worded(BadInput("status", "status must be one of active, inactive",
                           "bad_status")).startswith("--status: ")
    assert worded(BadInput("renewalPeriodMonths", "renewalPeriodMonths must be one of 3, 6",
                           "bad_renewal_period")).startswith("--renewal-period-months: ")
    assert worded(UnknownRole("czar", ["owner", "admin"])) == (
        "--role: 'czar' is not a role defined in the policies (admin, owner)")
