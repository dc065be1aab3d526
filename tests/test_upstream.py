"""keygate's HTTP/1.1 client to its upstreams (gateway/upstream.py), tested directly.

Every upstream here is a raw ``asyncio.start_server`` on 127.0.0.1: it controls each byte
it sends (interim answers, bodies without a length, garbage, closing at the worst moment)
and records each byte keygate sends, and it counts the connections it accepts, so
connection reuse is seen from the upstream's side rather than taken on the pool's word.
The proxy-level behaviour (streaming, 502/504, header hygiene) is in test_proxy.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from yarl import URL

from gateway.upstream import (
    AnswerBrokeOff,
    InvalidAnswer,
    Origin,
    PoolClosed,
    UnforwardableHeader,
    UpstreamClosed,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
    request_head,
)
from gateway.upstream_connection import PAUSE_READING_AT

LIVENESS = 2.0  # seconds; only ever reached when the behaviour under test is broken
HEADERS = [("Accept", "*/*")]


# -- a raw upstream ---------------------------------------------------------------------

@dataclass
class Request:
    """One request as the upstream received it, byte for byte."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    head: bytes
    body: bytes = b""
    raw_body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


class Conn:
    """The upstream's end of one TCP connection from keygate."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []
        self.received = bytearray()  # what drain_until_eof() read after a request head
        self.peer_closed = asyncio.Event()  # keygate closed (or reset) its end
        self.done = asyncio.Event()  # the handler finished and the socket is closed

    async def read_request(self, *, body: bool = True) -> Request | None:
        """The next request (its body too, unless ``body=False``); None when keygate
        closed the connection before sending one."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.peer_closed.set()
            return None
        lines = head[:-4].decode("utf-8", "surrogateescape").split("\r\n")
        method, target, version = lines[0].split(" ")
        assert version == "HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        request = Request(method, target, headers, head)
        self.requests.append(request)
        if body:
            if [v.lower() for v in request.header("Transfer-Encoding")] == ["chunked"]:
                request.body, request.raw_body = await self._read_chunked()
            elif request.header("Content-Length"):
                (length,) = request.header("Content-Length")
                request.body = request.raw_body = await self.reader.readexactly(int(length))
        return request

    async def _read_chunked(self) -> tuple[bytes, bytes]:
        body, raw = bytearray(), bytearray()
        while True:
            line = await self.reader.readuntil(b"\r\n")
            raw += line
            size = int(line.split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            raw += data
            assert data.endswith(b"\r\n"), data
            if size == 0:  # no trailers: "0\r\n\r\n"
                return bytes(body), bytes(raw)
            body += data[:-2]

    async def answer(
        self, body: bytes = b"", *, status: int = 200, reason: str = "OK",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers)
        await self.send(head.encode() + b"\r\n" + body)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def drain_until_eof(self) -> None:
        """Read whatever keygate still sends until it closes its end."""
        try:
            while data := await self.reader.read(65536):
                self.received += data
        except ConnectionError:
            pass
        self.peer_closed.set()


Handler = Callable[[Conn], Awaitable[None]]


@dataclass
class RawUpstream:
    handler: Handler
    conns: list[Conn] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    errors: list[BaseException] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    server: asyncio.Server | None = None
    origin: Origin | None = None

    @property
    def accepted(self) -> int:
        return len(self.conns)

    @property
    def requests(self) -> list[Request]:
        return [request for conn in self.conns for request in conn.requests]

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        port = self.server.sockets[0].getsockname()[1]
        self.origin = Origin.of(URL(f"{'https' if tls else 'http'}://127.0.0.1:{port}"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = Conn(len(self.conns), reader, writer)
        self.conns.append(conn)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.peer_closed.set()
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # a broken handler must fail the test, not vanish
            self.errors.append(exc)
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            conn.done.set()
            self.tasks.discard(task)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for conn in self.conns:
            conn.writer.close()  # each handler then reads EOF and ends by itself
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=LIVENESS)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    started: list[RawUpstream] = []

    async def start(handler: Handler, *, tls: ssl.SSLContext | None = None) -> RawUpstream:
        upstream = RawUpstream(handler)
        await upstream.start(tls)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.close()
    for upstream in started:
        assert not upstream.errors, upstream.errors


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., UpstreamPool]]:
    """UpstreamPool as the test asks for it (small timeouts); closed after the test."""
    pools: list[UpstreamPool] = []

    def make(**overrides: float) -> UpstreamPool:
        settings: dict = {
            "max_connections": 10, "connect_timeout": 1, "read_timeout": 1,
            "idle_timeout": 5,
        }
        settings.update(overrides)
        pool = UpstreamPool(**settings)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture
def unanswering_port() -> Iterator[int]:
    """A port whose connections hang: it listens, but its one-entry accept queue is
    full and nobody accepts, so the kernel drops further connection attempts."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=LIVENESS):
            yield port


class ClientBody:
    """A request body as keygate gets it: ``stream`` is the ``request.content`` of a
    request that a real aiohttp server is reading from a real socket, and the test is
    the client on the other end. A body of known length (``eof=True``) goes with its
    Content-Length, written in the background; an open one goes chunked, each
    :meth:`send` one chunk, until :meth:`end`; :meth:`cut` hangs up mid-body."""

    def __init__(self, stream: aiohttp.StreamReader, writer: asyncio.StreamWriter, chunked: bool):
        self.stream = stream
        self.writer = writer
        self.chunked = chunked

    async def send(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        await self.writer.drain()

    async def end(self) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()

    def cut(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def make_body() -> AsyncIterator[Callable[..., Awaitable[ClientBody]]]:
    arrived: asyncio.Queue[aiohttp.StreamReader] = asyncio.Queue()
    finished = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await arrived.put(request.content)
        await finished.wait()  # the body is the test's until it ends
        return web.Response()

    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    bodies: list[ClientBody] = []
    writing: list[asyncio.Task[None]] = []

    async def make(*parts: bytes, eof: bool = True) -> ClientBody:
        _, writer = await asyncio.open_connection(host, port)
        framing = b"Content-Length: %d" % sum(map(len, parts)) if eof else (
            b"Transfer-Encoding: chunked"
        )
        writer.write(b"PUT /body HTTP/1.1\r\nHost: test\r\n" + framing + b"\r\n\r\n")
        stream = await asyncio.wait_for(arrived.get(), LIVENESS)
        body = ClientBody(stream, writer, chunked=not eof)
        bodies.append(body)
        if eof:  # in the background: nothing may read it until the test sends it on
            writing.append(asyncio.create_task(_send_all(body, parts)))
        else:
            for part in parts:
                await body.send(part)
        return body

    yield make
    finished.set()
    for task in writing:
        task.cancel()
    await asyncio.gather(*writing, return_exceptions=True)
    for body in bodies:
        body.writer.close()
    await runner.cleanup()


async def _send_all(body: ClientBody, parts: tuple[bytes, ...]) -> None:
    with contextlib.suppress(ConnectionError):
        for part in parts:
            await body.send(part)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds; fail after LIVENESS seconds."""
    async with asyncio.timeout(LIVENESS):
        while not predicate():
            await asyncio.sleep(0.005)


async def get(pool: UpstreamPool, origin: Origin, target: str, method: str = "GET") -> bytes:
    async with await pool.send(origin, method, target, HEADERS) as answer:
        assert answer.status == 200
        return await answer.read()


def echoed(method: str, target: str, size: int = 0) -> bytes:
    return f"{method} {target} {size}".encode()


async def echo(conn: Conn) -> None:
    """Answers every request on the connection with its method, target and body size."""
    while (request := await conn.read_request()) is not None:
        await conn.answer(echoed(request.method, request.target, len(request.body)))


# -- keep-alive and reuse ----------------------------------------------------------------

async def test_sequential_requests_share_one_kept_alive_connection(raw_upstream, make_pool):
    upstream = await raw_upstream(echo)
    pool = make_pool()
    for i in range(5):
        assert await get(pool, upstream.origin, f"/n/{i}") == echoed("GET", f"/n/{i}")
        assert pool.open_connections == 1
    assert upstream.accepted == 1
    assert [r.target for r in upstream.conns[0].requests] == [f"/n/{i}" for i in range(5)]
    await pool.close()


def lettered(conn_requests: list[Request], size: int) -> bytes:
    return bytes([ord("a") + len(conn_requests) - 1]) * size


