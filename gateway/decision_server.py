"""The decision port's server: keygate's own HTTP/1.1, for one kind of request.

A decision request is a head and nothing else (nginx ``auth_request`` and Traefik send
no body; Envoy ``ext_authz`` sends one only when told to buffer the client's, and
keygate decides without it), and its answer is a status line, a few headers and at
most a small JSON body. aiohttp's server, made for every kind of request, spent more
instructions on one of them than keygate's whole decision (``bench/run.py
--instructions``): a second parse after the connection guard's reading, a request
object, a response object and their machinery. So this port is served by an
:class:`asyncio.Protocol` of its own:

* **Each head is read once**, by the connection guard's strict reader
  (:class:`gateway.framing.RequestReader`) with :func:`gateway.http_head.read_request`,
  which gives :func:`~gateway.http_head.read_head`'s verdict (so the same malformed
  heads are refused the same way as on every other port, in the one error shape, with
  ``Connection: close``; a head that called ``/nginx`` in the nginx form, as
  ``auth_request`` can pass it on) and, in the same pass, the request line and the fields,
  decoded as aiohttp decodes them (UTF-8, undecodable bytes kept as surrogates); once
  a connection's heads keep one shape, in one match (``gateway.decision_heads``).
* **Bodies are never read**: the decision is answered from the head, and whatever body
  the head announces (``Content-Length`` or chunked) is followed by the reader only
  to find where the next request begins, and dropped. A body's bytes are never taken
  for a request.
* **Keep-alive and pipelining**: requests are decided one at a time per connection
  and answered in the order they came; HTTP/1.0 closes unless it asks for keep-alive;
  ``Connection: close`` is honoured (the answer says so, and nothing after that
  request is read).
* **Bounded**: at most :data:`MAX_WAITING` requests wait behind the one being decided,
  and a client that does not read its answers is not read from (reading stops while
  the answers it has not taken exceed the transport's high-water mark, and the guard
  cuts it after ``body_timeout``), so no client grows keygate's memory.
* **The answer's bytes are written directly**: the status line, the headers that
  :class:`gateway.decision.DecisionPort` decided (identity headers, or the error's),
  ``X-Request-Id``, ``Server: keygate``, ``Content-Length``, ``Date`` and, when the
  connection closes after it (or an HTTP/1.0 one stays open), ``Connection``.

Everything else is as on the other ports: the connection guard's deadlines and cap
(this protocol is a :class:`gateway.connections.GuardedProtocol`), the request id (a
client's well-formed ``X-Request-Id`` is kept), the access log line (through the same
:class:`gateway.accesslog.AccessLogger`), and logs that never carry request bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from time import perf_counter
from urllib.parse import unquote

from aiohttp.abc import AbstractAccessLogger
from multidict import CIMultiDict

from .accesslog import ACCOUNT, APP_KEY, CLIENT, ORIGINAL_REQUEST, ROUTE
from .connections import CLOSED, REQUEST, ConnectionGuard, GuardedProtocol
from .decision import HOST, DecisionAnswer, DecisionPort
from .decision_heads import ShapedReader
from .errors import GatewayError
from .framing import STOPPED, RequestReader
from .http_head import Refusal, RequestHead, read_request
from .middleware import (
    ERROR_CODE,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    SERVER,
    new_request_id,
    request_id_for,
)

log = logging.getLogger("keygate.decision")

# Requests read and waiting behind the one being decided, per connection; past it the
# connection is not read from until they are answered (front proxies do not pipeline:
# this bounds what a client that does can make keygate hold).
MAX_WAITING = 32
_HEAD_METHOD = "HEAD"
_HTTP_10 = "HTTP/1.0"
_HTTP_11 = "HTTP/1.1"
_REQUEST_ID = f"{REQUEST_ID_HEADER}: "


def _discard(_data: bytes) -> None:
    """Where the reader's accepted bytes go: the heads come through ``on_head``, and
    bodies are not read."""


class _StatusLines(dict[tuple[str, int], str]):
    """``HTTP/1.x status reason`` lines, made once per version and status."""

    def __missing__(self, key: tuple[str, int]) -> str:
        version, status = key
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        line = self[key] = f"{version} {status} {reason}\r\n"
        return line


_STATUS_LINES = _StatusLines()


class _LoggedRequest(dict):  # type: ignore[type-arg]
    """What :class:`~gateway.accesslog.AccessLogger` reads of a request, learned while
    answering it (the keys it looks up, its method, path and peer)."""

    __slots__ = ("method", "path", "remote")


class _LoggedResponse(dict):  # type: ignore[type-arg]
    __slots__ = ("status", "body_length")


class DecisionServer:
    """The decision port: a listener behind the connection guard, its connections, and
    their graceful end (:meth:`cleanup`, as the other ports' runners)."""

    def __init__(self, port: DecisionPort, guard: ConnectionGuard,
                 access_log: AbstractAccessLogger | None = None):
        self.port = port
        self.guard = guard
        self.access_log = access_log
        self.connections: set[DecisionConnection] = set()
        self.deciding = 0  # decisions running, on every connection
        self.closing = False
        # the Date header's value, and what ends the usual answer, kept by _tick
        self.date = ""
        self.kept_alive_tail = ""
        self._dated(time.time())
        self._ticking: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None

    async def listen(self, host: str, port: int, reuse_port: bool = False) -> asyncio.Server:
        listener = await self.guard.listen_with(lambda: DecisionConnection(self), self,
                                                host, port, reuse_port)
        if self._ticking is None:
            self._tick()
        return listener

    def _tick(self) -> None:
        """The Date header, made once a second rather than per answer."""
        now = time.time()
        self._dated(now)
        self._ticking = asyncio.get_running_loop().call_later(1.0 - now % 1.0, self._tick)

    def _dated(self, now: float) -> None:
        self.date = date = formatdate(now, usegmt=True)
        self.kept_alive_tail = (
            f"\r\nServer: {SERVER}\r\nContent-Length: 0\r\nDate: {date}\r\n\r\n")

    async def cleanup(self) -> None:
        """Stop serving gracefully: idle connections close now, a connection in a
        request closes once its decision is answered (requests waiting behind it are
        not answered). Returns when every connection has closed and no decision runs;
        the caller bounds the wait (``shutdown_timeout``) and cuts what is left."""
        self.closing = True
        if self._ticking is not None:
            self._ticking.cancel()
        for connection in list(self.connections):
            connection.shut()
        if self.connections or self.deciding:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def settled(self) -> None:
        """A connection or its serving ended: wake :meth:`cleanup` when it was the last."""
        drained = self._drained
        if drained is not None and not self.connections and not self.deciding \
                and not drained.done():
            drained.set_result(None)


class DecisionConnection(GuardedProtocol):
    """One client connection of the decision port (see the module docstring).

    The protocol's callbacks read heads into :attr:`waiting`; one task per connection
    (:meth:`serve`, started with its first request) decides them in order and writes
    the answers, waiting on a future when there is nothing to do: per request that is
    a future rather than a task."""

    __slots__ = ("server", "waiting", "serving", "wake", "peer", "trusted", "local_host",
                 "reading", "eof", "stopped")

    def __init__(self, server: DecisionServer):
        super().__init__(server.guard, server, RequestReader(self.head_read, ShapedReader()))
        self.server = server
        # requests read and not yet decided (and a refusal, answered in its turn)
        self.waiting: deque[RequestHead | Refusal] = deque()
        self.serving: asyncio.Task[None] | None = None
        self.wake: asyncio.Future[None] | None = None  # what serve() waits on, idle
        self.peer = ""
        self.trusted = False  # the peer may ask (decided once: it is the same peer)
        self.local_host = ""
        self.reading = True
        self.eof = False
        self.stopped = False  # the reader stopped, and this connection has seen why

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.guard.admit(self):
            return
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.trusted = self.server.port.trusts(self.peer)
        if not self.trusted:
            # Answered 403 whatever it sends: a shape learned from its heads (a pattern
            # compiled, as costly as a hundred heads read) would be work done for nothing,
            # at a stranger's bidding, four times per connection.
            self.reader.read = read_request
        # aiohttp's host for a request without Host: the address it arrived on
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and local:
            self.local_host = f"[{local[0]}]" if len(local) == 4 else str(local[0])

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        guard = self.guard
        self.heard = guard.clock()
        self.received += len(data)
        reader = self.reader
        reader.feed(data, _discard)
        if reader.state == STOPPED and not self.stopped and self.reader_stopped():
            return
        if self.waiting:
            self.serve_waiting()
        guard.settle(self)

    def eof_received(self) -> bool | None:
        # A client that sends its requests and shuts its side (printf … | nc) still gets
        # its answers: the connection closes after the last one.
        if self.state == CLOSED or not self.pending:
            return None
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        self.reader.on_head = None  # no cycle left to collect
        self.waiting.clear()
        if self.wake is not None:
            self.wake.cancel()  # serve() ends
            self.wake = None
        server = self.server
        server.connections.discard(self)
        server.settled()

    def pause_writing(self) -> None:
        self.writing_paused()
        self.flow()

    def resume_writing(self) -> None:
        self.writing_resumed()
        self.flow()
        if self.waiting and self.state != CLOSED:
            self.serve_waiting()

    # -- reading -----------------------------------------------------------------------
    def head_read(self, head: RequestHead) -> None:
        """The reader accepted a head (called inside ``feed``)."""
        self.waiting.append(head)
        self.pending += 1
        if len(self.waiting) > MAX_WAITING:
            self.flow()

    def reader_stopped(self) -> bool:
        """The reader stopped (once): queue a refused head's answer behind the requests
        read before it, or abort on a body that broke its framing (the decision may be
        answered already; a cut connection is the only way left to say so). True if
        the connection is gone."""
        self.stopped = True
        reader = self.reader
        if reader.refusal is not None:
            self.waiting.append(reader.refusal)
            self.pending += 1
            self.guard.note_refusal(self, reader.refusal)
        elif reader.broken is not None:
            self.guard.note_refusal(self, reader.broken)
            self.abort()
            return True
        return False  # or it stopped after a request that closes the connection

    def flow(self) -> None:
        """Read from the client only while it takes its answers and few requests wait."""
        transport = self.transport
        if transport is None or self.state == CLOSED or transport.is_closing():
            return
        wanted = self.write_paused_at is None and len(self.waiting) <= MAX_WAITING
        if wanted != self.reading:
            self.reading = wanted
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # -- deciding ----------------------------------------------------------------------
    def serve_waiting(self) -> None:
        """Requests wait: start :meth:`serve`, or wake it if it waits for them."""
        wake = self.wake
        if wake is not None:
            self.wake = None
            wake.set_result(None)
        elif self.serving is None:
            self.serving = asyncio.get_running_loop().create_task(self.serve())

    async def serve(self) -> None:
        """Decide the waiting requests one at a time and answer them in order; when
        none waits (or the client takes no answers), wait to be woken."""
        loop = asyncio.get_running_loop()
        server = self.server
        port = server.port
        waiting = self.waiting
        try:
            while self.state != CLOSED:
                if not waiting or self.write_paused_at is not None:
                    wake = self.wake = loop.create_future()
                    await wake  # cancelled when the connection is lost
                    continue
                item = waiting.popleft()
                if not self.reading and len(waiting) <= MAX_WAITING:
                    self.flow()
                if isinstance(item, Refusal):
                    self.answer_refusal(item)
                    return
                _, closes, method, target, version, fields = item
                headers = CIMultiDict(fields)
                host = headers.get(HOST)
                request_id = request_id_for(headers.get(REQUEST_ID_HEADER))
                started = perf_counter() if server.access_log is not None else 0.0
                self.active = 1
                server.deciding += 1
                try:
                    answer = await port.answer(
                        method, target, self.local_host if host is None else host, headers,
                        self.peer, self.trusted, request_id)
                finally:
                    self.active = 0
                    server.deciding -= 1
                if self.state == CLOSED:
                    return
                # a peer that may not ask is answered once: nothing it sends next could
                # be answered otherwise, and a body it streams on would hold the
                # connection for as long as it likes
                if not self.write(method, target, request_id, answer, version,
                                  closes or not self.trusted, started):
                    return
        except asyncio.CancelledError:
            return
        except Exception as exc:  # a bug here: no traceback, it may quote the request
            log.error("a decision connection failed (%s); closing it", type(exc).__name__)
            self.abort()
        finally:
            self.serving = None
            server.settled()

    def write(self, method: str, target: str, request_id: str, answer: DecisionAnswer,
              version: str, closes: bool, started: float) -> bool:
        """Write the answer; False if the connection closes after it."""
        server = self.server
        transport = self.transport
        assert transport is not None
        closes = closes or server.closing
        head_only = method == _HEAD_METHOD
        try:
            data = self.encode(answer, request_id, version, closes, head_only)
        except ValueError:  # a header value keygate made cannot be sent: a bug
            log.error("an answer's header could not be written (request id %s)", request_id)
            answer = DecisionAnswer()
            server.port.refuse(answer, None, GatewayError(), request_id)
            data = self.encode(answer, request_id, version, closes, head_only)
        transport.write(data)
        self.pending -= 1
        self.answered += 1
        if server.access_log is not None:
            self.log_access(method, target, request_id, answer, len(data), started)
        if closes or (self.eof and not self.pending):
            self.close()
            return False
        if self.state == REQUEST:
            self.since = self.guard.clock()  # the last sign of progress (guard's _overdue)
        self.guard.settle(self)
        return True

    def answer_refusal(self, refusal: Refusal) -> None:
        """A refused head's turn: its refusal (in the nginx form if it called
        ``/nginx``), then the connection closes (nothing the client sent after it was
        read)."""
        transport = self.transport
        assert transport is not None
        started = perf_counter()
        request_id = new_request_id()
        answer = DecisionAnswer()
        port = self.server.port
        port.refuse(answer, port.form_of_refused(self.reader.refused_start), refusal,
                    request_id)
        data = self.encode(answer, request_id, "HTTP/1.1", True, False)
        transport.write(data)
        self.pending -= 1
        self.answered += 1
        if self.server.access_log is not None:
            self.log_access("-", "-", request_id, answer, len(data), started)
        self.close()

    def encode(self, answer: DecisionAnswer, request_id: str, version: str, closes: bool,
               head_only: bool) -> bytes:
        """The answer's bytes. Raises ValueError if a header value holds a line break
        (or cannot be encoded): nothing a client sent can, the reader refuses them."""
        headers = answer.headers
        body = answer.body
        if body or closes or version != _HTTP_11:
            if not closes:
                # HTTP/1.0 closes unless it asked otherwise (then it is told it may not)
                connection = "Connection: keep-alive\r\n" if version == _HTTP_10 else ""
            else:
                connection = "" if version == _HTTP_10 else "Connection: close\r\n"
            tail = (f"\r\nServer: {SERVER}\r\nContent-Length: {len(body)}\r\n"
                    f"Date: {self.server.date}\r\n{connection}\r\n")
        else:
            tail = self.server.kept_alive_tail  # the usual answer: allowed, kept alive
        status = _STATUS_LINES[version, answer.status]
        if headers:
            fields = "\r\n".join(map(": ".join, headers))
            breaks = len(headers) - 1
            if fields.count("\n") != breaks or fields.count("\r") != breaks:
                raise ValueError("a line break in a header value")
            text = f"{status}{fields}\r\n{_REQUEST_ID}{request_id}{tail}"
        else:
            text = f"{status}{_REQUEST_ID}{request_id}{tail}"
        head = text.encode("utf-8", "surrogateescape")  # values as the client sent them
        return head if head_only or not body else head + body

    def close(self) -> None:
        """Close once what was written is sent. The guard keeps the connection until
        it is gone: a client that does not read that last answer is cut at the
        deadline, as any other."""
        self.waiting.clear()
        if self.transport is not None:
            self.transport.close()
        if self.state != CLOSED:
            self.guard.settle(self)

    def shut(self) -> None:
        """The server stops: close now when idle, else after the decision running."""
        self.waiting.clear()
        self.pending = self.active
        if not self.active:
            self.close()

    def log_access(self, method: str, target: str, request_id: str, answer: DecisionAnswer,
                   sent: int, started: float) -> None:
        access_log = self.server.access_log
        assert access_log is not None
        if not access_log.enabled:
            return
        request = _LoggedRequest()
        request.method = method
        request.path = unquote(target.partition("?")[0])
        request.remote = self.peer
        request[REQUEST_ID] = request_id
        for key, value in ((ROUTE, answer.route), (ACCOUNT, answer.account),
                           (APP_KEY, answer.app_key), (CLIENT, answer.client),
                           (ORIGINAL_REQUEST, answer.original)):
            if value is not None:
                request[key] = value
        response = _LoggedResponse()
        response.status = answer.status
        response.body_length = sent
        if answer.error_code is not None:
            response[ERROR_CODE] = answer.error_code
        access_log.log(request, response, perf_counter() - started)  # type: ignore[arg-type]
