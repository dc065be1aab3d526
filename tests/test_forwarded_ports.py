"""Whether a request came over TLS, as each port works it out (one rule,
``gateway.forwarded.client_over_tls``): the connection itself is TLS, or a trusted
proxy's ``X-Forwarded-Proto`` says ``https``; the decision API takes the front proxy's
word alone. What decides it is seen through the session cookie: over TLS login names it
``__Host-`` and only that name is read, so a cookie planted under the plain name signs
nobody in. A spoofed ``X-Forwarded-Proto`` from a peer that is not a trusted proxy, and
an RFC 7239 ``Forwarded`` header from anyone (keygate does not read it), change nothing,
and a malformed one is no error. Real redis-server, real aiohttp servers and keygate as
``keygate serve`` runs it, real Casbin."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from conftest import Key
from decider import FORMS, PORTS, Decider, assert_error, deciding, nginx_refusal

from gateway.app import build_gateway
from gateway.context import GATEWAY, Gateway
from gateway.management import build_management_app

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/accounts/acme/me"
NOT_LOOPBACK = ["10.0.0.0/8"]  # trusted proxies, none of them the tests' 127.0.0.1
LOOPBACK = ["127.0.0.1/32"]
SPOOFED = {"X-Forwarded-Proto": "https"}
# RFC 7239, well-formed or not: none of it is read
FORWARDED = [
    "proto=https",
    "for=192.0.2.60;proto=https;by=203.0.113.43",
    'for="[2001:db8::1]:443";proto="https"',
    'proto="https',
    "proto=",
    ";;=,,",
    "proto=https, proto=http",
    "for=unknown;proto=https;host=evil.example",
    "proto=" + "s" * 4000,
]


async def session_for(gateway: Gateway, key: Key) -> str:
    found = await gateway.store.auth_lookup(key.app_key, "acme")
    session, _ = await gateway.sessions.issue(key.app_key, "acme", found.token_digests[0])
    return session


@pytest.fixture
async def management_with(
    gateway: Gateway, make_settings: Callable[..., Any], clock: Any, aiohttp_client: Any
) -> AsyncIterator[Callable[..., Any]]:
    """The management port of another keygate over the same keys, with these
    settings; ``tls``: served over TLS with this context."""
    started: list[Gateway] = []

    async def make(tls: ssl.SSLContext | None = None, **overrides: Any) -> Any:
        other = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                            **overrides), clock=clock)
        other.start()
        started.append(other)
        if tls is None:
            return await aiohttp_client(build_management_app(other))
        server = TestServer(build_management_app(other))
        await server.start_server(ssl=tls)
        return await aiohttp_client(server, connector=aiohttp.TCPConnector(ssl=False))

    yield make
    for other in started:
        await other.close()


async def login_cookie(management: Any, key: Key, headers: dict[str, str]) -> str:
    """The Set-Cookie of a cookie login sent with ``headers``."""
    answer = await management.post(LOGIN, headers=headers, json={
        "appKey": key.app_key, "appToken": key.token, "cookie": True})
    assert answer.status == 200, await answer.text()
    management.session.cookie_jar.clear()
    return answer.headers["Set-Cookie"]


def assert_plain(set_cookie: str) -> None:
    """Login took the request as plain HTTP: the plain name, not Secure."""
    assert set_cookie.startswith("keygate_session="), set_cookie
    assert "secure" not in set_cookie.lower(), set_cookie


async def test_the_management_ports_own_tls_is_tls(management_with, make_key, certificate):
    """Served over TLS itself (no proxy in front, none trusted): login names the cookie
    ``__Host-`` and marks it Secure, and a planted plain-named one is not read."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    management = await management_with(tls=context)
    assert str(management.make_url("/")).startswith("https://")
    key = await make_key("acme", ["owner"])
    set_cookie = await login_cookie(management, key, {})
    assert set_cookie.startswith("__Host-keygate_session="), set_cookie
    assert "Secure" in set_cookie
    # the connection's own TLS: an X-Forwarded-Proto saying http changes nothing
    planted = await session_for(management.server.app[GATEWAY], key)
    answer = await management.get(ME, headers={"Cookie": f"keygate_session={planted}",
                                               "X-Forwarded-Proto": "http"})
    assert answer.status == 401, await answer.text()
    assert (await answer.json())["error"]["code"] == "missing_credentials"
    answer = await management.get(ME, headers={
        "Cookie": f"__Host-keygate_session={planted}"})
    assert answer.status == 200, await answer.text()


async def test_a_spoofed_proto_from_an_untrusted_peer_is_not_tls_on_the_management_port(
    management_with, make_key
):
    """trusted_proxies is set, but the peer is not among them: its X-Forwarded-Proto
    is the client's own word."""
    management = await management_with(trusted_proxies=NOT_LOOPBACK)
    key = await make_key("acme", ["owner"])
    assert_plain(await login_cookie(management, key, SPOOFED))
    session = await session_for(management.server.app[GATEWAY], key)
    answer = await management.get(ME, headers={"Cookie": f"keygate_session={session}",
                                               **SPOOFED})
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["appKey"] == key.app_key


