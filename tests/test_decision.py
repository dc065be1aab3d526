"""The decision API asked directly, in its three forms (nginx ``auth_request``, Traefik
ForwardAuth, Envoy ``ext_authz``), on keygate as ``keygate serve`` runs it: real ports
behind the connection guard, the private redis-server, the real policies.

What each form must give: the proxy port's decision for the same request, the identity
headers when allowed, the one JSON error shape when not (nginx's form carrying the real
status in headers), answers only to a trusted front proxy, the client's address for
the failure budgets from what that proxy says, and nothing of the credentials anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from conftest import Key
from decider import (
    FORMS,
    HOST,
    PORTS,
    Decider,
    Reply,
    assert_error,
    collected_logs,
    deciding,
    nginx_refusal,
    samples,
    stage_count,
    until,
)
from yarl import URL

from gateway.app import build_gateway
from gateway.errors import ConfigError
from gateway.http_head import Refusal, read_head
from gateway.logs import JsonFormatter, TextFormatter

TWO_USER_AGENTS = [("User-Agent", "a"), ("User-Agent", "b")]  # a head keygate refuses
UNKNOWN_KEY = {"X-API-AppKey": "kgk-acme-AAAAAAAAAA", "X-API-AppToken": "kgt_" + "A" * 36}


def wrong_token(key: Key) -> dict[str, str]:
    last = "y" if key.token.endswith("x") else "x"
    return {**key.headers, "X-API-AppToken": key.token[:-1] + last}


def refused(form: str, reply: Reply, status: int, code: str) -> dict[str, Any]:
    """The refusal as the form carries it."""
    if form == "nginx":
        return nginx_refusal(reply, status, code)
    return assert_error(reply, status, code)


@pytest.fixture
async def decider_with(gateway, make_settings) -> AsyncIterator[Callable[..., Any]]:
    """keygate serving the decision API over the same keys as ``make_key`` (same store
    prefix), with these settings."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def make(**overrides: Any) -> Decider:
            settings = make_settings(**{
                "store_prefix": gateway.settings.store_prefix, "auth_failure_limit": 3,
                **PORTS, **overrides})
            return await stack.enter_async_context(deciding(settings, session))

        yield make


@pytest.fixture
async def decider(decider_with) -> Decider:
    return await decider_with()


# -- allowed -------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
async def test_allowed_is_200_with_the_identity_headers_to_set_upstream(
    decider, make_key, form
):
    key = await make_key("acme", ["orders-writer"])
    reply = await decider.ask(form, "POST", "/orders/42?page=2", key.headers)
    assert reply.status == 200, reply.body
    assert reply.body == b""
    assert reply.identity() == {
        "Key": [key.app_key], "Owner-Account": ["acme"], "Account": ["acme"],
        "Roles": ["orders-writer"],
    }
    # nginx forwards the path keygate authorized only if it is told it
    assert reply.headers.getall("X-Keygate-Path", []) == (
        ["/orders/42"] if form == "nginx" else [])
    assert "X-Keygate-Status" not in reply.headers and "X-Keygate-Error" not in reply.headers
    assert reply.headers["X-Request-Id"] and reply.headers["Server"] == "keygate"
    assert not any(key.token in v for v in reply.headers.values())


@pytest.mark.parametrize("form", FORMS)
async def test_the_host_route_reads_the_host_the_client_sent(decider, make_key, form):
    """Traefik calls keygate with keygate's own ``Host``: the client's is in
    ``X-Forwarded-Host``; nginx and Envoy pass the client's ``Host`` itself."""
    key = await make_key("acme", ["catalog-reader"])
    allowed = await decider.ask(form, "GET", "/catalog/1", key.headers, host="acme.api.test")
    assert allowed.status == 200, allowed.body
    assert allowed.headers["X-Keygate-Account"] == "acme"
    other = await decider.ask(form, "GET", "/catalog/1", key.headers, host="beta.api.test")
    refused(form, other, 403, "no_grant")


