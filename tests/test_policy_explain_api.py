"""``GET /api/v1/accounts/{account}/explain``, tried as an attacker: permission ``view``
in the account; other accounts' keys and policy lines stay hidden (a key another
account owns resolves only when this account granted it roles, and then only with
those roles); odd or oversized parameters are 400s in the one error shape, never 500s.

The real management app over a policy directory of the test's own (the shipped files
plus lines for account beta), with keys on the private redis-server.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Key
from test_policy_explain_work import deep_assigner, handing_out_chain

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.settings import PROJECT_ROOT
from gateway.store import CLI_ACTOR

POLICIES = PROJECT_ROOT / "policies"
EXPLAIN = "/api/v1/accounts/{}/explain"


def copy_policies(target: Path, extra: str, name: str) -> Path:
    shutil.copytree(POLICIES, target)
    (target / name).write_text(extra)
    return target


# -- GET /accounts/{account}/explain ---------------------------------------------------
class Explainer:
    """A management app over a policy directory of the test's own, and its keys."""

    def __init__(self, gateway: Any, client: Any):
        self.gateway, self.client = gateway, client

    async def key(self, account: str, roles: list[str]) -> Key:
        issued = await self.gateway.lifecycle.create(account, "k", roles, CLI_ACTOR)
        return Key(issued.record.app_key, issued.token)

    async def get(self, account: str, key: Key | None, query: Any) -> Any:
        return await self.client.get(EXPLAIN.format(account), params=query,
                                     headers=key.headers if key else {})


@pytest.fixture
async def api(make_settings, clock, aiohttp_client, tmp_path) -> Any:
    directory = copy_policies(tmp_path / "policies",
                              "p, orders-reader, beta, orders, write, allow\n"
                              "p, beta-auditor, beta, audit, read, allow\n", "beta.csv")
    gateway = build_gateway(make_settings(policies_dir=str(directory)), clock=clock)
    gateway.start()
    client = await aiohttp_client(build_management_app(gateway))
    yield Explainer(gateway, client)
    await gateway.close()


async def error_of(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "status", "requestId"}
    assert body["error"]["status"] == status
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


async def test_the_endpoint_explains_with_roles(api):
    viewer = await api.key("acme", ["api-keys-viewer"])
    response = await api.get("acme", viewer, [("resource", "orders"), ("action", "read"),
                                              ("role", "orders-writer")])
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["allowed"] is True
    assert (body["account"], body["resource"], body["action"]) == ("acme", "orders", "read")
    assert body["roles"] == ["orders-writer"]
    (line,) = body["decidedBy"]
    assert line["file"] == "examples.csv" and line["via"] == ["orders-writer", "orders-reader"]
    assert body["reason"].startswith("allowed")
    assert body["policyVersion"] == api.gateway.policy.version
    # several roles: deny beats allow
    response = await api.get("acme", viewer, [("resource", "orders"), ("action", "read"),
                                              ("role", "orders-writer"),
                                              ("role", "suspended-partner")])
    body = await response.json()
    assert body["allowed"] is False and [d["effect"] for d in body["decidedBy"]] == ["deny"]


async def test_the_endpoint_needs_view_in_the_account(api):
    query = {"resource": "orders", "action": "read", "role": "owner"}
    await error_of(await api.get("acme", None, query), 401)
    writer = await api.key("acme", ["orders-writer"])
    await error_of(await api.get("acme", writer, query), 403)
    # view in acme is not view in globex
    viewer = await api.key("acme", ["api-keys-viewer"])
    await error_of(await api.get("globex", viewer, query), 403)


async def test_lines_of_other_accounts_stay_hidden(api):
    viewer = await api.key("acme", ["api-keys-viewer"])
    response = await api.get("acme", viewer, {"resource": "orders", "action": "write",
                                              "role": "orders-reader"})
    body = await response.json()
    assert body["allowed"] is False and body["matched"] == [] and body["decidedBy"] == []
    assert "beta" not in await response.text()
    response = await api.get("acme", viewer, {"resource": "audit", "action": "read",
                                              "role": "beta-auditor"})
    assert "beta.csv" not in await response.text()
    # in beta itself the line decides
    beta_viewer = await api.key("beta", ["api-keys-viewer"])
    body = await (await api.get("beta", beta_viewer, {"resource": "orders", "action": "write",
                                                       "role": "orders-reader"})).json()
    assert body["allowed"] is True and body["decidedBy"][0]["file"] == "beta.csv"