@pytest.mark.parametrize("read_first", [0, 10], ids=["unread", "partly-read"])
async def test_answer_not_read_to_the_end_closes_its_connection(
    raw_upstream, make_pool, read_first
):
    size = 256 * 1024  # more than fits in the socket buffers: leftovers are on the wire
    served: list[Request] = []

    async def big(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            served.append(request)
            await conn.answer(lettered(served, size))

    upstream = await raw_upstream(big)
    pool = make_pool()
    async with await pool.send(upstream.origin, "GET", "/first", HEADERS) as answer:
        assert answer.status == 200
        if read_first:
            assert await answer.content.readany(read_first) == b"a" * read_first
    assert pool.open_connections == 0
    await asyncio.wait_for(upstream.conns[0].peer_closed.wait(), LIVENESS)

    async with await pool.send(upstream.origin, "GET", "/second", HEADERS) as answer:
        assert answer.status == 200
        assert answer.content_length == size
        assert await answer.read() == b"b" * size  # its own answer, none of the first's
    assert upstream.accepted == 2
    assert [r.target for r in upstream.conns[1].requests] == ["/second"]
    assert pool.open_connections == 1
    await pool.close()


# -- a kept-alive connection the upstream closes: retry only where it is safe ------------

async def close_on_second_request(conn: Conn) -> None:
    """Answers a connection's first request; on the head of the second, closes without
    writing a byte (an upstream's keep-alive timeout racing keygate's next request)."""
    request = await conn.read_request()
    if request is None:
        return
    await conn.answer(echoed(request.method, request.target, len(request.body)))
    await conn.read_request(body=False)


async def test_idempotent_get_is_retried_once_on_a_fresh_connection(raw_upstream, make_pool):
    upstream = await raw_upstream(close_on_second_request)
    pool = make_pool()
    assert await get(pool, upstream.origin, "/warm") == echoed("GET", "/warm")
    assert await get(pool, upstream.origin, "/again") == echoed("GET", "/again")
    assert upstream.accepted == 2
    assert [[r.target for r in conn.requests] for conn in upstream.conns] == [
        ["/warm", "/again"],  # the second never answered: the connection was closed
        ["/again"],
    ]
    assert pool.open_connections == 1
    await pool.close()


async def test_request_on_a_fresh_connection_is_not_retried(raw_upstream, make_pool):
    async def hang_up(conn: Conn) -> None:
        await conn.read_request()

    upstream = await raw_upstream(hang_up)
    pool = make_pool()
    with pytest.raises(UpstreamClosed):
        await pool.send(upstream.origin, "GET", "/once", HEADERS)
    assert upstream.accepted == 1
    assert pool.open_connections == 0


async def test_post_is_not_retried_when_a_kept_alive_connection_closes(raw_upstream, make_pool):
    upstream = await raw_upstream(close_on_second_request)
    pool = make_pool()
    assert await get(pool, upstream.origin, "/warm") == echoed("GET", "/warm")
    with pytest.raises(UpstreamError):
        await pool.send(upstream.origin, "POST", "/orders", HEADERS)
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert len(posts) == 1  # reached the upstream once and was never sent again
    assert upstream.accepted == 1
    assert pool.open_connections == 0


async def test_put_with_a_body_is_not_retried_when_a_kept_alive_connection_closes(
    raw_upstream, make_pool, make_body
):
    upstream = await raw_upstream(close_on_second_request)
    pool = make_pool()
    assert await get(pool, upstream.origin, "/warm") == echoed("GET", "/warm")
    body = await make_body(b"payload")
    with pytest.raises(UpstreamError):
        await pool.send(
            upstream.origin, "PUT", "/doc", [], body.stream, 7
        )
    puts = [r for r in upstream.requests if r.method == "PUT"]
    assert len(puts) == 1
    assert upstream.accepted == 1
    assert pool.open_connections == 0


async def test_retry_goes_to_a_fresh_connection_even_with_other_idle_ones(
    raw_upstream, make_pool
):
    upstream = await raw_upstream(close_on_second_request)
    pool = make_pool()
    answers = await asyncio.gather(
        *(pool.send(upstream.origin, "GET", f"/warm/{i}", HEADERS) for i in range(2))
    )
    for answer in answers:
        async with answer:
            await answer.read()
    assert upstream.accepted == 2
    assert pool.open_connections == 2
    # Both kept-alive connections are stale now (the upstream closes each on its next
    # request); the retry must not try the second one as well.
    assert await get(pool, upstream.origin, "/again") == echoed("GET", "/again")
    assert upstream.accepted == 3


# -- limits and lifetimes ------------------------------------------------------------------

async def test_max_connections_holds_under_concurrency(raw_upstream, make_pool):
    async def slow_echo(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            await asyncio.sleep(0.03)
            await conn.answer(echoed(request.method, request.target))

    upstream = await raw_upstream(slow_echo)
    pool = make_pool(max_connections=2)
    seen_open: list[int] = []

    async def one(i: int) -> bytes:
        async with await pool.send(upstream.origin, "GET", f"/r/{i}", HEADERS) as answer:
            seen_open.append(pool.open_connections)
            return await answer.read()

    bodies = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(6))), LIVENESS)
    assert bodies == [echoed("GET", f"/r/{i}") for i in range(6)]
    assert upstream.max_active == 2  # both used, never more
    assert max(seen_open) == 2
    assert len(upstream.requests) == 6
    await pool.close()


async def test_a_cancelled_waiter_does_not_lose_the_free_connection(raw_upstream, make_pool):
    upstream = await raw_upstream(echo)
    pool = make_pool(max_connections=1)
    held = await pool.send(upstream.origin, "GET", "/held", HEADERS)
    await held.read()
    second = asyncio.create_task(get(pool, upstream.origin, "/second"))
    third = asyncio.create_task(get(pool, upstream.origin, "/third"))
    for _ in range(5):
        await asyncio.sleep(0)  # both are now waiting for room
    assert not second.done() and not third.done()
    held.release()  # wakes the second...
    second.cancel()  # ...which is cancelled before it can use the wake-up
    assert await asyncio.wait_for(third, LIVENESS) == echoed("GET", "/third")
    with pytest.raises(asyncio.CancelledError):
        await second
    assert upstream.accepted == 1
    assert pool.open_connections == 1
    await pool.close()


async def test_an_idle_connection_to_another_origin_makes_room(raw_upstream, make_pool):
    first = await raw_upstream(echo)
    second = await raw_upstream(echo)
    pool = make_pool(max_connections=1)
    assert await get(pool, first.origin, "/a") == echoed("GET", "/a")
    assert await asyncio.wait_for(get(pool, second.origin, "/b"), LIVENESS) == echoed(
        "GET", "/b"
    )
    await asyncio.wait_for(first.conns[0].peer_closed.wait(), LIVENESS)
    assert pool.open_connections == 1
    await pool.close()


async def test_idle_connection_is_closed_after_the_idle_timeout(raw_upstream, make_pool):
    upstream = await raw_upstream(echo)
    pool = make_pool(idle_timeout=0.2)
    assert await get(pool, upstream.origin, "/once") == echoed("GET", "/once")
    assert pool.open_connections == 1
    assert not upstream.conns[0].peer_closed.is_set()
    await asyncio.wait_for(upstream.conns[0].peer_closed.wait(), LIVENESS)
    assert pool.open_connections == 0
    assert await get(pool, upstream.origin, "/later") == echoed("GET", "/later")
    assert upstream.accepted == 2
    await pool.close()


# -- what the upstream may answer ----------------------------------------------------------

FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nhello"


