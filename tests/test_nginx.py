"""nginx in front of keygate's decision API, for real: the machine's nginx (Debian's
``nginx-light``, which has ``auth_request``) runs ``deploy/nginx/keygate.conf`` as
shipped, with only its three addresses replaced by this test's ports, in front of
keygate (``running()``, as ``keygate serve`` runs it) and the conftest's recording
upstream. The proxy port's behaviour cases run through it: what the client gets and
what the upstream receives must be what the proxy port gives, path for path.

Skipped, with the reason, where no nginx with ``auth_request`` is installed (``.ci/run``
installs ``nginx-light``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nginx_process
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from nginx_process import SHIPPED, nginx_binary, shipped_site
from ports import free_port
from yarl import URL

from gateway.app import build_gateway, running
from gateway.errors import BadGateway

MiB = 1024 * 1024
STREAM_BLOCK = bytes(range(256)) * 4096  # the conftest upstream's 1 MiB /stream block


NGINX = nginx_binary()
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="no nginx with the auth_request module (install Debian's nginx-light; .ci/run does)",
)


@contextlib.contextmanager
def nginx_serving(site: str, workdir: Path) -> Any:
    """nginx with ``site`` included in its http block, as this user, everything under
    ``workdir``; yields its base URL."""
    assert NGINX is not None
    port = int(site.split("listen 127.0.0.1:", 1)[1].split(";", 1)[0])
    try:
        child = nginx_process.start(NGINX, site, workdir, port, workers="1", connections=512)
    except RuntimeError as failed:
        pytest.fail(str(failed))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        nginx_process.stop(child)


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def error(self) -> dict[str, Any]:
        return orjson.loads(self.body)["error"]


async def call(session: aiohttp.ClientSession, base: str, method: str, path: str,
               **kwargs: Any) -> Reply:
    """``path`` exactly as written (no dot resolution, no quoting)."""
    async with session.request(method, URL(base + path, encoded=True), **kwargs) as r:
        return Reply(r.status, r.headers, await r.read())


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.error
    assert (error["status"], error["code"]) == (status, code), error
    assert error["requestId"] == reply.headers["X-Request-Id"]


@dataclass
class Front:
    nginx: str
    proxy: str
    gateway: Any
    session: aiohttp.ClientSession


@pytest.fixture
async def front(gateway, make_settings, upstream, tmp_path) -> AsyncIterator[Front]:
    """nginx → keygate's decision API, the same keys (store prefix) as ``make_key``,
    and keygate's own proxy port beside it for comparison."""
    settings = make_settings(
        store_prefix=gateway.settings.store_prefix, decision_listen="127.0.0.1:0",
        proxy_listen="127.0.0.1:0", management_listen="127.0.0.1:0", metrics_listen="",
        auth_failure_limit=3,
    )
    keygate = build_gateway(settings)
    async with running(keygate) as listening, aiohttp.ClientSession() as session:
        assert listening.decision is not None
        site = shipped_site(URL(listening.decision).port, URL(upstream.url).port, free_port())
        with nginx_serving(site, tmp_path) as nginx:
            yield Front(nginx, listening.proxy, keygate, session)


pytestmark = needs_nginx


# -- the decision reaches the upstream ----------------------------------------------------

async def test_allowed_request_reaches_the_upstream_with_identity_and_no_credentials(
    front, make_key, upstream
):
    key = await make_key("acme", ["orders-reader"])
    reply = await call(front.session, front.nginx, "GET", "/orders/42?page=2&x=%2e",
                       headers=key.headers)
    assert reply.status == 200, reply.body
    assert orjson.loads(reply.body)["path"] == "/orders/42?page=2&x=%2e"
    got = upstream.last["headers"]
    assert got["X-Keygate-Key"] == key.app_key
    assert got["X-Keygate-Owner-Account"] == "acme"
    assert got["X-Keygate-Account"] == "acme"
    assert got["X-Keygate-Roles"] == "orders-reader"
    assert "X-API-AppKey" not in got and "X-API-AppToken" not in got
    assert not any(key.token in value for value in got.values())
    assert got["X-Request-Id"] == reply.headers["X-Request-Id"]  # one id end to end
    # the decider's own answer headers stay between nginx and keygate
    for internal in ("X-Keygate-Path", "X-Keygate-Upstream-Path", "X-Keygate-Status",
                     "X-Keygate-Error"):
        assert internal not in got and internal not in reply.headers


