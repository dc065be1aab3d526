"""The management API's generated-keys endpoints (DESIGN.md §3), against the real stack:
a private redis-server, real Casbin with model.conf and policies/, both aiohttp apps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ProxyTestServer
from ports import free_port

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.store import KeyNameTaken

KEYS = "/api/v1/accounts/acme/keys"
CREATED_FIELDS = {
    "appKey", "appToken", "label", "roles", "status", "creationDate", "creationDateToken",
}


async def expect_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one JSON error shape, with the expected status (and code)."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["requestId"], str) and error["requestId"]
    assert response.headers["X-Request-Id"] == error["requestId"]
    if code is not None:
        assert error["code"] == code, error
    return error


async def create(management: Any, headers: dict[str, str], account: str = "acme",
                 **body: Any) -> dict[str, Any]:
    body.setdefault("label", "a key")
    body.setdefault("roles", ["orders-reader"])
    response = await management.post(f"/api/v1/accounts/{account}/keys", json=body,
                                     headers=headers)
    assert response.status == 201, await response.text()
    return await response.json()


def creds(created: dict[str, Any]) -> dict[str, str]:
    return {"X-API-AppKey": created["appKey"], "X-API-AppToken": created["appToken"]}


# -- create ----------------------------------------------------------------------------
async def test_create_returns_the_token_once_and_it_works_on_the_proxy(
    management, proxy, admin_key, gateway
):
    response = await management.post(
        KEYS, json={"label": "ci runner", "roles": ["orders-reader"]}, headers=admin_key.headers
    )
    assert response.status == 201
    created = await response.json()
    assert set(created) >= CREATED_FIELDS
    assert created["label"] == "ci runner"
    assert created["roles"] == ["orders-reader"]
    assert created["status"] == "active"
    assert gateway.fmt.key_account(created["appKey"]) == "acme"
    assert gateway.fmt.token_well_formed(created["appToken"])
    assert created["creationDate"].endswith("Z")
    assert created["creationDateToken"] == created["creationDate"]

    ok = await proxy.get("/orders/1", headers=creds(created))
    assert ok.status == 200
    # orders-reader may read but not write
    await expect_error(await proxy.post("/orders/1", headers=creds(created)), 403,
                       "not_permitted")
    # a wrong token for the same key is refused
    wrong = {**creds(created), "X-API-AppToken": gateway.fmt.new_token()}
    await expect_error(await proxy.get("/orders/1", headers=wrong), 401, "invalid_credentials")


async def test_no_other_endpoint_returns_the_token_or_its_digest(management, admin_key, gateway):
    created = await create(management, admin_key.headers, label="secret holder")
    token, app_key = created["appToken"], created["appKey"]
    digest = gateway.hasher.digest(token)
    assert digest != token
    h = admin_key.headers
    bodies = []
    for response in (
        await management.get(KEYS, headers=h),
        await management.get(KEYS + "?q=secret", headers=h),
        await management.get(f"{KEYS}/{app_key}", headers=h),
        await management.patch(f"{KEYS}/{app_key}", json={"label": "renamed"}, headers=h),
        await management.patch(f"{KEYS}/{app_key}", json={"status": "inactive"}, headers=h),
        await management.get(f"{KEYS}/{app_key}", headers=h),
        await management.get("/api/v1/accounts/acme/export?format=csv", headers=h),
        await management.get("/api/v1/accounts/acme/audit", headers=h),
    ):
        assert response.status == 200
        bodies.append(await response.text())
    # the list and get did show the key, so the scan looked at the right documents
    assert all(app_key in body for body in bodies)
    for body in bodies:
        assert token not in body
        assert digest not in body
        assert digest.upper() not in body
        assert "appToken" not in body


async def test_answers_with_tokens_links_or_key_data_are_never_stored(management, admin_key):
    """A new token (create, renew), a one-time link, a session, key data: no browser or
    proxy cache may keep any of them, and no browser may sniff them into something else.
    Create and renew said nothing about caching."""
    h = admin_key.headers
    created = await management.post(KEYS, json={"label": "k", "roles": ["orders-reader"]},
                                    headers=h)
    app_key = (await created.json())["appKey"]
    linked = await management.post(KEYS, headers=h, json={
        "label": "l", "roles": ["orders-reader"], "delivery": "link"})
    renewed = await management.post(f"{KEYS}/{app_key}/token/renew", headers=h,
                                    json={"deleteOld": "now"})
    login = await management.post("/api/v1/auth/login", json={
        "appKey": admin_key.app_key, "appToken": admin_key.token})
    for response in (
        created, linked, renewed, login,
        await management.get(KEYS, headers=h),
        await management.get(f"{KEYS}/{app_key}", headers=h),
        await management.get("/api/v1/accounts/acme/audit", headers=h),
        await management.get("/api/v1/accounts/acme/me", headers=h),
        await management.get(f"{KEYS}/kgk-acme-0000000000", headers=h),
    ):
        assert response.status < 500, await response.text()
        assert response.headers["Cache-Control"] == "no-store", response.url
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
    # what may be cached still says so itself
    assert "max-age" in (await management.get("/.well-known/jwks.json")).headers["Cache-Control"]
    assert (await management.get("/admin/")).headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    ("body", "code", "mentions"),
    [
        ({"roles": ["orders-reader"]}, "missing_field", "label"),
        ({"label": "x"}, "missing_field", "roles"),
        ({"label": "x", "roles": ["orders-reader"], "owner": "beta"}, "unknown_field", "owner"),
        ({"label": "x", "roles": ["orders-reader", "galactic-emperor"]}, "unknown_role",
         "galactic-emperor"),
        ({"label": "x", "roles": "orders-reader"}, "bad_roles", "roles"),
        ({"label": "x", "roles": [1]}, "bad_roles", "roles"),
        ({"label": "   ", "roles": ["orders-reader"]}, "bad_label", "label"),
        ({"label": "x" * 201, "roles": ["orders-reader"]}, "bad_label", "label"),
        ({"label": 5, "roles": ["orders-reader"]}, "bad_label", "label"),
        ({"label": "tab\there", "roles": ["orders-reader"]}, "bad_label", "label"),
    ],
)
async def test_create_validation_errors(management, admin_key, body, code, mentions):
    response = await management.post(KEYS, json=body, headers=admin_key.headers)
    error = await expect_error(response, 400, code)
    assert mentions in error["message"]
    # nothing was created
    listing = await (await management.get(KEYS, headers=admin_key.headers)).json()
    assert [k["appKey"] for k in listing["items"]] == [admin_key.app_key]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "bad_json"),
        (b"", "application/json", 400, "bad_json"),
        (b'["label", "roles"]', "application/json", 400, "bad_json"),
        (b'"a string"', "application/json", 400, "bad_json"),
        (b"null", "application/json", 400, "bad_json"),
        (b'{"label": "x", "roles": ["orders-reader"]}', "text/plain", 415,
         "unsupported_media_type"),
        (b'{"label": "x", "roles": ["orders-reader"]}', "application/x-www-form-urlencoded",
         415, "unsupported_media_type"),
    ],
)
async def test_create_body_errors(management, admin_key, data, content_type, status, code):
    headers = {**admin_key.headers, "Content-Type": content_type}
    response = await management.post(KEYS, data=data, headers=headers)
    await expect_error(response, status, code)


async def test_create_accepts_json_with_charset(management, admin_key):
    headers = {**admin_key.headers, "Content-Type": "application/json; charset=utf-8"}
    response = await management.post(
        KEYS, data=b'{"label": "x", "roles": ["orders-reader"]}', headers=headers
    )
    assert response.status == 201


async def test_create_deduplicates_roles_and_strips_label(management, admin_key):
    created = await create(
        management, admin_key.headers, label="  padded  ",
        roles=["orders-reader", "catalog-reader", "orders-reader"],
    )
    assert created["label"] == "padded"
    assert created["roles"] == ["orders-reader", "catalog-reader"]


async def test_oversized_body_is_413(management, admin_key, gateway):
    limit = gateway.settings.management_max_body
    body = b'{"label": "' + b"x" * limit + b'", "roles": []}'
    response = await management.post(
        KEYS, data=body, headers={**admin_key.headers, "Content-Type": "application/json"}
    )
    await expect_error(response, 413, "payload_too_large")


# -- list ------------------------------------------------------------------------------
@pytest.fixture
async def listed(management, admin_key, clock) -> dict[str, dict[str, Any]]:
    """Four more keys in acme, one second apart, with distinct labels, roles, statuses."""
    keys = {}
    for label, roles in (
        ("Bravo deploy", ["orders-reader"]),
        ("alpha build", ["orders-writer"]),
        ("charlie", ["catalog-reader", "orders-reader"]),
        ("delta", ["api-keys-viewer"]),
    ):
        clock.advance(1)
        keys[label] = await create(management, admin_key.headers, label=label, roles=roles)
    response = await management.patch(
        f"{KEYS}/{keys['charlie']['appKey']}", json={"status": "inactive"},
        headers=admin_key.headers,
    )
    assert response.status == 200
    return keys


async def list_of(management, headers, query: str = "") -> dict[str, Any]:
    response = await management.get(KEYS + query, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


def labels(body: dict[str, Any]) -> list[str]:
    return [item["label"] for item in body["items"]]


async def test_list_default_is_newest_first_with_paging_fields(management, admin_key, listed):
    body = await list_of(management, admin_key.headers)
    assert set(body) == {"items", "total", "page", "perPage"}
    assert body["total"] == 5 and body["page"] == 1 and body["perPage"] == 20
    assert labels(body) == ["delta", "charlie", "alpha build", "Bravo deploy", "admin"]
    for item in body["items"]:
        assert CREATED_FIELDS - {"appToken"} <= set(item)
        assert "appToken" not in item


async def test_list_q_matches_label_or_app_key(management, admin_key, listed):
    body = await list_of(management, admin_key.headers, "?q=DEPLOY")
    assert labels(body) == ["Bravo deploy"] and body["total"] == 1
    wanted = listed["alpha build"]["appKey"]
    fragment = wanted.rsplit("-", 1)[1][2:8]
    body = await list_of(management, admin_key.headers, f"?q={fragment}")
    assert wanted in [item["appKey"] for item in body["items"]]
    assert all(
        fragment.casefold() in (i["appKey"].casefold() + "\0" + i["label"].casefold())
        for i in body["items"]
    )
    body = await list_of(management, admin_key.headers, "?q=no-such-thing")
    assert body == {"items": [], "total": 0, "page": 1, "perPage": 20}


async def test_list_filters_status_and_role(management, admin_key, listed):
    body = await list_of(management, admin_key.headers, "?status=inactive")
    assert labels(body) == ["charlie"] and body["total"] == 1
    body = await list_of(management, admin_key.headers, "?status=active")
    assert body["total"] == 4 and "charlie" not in labels(body)
    body = await list_of(management, admin_key.headers, "?role=orders-reader")
    # the role filter looks at the grant's roles, not at what they inherit
    assert sorted(labels(body)) == ["Bravo deploy", "charlie"]
    body = await list_of(management, admin_key.headers, "?role=orders-reader&status=active")
    assert labels(body) == ["Bravo deploy"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?sort=label&order=asc", ["admin", "alpha build", "Bravo deploy", "charlie", "delta"]),
        ("?sort=label&order=desc", ["delta", "charlie", "Bravo deploy", "alpha build", "admin"]),
        ("?sort=creationDate&order=asc",
         ["admin", "Bravo deploy", "alpha build", "charlie", "delta"]),
        ("?sort=creationDate", ["delta", "charlie", "alpha build", "Bravo deploy", "admin"]),
    ],
)
async def test_list_sort_and_order(management, admin_key, listed, query, expected):
    assert labels(await list_of(management, admin_key.headers, query)) == expected


async def test_list_sort_by_app_key_and_status(management, admin_key, listed):
    body = await list_of(management, admin_key.headers, "?sort=appKey&order=asc")
    keys = [item["appKey"] for item in body["items"]]
    assert keys == sorted(keys) and len(keys) == 5
    body = await list_of(management, admin_key.headers, "?sort=appKey&order=desc")
    assert [item["appKey"] for item in body["items"]] == sorted(keys, reverse=True)
    body = await list_of(management, admin_key.headers, "?sort=status&order=desc")
    assert [item["status"] for item in body["items"]] == ["inactive"] + ["active"] * 4
    body = await list_of(management, admin_key.headers, "?sort=status&order=asc")
    assert [item["status"] for item in body["items"]] == ["active"] * 4 + ["inactive"]


async def test_list_pages(management, admin_key, listed):
    everything = labels(await list_of(management, admin_key.headers, "?sort=label&order=asc"))
    seen = []
    for page in (1, 2, 3):
        body = await list_of(
            management, admin_key.headers, f"?sort=label&order=asc&page={page}&perPage=2"
        )
        assert body["total"] == 5 and body["page"] == page and body["perPage"] == 2
        seen += labels(body)
    assert seen == everything
    body = await list_of(management, admin_key.headers, "?page=4&perPage=2")
    assert body["items"] == [] and body["total"] == 5
    # the unfiltered creationDate listing (the fast path) pages the same way
    first = await list_of(management, admin_key.headers, "?perPage=3")
    second = await list_of(management, admin_key.headers, "?perPage=3&page=2")
    assert labels(first) + labels(second) == [
        "delta", "charlie", "alpha build", "Bravo deploy", "admin"
    ]
    # a filtered query reports the filtered total, not the account's
    body = await list_of(management, admin_key.headers, "?status=active&perPage=1&page=2")
    assert body["total"] == 4 and len(body["items"]) == 1


@pytest.mark.parametrize(
    "query",
    [
        "?page=0", "?page=-1", "?page=abc", "?page=1.5", "?perPage=0", "?perPage=101",
        "?perPage=x", "?sort=secret", "?sort=appToken", "?order=up", "?status=deleted",
        "?q=" + "x" * 201,
    ],
)
async def test_list_bad_query_is_400(management, admin_key, query):
    await expect_error(await management.get(KEYS + query, headers=admin_key.headers), 400,
                       "bad_query")


@pytest.mark.parametrize("name", ["page", "perPage"])
async def test_list_huge_page_number_is_400(management, admin_key, name):
    response = await management.get(f"{KEYS}?{name}=" + "9" * 5000, headers=admin_key.headers)
    await expect_error(response, 400, "bad_query")


async def test_list_huge_but_short_page_number_is_400(management, admin_key):
    response = await management.get(KEYS + "?page=" + "9" * 30, headers=admin_key.headers)
    await expect_error(response, 400, "bad_query")


async def test_list_unicode_digit_page_is_400(management, admin_key):
    response = await management.get(KEYS + "?page=%C2%B2", headers=admin_key.headers)
    await expect_error(response, 400, "bad_query")


# -- get -------------------------------------------------------------------------------
async def test_get_one_key(management, admin_key):
    created = await create(management, admin_key.headers, label="one",
                           roles=["orders-writer"])
    response = await management.get(f"{KEYS}/{created['appKey']}", headers=admin_key.headers)
    assert response.status == 200
    body = await response.json()
    assert body["appKey"] == created["appKey"]
    assert body["label"] == "one" and body["roles"] == ["orders-writer"]
    assert body["status"] == "active"
    assert body["creationDate"] == created["creationDate"]
    assert "appToken" not in body


async def test_get_unknown_key_is_404(management, admin_key, gateway):
    missing = gateway.fmt.new_key("acme")
    error = await expect_error(
        await management.get(f"{KEYS}/{missing}", headers=admin_key.headers), 404,
        "key_not_found",
    )
    assert missing in error["message"]
    await expect_error(
        await management.get(f"{KEYS}/not-a-key", headers=admin_key.headers), 404,
        "key_not_found",
    )


async def test_other_accounts_key_is_invisible_through_own_account(
    management, proxy, admin_key, make_key
):
    beta = await make_key("beta", ["owner"], label="beta's")
    h = admin_key.headers
    path = f"{KEYS}/{beta.app_key}"
    await expect_error(await management.get(path, headers=h), 404, "key_not_found")
    await expect_error(await management.patch(path, json={"status": "inactive"}, headers=h),
                       404, "key_not_found")
    await expect_error(await management.patch(path, json={"roles": []}, headers=h),
                       404, "key_not_found")
    await expect_error(await management.delete(path, headers=h), 404, "key_not_found")
    listing = await list_of(management, h, f"?q={beta.app_key}")
    assert listing["total"] == 0
    # beta's key is untouched: still active, still its roles, still works in beta
    own = await management.get(f"/api/v1/accounts/beta/keys/{beta.app_key}",
                               headers=beta.headers)
    assert own.status == 200
    body = await own.json()
    assert body["status"] == "active" and body["roles"] == ["owner"]
    assert (await proxy.get("/beta/orders/1", headers=beta.headers)).status == 200


# -- patch -----------------------------------------------------------------------------
async def test_patch_label_roles_status(management, admin_key):
    created = await create(management, admin_key.headers, label="before")
    path = f"{KEYS}/{created['appKey']}"
    response = await management.patch(
        path, json={"label": "after", "roles": ["catalog-reader", "orders-writer"],
                    "status": "inactive"},
        headers=admin_key.headers,
    )
    assert response.status == 200
    body = await response.json()
    assert body["label"] == "after"
    assert body["roles"] == ["catalog-reader", "orders-writer"]
    assert body["status"] == "inactive"
    assert "appToken" not in body
    again = await (await management.get(path, headers=admin_key.headers)).json()
    assert {k: again[k] for k in body} == body
    # a label-only change keeps the rest
    response = await management.patch(path, json={"label": "third"}, headers=admin_key.headers)
    body = await response.json()
    assert body["label"] == "third" and body["status"] == "inactive"
    assert body["roles"] == ["catalog-reader", "orders-writer"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "empty_change"),
        ({"status": "deleted"}, "bad_status"),
        ({"status": None}, "bad_status"),
        ({"status": "ACTIVE"}, "bad_status"),
        ({"roles": ["nobody-role"]}, "unknown_role"),
        ({"label": ""}, "bad_label"),
        ({"appToken": "kgt_x"}, "unknown_field"),
        ({"appKey": "kgk-acme-0000000000"}, "unknown_field"),
    ],
)
async def test_patch_validation(management, admin_key, body, code):
    path = f"{KEYS}/{admin_key.app_key}"
    await expect_error(await management.patch(path, json=body, headers=admin_key.headers),
                       400, code)
    unchanged = await (await management.get(path, headers=admin_key.headers)).json()
    assert unchanged["status"] == "active" and unchanged["label"] == "admin"
    assert unchanged["roles"] == ["user-admin-restricted"]


async def test_patch_unknown_key_is_404(management, admin_key, gateway):
    path = f"{KEYS}/{gateway.fmt.new_key('acme')}"
    await expect_error(await management.patch(path, json={"label": "x"},
                                              headers=admin_key.headers), 404, "key_not_found")


async def test_deactivate_and_reactivate_on_the_proxy(management, proxy, admin_key):
    created = await create(management, admin_key.headers)
    path = f"{KEYS}/{created['appKey']}"
    assert (await proxy.get("/orders/1", headers=creds(created))).status == 200

    response = await management.patch(path, json={"status": "inactive"},
                                      headers=admin_key.headers)
    assert response.status == 200
    await expect_error(await proxy.get("/orders/1", headers=creds(created)), 401,
                       "key_inactive")

    response = await management.patch(path, json={"status": "active"},
                                      headers=admin_key.headers)
    assert response.status == 200
    assert (await proxy.get("/orders/1", headers=creds(created))).status == 200


async def test_changing_roles_changes_the_proxy_decision(management, proxy, admin_key):
    created = await create(management, admin_key.headers, roles=["orders-reader"])
    path = f"{KEYS}/{created['appKey']}"
    await expect_error(await proxy.post("/orders/1", headers=creds(created)), 403)

    await management.patch(path, json={"roles": ["orders-writer"]}, headers=admin_key.headers)
    assert (await proxy.post("/orders/1", headers=creds(created))).status == 200

    await management.patch(path, json={"roles": ["catalog-reader"]}, headers=admin_key.headers)
    await expect_error(await proxy.get("/orders/1", headers=creds(created)), 403,
                       "not_permitted")

    response = await management.patch(path, json={"roles": []}, headers=admin_key.headers)
    assert (await response.json())["roles"] == []
    await expect_error(await proxy.get("/orders/1", headers=creds(created)), 403, "no_roles")


async def test_deactivated_admin_loses_the_management_api(management, admin_key, make_key):
    owner = await make_key("acme", ["owner"], label="owner")  # only it may act on admins
    response = await management.patch(f"{KEYS}/{admin_key.app_key}",
                                      json={"status": "inactive"}, headers=owner.headers)
    assert response.status == 200
    await expect_error(await management.get(KEYS, headers=admin_key.headers), 401,
                       "key_inactive")


# -- delete ----------------------------------------------------------------------------
async def test_delete(management, proxy, admin_key, gateway):
    created = await create(management, admin_key.headers)
    path = f"{KEYS}/{created['appKey']}"
    assert (await proxy.get("/orders/1", headers=creds(created))).status == 200

    response = await management.delete(path, headers=admin_key.headers)
    assert response.status == 204
    assert await response.read() == b""

    await expect_error(await management.get(path, headers=admin_key.headers), 404,
                       "key_not_found")
    await expect_error(await management.delete(path, headers=admin_key.headers), 404,
                       "key_not_found")
    await expect_error(await management.patch(path, json={"status": "active"},
                                              headers=admin_key.headers), 404, "key_not_found")
    listing = await list_of(management, admin_key.headers)
    assert created["appKey"] not in [item["appKey"] for item in listing["items"]]
    assert listing["total"] == 1

    await expect_error(await proxy.get("/orders/1", headers=creds(created)), 401,
                       "invalid_credentials")

    # the name is never issued again, even with a fresh digest
    with pytest.raises(KeyNameTaken):
        await gateway.store.create_key(
            created["appKey"], "acme", "reuse", ["owner"], gateway.hasher.digest("whatever")
        )
    await expect_error(await management.get(path, headers=admin_key.headers), 404)


# -- authorization ---------------------------------------------------------------------
def every_endpoint(account: str, app_key: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    base = f"/api/v1/accounts/{account}/keys"
    return [
        ("POST", base, {"label": "x", "roles": ["orders-reader"]}),
        ("GET", base, None),
        ("GET", f"{base}/{app_key}", None),
        ("PATCH", f"{base}/{app_key}", {"status": "inactive"}),
        ("DELETE", f"{base}/{app_key}", None),
    ]


async def call(management, method, path, body, headers):
    return await management.request(method, path, json=body, headers=headers)


async def test_orders_writer_is_refused_everywhere(management, admin_key, make_key):
    writer = await make_key("acme", ["orders-writer"])
    for method, path, body in every_endpoint("acme", admin_key.app_key):
        response = await call(management, method, path, body, writer.headers)
        await expect_error(response, 403, "not_permitted")
    # and nothing changed
    listing = await list_of(management, admin_key.headers)
    assert listing["total"] == 2
    assert {item["status"] for item in listing["items"]} == {"active"}


async def test_viewer_can_list_and_get_only(management, admin_key, make_key):
    viewer = await make_key("acme", ["api-keys-viewer"], label="viewer")
    allowed = {"GET"}
    for method, path, body in every_endpoint("acme", admin_key.app_key):
        response = await call(management, method, path, body, viewer.headers)
        if method in allowed:
            assert response.status == 200, (method, path)
        else:
            await expect_error(response, 403, "not_permitted")
    listing = await list_of(management, admin_key.headers)
    assert listing["total"] == 2
    assert {item["status"] for item in listing["items"]} == {"active"}


async def test_user_admin_restricted_can_do_everything(management, admin_key, make_key):
    target = await make_key("acme", ["orders-reader"], label="target")
    expected = {"POST": 201, "GET": 200, "PATCH": 200, "DELETE": 204}
    for method, path, body in every_endpoint("acme", target.app_key):
        response = await call(management, method, path, body, admin_key.headers)
        assert response.status == expected[method], (method, path, await response.text())


async def test_owner_can_manage_keys_too(management, make_key):
    owner = await make_key("acme", ["owner"], label="owner")
    response = await management.post(KEYS, json={"label": "x", "roles": []},
                                      headers=owner.headers)
    assert response.status == 201


async def test_admin_of_acme_is_refused_in_beta(management, admin_key, make_key):
    beta = await make_key("beta", ["owner"], label="beta")
    for method, path, body in every_endpoint("beta", beta.app_key):
        response = await call(management, method, path, body, admin_key.headers)
        await expect_error(response, 403, "no_grant")
    own = await management.get(f"/api/v1/accounts/beta/keys/{beta.app_key}",
                               headers=beta.headers)
    assert (await own.json())["status"] == "active"


async def test_no_credentials_is_401(management, admin_key):
    for method, path, body in every_endpoint("acme", admin_key.app_key):
        response = await call(management, method, path, body, {})
        await expect_error(response, 401, "missing_credentials")
    response = await management.get(KEYS, headers={"X-API-AppKey": admin_key.app_key})
    await expect_error(response, 401, "incomplete_credentials")


async def test_wrong_token_and_unknown_key_look_the_same(management, admin_key, gateway):
    wrong_token = {"X-API-AppKey": admin_key.app_key, "X-API-AppToken": gateway.fmt.new_token()}
    unknown_key = {"X-API-AppKey": gateway.fmt.new_key("acme"),
                   "X-API-AppToken": admin_key.token}
    first = await expect_error(await management.get(KEYS, headers=wrong_token), 401)
    second = await expect_error(await management.get(KEYS, headers=unknown_key), 401)
    assert first["code"] == second["code"] == "invalid_credentials"
    assert first["message"] == second["message"]


@pytest.mark.parametrize("account", ["ACME", "acme_corp", "-acme", "a" * 64, "acme.corp"])
async def test_invalid_account_in_path_is_400(management, admin_key, account):
    response = await management.get(f"/api/v1/accounts/{account}/keys",
                                    headers=admin_key.headers)
    await expect_error(response, 400, "bad_account")


async def test_account_with_trailing_newline_is_400(management, admin_key):
    response = await management.get("/api/v1/accounts/acme%0A/keys", headers=admin_key.headers)
    await expect_error(response, 400, "bad_account")


async def test_unknown_endpoint_and_method(management, admin_key):
    await expect_error(await management.get("/api/v1/nothing-here", headers=admin_key.headers),
                       404, "not_found")
    await expect_error(await management.get("/api/v1/accounts/acme", headers=admin_key.headers),
                       404, "not_found")
    refused = await management.put(KEYS, json={}, headers=admin_key.headers)
    await expect_error(refused, 405, "method_not_allowed")
    # RFC 9110: a 405 names the methods there are (aiohttp's own answer did; the one
    # error shape must keep it)
    assert {m.strip() for m in refused.headers["Allow"].split(",")} >= {"GET", "POST"}


# -- health ----------------------------------------------------------------------------
async def test_health_endpoints(management, gateway):
    for path in ("/healthz", "/api/v1/healthz"):
        response = await management.get(path)
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
    for path in ("/readyz", "/api/v1/readyz"):
        response = await management.get(path)
        assert response.status == 200
        body = await response.json()
        assert body["status"] == "ready"
        assert body["policyVersion"] == gateway.policy.version


@pytest.fixture
async def unreachable_gateway(make_settings: Callable[..., Any]):
    gw = build_gateway(make_settings(store_url=f"redis://127.0.0.1:{free_port()}/0"))
    yield gw
    await gw.close()


async def test_readyz_is_503_without_the_store(unreachable_gateway, aiohttp_client):
    client = await aiohttp_client(build_management_app(unreachable_gateway))
    assert (await client.get("/healthz")).status == 200
    await expect_error(await client.get("/readyz"), 503, "store_unavailable")


async def test_store_outage_is_503_not_401(unreachable_gateway, aiohttp_client):
    proxy = await aiohttp_client(ProxyTestServer(unreachable_gateway))
    management = await aiohttp_client(build_management_app(unreachable_gateway))
    fmt = unreachable_gateway.fmt
    headers = {"X-API-AppKey": fmt.new_key("acme"), "X-API-AppToken": fmt.new_token()}
    await expect_error(await proxy.get("/orders/1", headers=headers), 503, "store_unavailable")
    await expect_error(await management.get(KEYS, headers=headers), 503, "store_unavailable")
    # a malformed token is refused without asking the store at all
    bad = {**headers, "X-API-AppToken": "kgt_nope"}
    await expect_error(await proxy.get("/orders/1", headers=bad), 401, "invalid_credentials")


# -- concurrency -----------------------------------------------------------------------
async def test_concurrent_creates(management, make_key, gateway):
    admin = await make_key("gamma", ["user-admin-restricted"], label="admin")
    base = "/api/v1/accounts/gamma/keys"

    async def one(i: int) -> dict[str, Any]:
        response = await management.post(
            base, json={"label": f"key {i}", "roles": ["orders-reader"]}, headers=admin.headers
        )
        assert response.status == 201, await response.text()
        return await response.json()

    created = await asyncio.gather(*(one(i) for i in range(20)))
    assert len({c["appKey"] for c in created}) == 20
    assert len({c["appToken"] for c in created}) == 20
    assert {c["label"] for c in created} == {f"key {i}" for i in range(20)}
    response = await management.get(base + "?perPage=100", headers=admin.headers)
    body = await response.json()
    assert body["total"] == 21  # the 20 and the admin key
    listed = {item["appKey"] for item in body["items"]}
    assert {c["appKey"] for c in created} <= listed
    only_new = await (await management.get(base + "?q=key+&perPage=100",
                                           headers=admin.headers)).json()
    assert only_new["total"] == 20
    assert {item["appKey"] for item in only_new["items"]} == {c["appKey"] for c in created}
    # and each of them authenticates with its own token
    for c in created[:3]:
        record = await gateway.store.auth_lookup(c["appKey"], "gamma")
        assert gateway.hasher.matches(c["appToken"], record.token_digests)
