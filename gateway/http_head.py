"""What a request head may be: keygate's strict reading of RFC 9112, with no I/O.

:func:`read_head` takes a complete head (request line to empty line) and says how long
the body behind it is and whether the connection closes after it — or why the head is
refused, as a :class:`Refusal` in keygate's error shape. :mod:`gateway.framing` applies
it to a connection's byte stream.

It is at least as strict as aiohttp's llhttp parser on everything that parser can refuse
in a head (found by trying every byte value at every position: see
``tests/test_framing.py``), so aiohttp's own error path is never reached, and stricter
where strictness removes ambiguity: single spaces in the request line, no absolute-form,
no whitespace before a colon, no obsolete line folding, CRLF only, one ``Content-Length``
of digits or ``Transfer-Encoding: chunked`` alone (never both), one well-formed ``Host``.
Every refusal says what is wrong without quoting anything the client sent, so an answer
or a log line can never carry a secret from the request.

Speed: a head costs one compiled regex over it and one targeted search for the few
headers that frame or route a message; the line-by-line diagnosis runs only on refusal.

:func:`read_request` gives the same verdict and, for a server that answers from the
head itself (the decision port's), the request: method, target, version and fields,
found in the same pass that checks the head (see its docstring for why the two
readings always agree; ``tests/test_decision_server.py`` checks it byte by byte).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import itemgetter

from .errors import GatewayError

# Limits, at or below those passed to aiohttp's server (AIOHTTP_LIMITS): aiohttp checks
# the request target against max_line_size, a header name and name+value against
# max_field_size, and headers (with trailers) against max_headers.
MAX_REQUEST_LINE = 8190
MAX_FIELD_LINE = 8190
MAX_FIELDS = 100
MAX_TRAILER_FIELDS = 20
MAX_HEAD = 64 * 1024
MAX_CHUNK_SIZE_LINE = 1024
MAX_CONTENT_LENGTH_DIGITS = 18
AIOHTTP_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 128}

# llhttp's methods in request mode, most used first; CONNECT (a tunnel, not a request
# keygate can route) and PRI (the HTTP/2 preface) are left out.
METHODS = (
    b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"QUERY", b"TRACE",
    b"COPY", b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK",
    b"BIND", b"REBIND", b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY", b"CHECKOUT",
    b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PURGE",
    b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE",
)
_METHOD_SET = frozenset(METHODS)

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
# origin-form: visible ASCII after '/', except '#' (a fragment is never sent)
_TARGET = rb"/[\x21\x22\x24-\x7e]*"
_REQUEST_LINE = (
    rb"(" + b"|".join(re.escape(m) for m in METHODS) + rb") (" + _TARGET + rb"|\*) HTTP/1\.([01])"
)
# token ":" OWS value OWS, where value and OWS are HTAB, SP, VCHAR and obs-text
_FIELD_LINE = rb"[" + _TCHAR + rb"]+:[\t\x20-\x7e\x80-\xff]*"
_REQUEST_LINE_RE = re.compile(_REQUEST_LINE)
_FIELD_LINE_RE = re.compile(_FIELD_LINE)
_HEAD_RE = re.compile(_REQUEST_LINE + rb"\r\n(?:" + _FIELD_LINE + rb"\r\n)*\r\n")
TRAILER_LINE_RE = re.compile(_FIELD_LINE + rb"\r\n")
# read_request's reading of a decoded head: the request line, and each field line as
# CRLF, name, colon, whitespace, then the value up to the next CR; and the bytes a head
# may hold besides CR and LF (HTAB, visible ASCII, obs-text)
_REQUEST_LINE_TEXT_RE = re.compile(_REQUEST_LINE.decode("ascii"))
_FIELD_TEXT_RE = re.compile(r"\r\n([" + _TCHAR.decode("ascii") + r"]+):[ \t]*([^\r]*)")
_IN_LINES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
field_name = itemgetter(0)  # of a (name, value) field
_HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")

# The fields that frame or route a message, or that aiohttp refuses to see twice (its
# SINGLETON_HEADERS) or at all (Sec-WebSocket-Key1): found by one search per head.
_SINGLETONS = {
    b"content-length": "Content-Length", b"transfer-encoding": "Transfer-Encoding",
    b"host": "Host", b"content-location": "Content-Location",
    b"content-range": "Content-Range", b"content-type": "Content-Type", b"etag": "ETag",
    b"max-forwards": "Max-Forwards", b"server": "Server", b"user-agent": "User-Agent",
}
_WATCHED = (*_SINGLETONS, b"connection", b"expect", b"sec-websocket-key1")
_WATCHED_SET = frozenset(_WATCHED)
_WATCHED_FIELD = re.compile(  # searched in the lower-cased head
    rb"\r\n(" + b"|".join(re.escape(n) for n in _WATCHED) + rb"):([^\r]*)"
)
TRAILER_FORBIDDEN = frozenset((*_WATCHED, b"upgrade", b"trailer"))
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~\-]*)(?::([0-9]{0,5}))?")
_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_CONTENT_LENGTH_DIGITS)
# chunk-size [ chunk-ext ] CRLF, with extensions written as llhttp accepts them
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
CHUNK_SIZE_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,15})(?:;[" + _TCHAR + rb"]+(?:=(?:[" + _TCHAR + rb"]+|" + _QUOTED
    + rb"))?)*\r\n"
)
# a control character other than HTAB, or a CR or LF that is not part of a CRLF
_NEVER_IN_HEAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?=[^\n])|(?<!\r)\n")


class Refusal(GatewayError):
    """Why a request was refused, in keygate's error shape. The message says what is
    wrong and never quotes the client's bytes: it reaches the client and the log."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message, code=code)
        self.status = status


