"""The connection guard: no anonymous client can exhaust a keygate process.

Every client connection of a process, on all its ports, passes through one
:class:`ConnectionGuard`. Each port listens with ``loop.create_server`` and a protocol
factory of the guard's: :class:`GuardedConnection` sits between asyncio's transport and
aiohttp's protocol (made by aiohttp's documented protocol factory, ``web.Server``), and
passes the client's bytes through :class:`~gateway.framing.RequestReader` on their way.
aiohttp never asks a transport for its protocol on the server side, so nothing there
reaches the wrapper by mistake; asyncio's sendfile fallback (file responses on uvloop)
swaps in a protocol of its own for the transfer and then restores the wrapper. The
decision port has no aiohttp behind it: its connections (``gateway.decision_server``)
are guarded protocols themselves (:class:`GuardedProtocol`), reading each head once
through the same reader, under the same deadlines and cap.

What the guard enforces, and why:

* **Deadlines** (slowloris, idle hoarding). A connection is in one of three states:
  waiting for a head (``header_timeout`` from connecting, or from the first byte of the
  next request: trickling bytes does not extend it), in a request (while the body is
  incomplete, the client may not pause longer than ``body_timeout``, and past
  ``body_timeout`` from the request's start it must have sent ``body_min_rate`` bytes a
  second on average: a byte now and then would otherwise hold a busy connection, which
  the cap below cannot evict, for ever; nor may it stop reading an answer for longer
  than ``body_timeout``), or idle between requests (``keepalive_timeout``). Past a
  deadline the connection is closed without a word: a client that is not sending has
  nothing to read an answer with. One periodic sweep checks them, so a request pays a
  few attribute writes, never a timer.
* **A cap** (descriptor exhaustion). ``max_connections`` connections per process across
  its ports, so attackers on one port cannot take the descriptors another port, the
  upstreams or the store need. At the cap a new connection evicts the oldest one that
  is idle or still sending its head (two ordered maps: O(1)); if every connection is in
  a request, the new one is answered ``503`` in keygate's error shape, written straight
  to its socket, and closed: it never reaches aiohttp.
* **Malformed requests** are refused in keygate's error shape without echoing a byte of
  them (see ``gateway.framing``). aiohttp writes pipelined answers in order, so the
  refusal is not written here but given by the handler of the stand-in request that
  replaces the refused head: ``errors_as_json`` finds the connection of each request
  (:func:`guarded`, by ``request.transport``) and answers the first request carrying
  the stand-in's marker header after a refusal with it. A marker, not a count of
  requests: a count would point at the wrong request if aiohttp ever answered one
  without calling the handler; a client forging the marker only gets its own request
  refused, and nothing it sends after a refusal is passed on. (The decision port's own
  server needs no stand-in: it queues the refusal behind the requests read before it.)
* **Bookkeeping that went wrong** cannot pin a connection: one in a request with no
  handler running and no body to wait for is closed after ``keepalive_timeout``.
* **Logs** never carry request bytes, and are rate-limited: aiohttp's server gets
  :func:`server_logger`, which drops tracebacks (their exceptions quote the input), and
  the guard logs one line per refusal without the request, both at most
  :data:`LOG_LINES_PER_MINUTE` a minute plus one line saying how many were dropped.
* **Metrics** (when ``metrics_listen`` is set): open connections per listening port,
  moved when a connection is admitted or forgotten (per connection, never per request),
  and refusals by code; the log is rationed, the count is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .framing import REFUSAL_MARKER, Refusal, RequestReader
from .settings import Settings
from .telemetry import ConnectionMetrics, connection_metrics

log = logging.getLogger("keygate.connections")

LISTEN_BACKLOG = 128
# Descriptors kept for what is not a client connection: listening sockets, the store's
# pub/sub connection, log and policy files, the event loop's own; and the connections
# one turn of the event loop may accept on two ports and then refuse or evict (a closed
# socket is released only on the next turn).
FILE_RESERVE = 64 + 2 * LISTEN_BACKLOG
MIN_CONNECTIONS = 16
CAP_WITHOUT_FILE_LIMIT = 10000
LOG_LINES_PER_MINUTE = 10

TOO_MANY_CONNECTIONS = Refusal(
    503, "too_many_connections",
    "keygate is at its connection limit and every connection is busy; retry shortly",
)

HEAD, REQUEST, IDLE, CLOSED = range(4)

_GUARDED: dict[asyncio.BaseTransport, GuardedConnection] = {}


def guarded(transport: asyncio.BaseTransport | None) -> GuardedConnection | None:
    """The guarded connection a request arrived on (None if it is not guarded)."""
    return _GUARDED.get(transport) if transport is not None else None


class GuardedProtocol(asyncio.Protocol):
    """What the guard keeps of one client connection, whatever serves it: its state and
    deadlines' clocks, its request reader, and how to abort it. :class:`GuardedConnection`
    serves aiohttp's ports; ``gateway.decision_server`` serves the decision port with
    one of its own."""

    __slots__ = (
        "guard", "listener", "transport", "reader", "state", "since", "heard", "pending",
        "active", "answered", "write_paused_at", "counted_in", "received", "busy_at",
        "busy_received",
    )

    def __init__(self, guard: ConnectionGuard, listener: object,
                 reader: RequestReader | None = None):
        self.guard = guard
        self.listener = listener  # what it was accepted for: its port's gauge is keyed by it
        self.transport: asyncio.Transport | None = None
        self.reader = reader if reader is not None else RequestReader()
        self.state = CLOSED
        self.since = 0.0  # when the connection entered its state
        self.heard = 0.0  # when the client last sent bytes
        self.pending = 0  # requests read and not yet answered
        self.active = 0  # of them, those whose handler is running
        self.answered = 0
        self.write_paused_at: float | None = None
        self.counted_in: Any = None  # the open-connections gauge it was counted in
        self.received = 0  # bytes the client has sent on this connection
        # when it last entered the request state (or keygate last stopped reading it),
        # and ``received`` then: what a body's average rate is measured from
        self.busy_at = 0.0
        self.busy_received = 0

    def abort(self) -> None:
        """Close at once, dropping anything unsent (a deadline passed or framing broke)."""
        self.guard.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def wanted_state(self) -> int:
        if self.pending > 0 or self.reader.in_body or self.write_paused_at is not None:
            return REQUEST
        if self.reader.head_started or not self.answered:
            return HEAD
        return IDLE

    def writing_paused(self) -> None:
        """The client is not reading as fast as keygate writes: while this lasts the
        connection is in a request (an answer is being written), with a deadline."""
        self.write_paused_at = self.guard.clock()
        if self.state != CLOSED:
            self.guard.settle(self)

    def writing_resumed(self) -> None:
        self.write_paused_at = None
        if self.state != CLOSED:
            self.guard.settle(self)


class GuardedConnection(GuardedProtocol):
    """One client connection of an aiohttp port: forwards asyncio's calls to aiohttp's
    protocol, the client's bytes through the request reader, and tells the guard what
    state it is in."""

    __slots__ = ("server", "inner", "refusal")

    def __init__(self, guard: ConnectionGuard, server: web.Server):
        super().__init__(guard, server)
        self.server = server
        self.inner: asyncio.Protocol | None = None
        self.refusal: Refusal | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.guard.admit(self):
            return
        _GUARDED[transport] = self
        inner = self.inner = self.server()
        inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is None or self.state == CLOSED:
            return
        reader = self.reader
        heads = reader.heads
        reader.feed(data, inner.data_received)
        guard = self.guard
        self.heard = guard.clock()
        self.received += len(data)
        self.pending += reader.heads - heads
        if reader.stopped and self.refusal is None:
            if reader.refusal is not None:
                self.refusal = reader.refusal
                self.pending += 1  # the synthetic request that will carry the refusal
                guard.note_refusal(self, reader.refusal)
            elif reader.broken is not None:
                guard.note_refusal(self, reader.broken)
                self.abort()
                return
        guard.settle(self)

    def eof_received(self) -> bool | None:
        if self.inner is None:
            return None
        keep_open = self.inner.eof_received()
        # A client that sends a bad request and shuts its side (printf … | nc) still gets
        # the refusal: the stand-in request closes the connection once it is answered.
        return True if self.refusal is not None else keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.writing_paused()
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.writing_resumed()
        if self.inner is not None:
            self.inner.resume_writing()

    # -- the request handler's side (errors_as_json) ---------------------------------
    def request_started(self, request: web.BaseRequest) -> Refusal | None:
        """A handler starts; the refusal to answer instead, if this is the synthetic
        request that took a refused head's place."""
        self.active += 1
        if self.refusal is not None and REFUSAL_MARKER in request.headers:
            return self.refusal
        return None

    def request_finished(self) -> None:
        self.active -= 1
        self.answered += 1
        if self.pending > 0:
            self.pending -= 1
        if self.state == REQUEST:
            self.since = self.guard.clock()  # the last sign of progress (see _overdue)
            self.guard.settle(self)


