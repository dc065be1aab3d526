"""The decision port's own HTTP/1.1 server (gateway.decision_server), attacked on real
sockets: keygate as ``keygate serve`` runs it (``running()``, the connection guard in
front), raw bytes in, raw bytes out.

What it must hold: pipelined requests answered in order; a head however it is split;
the strict reader's refusals in the one error shape, quoting nothing; the guard's
deadlines and cap; bodies never taken for requests; ``Connection: close`` and HTTP/1.0
as HTTP says; and a client that does not read its answers cannot make keygate hold
more and more. Also: the reading that serves this port (``read_request``, and the one
match of a learned shape) gives exactly the strict reader's verdict, byte by byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import Key
from decider import HOST, PORTS, collected_logs
from test_connections import (
    MARGIN,
    Answer,
    assert_one_shape,
    closed_within,
    exchange,
    is_closed,
    read_answer,
)
from test_framing import REFUSED, TEMPLATES, _positions, get

from gateway import decision_heads, http_head
from gateway.app import build_gateway, running
from gateway.decision_heads import SHAPES_PER_CONNECTION, ShapedReader, shape_of
from gateway.decision_server import MAX_WAITING, DecisionConnection
from gateway.http_head import MAX_FIELDS, MAX_HEAD, Refusal, read_head, read_request

TOKEN = "kgt_DecisionServerSecretNeverQuoted0123"


def nginx_asks(key: Key | None, uri: str = "/orders/1", *extra: str, version: str = "1.1",
               request_id: str | None = None) -> bytes:
    """What nginx's auth_request subrequest sends for a client's ``GET uri``."""
    lines = [f"GET /nginx HTTP/{version}", f"Host: {HOST}", "X-Original-Method: GET",
             f"X-Original-URI: {uri}"]
    if key is not None:
        lines += [f"X-API-AppKey: {key.app_key}", f"X-API-AppToken: {key.token}"]
    if request_id is not None:
        lines.append(f"X-Request-Id: {request_id}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def envoy_asks(key: Key, method: str = "GET", path: str = "/orders/1", *extra: str,
               body: bytes = b"") -> bytes:
    lines = [f"{method} /envoy{path} HTTP/1.1", f"Host: {HOST}",
             f"X-API-AppKey: {key.app_key}", f"X-API-AppToken: {key.token}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_nginx_shape(answer: Answer, status: int, code: str) -> None:
    """A refusal of a head that called ``/nginx``: as ``auth_request`` can pass it on
    (403, the real status in ``X-Keygate-Status``), in the one shape."""
    assert answer.status == 403, answer.raw
    assert answer.headers["X-Keygate-Status"] == str(status)
    error = answer.error()
    assert (error["status"], error["code"]) == (status, code)
    assert error["requestId"] == answer.headers["X-Request-Id"]


async def answers_of(reader: asyncio.StreamReader, count: int) -> list[Answer]:
    answers = []
    async with asyncio.timeout(10):
        for _ in range(count):
            answer = await read_answer(reader)
            assert answer is not None, f"closed after {len(answers)} answers"
            answers.append(answer)
    return answers


@pytest.fixture
async def serving_with(gateway, make_settings) -> AsyncIterator[Callable[..., Any]]:
    """keygate serving the decision API over ``make_key``'s keys; yields the decision
    port's address."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[str, int]:
            settings = make_settings(**{
                "store_prefix": gateway.settings.store_prefix, **PORTS, "metrics_listen": "",
                **overrides})
            listening = await stack.enter_async_context(running(build_gateway(settings)))
            assert listening.decision is not None
            host, port = listening.decision.removeprefix("http://").rsplit(":", 1)
            return host, int(port)

        yield start


@pytest.fixture
async def address(serving_with) -> tuple[str, int]:
    return await serving_with()


def connections() -> list[DecisionConnection]:
    """The decision port's open connections in this process (the server runs here)."""
    return [c for c in gc.get_objects()
            if isinstance(c, DecisionConnection) and c.transport is not None
            and not c.transport.is_closing()]


