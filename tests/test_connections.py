"""The connection guard (gateway.connections) in front of both ports, on real sockets.

Every test starts keygate through ``running()`` (the guard is not in front of aiohttp's
test server) and talks raw HTTP/1.1 over asyncio streams, so that what is sent is
exactly the bytes an attacker would send, and what is read is exactly what went out.
Timing bounds are generous ("closed within the timeout + 2 s"): the bound is the
property under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import TEST_SECRET, Key, default_routes
from multidict import CIMultiDict
from ports import free_port

from gateway.app import build_gateway, running
from gateway.connections import (
    FILE_RESERVE,
    MIN_CONNECTIONS,
    ConnectionGuard,
    GuardedConnection,
    LogBudget,
    derived_connection_cap,
    raise_file_limit,
    server_logger,
)
from gateway.context import Gateway
from gateway.errors import ConfigError
from gateway.framing import SYNTHETIC_REQUEST
from gateway.http_head import AIOHTTP_LIMITS
from gateway.store import CLI_ACTOR

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARGIN = 2.0  # seconds beyond a timeout in which the guard must have acted


# -- helpers shared with test_framing.py --------------------------------------------
@dataclass
class Served:
    gateway: Gateway
    proxy: tuple[str, int]
    management: tuple[str, int]
    key: Key
    decision: tuple[str, int] | None = None  # with decision_listen set


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.asynccontextmanager
async def serving(make_settings: Callable[..., Any], **overrides: Any) -> AsyncIterator[Served]:
    """keygate's two ports as ``serve`` runs them (guard in front), with a key of acme
    that may read and write orders."""
    overrides = {"proxy_listen": "127.0.0.1:0", "management_listen": "127.0.0.1:0",
                 "metrics_listen": "", **overrides}
    settings = make_settings(**overrides)
    gateway = build_gateway(settings)
    async with running(gateway) as (proxy_url, management_url, _, decision_url):
        issued = await gateway.lifecycle.create("acme", "guard", ["orders-writer"], CLI_ACTOR)
        assert issued.token is not None
        yield Served(gateway, _address(proxy_url), _address(management_url),
                     Key(issued.record.app_key, issued.token),
                     _address(decision_url) if decision_url else None)


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    raw: bytes

    def error(self) -> dict[str, Any]:
        return orjson.loads(self.body)["error"]


async def read_answer(reader: asyncio.StreamReader) -> Answer | None:
    """One HTTP/1.1 response (1xx skipped); None if the connection closed first."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            partial = getattr(exc, "partial", b"")
            assert not partial, f"connection closed inside a response head: {partial!r}"
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name, value.strip())
        if status >= 200:
            break
    body = b""
    if "Content-Length" in headers:
        body = await reader.readexactly(int(headers["Content-Length"]))
    elif headers.get("Transfer-Encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if not size:
                break
    return Answer(status, headers, body, head + body)


async def exchange(
    address: tuple[str, int], data: bytes, timeout: float = 10.0
) -> tuple[list[Answer], bytes]:
    """Send ``data`` on a new connection and read answers until the server closes it;
    returns the answers and every byte received."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    answers: list[Answer] = []
    try:
        async with asyncio.timeout(timeout):
            while (answer := await read_answer(reader)) is not None:
                answers.append(answer)
            rest = await reader.read()
    finally:
        writer.close()
    assert not rest, f"bytes after the last answer: {rest!r}"
    return answers, b"".join(a.raw for a in answers)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Wait until the server closes the connection (EOF or reset), at most ``seconds``;
    returns how long it took. Whatever arrives meanwhile is discarded."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(seconds):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
    return loop.time() - started


def request(path: str = "/orders/7", key: Key | None = None, method: str = "GET",
            extra: Iterable[str] = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: api.test"]
    if key is not None:
        lines += [f"X-API-AppKey: {key.app_key}", f"X-API-AppToken: {key.token}"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_one_shape(answer: Answer, status: int, code: str | None = None) -> dict[str, Any]:
    assert answer.status == status, answer.raw
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Server"] == "keygate"
    error = answer.error()
    assert set(error) == {"code", "message", "status", "requestId"}
    assert error["status"] == status
    assert error["requestId"] == answer.headers["X-Request-Id"]
    if code is not None:
        assert error["code"] == code
    return error


async def open_idle(address: tuple[str, int], count: int) -> list[
    tuple[asyncio.StreamReader, asyncio.StreamWriter]
]:
    """``count`` connections that send nothing (opened in batches, so that the listen
    backlog is not what is being measured)."""
    connections = []
    for start in range(0, count, 100):
        batch = min(100, count - start)
        connections += await asyncio.gather(
            *(asyncio.open_connection(*address) for _ in range(batch))
        )
    return connections


def is_closed(reader: asyncio.StreamReader) -> bool:
    return reader.at_eof() or reader.exception() is not None


async def until_closed(
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], count: int
) -> None:
    """Wait (bounded) until ``count`` of ``connections`` are closed by the server."""
    async with asyncio.timeout(MARGIN):
        while sum(is_closed(reader) for reader, _ in connections) < count:
            await asyncio.sleep(0.02)


def close_all(connections: Iterable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()


def enough_descriptors(needed: int) -> None:
    """Raise this test process's soft file limit to the hard one; skip if still short."""
    raise_file_limit()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        pytest.skip(f"needs {needed} file descriptors")


# -- the three attacks from the issue -------------------------------------------------
ATTACKS = {
    "bare LF": b"GET /orders/7 HTTP/1.1\nHost: api.test\nX-API-AppToken: %s\n\n",
    "NUL after the token": b"GET /orders/7 HTTP/1.1\r\nHost: api.test\r\n"
                           b"X-API-AppToken: %s\x00\r\n\r\n",
    "space before the colon": b"GET /orders/7 HTTP/1.1\r\nHost: api.test\r\n"
                              b"X-API-AppToken : %s\r\n\r\n",
}
TOKEN = b"kgt_AttackerTokenNeverEchoed0123456789"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_malformed_heads_get_one_json_400_that_quotes_nothing(
    make_settings, caplog, attack
):
    caplog.set_level(logging.DEBUG)
    async with serving(make_settings) as served:
        for address in (served.proxy, served.management):
            answers, raw = await exchange(address, ATTACKS[attack] % TOKEN)
            assert len(answers) == 1
            assert_one_shape(answers[0], 400, "malformed_request")
            assert answers[0].headers["Connection"] == "close"
            for fragment in (TOKEN, TOKEN[:8], TOKEN[-8:], b"AppToken"):
                assert fragment not in raw
    assert TOKEN.decode() not in caplog.text
    assert "AttackerToken" not in caplog.text
    assert "Traceback" not in caplog.text
    assert "refused a request from 127.0.0.1 with 400" in caplog.text


async def test_300_malformed_requests_write_a_bounded_log(make_settings, caplog):
    caplog.set_level(logging.DEBUG)
    async with serving(make_settings) as served:
        attacks = [ATTACKS[name] % TOKEN for name in sorted(ATTACKS)] * 100

        async def one(data: bytes) -> int:
            answers, _ = await exchange(served.proxy, data)
            return answers[0].status

        assert set(await asyncio.gather(*(one(a) for a in attacks))) == {400}
    logged = sum(len(r.getMessage()) for r in caplog.records
                 if r.name in ("keygate.connections", "keygate.http"))
    assert logged < 3000, logged  # ten lines a minute, not 300
    assert TOKEN.decode() not in caplog.text


async def test_a_client_that_shuts_its_side_after_a_bad_request_still_gets_the_refusal(
    make_settings
):
    async with serving(make_settings) as served:
        reader, writer = await asyncio.open_connection(*served.proxy)
        writer.write(ATTACKS["bare LF"] % TOKEN)
        writer.write_eof()  # as `printf … | nc` does
        answer = await read_answer(reader)
        assert answer is not None
        assert_one_shape(answer, 400, "malformed_request")
        await closed_within(reader, MARGIN)
        writer.close()


async def test_a_malformed_head_behind_good_requests_is_answered_in_its_turn(make_settings):
    async with serving(make_settings) as served:
        good = request(key=served.key)
        bad = ATTACKS["space before the colon"] % TOKEN
        answers, raw = await exchange(served.proxy, good + good + bad + good)
        assert [a.status for a in answers] == [200, 200, 400]  # nothing after the refusal
        assert_one_shape(answers[2], 400, "malformed_request")
        assert TOKEN not in raw


async def test_a_request_pipelined_behind_an_upgrade_request_is_answered(make_settings):
    """aiohttp's parser drops what follows a request with Upgrade in the same read; the
    guard passes requests on one at a time, so none is lost."""
    async with serving(make_settings) as served:
        upgrade = request(key=served.key, extra=["Upgrade: h2c", "Connection: Upgrade"])
        last = request("/orders/8", key=served.key, extra=["Connection: close"])
        answers, _ = await exchange(served.proxy, upgrade + last)
        assert [a.status for a in answers] == [200, 200]
        assert orjson.loads(answers[1].body)["path"] == "/orders/8"


async def test_a_client_sending_the_stand_in_request_only_gets_itself_answered(make_settings):
    """The synthetic request that stands for a refused one means nothing by itself."""
    async with serving(make_settings) as served:
        answers, _ = await exchange(served.proxy, SYNTHETIC_REQUEST)
        assert_one_shape(answers[0], 404, "no_route")
        answers, _ = await exchange(served.management, SYNTHETIC_REQUEST)
        assert answers[0].status in (301, 302, 404)


async def test_aiohttps_own_error_lines_keep_no_request_bytes(caplog):
    """Defence in depth: if a head ever reached aiohttp's parser and failed there, the
    logger keygate gives aiohttp keeps the line and drops the traceback quoting it."""
    caplog.set_level(logging.DEBUG)

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    logger = server_logger("keygate.http.test")  # a budget of its own for this test
    runner = web.ServerRunner(web.Server(handler, logger=logger, **AIOHTTP_LIMITS))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        await exchange(("127.0.0.1", port), ATTACKS["space before the colon"] % TOKEN)
    finally:
        await runner.cleanup()
    lines = [r for r in caplog.records if r.name == "keygate.http.test"]
    assert lines and "Error handling request" in lines[0].getMessage()
    assert all(r.exc_info is None for r in lines)
    assert "AttackerToken" not in caplog.text and "Traceback" not in caplog.text


def test_the_log_budget_allows_a_few_lines_then_says_how_many_it_dropped(caplog):
    now = [0.0]
    budget = LogBudget(per_minute=3, clock=lambda: now[0])
    assert [budget.allow() for _ in range(10)] == [True] * 3 + [False] * 7
    now[0] = 59.0
    assert not budget.allow()
    with caplog.at_level(logging.WARNING, logger="keygate.connections"):
        now[0] = 61.0
        budget.flush()
    assert "8 similar log lines dropped" in caplog.text
    assert budget.allow()


# -- deadlines ------------------------------------------------------------------------
async def test_an_idle_connection_is_closed_after_header_timeout(make_settings):
    async with serving(make_settings, header_timeout=1.0) as served:

        async def idle(address: tuple[str, int]) -> None:
            reader, writer = await asyncio.open_connection(*address)
            took = await closed_within(reader, 1.0 + MARGIN)
            assert took >= 0.5  # not at once: it had its header_timeout
            writer.close()

        await asyncio.gather(idle(served.proxy), idle(served.management))


async def test_a_slowloris_is_closed_after_header_timeout_however_it_trickles(make_settings):
    async with serving(make_settings, header_timeout=1.0) as served:
        reader, writer = await asyncio.open_connection(*served.proxy)
        head = request(key=served.key)

        async def trickle() -> None:
            for byte in head[:-4]:  # never the end of the head
                if writer.is_closing():
                    return
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        try:
            await closed_within(reader, 1.0 + MARGIN)
            assert not trickling.done()  # it was still sending when it was cut off
        finally:
            trickling.cancel()
            writer.close()


async def test_a_kept_alive_connection_is_closed_after_keepalive_timeout(make_settings):
    async with serving(make_settings, header_timeout=30.0, keepalive_timeout=1.0) as served:
        reader, writer = await asyncio.open_connection(*served.proxy)
        writer.write(request(key=served.key))
        answer = await read_answer(reader)
        assert answer is not None and answer.status == 200
        await closed_within(reader, 1.0 + MARGIN)  # far sooner than header_timeout
        writer.close()


async def test_a_client_pausing_mid_body_is_closed_after_body_timeout(make_settings, upstream):
    async with serving(make_settings, header_timeout=30.0, body_timeout=1.0) as served:
        reader, writer = await asyncio.open_connection(*served.proxy)
        head = request(key=served.key, method="POST", extra=["Content-Length: 1000"])
        writer.write(head + b"x" * 10)
        await closed_within(reader, 1.0 + MARGIN)
        writer.close()
    assert upstream.requests == []  # the upstream never got a body passed off as whole


async def test_a_client_that_stops_reading_its_answer_is_cut_off(make_settings):
    async with serving(make_settings, body_timeout=0.5) as served:
        reader, writer = await asyncio.open_connection(*served.proxy)
        writer.write(request("/stream/64", key=served.key))
        await asyncio.sleep(0.5 + 1.0)  # not reading: the server's writes back up
        received = 0
        async with asyncio.timeout(MARGIN):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
        assert received < 64 * 1024 * 1024  # cut off, not sent whole
        writer.close()


async def test_a_normal_keep_alive_client_is_not_disturbed(make_settings):
    """Requests spread over longer than every timeout, each well within them, on one
    connection; and a body sent in pieces with pauses shorter than body_timeout, faster
    than body_min_rate on average."""
    async with serving(make_settings, header_timeout=0.8, keepalive_timeout=0.8,
                       body_timeout=0.8) as served:
        reader, writer = await asyncio.open_connection(*served.proxy)
        for _ in range(7):
            writer.write(request(key=served.key))
            answer = await read_answer(reader)
            assert answer is not None and answer.status == 200
            await asyncio.sleep(0.2)
        body = b"0123456789" * 100  # 4,000 bytes a second: above body_min_rate
        writer.write(request(key=served.key, method="POST", body=body)[: -len(body)])
        for start in range(0, len(body), 250):
            await asyncio.sleep(0.25)
            writer.write(body[start:start + 250])
        answer = await read_answer(reader)
        assert answer is not None and answer.status == 200
        assert orjson.loads(answer.body)["size"] == len(body)
        writer.close()


class _Transport:
    """What the guard asks of a transport, for driving it on a clock of the test's."""

    def __init__(self) -> None:
        self.reading = True
        self.aborted = False

    def is_reading(self) -> bool:
        return self.reading

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Inner(asyncio.Protocol):
    """aiohttp's protocol, as far as the guard is concerned: takes what it is given."""


def _trickled(rate: float, pause: float, seconds: float, *, reading: bool = True,
              body_min_rate: float = 500.0) -> float | None:
    """A POST whose body comes at ``rate`` bytes a second, in one piece every ``pause``
    seconds, on a guard whose clock the test moves (body_timeout 30 s, as by default);
    when the guard cut it off, or None if it still stood after ``seconds``."""
    guard = ConnectionGuard(max_connections=10, header_timeout=10.0, keepalive_timeout=60.0,
                            body_timeout=30.0, request_id=lambda: "test",
                            body_min_rate=body_min_rate)
    now = 0.0
    guard.clock = lambda: now
    connection = GuardedConnection(guard, lambda: _Inner())  # type: ignore[arg-type,return-value]
    transport = _Transport()
    transport.reading = reading
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(request(method="POST", extra=["Content-Length: 999999999"]))
    sent = 0.0
    while now < seconds:
        now += pause
        sent += rate * pause
        piece = int(sent)
        sent -= piece
        connection.data_received(b"x" * piece)
        guard.sweep()
        if transport.aborted:
            return now
    connection.connection_lost(None)
    return None


def test_a_body_trickled_below_body_min_rate_is_cut_off_after_body_timeout():
    """A byte every 20 s, each pause shorter than body_timeout: once held for ever, at
    the cap a place no other client could take (a busy connection is never evicted)."""
    cut = _trickled(rate=1 / 20, pause=20.0, seconds=24 * 3600)
    assert cut is not None and cut <= 30.0 + 20.0
    # 400 bytes a second, in pieces every 10 s: cut too, a little later
    cut = _trickled(rate=400, pause=10.0, seconds=24 * 3600)
    assert cut is not None and cut <= 30.0 + 4 * 60


def test_a_body_sent_at_body_min_rate_or_faster_is_never_cut_off():
    assert _trickled(rate=500, pause=1.0, seconds=3600) is None
    assert _trickled(rate=600, pause=25.0, seconds=3600) is None  # in bursts
    # keygate itself not reading (a slow upstream): the client is not to blame
    assert _trickled(rate=0, pause=10.0, seconds=3600, reading=False) is None
    # 0 turns the rule off: pauses shorter than body_timeout are all that is asked
    assert _trickled(rate=1 / 20, pause=20.0, seconds=3600, body_min_rate=0) is None


async def test_trickled_bodies_on_every_port_cannot_hold_the_cap(make_settings):
    """Anonymous clients fill every place at the cap with requests whose bodies come a
    byte at a time (a login on the management port, an unauthenticated POST on the
    proxy port, a decision request): all are cut off, and an authorized request is
    served afterwards, not refused with 503."""
    cap, timeout = 12, 1.0
    async with serving(make_settings, max_connections=cap, body_timeout=timeout,
                       header_timeout=30.0, keepalive_timeout=30.0,
                       decision_listen="127.0.0.1:0") as served:
        assert served.decision is not None
        heads = {
            served.management: b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\n"
                               b"Content-Length: 65000\r\n\r\n{",
            served.proxy: request(method="POST", extra=["Content-Length: 65000"]),
            served.decision: b"POST /envoy/orders/7 HTTP/1.1\r\nHost: api.test\r\n"
                             b"Content-Length: 65000\r\n\r\n",
        }
        slow = []
        for address, head in heads.items():
            for _ in range(cap // len(heads)):
                reader, writer = await asyncio.open_connection(*address)
                writer.write(head)
                if address != served.management:  # answered from the head, body to come
                    answer = await read_answer(reader)
                    assert answer is not None and answer.status in (200, 401)
                slow.append((reader, writer))

        async def trickle() -> None:
            while True:
                await asyncio.sleep(timeout / 4)  # every pause well within body_timeout
                for reader, writer in slow:
                    if not is_closed(reader) and not writer.is_closing():
                        writer.write(b"x")

        trickling = asyncio.create_task(trickle())
        try:
            answers, _ = await exchange(served.proxy, request(key=served.key))
            assert_one_shape(answers[0], 503, "too_many_connections")  # all in a request
            async with asyncio.timeout(timeout + 2 * MARGIN):
                while not all(is_closed(reader) for reader, _ in slow):
                    await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as session:
                url = "http://{}:{}/orders/7".format(*served.proxy)
                async with session.get(url, headers=served.key.headers) as response:
                    assert response.status == 200
        finally:
            trickling.cancel()
            close_all(slow)


# -- the cap ----------------------------------------------------------------------------
async def test_at_the_cap_the_oldest_waiting_connections_make_room(make_settings):
    async with serving(make_settings, max_connections=8) as served:
        idle = await open_idle(served.proxy, 20)
        async with aiohttp.ClientSession() as session:
            url = "http://{}:{}/orders/7".format(*served.proxy)
            async with session.get(url, headers=served.key.headers) as response:
                assert response.status == 200
        # the oldest were closed to make room (20 + 1 arrived, 8 fit), no more
        await until_closed(idle, 13)
        await asyncio.sleep(0.2)
        assert sum(is_closed(reader) for reader, _ in idle) == 13
        close_all(idle)


async def test_the_cap_is_shared_by_both_ports(make_settings):
    async with serving(make_settings, max_connections=4) as served:
        idle = await open_idle(served.proxy, 4)
        answers, _ = await exchange(served.management, b"GET /healthz HTTP/1.1\r\n"
                                    b"Host: x\r\nConnection: close\r\n\r\n")
        assert answers[0].status == 200
        await until_closed(idle, 1)  # a proxy connection made room for the management one
        close_all(idle)


async def test_when_every_connection_is_in_a_request_a_new_one_gets_503(make_settings):
    async with serving(make_settings, max_connections=4, body_timeout=30.0) as served:
        busy = await open_idle(served.proxy, 4)
        for reader, writer in busy:  # a body begun and not finished: in a request
            writer.write(request(method="POST", extra=["Content-Length: 1000"]) + b"x")
            answer = await read_answer(reader)  # no key: refused, the body still to come
            assert answer is not None and answer.status == 401
        for address in (served.proxy, served.management):
            answers, _ = await exchange(address, request())
            assert len(answers) == 1
            assert_one_shape(answers[0], 503, "too_many_connections")
            assert answers[0].headers["Connection"] == "close"
        assert not any(is_closed(reader) for reader, _ in busy)
        for _, writer in busy:  # finish the bodies, so that shutting down need not wait
            writer.write(b"x" * 999)
        close_all(busy)


# -- the proof --------------------------------------------------------------
async def test_1200_idle_and_300_slowloris_connections_do_not_stop_service(make_settings):
    enough_descriptors(4000)
    timeout = 2.0
    async with serving(make_settings, header_timeout=timeout, keepalive_timeout=timeout,
                       body_timeout=timeout, max_connections=1000) as served:
        idle = await open_idle(served.proxy, 1200)
        slow = await open_idle(served.proxy, 300)
        opened = asyncio.get_running_loop().time()
        head = request(key=served.key)

        async def trickle() -> None:
            for byte in head:
                await asyncio.sleep(0.2)
                for _, writer in slow:
                    if not writer.is_closing():
                        writer.write(bytes([byte]))

        trickling = asyncio.create_task(trickle())
        try:
            async with aiohttp.ClientSession() as session:
                url = "http://{}:{}".format(*served.proxy)
                async with session.get(url + "/orders/7", headers=served.key.headers) as r:
                    assert r.status == 200
                url = "http://{}:{}".format(*served.management)
                async with session.get(url + "/healthz") as r:
                    assert r.status == 200
            held = sum(not is_closed(reader) for reader, _ in idle + slow)
            assert held >= 990  # served while the attackers held every slot they could
            left = timeout + MARGIN - (asyncio.get_running_loop().time() - opened)
            await asyncio.gather(*(closed_within(reader, left) for reader, _ in idle + slow))
        finally:
            trickling.cancel()
            close_all(idle + slow)


async def test_keygate_serve_with_1024_descriptors_keeps_serving_under_1500_connections(
    redis_url, upstream, make_settings, tmp_path
):
    """`keygate serve` started with RLIMIT_NOFILE (1024, 1024) and max_connections = 0:
    the derived cap keeps descriptors for upstream and store connections."""
    if not redis_url.startswith("redis://"):
        pytest.skip("needs the private redis-server")
    enough_descriptors(3000)
    ports = [free_port(), free_port()]
    prefix = f"guard-{uuid.uuid4().hex[:8]}:"
    routes = "".join(
        f'[[routes]]\nname = "{r["name"]}"\npath_prefix = "{r["path_prefix"]}"\n'
        f'upstream = "{r["upstream"]}"\naccount = "{r["account"]}"\n'
        f'resource = "{r["resource"]}"\n'
        for r in default_routes(upstream.url) if r["name"] == "orders"
    )
    config = tmp_path / "keygate.toml"
    config.write_text(
        f'proxy_listen = "127.0.0.1:{ports[0]}"\nmanagement_listen = "127.0.0.1:{ports[1]}"\n'
        'metrics_listen = ""\n'
        f'store_url = "{redis_url}"\nstore_prefix = "{prefix}"\nmax_connections = 0\n'
        "header_timeout = 2.0\nkeepalive_timeout = 2.0\nbody_timeout = 2.0\n" + routes
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env["KEYGATE_SECRET"] = TEST_SECRET

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "serve",
        env=env, cwd=PROJECT_ROOT, preexec_fn=limit_files,  # noqa: S603 - our own CLI
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr_read = asyncio.create_task(process.stderr.read())  # so the pipe never fills
    proxy, management = ("127.0.0.1", ports[0]), ("127.0.0.1", ports[1])
    attackers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await _wait_until_healthy(management, process)
        beside = build_gateway(make_settings(store_prefix=prefix))  # the same store
        issued = await beside.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        await beside.close()
        key = Key(issued.record.app_key, issued.token or "")

        attackers = await open_idle(proxy, 1500)
        slow = attackers[1200:]
        for _, writer in slow:
            writer.write(b"G")
        async with aiohttp.ClientSession() as session:
            async with session.get("http://{}:{}/orders/7".format(*proxy),
                                   headers=key.headers) as response:
                assert response.status == 200
            async with session.get("http://{}:{}/healthz".format(*management)) as response:
                assert response.status == 200
        await asyncio.gather(*(closed_within(reader, 2.0 + MARGIN + 2.0)
                               for reader, _ in attackers))
        # and it still serves once they are gone
        answers, _ = await exchange(proxy, request(key=key, extra=["Connection: close"]))
        assert answers[0].status == 200
    finally:
        close_all(attackers)
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 15)
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = (await stderr_read).decode()
    cap = derived_connection_cap(1024, 100, 1000)
    assert "open file limit: 1024" in stderr  # serve() says what it did with the limit
    assert f"connection cap: {cap} per process (file limit 1024" in stderr
    assert "Too many open files" not in stderr
    assert "Traceback" not in stderr


async def _wait_until_healthy(address: tuple[str, int], process: Any) -> None:
    async with asyncio.timeout(30):
        while True:
            assert process.returncode is None, "keygate exited before it answered"
            with contextlib.suppress(OSError, AssertionError, asyncio.IncompleteReadError):
                answers, _ = await exchange(
                    address, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                if answers and answers[0].status == 200:
                    return
            await asyncio.sleep(0.1)


# -- wiring, limits and headers -----------------------------------------------------------
def test_the_derived_cap_keeps_room_for_upstreams_and_the_store():
    # at 1024 descriptors: a reserve, 100 for the store, the rest split with upstreams
    assert derived_connection_cap(1024, 100, 1000) == (1024 - FILE_RESERVE - 100) // 2
    # a small upstream pool leaves more for clients, but never less than it needs
    assert derived_connection_cap(100_000, 100, 1000) == 100_000 - FILE_RESERVE - 100 - 1000
    assert derived_connection_cap(64, 100, 1000) == MIN_CONNECTIONS


def test_the_soft_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip("no finite hard limit to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_file_limit() == (256, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 256), hard))


async def test_a_busy_port_is_a_config_error_naming_the_setting(make_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = build_gateway(make_settings(proxy_listen="127.0.0.1:0", metrics_listen="",
                                              management_listen=f"127.0.0.1:{port}"))
        with pytest.raises(ConfigError, match="setting management_listen: cannot listen"):
            async with running(gateway):
                pass


async def test_answers_say_server_keygate_on_both_ports(make_settings):
    async with serving(make_settings) as served:
        admin = await served.gateway.lifecycle.create(
            "acme", "admin", ["user-admin-restricted"], CLI_ACTOR
        )
        admin_key = Key(admin.record.app_key, admin.token or "")
        for address, data in (
            (served.proxy, request(key=served.key)),
            (served.proxy, request()),
            (served.management, request("/healthz")),
            (served.management, request("/nothing-here")),
            (served.management, request("/api/v1/accounts/acme/export?format=csv",
                                        key=admin_key)),
        ):
            answers, _ = await exchange(address, data[:-2] + b"Connection: close\r\n\r\n")
            assert answers[0].headers["Server"] == "keygate", answers[0].raw[:300]
            assert "aiohttp" not in answers[0].raw.decode("latin-1")


# -- Connection cannot take the body's framing away ------------------------------------
@pytest.mark.parametrize("connection", ["Content-Length", "keep-alive, content_length"])
async def test_connection_naming_content_length_cannot_smuggle_a_request_upstream(
    make_settings: Callable[..., Any], upstream: Any, connection: str
):
    """``Connection`` makes the headers it names hop-by-hop. Had it removed the body's
    Content-Length on the way upstream while the body still followed the head, the
    upstream would have read the body as the next request on the connection: one
    keygate never routed nor authorized, with identity headers of the client's choosing.
    The body's framing is the upstream pool's own, whatever the client's headers say."""
    async with serving(make_settings) as served:
        # the body: a whole request with identity headers only keygate may set
        smuggled = (b"GET /orders/999 HTTP/1.1\r\nHost: upstream\r\n"
                    b"X-Keygate-Key: kgk-acme-EVIL000000\r\nX-Keygate-Roles: owner\r\n\r\n")
        head = (
            f"POST /orders/1 HTTP/1.1\r\nHost: keygate\r\n"
            f"X-API-AppKey: {served.key.app_key}\r\nX-API-AppToken: {served.key.token}\r\n"
            f"Connection: {connection}\r\nContent-Length: {len(smuggled)}\r\n\r\n"
        ).encode()
        closing = b"GET /nowhere HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n\r\n"
        answers, _ = await exchange(served.proxy, head + smuggled + closing)
        assert [answer.status for answer in answers] == [200, 404]
        await asyncio.sleep(0.3)  # let the upstream record whatever it read
    seen = [(r["method"], r["raw_path"], r["body_size"]) for r in upstream.requests]
    # keygate authorized one POST carrying a body: the upstream must see exactly that
    assert seen == [("POST", "/orders/1", len(smuggled))], seen
    assert not any(r["headers"].get("X-Keygate-Roles") == "owner" for r in upstream.requests)
