"""The proxy port end to end, against real components: a private redis-server, real
Casbin with the shipped model and policies, real aiohttp upstreams (conftest).

Covers every status code of DESIGN.md §2, the one error shape, header hygiene in both
directions, path normalisation as seen by the upstream, streaming of large bodies both
ways (and that they are not buffered whole), gzip pass-through, deny-beats-allow, and
where the target account and the action come from.

Raw request targets: aiohttp's test client joins relative URLs (which resolves ``..``),
so paths that must reach keygate verbatim go through :func:`call`, which builds an
``encoded=True`` URL; :func:`test_harness_sends_raw_paths_verbatim` proves that it does.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.proxy import WHOLE_BODY_LIMIT
from gateway.store import CLI_ACTOR

MiB = 1024 * 1024
STREAM_BLOCK = bytes(range(256)) * 4096  # the conftest upstream's 1 MiB /stream block
GATE_TIMEOUT = 10  # seconds; only reached when the proxy buffers (the test then fails)


# -- helpers ----------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        return self.json()["error"]


def raw_url(client: Any, path: str) -> URL:
    """A URL whose path reaches the server byte for byte (no dot resolution, no quoting)."""
    return URL(f"http://{client.host}:{client.port}{path}", encoded=True)


async def call(
    client: Any, method: str, path: str, *, headers: Any = None, data: Any = None
) -> Reply:
    async with client.session.request(
        method, raw_url(client, path), headers=headers, data=data
    ) as response:
        body = await response.read()
        return Reply(response.status, response.headers, body)


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.error
    assert (error["status"], error["code"]) == (status, code), error
    assert error["requestId"] == reply.headers["X-Request-Id"]


async def raw_http(client: Any, request: bytes) -> tuple[int, bytes]:
    """Send bytes the HTTP client libraries would refuse to produce; status and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()  # the request says Connection: close
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def route(name: str, upstream: str, **fields: Any) -> dict[str, Any]:
    base = {"name": name, "path_prefix": "/" + name, "upstream": upstream,
            "account": "acme", "resource": "orders"}
    base.update(fields)
    return base


# -- a second upstream for what the conftest echo cannot show ---------------------------

@dataclass
class Special:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    upstream_got_first_bytes: asyncio.Event = field(default_factory=asyncio.Event)
    client_got_first_bytes: asyncio.Event = field(default_factory=asyncio.Event)
    gate_timed_out: bool = False
    upload_outcomes: list[tuple[str, int]] = field(default_factory=list)
    upload_finished: asyncio.Event = field(default_factory=asyncio.Event)


GZIPPED = gzip.compress(b'{"orders": [' + b'{"id": 1}, ' * 5000 + b"{}]}", mtime=0)


@pytest.fixture
async def special(aiohttp_server: Any) -> Special:
    record = Special()

    async def hop(request: web.Request) -> web.Response:
        return web.Response(
            text="hop",
            headers={
                "Connection": "X-Upstream-Hop",
                "X-Upstream-Hop": "hop-secret",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic realm=upstream",
                "Proxy-Connection": "keep-alive",
                "Trailer": "X-Checksum",
                "Upgrade": "h2c",
                "X-Passes": "yes",
            },
        )

    async def hop_underscore(request: web.Request) -> web.Response:
        return web.Response(
            text="hop", headers={"Connection": "X_Upstream_Hop", "X_Upstream_Hop": "hop-secret"}
        )

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=GZIPPED,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="from upstream")

    async def gated_upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            if size == 0:
                record.upstream_got_first_bytes.set()
            digest.update(chunk)
            size += len(chunk)
        record.requests.append({"body_sha256": digest.hexdigest(), "body_size": size})
        return web.json_response({"size": size})

    async def gated_download(request: web.Request) -> web.StreamResponse:
        """1 MiB, then nothing more until the client has seen bytes, then 7 MiB."""
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)  # chunked: no length announced
        await response.write(STREAM_BLOCK)
        try:
            await asyncio.wait_for(record.client_got_first_bytes.wait(), GATE_TIMEOUT)
        except TimeoutError:
            record.gate_timed_out = True
        for _ in range(7):
            await response.write(STREAM_BLOCK)
        await response.write_eof()
        return response

    async def watched_upload(request: web.Request) -> web.Response:
        """Records whether the body it got was complete or broke off."""
        size = 0
        try:
            async for chunk in request.content.iter_any():
                record.upstream_got_first_bytes.set()
                size += len(chunk)
            record.upload_outcomes.append(("complete", size))
        except BaseException:
            record.upload_outcomes.append(("broken", size))
            raise
        finally:
            record.upload_finished.set()
        return web.json_response({"size": size})

    async def stall(request: web.Request) -> web.StreamResponse:
        """1 MiB, chunked, then silence (until keygate gives up and hangs up)."""
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(STREAM_BLOCK)
        await asyncio.sleep(30)
        return response

    async def cut(request: web.Request) -> web.StreamResponse:
        """Announces 4 MiB, sends 1 MiB, then the connection dies."""
        response = web.StreamResponse()
        response.content_length = 4 * MiB
        await response.prepare(request)
        await response.write(STREAM_BLOCK)
        assert request.transport is not None
        request.transport.close()
        return response

    async def sized(request: web.Request) -> web.Response:
        """``n`` bytes of a repeating pattern, length announced."""
        size = int(request.match_info["n"])
        return web.Response(body=bytes(i % 251 for i in range(size)),
                            headers={"X-Sized": str(size), "X-Request-Id": "from-upstream"})

    async def small_cut(request: web.Request) -> web.StreamResponse:
        """Announces 1,000 bytes, sends 100, then the connection dies."""
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        assert request.transport is not None
        request.transport.close()
        return response

    async def small_stall(request: web.Request) -> web.StreamResponse:
        """Announces 1,000 bytes, sends 100, then silence."""
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.sleep(30)
        return response

    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_get("/special/small-stall", small_stall)
    app.router.add_get("/special/sized/{n:\\d+}", sized)
    app.router.add_get("/special/small-cut", small_cut)
    app.router.add_get("/special/hop", hop)
    app.router.add_get("/special/gzip", gzipped)
    app.router.add_get("/special/status/{code:\\d+}", status)
    app.router.add_post("/special/upload", gated_upload)
    app.router.add_get("/special/download", gated_download)
    app.router.add_get("/special/cut", cut)
    app.router.add_get("/special/hop-underscore", hop_underscore)
    app.router.add_post("/special/watched-upload", watched_upload)
    app.router.add_get("/special/stall", stall)
    server = await aiohttp_server(app)
    record.url = str(server.make_url("")).rstrip("/")
    return record


