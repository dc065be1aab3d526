"""One connection to an upstream (an :class:`asyncio.Protocol`) and the body of the
answer it is reading: the I/O half of keygate's upstream client (the pool is
:mod:`gateway.upstream`, the reading rules :mod:`gateway.upstream_parser`).

Everything here is asyncio's public protocol and transport API: ``data_received`` feeds
the strict answer reader; ``pause_reading``/``resume_reading`` on the transport hold
the upstream back while the client is slow; ``pause_writing``/``resume_writing`` from
the transport hold the client's body back while the upstream is slow. Nothing here
buffers more than ``PAUSE_READING_AT`` of an answer (plus one read) or more of a
request body than the transport's write buffer, whatever the two ends do.

The read timeout counts the upstream's *silence*, as aiohttp's ``sock_read`` does: it
starts when the whole request is out, every byte of the answer renews it, and it does
not run while reading is paused for a slow client (that is not the upstream's fault)
or while the connection is idle.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .upstream_parser import InvalidAnswer, ResponseHead, ResponseReader, UpstreamError

# An answer's unread body may grow to this before reading from the upstream pauses; it
# resumes below RESUME_READING_AT (as aiohttp's StreamReader with a 64 KiB limit).
PAUSE_READING_AT = 128 * 1024
RESUME_READING_AT = 64 * 1024


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Connecting took longer than the connect timeout, or the upstream stayed silent
    longer than the read timeout (the proxy answers 504)."""


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before sending a byte of its answer."""


class AnswerBrokeOff(UpstreamError):
    """The upstream closed the connection in the middle of its answer."""


class AnswerBody:
    """An answer's body as it arrives, for one reader. Holds what the reader has not
    taken yet; past ``PAUSE_READING_AT`` of it, reading from the upstream pauses, so a
    slow client cannot make keygate hold a large answer in memory. An error (the
    upstream broke off, stayed silent, broke the framing) is raised to the reader at
    once, ahead of bytes not read yet: a broken answer must be seen as broken."""

    __slots__ = (
        "_connection", "_chunks", "_offset", "_size", "_eof", "_error", "_waiter",
        "_paused",
    )

    def __init__(self, connection: UpstreamConnection):
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already read
        self._size = 0  # bytes not read yet
        self._eof = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- fed by the connection ---------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._waiter is not None:
            self._wake()
        if self._size > PAUSE_READING_AT and not self._paused:
            self._paused = True
            self._connection.pause_reading()

    def end(self) -> None:
        self._eof = True
        if self._waiter is not None:
            self._wake()

    def fail(self, error: UpstreamError) -> None:
        self._error = error
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the proxy ---------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes that arrived and were not read yet."""
        return self._size

    def is_eof(self) -> bool:
        """The whole body has arrived (some of it may not have been read yet)."""
        return self._eof

    def at_eof(self) -> bool:
        """The whole body has arrived and been read."""
        return self._eof and not self._chunks

    async def readany(self, limit: int = 0) -> bytes:
        """The next bytes (at most ``limit`` if given), b"" at the end of the body."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            await self._wait()
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        chunk = chunks[0]
        offset = self._offset
        if offset or limit and len(chunk) > limit:  # a piece of it: one copy per byte
            end = offset + limit if limit else len(chunk)
            piece = chunk[offset:end]
            if end < len(chunk):
                self._offset = end
            else:
                self._offset = 0
                chunks.popleft()
            chunk = piece
        else:
            chunks.popleft()
        self._size -= len(chunk)
        if self._paused and self._size < RESUME_READING_AT:
            self._resume()
        return chunk

    def take(self) -> bytes:
        """Whatever has arrived and was not read yet, without waiting."""
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        if self._offset:
            chunks[0] = chunks[0][self._offset:]
            self._offset = 0
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._paused:
            self._resume()
        return data

    async def read(self) -> bytes:
        """The rest of the body, whole. Reading from the upstream goes on while it
        waits (the caller asked for all of it, and bounds it itself)."""
        parts = []
        while not self._eof:
            parts.append(self.take())
            if self._error is None and not self._eof:
                await self._wait()
        parts.append(self.take())
        return b"".join(parts)

    def iter_chunked(self, size: int) -> Chunks:
        """The body in pieces of at most ``size`` bytes, as they arrive."""
        return Chunks(self.readany, size)

    def iter_any(self) -> Chunks:
        """The body in pieces as they arrive."""
        return Chunks(self.readany, 0)

    async def _wait(self) -> None:
        self._waiter = self._connection.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _resume(self) -> None:
        self._paused = False
        self._connection.resume_reading()


class Chunks:
    """``async for`` over a body (no async generator: nothing to finalise when the
    loop over it stops early)."""

    __slots__ = ("_read", "_size")

    def __init__(self, read: Callable[[int], Awaitable[bytes]], size: int):
        self._read = read
        self._size = size

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._read(self._size)
        if not chunk:
            raise StopAsyncIteration
        return chunk


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, carrying one request at a time.

    The read timeout counts the upstream's silence: it starts when the request (head
    and body) is out and is renewed by every byte of the answer; it does not run while
    reading is paused for a slow client, nor on an idle connection.
    """

    __slots__ = (
        "loop", "read_timeout", "transport", "closed", "usable", "reader", "content",
        "_head_waiter", "_failure", "_timer", "_timing", "_last_read", "_reading_paused",
        "_write_paused", "_drain_waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float):
        self.loop = loop
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.usable = True  # False once anything makes it unfit for another request
        self.reader: ResponseReader | None = None  # None while idle
        self.content: AnswerBody | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._failure: UpstreamError | None = None  # why keygate cut it off
        self._timer: asyncio.TimerHandle | None = None
        self._timing = False  # the read timeout runs
        self._last_read = 0.0
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- one exchange ----------------------------------------------------------------------
    def begin(self, no_body: bool) -> asyncio.Future[ResponseHead]:
        """Get ready for the answer to a request about to be written; the future gets
        its final head (or the reason there is none)."""
        self.reader = ResponseReader(no_body)
        self.content = AnswerBody(self)
        waiter = self._head_waiter = self.loop.create_future()
        # When sending the request fails first (the client's body broke off), nobody
        # awaits the head: its failure is expected then, not an error to log.
        waiter.add_done_callback(_retrieved)
        return waiter

    def request_sent(self) -> None:
        """The whole request is out: the upstream's silence counts from now (unless its
        answer is complete already)."""
        reader = self.reader
        if (
            reader is not None and not reader.done and not self._reading_paused
            and self._failure is None
        ):
            self._start_timer()

    def reusable(self) -> bool:
        reader = self.reader
        return (
            self.usable and not self.closed and reader is not None and reader.reusable
            and self._failure is None
        )

    def idle(self) -> None:
        """Back in the pool: no exchange, no timer, reading on (to see the upstream
        close it)."""
        self.reader = self.content = None
        self._head_waiter = None
        self._stop_timer()
        if self._reading_paused:
            self.resume_reading()

    def close(self) -> None:
        self.usable = False
        self._drop_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self, failure: UpstreamError) -> None:
        """Cut the connection off (the upstream must see a broken request, never a
        short one that looks whole); ``failure`` is what the answer's reader gets."""
        self._fail(failure)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None or self._failure is not None:
            # nothing was asked: an upstream that talks out of turn is not reused
            self.usable = False
            if self.transport is not None:
                self.transport.close()
            return
        if self._timing:
            self._last_read = self.loop.time()
        content = self.content
        assert content is not None
        try:
            reader.feed(data, content.feed)
        except InvalidAnswer as error:
            self._fail(error)
            return
        waiter = self._head_waiter
        if waiter is not None and reader.head is not None:
            self._head_waiter = None
            if not waiter.done():
                waiter.set_result(reader.head)
        if reader.done and not content.is_eof():
            self._stop_timer()
            content.end()

    def eof_received(self) -> bool:
        return False  # close: this side has nothing more to say either

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.usable = False
        self._drop_timer()
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_exception(UpstreamClosed("the upstream closed the connection"))
        reader = self.reader
        if reader is None or self._failure is not None or reader.done:
            return
        if exc is None and reader.feed_eof():  # a body read until close ended
            assert self.content is not None
            self.content.end()
            return
        if not reader.received:
            self._fail(UpstreamClosed("the upstream closed the connection before answering"))
        else:
            self._fail(AnswerBrokeOff("the upstream closed the connection mid-answer"))

    # -- flow control: upstream → keygate ------------------------------------------------
    def pause_reading(self) -> None:
        self._reading_paused = True
        self._stop_timer()  # a pause for a slow client is not the upstream's silence
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        reader = self.reader
        if reader is not None and not reader.done and self._failure is None:
            self._start_timer()

    # -- flow control: keygate → upstream ------------------------------------------------
    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    async def drained(self) -> None:
        """Until the upstream has taken what was written (its write buffer is low)."""
        if self.closed:
            raise UpstreamClosed("the upstream closed the connection")
        if self._write_paused:
            waiter = self._drain_waiter = self.loop.create_future()
            await waiter

    # -- failures and the read timeout -----------------------------------------------------
    def _fail(self, failure: UpstreamError) -> None:
        """End the exchange with ``failure`` (the first one is what its reader gets)
        and abort the connection."""
        self.usable = False
        self._drop_timer()
        if self._failure is None:
            self._failure = failure
            waiter = self._head_waiter
            if waiter is not None:
                self._head_waiter = None
                if not waiter.done():
                    waiter.set_exception(failure)
            elif self.content is not None and not self.content.is_eof():
                self.content.fail(failure)
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # One timer per connection, moved on lazily: data_received only notes the time, and
    # stopping the timeout only says so, leaving the timer for the next exchange on the
    # connection (an idle connection's timer goes when it fires) — so a kept-alive
    # connection schedules one timer per read_timeout, not one per request.
    def _start_timer(self) -> None:
        self._last_read = self.loop.time()
        self._timing = True
        if self._timer is None:
            self._timer = self.loop.call_at(
                self._last_read + self.read_timeout, self._timer_fired
            )

    def _stop_timer(self) -> None:
        self._timing = False

    def _drop_timer(self) -> None:
        self._timing = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        if not self._timing:
            return
        due = self._last_read + self.read_timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._timer_fired)
            return
        self._fail(UpstreamTimeout(
            f"the upstream sent nothing for {self.read_timeout:g} s"
        ))


def _retrieved(future: asyncio.Future[ResponseHead]) -> None:
    if not future.cancelled():
        future.exception()
