"""What an upstream's answer may be, and where it ends: keygate's strict reading of
RFC 9112 for responses, with no I/O.

:class:`ResponseReader` follows the bytes of one answer as they arrive, in pieces of any
size: it skips interim (1xx) answers, parses the final head into a :class:`ResponseHead`
and hands on the body's bytes, de-chunked, until the framing says the answer is over.
:mod:`gateway.upstream` drives it from its connections. It is the response-side twin of
:mod:`gateway.http_head`, in the same spirit: one compiled regex validates a whole head,
one more takes its fields apart, and the line-by-line diagnosis runs only on refusal.

Why so strict: keygate passes the answer on to a client under its own framing, so an
answer whose end two parsers could place differently is a response-smuggling vector
(the tail of one answer read as the start of the next, on keygate's kept-alive
connection or on the client's). Refused with :class:`InvalidAnswer` (the proxy answers
502), never guessed at:

* a head that is not ``HTTP/1.x SP 3DIGIT [SP reason] CRLF`` and field lines of
  ``token ":" value CRLF``: no bare LF or CR, no control character (NUL, DEL, ...), no
  whitespace before a colon, no obsolete line folding; over the limits below;
* both ``Content-Length`` and ``Transfer-Encoding``; several ``Content-Length`` values
  that differ (identical ones are kept as one); a length that is not plain digits;
  a transfer coding other than ``chunked`` alone; ``Transfer-Encoding`` in HTTP/1.0;
* a malformed chunk size line, chunk data not followed by CRLF, malformed trailers;
* ``101 Switching Protocols`` (keygate never asks for an upgrade) and more than
  ``MAX_INTERIM`` interim answers in a row.

An answer without ``Content-Length`` or chunked coding is read until the upstream closes
(RFC 9112 §6.3), and its connection is never reused; answers to HEAD and 1xx, 204 and
304 answers have no body whatever their headers say. Bytes after the end of an answer
(nothing was asked for them) mark the connection as not reusable: ``extra``.

Memory is bounded: a head is held until it is whole, up to ``MAX_HEAD`` bytes; a chunk
size or trailer line up to its own limit; body bytes are never held here. Error
messages say what is wrong and never quote the upstream's bytes, which go to the log.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy, istr

from .http_head import (
    CHUNK_SIZE_LINE_RE,
    MAX_CHUNK_SIZE_LINE,
    MAX_CONTENT_LENGTH_DIGITS,
    MAX_FIELD_LINE,
    MAX_TRAILER_FIELDS,
    TRAILER_LINE_RE,
)

# aiohttp's client limits (line and field 8190 bytes, 128 fields), which keygate used
# before it read answers itself; the whole head is capped too, as nginx caps it (4–8 KiB
# by default, proxy_buffer_size): 64 KiB is generous.
MAX_STATUS_LINE = 8190
MAX_FIELDS = 128
MAX_HEAD = 64 * 1024
MAX_INTERIM = 16
MAX_TRAILER_BYTES = MAX_HEAD

# ResponseHead.framing values besides a length (an int >= 0)
CHUNKED = -1
UNTIL_CLOSE = -2

CONTENT_LENGTH = istr("Content-Length")
TRANSFER_ENCODING = istr("Transfer-Encoding")
CONNECTION = istr("Connection")


class UpstreamError(Exception):
    """The upstream could not give a usable answer; the proxy answers 502 (504 for the
    :class:`TimeoutError` ones)."""


class InvalidAnswer(UpstreamError):
    """The upstream's answer is not HTTP/1.1 that keygate can pass on."""


