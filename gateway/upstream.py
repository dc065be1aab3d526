"""keygate's HTTP/1.1 client to its upstreams: keep-alive connection pools, streaming
both ways, nothing else — on asyncio's public API alone.

Why not ``aiohttp.ClientSession``: a proxy needs none of what it does besides sending
bytes (cookies, redirects, auth, proxies, tracing, client middlewares, URL and header
normalisation), and measured here that machinery was the largest single cost of a
proxied request — more than authentication, authorization and header hygiene together
(see the README's "Performance"). Why not aiohttp's client protocol underneath a pool
of keygate's own: it is private, so code on it pins aiohttp to one minor release, and
with it the server-side parser that reads every untrusted request. So every part is
keygate's: the pool per origin, the request head and the body's framing here; a
connection (an :class:`asyncio.Protocol`) and the answer's body stream in
:mod:`gateway.upstream_connection`; the strict answer reader in
:mod:`gateway.upstream_parser`.

Security notes:

* The request head is built from header names and values that have already passed
  keygate's request reader and aiohttp's server-side parser (no CR, LF or NUL in them)
  or that keygate made itself; the head is still checked to have exactly one line per
  header, so no value can ever smuggle a header or a second request (CRLF injection).
* Answers are read strictly (:mod:`gateway.upstream_parser`): an answer whose end could
  be placed in two ways is refused (502), never guessed at.
* A request body that breaks off (the client left mid-upload) aborts the upstream
  connection instead of ending it cleanly: a truncated body must never pass for a
  whole one. For the same reason a chunked body's last chunk is sent only after the
  client's body ended properly.
* A connection goes back to the pool only when its answer was read to the end (as its
  framing says, with no byte after it), its request body was sent whole, and neither
  side asked to close; anything else is closed, so a half-read answer can never be
  taken for the start of the next one. Bytes an idle connection receives close it.
* A request is sent again only if it has no body, its method is idempotent, and it
  went out on a reused keep-alive connection that the upstream closed before sending
  a byte of its answer (RFC 9112 §9.3.1) — the one case where the upstream cannot
  have acted on it.
* Memory is bounded both ways (:mod:`gateway.upstream_connection`): reading from the
  upstream pauses while an answer's unread body is large (the client is slow), and the
  client's body is read on only when the upstream connection's write buffer has
  drained (the upstream is slow).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from multidict import CIMultiDictProxy
from yarl import URL

from .upstream_connection import (
    AnswerBody,
    AnswerBrokeOff,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamTimeout,
)
from .upstream_parser import InvalidAnswer, ResponseHead, UpstreamError

if TYPE_CHECKING:
    from aiohttp import StreamReader

__all__ = [
    "AnswerBrokeOff", "InvalidAnswer", "Origin", "PoolClosed", "RequestBodyFailed",
    "UnforwardableHeader", "UpstreamAnswer", "UpstreamClosed", "UpstreamError",
    "UpstreamPool", "UpstreamTimeout", "UpstreamUnreachable", "request_head",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UnforwardableHeader(ValueError):
    """A header name or value would break the request head (CR or LF in it)."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be made (refused, unreachable, TLS verification failed)."""


class RequestBodyFailed(UpstreamError):
    """The client's body broke off or did not match its length: the request was cut
    off on its way upstream."""


