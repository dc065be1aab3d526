"""keygate's HTTP/1.1 client to its upstreams: keep-alive connection pools, streaming
both ways, nothing else.

Why not ``aiohttp.ClientSession``: a proxy needs none of what it does besides sending
bytes (cookies, redirects, auth, proxies, tracing, client middlewares, URL and header
normalisation), and measured here that machinery was the largest single cost of a
proxied request — more than authentication, authorization and header hygiene together
(see the README's "Where the time goes"). What is kept from aiohttp is what must not be
hand-written: the response side is aiohttp's own client protocol (``ResponseHandler``:
the llhttp C parser, read timeouts, flow control, the connection-loss rules) and bodies
are aiohttp ``StreamReader``s. What is written here is small: a pool per origin, the
request head and the request body's framing.

Security notes:

* The request head is built from header names and values that have already passed
  aiohttp's server-side parser (llhttp rejects CR, LF and NUL in them) or that keygate
  made itself; the head is still checked to have exactly one line per header, so no
  value can ever smuggle a header or a second request (CRLF injection).
* A request body that breaks off (the client left mid-upload) aborts the upstream
  connection instead of ending it cleanly: a truncated body must never pass for a
  whole one. For the same reason a chunked body's last chunk is sent only after the
  client's body ended properly.
* A connection goes back to the pool only when its answer was read to the end, its
  request body was sent whole, and neither side asked to close; anything else is
  closed, so a half-read answer can never be taken for the start of the next one.
* A request is sent again only if it has no body, its method is idempotent, and it
  went out on a reused keep-alive connection that the upstream closed before answering
  (RFC 9112 §9.3.1) — the one case where the upstream cannot have acted on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import NamedTuple

from aiohttp import (
    ClientConnectionError,
    ClientError,
    ClientOSError,
    ServerDisconnectedError,
    ServerTimeoutError,
    StreamReader,
    hdrs,
)
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDictProxy
from yarl import URL

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
READ_BUFFER = 64 * 1024


class UnforwardableHeader(ValueError):
    """A header name or value would break the request head (CR or LF in it)."""


class InvalidAnswer(ClientError):
    """The upstream's answer is not HTTP/1.1 that keygate can pass on."""


class Origin(NamedTuple):
    """Where a connection goes: one pool per origin."""

    scheme: str
    host: str  # as connected to: IDNA-encoded, IPv6 without brackets
    port: int
    host_header: str  # as sent in Host: the port only when it is not the default

    @classmethod
    def of(cls, url: URL) -> Origin:
        assert url.raw_host is not None and url.port is not None
        return cls(url.scheme, url.raw_host, url.port, url.host_port_subcomponent or "")


def request_head(
    method: str, target: str, host: str, headers: list[tuple[str, str]], framing: str
) -> bytes:
    """The request line and header block, encoded as the values arrived (aiohttp's
    parser decodes with surrogateescape, so this gives back the client's bytes)."""
    lines = "\r\n".join(map(": ".join, headers)) + "\r\n" if headers else ""
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{lines}{framing}\r\n"
    # One line per header and nothing more: a CR or LF inside a name or value would
    # start a header (or a request) of the client's choosing.
    expected = len(headers) + 3 + (framing != "")
    if head.count("\n") != expected or head.count("\r") != expected:
        raise UnforwardableHeader("a header keygate would forward contains a line break")
    return head.encode("utf-8", "surrogateescape")


