"""The management API's OpenAPI 3.1 document (``GET /api/v1/openapi.json``) against the
API it describes: a valid document, every route in it and nothing else, the one error
shape as keygate really answers it, real answers (populated: a pending renewal, a
grant, audit events, an explanation with a key) conforming to their schemas, and the
handlers refusing what the schemas refuse."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator

from gateway.app import build_gateway
from gateway.management import build_management_app
from gateway.management.api import all_operations
from gateway.management.external_keys import SORTS
from gateway.management.operations import Operations, Permission
from gateway.management.schema import ExternalKeyListQuery
from gateway.management.ui import UI_ROUTES  # the admin page: files, not API operations
from gateway.store import CLI_ACTOR

DOCUMENT = "/api/v1/openapi.json"
KEYS = "/api/v1/accounts/acme/keys"
PROJECT = Path(__file__).resolve().parent.parent

# operationIds are what generated clients name their methods: renaming one breaks them
OPERATION_IDS = {
    "addExternalKey", "createKey", "deleteKey", "explainDecision", "export",
    "finishRenewal", "getExternalKey", "getKey", "getSettings", "healthz", "healthzV1",
    "jwks", "jwksHead", "jwksV1", "jwksV1Head", "listAudit", "listExternalKeys", "listKeys",
    "login", "logout", "me",
    "openLink", "openapiDocument", "putSettings", "readyz", "readyzV1", "reloadPolicy",
    "removeExternalKey", "renewToken", "showLink", "undoRenewal", "updateExternalKey",
    "updateKey",
}


async def fetch_document(management: Any) -> dict[str, Any]:
    response = await management.get(DOCUMENT)
    assert response.status == 200
    assert response.content_type == "application/json"
    return await response.json()


def validator(document: dict[str, Any], ref: str) -> Draft202012Validator:
    """A JSON Schema validator for ``ref`` (``#/components/schemas/X``) inside the
    document, with formats (date-time) checked."""
    schema = {"$ref": ref, "components": document["components"]}
    return Draft202012Validator(schema, format_checker=FormatChecker())


def response_schema(document: dict[str, Any], method: str, path: str, status: int,
                    media: str = "application/json") -> Draft202012Validator:
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    content = responses[str(status)]["content"][media]
    return Draft202012Validator({**content["schema"], "components": document["components"]},
                                format_checker=FormatChecker())


def conforms(document: dict[str, Any], method: str, path: str, status: int,
             body: Any) -> None:
    errors = sorted(response_schema(document, method, path, status).iter_errors(body),
                    key=str)
    assert not errors, f"{method} {path} {status}: {errors[0].message} at {errors[0].json_path}"


# -- the document --------------------------------------------------------------------
async def test_the_document_is_valid_openapi_3_1_served_without_credentials(management):
    document = await fetch_document(management)
    assert document["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(document).validate()  # raises with the first problem


async def test_it_is_built_once_and_revalidates_with_its_etag(management):
    first = await management.get(DOCUMENT)
    second = await management.get(DOCUMENT)
    assert await first.read() == await second.read()
    etag = first.headers["ETag"]
    assert etag == second.headers["ETag"] and etag.startswith('"')
    assert "max-age" in first.headers["Cache-Control"]
    assert first.headers["X-Request-Id"]
    again = await management.get(DOCUMENT, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    other = await management.get(DOCUMENT, headers={"If-None-Match": '"something-else"'})
    assert other.status == 200


async def test_every_route_is_documented_and_every_documented_operation_routed(
    management, gateway
):
    document = await fetch_document(management)
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    app = build_management_app(gateway)
    routed = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.resource is not None and route.resource.canonical not in UI_ROUTES}
    assert routed == documented
    assert ("GET", "/api/v1/auth/login") not in routed  # the methods are exact, too
    assert ("POST", "/api/v1/auth/login") in routed
    assert ("GET", "/.well-known/jwks.json") in routed


async def test_an_undocumented_route_is_not_served(management, admin_key):
    """HEAD is not an operation of this API but where the document says so (the JWKS):
    no route answers it."""
    response = await management.head(KEYS, headers=admin_key.headers)
    assert response.status == 405


async def test_operation_ids_are_unique_and_stable(management):
    document = await fetch_document(management)
    ids = [operation["operationId"] for item in document["paths"].values()
           for operation in item.values()]
    assert len(ids) == len(set(ids))
    assert set(ids) == OPERATION_IDS


async def test_every_operation_documents_its_answers_and_errors_with_the_one_shape(
    management
):
    document = await fetch_document(management)
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation["summary"] and operation["tags"], where
            responses = operation["responses"]
            assert any(status.startswith("2") for status in responses), where
            for status, response in responses.items():
                assert response["description"], (where, status)
                if method == "head":  # the GET's statuses and headers, never a body
                    assert "content" not in response, (where, status)
                elif int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    # the one shape, or the one shape with typed details
                    assert schema == error_ref or schema["allOf"][0] == error_ref, where
                    assert list(response["content"]) == ["application/json"], where
            secured = operation["security"] != []
            assert secured == ("x-keygate-permission" in operation), where
            if secured:
                assert {"400", "401", "403", "429", "503"} <= set(responses), where
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= set(responses), where
            for parameter in operation.get("parameters", []):
                assert parameter["in"] in {"path", "query"} and "schema" in parameter
                if parameter["in"] == "path":
                    assert parameter["required"] is True and f"{{{parameter['name']}}}" in path


async def test_security_schemes_follow_the_settings(make_settings, aiohttp_client):
    gateway = build_gateway(make_settings(key_header="X-Partner-Key",
                                          token_header="X-Partner-Secret",
                                          session_cookie="kg"))
    try:
        management = await aiohttp_client(build_management_app(gateway))
        schemes = (await fetch_document(management))["components"]["securitySchemes"]
    finally:
        await gateway.close()
    assert schemes["appKey"] == {**schemes["appKey"], "type": "apiKey", "in": "header",
                                 "name": "X-Partner-Key"}
    assert schemes["appToken"]["name"] == "X-Partner-Secret"
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    assert schemes["bearer"]["bearerFormat"] == "JWT"
    assert schemes["sessionCookie"]["in"] == "cookie" and schemes["sessionCookie"]["name"] == "kg"


async def test_without_a_session_cookie_no_operation_offers_one(make_settings, aiohttp_client):
    gateway = build_gateway(make_settings(session_cookie=""))
    try:
        management = await aiohttp_client(build_management_app(gateway))
        document = await fetch_document(management)
    finally:
        await gateway.close()
    assert "sessionCookie" not in document["components"]["securitySchemes"]
    listing = document["paths"]["/api/v1/accounts/{account}/keys"]["get"]
    assert listing["security"] == [{"appKey": [], "appToken": []}, {"bearer": []}]


async def test_the_document_quotes_no_secret(management, gateway):
    text = await (await management.get(DOCUMENT)).text()
    assert gateway.settings.secret not in text
    assert gateway.settings.store_url not in text and gateway.settings.store_prefix not in text


def test_sort_names_are_the_ones_the_handler_sorts_by():
    sort = typing.get_type_hints(ExternalKeyListQuery)["sort"]
    assert set(typing.get_args(sort)) == set(SORTS)


def test_a_handler_that_takes_other_inputs_than_declared_fails_at_import():
    table = Operations("t")
    with pytest.raises(TypeError, match="declares"):
        @table.get("/x", summary="x", responses={200: None},
                   permission=Permission("api-keys", ("view",)))
        async def no_identity(request: web.Request) -> web.Response:
            return web.Response()
    with pytest.raises(TypeError, match="the path names"):
        @table.get("/x/{thing}", summary="x", responses={200: None})
        async def no_path(request: web.Request) -> web.Response:
            return web.Response()


def test_each_operation_is_declared_once():
    seen = [(op.method, op.path) for op in all_operations()]
    assert len(seen) == len(set(seen))


# -- the one error shape, as keygate answers it ---------------------------------------
@pytest.fixture
def own_policies(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(PROJECT / "policies", copy)
    return copy


async def test_real_errors_are_the_documented_error_schema(
    make_settings, own_policies, aiohttp_client, clock
):
    gateway = build_gateway(make_settings(policies_dir=str(own_policies),
                                          management_max_body=2048), clock=clock)
    gateway.start()
    try:
        management = await aiohttp_client(build_management_app(gateway))
        document = await fetch_document(management)
        error_schema = validator(document, "#/components/schemas/Error")
        issued = await gateway.lifecycle.create("acme", "owner", ["owner"], CLI_ACTOR)
        owner = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
        (own_policies / "broken.csv").write_text("p, only, three\n")
        answers = [
            await management.get(KEYS),  # 401
            await management.get(KEYS + "?page=0", headers=owner),  # 400
            await management.get("/api/v1/accounts/Not_An_Account/keys", headers=owner),
            await management.get("/api/v1/nothing"),  # 404 from the router
            await management.put(KEYS, headers=owner, json={}),  # 405
            await management.post(KEYS, headers={**owner, "Content-Type": "application/json"},
                                  data=b"{" + b" " * 4096 + b"}"),  # 413
            await management.post(KEYS, headers={**owner, "Content-Type": "text/plain"},
                                  data=b"{}"),  # 415
            await management.post("/api/v1/token-links/" + "A" * 43),  # 410
            await management.post("/api/v1/policy/reload", headers=owner),  # 400 + details
        ]
        statuses = [answer.status for answer in answers]
        assert statuses == [401, 400, 400, 404, 405, 413, 415, 410, 400]
        bodies = [await answer.json() for answer in answers]
        assert "details" in bodies[-1]["error"]  # the optional member is covered too
        for answer, body in zip(answers, bodies, strict=True):
            assert not list(error_schema.iter_errors(body)), body
            assert body["error"]["requestId"] == answer.headers["X-Request-Id"]
    finally:
        await gateway.close()


async def test_the_proxy_ports_refusals_are_the_same_error_schema(proxy, management_document):
    error_schema = validator(management_document, "#/components/schemas/Error")
    for response in (await proxy.get("/orders/1"), await proxy.get("/no-route"),
                     await proxy.get("/orders/1", headers={"X-API-AppKey": "k" * 5000,
                                                           "X-API-AppToken": "t"})):
        assert response.status in {400, 401, 404}
        body = await response.json()
        assert not list(error_schema.iter_errors(body)), body


def test_the_error_schema_is_strict(management_document):
    error_schema = validator(management_document, "#/components/schemas/Error")
    good = {"error": {"code": "x", "message": "y", "status": 400, "requestId": "r"}}
    assert error_schema.is_valid(good)
    assert error_schema.is_valid({"error": {**good["error"], "details": {"line": 3}}})
    assert not error_schema.is_valid({"error": {**good["error"], "stack": "..."}})
    assert not error_schema.is_valid({"error": {"code": "x", "message": "y", "status": 400}})
    assert not error_schema.is_valid({**good, "debug": 1})


@pytest.fixture
def management_document(gateway) -> dict[str, Any]:
    from gateway.management.openapi import build_document

    return orjson.loads(orjson.dumps(build_document(all_operations(), gateway.settings)))


# -- real answers, populated, against their schemas ----------------------------------
async def test_real_answers_conform_to_their_schemas(management, make_key, gateway, clock):
    document = await fetch_document(management)
    owner = (await make_key("acme", ["owner"], label="owner")).headers
    partner = await make_key("beta", ["orders-reader"], label="partner")

    async def call(method: str, path: str, template: str, status: int,
                   body: Any = None, headers: dict[str, str] | None = None) -> Any:
        response = await management.request(method, path, json=body,
                                            headers=owner if headers is None else headers)
        assert response.status == status, await response.text()
        if status == 204:
            return None
        answer = await response.json()
        conforms(document, method, template, status, answer)
        return answer

    accounts = "/api/v1/accounts/{account}"
    created = await call("POST", KEYS, accounts + "/keys", 201,
                         {"label": "ci", "roles": ["orders-reader"]})
    linked = await call("POST", KEYS, accounts + "/keys", 201,
                        {"label": "by link", "roles": [], "delivery": "link"})
    key_path = f"{KEYS}/{created['appKey']}"
    one = accounts + "/keys/{appKey}"
    clock.advance(5)
    renewed = await call("POST", key_path + "/token/renew", one + "/token/renew", 200,
                         {"deleteOld": "later"})
    assert renewed["creationDateNewToken"] is not None
    await call("GET", KEYS + "?perPage=100", accounts + "/keys", 200)
    await call("POST", key_path + "/token/finish-renewal", one + "/token/finish-renewal", 200)
    await call("PATCH", key_path, one, 200, {"label": "renamed", "status": "inactive"})
    external = accounts + "/external-keys"
    await call("POST", "/api/v1/accounts/acme/external-keys", external, 201,
               {"appKey": partner.app_key, "roles": ["orders-reader"], "label": "partner"})
    await call("GET", "/api/v1/accounts/acme/external-keys", external, 200)
    await call("GET", f"/api/v1/accounts/acme/external-keys/{partner.app_key}",
               external + "/{appKey}", 200)
    detail = await call("GET", f"/api/v1/accounts/beta/keys/{partner.app_key}", one, 200,
                        headers=(await make_key("beta", ["owner"])).headers)
    assert detail["grantedIn"] and detail["grantedIn"][0]["account"] == "acme"
    await call("PUT", "/api/v1/accounts/acme/settings", accounts + "/settings", 200,
               {"renewalPeriodMonths": 6})
    await call("GET", "/api/v1/accounts/acme/settings", accounts + "/settings", 200)
    audit = await call("GET", "/api/v1/accounts/acme/audit?limit=3", accounts + "/audit", 200)
    assert audit["items"] and audit["next"]
    explained = await call(
        "GET", f"/api/v1/accounts/acme/explain?resource=role:owner&action=assign"
               f"&key={created['appKey']}", accounts + "/explain", 200)
    assert "key" in explained and "assignment" in explained
    await call("GET", "/api/v1/accounts/acme/explain?resource=orders&action=read&role=owner",
               accounts + "/explain", 200)
    await call("POST", "/api/v1/policy/reload", "/api/v1/policy/reload", 200, {"force": False})
    for path in ("/healthz", "/api/v1/healthz", "/readyz", "/api/v1/readyz",
                 "/.well-known/jwks.json"):
        await call("GET", path, path, 200, headers={})
    token_link = linked["tokenLink"].split("/api/v1/", 1)[1]
    link = "/api/v1/token-links/{secret}"
    await call("GET", "/api/v1/" + token_link, link, 200, headers={})
    await call("POST", "/api/v1/" + token_link, link, 200, headers={})
    await call("PATCH", key_path, one, 200, {"status": "active"})
    session = await call("POST", "/api/v1/auth/login", "/api/v1/auth/login", 200,
                         {"appKey": created["appKey"], "appToken": renewed["appToken"]},
                         headers={})
    bearer = {"Authorization": f"Bearer {session['token']}"}
    # with the cookie the body has no token, and still conforms
    cookie_session = await call("POST", "/api/v1/auth/login", "/api/v1/auth/login", 200,
                                {"appKey": created["appKey"], "appToken": renewed["appToken"],
                                 "cookie": True}, headers={})
    assert "token" not in cookie_session and cookie_session["appKey"] == created["appKey"]
    management.session.cookie_jar.clear()
    await call("GET", KEYS, accounts + "/keys", 403, headers=bearer)  # orders-reader
    await call("DELETE", key_path, one, 204)


async def test_the_export_answers_with_its_documented_media_types(management, admin_key):
    document = await fetch_document(management)
    content = document["paths"]["/api/v1/accounts/{account}/export"]["get"]["responses"]["200"][
        "content"]
    for fmt in ("xlsx", "csv"):
        response = await management.get(f"/api/v1/accounts/acme/export?format={fmt}",
                                         headers=admin_key.headers)
        assert response.status == 200
        assert response.content_type in content
        assert response.headers["X-Request-Id"]


# -- the handlers refuse what the schemas refuse --------------------------------------
SCALARS = (
    st.none() | st.booleans() | st.integers(-10, 10)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.sampled_from(["orders-reader", "owner", "x" * 201, "tab\t", "token", "link"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
CREATE_BODIES = st.dictionaries(
    st.sampled_from(["label", "roles", "delivery", "owner", "appToken"]),
    st.one_of(JSON_VALUES, st.lists(st.sampled_from(["orders-reader", "catalog-reader"]),
                                    max_size=3)),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=CREATE_BODIES)
async def test_a_body_the_schema_refuses_is_a_400_and_creates_nothing(
    management, admin_key, management_document, body
):
    schema = validator(management_document, "#/components/schemas/NewKey")
    response = await management.post(KEYS, json=body, headers=admin_key.headers)
    if not schema.is_valid(body):
        assert response.status == 400, (body, await response.text())
        assert (await response.json())["error"]["code"] in {
            "missing_field", "unknown_field", "bad_label", "bad_roles", "bad_delivery"}
    else:  # the schema cannot know the policies, or Python's idea of printable
        assert response.status in {201, 400}, (body, await response.text())
        if response.status == 400:
            assert (await response.json())["error"]["code"] in {"unknown_role", "bad_label"}
        else:
            await management.delete(f"{KEYS}/{(await response.json())['appKey']}",
                                    headers=admin_key.headers)


LIST_QUERIES = st.dictionaries(
    st.sampled_from(["page", "perPage", "status", "sort", "order", "renewal", "q"]),
    st.one_of(st.sampled_from(["0", "1", "100", "101", "1000000", "1000001", "-1", "1.0",
                               "1e3", "²", "active", "inactive", "label", "lastUsed", "asc",
                               "DESC", "red", "none", "x" * 201]),
              st.text(max_size=6)),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=LIST_QUERIES)
async def test_a_query_the_schema_refuses_is_a_400_and_one_it_takes_a_200(
    management, admin_key, management_document, query
):
    parameters = {p["name"]: p["schema"] for p in management_document["paths"][
        "/api/v1/accounts/{account}/keys"]["get"]["parameters"] if p["in"] == "query"}
    formats = FormatChecker()

    def accepted(name: str, raw: str) -> bool:
        if raw == "":
            return True  # given empty is not given
        schema = parameters[name]
        value: Any = raw
        if schema.get("type") == "integer":
            if not (raw.isascii() and raw.isdigit()):
                return False
            value = int(raw)
        return Draft202012Validator(schema, format_checker=formats).is_valid(value)

    response = await management.get(KEYS, params=query, headers=admin_key.headers)
    expected = 200 if all(accepted(k, v) for k, v in query.items()) else 400
    assert response.status == expected, (query, await response.text())


# -- abuse: what the decoder quotes, what it costs -------------------------------------
async def test_a_huge_unknown_field_name_is_not_echoed(management, admin_key):
    name = "n" * 20_000
    response = await management.post(KEYS, json={"label": "x", "roles": [], name: 1},
                                     headers=admin_key.headers)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "unknown_field" and len(error["message"]) < 300


async def test_a_huge_wrong_value_is_not_echoed(management, admin_key):
    for body in ({"label": "x" * 30_000, "roles": []},
                 {"label": "x", "roles": ["r" * 30_000]},
                 {"label": "x", "roles": [], "delivery": "d" * 30_000}):
        response = await management.post(KEYS, json=body, headers=admin_key.headers)
        assert response.status in {400, 413}
        assert len((await response.json())["error"]["message"]) < 300


async def test_a_parameter_given_twice_is_refused_and_one_given_empty_is_not_given(
    management, admin_key
):
    twice = await management.get(KEYS + "?status=active&status=inactive",
                                 headers=admin_key.headers)
    assert twice.status == 400
    assert (await twice.json())["error"] == {**(await twice.json())["error"],
                                             "code": "bad_query",
                                             "message": "give status once"}
    empty = await management.get(KEYS + "?status=&page=&perPage=&sort=&q=",
                                 headers=admin_key.headers)
    assert empty.status == 200
    body = await empty.json()
    assert (body["page"], body["perPage"], body["total"]) == (1, 20, 1)


async def test_many_parameters_are_answered_quickly_and_briefly(management, admin_key):
    query = "&".join(f"p{n}=x" for n in range(400)) + "&" + "&".join(["page=1"] * 400)
    response = await management.get(f"{KEYS}?{query}", headers=admin_key.headers)
    assert response.status == 400
    assert len((await response.json())["error"]["message"]) < 300


async def test_a_path_key_longer_than_any_key_is_refused_before_the_store(
    management, admin_key
):
    response = await management.get(f"{KEYS}/{'k' * 300}", headers=admin_key.headers)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_app_key"


async def test_validation_comes_after_authentication(management):
    """An anonymous caller learns nothing about what a body or a query would need."""
    for response in (
        await management.post(KEYS, json={"nonsense": True}),
        await management.get(KEYS + "?page=zero"),
        await management.post("/api/v1/policy/reload", json={"force": "yes"}),
    ):
        assert response.status == 401


# -- servers, parameter descriptions, error codes, typed details, examples ----------
async def test_the_document_names_the_server_it_describes(make_settings, aiohttp_client,
                                                          management):
    """Relative to where the document was fetched from, or management_public_url."""
    assert (await fetch_document(management))["servers"][0]["url"] == "/"
    gateway = build_gateway(make_settings(management_public_url="https://keys.example.com/"))
    try:
        client = await aiohttp_client(build_management_app(gateway))
        document = await fetch_document(client)
    finally:
        await gateway.close()
    assert [server["url"] for server in document["servers"]] == ["https://keys.example.com"]
    OpenAPIV31SpecValidator(document).validate()


def test_every_parameter_is_described(management_document):
    for path, item in management_document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                where = f"{method.upper()} {path} {parameter['in']} {parameter['name']}"
                assert parameter.get("description", "").strip(), where
    explain = management_document["paths"]["/api/v1/accounts/{account}/explain"]["get"]
    role = next(p for p in explain["parameters"] if p["name"] == "role")
    assert "repeat" in role["description"] and "`key`" in role["description"]


def _codes(description: str) -> tuple[str, list[str]]:
    """An error response's description: the meaning, and its one list of codes."""
    meaning, _, listed = description.partition(" Codes: ")
    return meaning, [code.strip("`. ") for code in listed.split(", ") if code.strip()]


def test_each_error_response_lists_its_codes_once(management_document):
    """One list of codes per response, and the meaning names none of them (login's 401
    listed the session codes in its meaning, then `Codes: invalid_credentials,
    key_inactive`)."""
    responses = [(f"{method.upper()} {path} {status}", response)
                 for path, item in management_document["paths"].items()
                 for method, operation in item.items()
                 for status, response in operation["responses"].items() if int(status) >= 400]
    every_code = {code for _, response in responses
                  for code in _codes(response["description"])[1]}
    for where, response in responses:
        assert response["description"].count("Codes:") <= 1, where
        meaning, codes = _codes(response["description"])
        assert len(codes) == len(set(codes)), where
        assert not [code for code in every_code if f"`{code}`" in meaning], where
    paths = management_document["paths"]
    login = paths["/api/v1/auth/login"]["post"]["responses"]
    assert _codes(login["401"]["description"])[1] == ["invalid_credentials", "key_inactive"]
    listing = paths["/api/v1/accounts/{account}/keys"]["get"]["responses"]
    assert {"missing_credentials", "invalid_session", "session_expired", "session_ended"} <= set(
        _codes(listing["401"]["description"])[1])
    assert "csrf_refused" not in _codes(listing["403"]["description"])[1]  # a read
    creating = paths["/api/v1/accounts/{account}/keys"]["post"]["responses"]
    assert {"no_grant", "escalation_refused", "csrf_refused"} <= set(
        _codes(creating["403"]["description"])[1])


def _examples(document: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    """Every example in the document: where, the schema it illustrates, its value."""
    found = []
    for item in document["paths"].values():
        for operation in item.values():
            media = [("request", operation.get("requestBody", {}).get("content", {}))]
            media += [(status, response.get("content", {}))
                      for status, response in operation["responses"].items()]
            for where, content in media:
                for media_type, described in content.items():
                    for name, example in described.get("examples", {}).items():
                        found.append((f"{operation['operationId']} {where} {media_type} {name}",
                                      described["schema"], example["value"]))
    return found


def test_the_examples_validate_against_their_schemas(management_document):
    examples = _examples(management_document)
    for where, schema, value in examples:
        checking = Draft202012Validator({**schema,
                                         "components": management_document["components"]},
                                        format_checker=FormatChecker())
        errors = list(checking.iter_errors(value))
        assert not errors, f"{where}: {errors[0].message}"
    named = {where.rsplit(" ", 2)[0] for where, _, _ in examples}
    assert {"login request", "createKey request", "createKey 201",
            "reloadPolicy request"} <= named


async def test_the_key_creation_examples_are_what_keygate_takes_and_answers(
        management, make_key, management_document):
    owner = (await make_key("acme", ["owner"], label="owner")).headers
    content = management_document["paths"]["/api/v1/accounts/{account}/keys"]["post"]
    sent = content["requestBody"]["content"]["application/json"]["examples"]
    answered = content["responses"]["201"]["content"]["application/json"]["examples"]
    assert set(sent) == set(answered) == {"token", "link"}
    for name in sent:
        response = await management.post(KEYS, json=sent[name]["value"], headers=owner)
        assert response.status == 201, await response.text()
        body = await response.json()
        assert set(body) == set(answered[name]["value"]), name
        conforms(management_document, "POST", "/api/v1/accounts/{account}/keys", 201, body)


async def test_roles_still_held_is_answered_with_its_documented_details(
    make_settings, own_policies, aiohttp_client, clock
):
    """The 409's `details` are typed (held, roles, accounts, keys, truncated), and the
    reload examples are requests keygate takes."""
    gateway = build_gateway(make_settings(policies_dir=str(own_policies)), clock=clock)
    gateway.start()
    try:
        management = await aiohttp_client(build_management_app(gateway))
        document = await fetch_document(management)
        issued = await gateway.lifecycle.create("acme", "owner", ["owner"], CLI_ACTOR)
        owner = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
        await gateway.lifecycle.create("acme", "reader", ["catalog-reader"], CLI_ACTOR)
        examples = own_policies / "examples.csv"
        examples.write_text("".join(line for line in examples.read_text().splitlines(True)
                                    if "catalog-reader" not in line))
        reload = "/api/v1/policy/reload"
        described = document["paths"][reload]["post"]
        sent = described["requestBody"]["content"]["application/json"]["examples"]
        refused = await management.post(reload, json=sent["reload"]["value"], headers=owner)
        assert refused.status == 409
        body = await refused.json()
        conforms(document, "POST", reload, 409, body)
        details = body["error"]["details"]
        assert details == {"held": {"acme": {"catalog-reader": 1}}, "roles": ["catalog-reader"],
                           "accounts": 1, "keys": 1, "truncated": False}
        schema = response_schema(document, "POST", reload, 409)
        for broken in ({k: v for k, v in details.items() if k != "truncated"},
                       {**details, "keys": "1"}, {**details, "extra": 1}, None):
            error = {**body["error"], "details": broken}
            if broken is None:
                del error["details"]
            assert not schema.is_valid({"error": error}), broken
        forced = await management.post(reload, json=sent["force"]["value"], headers=owner)
        assert forced.status == 200, await forced.text()
        conforms(document, "POST", reload, 200, await forced.json())
    finally:
        await gateway.close()


async def test_the_jwks_is_documented_as_served_cached_and_with_head(management_document):
    for path, operation_id in (("/.well-known/jwks.json", "jwks"),
                               ("/api/v1/.well-known/jwks.json", "jwksV1")):
        item = management_document["paths"][path]
        assert set(item) == {"get", "head"}
        assert item["head"]["operationId"] == operation_id + "Head"
        for method in ("get", "head"):
            responses = item[method]["responses"]
            for status in ("200", "304"):
                assert {"ETag", "Cache-Control"} <= set(responses[status]["headers"]), method
        assert "content" in item["get"]["responses"]["200"]
        assert "content" not in item["head"]["responses"]["200"]



@pytest.mark.parametrize("cookie", ["keygate_session", "kg", ""])
async def test_login_and_logout_declare_the_session_cookie_they_set(
    make_settings, aiohttp_client, cookie
):
    """login's 200 sets the session cookie (with `cookie: true`) and logout's 204 clears
    it: both declare Set-Cookie, under the name the session_cookie setting gives, and
    neither does when cookies are off."""
    gateway = build_gateway(make_settings(session_cookie=cookie))
    try:
        management = await aiohttp_client(build_management_app(gateway))
        document = await fetch_document(management)
        issued = await gateway.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        assert issued.token is not None
        response = await management.post("/api/v1/auth/login", json={
            "appKey": issued.record.app_key, "appToken": issued.token, "cookie": True})
        assert response.status == (200 if cookie else 400)
        set_cookies = response.headers.getall("Set-Cookie", [])
        logged_out = await management.post("/api/v1/auth/logout",
                                           headers={"X-Keygate-CSRF": "1"})
        cleared = logged_out.headers.getall("Set-Cookie", [])
    finally:
        await gateway.close()
    login = document["paths"]["/api/v1/auth/login"]["post"]["responses"]["200"]["headers"]
    logout = document["paths"]["/api/v1/auth/logout"]["post"]["responses"]["204"]["headers"]
    assert "X-Request-Id" in login and "X-Request-Id" in logout
    if not cookie:
        assert "Set-Cookie" not in login and "Set-Cookie" not in logout
        assert set_cookies == [] and cleared == []
        return
    assert login["Set-Cookie"]["schema"] == {"type": "string"}
    assert login["Set-Cookie"]["required"] is False  # without `cookie: true`, none
    assert f"`{cookie}=" in login["Set-Cookie"]["description"]
    assert f"`__Host-{cookie}`" in login["Set-Cookie"]["description"]
    assert logout["Set-Cookie"]["required"] is True
    assert f"`{cookie}`" in logout["Set-Cookie"]["description"]
    # what is declared is what keygate sends
    assert [c.split("=", 1)[0] for c in set_cookies] == [cookie]
    assert {c.split("=", 1)[0] for c in cleared} == {cookie, f"__Host-{cookie}"}