# -- keep-alive, pipelining, splitting ---------------------------------------------------
async def test_pipelined_requests_are_answered_in_order(address, make_key):
    key = await make_key("acme", ["orders-reader"])
    other = await make_key("acme", ["orders-writer"])
    requests = [
        (nginx_asks(key, request_id="first-000"), 200),
        (nginx_asks(None, request_id="second-00"), 401),
        (b"GET /elsewhere HTTP/1.1\r\nHost: a\r\nX-Request-Id: third-000\r\n\r\n", 404),
        (envoy_asks(other, "POST", "/orders/9", "X-Request-Id: fourth-00"), 200),
        (envoy_asks(key, "POST", "/orders/9", "X-Request-Id: fifth-000"), 403),
        (nginx_asks(key, "/orders/2", request_id="sixth-000"), 200),
    ] * 5
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"".join(data for data, _ in requests))  # all in one write
        answers = await answers_of(reader, len(requests))
    finally:
        writer.close()
    ids = [a.headers["X-Request-Id"] for a in answers]
    assert ids == [d.split(b"X-Request-Id: ")[1].split(b"\r\n")[0].decode()
                   for d, _ in requests]
    assert [a.status for a in answers] == [status for _, status in requests]
    allowed = [a for a in answers if a.status == 200]
    assert {a.headers["X-Keygate-Key"] for a in allowed} == {key.app_key, other.app_key}
    assert all(a.headers["Server"] == "keygate" and "Date" in a.headers for a in answers)


async def test_a_head_split_byte_by_byte_is_read_as_one(address, make_key):
    key = await make_key("acme", ["orders-reader"])
    data = nginx_asks(key, request_id="split-byte-by-byte") * 2
    reader, writer = await asyncio.open_connection(*address)
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
        first, second = await answers_of(reader, 2)
    finally:
        writer.close()
    for answer in (first, second):
        assert answer.status == 200, answer.raw
        assert answer.headers["X-Keygate-Key"] == key.app_key
        assert answer.headers["X-Keygate-Path"] == "/orders/1"
        assert answer.headers["X-Request-Id"] == "split-byte-by-byte"


async def test_many_requests_on_one_connection_keep_their_answers_apart(address, make_key):
    """The shape learned from the first heads reads the rest: the same answers."""
    key = await make_key("acme", ["orders-reader"])
    reader, writer = await asyncio.open_connection(*address)
    try:
        for i in range(40):
            uri = f"/orders/{i}" if i % 3 else f"/beta/orders/{i}"
            writer.write(nginx_asks(key, uri, request_id=f"request-{i:04d}"))
            (answer,) = await answers_of(reader, 1)
            assert answer.headers["X-Request-Id"] == f"request-{i:04d}"
            if i % 3:
                assert answer.status == 200 and answer.headers["X-Keygate-Path"] == uri
            else:
                assert answer.status == 403 and answer.headers["X-Keygate-Status"] == "403"
    finally:
        writer.close()


# -- what the strict reader refuses --------------------------------------------------------
@pytest.mark.parametrize("name", ["too many header fields", "a head too large",
                                  "a header line too long", "NUL after the token",
                                  "space before the colon", "two Host"])
async def test_refused_heads_get_the_one_error_shape_and_quote_nothing(
    address, caplog, name
):
    caplog.set_level(logging.DEBUG)
    data, status = REFUSED[name]
    data = data.replace(b"TOKEN", TOKEN.encode())
    if TOKEN.encode() not in data:
        data = data.replace(b"\r\n\r\n", f"\r\nX-API-AppToken: {TOKEN}\r\n\r\n".encode(), 1)
    answers, raw = await exchange(address, data + nginx_asks(None))  # nothing after it
    assert len(answers) == 1
    assert_one_shape(answers[0], status)
    assert answers[0].headers["Connection"] == "close"
    assert TOKEN.encode() not in raw and TOKEN[4:20].encode() not in raw
    assert TOKEN not in caplog.text and "Traceback" not in caplog.text


async def test_a_refusal_behind_good_requests_comes_in_its_turn(address, make_key):
    key = await make_key("acme", ["orders-reader"])
    bad = b"GET /nginx HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"
    answers, _ = await exchange(address, nginx_asks(key) * 2 + bad + nginx_asks(key))
    assert [a.status for a in answers] == [200, 200, 403]
    assert_nginx_shape(answers[2], 400, "malformed_request")


async def test_too_many_fields_and_a_head_too_large_are_refused_as_they_arrive(address):
    """Refused when a limit is passed, not when the head ends: one that never ends is
    refused all the same."""
    fields = b"".join(b"X-F-%d: v\r\n" % i for i in range(MAX_FIELDS + 1))
    many = b"GET /nginx HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    endless = b"GET /nginx HTTP/1.1\r\nHost: a\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"p" * 8000) for i in range(9))  # no empty line
    assert len(endless) > MAX_HEAD
    for data in (many, endless):
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(data)
            (answer,) = await answers_of(reader, 1)
        finally:
            writer.close()
        assert_nginx_shape(answer, 431, "request_header_fields_too_large")
        assert answer.headers["Connection"] == "close"