def _malformed(message: str) -> Refusal:
    return Refusal(400, "malformed_request", message)


BARE_LINE_END = _malformed("request lines must end in CRLF; a bare LF or CR was found")
CONTROL_CHARACTER = _malformed(
    "the request head contains a control character (such as NUL) where none is allowed"
)
REQUEST_LINE_SHAPE = _malformed(
    "the request line must be: method, one space, target, one space, HTTP/1.1"
)
METHOD_NOT_TOKEN = _malformed("the method contains characters not allowed in a method")
UNKNOWN_METHOD = Refusal(501, "not_implemented", "keygate does not implement this method")
CONNECT_METHOD = Refusal(
    501, "not_implemented", "CONNECT is not supported: keygate is not a forward proxy"
)
HTTP_VERSION = Refusal(
    505, "http_version_not_supported", "only HTTP/1.1 and HTTP/1.0 are supported"
)
TARGET_CHARACTER = _malformed(
    "the request target contains a space, control character, '#' or non-ASCII byte; "
    "percent-encode it"
)
TARGET_ABSOLUTE = _malformed(
    "absolute-form request targets are not accepted: send the path and query, and the "
    "host in the Host header"
)
TARGET_FORM = _malformed(
    "the request target must be a path starting with '/' ('*' only for OPTIONS)"
)
REQUEST_LINE_TOO_LONG = Refusal(
    414, "uri_too_long", f"the request line is longer than {MAX_REQUEST_LINE} bytes"
)
FIELD_TOO_LONG = Refusal(
    431, "request_header_fields_too_large",
    f"a header line is longer than {MAX_FIELD_LINE} bytes",
)
TOO_MANY_FIELDS = Refusal(
    431, "request_header_fields_too_large", f"more than {MAX_FIELDS} header fields"
)
HEAD_TOO_LARGE = Refusal(
    431, "request_header_fields_too_large", f"the request head is larger than {MAX_HEAD} bytes"
)
OBSOLETE_FOLDING = _malformed(
    "a header line starts with whitespace (obsolete line folding is not accepted)"
)
NO_COLON = _malformed("a header line has no colon")
SPACE_BEFORE_COLON = _malformed("whitespace between a header name and its colon is not allowed")
FIELD_NAME = _malformed("a header name is empty or contains a character not allowed in a name")
FIELD_VALUE = _malformed("a header value contains a control character")
HOST_MISSING = _malformed("an HTTP/1.1 request needs a Host header")
HOST_INVALID = _malformed("the Host header must be a host name or address and optional port")
CONTENT_LENGTH = _malformed(
    f"Content-Length must be a decimal number of at most {MAX_CONTENT_LENGTH_DIGITS} digits"
)
LENGTH_AND_CHUNKED = _malformed(
    "a request may not carry both Content-Length and Transfer-Encoding"
)
TRANSFER_CODING = Refusal(
    501, "not_implemented", "the only transfer coding keygate accepts is chunked, alone"
)
TRANSFER_CODING_HTTP10 = _malformed("Transfer-Encoding is not allowed in an HTTP/1.0 request")
CONNECTION_OPTIONS = _malformed("the Connection header must be a comma-separated list of tokens")
EXPECTATION = Refusal(
    417, "expectation_failed", "the only expectation keygate meets is 100-continue"
)
WEBSOCKET_KEY1 = _malformed("the obsolete WebSocket handshake (Sec-WebSocket-Key1) is refused")
MALFORMED_HEAD = _malformed("the request head is malformed")
# inside a body: the connection is aborted, these only name the reason in the log
CHUNK_SIZE = _malformed("a chunk size line is malformed")
CHUNK_END = _malformed("chunk data does not end in CRLF")
TRAILER = _malformed("a trailer field is malformed, repeated too often, or not allowed")