@pytest.fixture
async def special_proxy(special: Special, proxy_with: Callable[..., Any]) -> Any:
    return await proxy_with(routes=[route("special", special.url)])


# -- 200 and the harness ----------------------------------------------------------------

async def test_authorized_request_is_forwarded_with_its_answer(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    reply = await call(proxy, "GET", "/orders/42?page=2&q=a%20b", headers=key.headers)
    assert reply.status == 200
    assert reply.json() == {"method": "GET", "path": "/orders/42?page=2&q=a%20b", "size": 0}
    assert reply.headers["X-Upstream"] == "echo"  # the upstream's own headers come back
    assert len(upstream.requests) == 1
    assert upstream.last["raw_path"] == "/orders/42?page=2&q=a%20b"


async def test_harness_sends_raw_paths_verbatim(proxy, upstream):
    """Control for the traversal tests: the client does not resolve or re-quote paths."""
    async with proxy.session.get(
        URL(upstream.url + "/orders/%2e%2e/x/../..;/%2F//y", encoded=True)
    ) as response:
        assert response.status == 200
    assert upstream.last["raw_path"] == "/orders/%2e%2e/x/../..;/%2F//y"


async def test_upstream_status_codes_pass_through(special_proxy, special, make_key):
    key = await make_key("acme", ["orders-reader"])
    for code in (201, 204, 304, 404, 418, 500, 503):
        reply = await call(special_proxy, "GET", f"/special/status/{code}", headers=key.headers)
        assert reply.status == code
        if code in (204, 304):  # no body by definition, whatever the upstream wrote
            assert reply.body == b""
        else:
            assert reply.body == b"from upstream"  # the upstream's body, not a keygate error


@pytest.mark.parametrize("size", [0, 1, WHOLE_BODY_LIMIT, WHOLE_BODY_LIMIT + 1, 3 * MiB])
async def test_bodies_of_known_length_arrive_intact_read_whole_or_streamed(
    special_proxy, make_key, size
):
    """Up to WHOLE_BODY_LIMIT the answer is read whole and sent in one write; above it,
    streamed. Either way the client gets the same bytes, length and headers."""
    key = await make_key("acme", ["orders-reader"])
    reply = await call(special_proxy, "GET", f"/special/sized/{size}", headers=key.headers)
    assert reply.status == 200
    assert reply.body == bytes(i % 251 for i in range(size))
    assert reply.headers["Content-Length"] == str(size)
    assert reply.headers["X-Sized"] == str(size)
    assert reply.headers["X-Request-Id"]


@pytest.mark.parametrize("size", [10, 3 * MiB])
async def test_the_request_id_in_the_answer_is_keygates_alone(special_proxy, make_key, size):
    """An upstream that answers with a request id of its own does not add a second one:
    whether the answer is read whole or streamed, the client sees keygate's id once."""
    key = await make_key("acme", ["orders-reader"])
    sent = "client-trace-0001"
    reply = await call(special_proxy, "GET", f"/special/sized/{size}",
                       headers={**key.headers, "X-Request-Id": sent})
    assert reply.status == 200
    assert reply.headers.getall("X-Request-Id") == [sent]


async def test_head_keeps_the_upstreams_content_length(special_proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    reply = await call(special_proxy, "HEAD", "/special/sized/1234", headers=key.headers)
    assert reply.status == 200
    assert reply.headers["Content-Length"] == "1234"
    assert reply.body == b""


async def test_small_body_stalling_is_a_clean_504(special, proxy_with, make_key):
    client = await proxy_with(routes=[route("special", special.url)], upstream_read_timeout=0.5)
    key = await make_key("acme", ["orders-reader"])
    async with asyncio.timeout(GATE_TIMEOUT):
        reply = await call(client, "GET", "/special/small-stall", headers=key.headers)
    assert_error(reply, 504, "upstream_timeout")


class _AmbiguousLengthUpstream(asyncio.Protocol):
    """Answers with both Content-Length and Transfer-Encoding (a response-smuggling
    shape: the two say different lengths)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"a\r\n0123456789\r\n0\r\n\r\n"
            )


async def test_an_answer_with_two_lengths_is_a_502_never_a_body(proxy_with, make_key):
    """keygate must not pick one of two framings and pass it on with the other's
    header: the client would read a different message boundary than keygate did."""
    server = await asyncio.get_running_loop().create_server(
        _AmbiguousLengthUpstream, "127.0.0.1", 0
    )
    try:
        port = server.sockets[0].getsockname()[1]
        client = await proxy_with(routes=[route("raw", f"http://127.0.0.1:{port}")])
        key = await make_key("acme", ["orders-reader"])
        assert_error(await call(client, "GET", "/raw/x", headers=key.headers), 502,
                     "upstream_unreachable")
    finally:
        server.close()


async def test_small_body_cut_short_is_a_clean_502(special_proxy, make_key):
    """A small answer is read whole before anything is sent, so an upstream that dies
    mid-body can still be reported properly instead of by a cut connection."""
    key = await make_key("acme", ["orders-reader"])
    reply = await call(special_proxy, "GET", "/special/small-cut", headers=key.headers)
    assert_error(reply, 502, "upstream_unreachable")


# -- 400 --------------------------------------------------------------------------------

async def test_bad_path_is_400_and_not_forwarded(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    reply = await call(proxy, "GET", "/orders/%2f", headers=key.headers)
    assert_error(reply, 400, "bad_path")
    assert upstream.requests == []


async def test_credential_header_length_limit(proxy, gateway, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    limit = gateway.settings.max_credential_length
    at_limit = "k" * limit
    over = "k" * (limit + 1)
    # at the limit the value is merely wrong (401); one more character is malformed (400)
    assert_error(
        await call(proxy, "GET", "/orders/1",
                   headers={"X-API-AppKey": at_limit, "X-API-AppToken": key.token}),
        401, "invalid_credentials",
    )
    for headers in ({"X-API-AppKey": over, "X-API-AppToken": key.token},
                    {"X-API-AppKey": key.app_key, "X-API-AppToken": over},
                    {"X-API-AppToken": over}):
        assert_error(await call(proxy, "GET", "/orders/1", headers=headers),
                     400, "malformed_credentials")
    assert upstream.requests == []


async def test_non_ascii_credentials_are_400(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    for headers in ({"X-API-AppKey": key.app_key + "\u00e9", "X-API-AppToken": key.token},
                    {"X-API-AppKey": key.app_key, "X-API-AppToken": key.token[:-1] + "\u00e9"}):
        assert_error(await call(proxy, "GET", "/orders/1", headers=headers),
                     400, "malformed_credentials")
    # raw latin-1 bytes, which no client library sends for us
    status, body = await raw_http(
        proxy,
        b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-API-AppKey: " + key.app_key.encode() + b"\xe9\r\n"
        b"X-API-AppToken: " + key.token.encode() + b"\r\n\r\n",
    )
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "malformed_credentials"
    assert upstream.requests == []


async def test_account_from_path_that_is_not_an_account_is_400(proxy, make_key, upstream):
    key = await make_key("acme", ["owner"])
    for path in ("/accounts/ACME/x", "/accounts/no_such/x", "/accounts"):
        assert_error(await call(proxy, "GET", path, headers=key.headers), 400, "bad_account")
    assert upstream.requests == []


# -- 401 --------------------------------------------------------------------------------

async def test_missing_credentials_are_401(proxy, upstream):
    assert_error(await call(proxy, "GET", "/orders/1"), 401, "missing_credentials")
    assert upstream.requests == []


async def test_only_one_credential_header_is_401(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    for headers in ({"X-API-AppKey": key.app_key},
                    {"X-API-AppToken": key.token},
                    {"X-API-AppKey": key.app_key, "X-API-AppToken": ""}):
        assert_error(await call(proxy, "GET", "/orders/1", headers=headers),
                     401, "incomplete_credentials")
    assert upstream.requests == []


def _flip_last(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


async def test_invalid_credentials_all_get_the_same_401_body(proxy, gateway, make_key, upstream):
    """No oracle: unknown key, wrong token, bad checksum, malformed key — one answer."""
    key = await make_key("acme", ["orders-reader"])
    fmt = gateway.fmt
    other_token = fmt.new_token()
    bad_checksum = _flip_last(key.token)
    assert not fmt.token_well_formed(bad_checksum) and fmt.token_well_formed(other_token)
    cases = {
        "unknown key": {"X-API-AppKey": fmt.new_key("acme"), "X-API-AppToken": key.token},
        "wrong token": {"X-API-AppKey": key.app_key, "X-API-AppToken": other_token},
        "bad checksum": {"X-API-AppKey": key.app_key, "X-API-AppToken": bad_checksum},
        "malformed key": {"X-API-AppKey": "not-a-key", "X-API-AppToken": key.token},
        "key of another account": {"X-API-AppKey": fmt.new_key("beta"),
                                   "X-API-AppToken": other_token},
    }
    bodies = {}
    for name, headers in cases.items():
        reply = await call(proxy, "GET", "/orders/1", headers=headers)
        assert_error(reply, 401, "invalid_credentials")
        request_id = reply.error["requestId"].encode()
        assert reply.body.count(request_id) == 1
        bodies[name] = reply.body.replace(request_id, b"<id>")
    assert len(set(bodies.values())) == 1, bodies
    assert upstream.requests == []
    # and the key with its right token does get through (the cases above were not vacuous)
    assert (await call(proxy, "GET", "/orders/1", headers=key.headers)).status == 200


async def test_inactive_key_is_401_until_reactivated(proxy, gateway, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    assert (await call(proxy, "GET", "/orders/1", headers=key.headers)).status == 200
    await gateway.store.update_key("acme", key.app_key, status="inactive")
    assert_error(await call(proxy, "GET", "/orders/1", headers=key.headers), 401, "key_inactive")
    assert len(upstream.requests) == 1
    await gateway.store.update_key("acme", key.app_key, status="active")
    assert (await call(proxy, "GET", "/orders/1", headers=key.headers)).status == 200


async def test_deleted_key_is_401(proxy, gateway, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    assert await gateway.store.delete_key("acme", key.app_key)
    assert_error(await call(proxy, "GET", "/orders/1", headers=key.headers),
                 401, "invalid_credentials")
    assert upstream.requests == []


async def _live_server_requests() -> int:
    await asyncio.sleep(0)  # let finished handler tasks be released
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, web.BaseRequest))


async def test_refused_requests_are_not_kept_in_memory(proxy, make_key):
    """Regression: a shared module-level exception instance raised for every bad token
    grew its __traceback__ on each raise, keeping every refused request (and its
    headers, tokens included) alive."""
    key = await make_key("acme", ["orders-reader"])
    wrong = {"X-API-AppKey": key.app_key, "X-API-AppToken": _flip_last(key.token)}
    before = await _live_server_requests()
    for _ in range(25):
        assert (await call(proxy, "GET", "/orders/1", headers=wrong)).status == 401
    leaked = await _live_server_requests() - before
    assert leaked < 5, f"{leaked} finished requests are still alive"


# -- 403 --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("account", "roles", "method", "path", "code"),
    [
        ("acme", [], "GET", "/orders/1", "no_roles"),
        ("acme", ["owner"], "GET", "/beta/orders/1", "no_grant"),  # acme key, beta's route
        ("acme", ["orders-reader"], "POST", "/orders/1", "not_permitted"),
        ("acme", ["catalog-reader"], "GET", "/orders/1", "not_permitted"),
        ("beta", ["owner"], "GET", "/orders/1", "no_grant"),
    ],
)
async def test_authenticated_but_not_permitted_is_403(
    proxy, make_key, upstream, account, roles, method, path, code
):
    key = await make_key(account, roles)
    assert_error(await call(proxy, method, path, headers=key.headers), 403, code)
    assert upstream.requests == []


async def test_inactive_grant_is_403(proxy, gateway, make_key, upstream):
    key = await make_key("acme", ["owner"])
    assert (await gateway.store.add_grant(
        "beta", key.app_key, "partner", ["orders-reader"], CLI_ACTOR
    )).owner == "acme"
    assert (await call(proxy, "GET", "/beta/orders/1", headers=key.headers)).status == 200
    assert await gateway.store.update_grant("beta", key.app_key, {"status": "inactive"}, CLI_ACTOR)
    assert_error(await call(proxy, "GET", "/beta/orders/1", headers=key.headers),
                 403, "grant_inactive")
    # the key itself is fine: its own account still works
    assert (await call(proxy, "GET", "/orders/1", headers=key.headers)).status == 200
    assert len(upstream.requests) == 2


async def test_deny_beats_allow(proxy, make_key, upstream):
    owner = await make_key("acme", ["owner"])
    assert (await call(proxy, "GET", "/orders/1", headers=owner.headers)).status == 200
    for roles in (["owner", "suspended-partner"], ["suspended-partner", "owner"],
                  ["orders-writer", "suspended-partner"]):
        key = await make_key("acme", roles)
        for method in ("GET", "POST", "DELETE"):
            assert_error(await call(proxy, method, "/orders/1", headers=key.headers),
                         403, "not_permitted")
    # the deny is about orders only: the same suspended owner still reads the catalog
    suspended = await make_key("acme", ["owner", "suspended-partner"])
    headers = {**suspended.headers, "Host": "acme.api.test"}
    assert (await call(proxy, "GET", "/catalog/1", headers=headers)).status == 200
    assert len(upstream.requests) == 2


# -- 404 --------------------------------------------------------------------------------

async def test_no_route_is_404_before_authentication(proxy, make_key, upstream):
    key = await make_key("acme", ["owner"])
    for path in ("/nowhere", "/orders-archive/1", "/ordersx", "/ORDERS/1", "/"):
        assert_error(await call(proxy, "GET", path, headers=key.headers), 404, "no_route")
    # route lookup comes first: no credentials at all is still a 404, not a 401
    assert_error(await call(proxy, "GET", "/nowhere"), 404, "no_route")
    # /catalog only exists on *.api.test hosts (one label deep)
    for host in ("localhost", "api.test", "a.b.api.test", "acme.api.test.evil"):
        reply = await call(proxy, "GET", "/catalog/1", headers={**key.headers, "Host": host})
        assert_error(reply, 404, "no_route")
    assert upstream.requests == []


# -- 502 / 504 --------------------------------------------------------------------------

async def test_unreachable_upstream_is_502(proxy_with, make_key, closed_port):
    client = await proxy_with(routes=[route("dead", f"http://127.0.0.1:{closed_port}")])
    key = await make_key("acme", ["orders-reader"])
    reply = await call(client, "GET", "/dead/1", headers=key.headers)
    assert_error(reply, 502, "upstream_unreachable")
    assert str(closed_port) not in reply.error["message"]  # no internal addresses leak
    # and only an authorized request gets as far as trying the upstream
    assert_error(await call(client, "GET", "/dead/1"), 401, "missing_credentials")


async def test_silent_upstream_is_504(proxy_with, make_key, upstream):
    client = await proxy_with(upstream_read_timeout=0.5)
    key = await make_key("acme", ["orders-reader"])
    reply = await call(client, "GET", "/slow?seconds=5", headers=key.headers)
    assert_error(reply, 504, "upstream_timeout")


async def test_store_outage_is_503_but_a_bad_checksum_never_asks_the_store(
    proxy_with, gateway, make_key, closed_port, upstream
):
    key = await make_key("acme", ["orders-reader"])
    client = await proxy_with(store_url=f"redis://127.0.0.1:{closed_port}/0")
    # the answer is not known without the store: 503, never a 401 that blames the key
    assert_error(await call(client, "GET", "/orders/1", headers=key.headers),
                 503, "store_unavailable")
    # a token whose checksum is wrong is refused on its own, store or no store
    bad = {**key.headers, "X-API-AppToken": _flip_last(key.token)}
    assert_error(await call(client, "GET", "/orders/1", headers=bad), 401, "invalid_credentials")
    assert upstream.requests == []


async def test_upstream_dying_mid_body_is_not_passed_off_as_complete(
    special_proxy, make_key
):
    key = await make_key("acme", ["orders-reader"])
    received = 0
    # the timeout only matters if keygate ends the response cleanly but short and keeps
    # the connection: then the client would wait forever for the announced length
    async with asyncio.timeout(GATE_TIMEOUT):
        with pytest.raises(aiohttp.ClientPayloadError):
            async with special_proxy.session.get(
                raw_url(special_proxy, "/special/cut"), headers=key.headers
            ) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(4 * MiB)
                async for chunk in response.content.iter_any():
                    received += len(chunk)
    assert 0 < received < 4 * MiB


async def test_upstream_stalling_mid_body_cuts_the_response(
    special, proxy_with, make_key
):
    client = await proxy_with(routes=[route("special", special.url)], upstream_read_timeout=0.5)
    key = await make_key("acme", ["orders-reader"])
    received = 0
    async with asyncio.timeout(GATE_TIMEOUT):
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.session.get(
                raw_url(client, "/special/stall"), headers=key.headers
            ) as response:
                assert response.status == 200  # the headers were sent before the stall
                async for chunk in response.content.iter_any():
                    received += len(chunk)
    assert received == MiB


async def test_client_hanging_up_mid_upload_is_not_passed_off_as_complete(
    special_proxy, special, make_key
):
    key = await make_key("acme", ["orders-writer"])
    reader, writer = await asyncio.open_connection(special_proxy.host, special_proxy.port)
    writer.write(
        b"POST /special/watched-upload HTTP/1.1\r\nHost: x\r\n"
        b"X-API-AppKey: " + key.app_key.encode() + b"\r\n"
        b"X-API-AppToken: " + key.token.encode() + b"\r\n"
        b"Content-Length: " + str(4 * MiB).encode() + b"\r\n\r\n" + STREAM_BLOCK
    )
    await writer.drain()
    async with asyncio.timeout(GATE_TIMEOUT):
        await special.upstream_got_first_bytes.wait()
        writer.close()  # 3 MiB short
        await writer.wait_closed()
        await special.upload_finished.wait()
    assert len(special.upload_outcomes) == 1
    outcome, size = special.upload_outcomes[0]
    assert outcome == "broken" and size <= MiB


# -- the error shape and request ids ----------------------------------------------------

async def test_error_shape_and_request_id(proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    cases = [
        ("GET", "/orders/%2f", key.headers, 400),
        ("GET", "/orders/1", None, 401),
        ("POST", "/orders/1", key.headers, 403),
        ("GET", "/nowhere", key.headers, 404),
    ]
    seen_ids = set()
    for method, path, headers, status in cases:
        reply = await call(proxy, method, path, headers=headers)
        assert reply.status == status
        assert reply.headers["Content-Type"].split(";")[0] == "application/json"
        body = reply.json()
        assert list(body) == ["error"]
        assert set(body["error"]) == {"code", "message", "status", "requestId"}
        error = body["error"]
        assert error["status"] == status and isinstance(error["status"], int)
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["requestId"] == reply.headers["X-Request-Id"]
        assert len(error["requestId"]) >= 16
        seen_ids.add(error["requestId"])
    assert len(seen_ids) == len(cases)  # a fresh id per request

    # a well-formed client id is kept, for tracing across hops...
    reply = await call(proxy, "GET", "/orders/1", headers={"X-Request-Id": "trace-0123:abc.D_e"})
    assert reply.headers["X-Request-Id"] == "trace-0123:abc.D_e"
    assert reply.error["requestId"] == "trace-0123:abc.D_e"
    # ...a malformed one is replaced
    for bad in ("short", "has space in it", "x" * 129, "<script>alert(1)</script>"):
        reply = await call(proxy, "GET", "/orders/1", headers={"X-Request-Id": bad})
        assert reply.headers["X-Request-Id"] != bad
        assert reply.error["requestId"] == reply.headers["X-Request-Id"]


async def test_request_id_reaches_upstream_and_comes_back(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    reply = await call(proxy, "GET", "/orders/1", headers=key.headers)
    assert reply.status == 200
    assert upstream.last["headers"]["X-Request-Id"] == reply.headers["X-Request-Id"]
    reply = await call(proxy, "GET", "/orders/1",
                       headers={**key.headers, "X-Request-Id": "client-trace-42"})
    assert upstream.last["headers"].getall("X-Request-Id") == ["client-trace-42"]
    assert reply.headers.getall("X-Request-Id") == ["client-trace-42"]


# -- header hygiene ---------------------------------------------------------------------

async def test_identity_headers_reach_upstream_and_credentials_do_not(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-writer", "catalog-reader"])
    reply = await call(proxy, "POST", "/orders/1", headers=key.headers, data=b"{}")
    assert reply.status == 200
    seen = upstream.last["headers"]
    assert seen.getall("X-Keygate-Key") == [key.app_key]
    assert seen.getall("X-Keygate-Owner-Account") == ["acme"]
    assert seen.getall("X-Keygate-Account") == ["acme"]
    assert seen.getall("X-Keygate-Roles") == ["orders-writer,catalog-reader"]
    assert "X-API-AppKey" not in seen
    assert "X-API-AppToken" not in seen
    for name, value in seen.items():  # the token is nowhere, under any name
        assert key.token not in value, name


async def test_identity_headers_name_owner_and_target_account_apart(
    proxy, gateway, make_key, upstream
):
    """A key of acme granted a role in beta (an external key): owner acme, account beta."""
    key = await make_key("acme", ["owner"])
    assert (await gateway.store.add_grant(
        "beta", key.app_key, "partner", ["orders-reader"], CLI_ACTOR
    )).owner == "acme"
    reply = await call(proxy, "GET", "/beta/orders/7", headers=key.headers)
    assert reply.status == 200
    seen = upstream.last["headers"]
    assert seen["X-Keygate-Key"] == key.app_key
    assert seen["X-Keygate-Owner-Account"] == "acme"
    assert seen["X-Keygate-Account"] == "beta"
    assert seen["X-Keygate-Roles"] == "orders-reader"  # beta's grant, not acme's owner role
    assert_error(await call(proxy, "POST", "/beta/orders/7", headers=key.headers),
                 403, "not_permitted")


async def test_client_cannot_spoof_identity_or_forwarding_headers(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    spoofed = CIMultiDict(key.headers)
    for name, value in [
        ("X-Keygate-Key", "kgk-beta-AAAAAAAAAA"),
        ("X-Keygate-Roles", "owner"),
        ("X-Keygate-Account", "beta"),
        ("X-Keygate-Owner-Account", "beta"),
        ("x-keygate-roles", "owner"),  # header names are case-insensitive
        ("X-KEYGATE-Admin", "true"),
        ("X-Keygate-Anything", "x"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
    ]:
        spoofed.add(name, value)
    reply = await call(proxy, "GET", "/orders/1", headers=spoofed)
    assert reply.status == 200
    seen = upstream.last["headers"]
    assert seen.getall("X-Keygate-Key") == [key.app_key]
    assert seen.getall("X-Keygate-Roles") == ["orders-reader"]
    assert seen.getall("X-Keygate-Account") == ["acme"]
    assert seen.getall("X-Keygate-Owner-Account") == ["acme"]
    keygate_names = {n.lower() for n in seen if n.lower().startswith("x-keygate-")}
    assert keygate_names == {
        "x-keygate-key", "x-keygate-roles", "x-keygate-account", "x-keygate-owner-account"
    }
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.getall("X-Forwarded-Proto") == ["http"]
    assert seen.getall("X-Forwarded-Host") == [f"{proxy.host}:{proxy.port}"]
    assert "X-Real-IP" not in seen
    assert "6.6.6.6" not in seen.get("Forwarded", "")
    assert all("evil.example" not in v and "6.6.6.6" not in v for v in seen.values())


async def test_no_client_sent_x_forwarded_header_reaches_upstream(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    spoofed = {"X-Forwarded-Port": "443", "X-Forwarded-Prefix": "/admin",
               "X-Forwarded-Server": "evil.example", "X-Forwarded-Scheme": "https",
               "X-Forwarded-Ssl": "on", "X-Forwarded-Client-Cert": "Subject=CN=admin"}
    assert (await call(proxy, "GET", "/orders/1", headers={**key.headers, **spoofed})).status \
        == 200
    seen = upstream.last["headers"]
    forwarded = sorted(n for n in seen if n.lower().startswith("x-forwarded-"))
    assert forwarded == ["X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"]


async def test_method_and_path_override_headers_never_reach_upstream(proxy, make_key, upstream):
    """keygate authorized GET /orders/1; an upstream honouring these would run a DELETE
    or another path for a key that may only read."""
    key = await make_key("acme", ["orders-reader"])
    overrides = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE",
                 "X-Method-Override": "DELETE", "X-Original-URL": "/admin",
                 "X-Rewrite-URL": "/admin", "X-Original-Method": "DELETE"}
    assert (await call(proxy, "GET", "/orders/1", headers={**key.headers, **overrides})).status \
        == 200
    seen = upstream.last["headers"]
    assert not set(overrides) & set(seen), sorted(set(overrides) & set(seen))


async def test_underscore_spellings_of_trusted_headers_are_dropped(proxy, make_key, upstream):
    """CGI/WSGI servers read X-Keygate_Roles as HTTP_X_KEYGATE_ROLES, like X-Keygate-Roles."""
    key = await make_key("acme", ["orders-reader"])
    headers = {**key.headers, "X-Keygate_Roles": "owner", "x_keygate_account": "beta",
               "X-Forwarded_For": "6.6.6.6", "X-API_AppToken": key.token}
    assert (await call(proxy, "GET", "/orders/1", headers=headers)).status == 200
    seen = upstream.last["headers"]
    for name in headers:
        if "_" in name:
            assert name not in seen, name
    assert seen["X-Keygate-Roles"] == "orders-reader"
    assert seen["X-Keygate-Account"] == "acme"


async def test_end_to_end_headers_pass_through(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-reader"])
    headers = CIMultiDict(key.headers)
    headers.add("Authorization", "Bearer upstream-own-token")
    headers.add("X-Foo", "bar")
    headers.add("X-Foo", "baz")  # repeated headers keep every value, in order
    headers.add("Cookie", "session=1")
    headers.add("Accept", "application/json")
    reply = await call(proxy, "GET", "/orders/1", headers=headers)
    assert reply.status == 200
    seen = upstream.last["headers"]
    assert seen["Authorization"] == "Bearer upstream-own-token"
    assert seen.getall("X-Foo") == ["bar", "baz"]
    assert seen["Cookie"] == "session=1"
    assert seen["Accept"] == "application/json"


HOP_REQUEST_HEADERS = {
    "Connection": "keep-alive, X-Secret-Hop",
    "X-Secret-Hop": "hop-secret",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Upgrade": "websocket",
    "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
    "Proxy-Connection": "keep-alive",
    "Trailer": "X-Checksum",
}


async def test_hop_by_hop_request_headers_are_not_forwarded(proxy, make_key, upstream):
    # control: sent straight to the upstream, the client really does send all of them
    async with proxy.session.get(upstream.url + "/control", headers=HOP_REQUEST_HEADERS) as r:
        assert r.status == 200
    direct = upstream.last["headers"]
    for name in HOP_REQUEST_HEADERS:
        assert name in direct, name

    key = await make_key("acme", ["orders-reader"])
    reply = await call(proxy, "GET", "/orders/1",
                       headers={**key.headers, **HOP_REQUEST_HEADERS, "X-Stays": "1"})
    assert reply.status == 200
    seen = upstream.last["headers"]
    assert seen["X-Stays"] == "1"
    for name in ("X-Secret-Hop", "Keep-Alive", "TE", "Upgrade", "Proxy-Authorization",
                 "Proxy-Connection", "Trailer"):
        assert name not in seen, name
    assert "x-secret-hop" not in seen.get("Connection", "").lower()
    assert all("hop-secret" not in v and "cHJveHk6" not in v for v in seen.values())


def test_header_verdicts_stay_right_and_bounded_whatever_names_clients_send():
    """Which header names may pass is remembered per name; clients choose the names, so
    the memory is bounded in entries and in name length, and never changes an answer."""
    from gateway.proxy import _Verdicts

    verdicts = _Verdicts(lambda name: not name.lower().startswith("x-drop"), size=8)
    for i in range(100):
        assert verdicts[f"X-Keep-{i}"] == f"X-Keep-{i}"
        assert verdicts[f"X-Drop-{i}"] is None
        assert len(verdicts) <= 8
    long_name = "X-Keep-" + "a" * 1000
    assert verdicts[long_name] == long_name
    assert long_name not in verdicts


async def test_hop_by_hop_response_headers_are_not_returned(special_proxy, special, make_key):
    # control: the upstream really sends them
    async with special_proxy.session.get(special.url + "/special/hop") as direct:
        assert direct.headers["X-Upstream-Hop"] == "hop-secret"
        assert direct.headers["Proxy-Authenticate"] == "Basic realm=upstream"

    key = await make_key("acme", ["orders-reader"])
    reply = await call(special_proxy, "GET", "/special/hop", headers=key.headers)
    assert reply.status == 200 and reply.body == b"hop"
    assert reply.headers["X-Passes"] == "yes"
    for name in ("X-Upstream-Hop", "Keep-Alive", "Proxy-Authenticate", "Proxy-Connection",
                 "Trailer", "Upgrade"):
        assert name not in reply.headers, name
    assert "x-upstream-hop" not in reply.headers.get("Connection", "").lower()


async def test_response_header_named_in_connection_with_underscore_is_dropped(
    special_proxy, special, make_key
):
    async with special_proxy.session.get(special.url + "/special/hop-underscore") as direct:
        assert direct.headers["X_Upstream_Hop"] == "hop-secret"  # control
    key = await make_key("acme", ["orders-reader"])
    reply = await call(special_proxy, "GET", "/special/hop-underscore", headers=key.headers)
    assert reply.status == 200
    assert "X_Upstream_Hop" not in reply.headers


# -- path traversal, as the upstream sees it --------------------------------------------

@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        ("//orders//42", "/orders/42"),
        ("/orders/./42", "/orders/42"),
        ("/orders/x/../42", "/orders/42"),
        ("/public/%2e%2e/orders/7", "/orders/7"),
        ("/%6Frders/42", "/orders/42"),
        ("/orders/42/", "/orders/42/"),
        ("/orders/%e2%82%ac", "/orders/%E2%82%AC"),
        ("/orders/42?next=/../admin&x=%2e%2e", "/orders/42?next=/../admin&x=%2e%2e"),
    ],
)
async def test_normalised_path_is_exactly_what_is_forwarded(
    proxy, make_key, upstream, raw, forwarded
):
    key = await make_key("acme", ["orders-reader"])
    reply = await call(proxy, "GET", raw, headers=key.headers)
    assert reply.status == 200, reply.body
    assert len(upstream.requests) == 1
    assert upstream.last["raw_path"] == forwarded


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ("/orders/../admin", 404, "no_route"),  # normalises to /admin: no route
        ("/orders/%2e%2e/admin", 404, "no_route"),
        ("/public/..%2f", 400, "bad_path"),
        ("/public/..%2F/orders/1", 400, "bad_path"),
        ("/orders/%2f", 400, "bad_path"),
        ("/orders%2f42", 400, "bad_path"),
        ("/orders/a%5cb", 400, "bad_path"),
        ("/orders/..;/x", 400, "bad_path"),
        ("/orders/%2e%2e;/x", 400, "bad_path"),
        ("/orders/.;x/42", 400, "bad_path"),
        ("/..", 400, "bad_path"),
        ("/orders/../../x", 400, "bad_path"),
        ("/%2e%2e/orders/1", 400, "bad_path"),
        ("/orders/%00", 400, "bad_path"),
        ("/orders/%zz", 400, "bad_path"),
    ],
)
async def test_traversal_never_reaches_upstream(proxy, make_key, upstream, raw, status, code):
    key = await make_key("acme", ["owner"])
    assert_error(await call(proxy, "GET", raw, headers=key.headers), status, code)
    assert upstream.requests == []


async def test_literal_backslash_in_request_line_is_refused(proxy, make_key, upstream):
    key = await make_key("acme", ["owner"])
    status, _ = await raw_http(
        proxy,
        b"GET /orders\\..\\admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-API-AppKey: " + key.app_key.encode() + b"\r\n"
        b"X-API-AppToken: " + key.token.encode() + b"\r\n\r\n",
    )
    assert status == 400
    assert upstream.requests == []


async def test_traversal_onto_another_accounts_route_is_authorized_as_that_account(
    proxy, make_key, upstream
):
    """/orders/%2e%2e/beta/orders is beta's route, not acme's: authorized as beta."""
    acme = await make_key("acme", ["owner"])
    beta = await make_key("beta", ["orders-reader"])
    for raw in ("/orders/%2e%2e/beta/orders", "/orders/../beta/orders/1",
                "/orders/.%2E/beta/orders/1"):
        assert_error(await call(proxy, "GET", raw, headers=acme.headers), 403, "no_grant")
    assert upstream.requests == []
    reply = await call(proxy, "GET", "/orders/%2e%2e/beta/orders", headers=beta.headers)
    assert reply.status == 200
    assert upstream.last["raw_path"] == "/beta/orders"
    assert upstream.last["headers"]["X-Keygate-Account"] == "beta"


# -- where the account and the action come from -----------------------------------------

async def test_account_from_host(proxy, make_key, upstream):
    key = await make_key("acme", ["catalog-reader"])
    for host in ("acme.api.test", "ACME.api.test", "acme.api.test:8443", "acme.api.test."):
        reply = await call(proxy, "GET", "/catalog/1", headers={**key.headers, "Host": host})
        assert reply.status == 200, host
        assert upstream.last["headers"]["X-Keygate-Account"] == "acme"
        assert upstream.last["headers"]["X-Forwarded-Host"] == host
    reply = await call(proxy, "GET", "/catalog/1", headers={**key.headers, "Host": "beta.api.test"})
    assert_error(reply, 403, "no_grant")
    assert len(upstream.requests) == 4


async def test_account_from_path_segment(proxy, make_key, upstream):
    reader = await make_key("acme", ["orders-reader"])
    assert (await call(proxy, "GET", "/accounts/acme/x", headers=reader.headers)).status == 200
    assert upstream.last["headers"]["X-Keygate-Account"] == "acme"
    assert_error(await call(proxy, "GET", "/accounts/beta/x", headers=reader.headers),
                 403, "no_grant")
    # the segment is read from the normalised path
    assert_error(await call(proxy, "GET", "/accounts/acme/../beta/x", headers=reader.headers),
                 403, "no_grant")
    assert len(upstream.requests) == 1


async def test_actions_override_delete_needs_admin(proxy, make_key, upstream):
    owner = await make_key("acme", ["owner"])
    writer = await make_key("acme", ["orders-writer"])
    assert (await call(proxy, "DELETE", "/accounts/acme/x", headers=owner.headers)).status == 200
    assert upstream.last["method"] == "DELETE"
    assert_error(await call(proxy, "DELETE", "/accounts/acme/x", headers=writer.headers),
                 403, "not_permitted")
    # the override is for DELETE only: the writer still writes with the other methods
    for method in ("POST", "PUT", "PATCH"):
        assert (await call(proxy, method, "/accounts/acme/x", headers=writer.headers)).status == 200
    # without the override, DELETE is an ordinary write
    assert (await call(proxy, "DELETE", "/orders/1", headers=writer.headers)).status == 200


@pytest.mark.parametrize(
    ("method", "action"),
    [("GET", "read"), ("HEAD", "read"), ("OPTIONS", "read"),
     ("POST", "write"), ("PUT", "write"), ("PATCH", "write"), ("DELETE", "write")],
)
async def test_default_method_to_action(proxy, make_key, upstream, method, action):
    reader = await make_key("acme", ["orders-reader"])  # read only
    writer = await make_key("acme", ["orders-writer"])  # write (and read, inherited)
    reply = await call(proxy, method, "/orders/1", headers=reader.headers)
    if action == "read":
        assert reply.status == 200
    else:
        assert_error(reply, 403, "not_permitted")
    assert (await call(proxy, method, "/orders/1", headers=writer.headers)).status == 200
    assert upstream.last["method"] == method


async def test_route_action_settings(proxy_with, make_key, upstream):
    """`actions` can also relax (a search by POST is a read); `action` fixes all methods."""
    client = await proxy_with(routes=[
        route("search", upstream.url, actions={"POST": "read"}),
        route("reports", upstream.url, action="write"),
    ])
    reader = await make_key("acme", ["orders-reader"])
    assert (await call(client, "POST", "/search", headers=reader.headers)).status == 200
    assert_error(await call(client, "PUT", "/search", headers=reader.headers), 403, "not_permitted")
    assert_error(await call(client, "GET", "/reports", headers=reader.headers),
                 403, "not_permitted")
    writer = await make_key("acme", ["orders-writer"])
    assert (await call(client, "GET", "/reports", headers=writer.headers)).status == 200


# -- bodies -----------------------------------------------------------------------------

async def test_large_chunked_upload_arrives_intact(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-writer"])
    digest = hashlib.sha256()
    total = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal total
        for i in range(24):  # 24 MiB, in blocks that differ so reordering would show
            block = i.to_bytes(4, "big") * (MiB // 4)
            digest.update(block)
            total += len(block)
            yield block

    reply = await call(proxy, "POST", "/orders/upload", headers=key.headers, data=body())
    assert reply.status == 200
    assert total == 24 * MiB
    assert upstream.last["body_size"] == total
    assert upstream.last["body_sha256"] == digest.hexdigest()


async def test_sized_body_arrives_intact(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-writer"])
    data = uuid.uuid4().bytes * 20000
    reply = await call(proxy, "PUT", "/orders/1", headers=key.headers, data=data)
    assert reply.status == 200
    assert upstream.last["body_size"] == len(data)
    assert upstream.last["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_large_response_streams_back_intact(proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    expected = hashlib.sha256()
    for _ in range(32):
        expected.update(STREAM_BLOCK)
    digest = hashlib.sha256()
    size = 0
    async with proxy.session.get(raw_url(proxy, "/stream/32"), headers=key.headers) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(32 * MiB)
        async for chunk in response.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
    assert size == 32 * MiB
    assert digest.hexdigest() == expected.hexdigest()


async def test_request_body_is_forwarded_before_it_has_all_been_sent(
    special_proxy, special, make_key
):
    """The client sends 1 MiB and then waits until the upstream has received bytes before
    sending the rest. A proxy that read the body whole would never forward anything, the
    gate would time out, and the test fails."""
    key = await make_key("acme", ["orders-writer"])
    digest = hashlib.sha256()
    gate_timed_out = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal gate_timed_out
        digest.update(STREAM_BLOCK)
        yield STREAM_BLOCK
        try:
            await asyncio.wait_for(special.upstream_got_first_bytes.wait(), GATE_TIMEOUT)
        except TimeoutError:
            gate_timed_out = True
        for _ in range(7):
            digest.update(STREAM_BLOCK)
            yield STREAM_BLOCK

    reply = await call(special_proxy, "POST", "/special/upload", headers=key.headers, data=body())
    assert reply.status == 200
    assert not gate_timed_out, "the upstream saw nothing until the whole body was sent"
    assert special.requests[-1] == {"body_sha256": digest.hexdigest(), "body_size": 8 * MiB}


async def test_response_body_reaches_client_before_upstream_has_produced_it(
    special_proxy, special, make_key
):
    """The upstream sends 1 MiB and then waits until the client has received bytes. A proxy
    that buffered the response whole would deliver nothing until the gate timed out."""
    key = await make_key("acme", ["orders-reader"])
    size = 0
    async with special_proxy.session.get(
        raw_url(special_proxy, "/special/download"), headers=key.headers
    ) as response:
        assert response.status == 200
        first = await response.content.readany()
        assert first
        assert not special.gate_timed_out
        special.client_got_first_bytes.set()
        size = len(first)
        async for chunk in response.content.iter_any():
            size += len(chunk)
    assert not special.gate_timed_out, "the client saw nothing until the whole body was made"
    assert size == 8 * MiB


async def test_gzip_request_body_passes_byte_for_byte(proxy, make_key, upstream):
    key = await make_key("acme", ["orders-writer"])
    headers = {**key.headers, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    reply = await call(proxy, "POST", "/orders", headers=headers, data=GZIPPED)
    assert reply.status == 200
    seen = upstream.last
    assert seen["headers"]["Content-Encoding"] == "gzip"
    assert seen["body_size"] == len(GZIPPED)
    assert seen["body_sha256"] == hashlib.sha256(GZIPPED).hexdigest()


async def test_gzip_response_body_passes_byte_for_byte(special_proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.get(
        raw_url(special_proxy, "/special/gzip"), headers=key.headers
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"
        body = await response.read()
    assert body == GZIPPED