async def test_a_key_resolves_only_when_it_holds_roles_in_the_account(api):
    viewer = await api.key("acme", ["api-keys-viewer"])
    own = await api.key("acme", ["orders-writer"])
    partner = await api.key("globex", ["owner"])
    stranger = await api.key("initech", ["owner"])
    await api.gateway.store.add_grant("acme", partner.app_key, "partner", ["catalog-reader"],
                                      CLI_ACTOR)
    query = {"resource": "orders", "action": "write"}

    body = await (await api.get("acme", viewer, {**query, "key": own.app_key})).json()
    assert body["allowed"] is True and body["roles"] == ["orders-writer"]
    assert body["key"] == {"appKey": own.app_key, "status": "active", "kind": "generated"}

    response = await api.get("acme", viewer, {**query, "key": partner.app_key})
    text = await response.text()
    body = orjson.loads(text)
    assert body["allowed"] is False and body["roles"] == ["catalog-reader"]  # not owner
    assert body["key"]["kind"] == "external"
    # nothing of the key's home account: its roles, label or token there (its name says
    # which account owns it, as every key name does)
    rest = text.replace(partner.app_key, "")
    assert "globex" not in rest and partner.token not in text and "owner" not in rest

    # another account's key acme granted nothing, and a key that does not exist: alike
    missing = f"kgk-initech-{'0' * 10}"
    errors = []
    for app_key in (stranger.app_key, missing):
        errors.append(await error_of(await api.get("acme", viewer, {**query, "key": app_key}),
                                     404, "key_not_found"))
    assert [e["message"].replace(stranger.app_key, "K").replace(missing, "K")
            for e in errors] == ["no API key 'K' holds roles in account 'acme'"] * 2
    # the caller's own key resolves like any other key of the account
    body = await (await api.get("acme", viewer, {**query, "key": viewer.app_key})).json()
    assert body["roles"] == ["api-keys-viewer"]


async def test_an_inactive_key_or_grant_is_explained_as_denied(api):
    """keygate refuses them before it asks the policy: the answer is the gateway's, the
    policy's own kept in the reason."""
    viewer = await api.key("acme", ["api-keys-viewer"])
    own = await api.key("acme", ["orders-writer"])
    partner = await api.key("globex", ["owner"])
    store = api.gateway.store
    await store.add_grant("acme", partner.app_key, "partner", ["orders-reader"], CLI_ACTOR)
    await store.update_key("acme", own.app_key, actor=CLI_ACTOR, status="inactive")
    await store.update_grant("acme", partner.app_key, {"status": "inactive"}, CLI_ACTOR)
    body = await (await api.get("acme", viewer, {"resource": "orders", "action": "write",
                                                 "key": own.app_key})).json()
    assert body["allowed"] is False and body["key"]["status"] == "inactive"
    assert "this API key is inactive (401 key_inactive)" in body["reason"]
    assert "the policy alone would allow it" in body["reason"]
    assert body["decidedBy"] == [] and body["matched"]
    body = await (await api.get("acme", viewer, {"resource": "orders", "action": "read",
                                                 "key": partner.app_key})).json()
    assert body["allowed"] is False and "grant_inactive" in body["reason"]
    # an active grant of a key its owner account deactivated, then deleted: keygate
    # refuses the key itself first (401), whatever the grant says
    await store.update_grant("acme", partner.app_key, {"status": "active"}, CLI_ACTOR)
    query = {"resource": "orders", "action": "read", "key": partner.app_key}
    assert (await (await api.get("acme", viewer, query)).json())["allowed"] is True
    await store.update_key("globex", partner.app_key, actor=CLI_ACTOR, status="inactive")
    body = await (await api.get("acme", viewer, query)).json()
    assert body["allowed"] is False and body["key"]["status"] == "active"  # the grant's
    assert "this API key is inactive (401 key_inactive)" in body["reason"]
    # deleted: its grants go with it, so it holds no roles in acme any more
    assert await store.delete_key("globex", partner.app_key, actor=CLI_ACTOR)
    await error_of(await api.get("acme", viewer, query), 404, "key_not_found")