def _duplicate(name: str) -> Refusal:
    return _malformed(f"more than one {name} header")


DUPLICATES = {key: _duplicate(name) for key, name in _SINGLETONS.items()}


def check_request_line(line: bytes) -> Refusal | None:
    """The request line (without CRLF): ``None`` if it is acceptable."""
    if len(line) > MAX_REQUEST_LINE:
        return REQUEST_LINE_TOO_LONG
    match = _REQUEST_LINE_RE.fullmatch(line)
    if match is not None:
        if match.group(2) == b"*" and match.group(1) != b"OPTIONS":
            return TARGET_FORM
        return None
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return REQUEST_LINE_SHAPE
    method, target, version = parts
    if not _HTTP_VERSION.fullmatch(version):
        return REQUEST_LINE_SHAPE
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return HTTP_VERSION
    if not _TOKEN.fullmatch(method):
        return METHOD_NOT_TOKEN
    if method == b"CONNECT":
        return CONNECT_METHOD
    if method not in _METHOD_SET:
        return UNKNOWN_METHOD
    if target[:1] == b"/":
        return TARGET_CHARACTER
    if b"://" in target:
        return TARGET_ABSOLUTE
    return TARGET_FORM


def check_field_line(line: bytes) -> Refusal | None:
    """A header or trailer line (without CRLF): ``None`` if it is acceptable."""
    if len(line) > MAX_FIELD_LINE:
        return FIELD_TOO_LONG
    if _FIELD_LINE_RE.fullmatch(line):
        return None
    if line[:1] in (b" ", b"\t"):
        return OBSOLETE_FOLDING
    name, colon, _ = line.partition(b":")
    if not colon:
        return NO_COLON
    if name and name.rstrip(b" \t") != name:
        return SPACE_BEFORE_COLON
    if not _TOKEN.fullmatch(name):
        return FIELD_NAME
    return FIELD_VALUE


def diagnose(head: bytes) -> Refusal:
    """The first rule a refused head breaks (the slow path: runs only on refusal)."""
    refusal = check_lines(head, 0, first_line=True)[0]
    return refusal or MALFORMED_HEAD


def check_lines(
    buf: bytes | bytearray, start: int, first_line: bool, new: int = 0
) -> tuple[Refusal | None, int]:
    """Check the complete lines of ``buf`` from ``start`` (the first of them is the
    request line if ``first_line``), and whether the unfinished last line could still
    become acceptable; bytes before ``new`` are known to hold no control character.
    Returns the first violation and where checking may resume."""
    unseen = max(start, new - 1, 0)  # a CR just before the new bytes is seen again
    bad = _NEVER_IN_HEAD.search(buf, unseen)
    if bad is not None:
        return (BARE_LINE_END if bad.group() in (b"\r", b"\n") else CONTROL_CHARACTER), start
    while True:
        end = buf.find(b"\r\n", unseen)
        if end < 0:
            unfinished = len(buf) - start
            if first_line and unfinished > MAX_REQUEST_LINE:
                return REQUEST_LINE_TOO_LONG, start
            if not first_line and unfinished > MAX_FIELD_LINE:
                return FIELD_TOO_LONG, start
            return None, start
        line = bytes(buf[start:end])
        if first_line:
            refusal = check_request_line(line)
            first_line = False
        elif not line:  # the empty line that ends the head
            return None, end + 2
        else:
            refusal = check_field_line(line)
        if refusal is not None:
            return refusal, start
        start = unseen = end + 2


def read_head(head: bytes) -> tuple[int, bool] | Refusal:
    """A complete head, from its request line to its empty line: the length of the body
    that follows (``CHUNKED`` for the chunked coding) and whether the connection closes
    after this request, as llhttp decides it; or why it is refused."""
    match = _HEAD_RE.fullmatch(head)
    if match is None:
        return diagnose(head)
    method, target, minor = match.groups()
    return _framing(head, target == b"*" and method != b"OPTIONS", minor == b"1",
                    head.count(b"\r\n") - 2, _WATCHED_FIELD.findall(head.lower()))


