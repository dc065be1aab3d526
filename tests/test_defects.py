"""Small defects found by an attacker, each with the test that failed before its fix:

* refused token-link opens kept every request alive through one shared exception;
* a store outage during an export was a 500, or, after the first byte, a second
  response spliced into the first (now: 503 before the first byte, a cut connection
  after it);
* last-used times pending when the store went away were dropped;
* a token-link secret reached the access log when the path was spelled differently.

Real stack throughout: the private redis-server (made to go away through a TCP relay at
an exact command), raw sockets where the exact bytes on the wire are the point.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from conftest import FakeClock, Key, ProxyTestServer
from relay import Relay

from gateway.accesslog import AccessLogger
from gateway.app import build_gateway
from gateway.context import Gateway
from gateway.credentials import link_id, new_link_secret
from gateway.errors import GatewayError
from gateway.logs import JsonFormatter
from gateway.management import build_management_app
from gateway.store import CLI_ACTOR, Store
from gateway.usage import MAX_TRACKED


def redis_port(redis_url: str) -> int:
    return int(redis_url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
async def relay(redis_url: str) -> AsyncIterator[Relay]:
    if redis_url.startswith("memory://"):
        pytest.skip("relays to a real redis-server")
    relay = await Relay(redis_port(redis_url)).start()
    yield relay
    await relay.close()


@pytest.fixture
async def relayed(
    make_settings: Callable[..., Any], clock: FakeClock, relay: Relay
) -> AsyncIterator[Gateway]:
    """A gateway whose store is reached through the relay (not started: no background
    work talks to the store unless a test says so)."""
    gw = build_gateway(make_settings(store_url=relay.url, metrics_listen=""), clock=clock)
    yield gw
    await gw.close()


async def raw_request(port: int, target: str, headers: dict[str, str] | None = None,
                      method: str = "GET", version: str = "1.1") -> tuple[bytes, bool]:
    """Send exactly this request line; return every byte that came back and whether the
    connection ended with a reset rather than an orderly close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/{version}", "Host: keygate.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    data, reset = b"", False
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionResetError:
        reset = True
    writer.close()
    return data, reset