async def test_a_session_passes_nginx_and_never_reaches_the_upstream(
    front, make_key, upstream
):
    key = await make_key("acme", ["orders-reader"])
    found = await front.gateway.store.auth_lookup(key.app_key, "acme")
    session, _ = await front.gateway.sessions.issue(key.app_key, "acme",
                                                    found.token_digests[0])
    for headers, authorization, cookie in [
        ({"Authorization": f"Bearer {session}"}, None, None),
        ({"Cookie": f"theme=dark; keygate_session={session}; lang=en"}, None,
         "theme=dark; lang=en"),
        ({**key.headers, "Authorization": "Bearer upstream-own", "Cookie": "a=b"},
         "Bearer upstream-own", "a=b"),
        # the pair authenticates; the cookie a signed-in browser adds still stays out
        ({**key.headers, "Cookie": f"a=b; keygate_session={session}"}, None, "a=b"),
        # and so does a keygate session in the Authorization header beside the pair
        ({**key.headers, "Authorization": f"Bearer {session}"}, None, None),
    ]:
        reply = await call(front.session, front.nginx, "GET", "/orders/7", headers=headers)
        assert reply.status == 200, reply.body
        got = upstream.last["headers"]
        assert got.get("Authorization") == authorization
        assert got.get("Cookie") == cookie
        assert session not in str(got)
        assert got["X-Keygate-Key"] == key.app_key
        for internal in ("X-Keygate-Authorization", "X-Keygate-Cookie"):
            assert internal not in got and internal not in reply.headers
    forged = await call(front.session, front.nginx, "GET", "/orders/7",
                        headers={"Authorization": f"Bearer {session[:-4]}AAAA"})
    assert_error(forged, 401, "invalid_session")
    # a form on another page of the site posts with the cookie: refused before upstream
    before = len(upstream.requests)
    cross_site = await call(front.session, front.nginx, "POST", "/orders/7", headers={
        "Cookie": f"keygate_session={session}", "Origin": "http://127.0.0.1:9",
        "Content-Type": "application/x-www-form-urlencoded"})
    assert_error(cross_site, 403, "csrf_refused")
    assert len(upstream.requests) == before


async def test_a_session_write_is_judged_by_the_origin_the_browser_sent_it_to(
    front, make_key, upstream
):
    """The origin of a request is its scheme, host and port. nginx's ``$host`` has no
    port, so keygate compared the page's ``Origin`` with the host alone: a write from
    the API's own page (``http://127.0.0.1:PORT``) was refused, and one from another
    origin of the host (``http://127.0.0.1``, port 80) passed the check. The proxy port
    compares with the ``Host`` the browser sent, port included; so does nginx's form."""
    key = await make_key("acme", ["orders-writer"])
    found = await front.gateway.store.auth_lookup(key.app_key, "acme")
    session, _ = await front.gateway.sessions.issue(key.app_key, "acme",
                                                    found.token_digests[0])
    for base in (front.proxy, front.nginx):
        # what a browser sends: the session cookie, the proof header a script adds
        # (another origin only once a CORS preflight let it) and its page's Origin
        sent = {"Cookie": f"keygate_session={session}", "X-Keygate-CSRF": "1"}
        own = await call(front.session, base, "POST", "/orders/1",
                         headers={**sent, "Origin": base})
        assert own.status == 200, (base, own.body)
        other = await call(front.session, base, "POST", "/orders/1",
                           headers={**sent, "Origin": "http://127.0.0.1"})
        assert_error(other, 403, "csrf_refused")
    assert len(upstream.requests) == 2