async def test_an_external_caller_with_view_explains_in_the_granting_account(api):
    partner = await api.key("globex", ["catalog-reader"])
    await api.gateway.store.add_grant("acme", partner.app_key, "p", ["api-keys-viewer"],
                                      CLI_ACTOR)
    response = await api.get("acme", partner, {"resource": "orders", "action": "read",
                                               "role": "orders-reader"})
    assert response.status == 200 and (await response.json())["allowed"] is True


async def test_the_endpoint_gives_the_management_apis_answer_on_assignments(api):
    viewer = await api.key("acme", ["api-keys-viewer"])
    body = await (await api.get("acme", viewer, {
        "resource": "role:owner", "action": "assign", "role": "user-admin-restricted",
    })).json()
    assert body["assignment"]["allowed"] is False
    assert body["assignment"]["decidedBy"][0]["resource"] == "role:owner"
    body = await (await api.get("acme", viewer, {
        "resource": "orders", "action": "read", "role": "user-admin-restricted",
    })).json()
    assert "assignment" not in body


BAD_QUERIES = [
    ({"action": "read", "role": "owner"}, "bad_query"),  # no resource
    ({"resource": "orders", "role": "owner"}, "bad_query"),  # no action
    ({"resource": "orders", "action": "read"}, "bad_query"),  # neither role nor key
    ({"resource": "orders", "action": "read", "role": "owner", "key": "kgk-acme-0000000000"},
     "bad_query"),
    ([("resource", "orders"), ("resource", "catalog"), ("action", "read"), ("role", "owner")],
     "bad_query"),
    ([("resource", "orders"), ("action", "read"), ("key", "kgk-acme-0000000000"),
      ("key", "kgk-acme-1111111111")], "bad_query"),
    ({"resource": "", "action": "read", "role": "owner"}, "bad_query"),
    ({"resource": "orders", "action": "read", "role": ""}, "bad_query"),
    ({"resource": "orders/*", "action": "read", "role": "owner"}, "bad_query"),
    ({"resource": "x" * 3000, "action": "read", "role": "owner"}, "bad_query"),
    ({"resource": "orders", "action": "r\u00e9ad", "role": "owner"}, "bad_query"),
    ({"resource": "orders", "action": "read\x00", "role": "owner"}, "bad_query"),
    ({"resource": "orders", "action": "read", "role": "own er"}, "bad_query"),
    ({"resource": "orders", "action": "read", "role": "r" * 3000}, "bad_query"),
    ([("resource", "orders"), ("action", "read")] + [("role", f"r{n}") for n in range(33)],
     "bad_query"),
    ([("resource", "orders"), ("action", "read")] + [("role", "owner")] * 500, "bad_query"),
    ({"resource": "orders", "action": "read", "role": "owner", "roles": "x"}, "bad_query"),
    ({"resource": "orders", "action": "read", "key": "not-a-key"}, "bad_app_key"),
    ({"resource": "orders", "action": "read", "key": "k" * 3000}, "bad_app_key"),
]


@pytest.mark.parametrize("query, code", BAD_QUERIES)
async def test_bad_queries_are_400s_in_the_one_error_shape(api, query, code):
    viewer = await api.key("acme", ["api-keys-viewer"])
    error = await error_of(await api.get("acme", viewer, query), 400, code)
    assert len(error["message"]) < 400  # a huge parameter is not echoed back


EMPTY_PARAMETERS = [
    ([("resource", "orders"), ("action", "read"), ("role", "orders-reader"), ("key", "")],
     "key"),
    ([("resource", "orders"), ("action", "read"), ("key", "")], "key"),
    ([("resource", "orders"), ("action", "read"), ("role", ""), ("role", "orders-reader")],
     "role"),
    ([("resource", "orders"), ("action", "read"), ("role", "")], "role"),
    ([("resource", ""), ("action", "read"), ("role", "orders-reader")], "resource"),
    ([("resource", "orders"), ("action", ""), ("role", "orders-reader")], "action"),
]


@pytest.mark.parametrize("query, name", EMPTY_PARAMETERS)
async def test_an_empty_parameter_is_refused_not_taken_as_absent(api, query, name):
    # ?key=&role=R would otherwise explain R's decision as if it were the key's
    viewer = await api.key("acme", ["api-keys-viewer"])
    error = await error_of(await api.get("acme", viewer, query), 400, "bad_query")
    assert error["message"] == f"parameter {name!r} is empty"