# -- token links: a fresh exception per refusal --------------------------------------------
async def test_refused_link_opens_keep_no_request_alive(gateway, aiohttp_client):
    """A shared exception object re-raised grows its traceback on every raise, and the
    traceback's frames hold each refused request (headers and all) for good."""
    seen: list[weakref.ref[web.Request]] = []
    depths: list[int] = []

    @web.middleware
    async def probe(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(weakref.ref(request))
        try:
            return await handler(request)
        except GatewayError as exc:
            depth, tb = 0, exc.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
            raise

    app = build_management_app(gateway)
    app.middlewares.append(probe)  # innermost: it sees what the link handlers raise
    client = await aiohttp_client(app)
    bogus = f"/api/v1/token-links/{new_link_secret()}"
    for _ in range(gateway.settings.auth_failure_limit // 3):  # within the failure budget
        for response in (await client.post(bogus), await client.get(bogus),
                         await client.get("/api/v1/token-links/not-a-secret")):
            assert response.status == 410
            body = orjson.loads(await response.read())
            assert body["error"]["code"] == "token_link_gone"
    assert len(set(depths)) == 1, "the traceback grew from one refusal to the next"
    gc.collect()
    alive = [ref for ref in seen if ref() is not None]
    assert len(alive) <= 1, f"{len(alive)} of {len(seen)} refused requests still alive"


# -- export: 503 before the first byte, a cut connection after it -------------------------
async def export_setup(gateway: Gateway, relay: Relay) -> tuple[Key, str]:
    viewer = await gateway.lifecycle.create("acme", "viewer", ["api-keys-viewer"], CLI_ACTOR)
    issued = await gateway.lifecycle.create("beta", "partner", ["orders-reader"], CLI_ACTOR)
    added = await gateway.store.add_grant("acme", issued.record.app_key, "ext",
                                          ["orders-reader"], CLI_ACTOR)
    assert added.roles == ("orders-reader",)
    assert viewer.token is not None
    return Key(viewer.record.app_key, viewer.token), gateway.settings.store_prefix + "acct:acme:"


def cut_on_read(relay: Relay, account_keys: str, index: str, occurrence: int) -> None:
    """Cut the store at the ``occurrence``-th read of an export's keys: a round of the
    generated keys reads both status runs of the creation index (a packed set) in one
    script, the external keys are read by ZRANGE."""
    if index == "created":
        relay.cut_on_parts(["1", account_keys + index, "from"], occurrence)
    else:
        relay.cut_on("ZRANGE", account_keys + index, occurrence)


@pytest.mark.parametrize(
    ("query", "index", "occurrence"),
    [
        ("format=csv", "created", 1),  # the first rows are read before answering
        ("format=csv&sheet=external", "ext", 1),
        ("format=xlsx", "created", 1),
        # the workbook is complete before its first byte (its second round of reads)
        ("format=xlsx", "created", 2),
        ("format=xlsx", "ext", 1),
    ],
)
async def test_a_store_outage_before_the_first_byte_is_a_503(
    relayed, relay, aiohttp_client, query, index, occurrence
):
    viewer, account_keys = await export_setup(relayed, relay)
    management = await aiohttp_client(build_management_app(relayed))
    cut_on_read(relay, account_keys, index, occurrence)
    response = await management.get(f"/api/v1/accounts/acme/export?{query}",
                                    headers=viewer.headers)
    assert response.status == 503
    assert response.content_type == "application/json"
    error = orjson.loads(await response.read())["error"]
    assert error["code"] == "store_unavailable" and error["requestId"]
    assert relay.down, "the relay never saw the export read the store"


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize(("query", "index", "second_round"),
                         [("format=csv", "created", 2),
                          ("format=csv&sheet=external", "ext", 2)])
async def test_a_store_outage_after_the_first_byte_cuts_the_connection(
    relayed, relay, aiohttp_client, query, index, second_round, version
):
    """HTTP/1.1 gets a chunked body without its last chunk, HTTP/1.0 a body that ends
    with the connection: for both, only a reset (not an orderly close) says "broken"
    to every client."""
    viewer, account_keys = await export_setup(relayed, relay)
    management = await aiohttp_client(build_management_app(relayed))
    cut_on_read(relay, account_keys, index, second_round)  # after the first rows went out
    data, reset = await raw_request(management.server.port,
                                    f"/api/v1/accounts/acme/export?{query}", viewer.headers,
                                    version=version)
    assert relay.down, "the relay never saw the export read its second chunk"
    assert reset, "the connection ended in an orderly way"
    # whatever reached the client is the start of one 200: no clean end of it and no
    # second response spliced in
    assert data == b"" or data.startswith(f"HTTP/{version} 200 ".encode())
    assert data.count(b"HTTP/1.") <= 1
    assert not data.endswith(b"\r\n0\r\n\r\n"), "a truncated file ended like a complete one"


async def test_an_export_that_is_not_cut_still_ends_cleanly(gateway, management):
    """The cut is for failures only: the same raw request, store up, ends with the last
    chunk."""
    issued = await gateway.lifecycle.create("acme", "viewer", ["api-keys-viewer"], CLI_ACTOR)
    assert issued.token is not None
    viewer = Key(issued.record.app_key, issued.token)
    data, reset = await raw_request(management.server.port,
                                    "/api/v1/accounts/acme/export?format=csv", viewer.headers)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n0\r\n\r\n")
    assert not reset and viewer.app_key.encode() in data


# -- last used: kept while the store is away --------------------------------------------------
async def stored_last_used(redis_url: str, gateway: Gateway, app_key: str) -> int | None:
    store = Store.from_url(redis_url, gateway.settings.store_prefix)
    try:
        record = await store.get_key("acme", app_key)
        assert record is not None
        return record.last_used
    finally:
        await store.close()


async def test_last_used_times_survive_a_store_outage(relayed, relay, clock, redis_url):
    issued = await relayed.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
    app_key = issued.record.app_key
    relayed.last_used.touch(app_key)
    first = int(clock() * 1000)
    relay.cut()
    await relayed.last_used.flush()  # refused: kept, not dropped
    clock.advance(5)
    relayed.last_used.touch(app_key)  # touched again meanwhile: the newer time wins
    newer = int(clock() * 1000)
    await relayed.last_used.flush()
    relay.restore()
    assert await stored_last_used(redis_url, relayed, app_key) is None
    for _ in range(3):  # a pooled connection the cut broke may fail once more
        await relayed.last_used.flush()
        if await stored_last_used(redis_url, relayed, app_key) is not None:
            break
    assert await stored_last_used(redis_url, relayed, app_key) == newer != first


async def test_kept_last_used_times_stay_bounded(relayed, relay, clock):
    last_used = relayed.last_used
    for i in range(MAX_TRACKED):
        last_used.touch(f"kgk-acme-K{i:09d}")
    relay.cut()
    await last_used.flush()
    clock.advance(1)
    last_used.touch("kgk-acme-NEWKEY0000")  # no room: a new key waits for the next round
    last_used.touch("kgk-acme-K000000007")  # a kept key moves to its newer time
    await last_used.flush()
    pending = last_used._pending
    assert len(pending) == MAX_TRACKED and "kgk-acme-NEWKEY0000" not in pending
    assert pending["kgk-acme-K000000007"] == int(clock() * 1000)


# -- the access log: no link secret, however the path was spelled ------------------------
class Lines(logging.Handler):
    """Collects lines as ``log_format = "json"`` writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access_log() -> Iterator[tuple[logging.Logger, Lines]]:
    """A logger of its own (as app.py passes ``keygate.access``), collecting lines."""
    logger = logging.getLogger("keygate.test-access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    lines = Lines()
    logger.addHandler(lines)
    yield logger, lines
    logger.removeHandler(lines)


def spellings(secret: str) -> list[str]:
    escaped = "".join(f"%{ord(c):02X}" if c.isalpha() else c for c in secret)
    fullwidth = quote("".join(chr(ord(c) + 0xFEE0) for c in secret))  # NFKC folds it back
    return [
        f"/api/v1/token-links/{secret}",
        f"//api/v1/token-links/{secret}",
        f"/api/v1//token-links/{secret}",
        f"/api/v1/token-links//{secret}",
        f"/api/v1/token-links/{secret}/",
        f"/API/V1/TOKEN-LINKS/{secret}",
        f"/api/v1/%74oken-links/{secret}",
        f"/api/v1/token-links/{escaped}",
        f"/api/v1/token-links/{escaped.replace('%', '%25')}",  # escaped twice
        f"/api/v1/token-links/{secret}_",  # something glued to it
        f"/api/v1/token-links/{secret[:20]}.{secret[20:]}",  # split by a typo
        f"/api/v1/token-links/{secret}?utm=x",
        f"/somewhere/else/{secret}",
        f"/api/v1/token-links/{fullwidth}",
    ]


async def test_no_link_secret_reaches_the_access_log(
    gateway, aiohttp_client, access_log, make_key
):
    logger, lines = access_log

    async def logging_client(server: BaseTestServer) -> Any:
        # runner options, as app.py passes them with access_log = true
        await server.start_server(access_log_class=AccessLogger, access_log=logger)
        return await aiohttp_client(server)

    management = await logging_client(TestServer(build_management_app(gateway)))
    proxy = await logging_client(ProxyTestServer(gateway))  # the same logger class
    admin = await make_key("acme", ["user-admin-restricted"], label="admin")
    created = await management.post("/api/v1/accounts/acme/keys", headers=admin.headers,
                                    json={"label": "l", "roles": [], "delivery": "link"})
    assert created.status == 201
    secret = (await created.json())["tokenLink"].rsplit("/", 1)[1]
    for target in spellings(secret):
        for port in (management.server.port, proxy.server.port):
            for method in ("GET", "HEAD"):
                data, _ = await raw_request(port, target, method=method)
                assert data.startswith(b"HTTP/1.1 "), target
    logged_lines = [orjson.loads(line) for line in lines.lines]
    assert len(logged_lines) >= 2 * 2 * len(spellings(secret))
    for line in logged_lines:
        text = orjson.dumps(line).decode()
        assert secret not in text, line["path"]
        assert secret[:20] not in text and secret[20:] not in text, line["path"]
    # none of this consumed the link: a secret in the log would still open it
    assert await gateway.store.link_valid(link_id(secret))
    # ordinary paths are logged as they were
    assert (await management.get("/api/v1/accounts/acme/keys",
                                 headers=admin.headers)).status == 200
    assert orjson.loads(lines.lines[-1])["path"] == "/api/v1/accounts/acme/keys"