async def test_an_absolute_form_target_is_decided_on_the_host_nginx_serves_it_for(
    front, make_key, upstream
):
    """``GET http://beta.api.test/…`` with ``Host: acme.api.test``: nginx serves it as
    beta's (its server block, ``$host``), so keygate must decide it as beta's, and the
    upstream hears of beta; deciding on the Host header would let acme's key through
    to whatever nginx serves for beta. (The proxy port refuses absolute-form.)"""
    key = await make_key("acme", ["catalog-reader"])
    lines = [("Host", "acme.api.test"), *key.headers.items(), ("Connection", "close")]
    head = "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\n"
    beta = await exchange(front.nginx, f"GET http://beta.api.test/catalog/1 HTTP/1.1\r\n{head}"
                          .encode())
    assert_error(beta, 403, "no_grant")
    acme = await exchange(front.nginx, f"GET http://acme.api.test/catalog/1 HTTP/1.1\r\n"
                          f"{head}".encode())
    assert acme.status == 200, acme.body
    assert upstream.last["headers"]["X-Forwarded-Host"] == "acme.api.test"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_credentials"),
        ({"X-API-AppKey": "kgk-acme-AAAAAAAAAA"}, 401, "incomplete_credentials"),
    ],
)
async def test_401_carries_keygates_body(front, upstream, headers, status, code):
    assert_error(await call(front.session, front.nginx, "GET", "/orders/1", headers=headers),
                 status, code)
    assert upstream.requests == []