async def test_an_empty_account_is_not_an_explanation(api):
    viewer = await api.key("acme", ["api-keys-viewer"])
    response = await api.client.get("/api/v1/accounts//explain", headers=viewer.headers,
                                    params={"resource": "orders", "action": "read",
                                            "role": "orders-reader"})
    assert response.status in (400, 404)
    await error_of(response, response.status)


async def test_unknown_roles_are_reported_not_refused(api):
    viewer = await api.key("acme", ["api-keys-viewer"])
    body = await (await api.get("acme", viewer, [("resource", "orders"), ("action", "read"),
                                                 ("role", "ghost"),
                                                 ("role", "orders-reader")])).json()
    assert body["allowed"] is True and body["unknownRoles"] == ["ghost"]


# -- bounded work ----------------------------------------------------------------------
@pytest.fixture
async def large_api(make_settings, clock, aiohttp_client, tmp_path) -> Any:
    """Role big grants 1,500 permissions; role denier has 1,500 deny lines."""
    lines = [f"p, big, *, res{n}, act{n % 7}, allow\n" for n in range(1500)]
    lines += [f"p, denier, *, other{n}, act{n % 7}, deny\n" for n in range(1500)]
    directory = copy_policies(tmp_path / "policies", "".join(lines), "large.csv")
    gateway = build_gateway(make_settings(policies_dir=str(directory)), clock=clock)
    gateway.start()
    client = await aiohttp_client(build_management_app(gateway))
    yield Explainer(gateway, client)
    await gateway.close()


async def test_any_viewer_asking_about_a_large_role_gets_a_bounded_answer(large_api):
    # judging role:big once put each of its 1,500 lines to Casbin, each a scan of the
    # 3,000 lines: seconds on the event loop, for a key holding only view
    viewer = await large_api.key("acme", ["api-keys-viewer"])
    response = await large_api.get("acme", viewer, {"resource": "role:big",
                                                    "action": "assign", "role": "owner"})
    assert response.status == 200, await response.text()
    assignment = (await response.json())["assignment"]
    assert assignment["allowed"] is True and assignment["how"] == "holds-permissions"
    assert len(assignment["decidedBy"]) == 1500
    # with 1,500 deny lines beside (each line of big against each of them was
    # quadratic, and refused): looked up in the deny lines' index, answered
    response = await large_api.get("acme", viewer, [
        ("resource", "role:big"), ("action", "assign"), ("role", "owner"),
        ("role", "denier")])
    assert response.status == 200, await response.text()
    assignment = (await response.json())["assignment"]
    assert assignment["allowed"] is True and assignment["how"] == "holds-permissions"


@pytest.mark.parametrize("shape, role", [(handing_out_chain, "r0000"),
                                         (deep_assigner, "handout")])
async def test_crafted_roles_get_explanation_too_large_not_a_long_answer(
    make_settings, clock, aiohttp_client, tmp_path, shape, role
):
    # roles handing each other out in a long chain, or a caller inheriting a long one:
    # work the meter once did not count (seconds on the event loop), now refused
    directory = shape(tmp_path / "policies")
    gateway = build_gateway(make_settings(policies_dir=str(directory)), clock=clock)
    gateway.start()
    try:
        api = Explainer(gateway, await aiohttp_client(build_management_app(gateway)))
        viewer = await api.key("acme", ["api-keys-viewer"])
        response = await api.get("acme", viewer, {"resource": f"role:{role}",
                                                  "action": "assign", "role": "boss"})
        error = await error_of(response, 400, "explanation_too_large")
        assert "more than 1000000 steps" in error["message"]
    finally:
        await gateway.close()


def test_a_grant_that_outlived_its_key_is_refused_as_keygate_refuses_it():
    """A crash between a key's deletion and the removal of its grants can leave a grant
    behind: authentication finds no key (401), so the explanation is a refusal."""
    from gateway.key_roles import DELETED, KeyRoles

    left = KeyRoles("kgk-globex-0000000000", "acme", ("orders-reader",), "active",
                    external=True, key_status=DELETED)
    assert left.refusal == "this API key no longer exists (401 invalid_credentials)"
    active = KeyRoles("kgk-globex-0000000000", "acme", ("orders-reader",), "active",
                      external=True, key_status="active")
    assert active.refusal is None