# Heads are matched as text (decoded once, UTF-8 with surrogateescape, as aiohttp's own
# parsers decode them, so the bytes go back out unchanged): field values and the reason
# may hold HTAB, SP, visible ASCII and any byte >= 0x80 (obs-text).
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_VALUE = r"[\t\x20-\x7e\x80-\U0010ffff]"
_STATUS_LINE = r"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: (" + _VALUE + r"*))?\r\n"
_FIELD_LINE = r"[" + _TCHAR + r"]+:" + _VALUE + r"*\r\n"
_HEAD_RE = re.compile(_STATUS_LINE + r"((?:" + _FIELD_LINE + r")*)\r\n")
_STATUS_LINE_RE = re.compile(_STATUS_LINE)
_FIELD_LINE_RE = re.compile(_FIELD_LINE)
# one field: name, and value without the whitespace (OWS) before it; the second one
# also drops the whitespace after it, at twice the cost, so it runs only when a value
# ends in whitespace
_FIELD_RE = re.compile(r"([" + _TCHAR + r"]+):[\t ]*([^\r]*)\r\n")
_FIELD_OWS_RE = re.compile(r"([" + _TCHAR + r"]+):[\t ]*((?:[^\r]*[^\t\r ])?)[\t ]*\r\n")
_TOKEN_RE = re.compile(r"[" + _TCHAR + r"]+")
_DIGITS_RE = re.compile(rf"[0-9]{{1,{MAX_CONTENT_LENGTH_DIGITS}}}")
# a control character other than HTAB, or a CR or LF that is not part of a CRLF
_NEVER_IN_HEAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?=[^\n])|(?<!\r)\n")
_STATUS_START = b"HTTP/1."

# What is wrong, in words that quote nothing.
BARE_LINE_END = "a line of its head ends in a bare LF or CR instead of CRLF"
CONTROL_CHARACTER = "its head contains a control character"
STATUS_LINE = "its status line is not 'HTTP/1.x', a status code from 100 to 599 and a reason"
FIELD_TOO_LONG = f"a line of its head is longer than {MAX_FIELD_LINE} bytes"
TOO_MANY_FIELDS = f"its head has more than {MAX_FIELDS} fields"
HEAD_TOO_LARGE = f"its head is larger than {MAX_HEAD} bytes"
OBSOLETE_FOLDING = "a field line starts with whitespace (obsolete line folding)"
NO_COLON = "a field line has no colon"
SPACE_BEFORE_COLON = "a field name is followed by whitespace before its colon"
FIELD_NAME = "a field name is empty or has a character not allowed in a name"
FIELD_VALUE = "a field value contains a character not allowed in a value"
MALFORMED_HEAD = "its head is malformed"
BAD_LENGTH = (
    f"its Content-Length is not a decimal number of at most {MAX_CONTENT_LENGTH_DIGITS} digits"
)
LENGTHS_DIFFER = "it has several Content-Length values that differ"
LENGTH_AND_CHUNKED = "it has both Content-Length and Transfer-Encoding"
TRANSFER_CODING = "its transfer coding is not chunked alone"
TRANSFER_CODING_HTTP10 = "it is HTTP/1.0 and has Transfer-Encoding"
SWITCHING = "it switches protocols, which keygate never asks for"
TOO_MANY_INTERIM = f"it sent more than {MAX_INTERIM} interim (1xx) answers"
CHUNK_SIZE = "a chunk size line is malformed"
CHUNK_END = "chunk data does not end in CRLF"
TRAILER = "a trailer field is malformed, or there are too many"


def invalid(reason: str) -> InvalidAnswer:
    return InvalidAnswer(f"invalid HTTP answer: {reason}")


class ResponseHead:
    """The final head of an answer. ``framing``: the body's length, :data:`CHUNKED` or
    :data:`UNTIL_CLOSE` (0 for answers that have no body); ``content_length``: the
    declared length (forwarded as is, also for HEAD answers), or None."""

    __slots__ = ("status", "reason", "headers", "content_length", "framing", "keep_alive")

    def __init__(
        self, status: int, reason: str, headers: CIMultiDictProxy[str],
        content_length: int | None, framing: int, keep_alive: bool,
    ):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.framing = framing
        self.keep_alive = keep_alive