async def test_the_form_is_the_path_called_never_a_header(decider, make_key):
    """A client behind Traefik (which passes the client's headers on) adding nginx's
    header, or behind nginx adding Traefik's, changes nothing: each form reads its own."""
    key = await make_key("acme", ["orders-reader"])
    behind_traefik = await decider.ask(
        "traefik", "GET", "/beta/orders/1",
        [*key.headers.items(), ("X-Original-URI", "/orders/1"),
         ("X-Original-Method", "GET")])
    assert_error(behind_traefik, 403, "no_grant")
    behind_nginx = await decider.ask(
        "nginx", "GET", "/beta/orders/1",
        [*key.headers.items(), ("X-Forwarded-Uri", "/orders/1")])
    nginx_refusal(behind_nginx, 403, "no_grant")


async def test_traefiks_uri_with_a_query_string(decider, make_key):
    key = await make_key("acme", ["orders-reader"])
    for uri in ("/orders/42?page=2&next=/../admin", "/orders/42?x=%2f&y=..", "/orders/42?"):
        reply = await decider.ask("traefik", "GET", uri, key.headers)
        assert reply.status == 200, (uri, reply.body)
    assert_error(await decider.ask("traefik", "GET", "/orders/x/../42?x=1", key.headers),
                 400, "path_not_normal")


# -- refused -------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
async def test_each_refusal_has_its_status_and_the_one_error_shape(decider, make_key, form):
    reader = await make_key("acme", ["orders-reader"])
    cases = [
        ("GET", "/orders/1", {}, 401, "missing_credentials"),
        ("GET", "/orders/1", {"X-API-AppKey": reader.app_key}, 401, "incomplete_credentials"),
        ("GET", "/orders/1", wrong_token(reader), 401, "invalid_credentials"),
        ("GET", "/orders/1", UNKNOWN_KEY, 401, "invalid_credentials"),
        ("POST", "/orders/1", reader.headers, 403, "not_permitted"),
        ("GET", "/beta/orders/1", reader.headers, 403, "no_grant"),
        ("GET", "/nowhere", reader.headers, 404, "no_route"),
        ("GET", "/orders/%2f", reader.headers, 400, "bad_path"),
        ("GET", "/orders/1", {**reader.headers, "X-API-AppKey": "k" * 300}, 400,
         "malformed_credentials"),
    ]
    for method, target, headers, status, code in cases:
        reply = await decider.ask(form, method, target, headers)
        refused(form, reply, status, code)
        assert "X-Keygate-Key" not in reply.headers


async def test_an_unknown_key_and_a_wrong_token_get_the_same_answer(decider, make_key):
    key = await make_key("acme", ["orders-reader"])
    for i, form in enumerate(FORMS):
        client = f"203.0.113.{i}"  # each its own failure budget
        unknown = await decider.ask(form, "GET", "/orders/1", UNKNOWN_KEY, client=client)
        wrong = await decider.ask(form, "GET", "/orders/1", wrong_token(key), client=client)
        assert unknown.status == wrong.status == 401
        assert {**unknown.error, "requestId": ""} == {**wrong.error, "requestId": ""}


async def test_nginx_form_carries_429_with_retry_after_and_503(
    decider_with, make_key, closed_port
):
    decider = await decider_with()
    for _ in range(3):
        nginx_refusal(await decider.ask("nginx", "GET", "/orders/1", UNKNOWN_KEY), 401,
                      "invalid_credentials")
    blocked = await decider.ask("nginx", "GET", "/orders/1", UNKNOWN_KEY)
    nginx_refusal(blocked, 429, "too_many_failures")
    assert int(blocked.headers["Retry-After"]) >= 1

    key = await make_key("acme", ["orders-reader"])  # well-formed: worth a store lookup
    lost = await decider_with(store_url=f"redis://127.0.0.1:{closed_port}/0")
    nginx_refusal(await lost.ask("nginx", "GET", "/orders/1", key.headers), 503,
                  "store_unavailable")
    assert_error(await lost.ask("traefik", "GET", "/orders/1", key.headers), 503,
                 "store_unavailable")


