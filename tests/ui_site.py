"""keygate as the admin page's browser tests need it: served by ``running()`` on free
loopback ports, in a thread with its own event loop (playwright's sync API runs in the
test's thread), over the test run's store (the private redis-server, or memory://),
with an upstream behind a route whose account is the path's second segment
(``/accounts/{account}/orders…``).

Also: Chromium (Debian's, never a downloaded one) and what every page must respect —
no request to another host, no Content-Security-Policy violation, no script error.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from conftest import TEST_SECRET

from gateway.app import build_gateway, running
from gateway.context import Gateway
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR

T = TypeVar("T")
DAY = 86_400.0
# Chromium as DESIGN.md has it: quiet, no component or sync traffic of its own
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class ShiftedClock:
    """The system clock, movable: keys made while it is set back look old."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Made:
    app_key: str
    token: str


class Site:
    """keygate on free loopback ports, in a thread with its own event loop."""

    def __init__(self, redis_url: str, **overrides: Any):
        self.redis_url = redis_url
        self.overrides = overrides
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gateway: Gateway | None = None
        self.clock = ShiftedClock()
        self.management = ""
        self.proxy = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _main(self) -> None:
        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"path": request.path})

        upstream_app = web.Application()
        upstream_app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(upstream_app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        values: dict[str, Any] = {
            "store_url": self.redis_url, "store_prefix": f"ui-{uuid.uuid4().hex[:10]}:",
            "secret": TEST_SECRET, "proxy_listen": "127.0.0.1:0",
            "management_listen": "127.0.0.1:0", "metrics_listen": "",
            # every test signs in from 127.0.0.1, often
            "auth_failure_limit": 10**6, "auth_failure_key_limit": 10**6,
            "routes": [{"name": "orders", "path_prefix": "/accounts", "account_from": "path",
                        "account_segment": 2, "resource": "orders",
                        "upstream": f"http://127.0.0.1:{port}"}],
        }
        values.update(self.overrides)
        gateway = build_gateway(load_settings(env={}).with_values(**values), clock=self.clock)
        self.gateway = gateway
        self.stop = asyncio.Event()
        try:
            async with running(gateway) as listening:
                self.management, self.proxy = listening.management, listening.proxy
                self.ready.set()
                await self.stop.wait()
        finally:
            await runner.cleanup()

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    def start(self) -> Site:
        self.thread.start()
        assert self.ready.wait(30), "keygate did not start"
        if self.error is not None:
            raise self.error
        return self

    def close(self) -> None:
        if self.loop is not None and self.stop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)

    # -- acting on the store, on keygate's own loop ------------------------------------
    def call(self, work: Callable[[Gateway], Awaitable[T]]) -> T:
        assert self.loop is not None and self.gateway is not None
        gateway = self.gateway
        return asyncio.run_coroutine_threadsafe(work(gateway), self.loop).result(30)

    def make_key(self, account: str, roles: list[str], label: str = "k",
                 age_days: float = 0.0) -> Made:
        """A key made as ``keygate keys create`` makes it; ``age_days`` back in time."""

        async def make(gateway: Gateway) -> Made:
            self.clock.offset = -age_days * DAY
            try:
                issued = await gateway.lifecycle.create(account, label, roles, CLI_ACTOR)
            finally:
                self.clock.offset = 0.0
            assert issued.token is not None
            return Made(issued.record.app_key, issued.token)

        return self.call(make)

    def key(self, account: str, app_key: str) -> Any:
        return self.call(lambda gateway: gateway.store.get_key(account, app_key))

    # -- plain HTTP, as an integration would call -------------------------------------
    def request(self, base: str, method: str, path: str, headers: dict[str, str] | None = None,
                body: Any = None) -> tuple[int, dict[str, Any] | None]:
        parts = urlsplit(base)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body)
            sent = dict(headers or {})
            if payload is not None:
                sent["Content-Type"] = "application/json"
            connection.request(method, path, body=payload, headers=sent)
            response = connection.getresponse()
            raw = response.read()
            kind = response.getheader("Content-Type", "")
            return response.status, json.loads(raw) if raw and "json" in kind else None
        finally:
            connection.close()

    def through_proxy(self, account: str, key: str, token: str) -> tuple[int, str]:
        """A request an integration makes with the pair: the status and the error code."""
        status, body = self.request(self.proxy, "GET", f"/accounts/{account}/orders/1",
                                    {"X-API-AppKey": key, "X-API-AppToken": token})
        return status, (body or {}).get("error", {}).get("code", "")


@contextlib.contextmanager
def site(redis_url: str, **overrides: Any) -> Iterator[Site]:
    """keygate served for a test, on the test run's store: the private redis-server, or
    memory:// (its embedded server is shared by the whole process, and every store call
    runs on keygate's own loop, in its thread)."""
    served = Site(redis_url, **overrides).start()
    try:
        yield served
    finally:
        served.close()


def fresh_account() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# -- the browser -----------------------------------------------------------------------
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")


def chromium_path() -> str:
    """Debian's Chromium where the package puts it, whatever PATH says; else the one PATH
    finds. Where there is none the browser tests are skipped, and that is the only reason
    they ever are."""
    if DEBIAN_CHROMIUM.is_file() and os.access(DEBIAN_CHROMIUM, os.X_OK):
        return str(DEBIAN_CHROMIUM)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium on this machine: install Debian's chromium package "
                    "(.ci/run does) to run the admin page's browser tests")
    return found


def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.skip("python playwright is not installed: pip install -e '.[test]'")
    return start()


@dataclass
class Watch:
    """What a page did that it must not: requests to another host, CSP violations,
    script errors, console errors (a refused API call's own console line aside)."""

    origin: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refused_api_calls: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("request", self._request)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => console.error("
            "'CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));")

    def _request(self, request: Any) -> None:
        url = request.url
        if url.startswith(("data:", "blob:")):
            return
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.foreign.append(url)

    def _console(self, message: Any) -> None:
        if message.type not in ("error", "warning"):
            return
        text = message.text
        where = (message.location or {}).get("url", "")
        if text.startswith("Failed to load resource: the server responded with a status of") \
                and urlsplit(where).path.startswith("/api/v1/"):
            self.refused_api_calls.append(f"{text} {where}")
            return
        if message.type == "error":
            self.errors.append(f"console: {text} ({where})")

    def check(self) -> None:
        assert not self.foreign, f"requests to another host: {self.foreign}"
        assert not self.errors, self.errors