class PoolClosed(UpstreamError):
    """keygate is shutting down."""


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
        "_pool", "_origin", "_connection", "_writer", "_released",
        "status", "reason", "headers", "content_length", "content",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        origin: Origin,
        connection: UpstreamConnection,
        head: ResponseHead,
        writer: asyncio.Task[bool] | None,
    ):
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._writer = writer
        self._released = False
        self.status: int = head.status
        self.reason: str = head.reason
        self.headers: CIMultiDictProxy[str] = head.headers
        self.content_length: int | None = head.content_length
        assert connection.content is not None
        self.content: AnswerBody = connection.content

    async def read(self) -> bytes:
        """The whole body. Most small answers arrive with their head: then it is taken
        as it lies, without waiting."""
        content = self.content
        if content.is_eof():
            return content.take()
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
        connection = self._connection
        self._pool.release(self._origin, connection, body_sent and connection.reusable())


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
        self._idle: dict[Origin, list[tuple[float, UpstreamConnection]]] = {}
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
        ``Host`` or framing headers: the pool writes the framing of the body it writes
        (``Content-Length: body_length``, or chunked for a body of unknown length), so
        that what the upstream reads as the body is always exactly that body, whatever
        a caller passed on or dropped. ``body_length`` 0 without a body is said as
        ``Content-Length: 0``. Raises :class:`UpstreamError` (a :class:`TimeoutError`
        for timeouts) or :class:`UnforwardableHeader`."""
        if body is not None and body_length is None:
            framing = "Transfer-Encoding: chunked\r\n"
        elif body is not None or body_length == 0:
            framing = f"Content-Length: {body_length}\r\n"
        else:
            framing = ""
        head = request_head(method, target, origin.host_header, headers, framing)
        retry = body is None and method in IDEMPOTENT_METHODS
        fresh = False
        while True:
            connection, reused = await self._acquire(origin, fresh)
            answer_head = connection.begin(no_body=method == "HEAD")
            transport = connection.transport
            assert transport is not None
            writer = None
            if body is None:
                transport.write(head)
                connection.request_sent()
            elif body_length is not None and body.is_eof():
                # the whole body is here already (small uploads): one write, no task
                try:
                    data = body.read_nowait()
                except Exception as exc:  # the client's body broke off
                    self._discard(connection)
                    raise _body_failed(exc) from None
                if len(data) != body_length:
                    self._discard(connection)
                    raise RequestBodyFailed(
                        f"the body has {len(data)} bytes, not its length {body_length}"
                    )
                transport.write(head + data)
                connection.request_sent()
            else:
                transport.write(head)
                # the read timeout starts once the body is out (as in aiohttp's client):
                # an upload may take longer than the upstream may stay silent after it
                writer = asyncio.get_running_loop().create_task(
                    _send_body(connection, body, body_length)
                )
            try:
                final = await answer_head
            except BaseException as exc:
                self._discard(connection)
                if isinstance(exc, UpstreamClosed) and reused and retry:
                    retry, fresh = False, True  # once, and on a new connection
                    continue
                await _settle(writer)
                raise
            return UpstreamAnswer(self, origin, connection, final, writer)

    async def _acquire(self, origin: Origin, fresh: bool) -> tuple[UpstreamConnection, bool]:
        """A kept-alive connection to ``origin`` (most recently used first, as it is the
        least likely to have been closed by the upstream meanwhile), or with ``fresh``
        or none idle, a new one."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise PoolClosed("keygate is shutting down")
            idle = None if fresh else self._idle.get(origin)
            if idle:
                deadline = loop.time() - self.idle_timeout
                while idle:
                    since, connection = idle.pop()
                    if since > deadline and connection.usable:
                        return connection, True
                    self._discard(connection)
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

    async def _connect(
        self, origin: Origin, loop: asyncio.AbstractEventLoop
    ) -> UpstreamConnection:
        tls = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            tls = self._ssl_context
        read_timeout = self.read_timeout
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(loop, read_timeout), origin.host, origin.port,
                    ssl=tls, server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"connecting to {origin.host}:{origin.port} took over "
                f"{self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from None
        return connection

    def release(self, origin: Origin, connection: UpstreamConnection, reusable: bool) -> None:
        if not reusable or self._closed:
            self._discard(connection)
            return
        connection.idle()
        loop = connection.loop
        self._idle.setdefault(origin, []).append((loop.time(), connection))
        if self._room:
            self._wake_one()  # it may be for this origin; if not, it closes this one
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def _discard(self, connection: UpstreamConnection) -> None:
        connection.close()
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
        oldest: list[tuple[float, UpstreamConnection]] | None = None
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
            for since, connection in idle:
                if since > deadline and connection.usable:
                    keep.append((since, connection))
                else:
                    self._discard(connection)
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
            for _, connection in idle:
                self._discard(connection)
        self._idle.clear()


async def _send_body(
    connection: UpstreamConnection, body: StreamReader, length: int | None
) -> bool:
    """Copy the client's body upstream (chunked when ``length`` is None), then start the
    read timeout; True when it was sent whole. On any failure, or a body that does not
    match its declared length, the upstream connection is aborted, so the upstream sees
    a broken request rather than a short one that looks complete (or the start of the
    next request)."""
    transport = connection.transport
    assert transport is not None
    try:
        sent = 0
        while True:
            data = await body.readany()
            if not data:
                break
            if connection.closed:
                raise UpstreamClosed("the upstream closed the connection")
            sent += len(data)
            if length is None:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            elif sent > length:
                raise ValueError(f"the body is longer than its length {length}")
            else:
                transport.write(data)
            if connection.write_paused:
                await connection.drained()  # backpressure from a slow upstream
        if length is None:
            transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise ValueError(f"the body ended after {sent} of {length} bytes")
        connection.request_sent()
        return True
    except asyncio.CancelledError:
        connection.abort(RequestBodyFailed("the request was given up"))
        raise
    except UpstreamError as exc:
        connection.abort(exc)
        return False
    except Exception as exc:  # the client's body broke off (aiohttp's errors, or ours)
        connection.abort(_body_failed(exc))
        return False


def _body_failed(exc: Exception) -> RequestBodyFailed:
    """Named by its kind only: the message of an error about the client's body could
    quote the body."""
    return RequestBodyFailed(f"the request body could not be sent ({type(exc).__name__})")


async def _settle(writer: asyncio.Task[bool] | None) -> None:
    if writer is not None and not writer.done():
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