# -- the guard ---------------------------------------------------------------------------
async def test_a_slowloris_is_cut_at_header_timeout(serving_with, make_key):
    address = await serving_with(header_timeout=1.0)
    key = await make_key("acme", ["orders-reader"])
    reader, writer = await asyncio.open_connection(*address)
    head = nginx_asks(key)

    async def trickle() -> None:
        for byte in head[:-4]:  # never the end of the head
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        took = await closed_within(reader, 1.0 + MARGIN)
        assert took >= 0.5 and not trickling.done()  # cut while still sending
    finally:
        trickling.cancel()
        writer.close()


async def test_idle_and_kept_alive_connections_are_closed_at_their_deadlines(
    serving_with, make_key
):
    address = await serving_with(header_timeout=1.0, keepalive_timeout=1.0)
    key = await make_key("acme", ["orders-reader"])
    silent = await asyncio.open_connection(*address)
    kept = await asyncio.open_connection(*address)
    kept[1].write(nginx_asks(key))
    (answer,) = await answers_of(kept[0], 1)
    assert answer.status == 200
    for reader, writer in (silent, kept):
        await closed_within(reader, 1.0 + MARGIN)
        writer.close()


async def test_when_every_connection_is_in_a_request_a_new_one_gets_503(
    serving_with, make_key
):
    address = await serving_with(max_connections=4, body_timeout=30.0)
    key = await make_key("acme", ["orders-writer"])
    busy = [await asyncio.open_connection(*address) for _ in range(4)]
    for reader, writer in busy:  # a body begun and not finished: in a request
        writer.write(envoy_asks(key, "POST", "/orders/1", "Content-Length: 1000") + b"x")
        (answer,) = await answers_of(reader, 1)  # decided at once, the body still to come
        assert answer.status == 200
    answers, _ = await exchange(address, nginx_asks(key))
    assert len(answers) == 1
    assert_one_shape(answers[0], 503, "too_many_connections")
    assert not any(is_closed(reader) for reader, _ in busy)
    for _, writer in busy:
        writer.write(b"x" * 999)
        writer.close()


# -- bodies ------------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_is_never_taken_for_a_request(address, make_key, framing):
    """nginx and Traefik send no body; one sent anyway (or Envoy's, when it is told to
    buffer the client's) is skipped as its framing says, never read as the next
    request, and the connection goes on after it."""
    key = await make_key("acme", ["orders-reader"])
    smuggled = nginx_asks(key, "/orders/666", request_id="smuggled-request")
    if framing == "length":
        head = nginx_asks(key, "/orders/1", f"Content-Length: {len(smuggled)}",
                          request_id="with-a-body-00")
        body = smuggled
    else:
        head = nginx_asks(key, "/orders/1", "Transfer-Encoding: chunked",
                          request_id="with-a-body-00")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    after = nginx_asks(key, "/orders/2", request_id="after-the-body")
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(head + body[:10])
        (first,) = await answers_of(reader, 1)  # decided without waiting for the body
        writer.write(body[10:] + after)
        (second,) = await answers_of(reader, 1)
        writer.write(b"GET /elsewhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        (third,) = await answers_of(reader, 1)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert (first.status, first.headers["X-Request-Id"]) == (200, "with-a-body-00")
    assert (second.status, second.headers["X-Request-Id"]) == (200, "after-the-body")
    assert second.headers["X-Keygate-Path"] == "/orders/2"
    assert third.status == 404


async def test_a_body_breaking_its_framing_cuts_the_connection(address, make_key):
    key = await make_key("acme", ["orders-reader"])
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(nginx_asks(key, "/orders/1", "Transfer-Encoding: chunked")
                     + b"zz\r\n")
        with contextlib.suppress(ConnectionError):
            rest = await asyncio.wait_for(reader.read(), 5)
            assert b"HTTP/1.1 200 " in rest or rest == b""
        await closed_within(reader, MARGIN)
    finally:
        writer.close()


# -- connection handling -----------------------------------------------------------------
async def test_connection_close_is_honoured(address, make_key):
    key = await make_key("acme", ["orders-reader"])
    answers, raw = await exchange(
        address, nginx_asks(key, "/orders/1", "Connection: close")
        + nginx_asks(key, request_id="never-answered-1"))
    assert len(answers) == 1 and answers[0].status == 200
    assert answers[0].headers["Connection"] == "close"
    assert b"never-answered" not in raw


async def test_http_1_0_closes_unless_it_asks_to_keep_alive(address, make_key):
    key = await make_key("acme", ["orders-reader"])
    answers, _ = await exchange(address, nginx_asks(key, version="1.0")
                                + nginx_asks(key, request_id="never-answered-1"))
    assert len(answers) == 1
    assert answers[0].raw.startswith(b"HTTP/1.0 200 OK\r\n")
    assert "Connection" not in answers[0].headers
    kept = nginx_asks(key, "/orders/1", "Connection: keep-alive", version="1.0")
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(kept + kept)
        answers = await answers_of(reader, 2)
    finally:
        writer.close()
    assert all(a.raw.startswith(b"HTTP/1.0 200 OK\r\n") for a in answers)
    assert all(a.headers["Connection"] == "keep-alive" for a in answers)


async def test_a_client_that_shuts_its_side_still_gets_its_answers(address, make_key):
    key = await make_key("acme", ["orders-reader"])
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(nginx_asks(key) * 3 + b"GET /nginx HTTP/1.1\r\nBad Name: x\r\n\r\n")
        writer.write_eof()
        answers = await answers_of(reader, 4)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200, 200, 403]
    assert_nginx_shape(answers[3], 400, "malformed_request")