def parse_head(head: bytes, no_body: bool = False) -> ResponseHead:
    """A complete head, from its status line to its empty line; ``no_body``: it answers
    a HEAD request. Raises :class:`InvalidAnswer`."""
    if len(head) > MAX_HEAD:
        raise invalid(HEAD_TOO_LARGE)
    text = head.decode("utf-8", "surrogateescape")
    match = _HEAD_RE.fullmatch(text)
    if match is None:
        raise invalid(diagnose(head))
    if len(head) > MAX_FIELD_LINE and any(
        len(line) > MAX_FIELD_LINE for line in head.split(b"\r\n")
    ):
        raise invalid(FIELD_TOO_LONG)
    minor, code, reason, fields = match.groups()
    if " \r\n" in fields or "\t\r\n" in fields:
        pairs = _FIELD_OWS_RE.findall(fields)
    else:
        pairs = _FIELD_RE.findall(fields)
    if len(pairs) > MAX_FIELDS:
        raise invalid(TOO_MANY_FIELDS)
    headers = CIMultiDict(pairs)
    status = int(code)
    http11 = minor == "1"
    keep_alive = http11
    options = headers.getall(CONNECTION, None)
    if options is not None:
        named = _connection_options(options)
        if "close" in named:
            keep_alive = False
        elif not http11 and "keep-alive" in named:
            keep_alive = True
    length = None
    lengths = headers.getall(CONTENT_LENGTH, None)
    if lengths is not None:
        value = lengths[0]
        # one plain ASCII number (str.isdigit alone would take other scripts' digits)
        if (
            len(lengths) == 1 and value.isascii() and value.isdigit()
            and len(value) <= MAX_CONTENT_LENGTH_DIGITS
        ):
            length = int(value)
        else:
            length = _content_length(headers, lengths)
    codings = headers.getall(TRANSFER_ENCODING, None)
    if codings is not None:
        if length is not None:
            raise invalid(LENGTH_AND_CHUNKED)
        if len(codings) != 1 or codings[0].lower() != "chunked":
            raise invalid(TRANSFER_CODING)
        if not http11:
            raise invalid(TRANSFER_CODING_HTTP10)
    if no_body or status < 200 or status == 204 or status == 304:
        framing = 0
    elif codings is not None:
        framing = CHUNKED
    elif length is not None:
        framing = length
    else:
        framing = UNTIL_CLOSE
        keep_alive = False  # its end is the connection's end
    return ResponseHead(
        status, reason or "", CIMultiDictProxy(headers), length, framing, keep_alive
    )


_COMMON_CONNECTION = {"keep-alive": ("keep-alive",), "close": ("close",)}


def _connection_options(values: list[str]) -> tuple[str, ...] | set[str]:
    """The options of the Connection fields, lower-cased (the one common value at the
    cost of a lookup)."""
    if len(values) == 1 and (common := _COMMON_CONNECTION.get(values[0].lower())):
        return common
    return {option.strip(" \t").lower() for value in values for option in value.split(",")}


def _content_length(headers: CIMultiDict[str], lengths: list[str]) -> int:
    """The one length that every Content-Length value states (RFC 9110 §8.6 lets a
    recipient take identical values as one: they are kept as one field)."""
    values = {member.strip(" \t") for value in lengths for member in value.split(",")}
    if not all(_DIGITS_RE.fullmatch(value) for value in values):
        raise invalid(BAD_LENGTH)
    if len({int(value) for value in values}) != 1:
        raise invalid(LENGTHS_DIFFER)
    length = int(values.pop())
    del headers[CONTENT_LENGTH]
    headers[CONTENT_LENGTH] = str(length)
    return length


def diagnose(head: bytes | bytearray) -> str:
    """The first rule a refused head breaks (the slow path: runs only on refusal)."""
    bad = _NEVER_IN_HEAD.search(head)
    if bad is not None:
        return BARE_LINE_END if bad.group() in (b"\r", b"\n") else CONTROL_CHARACTER
    text = bytes(head).decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    if _STATUS_LINE_RE.fullmatch(lines[0] + "\r\n") is None:
        return STATUS_LINE
    for line in lines[1:]:
        if not line:
            break
        if _FIELD_LINE_RE.fullmatch(line + "\r\n"):
            continue
        if line[:1] in (" ", "\t"):
            return OBSOLETE_FOLDING
        name, colon, _ = line.partition(":")
        if not colon:
            return NO_COLON
        if name and name.rstrip(" \t") != name:
            return SPACE_BEFORE_COLON
        if not _TOKEN_RE.fullmatch(name):
            return FIELD_NAME
        return FIELD_VALUE
    return MALFORMED_HEAD


