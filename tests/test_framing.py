"""The strict request reader (gateway.framing): what it passes on and what it refuses,
a differential test against aiohttp's own server (what the reader accepts, aiohttp's
parser accepts, and frames the same way), and a property test of keygate's ports:
whatever bytes arrive, the answer is keygate's JSON or a normal answer, never aiohttp's
text/plain, never a 500, never the input echoed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_connections import Served, exchange, read_answer, serving

from gateway import framing, http_head
from gateway.framing import SYNTHETIC_REQUEST, RequestReader
from gateway.http_head import (
    AIOHTTP_LIMITS,
    MAX_FIELD_LINE,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_REQUEST_LINE,
    Refusal,
)

SECRET = b"kgt_ReaderSecretNeverQuoted0123456789"


def feed(*chunks: bytes) -> tuple[RequestReader, list[bytes]]:
    reader = RequestReader()
    passed: list[bytes] = []
    for chunk in chunks:
        reader.feed(chunk, passed.append)
    return reader, passed


def get(path: bytes = b"/orders/7", *fields: bytes, version: bytes = b"1.1") -> bytes:
    lines = [b"GET " + path + b" HTTP/" + version, b"Host: api.test", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


CHUNKED = (
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5;name=value;quoted="a \\" b"\r\nhello\r\n10\r\n0123456789abcdef\r\n'
    b"0;last\r\nChecksum: abc\r\nX-Trailer: 1\r\n\r\n"
)
WITH_LENGTH = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
STREAMS = {
    "one GET": [get()],
    "GET with a query": [get(b"/orders/7?sort=-date&page=2&f[a]=%20")],
    "POST with Content-Length": [WITH_LENGTH],
    "chunked with extensions and trailers": [CHUNKED],
    "pipelined": [get(), WITH_LENGTH, CHUNKED, get(b"/last")],
    "empty lines before a request": [b"\r\n\r\n" + get()],
    "HTTP/1.0 keep-alive": [get(b"/", b"Connection: keep-alive", version=b"1.0"), get()],
    "OPTIONS *": [b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"],
}


# -- passing on ---------------------------------------------------------------------------
def test_a_request_in_one_read_is_passed_on_as_is_without_a_copy():
    data = get(b"/orders/7", b"X-API-AppToken: " + SECRET)
    reader, passed = feed(data)
    assert passed == [data] and passed[0] is data
    assert reader.heads == 1 and not reader.in_body and not reader.head_started


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_split_passes_on_the_same_bytes_one_message_per_call(name):
    messages = STREAMS[name]
    stream = b"".join(messages)
    ends = [sum(map(len, messages[: i + 1])) for i in range(len(messages))]
    splits = [[stream]]
    splits += [[stream[:i], stream[i:]] for i in range(1, len(stream))]
    splits += [[stream[:i], stream[i:j], stream[j:]]
               for i in range(1, len(stream), 7) for j in range(i + 1, len(stream), 5)]
    splits.append([bytes([b]) for b in stream])
    for chunks in splits:
        reader, passed = feed(*chunks)
        assert b"".join(passed) == stream
        assert reader.heads == len(messages) and reader.refusal is None and not reader.in_body
        offset = 0
        for piece in passed:  # no call spans the end of a message
            assert not any(offset < end < offset + len(piece) for end in ends)
            offset += len(piece)


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue", b"100-CONTINUE",
                                   b" 100-continue "])
def test_expect_100_continue_is_accepted_in_any_case(value):
    """The expectation token is case-insensitive (RFC 9110 §10.1.1): curl and others
    spell it differently."""
    data = WITH_LENGTH.replace(b"\r\n\r\n", b"\r\nExpect:" + value + b"\r\n\r\n", 1)
    reader, passed = feed(data)
    assert passed == [data] and reader.refusal is None


def test_pipelined_requests_in_one_read_are_passed_on_one_message_at_a_time():
    messages = STREAMS["pipelined"]
    _, passed = feed(b"".join(messages))
    assert passed == messages


def test_an_unfinished_head_is_held_back_until_it_is_complete():
    data = get()
    reader, passed = feed(data[:-3])
    assert passed == [] and reader.head_started and reader.heads == 0
    reader.feed(data[-3:], passed.append)
    assert b"".join(passed) == data and reader.heads == 1


def test_nothing_after_a_request_that_closes_the_connection_is_passed_on():
    """llhttp refuses any byte after such a request; the connection closes after it."""
    for first in (get(b"/", b"Connection: close"), get(b"/", b"Connection: keep-alive, Close"),
                  get(b"/", version=b"1.0"), get(b"/", b"Connection: close", b"Content-Length: 2")
                  + b"ab"):
        reader, passed = feed(first + get() + b"garbage\x00")
        assert b"".join(passed) == first and reader.stopped and reader.refusal is None


# -- refusing heads -----------------------------------------------------------------------
def token_line(line: bytes) -> bytes:
    return line.replace(b"TOKEN", SECRET)


REFUSED = {
    # line ends and control characters
    "bare LF line ends": (b"GET / HTTP/1.1\nHost: a\nX-API-AppToken: TOKEN\n\n", 400),
    "one bare LF": (b"GET / HTTP/1.1\r\nHost: a\nX-API-AppToken: TOKEN\r\n\r\n", 400),
    "a bare CR": (b"GET / HTTP/1.1\r\nHost: a\rX-API-AppToken: TOKEN\r\n\r\n", 400),
    "NUL after the token": (get(b"/", b"X-API-AppToken: TOKEN\x00"), 400),
    "DEL in a value": (get(b"/", b"X-API-AppToken: TO\x7fKEN"), 400),
    "a control character in a value": (get(b"/", b"X-API-AppToken: TOKEN\x1b"), 400),
    # header lines
    "space before the colon": (get(b"/", b"X-API-AppToken : TOKEN"), 400),
    "tab before the colon": (get(b"/", b"X-API-AppToken\t: TOKEN"), 400),
    "obsolete line folding": (get(b"/", b"X-A: b", b" TOKEN"), 400),
    "a line without a colon": (get(b"/", b"X-API-AppToken TOKEN"), 400),
    "an empty header name": (get(b"/", b": TOKEN"), 400),
    "a separator in a name": (get(b"/", b"X-API(AppToken): TOKEN"), 400),
    "non-ASCII in a name": (get(b"/", b"X-\xc3\xa9: TOKEN"), 400),
    # request line
    "an unknown method": (b"FETCH / HTTP/1.1\r\nHost: a\r\nX: TOKEN\r\n\r\n", 501),
    "a lower-case method": (b"get / HTTP/1.1\r\nHost: a\r\nX: TOKEN\r\n\r\n", 501),
    "a method that is no token": (b"G(T / HTTP/1.1\r\nHost: a\r\nX: TOKEN\r\n\r\n", 400),
    "CONNECT": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nX: TOKEN\r\n\r\n", 501),
    "HTTP/1.2": (get(b"/", b"X: TOKEN", version=b"1.2"), 505),
    "HTTP/2.0": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    "HTTP/0.9": (get(b"/", b"X: TOKEN", version=b"0.9"), 505),
    "lower-case http": (b"GET / http/1.1\r\nHost: a\r\nX: TOKEN\r\n\r\n", 400),
    "a space after the version": (b"GET / HTTP/1.1 \r\nHost: a\r\nX: TOKEN\r\n\r\n", 400),
    "two spaces": (b"GET  / HTTP/1.1\r\nHost: a\r\nX: TOKEN\r\n\r\n", 400),
    "a space in the target": (b"GET /a b HTTP/1.1\r\nHost: a\r\nX: TOKEN\r\n\r\n", 400),
    "a fragment": (get(b"/a#TOKEN"), 400),
    "non-ASCII in the target": (get(b"/caf\xc3\xa9", b"X: TOKEN"), 400),
    "a tab in the target": (get(b"/a\tb", b"X: TOKEN"), 400),
    "absolute-form": (get(b"http://evil.test/", b"X: TOKEN"), 400),
    "authority-form": (get(b"evil.test:80", b"X: TOKEN"), 400),
    "* without OPTIONS": (get(b"*", b"X: TOKEN"), 400),
    # framing and routing fields
    "two Host": (get(b"/", b"Host: b", b"X: TOKEN"), 400),
    "no Host on HTTP/1.1": (b"GET / HTTP/1.1\r\nX: TOKEN\r\n\r\n", 400),
    "a Host with a path": (get(b"/", b"X: TOKEN").replace(b"api.test", b"a/b"), 400),
    "a Host with a port too big": (get(b"/").replace(b"api.test", b"a:65536"), 400),
    "two Content-Length": (get(b"/", b"Content-Length: 1", b"Content-Length: 1"), 400),
    "a signed Content-Length": (get(b"/", b"Content-Length: +1"), 400),
    "a list as Content-Length": (get(b"/", b"Content-Length: 1, 1"), 400),
    "an empty Content-Length": (get(b"/", b"Content-Length: "), 400),
    "a 19-digit Content-Length": (get(b"/", b"Content-Length: " + b"1" * 19), 400),
    "Content-Length and chunked": (
        get(b"/", b"Content-Length: 3", b"Transfer-Encoding: chunked"), 400),
    "gzip coding": (get(b"/", b"Transfer-Encoding: gzip"), 501),
    "gzip, chunked": (get(b"/", b"Transfer-Encoding: gzip, chunked"), 501),
    "chunked twice in one field": (get(b"/", b"Transfer-Encoding: chunked, chunked"), 501),
    "two Transfer-Encoding": (
        get(b"/", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400),
    "chunked on HTTP/1.0": (get(b"/", b"Transfer-Encoding: chunked", version=b"1.0"), 400),
    "two User-Agent": (get(b"/", b"User-Agent: a", b"User-Agent: b"), 400),
    "two Content-Type": (get(b"/", b"Content-Type: a", b"content-type: b"), 400),
    "a Connection that is no list": (get(b"/", b"Connection: close TOKEN"), 400),
    "an unknown expectation": (get(b"/", b"Expect: TOKEN"), 417),
    "the old WebSocket handshake": (get(b"/", b"Sec-WebSocket-Key1: TOKEN"), 400),
    # limits
    "a request line too long": (get(b"/" + b"a" * (MAX_REQUEST_LINE - 13)), 414),
    "a header line too long": (get(b"/", b"X: " + b"a" * (MAX_FIELD_LINE - 2)), 431),
    "too many header fields": (get(b"/", *[b"X-%d: v" % i for i in range(MAX_FIELDS)]), 431),
    "a head too large": (get(b"/", *[b"X: " + b"a" * 8000] * 9), 431),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_head_is_replaced_by_the_stand_in_and_nothing_is_quoted(name):
    data, status = REFUSED[name]
    data = token_line(data)
    reader, passed = feed(data + get())
    assert passed == [SYNTHETIC_REQUEST]
    assert reader.stopped and reader.heads == 0
    refusal = reader.refusal
    assert isinstance(refusal, Refusal) and refusal.status == status
    assert refusal.code == {400: "malformed_request", 414: "uri_too_long",
                            431: "request_header_fields_too_large", 417: "expectation_failed",
                            501: "not_implemented", 505: "http_version_not_supported"}[status]
    assert "TOKEN" not in refusal.message and SECRET.decode() not in refusal.message
    fixed = [r for r in vars(http_head).values() if isinstance(r, Refusal)]
    fixed += http_head.DUPLICATES.values()
    assert refusal.message in {r.message for r in fixed}  # a fixed text, never built
    reader, passed = feed(*(bytes([b]) for b in data))  # byte by byte: the same verdict
    assert passed == [SYNTHETIC_REQUEST] and reader.refusal is not None
    assert reader.refusal.status == status


def test_the_limits_themselves_are_accepted():
    line = get(b"/" + b"a" * (MAX_REQUEST_LINE - 14))
    assert len(line.split(b"\r\n")[0]) == MAX_REQUEST_LINE
    field = b"X: " + b"a" * (MAX_FIELD_LINE - 3)
    for data in (line, get(b"/", field),
                 get(b"/", *[b"X-%d: v" % i for i in range(MAX_FIELDS - 1)])):
        reader, passed = feed(data)
        assert reader.refusal is None and b"".join(passed) == data


@pytest.mark.parametrize("start", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"GET / HTTP/1.1\nHost: a",
    b"GET / HTTP/1.1\r\nX-API-AppToken : TOKEN\r\n",
    b"FETCH / HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nX: \x00",
    b"GET /" + b"a" * MAX_REQUEST_LINE,
    b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_FIELD_LINE,
])
def test_an_unfinished_head_that_cannot_end_well_is_refused_at_once(start):
    reader, passed = feed(token_line(start))
    assert passed == [SYNTHETIC_REQUEST] and reader.refusal is not None


def test_an_endless_head_is_refused_when_it_passes_the_limit():
    reader, passed = RequestReader(), []
    line = b"X-Filler: " + b"a" * 8000 + b"\r\n"
    reader.feed(b"GET / HTTP/1.1\r\n", passed.append)
    sent = 0
    while not reader.stopped:
        reader.feed(line, passed.append)
        sent += len(line)
        assert sent <= MAX_HEAD + len(line)
    assert passed == [SYNTHETIC_REQUEST] and reader.refusal is not None
    assert reader.refusal.status == 431


def test_empty_lines_before_a_trickled_head_are_scanned_once(monkeypatch):
    """Empty lines may come before a request line (RFC 9112 §2.2): 64 KiB of them, then
    the head a byte at a time. Each read went over all of them again, twice (some
    5 ms a byte here: a few connections sending a byte every few milliseconds kept a
    process busy); each is now looked at a bounded number of times, however the head
    trickles in."""
    looked_at = 0
    skip = framing._skip_empty_lines

    def counted(data: bytes | bytearray, pos: int) -> int:
        nonlocal looked_at
        end = skip(data, pos)
        looked_at += (end - pos) // 2 + 1  # the empty lines passed, and the look that ended it
        return end

    monkeypatch.setattr(framing, "_skip_empty_lines", counted)
    lead = b"\r\n" * (MAX_HEAD // 2 - 64)
    head = get()
    reader, passed = feed(lead, *(head[i:i + 1] for i in range(len(head))))
    assert reader.heads == 1 and reader.refusal is None
    assert b"".join(passed) == lead + head
    assert looked_at <= len(lead) + 4 * len(head)  # each empty line about twice


# -- refusing bodies ------------------------------------------------------------------------
HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
BROKEN_BODIES = {
    "a chunk size that is no number": b"zz\r\n",
    "a space after the size": b"5 \r\nhello\r\n0\r\n\r\n",
    "a bare LF after the size": b"5\nhello\r\n0\r\n\r\n",
    "a signed size": b"-5\r\nhello\r\n0\r\n\r\n",
    "a 0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "sixteen hex digits": b"1" + b"0" * 15 + b"\r\n",
    "space in an extension": b"5; a=b\r\nhello\r\n0\r\n\r\n",
    "an empty extension": b"5;\r\nhello\r\n0\r\n\r\n",
    "a control character in an extension": b'5;a="\x01"\r\nhello\r\n0\r\n\r\n',
    "data longer than its size": b"5\r\nhello!\r\n0\r\n\r\n",
    "data ended by a bare LF": b"5\r\nhello\n0\r\n\r\n",
    "an endless size line": b"5;" + b"a" * 2000,
    "Content-Length as a trailer": b"0\r\nContent-Length: 5\r\n\r\n",
    "Host as a trailer": b"0\r\nHost: b\r\n\r\n",
    "a trailer without a colon": b"0\r\nChecksum\r\n\r\n",
    "a trailer with a NUL": b"0\r\nChecksum: \x00\r\n\r\n",
    "a folded trailer": b"0\r\nChecksum: a\r\n b\r\n\r\n",
    "a bare LF ending the trailers": b"0\r\nChecksum: a\r\n\n",
    "too many trailers": b"0\r\n" + b"T: v\r\n" * 21 + b"\r\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN_BODIES))
def test_a_body_breaking_its_framing_breaks_the_connection(name):
    body = BROKEN_BODIES[name]
    for chunks in ([HEAD + body], [HEAD, body], [HEAD] + [bytes([b]) for b in body]):
        reader, passed = feed(*chunks)
        assert reader.broken is not None and reader.refusal is None and reader.stopped
        sent = b"".join(passed)
        assert sent.startswith(HEAD) and len(sent) < len(HEAD + body)  # not the bad part
        assert reader.heads == 1


def test_a_body_of_known_length_is_passed_on_whatever_it_holds():
    body = bytes(range(256)) * 4 + b"\r\n\r\nGET / HTTP/1.1\n\n"
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    reader, passed = feed(data, get())
    assert b"".join(passed) == data + get() and reader.heads == 2


# -- the differential test: aiohttp's own server ----------------------------------------------
SECOND = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
TEMPLATES = {
    "request line and headers": (
        b"GET /orders/7?q=a%20b HTTP/1.1\r\nHost: api.test:8080\r\n"
        b"X-API-AppToken: kgt_value\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n"
    ),
    "content length": (
        b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
    "chunked": (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;n=v;q="x"\r\nhello\r\n0\r\nChecksum: a\r\n\r\n'
    ),
}


def _positions(template: bytes) -> list[int]:
    """Every position of the request line and of the lines' ends, and the first, a middle
    and the last position of every header name and value (and body line)."""
    positions = set(range(template.index(b"\r\n") + 2))
    offset = template.index(b"\r\n") + 2
    for line in template[offset:].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        spans = [(offset, len(name))]
        if colon:
            spans.append((offset + len(name) + 1, len(value)))
        for start, length in spans:
            positions.update(p for p in (start, start + length // 2, start + length - 1)
                             if length)
        positions.update((offset + len(line), offset + len(line) + 1))
        offset += len(line) + 2
    return sorted(p for p in positions if p < len(template))


def _verdict(data: bytes) -> tuple[bytes, int, bool] | None:
    """What the reader passes on of ``data``, how many messages that is, and whether the
    connection then closes; None if it refuses any of it or waits for more."""
    reader, passed = feed(data)
    if reader.refusal is not None or reader.broken is not None:
        return None
    if reader.in_body or reader.head_started:
        return None
    return b"".join(passed), reader.heads, reader.stopped


@contextlib.asynccontextmanager
async def aiohttps_server() -> AsyncIterator[tuple[str, int]]:
    """aiohttp's low-level server, with the limits keygate gives it, and nothing in
    front: its handler says what it parsed."""

    async def handler(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        return web.Response(text=f"{request.method} {request.path} {len(body)}")

    runner = web.ServerRunner(web.Server(handler, **AIOHTTP_LIMITS))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield "127.0.0.1", runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _aiohttp_answers(
    address: tuple[str, int], data: bytes, messages: int, closes: bool
) -> str | None:
    """Send what the reader passed on to aiohttp: None if it answered each message with
    200 (the last being /second, so both framed the body alike) and, when the reader
    said the connection closes after them, closed it; else what went wrong."""
    reader, writer = await asyncio.open_connection(*address)
    answers = []
    try:
        writer.write(data)
        async with asyncio.timeout(10):
            while len(answers) < messages and (answer := await read_answer(reader)):
                answers.append(answer)
            if closes and await reader.read():
                return "bytes after the last answer"
    except (AssertionError, TimeoutError, ConnectionError) as exc:
        return repr(exc)
    finally:
        writer.close()
    if len(answers) != messages or any(a.status != 200 for a in answers):
        return repr([a.raw[:200] for a in answers])
    if not closes and not answers[-1].body.startswith(b"GET /second "):
        return "framed differently: " + repr(answers[-1].body)
    return None


async def test_what_the_reader_accepts_aiohttp_accepts_and_frames_alike():
    kept: list[bytes] = []  # accepted, connection kept: sent pipelined, many per connection
    closing: list[tuple[bytes, int]] = []
    for template in TEMPLATES.values():
        assert _verdict(template + SECOND) == (template + SECOND, 2, False)
        for position in _positions(template):
            for byte in range(256):
                mutated = template[:position] + bytes([byte]) + template[position + 1:]
                verdict = _verdict(mutated + SECOND)
                if verdict is None:
                    continue
                passed, messages, closes = verdict
                if closes:
                    closing.append((passed, messages))
                else:
                    assert messages == 2 and passed == mutated + SECOND
                    kept.append(passed)
    assert len(kept) > 3000 and closing  # the sweep exercised acceptance, not only refusal
    failures: list[str] = []
    limit = asyncio.Semaphore(16)

    async def check(cases: list[bytes], closes: bool, messages: int) -> None:
        async with limit:
            problem = await _aiohttp_answers(address, b"".join(cases), messages, closes)
        if problem is None:
            return
        if len(cases) > 1:  # find the culprit
            await asyncio.gather(*(check([case], closes, messages // len(cases))
                                   for case in cases))
        else:
            failures.append(f"{cases[0]!r}: {problem}")

    batch = 50
    async with aiohttps_server() as address:
        await asyncio.gather(
            *(check(kept[i:i + batch], False, 2 * len(kept[i:i + batch]))
              for i in range(0, len(kept), batch)),
            *(check([data], True, messages) for data, messages in closing),
        )
    assert not failures, f"{len(failures)} failed:\n" + "\n".join(failures[:20])


# -- the property: keygate's ports, whatever arrives ----------------------------------------
BASES = [
    b"GET /orders/7 HTTP/1.1\r\nHost: api.test\r\nX-API-AppKey: KEY\r\n"
    b"X-API-AppToken: TOKEN\r\n\r\n",
    b"POST /orders HTTP/1.1\r\nHost: api.test\r\nX-API-AppKey: KEY\r\n"
    b"X-API-AppToken: TOKEN\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    b"PUT /orders/7 HTTP/1.1\r\nHost: api.test\r\nX-API-AppToken: TOKEN\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: v\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-API-AppToken: TOKEN\r\n\r\n",
    b"GET /api/v1/accounts/acme/keys HTTP/1.1\r\nHost: x\r\nX-API-AppKey: KEY\r\n"
    b"X-API-AppToken: TOKEN\r\n\r\n",
]
INTERESTING = b"\r\n\x00\t :;,\"#/%?\x7f\xff0Ff-"


@st.composite
def byte_streams(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=300))
    stream = bytearray(b"".join(draw(st.lists(st.sampled_from(BASES), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(stream)))
        byte = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)))
        operation = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
        if operation == "replace" and position < len(stream):
            stream[position] = byte
        elif operation == "insert":
            stream.insert(position, byte)
        elif operation == "delete" and position < len(stream):
            del stream[position]
        elif operation == "cut" and position:
            del stream[position:]
    return bytes(stream)


@pytest.fixture
async def served(make_settings) -> AsyncIterator[Served]:
    # the server gives up on an unfinished request long before the test stops waiting
    async with serving(make_settings, header_timeout=1.0, body_timeout=1.0) as served:
        yield served


@given(streams=st.lists(st.tuples(byte_streams(), st.booleans()), min_size=1, max_size=8))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
async def test_whatever_arrives_keygate_answers_in_its_own_shape_and_quotes_nothing(
    served, streams
):
    token = served.key.token.encode()

    async def one(stream: bytes, to_proxy: bool) -> None:
        data = stream.replace(b"KEY", served.key.app_key.encode()).replace(b"TOKEN", token)
        reader, _ = feed(data)
        address = served.proxy if to_proxy else served.management
        expected = reader.heads + (reader.refusal is not None)
        until_closed = reader.stopped  # refused, broken, or closing: the server closes
        connection, writer = await asyncio.open_connection(*address)
        raw = b""
        try:
            writer.write(data)
            async with asyncio.timeout(6):
                answers = 0
                while until_closed or answers < expected:
                    answer = await read_answer(connection)
                    if answer is None:
                        break
                    answers += 1
                    raw += answer.raw
                    assert answer.status != 500, answer.raw
                    if answer.status >= 400:
                        assert answer.headers["Content-Type"].startswith("application/json")
                        assert set(answer.error()) == {"code", "message", "status",
                                                       "requestId"}
                    assert answer.headers["Server"] == "keygate"
        except ConnectionResetError:
            assert reader.broken is not None  # only a broken body is cut off so
        finally:
            writer.close()
        assert token not in raw and token[4:20] not in raw
        assert b"text/plain" not in raw

    await asyncio.gather(*(one(stream, to_proxy) for stream, to_proxy in streams))


async def test_options_asterisk_is_a_json_answer_on_both_ports(make_settings):
    async with serving(make_settings) as served:
        for address in (served.proxy, served.management):
            answers, _ = await exchange(
                address, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            assert answers[0].status != 500
            if answers[0].status >= 400:
                assert answers[0].headers["Content-Type"].startswith("application/json")