async def test_a_head_request_gets_no_body(address):
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"HEAD /envoy/orders/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and body == b""
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0


async def test_a_client_that_never_reads_cannot_grow_keygates_memory(serving_with, make_key):
    """It pipelines requests and reads nothing: keygate answers until the client's
    buffers are full, then stops reading from it (so the requests stay in the client's
    own buffers and the kernel's), holds at most a bounded queue, and cuts it off at
    ``body_timeout``."""
    address = await serving_with(body_timeout=1.0)
    key = await make_key("acme", ["orders-reader"])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its answers back up soon
    sock.connect(address)
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    request = nginx_asks(key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    try:
        # until keygate stops taking them: then they pile up here (the client's buffer)
        while writer.transport.get_write_buffer_size() < 4 << 20:
            assert loop.time() < deadline, "keygate kept reading a client that reads nothing"
            writer.write(request * 100)
            await asyncio.sleep(0)
        held = connections()
        assert held, "the connection is gone before keygate stopped reading it"
        for connection in held:
            assert len(connection.waiting) <= MAX_WAITING + 256 * 1024 // len(request) + 1
            assert connection.transport.get_write_buffer_size() < 1 << 20
            assert not connection.transport.is_reading()
        await asyncio.sleep(1.0 + MARGIN)  # body_timeout: the answers are not taken
        assert all(c.transport.is_closing() for c in held)
    finally:
        writer.close()


async def test_stopping_closes_kept_alive_connections_and_unfinished_heads_at_once(
    gateway, make_settings, make_key
):
    settings = make_settings(store_prefix=gateway.settings.store_prefix,
                             **{**PORTS, "metrics_listen": ""}, shutdown_timeout=10)
    key = await make_key("acme", ["orders-reader"])
    stack = contextlib.AsyncExitStack()
    listening = await stack.enter_async_context(running(build_gateway(settings)))
    assert listening.decision is not None
    host, port = listening.decision.removeprefix("http://").rsplit(":", 1)
    idle_reader, idle_writer = await asyncio.open_connection(host, int(port))
    idle_writer.write(nginx_asks(key))
    (answer,) = await answers_of(idle_reader, 1)
    assert answer.status == 200
    busy_reader, busy_writer = await asyncio.open_connection(host, int(port))
    busy_writer.write(nginx_asks(key)[:-2])  # a head begun
    loop = asyncio.get_running_loop()
    began = loop.time()
    with collected_logs():
        await asyncio.wait_for(stack.aclose(), 15)
    assert loop.time() - began < 5  # nothing in flight: not shutdown_timeout
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    assert await asyncio.wait_for(busy_reader.read(), 5) == b""
    for writer in (idle_writer, busy_writer):
        writer.close()


# -- the reading, byte by byte -----------------------------------------------------------
def _heads(*only: bytes) -> list[bytes]:
    """Every mutation of every position test_framing sweeps, of the heads of its
    templates (or of ``only``), and the heads themselves."""
    heads = []
    for head in only or [t[: t.index(b"\r\n\r\n") + 4] for t in TEMPLATES.values()]:
        heads.append(head)
        for position in _positions(head):
            if position >= len(head) - 4:
                continue
            for byte in range(256):
                mutated = head[:position] + bytes([byte]) + head[position + 1:]
                end = mutated.find(b"\r\n\r\n")
                if end == len(mutated) - 4 and not mutated.startswith(b"\r\n"):
                    heads.append(mutated)  # a whole head, as the reader hands them on
    return heads


def _same(verdict: object, read: object) -> None:
    if isinstance(verdict, Refusal):
        assert read is verdict
    else:
        assert isinstance(read, tuple) and read[:2] == verdict


def _reference(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """The request in the head, as aiohttp's parser gives it (read line by line)."""
    lines = head.decode("utf-8", "surrogateescape")[:-4].split("\r\n")
    method, target, version = lines[0].split(" ")
    fields = [(name, value.strip(" \t"))
              for name, _, value in (line.partition(":") for line in lines[1:])]
    return method, target, version, fields


def test_read_request_gives_read_heads_verdict_on_every_mutated_head():
    heads = _heads()
    assert len(heads) > 5000
    accepted = 0
    for head in heads:
        verdict = read_head(head)
        read = read_request(head)
        _same(verdict, read)
        if not isinstance(read, Refusal):
            accepted += 1
            assert read[2:] == _reference(head), head
    assert accepted > 1000


def test_a_learned_shape_reads_exactly_as_read_request_on_every_mutated_head():
    """The shape of each template, learned as a connection learns it (two heads with
    the same names), then every mutation read through it."""
    for template in TEMPLATES.values():
        head = template[: template.index(b"\r\n\r\n") + 4]
        learner = ShapedReader()
        for _ in range(2):
            learner(head)
        assert learner.shape is not None
        for mutated in _heads(head):
            shaped = ShapedReader(learner.shape)(mutated)
            general = read_request(mutated)
            if isinstance(general, Refusal):
                assert shaped is general, mutated
            else:
                assert shaped == general, mutated


def test_a_connection_learns_few_shapes_and_only_shapes_sent_twice():
    reader = ShapedReader()
    for i in range(20):
        head = get(b"/", *[b"X-%d-%d: v" % (i, j) for j in range(3)])
        reader(head)
        assert reader.shape is None  # never the same names twice in a row
    for i in range(20):
        head = get(b"/", b"X-Same-%d: v" % i)
        reader(head)
        reader(head)
    assert reader.learned == SHAPES_PER_CONNECTION
    assert shape_of(("Host",)).pattern.fullmatch(get(b"/").decode()) is not None


async def test_an_untrusted_peer_makes_keygate_compile_no_shape(serving_with):
    """Heads sent twice in a row with names of the client's choosing make a connection
    learn their shape: a pattern compiled, some 10 ms for a hundred names, as much as a
    hundred heads read. A peer the port does not trust is refused whatever it sends,
    so its heads are read the general way and teach nothing."""
    address = await serving_with(trusted_proxies=["10.0.0.0/8"])  # loopback is not in it
    names = [[f"X-Fresh-{i}-{j}" for j in range(MAX_FIELDS - 8)] for i in range(8)]
    heads = [nginx_asks(None, "/orders/1", *(f"{name}: v" for name in chosen))
             for chosen in names]
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"".join(head + head for head in heads))
        answer, = await answers_of(reader, 1)
        assert_one_shape(answer, 403, "untrusted_decision_caller")
    finally:
        writer.close()
    assert not any(shape[-1].startswith("X-Fresh-") for shape in decision_heads._SHAPES)


async def test_an_untrusted_peer_is_answered_once_and_cannot_hold_the_connection(
        serving_with):
    """Refused whatever it sends, a stranger gets its 403 and the connection closes:
    bodies are never read here, so one announced endless and sent fast enough (past
    body_min_rate) held the connection, which the cap never evicts, for ever."""
    address = await serving_with(trusted_proxies=["10.0.0.0/8"])  # loopback is not in it
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"POST /envoy/orders/1 HTTP/1.1\r\nHost: api.test\r\n"
                     b"Content-Length: 999999999999\r\n\r\n" + b"x" * 65536)
        answer, = await answers_of(reader, 1)
        assert_one_shape(answer, 403, "untrusted_decision_caller")
        assert answer.headers["Connection"] == "close"
        await closed_within(reader, MARGIN)
    finally:
        writer.close()


def test_the_field_verdicts_remembered_are_bounded():
    for i in range(3000):
        read_request(get(b"/", b"User-Agent: agent-%d" % i))
    assert len(http_head._VERDICTS) <= 1024
    assert len(http_head._WATCHED_AT) <= 1024