class LogBudget:
    """At most ``per_minute`` lines a minute; then one line saying how many were dropped,
    so a flood of bad requests cannot fill a disk or drown other messages."""

    def __init__(self, per_minute: int = LOG_LINES_PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self.window_end = 0.0
        self.used = 0
        self.dropped = 0

    def allow(self) -> bool:
        self.flush()
        if self.used < self.per_minute:
            self.used += 1
            return True
        self.dropped += 1
        return False

    def flush(self) -> None:
        now = self.clock()
        if now < self.window_end:
            return
        if self.dropped:
            log.warning("%d similar log lines dropped in the last minute", self.dropped)
        self.window_end = now + 60.0
        self.used = self.dropped = 0


class _WithoutRequestBytes(logging.Filter):
    """aiohttp's "Error handling request" lines come with a traceback whose exception
    quotes the request (a token included): keep the line and the exception's type,
    drop the rest, and ration them."""

    def __init__(self, budget: LogBudget):
        super().__init__()
        self.budget = budget

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.budget.allow():
            return False
        if record.exc_info:
            kind = type(record.exc_info[1]).__name__
            record.msg = f"{record.msg} ({kind}; details withheld, they may quote the request)"
            record.exc_info = None
            record.exc_text = None
        record.stack_info = None
        return True


def server_logger(name: str = "keygate.http") -> logging.Logger:
    """The logger to give aiohttp's server (its ``logger`` argument)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _WithoutRequestBytes) for f in logger.filters):
        logger.addFilter(_WithoutRequestBytes(LogBudget()))
    return logger


def _flush_server_log() -> None:
    for rationed in server_logger().filters:
        if isinstance(rationed, _WithoutRequestBytes):
            rationed.budget.flush()


class ConnectionGuard:
    """One per process, shared by all its listening ports (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
        body_timeout: float,
        request_id: Callable[[], str],
        metrics: ConnectionMetrics | None = None,
        body_min_rate: float = 0.0,
    ):
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.request_id = request_id
        self.clock = time.monotonic
        self.heads: OrderedDict[GuardedProtocol, None] = OrderedDict()
        self.idle: OrderedDict[GuardedProtocol, None] = OrderedDict()
        self.busy: set[GuardedProtocol] = set()
        self.log_budget = LogBudget()
        self.interval = min(1.0, header_timeout / 4, keepalive_timeout / 4, body_timeout / 4)
        self._sweeper: asyncio.Task[None] | None = None
        self.metrics = metrics
        # per listener (what a port accepts connections for), its port's
        # open-connections gauge (metrics on)
        self._gauges: dict[object, Any] = {}

    @property
    def open(self) -> int:
        return len(self.heads) + len(self.idle) + len(self.busy)

    # -- listening -------------------------------------------------------------------
    async def listen(
        self, server: web.Server, host: str, port: int, reuse_port: bool = False
    ) -> asyncio.Server:
        """Accept connections for aiohttp's ``server`` on (host, port), guarded."""
        return await self.listen_with(lambda: GuardedConnection(self, server), server,
                                      host, port, reuse_port)

    async def listen_with(
        self, protocol: Callable[[], GuardedProtocol], listener: object, host: str,
        port: int, reuse_port: bool = False,
    ) -> asyncio.Server:
        """Accept connections on (host, port) with ``protocol``, a factory of guarded
        connections made for ``listener`` (each connection's ``listener``)."""
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_forever())
        server = await loop.create_server(
            protocol, host, port, reuse_port=reuse_port or None, backlog=LISTEN_BACKLOG,
        )
        if self.metrics is not None:  # labelled by the port bound (port 0 picks one)
            self._gauges[listener] = self.metrics.port(server.sockets[0].getsockname()[1])
        return server

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    # -- connections -----------------------------------------------------------------
    def admit(self, connection: GuardedProtocol) -> bool:
        """A new connection: make room at the cap, or refuse it with 503."""
        if self.open >= self.max_connections:
            victim = self._oldest_waiting()
            if victim is None:
                self._refuse_at_cap(connection)
                return False
            victim.abort()
        now = self.clock()
        connection.state = HEAD
        connection.since = connection.heard = now
        self.heads[connection] = None
        if self._gauges:
            gauge = connection.counted_in = self._gauges.get(connection.listener)
            if gauge is not None:
                gauge.inc()
        return True

    def _oldest_waiting(self) -> GuardedProtocol | None:
        head = next(iter(self.heads), None)
        idle = next(iter(self.idle), None)
        if head is None or (idle is not None and idle.since < head.since):
            return idle
        return head

    def _refuse_at_cap(self, connection: GuardedProtocol) -> None:
        transport = connection.transport
        assert transport is not None
        request_id = self.request_id()
        body = TOO_MANY_CONNECTIONS.body(request_id)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n"
            b"Server: keygate\r\nX-Request-Id: %s\r\n\r\n%s"
            % (len(body), request_id.encode(), body)
        )
        transport.close()
        if self.metrics is not None:
            self.metrics.refused(TOO_MANY_CONNECTIONS.code)
        if self.log_budget.allow():
            log.warning("connection refused with 503: all %d connections are in a request",
                        self.max_connections)

    def settle(self, connection: GuardedProtocol) -> None:
        """Move a connection to the state it is now in (a few dict operations)."""
        state = connection.wanted_state()
        old = connection.state
        if state == old:
            return
        if old == REQUEST:  # _remove, inline: this runs twice per request
            self.busy.discard(connection)
        elif old == HEAD:
            self.heads.pop(connection, None)
        elif old == IDLE:
            self.idle.pop(connection, None)
        connection.state = state
        connection.since = now = self.clock()
        if state == REQUEST:
            self.busy.add(connection)
            connection.busy_at = now
            connection.busy_received = connection.received
        elif state == HEAD:
            self.heads[connection] = None
        else:
            self.idle[connection] = None

    def forget(self, connection: GuardedProtocol) -> None:
        if connection.state == CLOSED:
            return
        self._remove(connection)
        connection.state = CLOSED
        _GUARDED.pop(connection.transport, None)  # type: ignore[arg-type]
        if connection.counted_in is not None:
            connection.counted_in.dec()
            connection.counted_in = None

    def _remove(self, connection: GuardedProtocol) -> None:
        state = connection.state
        if state == REQUEST:
            self.busy.discard(connection)
        elif state == HEAD:
            self.heads.pop(connection, None)
        elif state == IDLE:
            self.idle.pop(connection, None)

    def note_refusal(self, connection: GuardedProtocol, refusal: Refusal) -> None:
        """One log line per refused request: its address and the reason, never its bytes."""
        if self.metrics is not None:
            self.metrics.refused(refusal.code)
        if self.log_budget.allow():
            peer = connection.transport.get_extra_info("peername") if connection.transport else None
            address = peer[0] if isinstance(peer, tuple) and peer else "?"
            log.warning("refused a request from %s with %d: %s",
                        address, refusal.status, refusal.message)

    # -- deadlines -------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sweep()
            except Exception:  # a bug here must not end the sweeping
                log.exception("connection sweep failed")

    def sweep(self) -> None:
        now = self.clock()
        for waiting, timeout in ((self.heads, self.header_timeout),
                                 (self.idle, self.keepalive_timeout)):
            while waiting:
                connection = next(iter(waiting))
                if now - connection.since < timeout:
                    break
                connection.abort()
        for connection in list(self.busy):
            if self._overdue(connection, now):
                connection.abort()
        self.log_budget.flush()
        _flush_server_log()

    def _overdue(self, connection: GuardedProtocol, now: float) -> bool:
        """In a request: a client that stopped sending its body, or sends it slower
        than ``body_min_rate`` on average, or stopped reading its answer."""
        paused = connection.write_paused_at
        if paused is not None:
            return now - paused >= self.body_timeout
        if connection.reader.in_body:
            transport = connection.transport
            if transport is not None and not transport.is_reading():
                # keygate stopped reading (a slow upstream), not the client: its clocks
                # start again
                connection.heard = connection.busy_at = now
                connection.busy_received = connection.received
                return False
            if now - connection.heard >= self.body_timeout:
                return True
            # A byte now and then, each pause shorter than body_timeout, would hold the
            # connection (and, at the cap, a place no one else can take) for as long as
            # the client likes: past body_timeout, every second needs body_min_rate
            # bytes sent, on average since the request began.
            rate = self.body_min_rate
            return rate > 0 and now - connection.busy_at > (
                self.body_timeout + (connection.received - connection.busy_received) / rate)
        # No body to wait for and no handler running, for a keep-alive's time: a
        # request was answered without passing keygate's handler. Do not wait forever.
        return connection.active == 0 and now - connection.since >= self.keepalive_timeout


