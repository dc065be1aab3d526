"""Graceful shutdown: new connections refused at once, requests in flight finish within
``shutdown_timeout``, what is left is cut, batched writes are flushed, exit status 0.

The upstream here holds each request until the test releases it, so "a request in
flight" is a fact the test establishes (the upstream has it), not a guess about
timing. In-process tests drive ``running()`` itself; the subprocess tests send real
signals to ``keygate serve`` (and to the parent of ``--workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import TEST_SECRET

from gateway.app import build_gateway, running
from gateway.process import CUT_GRACE
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BOUND = 20  # seconds a step may take before the test fails (not a timing check)


@dataclass
class Holding:
    """An upstream that answers ``/held/…`` only when the test says so."""

    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def holding(aiohttp_server: Callable[..., Any]) -> AsyncIterator[Holding]:
    state = Holding()

    async def held(request: web.Request) -> web.Response:
        state.arrived.set()
        await state.release.wait()
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/held/{tail:.*}", held)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("")).rstrip("/")
    yield state
    state.release.set()  # let a handler that was cut end too


def held_route(upstream: str) -> dict[str, Any]:
    return {"name": "held", "path_prefix": "/held", "upstream": upstream, "account": "acme",
            "resource": "orders"}


async def refused(port: int) -> None:
    """Wait (bounded) until a new connection to ``port`` is refused."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        except ConnectionResetError:  # it was in the backlog of a socket closed meanwhile
            pass
        else:
            writer.close()
        assert loop.time() < deadline, f"port {port} still accepts connections"
        await asyncio.sleep(0.01)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def events(records: list[Any], name: str) -> list[Any]:
    return [r for r in records if getattr(r, "event", None) == name]


# -- in-process: running() itself ------------------------------------------------------
async def test_stopping_refuses_new_connections_and_lets_a_request_finish(
    make_settings, holding, caplog
):
    caplog.set_level("INFO", logger="keygate")
    settings = make_settings(
        routes=[held_route(holding.url)], proxy_listen="127.0.0.1:0",
        management_listen="127.0.0.1:0", metrics_listen="", shutdown_timeout=BOUND,
    )
    gateway = build_gateway(settings)
    issued = await gateway.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
    headers = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
    stack = contextlib.AsyncExitStack()
    proxy_url, management_url, *_ = await stack.enter_async_context(running(gateway))
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(proxy_url + "/held/1", headers=headers))
        await asyncio.wait_for(holding.arrived.wait(), BOUND)
        # an idle kept-alive connection, its one request answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy_url))
        writer.write(b"GET /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)

        closing = asyncio.create_task(stack.aclose())
        await refused(port_of(proxy_url))
        await refused(port_of(management_url))
        assert await asyncio.wait_for(reader.read(), BOUND) == b""  # idle: closed at once
        writer.close()
        assert not held.done() and not closing.done()

        holding.release.set()
        response = await asyncio.wait_for(held, BOUND)
        assert response.status == 200 and await response.text() == "finished"
        await asyncio.wait_for(closing, BOUND)

    (draining,) = events(caplog.records, "shutdown.draining")
    assert draining.inFlight == 1
    (drained,) = events(caplog.records, "shutdown.drained")
    assert (drained.inFlight, drained.cut) == (1, 0)
    assert not events(caplog.records, "shutdown.cut")
    # the key's last-used time was batched (every 60 s): the stop wrote it
    check = build_gateway(settings)
    try:
        record = await check.store.get_key("acme", issued.record.app_key)
        assert record is not None and record.last_used is not None
    finally:
        await check.close()


async def test_a_request_slower_than_shutdown_timeout_is_cut(make_settings, holding, caplog):
    caplog.set_level("INFO", logger="keygate")
    timeout = 0.5
    settings = make_settings(
        routes=[held_route(holding.url)], proxy_listen="127.0.0.1:0",
        management_listen="127.0.0.1:0", metrics_listen="", shutdown_timeout=timeout,
    )
    gateway = build_gateway(settings)
    issued = await gateway.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
    headers = {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}
    stack = contextlib.AsyncExitStack()
    proxy_url, *_ = await stack.enter_async_context(running(gateway))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.get(proxy_url + "/held/forever", headers=headers))
        await asyncio.wait_for(holding.arrived.wait(), BOUND)
        began = loop.time()
        await asyncio.wait_for(stack.aclose(), BOUND)
        # the bound is the property: shutdown_timeout, the cut's grace, and a margin
        assert loop.time() - began < timeout + CUT_GRACE + 2
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(held, BOUND)
    (cut,) = events(caplog.records, "shutdown.cut")
    assert cut.cut == 1
    (drained,) = events(caplog.records, "shutdown.drained")
    assert (drained.inFlight, drained.cut) == (1, 1)