async def test_wrong_token_is_401_and_then_429_with_retry_after(front, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    wrong = {**key.headers, "X-API-AppToken": key.token[:-1] + ("y" if key.token[-1] == "x"
                                                                 else "x")}
    replies = [await call(front.session, front.nginx, "GET", "/orders/1", headers=wrong)
               for _ in range(4)]
    assert_error(replies[0], 401, "invalid_credentials")
    assert_error(replies[-1], 429, "too_many_failures")
    assert int(replies[-1].headers["Retry-After"]) >= 1
    assert upstream.requests == []


async def test_403_and_404_carry_keygates_body(front, make_key, upstream):
    reader = await make_key("acme", ["orders-reader"])
    assert_error(await call(front.session, front.nginx, "POST", "/orders/1",
                            headers=reader.headers), 403, "not_permitted")
    assert_error(await call(front.session, front.nginx, "GET", "/beta/orders/1",
                            headers=reader.headers), 403, "no_grant")
    assert_error(await call(front.session, front.nginx, "GET", "/nowhere",
                            headers=reader.headers), 404, "no_route")
    assert upstream.requests == []


async def test_a_method_keygate_does_not_serve_never_reaches_the_upstream(
    front, make_key, upstream
):
    """nginx passes on any upper-case method; keygate's proxy port serves only those it
    knows, and the decision is the same: 501 in the one shape, nothing upstream."""
    writer = await make_key("acme", ["orders-writer"])
    for method in ("FOO", "PRI"):
        direct = await call(front.session, front.proxy, method, "/orders/1",
                            headers=writer.headers)
        assert_error(direct, 501, "not_implemented")
        assert_error(await call(front.session, front.nginx, method, "/orders/1",
                                headers=writer.headers), 501, "not_implemented")
    assert upstream.requests == []


async def exchange(base: str, request: bytes) -> Reply:
    """``request``'s bytes as written, on a connection of their own, and the answer
    (the request must close the connection)."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = CIMultiDict(line.split(": ", 1) for line in lines)
    return Reply(int(status_line.split(" ", 2)[1]), CIMultiDictProxy(headers), body)


async def test_an_http_10_request_without_host_is_decided_as_the_proxy_port_does(
    front, make_key, upstream
):
    """HTTP/1.0 needs no Host; nginx's ``$host`` is then empty, and a subrequest
    without Host is one keygate refuses: the client got a 503 for a request the proxy
    port serves. Both decide on the address the request arrived on."""
    key = await make_key("acme", ["orders-reader"])
    request = ("GET /orders/1 HTTP/1.0\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in key.headers.items()) + "\r\n").encode()
    for base in (front.proxy, front.nginx):
        reply = await exchange(base, request)
        assert reply.status == 200, (base, reply.body)
        assert orjson.loads(reply.body)["path"] == "/orders/1"
        assert upstream.last["headers"]["X-Forwarded-Host"] == "127.0.0.1"
    assert len(upstream.requests) == 2
    # a host route is not reached without a host
    catalog = await make_key("acme", ["catalog-reader"])
    request = ("GET /catalog/1 HTTP/1.0\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in catalog.headers.items()) + "\r\n").encode()
    for base in (front.proxy, front.nginx):
        assert_error(await exchange(base, request), 404, "no_route")
    assert len(upstream.requests) == 2


async def test_the_longest_head_nginx_takes_is_decided_and_forwarded_whole(
    front, make_key, upstream
):
    """keygate's answer to nginx holds the path it authorized and the Authorization
    and Cookie to forward: with nginx's default buffer for it, a path or cookies past
    about 4 KiB (a browser's, often) made every request a 503."""
    key = await make_key("acme", ["orders-reader"])
    path = "/orders/" + "a" * 8100  # the longest request line nginx and keygate take
    headers = {**key.headers, "Authorization": "Bearer upstream-" + "b" * 7000,
               "Cookie": "c=" + "d" * 7000}
    for base in (front.proxy, front.nginx):
        reply = await call(front.session, base, "GET", path, headers=headers)
        assert reply.status == 200, (base, reply.body)
        got = upstream.last
        assert got["raw_path"] == path
        assert got["headers"]["Authorization"] == headers["Authorization"]
        assert got["headers"]["Cookie"] == headers["Cookie"]


@pytest.mark.parametrize(("name", "fields", "status", "code"), [
    ("too many header fields", [(f"X-N-{i}", "1") for i in range(100)], 431,
     "request_header_fields_too_large"),
    ("a DEL in a value", [("X-Note", "a\x7fb")], 400, "malformed_request"),
    ("User-Agent twice", [("User-Agent", "a"), ("User-Agent", "b")], 400,
     "malformed_request"),
])
async def test_a_head_keygate_refuses_reaches_the_client_as_the_proxy_port_answers_it(
    front, make_key, upstream, name, fields, status, code
):
    """nginx passes the client's headers on to the decision API, which reads them as
    strictly as the proxy port; its refusal used to be an answer ``auth_request``
    cannot pass on, so the client's fault reached it as a 503 "retry later"."""
    key = await make_key("acme", ["owner"])
    lines = [("Host", "api.test"), *key.headers.items(), *fields, ("Connection", "close")]
    request = ("GET /orders/1 HTTP/1.1\r\n"
               + "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\n").encode()
    for base in (front.proxy, front.nginx):
        reply = await exchange(base, request)
        # (the request id is keygate's own: a refused head's X-Request-Id is not read)
        assert reply.status == status, (base, reply.body)
        assert reply.headers["Content-Type"].startswith("application/json")
        error = reply.error
        assert (error["status"], error["code"]) == (status, code), (base, error)
        assert key.token not in reply.body.decode()
    assert upstream.requests == []


@pytest.mark.parametrize(("name", "request_line", "fields", "status", "code"), [
    ("a method in lower case", "get /orders/1", [], 400, "malformed_request"),
    ("a climb above the root", "GET /../orders/1", [], 400, "malformed_request"),
    ("a URI past nginx's buffer", "GET /orders/" + "a" * 9000, [], 414, "uri_too_long"),
    ("a header past nginx's buffer", "GET /orders/1", [("X-Pad", "p" * 9000)], 431,
     "request_header_fields_too_large"),
    ("TRACE", "TRACE /orders/1", [], 405, "method_not_allowed"),
    ("a transfer coding nginx does not take", "POST /orders/1",
     [("Transfer-Encoding", "gzip, chunked")], 501, "not_implemented"),
    ("the decision location", "GET /_keygate", [], 404, "no_route"),
    ("an error location", "GET /_keygate_refused/502", [], 404, "no_route"),
])
async def test_what_nginx_refuses_itself_is_in_the_one_error_shape(
    front, make_key, upstream, name, request_line, fields, status, code
):
    """Refused before keygate is asked, and still no HTML page: the one JSON shape,
    with the request id nginx gives the request, nothing quoted."""
    key = await make_key("acme", ["owner"])
    lines = [("Host", "api.test"), *key.headers.items(), *fields, ("Connection", "close")]
    request = (f"{request_line} HTTP/1.1\r\n"
               + "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\n").encode()
    reply = await exchange(front.nginx, request)
    assert_error(reply, status, code)
    assert key.token not in reply.body.decode()
    assert upstream.requests == []


async def test_a_malformed_body_nginx_refuses_is_in_the_one_error_shape(
    front, make_key, upstream
):
    """A chunked body nginx cannot read, sent after keygate allowed the request: nginx
    refuses it inside the API's location, whose own error pages once left this one
    nginx's HTML page."""
    key = await make_key("acme", ["owner"])
    lines = [("Host", "api.test"), *key.headers.items(), ("Transfer-Encoding", "chunked"),
             ("Connection", "close")]
    request = ("POST /orders/1 HTTP/1.1\r\n"
               + "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\nzz\r\nxx\r\n0\r\n\r\n")
    reply = await exchange(front.nginx, request.encode())
    assert_error(reply, 400, "malformed_request")
    assert key.token not in reply.body.decode()


async def test_an_unreachable_upstream_is_a_502_in_the_one_error_shape(
    gateway, make_key, closed_port, tmp_path
):
    key = await make_key("acme", ["owner"])
    settings = gateway.settings.with_values(
        decision_listen="127.0.0.1:0", proxy_listen="127.0.0.1:0", management_listen="127.0.0.1:0",
        metrics_listen="")
    async with running(build_gateway(settings)) as listening, aiohttp.ClientSession() as session:
        site = shipped_site(URL(listening.decision).port, closed_port, free_port())
        with nginx_serving(site, tmp_path) as nginx:
            reply = await call(session, nginx, "GET", "/orders/1", headers=key.headers)
    assert_error(reply, 502, BadGateway.code)


async def test_revocation_holds_from_the_very_next_request(front, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    assert (await call(front.session, front.nginx, "GET", "/orders/1",
                       headers=key.headers)).status == 200
    await front.gateway.store.update_key("acme", key.app_key, status="inactive")
    assert_error(await call(front.session, front.nginx, "GET", "/orders/1",
                            headers=key.headers), 401, "key_inactive")
    assert len(upstream.requests) == 1


async def test_an_unreachable_decision_api_is_a_503_never_a_pass(
    gateway, upstream, make_key, closed_port, tmp_path
):
    key = await make_key("acme", ["owner"])
    site = shipped_site(closed_port, URL(upstream.url).port, free_port())
    with nginx_serving(site, tmp_path) as nginx:
        async with aiohttp.ClientSession() as session:
            reply = await call(session, nginx, "GET", "/orders/1", headers=key.headers)
    assert_error(reply, 503, "decision_unavailable")
    assert upstream.requests == []


# -- what the client cannot make the upstream believe -------------------------------------

async def test_client_sent_identity_and_credentials_never_reach_the_upstream(
    front, make_key, upstream
):
    key = await make_key("acme", ["orders-reader"])
    spoofed = {
        "x-api-appkey": key.app_key, "X-API-APPTOKEN": key.token,  # other spellings
        "X-Keygate-Key": "kgk-acme-EVIL000000", "x-keygate-roles": "owner",
        "X-Keygate-Account": "beta", "X-Keygate-Owner-Account": "beta",
        "X-Keygate-Path": "/admin", "X-Keygate-Upstream-Path": "/admin",
        "X-Keygate-Status": "200",
        "X-Keygate_Roles": "owner", "X-API_AppToken": key.token,  # underscore spellings
        "X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9",
        "Forwarded": "for=203.0.113.9",
        # another method or path than the one authorized, another client address
        "X-HTTP-Method-Override": "DELETE", "X-Original-URL": "/admin",
        "X-Rewrite-URL": "/admin", "True-Client-IP": "203.0.113.9",
        "X-Forwarded-Prefix": "/evil", "X-Forwarded-Port": "1",
    }
    async with front.session.get(URL(front.nginx + "/orders/1", encoded=True),
                                 headers=[*spoofed.items(), *key.headers.items()]) as r:
        assert r.status == 200, await r.text()
    got = upstream.last["headers"]
    assert got.getall("X-Keygate-Key") == [key.app_key]
    assert got.getall("X-Keygate-Roles") == ["orders-reader"]
    assert got.getall("X-Keygate-Account") == ["acme"]
    assert got.getall("X-Keygate-Owner-Account") == ["acme"]
    assert got.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert upstream.last["raw_path"] == "/orders/1"
    for name in got:
        assert name.lower().replace("_", "-") not in (
            "x-api-appkey", "x-api-apptoken", "x-keygate-path", "x-keygate-upstream-path",
            "x-keygate-status",
            "x-real-ip", "forwarded", "x-http-method-override", "x-original-url",
            "x-rewrite-url", "true-client-ip", "x-forwarded-prefix",
            "x-forwarded-port"), name
    assert not any(key.token in value for value in got.values())


# -- the path forwarded is the path authorized ---------------------------------------------

PATHS = [
    "/orders/42", "//orders//42", "/orders/./42", "/orders/x/../42", "/orders/../admin",
    "/orders/%2e%2e/admin", "/orders/%2E%2E/beta/orders/1", "/orders/../beta/orders/1",
    "/%6Frders/42", "/orders/42/", "/orders/%e2%82%ac", "/orders/42?next=/../admin",
    "/orders/%2f", "/orders%2f42", "/orders/a%5cb", "/orders/1;x", "/orders/..;/x",
    "/orders/%2e%2e;/x", "/orders/42.", "/..", "/orders/../../x", "/%2e%2e/orders/1",
    "/orders/%00", "/orders/%zz",
    # double encoding, IIS's %u, escaped parameters and dots, case, a path in the query
    "/orders/%252e%252e/admin", "/orders/%u002e%u002e/x", "/orders/1/.%2e/.%2E/beta/orders/1",
    "/orders/;/../../beta/orders/1", "/orders/%3B/../../beta/orders/1", "/ORDERS/1",
    "/orders/1%23/../../beta/orders/1", "/orders/1?/../../beta/orders/1", "/orders/.%2e",
    "/orders/%5c..%5cbeta", "/orders/%E2%80%AE", "/orders/1/%20",
]


@pytest.mark.parametrize("raw", PATHS)
async def test_every_path_is_decided_and_forwarded_as_the_proxy_port_does(
    front, make_key, upstream, raw
):
    """The same raw path through keygate's proxy port and through nginx: the same
    status and error code, and when allowed, byte for byte the same path upstream."""
    key = await make_key("acme", ["owner"])
    direct = await call(front.session, front.proxy, "GET", raw, headers=key.headers)
    by_proxy = [r["raw_path"] for r in upstream.requests]
    upstream.requests.clear()
    through = await call(front.session, front.nginx, "GET", raw, headers=key.headers)
    by_nginx = [r["raw_path"] for r in upstream.requests]
    assert through.status == direct.status, (raw, through.body, direct.body)
    assert by_nginx == by_proxy
    if direct.status != 200:
        assert by_nginx == []
        assert through.headers["Content-Type"].startswith("application/json")
        if through.error["message"].endswith("nginx refused it"):
            # before asking anyone (a climb above the root): the config's own 400
            assert through.error["code"] == "malformed_request"
        else:
            assert through.error["code"] == direct.error["code"]


async def test_a_route_that_strips_its_prefix_is_forwarded_as_the_proxy_port_does(
    gateway, make_settings, upstream, make_key, tmp_path
):
    """A route with strip_prefix and an upstream URL with a path of its own: the proxy
    port sends /v1/42 for /shop/42. nginx forwarded /shop/42 (the path authorized), so
    the upstream served another path behind nginx than behind keygate."""
    routes = [{"name": "shop", "path_prefix": "/shop", "upstream": upstream.url + "/v1/",
               "account": "acme", "resource": "orders", "strip_prefix": True}]
    settings = make_settings(
        store_prefix=gateway.settings.store_prefix, decision_listen="127.0.0.1:0",
        proxy_listen="127.0.0.1:0", management_listen="127.0.0.1:0", metrics_listen="",
        routes=routes)
    key = await make_key("acme", ["orders-reader"])
    keygate = build_gateway(settings)
    async with running(keygate) as listening, aiohttp.ClientSession() as session:
        assert listening.decision is not None
        site = shipped_site(URL(listening.decision).port, URL(upstream.url).port, free_port())
        seen = {}
        with nginx_serving(site, tmp_path) as nginx:
            for raw in ("/shop/42?x=1", "/shop", "/shop/a/../b%2F"):
                upstream.requests.clear()
                direct = await call(session, listening.proxy, "GET", raw, headers=key.headers)
                by_proxy = [r["raw_path"] for r in upstream.requests]
                upstream.requests.clear()
                through = await call(session, nginx, "GET", raw, headers=key.headers)
                by_nginx = [r["raw_path"] for r in upstream.requests]
                assert through.status == direct.status, (raw, through.body, direct.body)
                assert by_nginx == by_proxy, raw
                seen[raw] = by_nginx
    assert seen["/shop/42?x=1"] == ["/v1/42?x=1"]


async def test_the_forwarding_traps_the_shipped_config_avoids(
    gateway, upstream, make_key, tmp_path
):
    """Why ``proxy_pass`` names ``$keygate_upstream_path``: forwarding the raw ``$request_uri``
    (no URI part) hands the upstream ``/beta/orders/%2e%2e/%2e%2e/orders/1``, which
    keygate authorized as acme's ``/orders/1`` and which an upstream that does not
    decode ``%2e`` serves under beta's ``/beta/orders``."""
    key = await make_key("acme", ["orders-reader"])
    raw = "/beta/orders/%2e%2e/%2e%2e/orders/1"
    settings = gateway.settings.with_values(
        decision_listen="127.0.0.1:0", proxy_listen="127.0.0.1:0",
        management_listen="127.0.0.1:0", metrics_listen="")
    keygate = build_gateway(settings)
    forwarded = {}
    async with running(keygate) as listening, aiohttp.ClientSession() as session:
        shipped = shipped_site(URL(listening.decision).port, URL(upstream.url).port, free_port())
        naive = shipped.replace("proxy_pass http://keygate_backend$keygate_upstream_path$is_args$args;",
                                "proxy_pass http://keygate_backend;")
        assert naive != shipped
        for name, site in (("shipped", shipped), ("naive", naive)):
            workdir = tmp_path / name
            workdir.mkdir()
            with nginx_serving(site, workdir) as nginx:
                reply = await call(session, nginx, "GET", raw, headers=key.headers)
                assert reply.status == 200, reply.body
                forwarded[name] = upstream.last["raw_path"]
    assert forwarded == {"shipped": "/orders/1", "naive": raw}


# -- bodies --------------------------------------------------------------------------------

async def test_20_mib_streams_both_ways(front, make_key, upstream):
    key = await make_key("acme", ["orders-writer"])
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(20):  # blocks that differ, so reordering or loss would show
            block = i.to_bytes(4, "big") * (MiB // 4)
            digest.update(block)
            yield block

    reply = await call(front.session, front.nginx, "POST", "/orders/upload",
                       headers=key.headers, data=body())
    assert reply.status == 200, reply.body
    assert upstream.last["body_size"] == 20 * MiB
    assert upstream.last["body_sha256"] == digest.hexdigest()

    expected = hashlib.sha256(STREAM_BLOCK * 20).hexdigest()
    got, size = hashlib.sha256(), 0
    async with front.session.get(front.nginx + "/stream/20", headers=key.headers) as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(256 * 1024):
            got.update(chunk)
            size += len(chunk)
    assert (size, got.hexdigest()) == (20 * MiB, expected)


async def test_a_refused_upload_never_reaches_the_upstream(front, upstream):
    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * MiB
            await asyncio.sleep(0)

    reply = await call(front.session, front.nginx, "POST", "/orders/upload", data=body())
    assert_error(reply, 401, "missing_credentials")
    assert upstream.requests == []


# -- the shipped file against the settings ---------------------------------------------------

def test_the_shipped_config_names_keygates_settings_and_headers(make_settings: Callable):
    settings = make_settings()
    text = SHIPPED.read_text()
    prefix = settings.identity_header_prefix
    for credential in (settings.key_header, settings.token_header):
        assert f'proxy_set_header {credential} "";' in text
    assert f"proxy_set_header {settings.decision_original_uri_header} $request_uri;" in text
    assert (f"proxy_set_header {settings.decision_original_method_header} $request_method;"
            in text)
    assert "proxy_pass http://keygate_decision/nginx;" in text
    # the client's scheme, replacing any it sent: over https keygate reads the session
    # cookie by its __Host- name alone
    decision = text.split("location = /_keygate {", 1)[1].split("}", 1)[0]
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in decision
    for name in ("Key", "Owner-Account", "Account", "Roles"):
        variable = "$keygate_" + name.lower().replace("-", "_")
        header = (prefix + name).lower().replace("-", "_")
        assert f"auth_request_set {variable} $upstream_http_{header};" in text
        assert f"proxy_set_header {prefix}{name} {variable};" in text
    assert "proxy_pass http://keygate_backend$keygate_upstream_path$is_args$args;" in text
    directives = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "$uri" not in directives.replace("$request_uri", "")  # nginx's decoded form