async def test_forwarded_proto_is_not_read_on_the_management_port(management_with, make_key):
    """From a trusted proxy, ``Forwarded: proto=https`` is not TLS (only its
    X-Forwarded-Proto is), and no value of it is an error."""
    management = await management_with(trusted_proxies=LOOPBACK)
    key = await make_key("acme", ["owner"])
    session = await session_for(management.server.app[GATEWAY], key)
    for value in FORWARDED:
        assert_plain(await login_cookie(management, key, {"Forwarded": value}))
        answer = await management.get(ME, headers={
            "Cookie": f"keygate_session={session}", "Forwarded": value})
        assert answer.status == 200, (value, await answer.text())
        assert (await answer.json())["appKey"] == key.app_key
    # the trusted proxy's X-Forwarded-Proto still decides, beside any Forwarded
    answer = await management.get(ME, headers={
        "Cookie": f"keygate_session={session}", "Forwarded": "proto=http", **SPOOFED})
    assert answer.status == 401, await answer.text()


async def test_a_spoofed_proto_or_forwarded_is_not_tls_on_the_proxy_port(
    gateway, proxy_with, make_key, upstream
):
    """The proxy port: an untrusted peer's X-Forwarded-Proto, and a trusted one's
    ``Forwarded: proto=https``, leave the plain-named cookie read; a malformed
    ``Forwarded`` is no error and never reaches the upstream."""
    key = await make_key("acme", ["orders-reader"])
    cookie = {"Cookie": f"keygate_session={await session_for(gateway, key)}"}
    untrusted = await proxy_with(trusted_proxies=NOT_LOOPBACK)
    answer = await untrusted.get("/orders/1", headers={**cookie, **SPOOFED})
    assert answer.status == 200, await answer.text()
    assert upstream.last["headers"]["X-Keygate-Key"] == key.app_key
    assert upstream.last["headers"]["X-Forwarded-Proto"] == "http"
    trusted = await proxy_with(trusted_proxies=LOOPBACK)
    for value in FORWARDED:
        answer = await trusted.get("/orders/1", headers={**cookie, "Forwarded": value})
        assert answer.status == 200, (value, await answer.text())
        assert upstream.last["headers"]["X-Keygate-Key"] == key.app_key
        assert upstream.last["headers"]["X-Forwarded-Proto"] == "http"
        assert "Forwarded" not in upstream.last["headers"]
    answer = await trusted.get("/orders/1", headers={**cookie, **SPOOFED,
                                                     "Forwarded": "proto=http"})
    assert answer.status == 401, await answer.text()
    assert orjson.loads(await answer.read())["error"]["code"] == "missing_credentials"


@pytest.mark.parametrize("form", FORMS)
async def test_forwarded_proto_is_not_read_on_the_decision_api(
    gateway, make_settings, make_key, form
):
    """The decision API reads the front proxy's X-Forwarded-Proto only: its
    ``Forwarded``, well-formed or not, leaves the plain-named cookie read (Traefik
    passes a client's ``Forwarded`` on untouched); and a peer that is not a trusted
    proxy is not asked anything, whatever scheme it claims."""
    key = await make_key("acme", ["orders-reader"])
    session = await session_for(gateway, key)
    settings = make_settings(store_prefix=gateway.settings.store_prefix, **PORTS)
    async with aiohttp.ClientSession() as client, deciding(settings, client) as decider:
        for value in FORWARDED:
            reply = await decider.ask(form, "GET", "/orders/1", {
                "Cookie": f"keygate_session={session}", "Forwarded": value})
            assert reply.status == 200, (value, reply.body)
            assert reply.identity()["Key"] == [key.app_key]
        reply = await decider.ask(form, "GET", "/orders/1", {
            "Cookie": f"keygate_session={session}", "Forwarded": "proto=http"},
            scheme="https")
        _refused(decider, form, reply, 401, "missing_credentials")
    settings = make_settings(store_prefix=gateway.settings.store_prefix,
                             trusted_proxies=NOT_LOOPBACK, **PORTS)
    async with aiohttp.ClientSession() as client, deciding(settings, client) as decider:
        reply = await decider.ask(form, "GET", "/orders/1", {
            "Cookie": f"keygate_session={session}"}, scheme="https")
        _refused(decider, form, reply, 403, "untrusted_decision_caller")


def _refused(decider: Decider, form: str, reply: Any, status: int, code: str) -> None:
    if form == "nginx":
        nginx_refusal(reply, status, code)
    else:
        assert_error(reply, status, code)