# What read_request gives for an accepted head: its framing, as read_head gives it
# (body length, whether the connection closes after it), then its request as aiohttp's
# parser would give it: method, target, version ("HTTP/1.1" or "HTTP/1.0") and fields
# (UTF-8, undecodable bytes as surrogates; values without surrounding whitespace). A
# plain tuple: it is made for every request.
RequestHead = tuple[int, bool, str, str, str, list[tuple[str, str]]]

# What read_request remembers, since a front proxy sends the same few heads but for a
# value here and there: which fields of a head are framing and routing fields, by the
# names it carries in order ((index, lower-cased name), as _WATCHED_FIELD would find
# them); and the verdict on those fields, by the version and their values (judging
# them was a third of the reading). Bounded: names and values are the client's.
_WATCHED_AT: dict[tuple[str, ...], tuple[tuple[int, bytes], ...]] = {}
_VERDICTS: dict[tuple[bool, tuple[tuple[bytes, bytes], ...]], tuple[int, bool] | Refusal] = {}
_MEMORY = 1024
_MEMORY_ENTRY = 512


def read_request(head: bytes) -> RequestHead | Refusal:
    """:func:`read_head`'s verdict on a complete head, and the request it carries.

    Read in one pass over the decoded head: its field lines found by one regular
    expression (:data:`_FIELD_TEXT_RE`), then three facts decide, and they hold
    exactly when :func:`read_head`'s pattern matches: (1) the request line matches it;
    (2) every byte is one a line may hold or part of a CRLF (deleting the ones a line
    may hold leaves two bytes per CRLF, so no bare CR or LF and no control character);
    (3) every line between the request line and the empty line was found as a field
    line (one per CRLF but the first and the last two: a field line is found only at
    the CRLF before it, and only if its name is a token followed by a colon; its value
    runs to the next CR, which (2) makes a line's end). What follows the pattern
    (lengths, field count, framing and routing fields) is :func:`read_head`'s own code,
    on the same bytes. A head refused here gets :func:`read_head`'s refusal."""
    text = head.decode("utf-8", "surrogateescape")
    crlf = text.count("\r\n")
    fields = _FIELD_TEXT_RE.findall(text)
    request_line = _REQUEST_LINE_TEXT_RE.fullmatch(text, 0, text.find("\r\n"))
    if (request_line is None or len(fields) != crlf - 2
            or len(head.translate(None, _IN_LINES)) != 2 * crlf):
        verdict = read_head(head)
        if isinstance(verdict, Refusal):
            return verdict
        # both readings agree on every head (tested); were they ever not to, the
        # pattern's verdict stands and the lines are read one by one
        return _read_slowly(text, verdict)
    method, target, minor = request_line.groups()
    http11 = minor == "1"
    if len(head) > MAX_FIELD_LINE or len(fields) > MAX_FIELDS or target == "*":
        framing = _framing(head, target == "*" and method != "OPTIONS", http11, len(fields),
                           _WATCHED_FIELD.findall(head.lower()))
    else:
        names = tuple(map(field_name, fields))
        at = _WATCHED_AT.get(names)
        if at is None:
            at = watched_at(names)
        # values lower-cased (and without the whitespace after the colon, which every
        # check strips): what _WATCHED_FIELD finds in the lower-cased head
        framing = field_verdict(http11, tuple([
            (name, fields[index][1].encode("utf-8", "surrogateescape").lower())
            for index, name in at]))
    if isinstance(framing, Refusal):
        return framing
    if " \r\n" in text or "\t\r\n" in text:  # whitespace before a line's end
        fields = [(name, value.rstrip(" \t")) for name, value in fields]
    return framing[0], framing[1], method, target, "HTTP/1." + minor, fields


def watched_at(names: tuple[str, ...]) -> tuple[tuple[int, bytes], ...]:
    """Where the framing and routing fields are among a head's field ``names``:
    (index, lower-cased name), as :data:`_WATCHED_FIELD` finds them (remembered)."""
    at = _WATCHED_AT.get(names)
    if at is not None:
        return at
    at = tuple((index, name.lower().encode("ascii")) for index, name in enumerate(names)
               if name.lower().encode("ascii") in _WATCHED_SET)
    if sum(map(len, names)) <= _MEMORY_ENTRY:
        if len(_WATCHED_AT) >= _MEMORY:
            _WATCHED_AT.clear()
        _WATCHED_AT[names] = at
    return at