class UpstreamAnswer:
    """An upstream's answer: status, headers and a body stream (``content``). Leaving
    ``async with`` hands the connection back to the pool, or closes it when it cannot
    be reused safely."""

    __slots__ = (
        "_pool", "_origin", "_protocol", "_writer", "_released",
        "status", "reason", "headers", "content",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        origin: Origin,
        protocol: ResponseHandler,
        message,  # RawResponseMessage  # noqa: ANN001
        content: StreamReader,
        writer: asyncio.Task[bool] | None,
    ):
        self._pool = pool
        self._origin = origin
        self._protocol = protocol
        self._writer = writer
        self._released = False
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = content

    @property
    def content_length(self) -> int | None:
        value = self.headers.get(hdrs.CONTENT_LENGTH)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            return None

    async def read(self) -> bytes:
        """The whole body. Most small answers arrive with their head, so when the body is
        complete already it is taken as it lies, without a read loop."""
        content = self.content
        if content.is_eof():
            return content.read_nowait()
        return await content.read()

    async def __aenter__(self) -> UpstreamAnswer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        writer = self._writer
        body_sent = writer is None or (
            writer.done() and not writer.cancelled() and writer.result()
        )
        if writer is not None and not writer.done():
            writer.cancel()  # the upstream answered without reading all of it
        reusable = body_sent and self.content.is_eof()
        self._pool.release(self._origin, self._protocol, reusable)


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to every upstream, at most ``max_connections``
    open in all; idle ones are closed after ``idle_timeout`` seconds."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[tuple[float, ResponseHandler]]] = {}
        self._open = 0
        self._room: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def send(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: StreamReader | None = None,
        body_length: int | None = None,
    ) -> UpstreamAnswer:
        """Send a request and wait for the head of its answer. ``headers`` must not hold
        ``Host`` or framing headers other than the body's own ``Content-Length``; a body
        of unknown length goes chunked."""
        chunked = body is not None and body_length is None
        head = request_head(
            method, target, origin.host_header, headers,
            "Transfer-Encoding: chunked\r\n" if chunked else "",
        )
        retry = body is None and method in IDEMPOTENT_METHODS
        fresh = False
        while True:
            protocol, reused = await self._acquire(origin, fresh)
            # line, field and header-count limits: aiohttp's client defaults, as before
            protocol.set_response_params(
                skip_payload=method == "HEAD",
                read_until_eof=True,
                auto_decompress=False,
                read_timeout=self.read_timeout,
                read_bufsize=READ_BUFFER,
            )
            transport = protocol.transport
            assert transport is not None
            transport.write(head)
            writer = None
            if body is None:
                protocol.start_timeout()
            else:
                # the read timeout starts once the body is out (as in aiohttp's client):
                # an upload may take longer than the upstream may stay silent after it
                writer = asyncio.get_running_loop().create_task(
                    _send_body(protocol, body, body_length)
                )
            try:
                while True:
                    message, content = await protocol.read()
                    # 1xx answers are interim (RFC 9110 §15.2); 101 would be an upgrade
                    if not 100 <= message.code < 200 or message.code == 101:
                        break
            except BaseException as exc:
                self._discard(protocol)
                stale = isinstance(exc, (ServerDisconnectedError, ClientOSError))
                if stale and reused and retry:  # retry implies no body, so no writer
                    retry, fresh = False, True  # once, and on a new connection
                    continue
                await _settle(writer)
                if isinstance(exc, HttpProcessingError):
                    raise InvalidAnswer(f"invalid HTTP answer: {exc.message}") from None
                raise
            return UpstreamAnswer(self, origin, protocol, message, content, writer)

    async def _acquire(self, origin: Origin, fresh: bool) -> tuple[ResponseHandler, bool]:
        """A kept-alive connection to ``origin`` (most recently used first, as it is the
        least likely to have been closed by the upstream meanwhile), or with ``fresh``
        or none idle, a new one."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ClientConnectionError("keygate is shutting down")
            idle = None if fresh else self._idle.get(origin)
            if idle:
                deadline = loop.time() - self.idle_timeout
                while idle:
                    since, protocol = idle.pop()
                    if since > deadline and protocol.is_connected() and not protocol.should_close:
                        return protocol, True
                    self._discard(protocol)
            if self._open < self.max_connections:
                break
            if self._close_one_idle():  # an idle connection elsewhere makes room
                continue
            waiter = loop.create_future()
            self._room.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on the wake-up this waiter can no longer use
                else:
                    self._room.remove(waiter)
                raise
        self._open += 1
        try:
            return await self._connect(origin, loop), False
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> ResponseHandler:
        tls = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            tls = self._ssl_context
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: ResponseHandler(loop), origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise ServerTimeoutError(
                f"connecting to {origin.host}:{origin.port} took over "
                f"{self.connect_timeout} s"
            ) from None
        except OSError as exc:
            raise ClientOSError(
                exc.errno, f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from None
        return protocol

    def release(self, origin: Origin, protocol: ResponseHandler, reusable: bool) -> None:
        if (
            not reusable or self._closed or protocol.should_close
            or not protocol.is_connected()
        ):
            self._discard(protocol)
            return
        # An idle connection has no read deadline: a body that finished after its answer
        # started the timer again, which must not fire on the connection's next request.
        protocol._drop_timeout()
        loop = asyncio.get_running_loop()
        self._idle.setdefault(origin, []).append((loop.time(), protocol))
        if self._room:
            self._wake_one()  # it may be for this origin; if not, it closes this one
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def _discard(self, protocol: ResponseHandler) -> None:
        protocol.close()
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _close_one_idle(self) -> bool:
        """Close the longest-idle connection of any origin, to make room."""
        oldest: list[tuple[float, ResponseHandler]] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0][0] < oldest[0][0]):
                oldest = idle
        if oldest is None:
            return False
        self._discard(oldest.pop(0)[1])
        return True

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_timeout
        for origin, idle in list(self._idle.items()):
            keep = []
            for since, protocol in idle:
                if since > deadline and protocol.is_connected():
                    keep.append((since, protocol))
                else:
                    self._discard(protocol)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        if self._idle:
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    async def close(self) -> None:
        """Close every idle connection; busy ones close when their answer is done."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for _, protocol in idle:
                self._discard(protocol)
        self._idle.clear()


async def _send_body(protocol: ResponseHandler, body: StreamReader, length: int | None) -> bool:
    """Copy the client's body upstream (chunked when ``length`` is None), then start the
    read timeout; True when it was sent whole. On any failure, or a body that does not
    match its declared length, the upstream connection is aborted, so the upstream sees
    a broken request rather than a short one that looks complete (or the start of the
    next request)."""
    transport = protocol.transport
    try:
        assert transport is not None
        sent = 0
        while True:
            data = await body.readany()
            if not data:
                break
            sent += len(data)
            if length is None:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            elif sent > length:
                raise ValueError(f"the body is longer than its length {length}")
            else:
                transport.write(data)
            await protocol._drain_helper()  # backpressure from a slow upstream
        if length is None:
            transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise ValueError(f"the body ended after {sent} of {length} bytes")
        protocol.start_timeout()
        return True
    except asyncio.CancelledError:
        protocol.abort()
        raise
    except Exception:
        protocol.abort()
        return False


async def _settle(writer: asyncio.Task[bool] | None) -> None:
    if writer is not None and not writer.done():
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