def file_limit() -> int | None:
    """The soft limit on open files (None where there is none)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def raise_file_limit() -> tuple[int, int] | None:
    """Raise the soft limit on open files to the hard limit: every client connection
    and every upstream connection is a descriptor, and the usual soft limit of 1024 is
    far below what a gateway needs. Returns (before, after), None if not applicable."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def derived_connection_cap(
    files: int, store_connections: int, upstream_connections: int
) -> int:
    """Client connections that fit in ``files`` descriptors: after a fixed reserve and
    the store's pool, keep at least as many for upstreams as for clients (each client
    request may need an upstream connection), but no more than the upstream pool opens."""
    room = files - FILE_RESERVE - store_connections
    return max(MIN_CONNECTIONS, room // 2, room - upstream_connections)


def guard_for(settings: Settings, request_id: Callable[[], str]) -> ConnectionGuard:
    """The process's guard, with ``max_connections`` or (0) the cap derived from the
    file limit, which ``serve`` raises first."""
    cap = settings.max_connections
    if cap:
        log.info("connection cap: %d per process (max_connections)", cap)
    else:
        files = file_limit()
        if files is None:
            cap = CAP_WITHOUT_FILE_LIMIT
            log.info("connection cap: %d per process (no file limit to derive it from)", cap)
        else:
            cap = derived_connection_cap(
                files, settings.store_max_connections, settings.upstream_max_connections
            )
            log.info(
                "connection cap: %d per process (file limit %d, less %d for files and "
                "listeners, %d for the store and room for as many upstream connections)",
                cap, files, FILE_RESERVE, settings.store_max_connections,
            )
    return ConnectionGuard(
        max_connections=cap,
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        body_timeout=settings.body_timeout,
        request_id=request_id,
        metrics=connection_metrics() if settings.metrics_listen is not None else None,
        body_min_rate=settings.body_min_rate,
    )
