"""A strict HTTP/1.1 request reader that stands in front of aiohttp's parser.

Why: aiohttp answers a head its parser refuses with a ``text/plain`` 400 that quotes the
offending line (an ``X-API-AppToken`` line quotes the token) and logs a traceback holding
the same bytes, and it has no documented hook to change that. So keygate reads the
client's byte stream first: :class:`RequestReader` follows it far enough to know where
each request head ends and where its body ends (``Content-Length``, or the chunked
coding: size lines, data, CRLFs, trailers), and refuses a head that
:func:`gateway.http_head.read_head` refuses, before aiohttp sees any of its bytes.

It never changes a byte. Accepted bytes are passed on unchanged, one message per call
(so no parser state of one request can swallow the next). At the first violation it
stops: a refused head is replaced by :data:`SYNTHETIC_REQUEST`, a well-formed request
that aiohttp queues in the refused one's place, and whose handler answers with the
refusal (see ``gateway.connections``); a violation inside a body leaves the connection
to be aborted, because the body is already on its way upstream and a cut connection is
the only honest way left to say it is broken.

Pure: no I/O, no clock. A whole head in one read (the common case) costs one ``find``
besides :func:`~gateway.http_head.read_head`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .http_head import (
    CHUNK_END,
    CHUNK_SIZE,
    CHUNK_SIZE_LINE_RE,
    CHUNKED,
    HEAD_TOO_LARGE,
    MAX_CHUNK_SIZE_LINE,
    MAX_FIELD_LINE,
    MAX_HEAD,
    MAX_TRAILER_FIELDS,
    TRAILER,
    TRAILER_FORBIDDEN,
    TRAILER_LINE_RE,
    Refusal,
    check_lines,
    read_head,
)

REFUSAL_MARKER = "X-Keygate-Refused"
# What aiohttp is given in place of a refused head: its handler answers the refusal.
# A client that sends these bytes itself gets only its own request refused.
SYNTHETIC_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n"
    + REFUSAL_MARKER.encode()
    + b": 1\r\n\r\n"
)

# How much of a refused head's start the reader keeps (``refused_start``): enough for a
# request line such as ``GET /nginx HTTP/1.1``
REFUSED_START = 64

# Reader states
HEAD, BODY, CHUNK_SIZE_LINE, CHUNK_DATA, CHUNK_DATA_END, TRAILERS, STOPPED = range(7)


class RequestReader:
    """Follows one connection's request stream and passes on what may be passed on.

    ``feed(data, forward)`` calls ``forward`` with accepted bytes, unchanged, at most one
    message per call; bytes whose verdict is not known yet (an unfinished head, chunk
    size line or trailer line) are held back until it is. Afterwards the attributes say
    where the stream is: ``heads`` (heads passed on so far), ``in_body``,
    ``head_started`` (bytes of a next head are held), ``refusal`` (a head was refused
    and :data:`SYNTHETIC_REQUEST` passed on in its place; ``refused_start``: its first
    :data:`REFUSED_START` bytes), ``broken`` (a body broke its
    framing: abort the connection) and ``stopped`` (nothing more will be passed on:
    after a refusal, a broken body, or a request after which the connection closes,
    since llhttp refuses any byte after such a request).

    ``read`` is how a complete head is judged: :func:`~gateway.http_head.read_head`, or
    a reading that gives the same verdict and more, whose result starts with the same
    two items (:func:`~gateway.http_head.read_request`). ``on_head``, when given, is
    called with that result for each accepted head, before any of its body is passed
    on: a server of keygate's own (the decision port) takes its requests from here,
    each head read once, and has ``forward`` drop what it does not need.
    """

    __slots__ = (
        "state", "heads", "refusal", "refused_start", "broken", "read", "on_head", "_held",
        "_checked", "_lead", "_remaining", "_closes", "_trailers", "_trailer_bytes",
    )

    def __init__(
        self,
        on_head: Callable[[Any], None] | None = None,
        read: Callable[[bytes], Sequence[Any] | Refusal] = read_head,
    ) -> None:
        self.read = read
        self.on_head = on_head
        self.state = HEAD
        self.heads = 0
        self.refusal: Refusal | None = None
        self.refused_start = b""
        self.broken: Refusal | None = None
        self._held = bytearray()  # bytes held back: a head, chunk size or trailer line
        self._checked = 0  # how far the held head's lines are known to be acceptable
        self._lead = 0  # how far the empty lines before the held head are known to go
        self._remaining = 0  # body or chunk bytes still to come
        self._closes = False
        self._trailers = 0
        self._trailer_bytes = 0

    @property
    def in_body(self) -> bool:
        return HEAD < self.state < STOPPED

    @property
    def head_started(self) -> bool:
        return self.state == HEAD and bool(self._held)

    @property
    def stopped(self) -> bool:
        return self.state == STOPPED

    def feed(self, data: bytes, forward: Callable[[bytes], None]) -> None:
        last = len(data) - 4
        if (self.state == HEAD and not self._held and last >= 0
                and data.find(b"\r\n\r\n") == last and data[0] != 13):
            # the usual read: exactly one whole head, no empty line before it (what the
            # loop below does with it, in fewer steps)
            if not self._accept_head(data):
                self._refuse(forward)
                return
            forward(data)
            if self.state == HEAD and self._closes:
                self.state = STOPPED
            return
        end = len(data)
        start = pos = 0  # data[start:pos] is accepted and not yet passed on
        while pos < end:
            state = self.state
            if state == HEAD:
                if self._held:  # a head begun in an earlier read (then pos == 0)
                    pos = start = self._continue_head(data, forward)
                    continue
                head_end = _find_head_end(data, pos)
                if head_end < 0:
                    _forward_part(data, start, pos, forward)
                    self._held += memoryview(data)[pos:]
                    self._checked = self._lead = 0
                    self._check_unfinished_head(forward, 0)
                    return
                if not self._accept_head(data[_skip_empty_lines(data, pos):head_end]):
                    _forward_part(data, start, pos, forward)
                    self._refuse(forward)
                    return
                pos = head_end
                if self.state == HEAD:  # no body: the message ends with its head
                    _forward_part(data, start, pos, forward)
                    start = pos
                    if self._closes:
                        self.state = STOPPED
                        return
            elif state in (BODY, CHUNK_DATA):
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    if state == CHUNK_DATA:
                        self.state = CHUNK_DATA_END
                    else:
                        _forward_part(data, start, pos, forward)
                        start = pos
                        if self._message_done():
                            return
            elif state == CHUNK_DATA_END:
                pos = self._chunk_data_end(data, pos)
                if self.broken is not None:
                    _forward_part(data, start, pos - 1, forward)
                    return
            elif state in (CHUNK_SIZE_LINE, TRAILERS):
                line_end = data.find(b"\n", pos) + 1
                if not line_end:
                    _forward_part(data, start, pos, forward)
                    self._hold_line(data, pos)
                    return
                held = bytes(self._held)  # the line's start, from an earlier read
                del self._held[:]
                line = held + data[pos:line_end] if held else data[pos:line_end]
                if state == CHUNK_SIZE_LINE:
                    message_done = False
                    self._chunk_size(line)
                else:
                    message_done = self._trailer(line)
                if self.broken is not None:
                    _forward_part(data, start, pos, forward)
                    return
                if held:
                    forward(held)
                pos = line_end
                if message_done:
                    _forward_part(data, start, pos, forward)
                    start = pos
                    if self._message_done():
                        return
            else:  # STOPPED: nothing more is passed on
                return
        _forward_part(data, start, end, forward)

    # -- heads ---------------------------------------------------------------------
    def _continue_head(self, data: bytes, forward: Callable[[bytes], None]) -> int:
        """More bytes of a held head; returns how much of ``data`` is consumed."""
        held = self._held
        before = len(held)
        held += data
        lead = self._lead = _skip_empty_lines(held, self._lead)
        index = held.find(b"\r\n\r\n", max(lead, before - 3))
        if index < 0:
            self._check_unfinished_head(forward, before)
            return len(data)
        head_end = index + 4
        head = bytes(held[:head_end])
        del held[:]
        if not self._accept_head(head[lead:]):
            self._refuse(forward)
            return len(data)
        forward(head)
        if self.state == HEAD and self._closes:
            self.state = STOPPED
            return len(data)
        return head_end - before

    def _check_unfinished_head(self, forward: Callable[[bytes], None], new: int) -> None:
        """Refuse a held head at once if it can no longer end well (binary garbage,
        a bare LF, a bad request line), rather than when the client stops sending.
        Each byte is scanned once, however the head trickles in (``new``: where the
        bytes of this read begin), the empty lines before it included: 64 KiB of them,
        then a byte at a time, cost a scan of them all per byte when each read started
        over (milliseconds per byte sent)."""
        held = self._held
        lead = self._lead = _skip_empty_lines(held, self._lead)
        refusal: Refusal | None
        if len(held) > MAX_HEAD:
            refusal = HEAD_TOO_LARGE
        else:
            start = max(self._checked, lead)
            refusal, self._checked = check_lines(held, start, start == lead, new)
        if refusal is not None:
            self.refused_start = bytes(held[lead:lead + REFUSED_START])
            del held[:]
            self.refusal = refusal
            self._refuse(forward)

    def _accept_head(self, head: bytes) -> bool:
        """Check a complete head and set up for its body; False if it is refused."""
        framing = HEAD_TOO_LARGE if len(head) > MAX_HEAD else self.read(head)
        if isinstance(framing, Refusal):
            self.refusal = framing
            self.refused_start = head[:REFUSED_START]
            return False
        length = framing[0]
        self._closes = framing[1]
        self.heads += 1
        if length == CHUNKED:
            self.state = CHUNK_SIZE_LINE
        elif length:
            self.state = BODY
            self._remaining = length
        if self.on_head is not None:
            self.on_head(framing)
        return True

    def _refuse(self, forward: Callable[[bytes], None]) -> None:
        self.state = STOPPED
        forward(SYNTHETIC_REQUEST)

    # -- bodies --------------------------------------------------------------------
    def _message_done(self) -> bool:
        """A message ended: True if nothing more will be passed on."""
        self.state = STOPPED if self._closes else HEAD
        return self._closes

    def _break(self, reason: Refusal) -> None:
        self.broken = reason
        self.state = STOPPED

    def _hold_line(self, data: bytes, pos: int) -> None:
        """Hold back the start of a chunk size or trailer line (bounded)."""
        self._held += memoryview(data)[pos:]
        if self.state == CHUNK_SIZE_LINE and len(self._held) > MAX_CHUNK_SIZE_LINE:
            self._break(CHUNK_SIZE)
        elif self.state == TRAILERS and len(self._held) > MAX_FIELD_LINE + 2:
            self._break(TRAILER)

    def _chunk_size(self, line: bytes) -> None:
        match = CHUNK_SIZE_LINE_RE.fullmatch(line) if len(line) <= MAX_CHUNK_SIZE_LINE else None
        if match is None:
            self._break(CHUNK_SIZE)
            return
        size = int(match.group(1), 16)
        if size:
            self._remaining = size
            self.state = CHUNK_DATA
        else:
            self.state = TRAILERS
            self._trailers = self._trailer_bytes = 0

    def _chunk_data_end(self, data: bytes, pos: int) -> int:
        """The CRLF after chunk data, perhaps split across reads; returns the position
        after what it consumed (on a violation: just after the offending byte)."""
        held = self._held
        while pos < len(data) and len(held) < 2:
            held.append(data[pos])
            pos += 1
            if held != b"\r\n"[: len(held)]:
                del held[:]
                self._break(CHUNK_END)
                return pos
        if len(held) == 2:
            del held[:]
            self.state = CHUNK_SIZE_LINE
        return pos

    def _trailer(self, line: bytes) -> bool:
        """One trailer line: True when it is the empty line that ends the message."""
        if line == b"\r\n":
            return True
        self._trailers += 1
        self._trailer_bytes += len(line)
        if (
            len(line) > MAX_FIELD_LINE + 2
            or self._trailers > MAX_TRAILER_FIELDS
            or self._trailer_bytes > MAX_HEAD
            or TRAILER_LINE_RE.fullmatch(line) is None
            or line.partition(b":")[0].lower() in TRAILER_FORBIDDEN
        ):
            self._break(TRAILER)
        return False


def _skip_empty_lines(data: bytes | bytearray, pos: int) -> int:
    """RFC 9112 §2.2: empty lines before a request line are ignored (llhttp too)."""
    while data.startswith(b"\r\n", pos):
        pos += 2
    return pos


def _find_head_end(data: bytes, pos: int) -> int:
    """Index just past a head's empty line, or -1 while the head is unfinished."""
    if data[pos] == 13:  # '\r': empty lines before the request line
        pos = _skip_empty_lines(data, pos)
    index = data.find(b"\r\n\r\n", pos)
    return -1 if index < 0 else index + 4


def _forward_part(data: bytes, start: int, stop: int, forward: Callable[[bytes], None]) -> None:
    """Pass on ``data[start:stop]``: the very object when it is all of it (no copy)."""
    if start == 0 and stop == len(data):
        if stop:
            forward(data)
    elif stop > start:
        forward(data[start:stop])