# Reader states
HEAD, BODY, CHUNK_SIZE_LINE, CHUNK_DATA, CHUNK_DATA_END, TRAILERS, UNTIL_CLOSE_BODY, DONE = (
    range(8)
)


class ResponseReader:
    """Follows the bytes of one answer (to a HEAD request if ``no_body``).

    ``feed(data, deliver)`` takes the next bytes, in any split, and calls ``deliver``
    with the body's bytes (de-chunked) as they come; it raises :class:`InvalidAnswer`
    at the first violation, and then must not be fed again. Afterwards: ``head`` is the
    final head once it is read; ``done`` says the answer ended; ``received`` that any
    byte came; ``extra`` that bytes came after the end. ``feed_eof()`` says the upstream
    closed its end: True if that ends the answer properly (a body read until close).
    """

    __slots__ = (
        "state", "head", "received", "extra", "_no_body", "_held", "_remaining",
        "_interim", "_trailers", "_trailer_bytes",
    )

    def __init__(self, no_body: bool = False):
        self.state = HEAD
        self.head: ResponseHead | None = None
        self.received = False
        self.extra = False
        self._no_body = no_body
        self._held = bytearray()  # an unfinished head, chunk size line or trailer line
        self._remaining = 0  # body or chunk bytes still to come
        self._interim = 0
        self._trailers = 0
        self._trailer_bytes = 0

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def reusable(self) -> bool:
        """The answer ended as its framing says, nothing came after it, and neither
        side asked to close: the connection may carry another request."""
        head = self.head
        return self.state == DONE and not self.extra and head is not None and head.keep_alive

    def feed_eof(self) -> bool:
        if self.state == UNTIL_CLOSE_BODY:
            self.state = DONE
        return self.state == DONE

    def feed(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        end = len(data)
        if end:
            self.received = True
        pos = 0
        while pos < end:
            state = self.state
            if state in (BODY, CHUNK_DATA):
                take = min(self._remaining, end - pos)
                deliver(data[pos:pos + take])  # all of data: the same object, no copy
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self.state = DONE if state == BODY else CHUNK_DATA_END
            elif state == HEAD:
                pos = self._head(data, pos)
            elif state == CHUNK_DATA_END:
                pos = self._chunk_data_end(data, pos)
            elif state in (CHUNK_SIZE_LINE, TRAILERS):
                pos = self._line(data, pos)
            elif state == UNTIL_CLOSE_BODY:
                deliver(data[pos:])
                return
            else:  # DONE: nobody asked for these bytes
                self.extra = True
                return

    # -- heads -----------------------------------------------------------------------
    def _head(self, data: bytes, pos: int) -> int:
        """Consume head bytes from ``pos``; returns where the head's successor starts
        (or ``len(data)`` while the head is unfinished)."""
        held = self._held
        if held:
            before = len(held)
            held += memoryview(data)[pos:]
            index = held.find(b"\r\n\r\n", max(before - 3, 0))
            if index < 0:
                self._check_unfinished(before)
                return len(data)
            head = bytes(held[:index + 4])
            del held[:]
            self._accept(head)
            return pos + index + 4 - before
        index = data.find(b"\r\n\r\n", pos)
        if index < 0:
            held += memoryview(data)[pos:]
            self._check_unfinished(0)
            return len(data)
        self._accept(data[pos:index + 4])
        return index + 4

    def _check_unfinished(self, new: int) -> None:
        """Refuse a held head at once when it can no longer become a good one (not
        HTTP at all, a bad status line, a bare LF, binary), rather than waiting for a
        read timeout; each byte is scanned once (``new``: where this read's bytes start
        in the held head)."""
        held = self._held
        if len(held) > MAX_HEAD:
            raise invalid(HEAD_TOO_LARGE)
        bad = _NEVER_IN_HEAD.search(held, max(new - 1, 0))
        if bad is not None:
            raise invalid(BARE_LINE_END if bad.group() in (b"\r", b"\n") else CONTROL_CHARACTER)
        line_end = held.find(b"\r\n")
        if line_end < 0:
            if not _STATUS_START.startswith(held[:len(_STATUS_START)]):
                raise invalid(STATUS_LINE)
            if len(held) > MAX_STATUS_LINE:
                raise invalid(FIELD_TOO_LONG)
        elif line_end + 2 > new and _STATUS_LINE_RE.fullmatch(
            bytes(held[:line_end + 2]).decode("utf-8", "surrogateescape")
        ) is None:  # checked once, when it became whole
            raise invalid(STATUS_LINE)

    def _accept(self, head: bytes) -> None:
        parsed = parse_head(head, self._no_body)
        status = parsed.status
        if status < 200:  # interim (RFC 9110 §15.2): the final answer follows
            if status == 101:
                raise invalid(SWITCHING)
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise invalid(TOO_MANY_INTERIM)
            return
        self.head = parsed
        framing = parsed.framing
        if framing > 0:
            self.state = BODY
            self._remaining = framing
        elif framing == 0:
            self.state = DONE
        elif framing == CHUNKED:
            self.state = CHUNK_SIZE_LINE
        else:
            self.state = UNTIL_CLOSE_BODY

    # -- chunked bodies ----------------------------------------------------------------
    def _line(self, data: bytes, pos: int) -> int:
        """A chunk size or trailer line, perhaps split across reads (held, bounded)."""
        held = self._held
        limit = MAX_CHUNK_SIZE_LINE if self.state == CHUNK_SIZE_LINE else MAX_FIELD_LINE + 2
        line_end = data.find(b"\n", pos) + 1
        if not line_end:
            held += memoryview(data)[pos:]
            if len(held) > limit:
                raise invalid(CHUNK_SIZE if self.state == CHUNK_SIZE_LINE else TRAILER)
            return len(data)
        if held:
            held += memoryview(data)[pos:line_end]
            line = bytes(held)
            del held[:]
        else:
            line = data[pos:line_end]
        if len(line) > limit:
            raise invalid(CHUNK_SIZE if self.state == CHUNK_SIZE_LINE else TRAILER)
        if self.state == CHUNK_SIZE_LINE:
            self._chunk_size(line)
        else:
            self._trailer(line)
        return line_end

    def _chunk_size(self, line: bytes) -> None:
        match = CHUNK_SIZE_LINE_RE.fullmatch(line)
        if match is None:
            raise invalid(CHUNK_SIZE)
        size = int(match.group(1), 16)
        if size:
            self._remaining = size
            self.state = CHUNK_DATA
        else:
            self.state = TRAILERS

    def _chunk_data_end(self, data: bytes, pos: int) -> int:
        """The CRLF after chunk data, perhaps split across reads."""
        held = self._held
        while pos < len(data) and len(held) < 2:
            held.append(data[pos])
            pos += 1
            if held != b"\r\n"[:len(held)]:
                raise invalid(CHUNK_END)
        if len(held) == 2:
            del held[:]
            self.state = CHUNK_SIZE_LINE
        return pos

    def _trailer(self, line: bytes) -> None:
        """One trailer line, or the empty line that ends the answer. Trailers are
        checked and dropped: keygate forwards none."""
        if line == b"\r\n":
            self.state = DONE
            return
        self._trailers += 1
        self._trailer_bytes += len(line)
        if (
            self._trailers > MAX_TRAILER_FIELDS
            or self._trailer_bytes > MAX_TRAILER_BYTES
            or TRAILER_LINE_RE.fullmatch(line) is None
        ):
            raise invalid(TRAILER)