async def test_a_port_that_cannot_listen_stops_quietly(make_settings, caplog):
    """A start that failed (busy port) undoes itself without a shutdown report."""
    caplog.set_level("INFO", logger="keygate")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = build_gateway(make_settings(
            proxy_listen="127.0.0.1:0", management_listen=f"127.0.0.1:{port}",
            metrics_listen="",
        ))
        from gateway.errors import ConfigError

        with pytest.raises(ConfigError, match="management_listen"):
            async with running(gateway):
                pass
    assert not events(caplog.records, "shutdown.draining")


# -- keygate serve, signalled ----------------------------------------------------------
def config_file(tmp_path: Path, redis_url: str, upstream: str, **extra: Any) -> Path:
    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    lines = [
        f'proxy_listen = "127.0.0.1:{free()}"',
        f'management_listen = "127.0.0.1:{free()}"',
        'metrics_listen = ""',
        f'store_url = "{redis_url}"',
        f'store_prefix = "shutdown-{uuid.uuid4().hex[:10]}:"',
        'log_format = "json"',
        "access_log = true",
        *(f"{name} = {json.dumps(value)}" for name, value in extra.items()),
        "[[routes]]",
        *(f"{name} = {json.dumps(value)}" for name, value in held_route(upstream).items()),
    ]
    path = tmp_path / "keygate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Served:
    """``keygate serve`` in a subprocess, its standard error collected as it comes."""

    def __init__(self, config: Path):
        self.config = config
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")},
                    "KEYGATE_SECRET": TEST_SECRET}
        self.settings = load_settings(config, env=self.env)
        self.proxy_port = self.settings.proxy_listen[1]
        self.management_port = self.settings.management_listen[1]
        self.stderr: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--config", str(self.config), "serve", *args,
            env=self.env, cwd=PROJECT_ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self._reading = asyncio.create_task(self._read())
        return self.proc

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode())

    async def key_headers(self) -> dict[str, str]:
        gateway = build_gateway(self.settings)
        try:
            issued = await gateway.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        finally:
            await gateway.close()
        return {"X-API-AppKey": issued.record.app_key, "X-API-AppToken": issued.token}

    async def ready(self, processes: int = 1) -> None:
        """Until ``processes`` processes (the workers) say they are listening."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        while sum('"event":"listening"' in line for line in self.stderr) < processes:
            assert self.proc is not None and self.proc.returncode is None, self.log_text()
            assert loop.time() < deadline, "keygate did not start listening"
            await asyncio.sleep(0.05)

    async def exited(self, within: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), within)
        assert self._reading is not None
        await asyncio.wait_for(self._reading, BOUND)
        return code

    def log_text(self) -> str:
        return "".join(self.stderr)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr]  # log_format = "json": all of them

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def served(tmp_path: Path, redis_url: str) -> AsyncIterator[Callable[..., Served]]:
    if not redis_url.startswith("redis://"):
        pytest.skip("keygate serve and this test share the private redis-server")
    made: list[Served] = []

    def make(upstream: str, **extra: Any) -> Served:
        made.append(Served(config_file(tmp_path, redis_url, upstream, **extra)))
        return made[-1]

    yield make
    for process in made:
        process.kill()
        if process.proc is not None:
            await process.proc.wait()


async def sigterm_with_a_request_in_flight(
    session: aiohttp.ClientSession, keygate: Served, holding: Holding, signalled_pid: int,
    processes: int = 1,
) -> tuple[asyncio.Task[Any], dict[str, str]]:
    headers = await keygate.key_headers()
    await keygate.ready(processes)
    held = asyncio.create_task(
        session.get(f"http://127.0.0.1:{keygate.proxy_port}/held/1", headers=headers)
    )
    await asyncio.wait_for(holding.arrived.wait(), BOUND)
    os.kill(signalled_pid, signal.SIGTERM)
    return held, headers


async def test_sigterm_finishes_the_request_in_flight_and_exits_0(served, holding):
    timeout = BOUND
    keygate = served(holding.url, shutdown_timeout=timeout)
    proc = await keygate.start()
    async with aiohttp.ClientSession() as session:
        held, headers = await sigterm_with_a_request_in_flight(
            session, keygate, holding, proc.pid
        )
        await refused(keygate.proxy_port)
        assert not held.done()
        holding.release.set()
        response = await asyncio.wait_for(held, BOUND)
        assert response.status == 200 and await response.text() == "finished"
    # it did not sit out its shutdown_timeout once nothing was in flight
    assert await keygate.exited(within=timeout) == 0, keygate.log_text()

    lines = keygate.log_lines()
    by_event = {line["event"]: line for line in lines}
    assert by_event["shutdown.signal"]["message"] == "SIGTERM received: stopping"
    assert by_event["shutdown.draining"]["inFlight"] == 1
    assert (by_event["shutdown.drained"]["inFlight"], by_event["shutdown.drained"]["cut"]) == (
        1, 0
    )
    assert "shutdown.done" in by_event and "shutdown.cut" not in by_event
    (access,) = [line for line in lines
                 if line["event"] == "request" and line["path"].startswith("/held")]
    assert (access["route"], access["account"], access["status"], access["appKey"]) == (
        "held", "acme", 200, headers["X-API-AppKey"]
    )
    assert headers["X-API-AppToken"] not in keygate.log_text()


async def test_sigterm_cuts_a_request_slower_than_shutdown_timeout_and_exits_0(
    served, holding
):
    timeout = 1.0
    keygate = served(holding.url, shutdown_timeout=timeout)
    proc = await keygate.start()
    async with aiohttp.ClientSession() as session:
        held, _ = await sigterm_with_a_request_in_flight(session, keygate, holding, proc.pid)
        # the bound is the property: shutdown_timeout, the cut's grace, the final writes
        assert await keygate.exited(within=timeout + CUT_GRACE + 5) == 0, keygate.log_text()
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(held, BOUND)
    by_event = {line["event"]: line for line in keygate.log_lines()}
    assert by_event["shutdown.cut"]["cut"] == 1
    assert "Traceback" not in keygate.log_text()


async def test_workers_log_their_pids_and_stop_with_the_parent(served, holding):
    keygate = served(holding.url, shutdown_timeout=BOUND)
    parent = await keygate.start("--workers", "2")
    async with aiohttp.ClientSession() as session:
        held, _ = await sigterm_with_a_request_in_flight(
            session, keygate, holding, parent.pid, processes=2
        )
        await refused(keygate.proxy_port)  # both workers closed their listening sockets
        holding.release.set()
        response = await asyncio.wait_for(held, BOUND)
        assert response.status == 200
    assert await keygate.exited(within=BOUND) == 0, keygate.log_text()

    lines = keygate.log_lines()
    (supervising,) = [line for line in lines if line["event"] == "workers.started"]
    assert supervising["pid"] == parent.pid
    workers = [line["pid"] for line in lines if line["event"] == "worker.started"]
    assert sorted(workers) == sorted(supervising["workers"]) and parent.pid not in workers
    drained = [line for line in lines if line["event"] == "shutdown.drained"]
    assert len(drained) == 2  # each worker stopped gracefully, one had the request
    assert sorted(line["inFlight"] for line in drained) == [0, 1]
    # whose line each is: the workers' own, and the parent's passing the signal on
    assert sorted(line["pid"] for line in drained) == sorted(workers)
    (passing,) = [line for line in lines if line["event"] == "workers.stopping"]
    assert passing["pid"] == parent.pid and "SIGTERM received" in passing["message"]
    assert any(line["event"] == "workers.stopped" for line in lines)


async def test_workers_that_cannot_listen_say_so_in_one_line_and_exit_2(served, holding):
    keygate = served(holding.url)
    with socket.socket() as taken:  # another keygate on the port: no SO_REUSEPORT there
        taken.bind(("127.0.0.1", keygate.proxy_port))
        taken.listen()
        await keygate.start("--workers", "2")
        assert await keygate.exited(within=BOUND) == 2, keygate.log_text()
    refusal = (f"keygate: configuration error: setting proxy_listen: cannot listen on "
               f"127.0.0.1:{keygate.proxy_port}")
    assert any(line.startswith(refusal) for line in keygate.stderr), keygate.log_text()
    assert "Traceback" not in keygate.log_text()