@pytest.mark.parametrize(
    "interim",
    [
        [b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"],
        [b"HTTP/1.1 100 Continue\r\n\r\n",
         b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"],
    ],
    ids=["103", "100+103"],
)
@pytest.mark.parametrize("together", [True, False], ids=["one-write", "separate-writes"])
async def test_interim_answers_are_skipped(raw_upstream, make_pool, interim, together):
    async def early_hints(conn: Conn) -> None:
        request = await conn.read_request()
        assert request is not None
        if together:
            await conn.send(b"".join(interim) + FINAL)
        else:
            for part in [*interim, FINAL]:
                await conn.send(part)
                await asyncio.sleep(0.01)
        await echo(conn)

    upstream = await raw_upstream(early_hints)
    pool = make_pool()
    async with await pool.send(upstream.origin, "GET", "/page", HEADERS) as answer:
        assert (answer.status, answer.reason) == (200, "OK")
        assert answer.headers["X-Final"] == "yes"
        assert "Link" not in answer.headers
        assert await answer.read() == b"hello"
    assert await get(pool, upstream.origin, "/next") == echoed("GET", "/next")
    assert upstream.accepted == 1  # the connection stayed usable
    await pool.close()


async def test_answer_without_length_is_read_until_close_and_not_reused(
    raw_upstream, make_pool
):
    parts = [b"first part, ", b"second part, ", b"the end"]

    async def until_close(conn: Conn) -> None:
        request = await conn.read_request()
        assert request is not None
        if request.target != "/eof":
            await conn.answer(echoed(request.method, request.target))
            await echo(conn)
            return
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for part in parts:
            await asyncio.sleep(0.01)
            await conn.send(part)
        # returning closes the connection: that is where the body ends

    upstream = await raw_upstream(until_close)
    pool = make_pool()
    async with await pool.send(upstream.origin, "GET", "/eof", HEADERS) as answer:
        assert answer.status == 200
        assert answer.content_length is None
        assert await answer.read() == b"".join(parts)
    assert pool.open_connections == 0
    assert await get(pool, upstream.origin, "/next") == echoed("GET", "/next")
    assert upstream.accepted == 2
    await pool.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nthis is no header\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["ssh-banner", "bad-length", "bad-header", "bad-status", "binary", "length-and-chunked",
         "lengths-differ", "coding-not-chunked", "bare-lf", "switching-protocols"],
)
async def test_garbage_instead_of_http_is_an_invalid_answer(raw_upstream, make_pool, garbage):
    async def babble(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(garbage)
        await conn.drain_until_eof()  # stays open: only keygate can end it

    upstream = await raw_upstream(babble)
    pool = make_pool()
    with pytest.raises(InvalidAnswer) as raised:
        await pool.send(upstream.origin, "GET", "/", HEADERS)
    assert isinstance(raised.value, UpstreamError)
    assert pool.open_connections == 0
    await asyncio.wait_for(upstream.conns[0].peer_closed.wait(), LIVENESS)


async def test_head_answer_with_a_length_has_no_body_and_keeps_the_connection(
    raw_upstream, make_pool
):
    async def head_then_echo(conn: Conn) -> None:
        while (request := await conn.read_request()) is not None:
            if request.method == "HEAD":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                await conn.answer(echoed(request.method, request.target))

    upstream = await raw_upstream(head_then_echo)
    pool = make_pool()
    async with await pool.send(upstream.origin, "HEAD", "/file", HEADERS) as answer:
        assert answer.status == 200
        assert answer.content_length == 1000
        assert answer.content.is_eof()
        assert await asyncio.wait_for(answer.read(), LIVENESS) == b""
    assert pool.open_connections == 1
    assert await get(pool, upstream.origin, "/after") == echoed("GET", "/after")
    assert upstream.accepted == 1
    await pool.close()


# -- request framing -----------------------------------------------------------------------

async def test_body_of_known_length_goes_with_exactly_that_content_length(
    raw_upstream, make_pool, make_body
):
    upstream = await raw_upstream(echo)
    pool = make_pool()
    data = bytes(range(256)) * 400  # 102400 bytes, several socket writes
    body = await make_body(data[:1000], data[1000:50_000], data[50_000:])
    headers = [("Content-Type", "application/octet-stream")]  # the pool adds the length
    sending = pool.send(upstream.origin, "PUT", "/blob", headers, body.stream, len(data))
    async with await sending as a:
        assert await a.read() == echoed("PUT", "/blob", len(data))
    (request,) = upstream.requests
    port = upstream.origin.port
    assert request.head == (
        f"PUT /blob HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    assert request.body == data
    assert await get(pool, upstream.origin, "/next") == echoed("GET", "/next")
    assert upstream.accepted == 1  # the whole body went: the connection stays good
    await pool.close()


async def test_the_pool_alone_frames_the_body(raw_upstream, make_pool):
    """No body: no framing, but a client's ``Content-Length: 0`` (a POST an upstream may
    want a length for) is said as such; the framing is the pool's, never a caller's."""
    upstream = await raw_upstream(echo)
    pool = make_pool()
    async with await pool.send(upstream.origin, "POST", "/empty", HEADERS, None, 0) as a:
        assert await a.read() == echoed("POST", "/empty")
    async with await pool.send(upstream.origin, "GET", "/none", HEADERS, None, None) as a:
        assert await a.read() == echoed("GET", "/none")
    empty, none = upstream.requests
    assert empty.header("Content-Length") == ["0"] and empty.body == b""
    assert none.header("Content-Length") == [] and none.header("Transfer-Encoding") == []
    await pool.close()


async def test_body_of_unknown_length_goes_chunked(raw_upstream, make_pool, make_body):
    upstream = await raw_upstream(echo)
    pool = make_pool()
    parts = [b"alpha-", b"b" * 70_000, b"-omega"]
    body = await make_body(eof=False)
    sending = asyncio.create_task(
        pool.send(upstream.origin, "POST", "/upload", HEADERS, body.stream, None)
    )
    for part in parts:
        await body.send(part)
        await asyncio.sleep(0.01)
    await body.end()
    async with await asyncio.wait_for(sending, LIVENESS) as answer:
        assert await answer.read() == echoed("POST", "/upload", sum(map(len, parts)))
    (request,) = upstream.requests
    assert request.header("Transfer-Encoding") == ["chunked"]
    assert request.header("Content-Length") == []
    assert request.body == b"".join(parts)
    assert request.raw_body.endswith(b"\r\n0\r\n\r\n")
    assert await get(pool, upstream.origin, "/next") == echoed("GET", "/next")
    assert upstream.accepted == 1
    await pool.close()


async def swallow(conn: Conn) -> None:
    """Reads a request head and then whatever comes, never answering."""
    await conn.read_request(body=False)
    await conn.drain_until_eof()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_body_failing_midway_aborts_the_upstream_connection(
    raw_upstream, make_pool, make_body, chunked
):
    upstream = await raw_upstream(swallow)
    pool = make_pool(read_timeout=30)  # a broken body must not wait for a read timeout
    body = await make_body(b"first-part", eof=False)
    headers = [("Content-Type", "text/plain")]
    sending = asyncio.create_task(pool.send(
        upstream.origin, "POST", "/upload", headers, body.stream, None if chunked else 100
    ))
    await until(lambda: upstream.conns and b"first-part" in upstream.conns[0].received)
    body.cut()  # the client went away
    with pytest.raises(UpstreamError) as raised:
        await asyncio.wait_for(sending, LIVENESS)
    assert not isinstance(raised.value, UpstreamTimeout)
    conn = upstream.conns[0]
    await asyncio.wait_for(conn.peer_closed.wait(), LIVENESS)
    # exactly what came before the failure, and for chunked never the last chunk
    assert bytes(conn.received) == (b"a\r\nfirst-part\r\n" if chunked else b"first-part")
    assert pool.open_connections == 0


async def test_answer_before_the_body_ended_does_not_reuse_the_connection(
    raw_upstream, make_pool, make_body
):
    async def answer_early(conn: Conn) -> None:
        request = await conn.read_request(body=False)
        if request is None:
            return
        if request.target == "/early":
            await conn.answer(b"ok")
            await conn.drain_until_eof()
        else:
            await conn.answer(echoed(request.method, request.target))

    upstream = await raw_upstream(answer_early)
    pool = make_pool()
    body = await make_body(b"started", eof=False)
    sending = pool.send(upstream.origin, "POST", "/early", HEADERS, body.stream)
    async with await sending as answer:
        assert await answer.read() == b"ok"
        await until(lambda: b"started" in upstream.conns[0].received)
    # released with the body still open: the upstream must see it cut off
    conn = upstream.conns[0]
    await asyncio.wait_for(conn.peer_closed.wait(), LIVENESS)
    assert pool.open_connections == 0
    await body.send(b"late")
    await body.end()
    await asyncio.sleep(0.01)
    assert bytes(conn.received) == b"7\r\nstarted\r\n"
    assert await get(pool, upstream.origin, "/next") == echoed("GET", "/next")
    assert upstream.accepted == 2
    await pool.close()


async def test_read_timeout_does_not_run_while_the_body_is_still_being_sent(
    raw_upstream, make_pool, make_body
):
    upstream = await raw_upstream(echo)
    pool = make_pool(read_timeout=0.2)
    body = await make_body(eof=False)
    sending = asyncio.create_task(
        pool.send(upstream.origin, "PUT", "/slow-upload", HEADERS, body.stream, None)
    )
    for i in range(5):  # the client uploads for 0.5 s, the upstream reads along
        await body.send(b"piece %d;" % i)
        await asyncio.sleep(0.1)
    await body.end()
    async with await asyncio.wait_for(sending, LIVENESS) as answer:
        assert await answer.read() == echoed("PUT", "/slow-upload", 40)


@pytest.mark.parametrize("parts", [[b"abc"], [b"abcdef", b"gh"]], ids=["short", "long"])
async def test_body_not_matching_its_declared_length_aborts(
    raw_upstream, make_pool, make_body, parts
):
    """A body shorter or longer than its Content-Length would leave the kept-alive
    connection out of step (its tail read as the next request): abort instead."""
    async def read_head_then_drain(conn: Conn) -> None:
        await conn.read_request(body=False)
        await conn.drain_until_eof()

    upstream = await raw_upstream(read_head_then_drain)
    pool = make_pool(read_timeout=10 * LIVENESS)  # so only the abort can end it in time
    body = await make_body(*parts)
    headers = [*HEADERS, ("Content-Length", "5")]
    with pytest.raises(UpstreamError):
        sending = pool.send(upstream.origin, "PUT", "/n", headers, body.stream, 5)
        async with await asyncio.wait_for(sending, LIVENESS) as answer:
            await answer.read()
    conn = upstream.conns[0]
    await asyncio.wait_for(conn.peer_closed.wait(), LIVENESS)
    assert len(conn.received) <= 5  # never a byte past the declared length
    assert pool.open_connections == 0


async def test_a_body_ending_after_its_answer_leaves_no_timer_on_the_kept_connection(
    raw_upstream, make_pool, make_body
):
    """The read timeout starts when a body is out; when that is after the answer
    ended, the connection goes back to the pool and must not time out later, in the
    middle of its next request's (slow) upload."""
    async def answer_first_then_read(conn: Conn) -> None:
        first = await conn.read_request(body=False)
        assert first is not None
        await conn.answer(b"early")
        await conn.reader.readexactly(int(first.header("Content-Length")[0]))
        while (request := await conn.read_request()) is not None:
            await conn.answer(echoed(request.method, request.target, len(request.body)))

    upstream = await raw_upstream(answer_first_then_read)
    pool = make_pool(read_timeout=0.3)
    first_body = await make_body(eof=False)
    headers = [*HEADERS, ("Content-Length", "4")]
    sending = pool.send(upstream.origin, "PUT", "/1", headers, first_body.stream, 4)
    async with await sending as answer:
        assert await answer.read() == b"early"
        await first_body.send(b"late")
        await first_body.end()
        await asyncio.sleep(0.05)  # the body is out now, after the answer
    assert pool.open_connections == 1  # kept: answer read whole, body sent whole
    second_body = await make_body(eof=False)
    sending = asyncio.create_task(
        pool.send(upstream.origin, "PUT", "/2", HEADERS, second_body.stream, None)
    )
    for i in range(6):  # 0.6 s of upload, well past the first body's timer
        await second_body.send(b"piece %d;" % i)
        await asyncio.sleep(0.1)
    await second_body.end()
    async with await asyncio.wait_for(sending, LIVENESS) as answer:
        assert await answer.read() == echoed("PUT", "/2", 48)
    assert upstream.accepted == 1


# -- the request head ----------------------------------------------------------------------

def test_request_head_is_byte_exact():
    headers = [("Accept", "*/*"), ("X-Two", "1"), ("x-two", "2"), ("Content-Length", "3")]
    assert request_head("POST", "/a/b?c=1&d", "up.test:8080", headers, "") == (
        b"POST /a/b?c=1&d HTTP/1.1\r\nHost: up.test:8080\r\n"
        b"Accept: */*\r\nX-Two: 1\r\nx-two: 2\r\nContent-Length: 3\r\n\r\n"
    )
    assert request_head("POST", "/", "up.test", [("A", "b")], "Transfer-Encoding: chunked\r\n") == (
        b"POST / HTTP/1.1\r\nHost: up.test\r\nA: b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert request_head("GET", "/", "up.test", [], "") == b"GET / HTTP/1.1\r\nHost: up.test\r\n\r\n"


def test_request_head_gives_back_surrogateescaped_bytes():
    raw = b"caf\xc3\xa9 \xff\xfe"  # UTF-8 and bytes that are not UTF-8 at all
    value = raw.decode("utf-8", "surrogateescape")  # as aiohttp's server parser decodes
    head = request_head("GET", "/", "up.test", [("X-Name", value)], "")
    assert head == b"GET / HTTP/1.1\r\nHost: up.test\r\nX-Name: " + raw + b"\r\n\r\n"


@pytest.mark.parametrize(
    "header",
    [
        ("X-Evil", "a\r\nX-Injected: 1"),
        ("X-Evil", "a\nX-Injected: 1"),
        ("X-Evil", "a\rX-Injected: 1"),
        ("X-Evil", "a\r\n\r\nGET /smuggled HTTP/1.1"),
        ("X-Evil\r\nX-Injected", "1"),
        ("X-Evil\n", "1"),
    ],
    ids=["value-crlf", "value-lf", "value-cr", "value-second-request", "name-crlf", "name-lf"],
)
@pytest.mark.parametrize("framing", ["", "Transfer-Encoding: chunked\r\n"], ids=["", "chunked"])
def test_request_head_refuses_line_breaks(header, framing):
    with pytest.raises(UnforwardableHeader):
        request_head("GET", "/", "up.test", [("Accept", "*/*"), header], framing)


async def test_unforwardable_header_sends_nothing(raw_upstream, make_pool):
    upstream = await raw_upstream(echo)
    pool = make_pool()
    with pytest.raises(UnforwardableHeader):
        await pool.send(upstream.origin, "GET", "/", [("X-Evil", "a\r\nX-Injected: 1")])
    assert pool.open_connections == 0
    assert await get(pool, upstream.origin, "/clean") == echoed("GET", "/clean")
    assert upstream.accepted == 1
    assert [r.header("X-Injected") for r in upstream.requests] == [[]]
    await pool.close()


async def test_non_ascii_header_reaches_the_upstream_as_its_original_bytes(
    raw_upstream, make_pool
):
    upstream = await raw_upstream(echo)
    pool = make_pool()
    raw = b"Jos\xc3\xa9 \xff"
    headers = [("X-Name", raw.decode("utf-8", "surrogateescape"))]
    async with await pool.send(upstream.origin, "GET", "/", headers) as answer:
        await answer.read()
    (request,) = upstream.requests
    assert b"\r\nX-Name: " + raw + b"\r\n" in request.head
    await pool.close()


# -- TLS -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    ca_pem: str
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 (an IP SAN) it signed."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keygate test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("pki")
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    return Pki(ca_pem, cert_file, key_file)


async def test_https_upstream_with_a_trusted_ca(raw_upstream, make_pool, pki):
    upstream = await raw_upstream(echo, tls=pki.server_context())
    assert upstream.origin.scheme == "https"
    pool = make_pool(ssl_context=ssl.create_default_context(cadata=pki.ca_pem))
    assert await get(pool, upstream.origin, "/secure") == echoed("GET", "/secure")
    assert await get(pool, upstream.origin, "/again") == echoed("GET", "/again")
    assert upstream.accepted == 1  # kept alive over TLS too
    assert upstream.requests[0].header("Host") == [f"127.0.0.1:{upstream.origin.port}"]
    await pool.close()


async def test_https_upstream_with_an_untrusted_certificate_fails(raw_upstream, make_pool, pki):
    upstream = await raw_upstream(echo, tls=pki.server_context())
    pool = make_pool()  # the default context: the system's CAs, not the test's
    for _ in range(2):
        with pytest.raises(UpstreamError) as raised:
            await pool.send(upstream.origin, "GET", "/secure", HEADERS)
        assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
        assert pool.open_connections == 0
    assert upstream.requests == []


# -- connect failures and shutdown ---------------------------------------------------------

async def test_connection_refused_is_a_client_error(make_pool, closed_port):
    pool = make_pool(max_connections=1)
    origin = Origin.of(URL(f"http://127.0.0.1:{closed_port}"))
    for _ in range(3):  # each failure gives its slot back, or the third would wait forever
        with pytest.raises(UpstreamUnreachable):
            await asyncio.wait_for(pool.send(origin, "GET", "/", HEADERS), LIVENESS)
        assert pool.open_connections == 0


async def test_close_closes_idle_connections_and_refuses_new_requests(raw_upstream, make_pool):
    upstream = await raw_upstream(echo)
    pool = make_pool()
    answers = await asyncio.gather(
        *(pool.send(upstream.origin, "GET", f"/{i}", HEADERS) for i in range(2))
    )
    for answer in answers:
        async with answer:
            await answer.read()
    assert pool.open_connections == 2
    assert upstream.accepted == 2
    await pool.close()
    for conn in upstream.conns:
        await asyncio.wait_for(conn.peer_closed.wait(), LIVENESS)
    assert pool.open_connections == 0
    with pytest.raises(PoolClosed):
        await pool.send(upstream.origin, "GET", "/late", HEADERS)
    assert upstream.accepted == 2


async def test_connect_timeout_is_an_upstream_timeout_and_gives_its_slot_back(
    make_pool, unanswering_port
):
    pool = make_pool(connect_timeout=0.2, max_connections=1)
    origin = Origin.of(URL(f"http://127.0.0.1:{unanswering_port}"))
    for _ in range(2):  # the second would wait forever for the first one's slot
        with pytest.raises(UpstreamTimeout) as raised:
            await asyncio.wait_for(pool.send(origin, "GET", "/", HEADERS), LIVENESS)
        assert isinstance(raised.value, TimeoutError)  # what the proxy answers 504 for
        assert pool.open_connections == 0


# -- answers that must not be taken at face value ------------------------------------------

CHUNKED_ANSWER = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=\"a value\";flag\r\nhello\r\n2\r\n, \r\nA\r\n0123456789\r\n"
    b"0\r\nX-Checksum: 1234\r\nX-Other: yes\r\n\r\n"
)


async def test_chunked_answer_with_extensions_and_trailers_keeps_the_connection(
    raw_upstream, make_pool
):
    async def chunked(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(CHUNKED_ANSWER)

    upstream = await raw_upstream(chunked)
    pool = make_pool()
    for _ in range(3):
        async with await pool.send(upstream.origin, "GET", "/", HEADERS) as answer:
            assert answer.content_length is None
            assert "X-Checksum" not in answer.headers  # trailers are dropped
            assert await answer.read() == b"hello, 0123456789"
    assert upstream.accepted == 1
    await pool.close()


async def test_bytes_after_an_answer_are_never_read_as_the_next_answer(raw_upstream, make_pool):
    """An upstream (or what it proxies) that sends a second answer nobody asked for
    must not have it taken for the answer to the next request (response desync)."""
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

    async def smuggler(conn: Conn) -> None:
        request = await conn.read_request()
        if request is None:
            return
        if conn.index == 0:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + smuggled)
            await conn.drain_until_eof()
        else:
            await conn.answer(echoed(request.method, request.target))
            await echo(conn)

    upstream = await raw_upstream(smuggler)
    pool = make_pool()
    assert await get(pool, upstream.origin, "/1") == b"first"
    assert await get(pool, upstream.origin, "/2") == echoed("GET", "/2")
    assert upstream.accepted == 2
    await asyncio.wait_for(upstream.conns[0].peer_closed.wait(), LIVENESS)
    await pool.close()


async def test_an_idle_connection_that_talks_out_of_turn_is_closed(raw_upstream, make_pool):
    spoke = asyncio.Event()
    speak = asyncio.Event()

    async def chatty(conn: Conn) -> None:
        request = await conn.read_request()
        assert request is not None
        await conn.answer(echoed(request.method, request.target))
        if conn.index == 0:
            await speak.wait()
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
            spoke.set()
            await conn.drain_until_eof()
        else:
            await echo(conn)

    upstream = await raw_upstream(chatty)
    pool = make_pool()
    assert await get(pool, upstream.origin, "/1") == echoed("GET", "/1")
    speak.set()
    await asyncio.wait_for(spoke.wait(), LIVENESS)
    await asyncio.wait_for(upstream.conns[0].peer_closed.wait(), LIVENESS)
    assert await get(pool, upstream.origin, "/2") == echoed("GET", "/2")
    assert upstream.accepted == 2
    assert pool.open_connections == 1
    await pool.close()


@pytest.mark.parametrize(
    ("head", "kept"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 2\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", True),
    ],
    ids=["http11", "close", "close-in-a-list", "http10", "http10-keep-alive"],
)
async def test_a_connection_is_kept_only_when_the_answer_allows_it(
    raw_upstream, make_pool, head, kept
):
    async def answer(conn: Conn) -> None:
        # stays open whatever it said: keygate goes by what the answer says
        while await conn.read_request() is not None:
            await conn.send(head + b"ok")

    upstream = await raw_upstream(answer)
    pool = make_pool()
    for target in ("/1", "/2"):
        assert await get(pool, upstream.origin, target) == b"ok"
    assert upstream.accepted == (1 if kept else 2)
    await pool.close()


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly part\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly part\r\n0\r\n",
    ],
    ids=["content-length", "chunked", "chunked-without-its-last-line"],
)
async def test_an_answer_cut_short_is_an_error_never_a_short_body(raw_upstream, make_pool, cut):
    async def cut_short(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(cut)  # returning closes the connection

    upstream = await raw_upstream(cut_short)
    pool = make_pool(read_timeout=10 * LIVENESS)  # only the close can end it in time
    received = b""
    async with await pool.send(upstream.origin, "GET", "/", HEADERS) as answer:
        with pytest.raises(AnswerBrokeOff):
            async with asyncio.timeout(LIVENESS):
                async for chunk in answer.content.iter_chunked(4):
                    received += chunk
    assert b"only part".startswith(received)
    assert pool.open_connections == 0


async def test_a_reset_ends_a_body_read_until_close_with_an_error(raw_upstream, make_pool):
    """The end of a body without a length is the upstream's clean close; a reset says
    the answer broke off, and must not pass for its end."""
    first_read = asyncio.Event()

    async def reset_mid_body(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await first_read.wait()
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.writer.transport.abort()  # SO_LINGER 0: a reset, not a close

    upstream = await raw_upstream(reset_mid_body)
    pool = make_pool()
    async with await pool.send(upstream.origin, "GET", "/", HEADERS) as answer:
        assert answer.content_length is None
        assert await answer.content.readany() == b"partial"
        first_read.set()
        with pytest.raises(AnswerBrokeOff):
            await asyncio.wait_for(answer.content.readany(), LIVENESS)
    assert pool.open_connections == 0


async def test_an_upstream_silent_mid_body_times_out(raw_upstream, make_pool):
    async def stall(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst ten.")
        await conn.drain_until_eof()

    upstream = await raw_upstream(stall)
    pool = make_pool(read_timeout=0.2)
    async with await pool.send(upstream.origin, "GET", "/", HEADERS) as answer:
        assert await answer.content.readany() == b"first ten."
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(answer.content.readany(), LIVENESS)
    assert pool.open_connections == 0
    await asyncio.wait_for(upstream.conns[0].peer_closed.wait(), LIVENESS)


# -- backpressure both ways -------------------------------------------------------------------

BIG = 32 * 2**20  # more than the kernel's socket buffers hold, both ends together
BLOCK = bytes(range(256)) * 256  # 64 KiB


async def test_a_slow_reader_holds_the_upstream_back_and_is_not_timed_out(
    raw_upstream, make_pool
):
    """A client that reads slowly must not make keygate hold the answer in memory
    (reading from the upstream pauses), and the pause is not the upstream's silence:
    no read timeout while it lasts."""
    sent = 0

    async def flood(conn: Conn) -> None:
        nonlocal sent
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
        while sent < BIG:
            await conn.send(BLOCK)
            sent += len(BLOCK)
        await echo(conn)

    upstream = await raw_upstream(flood)
    pool = make_pool(read_timeout=0.3)
    async with await pool.send(upstream.origin, "GET", "/big", HEADERS) as answer:
        await asyncio.sleep(1.0)  # not reading, for more than the read timeout
        assert sent < BIG  # the upstream is held back
        # what keygate holds: up to the pause threshold, plus one read of the socket
        assert answer.content.buffered <= PAUSE_READING_AT + 256 * 1024
        received = 0
        async for chunk in answer.content.iter_chunked(65536):
            assert chunk == BLOCK[received % len(BLOCK):][:len(chunk)] or chunk == (
                (BLOCK * 2)[received % len(BLOCK):][:len(chunk)]
            )
            received += len(chunk)
        assert received == BIG
    assert await get(pool, upstream.origin, "/next") == echoed("GET", "/next")
    assert upstream.accepted == 1
    await pool.close()


async def test_a_slow_upstream_holds_the_clients_body_back(raw_upstream, make_pool, make_body):
    """An upstream that does not read must not make keygate take the client's whole
    body into its write buffer: keygate reads on only as the upstream drains."""
    go = asyncio.Event()
    digest = hashlib.sha256()

    async def slow(conn: Conn) -> None:
        request = await conn.read_request(body=False)
        assert request is not None
        await go.wait()
        received = 0
        while received < BIG:
            data = await conn.reader.read(2**20)
            digest.update(data)
            received += len(data)
        await conn.answer(b"%d" % received)

    upstream = await raw_upstream(slow)
    pool = make_pool(read_timeout=10 * LIVENESS)
    body = await make_body(*([BLOCK] * (BIG // len(BLOCK))))
    headers = [*HEADERS, ("Content-Length", str(BIG))]
    sending = asyncio.create_task(
        pool.send(upstream.origin, "PUT", "/big", headers, body.stream, BIG)
    )
    await asyncio.sleep(0.5)
    assert not sending.done()
    assert not body.stream.at_eof()  # keygate stopped taking it: the upstream is not reading
    go.set()
    async with await asyncio.wait_for(sending, 5 * LIVENESS) as answer:
        assert await answer.read() == b"%d" % BIG
    assert digest.digest() == hashlib.sha256(BLOCK * (BIG // len(BLOCK))).digest()
    await pool.close()
