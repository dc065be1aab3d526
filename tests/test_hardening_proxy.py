"""The proxy port against an attacker, end to end (real Redis, Casbin, aiohttp upstreams):
paths that upstreams read as another route's, client addresses behind load balancers,
client-address and underscore headers, ``Expect: 100-continue`` and ``Server``.

The route boundary under attack: ``/acme`` (resource ``catalog``) and ``/acme/admin``
(resource ``orders``) on one upstream. A key holding ``catalog-reader`` may read
``/acme/…`` and not ``/acme/admin``; nothing it sends may reach ``/acme/admin`` as the
upstream reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from gateway.context import Gateway

# -- helpers ----------------------------------------------------------------------------


async def call(client: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    """Request with the path sent byte for byte (no dot resolution, no re-quoting)."""
    url = URL(f"http://{client.host}:{client.port}{path}", encoded=True)
    async with client.session.request(method, url, **kwargs) as response:
        return response.status, response.headers, await response.read()


def error_of(status_headers_body: tuple[int, Any, bytes], status: int, code: str) -> str:
    """Assert the one JSON error shape with this status and code; its message."""
    got, headers, body = status_headers_body
    assert got == status, body
    error = orjson.loads(body)["error"]
    assert (error["status"], error["code"]) == (status, code), error
    assert error["requestId"] == headers["X-Request-Id"]
    return error["message"]


def boundary(upstream_url: str, acme: dict | None = None, admin: dict | None = None) -> list:
    return [
        {"name": "acme", "path_prefix": "/acme", "upstream": upstream_url, "account": "acme",
         "resource": "catalog", **(acme or {})},
        {"name": "admin", "path_prefix": "/acme/admin", "upstream": upstream_url,
         "account": "acme", "resource": "orders", **(admin or {})},
    ]


# -- 1. paths an upstream may read as another route's -----------------------------------

CROSSINGS = [
    "/acme/admin;x", "/acme/admin;jsessionid=0F1E2D", "/acme/admin;/users", "/acme/admin;x/users",
    "/acme/admin%3Bx", "/acme/admin%3bx/users",
    "/acme/admin.", "/acme/admin..", "/acme/admin./users", "/acme/admin%2E", "/acme/admin%2e/users",
    "/acme/admin.;x", "/acme/admin%2E%3Bx",
]


async def test_a_route_boundary_cannot_be_crossed_by_parameters_or_trailing_dots(
    proxy_with, make_key, upstream
):
    proxy = await proxy_with(routes=boundary(upstream.url))
    key = await make_key("acme", ["catalog-reader"])
    # control: the key reads /acme and is refused /acme/admin
    assert (await call(proxy, "GET", "/acme/items", headers=key.headers))[0] == 200
    error_of(await call(proxy, "GET", "/acme/admin/users", headers=key.headers), 403,
             "not_permitted")
    upstream.requests.clear()
    for path in CROSSINGS:
        message = error_of(await call(proxy, "GET", path, headers=key.headers), 400, "bad_path")
        assert "allow_matrix_params" in message or "allow_trailing_dots" in message, path
    assert upstream.requests == []


async def test_a_case_insensitive_route_cannot_reach_what_a_case_sensitive_one_guards(
    proxy_with, make_key, upstream
):
    proxy = await proxy_with(routes=boundary(upstream.url, {"case_insensitive": True}))
    key = await make_key("acme", ["catalog-reader"])
    for path in ("/acme/Admin", "/acme/ADMIN/users", "/acme/%41dmin", "/acme/%41DMIN/users"):
        message = error_of(await call(proxy, "GET", path, headers=key.headers), 400, "bad_path")
        assert "lower-cased" in message, path
    for path in ("/ACME/admin", "/Acme/aDmin"):  # only admin's, once lower-cased: no route
        error_of(await call(proxy, "GET", path, headers=key.headers), 404, "no_route")
    assert upstream.requests == []
    # the case-insensitive route itself: authorized and forwarded lower-cased, as one
    status, _, _ = await call(proxy, "GET", "/ACME/Items/%c3%a9X", headers=key.headers)
    assert status == 200
    assert upstream.last["raw_path"] == "/acme/items/%C3%A9x"


async def test_allowed_parameters_and_dots_are_authorized_as_the_upstream_reads_them(
    proxy_with, make_key, upstream
):
    allow = {"allow_matrix_params": True, "allow_trailing_dots": True}
    proxy = await proxy_with(routes=boundary(upstream.url, allow, allow))
    catalog = await make_key("acme", ["catalog-reader"])
    orders = await make_key("acme", ["orders-reader"])
    for path in ("/acme/admin;x", "/acme/admin.", "/acme/admin;jsessionid=1/users"):
        # authorized as /acme/admin, which the catalog key may not read ...
        error_of(await call(proxy, "GET", path, headers=catalog.headers), 403, "not_permitted")
        # ... and the orders key may: forwarded as sent, since its upstream needs them
        status, _, _ = await call(proxy, "GET", path, headers=orders.headers)
        assert status == 200
        assert upstream.last["raw_path"] == path
    status, _, _ = await call(proxy, "GET", "/acme/items;jsessionid=1", headers=catalog.headers)
    assert status == 200 and upstream.last["raw_path"] == "/acme/items;jsessionid=1"
    # '%3B' read as data is /acme's, read as ';' admin's: refused, not guessed
    error_of(await call(proxy, "GET", "/acme/admin%3Bx", headers=orders.headers), 400, "bad_path")


async def test_parameters_are_refused_unless_the_route_reached_without_them_allows_them(
    proxy_with, make_key, upstream
):
    proxy = await proxy_with(routes=boundary(upstream.url, {"allow_matrix_params": True}))
    key = await make_key("acme", ["owner"])
    error_of(await call(proxy, "GET", "/acme/admin;x", headers=key.headers), 400, "bad_path")
    assert (await call(proxy, "GET", "/acme/x;v=1", headers=key.headers))[0] == 200
    assert upstream.last["raw_path"] == "/acme/x;v=1"


# -- 2. client addresses behind load balancers ------------------------------------------


@pytest.fixture
def seen_clients(monkeypatch: pytest.MonkeyPatch) -> Callable[[Gateway], list[str]]:
    """Record the ``client`` each request's check was given, around the real check."""

    def record(gw: Gateway) -> list[str]:
        seen: list[str] = []
        decide = gw.pipeline.decide

        async def recording(facts: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(facts.client)
            return await decide(facts, *args, **kwargs)

        monkeypatch.setattr(gw.pipeline, "decide", recording)
        return seen

    return record


async def test_behind_a_trusted_proxy_the_client_is_the_first_untrusted_address(
    proxy_with, make_key, upstream, seen_clients
):
    # the test client connects from 127.0.0.1: here, that is the load balancer
    proxy = await proxy_with(trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"])
    gw = proxy.server.gateway
    seen = seen_clients(gw)
    key = await make_key("acme", ["orders-reader"])
    headers = {**key.headers, "X-Forwarded-For": "6.6.6.6, 198.51.100.9, 10.1.2.3",
               "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    assert (await call(proxy, "GET", "/orders/1", headers=headers))[0] == 200
    forwarded = upstream.last["headers"]
    # extended by the peer; the client's own claim (6.6.6.6), left of it, is dropped
    assert forwarded.getall("X-Forwarded-For") == ["198.51.100.9, 10.1.2.3, 127.0.0.1"]
    assert forwarded.getall("X-Forwarded-Proto") == ["https"]
    assert forwarded.getall("X-Forwarded-Host") == ["api.example.com"]
    assert seen == ["198.51.100.9"]
    # refused requests are checked with the same client (the rate limiter counts them)
    bad = {**headers, "X-API-AppToken": key.token[:-1] + ("A" if key.token[-1] != "A" else "B")}
    assert (await call(proxy, "GET", "/orders/1", headers=bad))[0] == 401
    assert seen[-1] == "198.51.100.9"


async def test_from_an_untrusted_peer_forwarding_headers_are_replaced(
    proxy_with, make_key, upstream, seen_clients
):
    proxy = await proxy_with(trusted_proxies=["10.0.0.0/8"])  # 127.0.0.1 is not trusted
    seen = seen_clients(proxy.server.gateway)
    key = await make_key("acme", ["orders-reader"])
    headers = {**key.headers, "X-Forwarded-For": "10.0.0.7, 10.0.0.8",
               "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    assert (await call(proxy, "GET", "/orders/1", headers=headers))[0] == 200
    forwarded = upstream.last["headers"]
    assert forwarded.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert forwarded.getall("X-Forwarded-Proto") == ["http"]
    assert forwarded.getall("X-Forwarded-Host") == [f"{proxy.host}:{proxy.port}"]
    assert seen == ["127.0.0.1"]


async def test_without_trusted_proxies_the_client_is_the_peer(proxy, make_key, gateway,
                                                              seen_clients):
    seen = seen_clients(gateway)
    key = await make_key("acme", ["orders-reader"])
    headers = {**key.headers, "X-Forwarded-For": "6.6.6.6"}
    assert (await call(proxy, "GET", "/orders/1", headers=headers))[0] == 200
    assert seen == ["127.0.0.1"]


async def test_a_huge_forwarded_for_from_a_trusted_peer_sends_little_upstream(
    proxy_with, make_key, upstream
):
    proxy = await proxy_with(trusted_proxies=["127.0.0.1"])
    key = await make_key("acme", ["orders-reader"])
    spoof = ", ".join(["6.6.6.6"] * 800) + ", 198.51.100.9"  # ~7 kB, under aiohttp's limit
    headers = [*key.headers.items(), *[("X-Forwarded-For", spoof)] * 4]
    assert (await call(proxy, "GET", "/orders/1", headers=headers))[0] == 200
    assert upstream.last["headers"].getall("X-Forwarded-For") == ["198.51.100.9, 127.0.0.1"]


# -- 3. header hygiene --------------------------------------------------------------------

CLIENT_ADDRESS_HEADERS = [
    "True-Client-IP", "X-Client-IP", "CF-Connecting-IP", "CF-Connecting-IPv6",
    "X-Cluster-Client-IP", "Fastly-Client-IP", "X-Originating-IP", "Client-IP", "X-Real-IP",
    "X-Remote-IP", "X-Remote-Addr", "X-Forwarded", "Forwarded-For",
    "X-Original-Forwarded-For", "X-Envoy-External-Address", "X-Azure-ClientIP",
    "X-Azure-SocketIP", "X-ProxyUser-Ip", "Akamai-Client-IP",
    # and their underscore spellings, as CGI/WSGI servers read them
    "True_Client_IP", "X_Client_IP", "CF_Connecting_IP", "X_Real_IP",
]


async def test_client_address_headers_never_reach_the_upstream(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    spoofed = {name: "6.6.6.6" for name in CLIENT_ADDRESS_HEADERS}
    assert (await call(proxy, "GET", "/orders/1", headers={**key.headers, **spoofed}))[0] == 200
    seen = upstream.last["headers"]
    assert not set(spoofed) & set(seen), sorted(set(spoofed) & set(seen))
    assert all("6.6.6.6" not in value for value in seen.values())


async def test_underscore_spellings_of_framing_headers_never_reach_the_upstream(
    proxy, make_key, upstream
):
    """A server reading Content_Length as Content-Length would take another body length
    than the one keygate framed: the next request on the connection could be smuggled."""
    key = await make_key("acme", ["orders-writer"])
    sneaky = {"Content_Length": "0", "Transfer_Encoding": "chunked",
              "Content_Encoding": "gzip", "Host_": "x", "content_length": "7"}
    status, _, _ = await call(proxy, "POST", "/orders/1", data=b"12345",
                              headers={**key.headers, **sneaky})
    assert status == 200
    seen = upstream.last["headers"]
    assert upstream.last["body_size"] == 5
    for name in ("Content_Length", "Transfer_Encoding", "Content_Encoding"):
        assert name not in seen, name
    assert seen["Content-Length"] == "5"
    assert "Host_" in seen  # not a framing header's spelling: passes like any other


@pytest.fixture
async def odd_upstream(aiohttp_server: Any) -> str:
    """Answers with a Server header, an underscore framing header, small or streamed."""

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="small", headers={"Server": "Upstream/1.2.3 (Debian)",
                                                   "Content_Length": "999"})

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Server": "Upstream/1.2.3 (Debian)",
                                               "Content_Length": "999"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(4):
            await response.write(b"x" * 65536)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/odd/small", small)
    app.router.add_get("/odd/streamed", streamed)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize(("path", "size"), [("/odd/small", 5), ("/odd/streamed", 4 * 65536)])
async def test_answers_say_server_keygate_and_drop_the_upstreams_own(
    proxy_with, make_key, odd_upstream, path, size
):
    proxy = await proxy_with(routes=[{"name": "odd", "path_prefix": "/odd",
                                      "upstream": odd_upstream, "account": "acme",
                                      "resource": "orders"}])
    key = await make_key("acme", ["orders-reader"])
    # control: the upstream really sends its own Server and an underscore framing header
    async with proxy.session.get(odd_upstream + path) as direct:
        assert direct.headers["Server"] == "Upstream/1.2.3 (Debian)"
        assert "Content_Length" in direct.headers
    status, headers, body = await call(proxy, "GET", path, headers=key.headers)
    assert status == 200 and len(body) == size
    assert headers.getall("Server") == ["keygate"]
    assert "Content_Length" not in headers


# -- 4. Expect: 100-continue --------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
WAIT = 10  # seconds; reached only if keygate never answers (the test then fails)


async def open_raw(proxy: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port)


def head(key: Any, body_size: int, *, expect: str = "100-continue", version: str = "1.1",
         path: str = "/orders/1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: keygate.test",
             f"Content-Length: {body_size}", f"X-API-AppKey: {key.app_key}",
             f"X-API-AppToken: {key.token}"]
    if expect:
        lines.append(f"Expect: {expect}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One final answer: its head and (Content-Length) body."""
    head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = next(int(line.split(b":", 1)[1]) for line in head_bytes.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head_bytes, await asyncio.wait_for(reader.readexactly(length), WAIT)


async def test_expect_100_continue_is_answered_once_authorized(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-writer"])
    body = b"b" * 100_000
    reader, writer = await open_raw(proxy)
    try:
        writer.write(head(key, len(body)))
        await writer.drain()
        # the client holds its body back until keygate says 100 Continue
        assert await asyncio.wait_for(reader.readexactly(len(CONTINUE)), WAIT) == CONTINUE
        writer.write(body)
        await writer.drain()
        answer, payload = await read_answer(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert orjson.loads(payload)["size"] == len(body)
    assert upstream.last["body_size"] == len(body)
    assert "Expect" not in upstream.last["headers"]  # keygate met it; the upstream need not


@pytest.mark.parametrize(
    ("spoil", "status"),
    [("token", b"401"), ("path", b"404"), ("permission", b"403"), ("bad_path", b"400")],
)
async def test_a_refused_expect_request_gets_its_error_and_no_100(
    proxy, make_key, upstream, spoil, status
):
    key = await make_key("acme", ["orders-reader" if spoil == "permission" else "orders-writer"])
    if spoil == "token":
        key = type(key)(key.app_key, key.token[:-1] + ("A" if key.token[-1] != "A" else "B"))
    path = {"path": "/nowhere", "bad_path": "/orders/..;/x"}.get(spoil, "/orders/1")
    reader, writer = await open_raw(proxy)
    try:
        writer.write(head(key, 1000, path=path))
        await writer.drain()
        answer, payload = await read_answer(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 " + status)  # the first bytes: no 100 before it
    # the body was never sent, so the connection cannot carry another request: the
    # client is told to close it (else its next request would be read as that body)
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert set(orjson.loads(payload)["error"]) == {"code", "message", "status", "requestId"}
    assert upstream.requests == []


async def test_an_unknown_expectation_is_417_in_the_one_shape(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-writer"])
    for expect in ("200-ok", "100-continue, foo", "x" * 500):
        status, headers, body = await call(
            proxy, "POST", "/orders/1", data=b"abc", headers={**key.headers, "Expect": expect}
        )
        message = error_of((status, headers, body), 417, "expectation_failed")
        assert len(message) < 200
        assert headers["Connection"].lower() == "close"  # the body was never sent
    assert upstream.requests == []


async def test_http_1_0_never_gets_a_100(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-writer"])
    reader, writer = await open_raw(proxy)
    try:
        # an HTTP/1.0 client does not wait: head and body in one go
        writer.write(head(key, 5, version="1.0") + b"12345")
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), WAIT)  # 1.0: closed after it
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 ") or received.startswith(b"HTTP/1.0 200 ")
    assert b"100 Continue" not in received
    assert upstream.last["body_size"] == 5


async def test_a_client_that_stops_waiting_and_sends_its_body_is_served(
    proxy, make_key, upstream
):
    """curl waits a moment for the 100, then sends the body anyway: the request must
    still be served once, whole, and the connection stay usable."""
    key = await make_key("acme", ["orders-writer"])
    reader, writer = await open_raw(proxy)
    try:
        writer.write(head(key, 5) + b"12345")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        if first == CONTINUE:  # a 100 may come first; the answer follows
            answer, payload = await read_answer(reader)
        else:
            answer = first
            length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            payload = await asyncio.wait_for(reader.readexactly(length), WAIT)
        assert answer.startswith(b"HTTP/1.1 200 ") and orjson.loads(payload)["size"] == 5
        # the same connection serves the next request
        writer.write(head(key, 3, expect="") + b"abc")
        answer, payload = await read_answer(reader)
        assert answer.startswith(b"HTTP/1.1 200 ") and orjson.loads(payload)["size"] == 3
    finally:
        writer.close()
    assert [r["body_size"] for r in upstream.requests] == [5, 3]


async def test_an_http_client_waiting_for_100_continue_is_served(proxy, make_key, upstream):
    """aiohttp's own client with ``expect100=True`` sends the body only after the 100."""
    key = await make_key("acme", ["orders-writer"])
    status, _, payload = await asyncio.wait_for(
        call(proxy, "PUT", "/orders/1", data=b"z" * 70_000, headers=key.headers,
             expect100=True),
        WAIT,
    )
    assert status == 200 and orjson.loads(payload)["size"] == 70_000
    assert upstream.last["body_size"] == 70_000