def field_verdict(
    http11: bool, watched: tuple[tuple[bytes, bytes], ...]
) -> tuple[int, bool] | Refusal:
    """:func:`_judge_fields` on a head of at most :data:`MAX_FIELD_LINE` bytes and
    :data:`MAX_FIELDS` fields whose target is not ``*`` (the checks before it cannot
    refuse such a head), remembered."""
    key = (http11, watched)
    verdict = _VERDICTS.get(key)
    if verdict is None:
        verdict = _judge_fields(http11, watched)
        if sum(len(value) for _, value in watched) <= _MEMORY_ENTRY:
            if len(_VERDICTS) >= _MEMORY:
                _VERDICTS.clear()
            _VERDICTS[key] = verdict
    return verdict


def _read_slowly(text: str, framing: tuple[int, bool]) -> RequestHead:
    lines = text[:-4].split("\r\n")
    method, target, version = lines[0].split(" ")
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.append((name, value.strip(" \t")))
    return framing[0], framing[1], method, target, version, fields


def _framing(
    head: bytes, target_form: bool, http11: bool, field_count: int,
    watched: Sequence[tuple[bytes, bytes]],
) -> tuple[int, bool] | Refusal:
    """The checks after the pattern: line lengths, the field count, the target's form,
    then the ``watched`` fields (lower-cased name, lower-cased raw value, in order)."""
    if len(head) > MAX_FIELD_LINE and (refusal := diagnose_lengths(head)) is not None:
        return refusal
    if field_count > MAX_FIELDS:
        return TOO_MANY_FIELDS
    if target_form:
        return TARGET_FORM
    return _judge_fields(http11, watched)


def _judge_fields(
    http11: bool, watched: Sequence[tuple[bytes, bytes]]
) -> tuple[int, bool] | Refusal:
    """The framing and routing fields (lower-cased name, lower-cased raw value, in the
    order sent): the body's length and whether the connection closes, or the refusal."""
    length = 0
    chunked = has_length = has_host = False
    closes = not http11  # HTTP/1.0 closes unless it asks for keep-alive
    seen: set[bytes] = set()
    # names and values lower-cased: every value looked at here is case-insensitive
    for name, value in watched:
        if name in seen and name in _SINGLETONS:
            return DUPLICATES[name]
        seen.add(name)
        if name == b"host":
            host = _HOST.fullmatch(value.strip(b" \t"))
            if host is None or len(host.group(1) or b"") == 5 and int(host.group(1)) > 65535:
                return HOST_INVALID
            has_host = True
        elif name == b"content-length":
            value = value.strip(b" \t")
            if not _DIGITS.fullmatch(value):
                return CONTENT_LENGTH
            length = int(value)
            has_length = True
        elif name == b"connection":
            options = _connection_options(value)
            if options is None:
                return CONNECTION_OPTIONS
            if http11:
                closes = closes or b"close" in options
            elif b"keep-alive" in options:
                closes = False
        elif name == b"transfer-encoding":
            if value.strip(b" \t") != b"chunked":
                return TRANSFER_CODING
            chunked = True
        elif name == b"expect":
            if value.strip(b" \t").lower() != b"100-continue":  # case-insensitive (RFC 9110)
                return EXPECTATION
        elif name == b"sec-websocket-key1":  # aiohttp refuses it with its own error
            return WEBSOCKET_KEY1
    if http11 and not has_host:
        return HOST_MISSING
    if chunked:
        if has_length:
            return LENGTH_AND_CHUNKED
        if not http11:
            return TRANSFER_CODING_HTTP10
        return CHUNKED, closes
    return length, closes


_COMMON_CONNECTION = {b"keep-alive": (b"keep-alive",), b"close": (b"close",)}


def _connection_options(value: bytes) -> tuple[bytes, ...] | list[bytes] | None:
    """The options of a (lower-cased) Connection value, as llhttp splits them; None if
    it is not a list of tokens, whose meaning parsers could disagree on."""
    common = _COMMON_CONNECTION.get(value.strip(b" \t"))
    if common is not None:
        return common
    options = [o.strip(b" \t") for o in value.split(b",")]
    if not all(_TOKEN.fullmatch(o) for o in options if o):
        return None
    return options


def diagnose_lengths(head: bytes) -> Refusal | None:
    """Line lengths of a head longer than one line may be (only big heads pay this)."""
    lines = head.split(b"\r\n")
    if len(lines[0]) > MAX_REQUEST_LINE:
        return REQUEST_LINE_TOO_LONG
    if any(len(line) > MAX_FIELD_LINE for line in lines[1:]):
        return FIELD_TOO_LONG
    return None


CHUNKED = -1