async def test_nginx_forms_error_header_is_one_line_of_ascii_for_a_non_ascii_message(
    decider_with, make_key, upstream
):
    routes = [{"name": "bestellungen-über-☃", "path_prefix": "/konten", "account_from": "path",
               "account_segment": 2, "upstream": upstream.url, "resource": "orders"}]
    decider = await decider_with(routes=routes)
    key = await make_key("acme", ["orders-reader"])
    reply = await decider.ask("nginx", "GET", "/konten/Not-An-Account/x", key.headers)
    error = nginx_refusal(reply, 400, "bad_account")
    assert "bestellungen-über-☃" in error["message"]  # the body keeps the UTF-8 text
    assert "\\u00fc" in reply.headers["X-Keygate-Error"]  # the header, JSON escapes


# -- the original request ------------------------------------------------------------------

async def test_the_original_request_header_names_are_settings(decider_with, make_key):
    decider = await decider_with(decision_original_method_header="X-Auth-Method",
                                 decision_original_uri_header="X-Auth-Target")
    key = await make_key("acme", ["orders-reader"])
    allowed = await decider.ask("nginx", "GET", "/orders/1", key.headers)
    assert allowed.status == 200, allowed.body
    as_default = await decider.call("GET", "/nginx", [
        *key.headers.items(), ("X-Original-Method", "GET"), ("X-Original-URI", "/orders/1")])
    error = nginx_refusal(as_default, 400, "missing_original_request")
    assert "X-Auth-Method" in error["message"]


async def test_the_envoy_prefix_is_a_setting(decider_with, make_key):
    decider = await decider_with(decision_envoy_prefix="/ext-authz/check")
    key = await make_key("acme", ["orders-reader"])
    reply = await decider.call("GET", "/ext-authz/check/orders/1", key.headers.items())
    assert reply.status == 200, reply.body
    assert reply.headers["X-Keygate-Key"] == key.app_key
    assert_error(await decider.call("GET", "/envoy/orders/1", key.headers.items()), 404,
                 "unknown_decision_endpoint")


@pytest.mark.parametrize("prefix", [
    "", "/", "envoy", "/envoy/", "/envoy?x", "/env%6Fy", "//envoy", "/a//b", "/nginx",
    "/traefik", "/énvoy",
])
def test_an_unusable_envoy_prefix_is_refused_at_start(make_settings, prefix):
    with pytest.raises(ConfigError, match="setting decision_envoy_prefix"):
        build_gateway(make_settings(decision_listen="127.0.0.1:0",
                                    decision_envoy_prefix=prefix))


@pytest.mark.parametrize(("form", "drop"), [
    ("nginx", "X-Original-Method"), ("nginx", "X-Original-URI"),
    ("traefik", "X-Forwarded-Method"), ("traefik", "X-Forwarded-Uri"),
    ("traefik", "X-Forwarded-Host"),
])
async def test_a_form_without_its_original_request_headers_is_400(
    decider, make_key, form, drop
):
    key = await make_key("acme", ["owner"])
    method, path, headers = decider.request_form(form, "GET", "/orders/1", key.headers.items())
    for kept in ([h for h in headers if h[0] != drop],
                 [(n, "" if n == drop else v) for n, v in headers]):
        error = refused(form, await decider.call(method, path, kept), 400,
                        "missing_original_request")
        assert drop in error["message"]


@pytest.mark.parametrize("form", ["nginx", "traefik"])
@pytest.mark.parametrize("method", ["G ET", "G\"T", "(GET)", "M" * 33, "GET,POST"])
async def test_a_method_that_is_not_an_http_method_is_400(decider, make_key, form, method):
    key = await make_key("acme", ["owner"])
    refused(form, await decider.ask(form, method, "/orders/1", key.headers), 400, "bad_method")


