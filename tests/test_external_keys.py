"""External keys (DESIGN.md §1 grant / external key / effective key, §3): an account grants
roles to keys that other accounts own, manages only that grant, and the proxy honours
each grant only on its own account's routes. Real stack: the private redis-server, real
Casbin with model.conf and policies/, both aiohttp apps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from conftest import Key, ProxyTestServer, on_one_server_and_a_cluster
from interleave import Before

from gateway.store import CLI_ACTOR

# the store, cache and revocation behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

EXT_FIELDS = {"appKey", "label", "roles", "status", "account", "addedDate"}


# -- helpers ---------------------------------------------------------------------------
def ext_url(account: str, app_key: str | None = None) -> str:
    base = f"/api/v1/accounts/{account}/external-keys"
    return base if app_key is None else f"{base}/{app_key}"


def key_url(account: str, app_key: str) -> str:
    return f"/api/v1/accounts/{account}/keys/{app_key}"


def iso_of(seconds: float) -> str:
    """The API's date format for a clock reading."""
    return (
        datetime.fromtimestamp(int(seconds * 1000) / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


async def expect_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one JSON error shape, with the expected status (and code)."""
    text = await response.text()
    assert response.status == status, text
    body = orjson.loads(text)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


async def add(
    management: Any, account: str, admin: Key, app_key: Any, label: str = "partner",
    roles: list[str] | None = None, expect: int = 201,
) -> dict[str, Any]:
    response = await management.post(
        ext_url(account),
        json={"appKey": app_key, "label": label,
              "roles": ["orders-reader"] if roles is None else roles},
        headers=admin.headers,
    )
    text = await response.text()
    assert response.status == expect, text
    return orjson.loads(text)


async def patch(management: Any, account: str, admin: Key, app_key: str,
                **body: Any) -> dict[str, Any]:
    response = await management.patch(ext_url(account, app_key), json=body, headers=admin.headers)
    text = await response.text()
    assert response.status == 200, text
    return orjson.loads(text)


async def get_json(management: Any, url: str, key: Key, **params: Any) -> dict[str, Any]:
    response = await management.get(url, params=params, headers=key.headers)
    text = await response.text()
    assert response.status == 200, text
    return orjson.loads(text)


async def status_of(proxy: Any, method: str, path: str, key: Key) -> int:
    response = await proxy.request(method, path, headers=key.headers)
    await response.read()
    return response.status


async def until_cache_trusted(gateway: Any) -> None:
    """Wait (bounded) until the credential cache is in use, so that the tests below prove
    that changes reach a warm cache, not only Redis."""
    for _ in range(1000):
        if gateway.store.cache_trusted:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the credential cache never became trusted (invalidation channel down?)")


@pytest.fixture(autouse=True)
async def trusted_cache(gateway: Any) -> None:
    await until_cache_trusted(gateway)


@pytest.fixture
def admins(make_key: Callable[..., Any]) -> Callable[..., Any]:
    """admin(account) → a user-admin-restricted key of that account (one per account)."""
    made: dict[str, Key] = {}

    async def admin(account: str) -> Key:
        if account not in made:
            made[account] = await make_key(account, ["user-admin-restricted"], label="admin")
        return made[account]

    return admin


# -- add -------------------------------------------------------------------------------
async def test_add_returns_the_grant_and_the_key_then_works_on_the_granting_accounts_routes(
    management, proxy, upstream, make_key, admins, clock
):
    acme = await admins("acme")
    partner = await make_key("beta", ["orders-reader"], label="beta's own label")
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403, "no_grant")

    clock.advance(3600)
    added = await add(management, "acme", acme, partner.app_key, label="  partner from beta  ",
                      roles=["orders-writer", "orders-writer"])
    assert added == {
        "appKey": partner.app_key,
        "label": "partner from beta",  # acme's own label, trimmed
        "roles": ["orders-writer"],  # duplicates dropped
        "status": "active",
        "account": "beta",  # the owner
        "addedDate": iso_of(clock.now),
    }
    assert await get_json(management, ext_url("acme", partner.app_key), acme) == added

    response = await proxy.post("/orders/1", headers=partner.headers)
    assert response.status == 200, await response.text()
    seen = upstream.last["headers"]
    assert seen["X-Keygate-Key"] == partner.app_key
    assert seen["X-Keygate-Owner-Account"] == "beta"
    assert seen["X-Keygate-Account"] == "acme"
    assert seen["X-Keygate-Roles"] == "orders-writer"
    # on its own account's route the key keeps its own roles (reader: no write)
    assert await status_of(proxy, "GET", "/beta/orders/1", partner) == 200
    await expect_error(await proxy.post("/beta/orders/1", headers=partner.headers), 403,
                       "not_permitted")


async def test_add_refusals_say_which_and_change_nothing(
    management, make_key, admins, gateway
):
    acme = await admins("acme")
    beta_admin = await admins("beta")
    own = await make_key("acme", ["orders-reader"], label="acme's own")
    partner = await make_key("beta", ["orders-reader"])
    gone = await make_key("beta", ["orders-reader"])
    deleted = await management.delete(key_url("beta", gone.app_key), headers=beta_admin.headers)
    assert deleted.status == 204
    await add(management, "acme", acme, partner.app_key, label="first", roles=["orders-reader"])

    async def refused(app_key: Any, http_status: int, code: str,
                      roles: list[str] | None = None, **extra: Any) -> str:
        body = {"appKey": app_key, "label": "x",
                "roles": ["orders-writer"] if roles is None else roles, **extra}
        response = await management.post(ext_url("acme"), json=body, headers=acme.headers)
        return (await expect_error(response, http_status, code))["message"]

    message = await refused(own.app_key, 400, "own_key")
    assert own.app_key in message and "acme" in message
    never = gateway.fmt.new_key("beta")
    assert never in await refused(never, 404, "key_not_found")
    assert gone.app_key in await refused(gone.app_key, 404, "key_not_found")
    assert partner.app_key in await refused(partner.app_key, 409, "external_key_exists")
    other = await make_key("beta", ["orders-reader"])
    assert "no-such-role" in await refused(other.app_key, 400, "unknown_role",
                                           roles=["orders-reader", "no-such-role"])
    for malformed in ("not-a-key", "", "kgk-beta-SHORT", "xyz-beta-ABCDEFGHJK",
                      partner.app_key.lower(), partner.app_key + "X", 42, None,
                      [partner.app_key]):
        await refused(malformed, 400, "bad_app_key")
    await refused(other.app_key, 400, "unknown_field", status="inactive")
    response = await management.post(ext_url("acme"), json={"appKey": other.app_key, "label": "x"},
                                     headers=acme.headers)
    await expect_error(response, 400, "missing_field")
    await refused(other.app_key, 400, "bad_roles", roles="orders-reader")  # type: ignore[arg-type]

    listing = await get_json(management, ext_url("acme"), acme)
    assert listing["total"] == 1
    assert [(x["appKey"], x["label"], x["roles"]) for x in listing["items"]] == [
        (partner.app_key, "first", ["orders-reader"])
    ]
    await expect_error(await management.get(ext_url("acme", other.app_key),
                                            headers=acme.headers), 404)
    # the own key kept its own roles; the refused "own" add did not touch them
    mine = await get_json(management, key_url("acme", own.app_key), acme)
    assert mine["roles"] == ["orders-reader"] and mine["grantedIn"] == []


async def test_permissions_view_to_read_edit_to_change(management, make_key, admins):
    acme = await admins("acme")
    beta_admin = await admins("beta")
    viewer = await make_key("acme", ["api-keys-viewer"], label="viewer")
    worker = await make_key("acme", ["orders-writer"], label="worker")
    partner = await make_key("beta", ["orders-reader"])
    await add(management, "acme", acme, partner.app_key)

    assert (await get_json(management, ext_url("acme"), viewer))["total"] == 1
    assert (await get_json(management, ext_url("acme", partner.app_key), viewer))["label"]
    body = {"appKey": (await make_key("beta")).app_key, "label": "x", "roles": []}
    await expect_error(await management.post(ext_url("acme"), json=body,
                                             headers=viewer.headers), 403, "not_permitted")
    await expect_error(await management.patch(ext_url("acme", partner.app_key),
                                              json={"label": "y"}, headers=viewer.headers),
                       403, "not_permitted")
    await expect_error(await management.delete(ext_url("acme", partner.app_key),
                                               headers=viewer.headers), 403, "not_permitted")
    await expect_error(await management.get(ext_url("acme"), headers=worker.headers),
                       403, "not_permitted")
    await expect_error(await management.get(ext_url("acme")), 401)
    # an admin of the owner account has no say over acme's grant
    await expect_error(await management.get(ext_url("acme"), headers=beta_admin.headers),
                       403, "no_grant")
    await expect_error(await management.delete(ext_url("acme", partner.app_key),
                                               headers=beta_admin.headers), 403, "no_grant")
    # …and the grant is still there
    assert (await get_json(management, ext_url("acme", partner.app_key), acme))["status"] == \
        "active"


# -- list ------------------------------------------------------------------------------
async def test_list_search_filter_sort_and_paginate(management, make_key, admins, clock):
    acme = await admins("acme")
    await make_key("acme", ["orders-reader"], label="Zulu acme own key")  # not external
    specs = [  # owner, acme's label, roles, status
        ("delta", "Zulu partner", ["orders-reader"], "active"),
        ("beta", "alpha partner", ["orders-writer"], "inactive"),
        ("charlie", "Mike partner", ["orders-reader", "catalog-reader"], "active"),
        ("beta", "bravo partner", ["catalog-reader"], "active"),
        ("charlie", "echo partner", [], "inactive"),
    ]
    rows: list[dict[str, Any]] = []
    for owner, label, roles, status in specs:
        clock.advance(60)
        key = await make_key(owner, ["orders-reader"], label=f"{owner}'s label")
        added = await add(management, "acme", acme, key.app_key, label=label, roles=roles)
        if status != "active":
            added = await patch(management, "acme", acme, key.app_key, status=status)
        rows.append(added)

    async def listing(**params: Any) -> dict[str, Any]:
        return await get_json(management, ext_url("acme"), acme, **params)

    everything = await listing()
    assert everything["total"] == 5 and everything["page"] == 1 and everything["perPage"] == 20
    assert all(set(x) == EXT_FIELDS for x in everything["items"])
    # default: newest grant first
    assert everything["items"] == list(reversed(rows))

    def keys(result: dict[str, Any]) -> list[str]:
        return [x["appKey"] for x in result["items"]]

    # q matches acme's label (case-insensitively) or the appKey, never the owner's label
    assert keys(await listing(q="PARTNER")) == keys(everything)
    assert keys(await listing(q="mike")) == [rows[2]["appKey"]]
    random_part = rows[3]["appKey"].rsplit("-", 1)[1]
    assert keys(await listing(q=random_part.lower())) == [rows[3]["appKey"]]
    assert keys(await listing(q="kgk-beta-", sort="addedDate", order="asc")) == [
        rows[1]["appKey"], rows[3]["appKey"]]
    assert (await listing(q="'s label"))["total"] == 0
    assert (await listing(q="acme own"))["total"] == 0
    # filters
    assert keys(await listing(status="inactive", order="asc")) == [
        rows[1]["appKey"], rows[4]["appKey"]]
    assert keys(await listing(role="orders-reader", order="asc")) == [
        rows[0]["appKey"], rows[2]["appKey"]]
    assert keys(await listing(role="catalog-reader", status="active", order="asc")) == [
        rows[2]["appKey"], rows[3]["appKey"]]
    assert (await listing(role="owner"))["total"] == 0

    # sorts
    def by(field: str) -> list[str]:
        ordered = sorted(rows, key=lambda x: (
            x[field].casefold() if field == "label" else x[field], x["appKey"]))
        return [x["appKey"] for x in ordered]

    assert keys(await listing(sort="label", order="asc")) == by("label")
    assert [x["label"] for x in (await listing(sort="label", order="asc"))["items"]] == [
        "alpha partner", "bravo partner", "echo partner", "Mike partner", "Zulu partner"]
    assert keys(await listing(sort="label", order="desc")) == list(reversed(by("label")))
    assert keys(await listing(sort="appKey", order="asc")) == sorted(keys(everything))
    assert keys(await listing(sort="appKey")) == sorted(keys(everything), reverse=True)
    assert [x["account"] for x in (await listing(sort="account", order="asc"))["items"]] == [
        "beta", "beta", "charlie", "charlie", "delta"]
    assert keys(await listing(sort="account", order="asc")) == by("account")
    assert [x["status"] for x in (await listing(sort="status", order="asc"))["items"]] == [
        "active", "active", "active", "inactive", "inactive"]
    assert keys(await listing(sort="addedDate", order="asc")) == [x["appKey"] for x in rows]

    # pages
    pages = [await listing(perPage=2, page=p, sort="addedDate", order="asc") for p in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert all(p["total"] == 5 and p["perPage"] == 2 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    assert sum((keys(p) for p in pages), []) == [x["appKey"] for x in rows]
    filtered_page = await listing(status="active", perPage=2, page=2, order="asc")
    assert filtered_page["total"] == 3 and keys(filtered_page) == [rows[3]["appKey"]]

    for bad in ({"sort": "token"}, {"order": "up"}, {"perPage": "0"}, {"perPage": "101"},
                {"page": "0"}, {"page": "x"}, {"status": "deleted"}):
        response = await management.get(ext_url("acme"), params=bad, headers=acme.headers)
        await expect_error(response, 400, "bad_query")

    # acme's generated-keys list knows nothing of external keys
    generated = await get_json(management, "/api/v1/accounts/acme/keys", acme, perPage=100)
    assert not {x["appKey"] for x in generated["items"]} & set(keys(everything))


# -- change and remove -----------------------------------------------------------------
async def test_patch_changes_only_the_grant(management, proxy, make_key, admins, clock):
    acme = await admins("acme")
    beta_admin = await admins("beta")
    partner = await make_key("beta", ["orders-reader"], label="beta's own label")
    added = await add(management, "acme", acme, partner.app_key, label="partner",
                      roles=["orders-reader"])
    clock.advance(3600)

    changed = await patch(management, "acme", acme, partner.app_key, label=" renamed ")
    assert changed == {**added, "label": "renamed"}
    changed = await patch(management, "acme", acme, partner.app_key,
                          roles=["orders-writer", "catalog-reader"])
    assert changed == {**added, "label": "renamed", "roles": ["orders-writer", "catalog-reader"]}
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200
    changed = await patch(management, "acme", acme, partner.app_key, status="inactive",
                          label="both", roles=["orders-reader"])
    assert changed == {**added, "label": "both", "status": "inactive"}
    assert await get_json(management, ext_url("acme", partner.app_key), acme) == changed
    assert changed["addedDate"] == added["addedDate"]  # a change is not a new grant

    async def refused(body: Any, status: int, code: str, app_key: str = partner.app_key) -> None:
        response = await management.patch(ext_url("acme", app_key), json=body,
                                          headers=acme.headers)
        await expect_error(response, status, code)

    await refused({"roles": ["orders-reader", "nope"]}, 400, "unknown_role")
    await refused({"status": "deleted"}, 400, "bad_status")
    await refused({"label": ""}, 400, "bad_label")
    await refused({}, 400, "empty_change")
    for field in ("account", "appKey", "addedDate", "appToken"):
        await refused({field: "x"}, 400, "unknown_field")
    await refused({"label": "x"}, 404, "external_key_not_found",
                  app_key=(await make_key("beta")).app_key)
    assert await get_json(management, ext_url("acme", partner.app_key), acme) == changed

    # the owner's view of its key is untouched
    own = await get_json(management, key_url("beta", partner.app_key), beta_admin)
    assert own["label"] == "beta's own label"
    assert own["roles"] == ["orders-reader"]
    assert own["status"] == "active"


async def test_delete_removes_the_grant_never_the_key(management, proxy, make_key, admins):
    acme = await admins("acme")
    beta_admin = await admins("beta")
    partner = await make_key("beta", ["orders-reader"], label="beta's own label")
    await add(management, "acme", acme, partner.app_key, roles=["orders-writer"])
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200

    response = await management.delete(ext_url("acme", partner.app_key), headers=acme.headers)
    assert response.status == 204
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 403, "no_grant")
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403, "no_grant")
    await expect_error(await management.get(ext_url("acme", partner.app_key),
                                            headers=acme.headers), 404, "external_key_not_found")
    await expect_error(await management.delete(ext_url("acme", partner.app_key),
                                               headers=acme.headers), 404,
                       "external_key_not_found")
    assert (await get_json(management, ext_url("acme"), acme))["total"] == 0

    # the key lives on in its owner account, unchanged
    assert await status_of(proxy, "GET", "/beta/orders/1", partner) == 200
    own = await get_json(management, key_url("beta", partner.app_key), beta_admin)
    assert (own["label"], own["roles"], own["status"], own["grantedIn"]) == (
        "beta's own label", ["orders-reader"], "active", [])

    # and it may be granted again, as a new grant
    again = await add(management, "acme", acme, partner.app_key, label="again", roles=[])
    assert again["roles"] == [] and again["label"] == "again"
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403, "no_roles")


async def test_external_routes_never_touch_the_accounts_own_keys(
    management, proxy, make_key, admins
):
    acme = await admins("acme")
    own = await make_key("acme", ["orders-writer"], label="acme's own")
    await expect_error(await management.get(ext_url("acme", own.app_key), headers=acme.headers),
                       404, "external_key_not_found")
    await expect_error(await management.patch(ext_url("acme", own.app_key),
                                              json={"roles": [], "status": "inactive"},
                                              headers=acme.headers), 404,
                       "external_key_not_found")
    await expect_error(await management.delete(ext_url("acme", own.app_key),
                                               headers=acme.headers), 404,
                       "external_key_not_found")
    # the own key's grant (its roles in acme) is intact
    assert await status_of(proxy, "POST", "/orders/1", own) == 200
    mine = await get_json(management, key_url("acme", own.app_key), acme)
    assert (mine["roles"], mine["status"]) == (["orders-writer"], "active")


# -- what the granting account may see and do ------------------------------------------
async def test_granting_account_never_sees_or_changes_the_owners_key(
    management, proxy, make_key, admins, gateway
):
    acme = await admins("acme")
    bravo_admin = await admins("bravo")
    charlie_admin = await admins("charlie")
    partner = await make_key("bravo", ["orders-reader"], label="bravo-private-label")
    await add(management, "acme", acme, partner.app_key, label="acme label",
              roles=["orders-reader"])
    await add(management, "charlie", charlie_admin, partner.app_key,
              label="charlie-private-label", roles=["catalog-reader"])

    # everything acme can read about the key
    texts = [
        await (await management.get(ext_url("acme"), headers=acme.headers)).text(),
        await (await management.get(ext_url("acme", partner.app_key),
                                    headers=acme.headers)).text(),
        await (await management.get(ext_url("acme"), params={"q": partner.app_key},
                                    headers=acme.headers)).text(),
        await (await management.patch(ext_url("acme", partner.app_key),
                                      json={"label": "acme label 2"},
                                      headers=acme.headers)).text(),
        await (await management.get("/api/v1/accounts/acme/audit",
                                    headers=acme.headers)).text(),
    ]
    forbidden = [partner.token, gateway.hasher.digest(partner.token), "bravo-private-label",
                 "charlie-private-label", "charlie", "catalog-reader"]
    for text in texts:
        assert partner.app_key in text
        for secret in forbidden:
            assert secret not in text, (secret, text)

    # under acme's own keys the external key does not exist
    await expect_error(await management.get(key_url("acme", partner.app_key),
                                            headers=acme.headers), 404, "key_not_found")
    await expect_error(await management.patch(key_url("acme", partner.app_key),
                                              json={"label": "hijacked", "status": "inactive",
                                                    "roles": ["owner"]},
                                              headers=acme.headers), 404, "key_not_found")
    await expect_error(await management.delete(key_url("acme", partner.app_key),
                                               headers=acme.headers), 404, "key_not_found")
    for step in ("renew", "finish-renewal", "undo-renewal"):
        response = await management.post(key_url("acme", partner.app_key) + f"/token/{step}",
                                         json={"deleteOld": "now"} if step == "renew" else None,
                                         headers=acme.headers)
        await expect_error(response, 404)
    generated = await get_json(management, "/api/v1/accounts/acme/keys", acme,
                               q=partner.app_key)
    assert generated["total"] == 0
    # a grant in another account is no external key of acme
    elsewhere = await make_key("bravo", ["orders-reader"], label="bravo-private-label")
    await add(management, "charlie", charlie_admin, elsewhere.app_key,
              label="charlie-private-label", roles=["catalog-reader"])
    response = await management.get(ext_url("acme", elsewhere.app_key), headers=acme.headers)
    error = await expect_error(response, 404, "external_key_not_found")
    assert "charlie" not in error["message"] and "catalog-reader" not in error["message"]
    await expect_error(await management.patch(ext_url("acme", elsewhere.app_key),
                                              json={"roles": ["owner"]}, headers=acme.headers),
                       404, "external_key_not_found")
    await expect_error(await management.delete(ext_url("acme", elsewhere.app_key),
                                               headers=acme.headers), 404,
                       "external_key_not_found")
    await expect_error(await proxy.get("/orders/1", headers=elsewhere.headers), 403, "no_grant")
    await expect_error(await management.get("/api/v1/accounts/bravo/keys",
                                            headers=acme.headers), 403, "no_grant")

    # nothing changed for the owner or the other granting account
    assert await status_of(proxy, "GET", "/accounts/bravo/x", partner) == 200
    assert await status_of(proxy, "GET", "/orders/1", partner) == 200
    own = await get_json(management, key_url("bravo", partner.app_key), bravo_admin)
    assert (own["label"], own["roles"], own["status"]) == (
        "bravo-private-label", ["orders-reader"], "active")
    charlie_view = await get_json(management, ext_url("charlie", partner.app_key), charlie_admin)
    assert (charlie_view["label"], charlie_view["roles"], charlie_view["status"]) == (
        "charlie-private-label", ["catalog-reader"], "active")


async def test_owner_sees_granted_in_with_names_and_dates_only(
    management, make_key, admins, clock
):
    acme = await admins("acme")
    beta = await admins("beta")
    charlie = await admins("charlie")
    partner = await make_key("bravo", ["orders-reader"], label="bravo's key")
    lonely = await make_key("bravo", ["orders-reader"], label="never granted")
    bravo_admin = await admins("bravo")
    clock.advance(100)
    await add(management, "charlie", charlie, partner.app_key, label="charlie-only label",
              roles=["catalog-reader"])
    charlie_added = iso_of(clock.now)
    clock.advance(100)
    await add(management, "acme", acme, partner.app_key, label="acme-only label",
              roles=["orders-writer", "api-keys-viewer"])
    acme_added = iso_of(clock.now)

    response = await management.get(key_url("bravo", partner.app_key),
                                    headers=bravo_admin.headers)
    text = await response.text()
    assert response.status == 200, text
    detail = orjson.loads(text)
    assert detail["grantedIn"] == [
        {"account": "acme", "addedDate": acme_added},
        {"account": "charlie", "addedDate": charlie_added},
    ]
    assert detail["roles"] == ["orders-reader"] and detail["label"] == "bravo's key"
    for other in ("charlie-only label", "acme-only label", "catalog-reader", "orders-writer",
                  "api-keys-viewer"):
        assert other not in text
    listing = await (await management.get("/api/v1/accounts/bravo/keys",
                                          headers=bravo_admin.headers)).text()
    for other in ("charlie-only label", "acme-only label", "catalog-reader", "orders-writer"):
        assert other not in listing
    assert (await get_json(management, key_url("bravo", lonely.app_key),
                           bravo_admin))["grantedIn"] == []

    # removing a grant, or deactivating it, shows in / keeps the list accordingly
    await patch(management, "charlie", charlie, partner.app_key, status="inactive")
    assert [g["account"] for g in (await get_json(
        management, key_url("bravo", partner.app_key), bravo_admin))["grantedIn"]] == [
        "acme", "charlie"]
    assert (await management.delete(ext_url("acme", partner.app_key),
                                    headers=acme.headers)).status == 204
    assert (await get_json(management, key_url("bravo", partner.app_key),
                           bravo_admin))["grantedIn"] == [
        {"account": "charlie", "addedDate": charlie_added}]
    # an account that never granted anything does not appear, and beta cannot see it
    await expect_error(await management.get(key_url("beta", partner.app_key),
                                            headers=beta.headers), 404)


# -- the proxy: the effective key -------------------------------------------------------
@pytest.fixture
async def granted(management, make_key, admins) -> dict[str, Any]:
    """A beta key (own role orders-reader) granted orders-writer in acme."""
    acme = await admins("acme")
    beta = await admins("beta")
    partner = await make_key("beta", ["orders-reader"], label="partner")
    await add(management, "acme", acme, partner.app_key, roles=["orders-writer"])
    return {"acme": acme, "beta": beta, "key": partner}


async def test_deactivating_the_key_in_its_owner_account_takes_effect_on_next_request(
    management, proxy, granted
):
    partner, beta = granted["key"], granted["beta"]
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200
    response = await management.patch(key_url("beta", partner.app_key),
                                      json={"status": "inactive"}, headers=beta.headers)
    assert response.status == 200
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 401,
                       "key_inactive")
    await expect_error(await proxy.get("/beta/orders/1", headers=partner.headers), 401,
                       "key_inactive")
    # the grant in acme is still active: the key's own status is what stops it
    grant = await get_json(management, ext_url("acme", partner.app_key), granted["acme"])
    assert grant["status"] == "active"
    response = await management.patch(key_url("beta", partner.app_key),
                                      json={"status": "active"}, headers=beta.headers)
    assert response.status == 200
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200


async def test_deleting_the_key_in_its_owner_account_ends_every_grant(
    management, proxy, granted, gateway
):
    partner, beta, acme = granted["key"], granted["beta"], granted["acme"]
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200
    response = await management.delete(key_url("beta", partner.app_key), headers=beta.headers)
    assert response.status == 204
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 401,
                       "invalid_credentials")
    # acme's list forgets it; it cannot be patched back to life or re-added
    assert (await get_json(management, ext_url("acme"), acme))["total"] == 0
    await expect_error(await management.get(ext_url("acme", partner.app_key),
                                            headers=acme.headers), 404)
    await expect_error(await management.patch(ext_url("acme", partner.app_key),
                                              json={"status": "active"}, headers=acme.headers),
                       404)
    await add(management, "acme", acme, partner.app_key, expect=404)
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 401,
                       "invalid_credentials")
    assert [x async for batch in gateway.store.iter_grants("acme") for x in batch] == []


async def test_renewing_the_token_now_in_the_owner_account_takes_effect_on_next_request(
    management, proxy, granted
):
    partner, beta = granted["key"], granted["beta"]
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200
    response = await management.post(key_url("beta", partner.app_key) + "/token/renew",
                                     json={"deleteOld": "now"}, headers=beta.headers)
    text = await response.text()
    assert response.status == 200, text
    renewed = Key(partner.app_key, orjson.loads(text)["appToken"])
    assert renewed.token != partner.token
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 401,
                       "invalid_credentials")
    # the grant belongs to the key, not to the token
    assert await status_of(proxy, "POST", "/orders/1", renewed) == 200
    assert await status_of(proxy, "GET", "/beta/orders/1", renewed) == 200


async def test_renewal_with_overlap_then_finish_on_the_granting_accounts_route(
    management, proxy, granted
):
    partner, beta = granted["key"], granted["beta"]
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200
    url = key_url("beta", partner.app_key) + "/token"
    response = await management.post(url + "/renew", json={"deleteOld": "later"},
                                     headers=beta.headers)
    assert response.status == 200, await response.text()
    renewed = Key(partner.app_key, (await response.json())["appToken"])
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200
    assert await status_of(proxy, "POST", "/orders/1", renewed) == 200
    response = await management.post(url + "/finish-renewal", headers=beta.headers)
    assert response.status == 200, await response.text()
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 401,
                       "invalid_credentials")
    assert await status_of(proxy, "POST", "/orders/1", renewed) == 200


async def test_grant_status_and_roles_in_the_granting_account_take_effect_on_next_request(
    management, proxy, granted
):
    partner, acme = granted["key"], granted["acme"]
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200

    await patch(management, "acme", acme, partner.app_key, status="inactive")
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 403,
                       "grant_inactive")
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403,
                       "grant_inactive")
    assert await status_of(proxy, "GET", "/beta/orders/1", partner) == 200  # owner unaffected
    await patch(management, "acme", acme, partner.app_key, status="active")
    assert await status_of(proxy, "POST", "/orders/1", partner) == 200

    await patch(management, "acme", acme, partner.app_key, roles=[])
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403, "no_roles")
    # an unrelated change keeps the empty role list empty
    assert (await patch(management, "acme", acme, partner.app_key, label="x"))["roles"] == []
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403, "no_roles")

    await patch(management, "acme", acme, partner.app_key, roles=["catalog-reader"])
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403,
                       "not_permitted")
    await patch(management, "acme", acme, partner.app_key, roles=["orders-reader"])
    assert await status_of(proxy, "GET", "/orders/1", partner) == 200
    await expect_error(await proxy.post("/orders/1", headers=partner.headers), 403,
                       "not_permitted")
    await patch(management, "acme", acme, partner.app_key,
                roles=["orders-writer", "suspended-partner"])
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403,
                       "not_permitted")

    response = await management.delete(ext_url("acme", partner.app_key), headers=acme.headers)
    assert response.status == 204
    await expect_error(await proxy.get("/orders/1", headers=partner.headers), 403, "no_grant")


async def test_no_grant_leaks_across_accounts(management, proxy, upstream, make_key, admins):
    acme, beta = await admins("acme"), await admins("beta")
    # x: owned by charlie (catalog only there); reader in acme, writer in beta
    x = await make_key("charlie", ["catalog-reader"], label="x")
    await add(management, "acme", acme, x.app_key, roles=["orders-reader"])
    await add(management, "beta", beta, x.app_key, roles=["orders-writer"])
    # y: owned by beta (writer there); reader in acme, owner in charlie
    y = await make_key("beta", ["orders-writer"], label="y")
    await add(management, "acme", acme, y.app_key, roles=["orders-reader"])
    charlie_owner = await make_key("charlie", ["owner"], label="owner")  # may assign owner
    await add(management, "charlie", charlie_owner, y.app_key, roles=["owner"])
    # z: owned by acme (writer there), granted nothing elsewhere
    z = await make_key("acme", ["orders-writer"], label="z")

    expected = {
        # key, method, path: status
        (x, "GET", "/orders/1"): 200,
        (x, "POST", "/orders/1"): 403,
        (x, "POST", "/beta/orders/1"): 200,
        (x, "GET", "/beta/orders/1"): 200,
        (x, "GET", "/accounts/acme/o"): 200,
        (x, "POST", "/accounts/acme/o"): 403,
        (x, "POST", "/accounts/beta/o"): 200,
        (x, "GET", "/accounts/charlie/o"): 403,
        (x, "POST", "/accounts/charlie/o"): 403,
        (x, "GET", "/accounts/delta/o"): 403,
        (x, "DELETE", "/accounts/beta/o"): 403,
        (y, "GET", "/orders/1"): 200,
        (y, "POST", "/orders/1"): 403,
        (y, "POST", "/beta/orders/1"): 200,
        (y, "DELETE", "/accounts/charlie/o"): 200,
        (y, "DELETE", "/accounts/beta/o"): 403,
        (y, "DELETE", "/accounts/acme/o"): 403,
        (y, "POST", "/accounts/charlie/o"): 200,
        (z, "POST", "/orders/1"): 200,
        (z, "GET", "/beta/orders/1"): 403,
        (z, "GET", "/accounts/charlie/o"): 403,
    }
    actual = {case: await status_of(proxy, case[1], case[2], case[0]) for case in expected}
    assert actual == expected

    # what reached the upstream carries only the target account's roles
    await status_of(proxy, "GET", "/orders/1", x)
    seen = upstream.last["headers"]
    assert (seen["X-Keygate-Account"], seen["X-Keygate-Owner-Account"],
            seen["X-Keygate-Roles"]) == ("acme", "charlie", "orders-reader")
    await status_of(proxy, "POST", "/beta/orders/1", x)
    seen = upstream.last["headers"]
    assert (seen["X-Keygate-Account"], seen["X-Keygate-Roles"]) == ("beta", "orders-writer")
    await status_of(proxy, "DELETE", "/accounts/charlie/o", y)
    seen = upstream.last["headers"]
    assert (seen["X-Keygate-Account"], seen["X-Keygate-Owner-Account"],
            seen["X-Keygate-Roles"]) == ("charlie", "beta", "owner")

    # y is owner of charlie's orders, not of charlie's key management: owner is "everything
    # in the account it is granted in", so it may; but never of acme's or beta's
    assert (await management.get(ext_url("charlie"), headers=y.headers)).status == 200
    await expect_error(await management.get(ext_url("acme"), headers=y.headers), 403,
                       "not_permitted")
    await expect_error(await management.get(ext_url("beta"), headers=y.headers), 403,
                       "not_permitted")
    await expect_error(await management.get(ext_url("acme"), headers=beta.headers), 403,
                       "no_grant")


# -- audit -----------------------------------------------------------------------------
async def test_audit_records_add_update_remove_in_the_granting_account(
    management, make_key, admins
):
    acme = await admins("acme")
    beta = await admins("beta")
    partner = await make_key("beta", ["orders-reader"], label="beta's own label")

    async def audit(account: str, admin: Key, **params: Any) -> list[dict[str, Any]]:
        return (await get_json(management, f"/api/v1/accounts/{account}/audit", admin,
                               **params))["items"]

    response = await management.post(
        ext_url("acme"),
        json={"appKey": partner.app_key, "label": "partner", "roles": ["orders-reader"]},
        headers=acme.headers,
    )
    assert response.status == 201
    add_request = response.headers["X-Request-Id"]
    # refused changes leave no trace
    await add(management, "acme", acme, partner.app_key, expect=409)
    await management.patch(ext_url("acme", partner.app_key), json={"roles": ["nope"]},
                           headers=acme.headers)

    [added] = await audit("acme", acme, action="external-key.add")
    assert added["actor"] == acme.app_key
    assert added["target"] == partner.app_key
    assert added["account"] == "acme"
    assert added["requestId"] == add_request
    assert added["before"] == {}
    assert added["after"] == {"label": "partner", "roles": ["orders-reader"], "status": "active"}

    await patch(management, "acme", acme, partner.app_key, label="renamed",
                roles=["orders-writer", "catalog-reader"])
    await patch(management, "acme", acme, partner.app_key, status="inactive")
    await patch(management, "acme", acme, partner.app_key, roles=[])
    updates = await audit("acme", acme, action="external-key.update")
    assert [(u["before"], u["after"]) for u in updates] == [  # newest first
        ({"roles": ["orders-writer", "catalog-reader"]}, {"roles": []}),
        ({"status": "active"}, {"status": "inactive"}),
        ({"label": "partner", "roles": ["orders-reader"]},
         {"label": "renamed", "roles": ["orders-writer", "catalog-reader"]}),
    ]
    assert all(u["target"] == partner.app_key and u["actor"] == acme.app_key for u in updates)

    assert (await management.delete(ext_url("acme", partner.app_key),
                                    headers=acme.headers)).status == 204
    [removed] = await audit("acme", acme, action="external-key.remove")
    assert removed["target"] == partner.app_key
    assert removed["before"] == {"label": "renamed", "roles": [], "status": "inactive"}
    assert removed["after"] == {}

    everything = await audit("acme", acme)
    assert [e["action"] for e in everything if e["action"].startswith("external-key.")] == [
        "external-key.remove", "external-key.update", "external-key.update",
        "external-key.update", "external-key.add"]
    # the owner account's audit holds nothing of acme's grant
    beta_events = await audit("beta", beta, limit=500)
    assert not [e for e in beta_events if e["action"].startswith("external-key.")]
    assert "renamed" not in orjson.dumps(beta_events).decode()


# -- several gateway instances ---------------------------------------------------------
@pytest.fixture
async def second_proxy(gateway, make_settings, clock, aiohttp_client) -> AsyncIterator[Any]:
    """Another keygate instance on the same store (its own caches), with its proxy."""
    from gateway.app import build_gateway

    other = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix), clock=clock)
    other.start()
    try:
        await until_cache_trusted(other)
        yield await aiohttp_client(ProxyTestServer(other))
    finally:
        await other.close()


async def eventually_status(proxy: Any, method: str, path: str, key: Key, want: int) -> None:
    """Poll (bounded at 10 s, far above the ≤ 1 s target) until the instance answers
    ``want``: the change is published, not waited out by the cache's TTL (60 s)."""
    got = None
    for _ in range(200):
        got = await status_of(proxy, method, path, key)
        if got == want:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{method} {path} still answers {got}, not {want}, on the other instance")


async def test_grant_changes_reach_every_instances_cache(
    management, make_key, admins, second_proxy
):
    acme = await admins("acme")
    partner = await make_key("beta", ["orders-reader"], label="partner")
    # the other instance caches "no grant in acme" for this key
    assert await status_of(second_proxy, "GET", "/orders/1", partner) == 403
    assert await status_of(second_proxy, "GET", "/orders/1", partner) == 403

    await add(management, "acme", acme, partner.app_key, roles=["orders-reader"])
    await eventually_status(second_proxy, "GET", "/orders/1", partner, 200)
    await patch(management, "acme", acme, partner.app_key, roles=["orders-writer"])
    await eventually_status(second_proxy, "POST", "/orders/1", partner, 200)
    await patch(management, "acme", acme, partner.app_key, status="inactive")
    await eventually_status(second_proxy, "POST", "/orders/1", partner, 403)
    await patch(management, "acme", acme, partner.app_key, status="active")
    await eventually_status(second_proxy, "POST", "/orders/1", partner, 200)
    response = await management.delete(ext_url("acme", partner.app_key), headers=acme.headers)
    assert response.status == 204
    await eventually_status(second_proxy, "GET", "/orders/1", partner, 403)
    # the key in its owner account was never affected
    assert await status_of(second_proxy, "GET", "/beta/orders/1", partner) == 200


async def test_an_external_key_is_added_with_its_key_and_roles_alone(management, make_key,
                                                                     admins):
    """As in the system keygate reproduces: the label is optional (but not empty when
    given)."""
    acme = await admins("acme")
    partner = await make_key("beta", ["orders-reader"])
    response = await management.post(
        ext_url("acme"), json={"appKey": partner.app_key, "roles": ["orders-reader"]},
        headers=acme.headers)
    assert response.status == 201, await response.text()
    added = await response.json()
    assert (added["label"], added["roles"], added["status"]) == ("", ["orders-reader"],
                                                                 "active")
    other = await make_key("beta", ["orders-reader"])
    response = await management.post(
        ext_url("acme"), json={"appKey": other.app_key, "roles": [], "label": " "},
        headers=acme.headers)
    await expect_error(response, 400, "bad_label")


# -- grant follow-ups racing other changes ------------------------------------------
async def test_a_slow_followup_replay_re_adds_a_removed_grant_to_the_index_and_audit(
    gateway, make_key
):
    """Instance X adds a grant (script: grant + follow-up 'add'), reads the key's
    follow-ups, and is slow to apply them. Instance Y removes the grant meanwhile: it
    applies X's pending follow-up (done marker set), clears it, DELETES the done marker,
    removes the grant and applies its own 'remove' follow-up. X then applies the 'add'
    follow-up it read: its marker is gone, so the SET NX succeeds and the key goes back
    into beta's external-key index, and beta's audit log gets a second
    'external-key.add' — after the removal — for a grant that no longer exists.
    (apply_followup.lua: "the marker makes a replay a no-op" — not a concurrent one.)"""
    store = gateway.store
    partner = await make_key("acme", ["orders-reader"], label="partner")

    async def other_instance_removes_the_grant() -> None:
        hook.restore()  # Y's own follow-ups run the real script
        assert await store.remove_grant("beta", partner.app_key, CLI_ACTOR)

    # X's first apply_followup call: the follow-up of its add, read before Y's removal
    hook = Before(store, "apply_followup", other_instance_removes_the_grant)
    try:
        await store.add_grant("beta", partner.app_key, "partner", ["orders-reader"],
                              CLI_ACTOR)
    finally:
        hook.restore()
    assert hook.fired
    assert await store.get_grant("beta", partner.app_key) is None  # the grant is gone
    events, _ = await store.audit_events("beta", limit=10)
    actions = [e.action for e in events]  # newest first
    index = await store.redis.zrange(store.names.account("beta", "ext"), 0, -1)
    assert actions == ["external-key.remove", "external-key.add"], (
        f"beta's audit log, newest first: {actions}")
    assert index == [], f"beta's external-key index still lists {index}"


async def test_a_grant_added_while_its_key_is_deleted_is_never_audited(gateway, make_key):
    """delete_key applies the key's pending follow-ups, then runs its script, which
    replaces the hash by a tombstone. A grant added in between (another instance) has
    committed — it authorized requests in beta from that moment — but its follow-up (the
    'external-key.add' event in beta's audit log) lives in the hash and is dropped with
    it; the adding instance then finds no follow-up to apply. Expected: beta's audit log
    records the grant that was in force."""
    store = gateway.store
    partner = await make_key("acme", ["orders-reader"], label="partner")
    granted, deleted = asyncio.Event(), asyncio.Event()
    adding: list[asyncio.Task[Any]] = []

    async def grant_committed() -> None:  # the adding instance, just after its script
        granted.set()
        await deleted.wait()

    async def another_instance_adds_a_grant() -> None:  # just before the delete script
        adding.append(asyncio.create_task(store.add_grant(
            "beta", partner.app_key, "partner", ["orders-reader"], CLI_ACTOR)))
        await granted.wait()

    add_hook = Before(store, "add_grant", grant_committed, after=True)
    delete_hook = Before(store, "delete_key", another_instance_adds_a_grant)
    try:
        assert await store.delete_key("acme", partner.app_key, actor=CLI_ACTOR)
        deleted.set()
        added = await adding[0]
    finally:
        add_hook.restore()
        delete_hook.restore()
    assert added.roles == ("orders-reader",)  # the grant was committed and answered
    events, _ = await store.audit_events("beta", limit=10)
    assert [e.action for e in events] != [], (
        "a grant that was in force left no trace in the granting account's audit log")
