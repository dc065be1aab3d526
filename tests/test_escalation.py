"""No escalation through delegated administration (Kubernetes RBAC's escalate/bind rules),
and the last owner key of an account, tried as an attacker holding a user admin's key.

Everything runs through the real management app and proxy port, on the real policies/
(plus, where a test says so, a copy with lines added), against a private redis-server.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import Key
from interleave import Before, BeforeRead

from gateway.app import build_gateway
from gateway.escalation import Delegation
from gateway.management import build_management_app
from gateway.pipeline import Identity, Principal
from gateway.settings import PROJECT_ROOT
from gateway.store import CLI_ACTOR, KeyChanged, LastOwnerKey

KEYS = "/api/v1/accounts/acme/keys"
EXTERNAL = "/api/v1/accounts/acme/external-keys"


async def refused(response: Any, role: str | None = None) -> dict[str, Any]:
    """403 escalation_refused in the one error shape, naming the role."""
    assert response.status == 403, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "escalation_refused"
    if role is not None:
        assert repr(role) in error["message"], error["message"]
    return error


async def conflict(response: Any, code: str) -> None:
    assert response.status == 409, await response.text()
    assert (await response.json())["error"]["code"] == code


@pytest.fixture
async def admin(make_key: Any) -> Key:
    """The attacker: a key of acme that holds only user-admin-restricted."""
    return await make_key("acme", ["user-admin-restricted"], label="user admin")


@pytest.fixture
async def owner(make_key: Any) -> Key:
    return await make_key("acme", ["owner"], label="owner")


async def works(proxy: Any, key: Key, path: str = "/orders/1") -> bool:
    return (await proxy.get(path, headers=key.headers)).status == 200


async def beta_grants(management: Any, beta_owner: Key, app_key: str,
                      roles: list[str]) -> None:
    """Account beta, through its owner key, grants ``app_key`` ``roles`` there (any
    account may: key names are public)."""
    granted = await management.post(
        "/api/v1/accounts/beta/external-keys", json={"appKey": app_key, "roles": roles},
        headers=beta_owner.headers)
    assert granted.status == 201, await granted.text()


# -- assign --------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["owner", "user-admin-restricted"])
async def test_user_admin_cannot_create_a_key_with_a_role_above_it(
    management, admin, gateway, role
):
    response = await management.post(
        KEYS, json={"label": "mine now", "roles": ["orders-reader", role]}, headers=admin.headers
    )
    await refused(response, role)
    records, total = await gateway.store.list_keys("acme", _all())
    assert total == 1 and [r.app_key for r in records] == [admin.app_key]  # nothing created


async def test_user_admin_manages_keys_with_the_business_roles(management, proxy, admin):
    for roles in (["orders-writer"], ["orders-reader", "catalog-reader"], ["api-keys-viewer"],
                  ["suspended-partner"], []):
        response = await management.post(KEYS, json={"label": "biz", "roles": roles},
                                         headers=admin.headers)
        assert response.status == 201, await response.text()
    created = await (await management.post(
        KEYS, json={"label": "w", "roles": ["orders-reader"]}, headers=admin.headers)).json()
    path = f"{KEYS}/{created['appKey']}"
    patch = await management.patch(path, json={"roles": ["orders-writer"], "label": "w2"},
                                   headers=admin.headers)
    assert patch.status == 200, await patch.text()
    renew = await management.post(path + "/token/renew", json={"deleteOld": "now"},
                                  headers=admin.headers)
    assert renew.status == 200
    fresh = Key(created["appKey"], (await renew.json())["appToken"])
    assert await works(proxy, fresh)
    assert (await management.patch(path, json={"status": "inactive"},
                                   headers=admin.headers)).status == 200
    assert (await management.delete(path, headers=admin.headers)).status == 204


async def test_user_admin_cannot_add_owner_to_its_own_key(management, proxy, admin, gateway):
    path = f"{KEYS}/{admin.app_key}"
    await refused(await management.patch(path, json={"roles": ["user-admin-restricted", "owner"]},
                                         headers=admin.headers), "owner")
    # not even a role it may hand out to others: a key never raises its own roles
    error = await refused(await management.patch(
        path, json={"roles": ["user-admin-restricted", "orders-writer"]}, headers=admin.headers))
    assert "its own roles" in error["message"]
    # a role whose permissions it holds already gives it nothing new: allowed
    viewer = await management.patch(
        path, json={"roles": ["user-admin-restricted", "api-keys-viewer"]}, headers=admin.headers)
    assert viewer.status == 200, await viewer.text()
    record = await gateway.store.get_key("acme", admin.app_key)
    assert record is not None and record.roles == ("user-admin-restricted", "api-keys-viewer")
    assert not await works(proxy, admin)


async def test_a_key_may_act_on_itself_without_gaining_anything(management, admin, make_key):
    """Renewing its own token, relabelling or dropping roles gains a key nothing."""
    both = await make_key("acme", ["user-admin-restricted", "orders-reader"], label="both")
    path = f"{KEYS}/{both.app_key}"
    assert (await management.patch(path, json={"label": "me"}, headers=both.headers)).status \
        == 200
    renewed = await management.post(path + "/token/renew", json={}, headers=both.headers)
    assert renewed.status == 200
    drop = await management.patch(path, json={"roles": ["user-admin-restricted"]},
                                  headers=both.headers)
    assert drop.status == 200, await drop.text()


async def test_a_suspended_key_cannot_lift_its_own_suspension(management, proxy, make_key):
    """``suspended-partner`` shuts a key out of orders whatever else it holds (deny beats
    allow, even the owner's). Dropping it from itself would give the key back what the
    deny took away; another owner key (so the last-owner rule decides nothing here)
    may lift it."""
    owner = await make_key("acme", ["owner"], label="the real owner")
    suspended = await make_key("acme", ["owner", "suspended-partner"], label="suspended")
    path = f"{KEYS}/{suspended.app_key}"
    assert (await proxy.get("/orders/1", headers=suspended.headers)).status == 403
    for roles in (["owner"], ["orders-writer"]):  # nor a new unsuspended key
        made = await management.post(KEYS, json={"label": "x", "roles": roles},
                                     headers=suspended.headers)
        await refused(made)
    error = await refused(await management.patch(path, json={"roles": ["owner"]},
                                                 headers=suspended.headers))
    assert "deny" in error["message"] and "examples.csv:" in error["message"]
    assert (await proxy.delete("/orders/1", headers=suspended.headers)).status == 403
    lifted = await management.patch(path, json={"roles": ["owner"]}, headers=owner.headers)
    assert lifted.status == 200, await lifted.text()
    assert (await proxy.delete("/orders/1", headers=suspended.headers)).status == 200


async def test_a_suspended_key_cannot_escape_through_a_key_that_hands_out_roles(
    management, proxy, make_key, gateway
):
    """An owner key suspended from orders may not make an unsuspended owner or
    orders-writer key (above). user-admin-restricted grants no orders permission, but it
    may hand out orders-writer (an assign line): a suspended owner that could make a
    user admin key, or add user-admin-restricted to itself, would make an orders-writer
    key through it in the next request. Assigning a role that hands out roles needs
    the power to assign those roles."""
    await make_key("acme", ["owner"], label="the real owner")
    suspended = await make_key("acme", ["owner", "suspended-partner"], label="suspended")
    made = await management.post(KEYS, json={"label": "helper",
                                             "roles": ["user-admin-restricted"]},
                                 headers=suspended.headers)
    if made.status == 201:
        helper = Key((await made.json())["appKey"], (await made.json())["appToken"])
        minted = await management.post(KEYS, json={"label": "x", "roles": ["orders-writer"]},
                                       headers=helper.headers)
        assert minted.status == 201
        fresh = await minted.json()
        assert not await works(proxy, Key(fresh["appKey"], fresh["appToken"])), (
            "a key suspended from orders made a key that reads orders")
    await refused(made, "user-admin-restricted")
    path = f"{KEYS}/{suspended.app_key}"
    raised = await management.patch(
        path, json={"roles": ["owner", "suspended-partner", "user-admin-restricted"]},
        headers=suspended.headers)
    await refused(raised, "user-admin-restricted")
    record = await gateway.store.get_key("acme", suspended.app_key)
    assert record is not None and record.roles == ("owner", "suspended-partner")


async def test_an_external_key_cannot_lift_its_own_suspension_in_the_granting_account(
    management, proxy, owner, make_key
):
    """The same through a grant: acme granted beta's key owner but suspended it from
    orders; the key may not take the suspension off its own grant."""
    partner = await make_key("beta", ["orders-reader"], label="partner")
    added = await management.post(
        EXTERNAL, json={"appKey": partner.app_key, "roles": ["owner", "suspended-partner"]},
        headers=owner.headers)
    assert added.status == 201, await added.text()
    assert (await proxy.get("/orders/1", headers=partner.headers)).status == 403
    await refused(await management.patch(f"{EXTERNAL}/{partner.app_key}",
                                         json={"roles": ["owner"]}, headers=partner.headers))
    assert (await proxy.get("/orders/1", headers=partner.headers)).status == 403


async def test_a_key_may_drop_its_own_role_whose_denies_reach_nothing_it_keeps(
    management, proxy, make_key
):
    """user-admin-restricted denies assigning owner; a key that drops it and keeps only
    orders-reader, which assigns nothing, escapes no deny over anything it keeps. One
    that keeps owner (which allows everything) would escape it: refused."""
    both = await make_key("acme", ["user-admin-restricted", "orders-reader"])
    path = f"{KEYS}/{both.app_key}"
    dropped = await management.patch(path, json={"roles": ["orders-reader"]},
                                     headers=both.headers)
    assert dropped.status == 200, await dropped.text()
    assert await works(proxy, both)
    await make_key("acme", ["owner"], label="another owner")
    restricted = await make_key("acme", ["owner", "user-admin-restricted"])
    await refused(await management.patch(f"{KEYS}/{restricted.app_key}",
                                         json={"roles": ["owner"]},
                                         headers=restricted.headers))


async def test_a_user_admin_cannot_renew_a_key_that_another_account_made_owner(
    management, proxy, admin, owner, make_key
):
    """Key T holds only orders-reader in acme, but account beta granted it owner. Whoever
    receives T's token is beta's owner: acme's user admin may not renew it, nor read it
    as one that renews. acme's owner, whose roles could assign owner in beta, may."""
    integration = await make_key("acme", ["orders-reader"], label="beta integration")
    beta_owner = await make_key("beta", ["owner"], label="beta owner")
    await beta_grants(management, beta_owner, integration.app_key, ["owner"])
    assert (await management.get("/api/v1/accounts/beta/keys",
                                 headers=admin.headers)).status == 403
    path = f"{KEYS}/{integration.app_key}"
    for body in ({"deleteOld": "now"}, {"deleteOld": "later"}, {"delivery": "link"}):
        error = await refused(await management.post(path + "/token/renew", json=body,
                                                    headers=admin.headers))
        assert "'beta'" in error["message"]
        assert "owner" not in error["message"]  # beta's grant is beta's business
    assert await works(proxy, integration)
    renewed = await management.post(path + "/token/renew", json={"deleteOld": "now"},
                                    headers=owner.headers)
    assert renewed.status == 200, await renewed.text()


async def test_another_accounts_grant_does_not_put_a_key_out_of_its_own_accounts_reach(
    management, proxy, admin, owner, make_key
):
    """Key names are public, so any account may grant any key a role there. A stolen acme
    key that the thief makes owner of the thief's account beta must stay revocable by
    acme's user admin, whose roles could not assign owner in beta: changing, switching
    off or deleting a key, or ending a renewal an owner began, hands no token over."""
    stolen = await make_key("acme", ["orders-reader"], label="stolen")
    thief = await make_key("beta", ["owner"], label="thief's own")
    await beta_grants(management, thief, stolen.app_key, ["owner"])
    path = f"{KEYS}/{stolen.app_key}"
    relabelled = await management.patch(path, json={"label": "revoked: leaked"},
                                        headers=admin.headers)
    assert relabelled.status == 200, await relabelled.text()
    started = await management.post(path + "/token/renew", json={"deleteOld": "later"},
                                    headers=owner.headers)
    assert started.status == 200, await started.text()
    undone = await management.post(path + "/token/undo-renewal", headers=admin.headers)
    assert undone.status == 200, await undone.text()
    off = await management.patch(path, json={"status": "inactive"}, headers=admin.headers)
    assert off.status == 200, await off.text()
    assert not await works(proxy, stolen)
    deleted = await management.delete(path, headers=admin.headers)
    assert deleted.status == 204, await deleted.text()


async def test_a_user_admin_may_act_on_a_key_granted_roles_it_could_assign(
    management, admin, make_key
):
    """The rule judges each grant in its account: beta granting the key orders-writer,
    a role acme's user admin could assign there too, does not stop it."""
    integration = await make_key("acme", ["orders-reader"], label="beta integration")
    beta_owner = await make_key("beta", ["owner"], label="beta owner")
    await beta_grants(management, beta_owner, integration.app_key, ["orders-writer"])
    renewed = await management.post(f"{KEYS}/{integration.app_key}/token/renew",
                                    json={"deleteOld": "now"}, headers=admin.headers)
    assert renewed.status == 200, await renewed.text()


async def test_user_admin_cannot_grant_owner_to_another_accounts_key(
    management, proxy, admin, owner, make_key
):
    partner = await make_key("beta", ["orders-reader"], label="partner")
    await refused(await management.post(
        EXTERNAL, json={"appKey": partner.app_key, "label": "p", "roles": ["owner"]},
        headers=admin.headers), "owner")
    # granted a business role, it still cannot be raised to owner afterwards
    added = await management.post(
        EXTERNAL, json={"appKey": partner.app_key, "label": "p", "roles": ["orders-reader"]},
        headers=admin.headers)
    assert added.status == 201, await added.text()
    path = f"{EXTERNAL}/{partner.app_key}"
    await refused(await management.patch(path, json={"roles": ["owner"]}, headers=admin.headers),
                  "owner")
    assert (await proxy.delete("/orders/1", headers=partner.headers)).status == 403


async def test_user_admin_cannot_touch_an_owner_grant(management, admin, owner, make_key, proxy):
    """An external key an owner granted owner: the user admin may not change or remove it."""
    partner = await make_key("beta", ["orders-reader"], label="partner")
    granted = await management.post(
        EXTERNAL, json={"appKey": partner.app_key, "label": "p", "roles": ["owner"]},
        headers=owner.headers)
    assert granted.status == 201
    path = f"{EXTERNAL}/{partner.app_key}"
    await refused(await management.patch(path, json={"status": "inactive"},
                                         headers=admin.headers), "owner")
    await refused(await management.patch(path, json={"roles": ["orders-reader"]},
                                         headers=admin.headers), "owner")
    await refused(await management.delete(path, headers=admin.headers), "owner")
    assert (await proxy.delete("/orders/1", headers=partner.headers)).status == 200


# -- act on ------------------------------------------------------------------------------
@pytest.mark.parametrize("victim_roles", [["owner"], ["user-admin-restricted"],
                                          ["orders-reader", "owner"]])
async def test_user_admin_cannot_act_on_keys_above_it(
    management, proxy, admin, make_key, gateway, victim_roles
):
    victim = await make_key("acme", victim_roles, label="victim")
    path = f"{KEYS}/{victim.app_key}"
    for method, suffix, body in (
        ("PATCH", "", {"status": "inactive"}),
        ("PATCH", "", {"label": "pwned"}),
        ("PATCH", "", {"roles": ["orders-reader"]}),
        ("DELETE", "", None),
        ("POST", "/token/renew", {"deleteOld": "now"}),
        ("POST", "/token/renew", {"deleteOld": "later"}),
        ("POST", "/token/renew", {"delivery": "link"}),
    ):
        response = await management.request(method, path + suffix, json=body,
                                            headers=admin.headers)
        error = await refused(response)
        assert "appToken" not in await response.text() and "tokenLink" not in error
    record = await gateway.store.get_key("acme", victim.app_key)
    assert record is not None
    assert (record.status, record.label, record.roles) == ("active", "victim",
                                                           tuple(victim_roles))
    assert record.new_token_created is None  # no renewal started
    assert await works(proxy, victim) or "owner" not in victim_roles


async def test_user_admin_cannot_finish_or_undo_an_owner_keys_renewal(
    management, admin, owner, gateway
):
    path = f"{KEYS}/{owner.app_key}"
    started = await management.post(path + "/token/renew", json={}, headers=owner.headers)
    assert started.status == 200
    for action in ("finish-renewal", "undo-renewal"):
        await refused(await management.post(f"{path}/token/{action}", headers=admin.headers),
                      "owner")
    record = await gateway.store.get_key("acme", owner.app_key)
    assert record is not None and record.new_token_created is not None  # still pending


async def test_owner_may_do_everything(management, proxy, owner, admin):
    made = await management.post(KEYS, json={"label": "o2", "roles": ["owner"]},
                                 headers=owner.headers)
    assert made.status == 201
    second = await made.json()
    for roles in (["user-admin-restricted"], ["owner", "orders-writer"]):
        response = await management.patch(f"{KEYS}/{second['appKey']}", json={"roles": roles},
                                          headers=owner.headers)
        assert response.status == 200, await response.text()
    renew = await management.post(f"{KEYS}/{admin.app_key}/token/renew",
                                  json={"deleteOld": "now"}, headers=owner.headers)
    assert renew.status == 200
    assert (await management.delete(f"{KEYS}/{admin.app_key}", headers=owner.headers)).status \
        == 204


# -- the last owner key ------------------------------------------------------------------
async def test_the_last_active_owner_key_cannot_be_removed(management, owner, make_key, gateway):
    path = f"{KEYS}/{owner.app_key}"
    for method, body in (("PATCH", {"status": "inactive"}),
                         ("PATCH", {"roles": ["user-admin-restricted"]}),
                         ("DELETE", None)):
        response = await management.request(method, path, json=body, headers=owner.headers)
        await conflict(response, "last_owner_key")
    # an inactive owner key does not count: it cannot administer anything
    spare = await make_key("acme", ["owner"], label="spare")
    assert (await management.patch(f"{KEYS}/{spare.app_key}", json={"status": "inactive"},
                                   headers=owner.headers)).status == 200
    await conflict(await management.delete(path, headers=owner.headers), "last_owner_key")
    # with a second active owner key, the first may go
    assert (await management.patch(f"{KEYS}/{spare.app_key}", json={"status": "active"},
                                   headers=owner.headers)).status == 200
    assert (await management.delete(path, headers=owner.headers)).status == 204
    await conflict(await management.delete(f"{KEYS}/{spare.app_key}", headers=spare.headers),
                   "last_owner_key")
    # the CLI works on the store directly, without the guard: the way out
    assert await gateway.store.update_key("acme", spare.app_key, actor=CLI_ACTOR,
                                          status="inactive") is not None
    assert await gateway.store.delete_key("acme", spare.app_key, actor=CLI_ACTOR)


async def test_two_owners_removing_each_other_at_once_leave_one(management, make_key, gateway):
    a = await make_key("acme", ["owner"], label="a")
    b = await make_key("acme", ["owner"], label="b")
    for _ in range(10):
        replies = await asyncio.gather(
            management.patch(f"{KEYS}/{b.app_key}", json={"status": "inactive"},
                             headers=a.headers),
            management.patch(f"{KEYS}/{a.app_key}", json={"status": "inactive"},
                             headers=b.headers),
        )
        statuses = sorted(r.status for r in replies)
        assert statuses in ([200, 409], [401, 409], [200, 401]), statuses
        active = [k for k in (a, b)
                  if (await gateway.store.get_key("acme", k.app_key)).status == "active"]
        assert len(active) == 1
        # reset with the CLI's unguarded path
        for k in (a, b):
            await gateway.store.update_key("acme", k.app_key, actor=CLI_ACTOR, status="active")


async def test_an_account_older_than_the_owner_index_is_indexed_on_first_use(
    management, owner, make_key, gateway
):
    """Accounts whose keys predate the owner index: the first guarded change builds it."""
    other = await make_key("acme", ["orders-reader"], label="x")
    await gateway.store.redis.delete(gateway.store.names.account("acme", "owners"))
    await conflict(await management.delete(f"{KEYS}/{owner.app_key}", headers=owner.headers),
                   "last_owner_key")
    members = await gateway.store.redis.smembers(
        gateway.store.names.account("acme", "owners"))
    assert members == {"", owner.app_key}
    assert (await management.delete(f"{KEYS}/{other.app_key}", headers=owner.headers)).status \
        == 204


# -- races: the roles checked are the roles changed ----------------------------------------
async def test_a_change_refuses_when_the_roles_changed_after_the_check(gateway, make_key):
    key = await make_key("acme", ["orders-reader"])
    await gateway.store.update_key("acme", key.app_key, actor=CLI_ACTOR, roles=["owner"])
    with pytest.raises(KeyChanged):  # the caller had checked orders-reader
        await gateway.store.update_key("acme", key.app_key, status="inactive",
                                       expect_roles=["orders-reader"])
    with pytest.raises(KeyChanged):
        await gateway.store.delete_key("acme", key.app_key, expect_roles=["orders-reader"])
    with pytest.raises(KeyChanged):
        await gateway.lifecycle.renew("acme", key.app_key, CLI_ACTOR,
                                      expect_roles=["orders-reader"])
    record = await gateway.store.get_key("acme", key.app_key)
    assert record is not None and record.status == "active" and record.new_token_created is None
    with pytest.raises(LastOwnerKey):
        await gateway.store.delete_key("acme", key.app_key, expect_roles=["owner"],
                                       keep_an_owner=True)


async def test_user_admin_racing_a_promotion_cannot_deactivate_the_new_owner(
    management, admin, owner, make_key, gateway
):
    """While an owner promotes a key to owner, the user admin's deactivation of the same
    key either lands before (on a business key) or is refused: never after."""
    for _ in range(10):
        victim = await make_key("acme", ["orders-reader"], label="v")
        path = f"{KEYS}/{victim.app_key}"
        promote, attack = await asyncio.gather(
            management.patch(path, json={"roles": ["owner"]}, headers=owner.headers),
            management.patch(path, json={"status": "inactive"}, headers=admin.headers),
        )
        record = await gateway.store.get_key("acme", victim.app_key)
        if "owner" in record.roles and record.status == "inactive":
            # only acceptable if the deactivation came first, as the audit log shows
            events, _ = await gateway.store.audit_events("acme", limit=2)
            assert [e.action for e in events] == ["key.update", "key.update"]
            assert events[1].actor == admin.app_key and events[0].actor == owner.app_key
        assert attack.status in (200, 403, 409)


@pytest.mark.parametrize("kind", ["generated", "external"])
async def test_a_key_cannot_take_back_a_role_an_owner_took_from_it_meanwhile(
    management, proxy, owner, make_key, gateway, kind
):
    """The key holds user-admin-restricted and orders-writer, and keeps sending "my
    roles are these" about itself. The owner takes orders-writer away after one such
    request was authenticated (with both roles) but before its handler read the key:
    judged with the roles it was authenticated with, the key "holds" orders-writer
    still and puts it back, a state neither order of the two requests leads to (had
    the key's request come first, it changed nothing; after, it raises its roles).
    Judged with the roles the change finds (and the store re-checks), it is refused."""
    roles = ["user-admin-restricted", "orders-writer"]
    if kind == "generated":
        key = await make_key("acme", roles, label="sub-admin")
        path, read = f"{KEYS}/{key.app_key}", "get_key"
    else:
        key = await make_key("beta", ["orders-reader"], label="partner")
        added = await management.post(EXTERNAL, json={"appKey": key.app_key, "roles": roles},
                                      headers=owner.headers)
        assert added.status == 201, await added.text()
        path, read = f"{EXTERNAL}/{key.app_key}", "get_grant"
    assert (await proxy.post("/orders", json={}, headers=key.headers)).status == 200

    async def owner_takes_orders_writer() -> None:
        taken = await management.patch(path, json={"roles": ["user-admin-restricted"]},
                                       headers=owner.headers)
        assert taken.status == 200, await taken.text()

    hook = BeforeRead(gateway.store, read, owner_takes_orders_writer)
    try:
        again = await management.patch(path, json={"roles": roles}, headers=key.headers)
    finally:
        hook.restore()
    assert hook.fired
    await refused(again, "orders-writer")
    if kind == "generated":
        record = await gateway.store.get_key("acme", key.app_key)
    else:
        record = await gateway.store.get_grant("acme", key.app_key)
    assert record is not None and record.roles == ("user-admin-restricted",)
    assert (await proxy.post("/orders", json={}, headers=key.headers)).status == 403


# -- policies: wildcards, denies, reloads ---------------------------------------------------
@pytest.fixture
def policies_copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", target)
    return target


def identity(account: str, *roles: str) -> Identity:
    return Identity(Principal("kgk-acme-CALLER0000", account), account, tuple(roles))


async def test_wildcard_allow_with_a_deny_does_not_cover_owner(make_settings, clock,
                                                              policies_copy):
    """Casbin allows (*, *) to a role with "*, *, allow" and "orders, *, deny"; handing
    out owner would still give away the orders access the caller lacks."""
    (policies_copy / "almost.csv").write_text(
        "p, almost-owner, *, *, *, allow\np, almost-owner, *, orders, *, deny\n"
        "p, orders-admin, *, orders, *, allow\n"
    )
    gw = build_gateway(make_settings(policies_dir=str(policies_copy)), clock=clock)
    try:
        delegation = Delegation(gw.pipeline.authorizer)
        caller = ["almost-owner"]
        assert delegation.why_not(caller, "acme", "catalog-reader") is None
        assert delegation.why_not(caller, "acme", "owner") is not None
        assert delegation.why_not(caller, "acme", "orders-admin") is not None
        assert delegation.why_not(caller, "acme", "orders-reader") is not None
        assert delegation.why_not(["owner"], "acme", "orders-admin") is None
    finally:
        await gw.close()


async def test_roles_that_hand_out_each_other_are_judged_together(make_settings, clock,
                                                                  policies_copy):
    """The caller holds `api-keys` view and may `assign` by a catch-all (not a line
    made for handing out roles), but reads no orders. relay and hub hand out each
    other, and hub hands out team-orders too: assigning relay would let its key make a
    hub key, which makes a team-orders key. Both are refused, whichever is asked
    first (no role is judged on the assumption that another, still being judged, is
    fine), and the verdicts kept for the next question stay right."""
    (policies_copy / "relay.csv").write_text(
        "p, delegator, *, api-keys, view, allow\n"
        "p, delegator, *, *, assign, allow\n"
        "p, relay, *, api-keys, view, allow\n"
        "p, relay, *, role:hub, assign, allow\n"
        "p, hub, *, api-keys, view, allow\n"
        "p, hub, *, role:relay, assign, allow\n"
        "p, hub, *, role:team-orders, assign, allow\n"
        "p, team-orders, *, orders, read, allow\n"
        "p, viewer-relay, *, api-keys, view, allow\n"
        "p, viewer-relay, *, role:api-keys-viewer, assign, allow\n"
    )
    gw = build_gateway(make_settings(policies_dir=str(policies_copy)), clock=clock)
    try:
        for first, then in (("hub", "relay"), ("relay", "hub")):
            delegation = Delegation(gw.pipeline.authorizer)
            caller = ["delegator"]
            for role in (first, then, first):
                reason = delegation.why_not(caller, "acme", role)
                assert reason is not None and "'team-orders'" in reason, (role, reason)
            assert delegation.why_not(caller, "acme", "team-orders") is not None
            # a role handing out only what the caller may assign is no escalation
            assert delegation.why_not(caller, "acme", "viewer-relay") is None
        assert Delegation(gw.pipeline.authorizer).why_not(["owner"], "acme", "relay") is None
    finally:
        await gw.close()


async def test_an_explicit_assign_line_and_a_deny_line(make_settings, clock, policies_copy):
    (policies_copy / "assign.csv").write_text(
        "p, helpdesk, *, api-keys, edit, allow\n"
        "p, helpdesk, *, role:orders-*, assign, allow\n"
        "p, helpdesk, beta, role:orders-writer, assign, deny\n"
    )
    gw = build_gateway(make_settings(policies_dir=str(policies_copy)), clock=clock)
    try:
        delegation = Delegation(gw.pipeline.authorizer)
        assert delegation.why_not(["helpdesk"], "acme", "orders-writer") is None
        assert delegation.why_not(["helpdesk"], "beta", "orders-reader") is None
        assert "denies" in delegation.why_not(["helpdesk"], "beta", "orders-writer")
        assert delegation.why_not(["helpdesk"], "acme", "catalog-reader") is not None
        # helpdesk holds every permission of helpdesk: it may hand it on (as in Kubernetes)
        assert delegation.assignable(["helpdesk"], "acme") == [
            "helpdesk", "orders-reader", "orders-writer", "suspended-partner"]
    finally:
        await gw.close()


async def test_shipped_policies_what_each_predefined_role_may_assign(gateway):
    delegation = gateway.delegation
    business = ["api-keys-viewer", "catalog-reader", "orders-reader", "orders-writer",
                "suspended-partner"]
    assert delegation.assignable(["user-admin-restricted"], "acme") == business
    assert delegation.assignable(["owner"], "acme") == sorted(gateway.policy.roles)
    assert delegation.assignable(["api-keys-viewer"], "acme") == ["api-keys-viewer",
                                                                  "suspended-partner"]
    # a deny binds every key holding the role, owner keys too
    assert "owner" not in delegation.assignable(["owner", "user-admin-restricted"], "acme")


async def test_a_policy_reload_changes_who_may_assign_at_once(
    make_settings, clock, policies_copy, aiohttp_client, make_key
):
    from gateway.app import reload_policy

    gw = build_gateway(make_settings(policies_dir=str(policies_copy)), clock=clock)
    try:
        management = await aiohttp_client(build_management_app(gw))
        issued = await gw.lifecycle.create("acme", "a", ["user-admin-restricted"], CLI_ACTOR)
        headers = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
        body = {"label": "x", "roles": ["orders-writer"]}
        assert (await management.post(KEYS, json=body, headers=headers)).status == 201
        examples = policies_copy / "examples.csv"
        examples.write_text(examples.read_text().replace(
            "p, user-admin-restricted, *, role:orders-writer, assign, allow\n", ""))
        assert await reload_policy(gw)
        await refused(await management.post(KEYS, json=body, headers=headers), "orders-writer")
    finally:
        await gw.close()


async def test_no_path_from_a_user_admin_key_to_an_owner_key(management, proxy, admin, gateway):
    """The end of the story the issue tells: with only a user admin's key, no request
    path leads to a key that may DELETE orders (which only owner allows)."""
    attempts = [
        ("POST", KEYS, {"label": "x", "roles": ["owner"]}),
        ("PATCH", f"{KEYS}/{admin.app_key}", {"roles": ["owner"]}),
        ("POST", EXTERNAL, {"appKey": admin.app_key, "label": "x", "roles": ["owner"]}),
    ]
    for method, path, body in attempts:
        response = await management.request(method, path, json=body, headers=admin.headers)
        assert response.status in (400, 403), await response.text()
    records, _ = await gateway.store.list_keys("acme", _all())
    assert all("owner" not in r.roles for r in records)


def _all() -> Any:
    from gateway.store import KeyQuery

    return KeyQuery(per_page=100)


# -- renew-token alone: view and renew what it may renew ------------------------------------
async def test_renew_token_alone_lists_and_reads_the_keys_it_may_renew(
    make_settings, clock, policies_copy, aiohttp_client
):
    """"Renew API token" lets its holder view and renew generated keys' tokens: a role
    with only renew-token lists and reads the keys it may act on, and no others."""
    (policies_copy / "renewer.csv").write_text(
        "p, token-renewer, *, api-keys, renew-token, allow\n"
        "p, token-renewer, *, role:orders-*, assign, allow\n"
    )
    gw = build_gateway(make_settings(policies_dir=str(policies_copy)), clock=clock)
    try:
        management = await aiohttp_client(build_management_app(gw))

        async def key(roles: list[str], label: str) -> Key:
            issued = await gw.lifecycle.create("acme", label, roles, CLI_ACTOR)
            return Key(issued.record.app_key, issued.token)

        renewer = await key(["token-renewer"], "renewer")
        reader = await key(["orders-reader"], "reader")
        writer = await key(["orders-writer"], "writer")
        owner = await key(["owner"], "owner")
        catalog = await key(["catalog-reader"], "catalog")
        listing = await management.get(f"{KEYS}?perPage=100", headers=renewer.headers)
        assert listing.status == 200, await listing.text()
        body = await listing.json()
        shown = {item["appKey"] for item in body["items"]}
        # itself (a key may act on itself) and the keys whose roles it may assign
        assert shown == {renewer.app_key, reader.app_key, writer.app_key}
        assert body["total"] == 3
        assert (await management.get(f"{KEYS}/{reader.app_key}",
                                     headers=renewer.headers)).status == 200
        for hidden in (owner, catalog):
            await refused(await management.get(f"{KEYS}/{hidden.app_key}",
                                               headers=renewer.headers))
        renewed = await management.post(f"{KEYS}/{writer.app_key}/token/renew", json={},
                                        headers=renewer.headers)
        assert renewed.status == 200
        # but no view: export and the audit log stay closed, and nothing can be edited
        for path in ("/api/v1/accounts/acme/export", "/api/v1/accounts/acme/audit"):
            response = await management.get(path, headers=renewer.headers)
            assert response.status == 403
        patch = await management.patch(f"{KEYS}/{reader.app_key}", json={"label": "x"},
                                       headers=renewer.headers)
        assert patch.status == 403
        # with neither view nor renew-token: the refusal names both
        nobody = await key(["orders-reader"], "nobody")
        response = await management.get(KEYS, headers=nobody.headers)
        assert response.status == 403
        message = (await response.json())["error"]["message"]
        assert "'view' or 'renew-token'" in message
    finally:
        await gw.close()


# -- a grant made elsewhere between the check and the change ---------------------
async def test_renew_racing_a_grant_elsewhere_hands_a_user_admin_another_accounts_owner(
    management, proxy, make_key, gateway
):
    """acme's user admin renews (deleteOld: now) acme's integration key, which holds only
    orders-reader. Between the handler's check (no grant elsewhere) and the renew script,
    account beta makes that key owner of beta. The script re-checks only the key's roles
    in acme (expect_roles), so the renewal goes through and the user admin receives a
    token that is beta's owner: the escalation the act-on rule exists to stop
    (test_a_user_admin_cannot_renew_a_key_that_another_account_made_owner, serialised).
    Expected: refused (409 key_changed, or 403 escalation_refused)."""
    admin = await make_key("acme", ["user-admin-restricted"], label="user admin")
    integration = await make_key("acme", ["orders-reader"], label="beta integration")
    beta_owner = await make_key("beta", ["owner"], label="beta owner")

    async def beta_grants_owner() -> None:
        await beta_grants(management, beta_owner, integration.app_key, ["owner"])

    hook = Before(gateway.store, "renew_token", beta_grants_owner)
    try:
        renewed = await management.post(
            f"{KEYS}/{integration.app_key}/token/renew", json={"deleteOld": "now"},
            headers=admin.headers)
    finally:
        hook.restore()
    assert hook.fired
    body = await renewed.json()
    if renewed.status == 200:
        stolen = Key(integration.app_key, body["appToken"])
        # the user admin of acme now holds a working owner token of beta
        as_beta_owner = await management.get("/api/v1/accounts/beta/keys",
                                             headers=stolen.headers)
        assert as_beta_owner.status != 200, (
            "acme's user admin received the token of a key that is beta's owner "
            f"(beta's key list answered {as_beta_owner.status} to it)")
    assert renewed.status in (403, 409), body