@pytest.mark.parametrize("form", ["nginx", "traefik"])
@pytest.mark.parametrize("method", ["delete", "Delete", "FOO", "CONNECT", "PRI"])
async def test_a_method_the_proxy_port_does_not_serve_is_refused_as_it_does(
    decider, make_key, form, method
):
    """Traefik passes a client's ``delete`` on as it came (Go keeps the case), and
    Django or Flask behind it upper-case it: authorized as ``delete``, the route's
    ``DELETE = "admin"`` would not apply and a key that may only write would delete.
    The proxy port refuses such a method; the decision API refuses it alike."""
    writer = await make_key("acme", ["orders-writer"])
    assert (await decider.ask(form, "PUT", "/accounts/acme/1", writer.headers)).status == 200
    refused(form, await decider.ask(form, "DELETE", "/accounts/acme/1", writer.headers),
            403, "not_permitted")
    proxy_port = read_head(f"{method} /accounts/acme/1 HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert isinstance(proxy_port, Refusal)
    error = refused(form, await decider.ask(form, method, "/accounts/acme/1", writer.headers),
                    proxy_port.status, proxy_port.code)
    assert method not in error["message"]


@pytest.mark.parametrize("form", ["nginx", "traefik"])
@pytest.mark.parametrize("target", ["orders/1", "http://api.test/orders/1", "*", "?x=/orders"])
async def test_a_path_not_starting_with_a_slash_is_400(decider, make_key, form, target):
    key = await make_key("acme", ["owner"])
    refused(form, await decider.ask(form, "GET", target, key.headers), 400, "bad_path")


@pytest.mark.parametrize("path", [
    "/", "/nginx/", "/NGINX", "/nginx/orders/1", "/traefik/x", "/envoy", "/envoyx/orders/1",
    "/Envoy/orders/1", "/metrics", "/orders/1",
])
async def test_any_other_endpoint_is_404(decider, make_key, path):
    key = await make_key("acme", ["owner"])
    headers = [*key.headers.items(), ("X-Original-Method", "GET"),
               ("X-Original-URI", "/orders/1"), ("X-Forwarded-Method", "GET"),
               ("X-Forwarded-Uri", "/orders/1"), ("X-Forwarded-Host", HOST)]
    assert_error(await decider.call("GET", path, headers), 404, "unknown_decision_endpoint")


async def test_a_huge_original_request_is_refused_with_a_4xx(decider, make_key):
    key = await make_key("acme", ["owner"])
    long_uri = "/orders/" + "a" * 9000
    cases = [
        ("nginx", await decider.ask("nginx", "GET", long_uri, key.headers), 431),
        ("traefik", await decider.ask("traefik", "GET", long_uri, key.headers), 431),
        ("envoy", await decider.ask("envoy", "GET", long_uri, key.headers), 414),
        ("nginx", await decider.ask("nginx", "GET", "/orders/1",
                                    [*key.headers.items(), *((f"X-Pad-{i}", "p" * 1000)
                                                             for i in range(80))]), 431),
        ("nginx", await decider.ask("nginx", "GET", "/orders/1",
                                    [*key.headers.items(), *((f"X-N-{i}", "1")
                                                             for i in range(120))]), 431),
        # the head is refused as it is read, before the form is known: the path called
        # still picks it (nginx's auth_request passes on 401 and 403 only)
        ("nginx", await decider.call("GET", "/nginx?x", [
            *key.headers.items(), ("X-Original-Method", "GET"),
            ("X-Original-URI", "/orders/1"), *TWO_USER_AGENTS]), 400),
        ("traefik", await decider.call("GET", "/traefik", [
            *key.headers.items(), *TWO_USER_AGENTS]), 400),
        ("envoy", await decider.call("GET", "/envoy/nginx", [
            *key.headers.items(), *TWO_USER_AGENTS]), 400),
    ]
    codes = {400: "malformed_request", 414: "uri_too_long",
             431: "request_header_fields_too_large"}
    for form, reply, status in cases:
        refused(form, reply, status, codes[status])
        assert reply.headers["Connection"] == "close"
    # just below the limits the request is decided as usual
    within = "/orders/" + "a" * 8000
    for form in FORMS:
        reply = await decider.ask(form, "GET", within, key.headers)
        assert reply.status == 200, (form, reply.body)


# -- who may ask, and for which client -----------------------------------------------------

async def test_an_untrusted_caller_is_refused_before_any_credential_is_looked_at(
    decider_with, make_key
):
    untrusted = await decider_with(trusted_proxies=["10.0.0.0/8"])  # loopback is not in it
    key = await make_key("acme", ["owner"])
    for form in FORMS:
        refused(form, await untrusted.ask(form, "GET", "/orders/1", key.headers), 403,
                "untrusted_decision_caller")
        for _ in range(4):  # past the failure budget (3), were they counted
            reply = await untrusted.ask(form, "GET", "/orders/1", UNKNOWN_KEY)
            refused(form, reply, 403, "untrusted_decision_caller")
    assert stage_count(await untrusted.scrape(), "authentication") == 0
    # nothing was counted against this address: a trusted front proxy's first failure
    # from it is a 401, not a 429
    trusted = await decider_with()
    assert_error(await trusted.ask("traefik", "GET", "/orders/1", UNKNOWN_KEY), 401,
                 "invalid_credentials")
    # once listed, the same caller may ask
    listed = await decider_with(trusted_proxies=["10.0.0.0/8", "127.0.0.1/32"])
    assert (await listed.ask("envoy", "GET", "/orders/1", key.headers)).status == 200


@pytest.mark.parametrize("form", FORMS)
async def test_a_client_address_past_its_budget_gets_429_and_another_does_not(
    decider, make_key, form
):
    key = await make_key("acme", ["orders-reader"])
    attacker, other = "203.0.113.7", "198.51.100.20"
    for _ in range(3):
        refused(form, await decider.ask(form, "GET", "/orders/1", UNKNOWN_KEY, client=attacker),
                401, "invalid_credentials")
    blocked = await decider.ask(form, "GET", "/orders/1", UNKNOWN_KEY, client=attacker)
    refused(form, blocked, 429, "too_many_failures")
    assert int(blocked.headers["Retry-After"]) >= 1
    # the right credentials from there too; what the client wrote left of the address
    # its front proxy vouched for, or a trusted hop right of it, changes nothing
    for forwarded_for in (attacker, f"198.51.100.99, {attacker}", f"{attacker}, 127.0.0.1"):
        reply = await decider.ask(form, "GET", "/orders/1", key.headers, client=forwarded_for)
        refused(form, reply, 429, "too_many_failures")
    # another client through the same front proxy, and the front proxy's own address
    refused(form, await decider.ask(form, "GET", "/orders/1", UNKNOWN_KEY, client=other),
            401, "invalid_credentials")
    assert (await decider.ask(form, "GET", "/orders/1", key.headers, client=other)).status \
        == 200
    assert (await decider.ask(form, "GET", "/orders/1", key.headers)).status == 200


async def test_x_real_ip_names_the_client_when_there_is_no_x_forwarded_for(decider, make_key):
    key = await make_key("acme", ["orders-reader"])
    real = [("X-Real-IP", "203.0.113.9")]
    for _ in range(4):  # the fourth failure is past the budget
        reply = await decider.ask("envoy", "GET", "/orders/1", [*real, *UNKNOWN_KEY.items()])
    assert_error(reply, 429, "too_many_failures")
    assert_error(await decider.ask("envoy", "GET", "/orders/1", [*real, *key.headers.items()]),
                 429, "too_many_failures")
    # X-Forwarded-For comes first; a malformed X-Real-IP is no address: the peer's
    assert (await decider.ask("envoy", "GET", "/orders/1", [*real, *key.headers.items()],
                              client="198.51.100.20")).status == 200
    for garbage in ("unknown", "203.0.113.9, 1.2.3.4", "203.0.113.9x", ""):
        reply = await decider.ask("envoy", "GET", "/orders/1",
                                  [("X-Real-IP", garbage), *key.headers.items()])
        assert reply.status == 200, (garbage, reply.body)


# -- what the answer never carries ---------------------------------------------------------

SPOOFED = [
    ("X-Keygate-Key", "kgk-acme-EVIL000000"), ("x-keygate-roles", "owner"),
    ("X-Keygate-Account", "beta"), ("X-Keygate-Owner-Account", "beta"),
    ("X-Keygate-Path", "/admin"), ("X-Keygate-Status", "200"), ("X-Keygate-Error", "{}"),
    ("X-Keygate_Roles", "owner"), ("X-Keygate-Extra", "EVIL"),
]


@pytest.mark.parametrize("form", FORMS)
async def test_client_sent_keygate_headers_never_come_back(decider, make_key, form):
    key = await make_key("acme", ["orders-reader"])
    allowed = await decider.ask(form, "GET", "/orders/1", [*SPOOFED, *key.headers.items()])
    assert allowed.status == 200, allowed.body
    assert allowed.identity() == {"Key": [key.app_key], "Owner-Account": ["acme"],
                                  "Account": ["acme"], "Roles": ["orders-reader"]}
    assert allowed.headers.getall("X-Keygate-Path", []) == (
        ["/orders/1"] if form == "nginx" else [])
    refusal = await decider.ask(form, "GET", "/orders/1", SPOOFED)
    refused(form, refusal, 401, "missing_credentials")
    for reply in (allowed, refusal):
        assert not any(name.lower().replace("_", "-") == "x-keygate-extra"
                       for name in reply.headers)
        for value in reply.headers.values():
            assert "EVIL" not in value and "owner" not in value and "/admin" not in value
        assert "X-Keygate-Error" not in reply.headers or form == "nginx"


async def test_no_token_in_any_answer_or_log_line(decider_with, make_key):
    decider = await decider_with(access_log=True)
    key = await make_key("acme", ["orders-reader"])
    digest = decider.gateway.hasher.digest(key.token)
    secrets = (key.token, key.token[4:], digest, wrong_token(key)["X-API-AppToken"])
    with collected_logs() as records:
        replies = []
        for form in FORMS:
            for target, headers in (
                ("/orders/1?token=" + key.token, key.headers),
                ("/orders/1", wrong_token(key)),
                ("/beta/orders/1", key.headers),
                ("/orders/1", {**key.headers, "X-API-AppToken": key.token + "é"}),
                ("/orders/1", {**key.headers, "X-API-AppToken": key.token * 8}),
                # a client that pasted its token into the path gets its path back (a
                # 404 names it; nginx is told it, to forward it): only the logs are kept
                # clean of it
                ("/orders/" + key.token, key.headers),
                ("/nowhere/" + key.token, key.headers),
            ):
                reply = await decider.ask(form, "GET", target, headers, client="198.51.100.3")
                replies.append((key.token not in target.partition("?")[0], reply))
        await until(lambda: sum(r.name == "keygate.access" for r in records) >= len(replies))
    assert {r.status for _, r in replies} >= {200, 401, 403, 404}
    answers = [r.body.decode() + repr(list(r.headers.items())) for clean, r in replies if clean]
    lines = [f(record) for record in records
             for f in (TextFormatter().format, JsonFormatter().format)]
    assert any(key.app_key in line for line in lines)  # the lines are about this key
    for text in (*answers, *lines):
        for secret in secrets:
            assert secret not in text


async def test_revocation_holds_from_the_very_next_decision(decider, make_key, admin_key):
    key = await make_key("acme", ["orders-reader"])
    for form in FORMS:
        assert (await decider.ask(form, "GET", "/orders/1", key.headers)).status == 200
    async with decider.session.patch(
        f"{decider.listening.management}/api/v1/accounts/acme/keys/{key.app_key}",
        json={"status": "inactive"}, headers=admin_key.headers,
    ) as response:
        assert response.status == 200, await response.text()
    for form in FORMS:
        refused(form, await decider.ask(form, "GET", "/orders/1", key.headers), 401,
                "key_inactive")


# -- what keygate tells its operator -------------------------------------------------------

async def test_decisions_are_counted_by_route_status_and_decision(decider, make_key):
    reader = await make_key("acme", ["orders-reader"])
    for form, method, target, headers in [
        ("nginx", "GET", "/orders/1", reader.headers),
        ("traefik", "GET", "/orders/2", reader.headers),
        ("envoy", "GET", "/orders/3", reader.headers),
        ("envoy", "POST", "/orders/1", reader.headers),
        ("traefik", "GET", "/beta/orders/1", reader.headers),
        ("nginx", "GET", "/orders/1", {}),
        ("nginx", "GET", "/nowhere", reader.headers),
        ("traefik", "GET", "/orders/x/../1", reader.headers),
    ]:
        await decider.ask(form, method, target, headers)
    await decider.call("GET", "/elsewhere")
    text = await decider.scrape()
    assert samples(text, "keygate_decision_requests_total") == {
        (("decision", "allowed"), ("route", "orders"), ("status", "2xx")): 3,
        (("decision", "not_permitted"), ("route", "orders"), ("status", "4xx")): 1,
        (("decision", "no_grant"), ("route", "beta-orders"), ("status", "4xx")): 1,
        (("decision", "missing_credentials"), ("route", "orders"), ("status", "4xx")): 1,
        (("decision", "no_route"), ("route", "(none)"), ("status", "4xx")): 1,
        (("decision", "path_not_normal"), ("route", "orders"), ("status", "4xx")): 1,
        (("decision", "unknown_decision_endpoint"), ("route", "(none)"), ("status", "4xx")): 1,
    }
    assert stage_count(text, "decision") == 9
    assert samples(text, "keygate_requests_total") == {}  # the proxy port's, untouched


async def test_the_access_log_shows_the_original_request(decider_with, make_key):
    decider = await decider_with(access_log=True)
    reader = await make_key("acme", ["orders-reader"])
    with collected_logs() as records:
        await decider.ask("nginx", "HEAD", "/orders/7?page=2", reader.headers,
                          client="203.0.113.5")
        await decider.ask("envoy", "DELETE", "/orders/8", reader.headers, client="203.0.113.6")
        await decider.ask("traefik", "PATCH", "/nowhere?x=1", reader.headers)
        await until(lambda: sum(r.name == "keygate.access" for r in records) >= 3)
    seen = [(r.remote, r.method, r.path, r.status, r.route, r.appKey, r.errorCode)
            for r in records if r.name == "keygate.access"]
    assert seen == [
        ("203.0.113.5", "HEAD", "/orders/7", 200, "orders", reader.app_key, None),
        ("203.0.113.6", "DELETE", "/orders/8", 403, "orders", reader.app_key,
         "not_permitted"),
        ("127.0.0.1", "PATCH", "/nowhere", 404, None, None, "no_route"),
    ]


@pytest.mark.parametrize("framing", ["Content-Length: 1073741824", "Transfer-Encoding: chunked"])
async def test_a_body_sent_to_the_decision_api_is_not_waited_for(decider, make_key, framing):
    """Front proxies send no body (Envoy a Content-Length: 0); a caller announcing a
    gigabyte and sending a little gets its decision at once, the body unread."""
    key = await make_key("acme", ["orders-writer"])
    url = URL(decider.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        head = (f"POST /envoy/orders/1 HTTP/1.1\r\nHost: {HOST}\r\n"
                f"X-API-AppKey: {key.app_key}\r\nX-API-AppToken: {key.token}\r\n"
                f"{framing}\r\n\r\n")
        writer.write(head.encode() + (b"400\r\n" if "chunked" in framing else b"")
                     + b"x" * 512)
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status == b"HTTP/1.1 200 OK\r\n"
    finally:
        writer.close()
