"""Asking keygate's decision API as each front proxy asks it.

:class:`Decider` is keygate as ``keygate serve`` runs it (``running()``: the decision
API, the proxy port beside it for comparison, the management and metrics ports), and
:meth:`Decider.ask` sends a client's request in one of the three forms:

* ``nginx``: ``GET /nginx`` with the original method and URI in the
  ``decision_original_*_header`` headers, the client's ``Host`` and its address in
  ``X-Forwarded-For`` (as ``deploy/nginx/keygate.conf`` sends it);
* ``traefik``: ``GET /traefik`` with ``X-Forwarded-Method/-Proto/-Host/-Uri/-For``
  (as Traefik's ForwardAuth sends it; the ``Host`` is keygate's own address);
* ``envoy``: the original method and ``decision_envoy_prefix`` + the original target,
  the client's ``Host`` (as Envoy's ``ext_authz`` HTTP service sends it).

The client's own headers go along, as every front proxy passes them on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway.app import Listening, build_gateway, running
from gateway.context import Gateway
from gateway.settings import Settings

FORMS = ("nginx", "traefik", "envoy")
IDENTITY = ("Key", "Owner-Account", "Account", "Roles")
# every port on loopback, on a free port of its own
PORTS = {
    "decision_listen": "127.0.0.1:0", "proxy_listen": "127.0.0.1:0",
    "management_listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
}
HOST = "api.test"

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def pairs(headers: Headers) -> list[tuple[str, str]]:
    return list(headers.items() if isinstance(headers, Mapping) else headers)


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def error(self) -> dict[str, Any]:
        return orjson.loads(self.body)["error"]

    def identity(self, prefix: str = "X-Keygate-") -> dict[str, list[str]]:
        return {name: self.headers.getall(prefix + name, []) for name in IDENTITY}


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """The one JSON error shape, with this status and code, and the request id of the
    answer."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(reply.body)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "status", "requestId"}
    assert (error["status"], error["code"]) == (status, code), error
    assert isinstance(error["message"], str) and error["message"]
    assert error["requestId"] == reply.headers["X-Request-Id"]
    return error


def nginx_refusal(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """An nginx-form refusal: 401 stays 401, every other status is a 403 (all that
    ``auth_request`` passes on), the real status in ``X-Keygate-Status`` and the body
    again, as one header-safe line, in ``X-Keygate-Error``."""
    assert reply.status == (401 if status == 401 else 403), (reply.status, reply.body)
    assert reply.headers.getall("X-Keygate-Status") == [str(status)]
    [copied] = reply.headers.getall("X-Keygate-Error")
    assert copied.isascii() and copied.isprintable(), copied
    assert orjson.loads(copied) == orjson.loads(reply.body)
    error = orjson.loads(reply.body)["error"]
    assert (error["status"], error["code"]) == (status, code), error
    assert error["requestId"] == reply.headers["X-Request-Id"]
    return error


def outcome(form: str, reply: Reply) -> tuple[int, str | None]:
    """(the status keygate decided, the error code or None), whatever the form did to
    carry it."""
    if reply.status == 200:
        return 200, None
    if form == "nginx":
        return int(reply.headers["X-Keygate-Status"]), reply.error["code"]
    return reply.status, reply.error["code"]


@dataclass
class Decider:
    listening: Listening
    gateway: Gateway
    session: aiohttp.ClientSession

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    @property
    def url(self) -> str:
        assert self.listening.decision is not None
        return self.listening.decision

    def request_form(
        self, form: str, method: str, target: str, headers: Headers = (),
        host: str = HOST, client: str | None = None, scheme: str | None = None,
    ) -> tuple[str, str, list[tuple[str, str]]]:
        """(method, path, headers) of the decision request ``form`` sends for a
        client's ``method target`` with ``headers``, from address ``client`` (None:
        the front proxy says nothing of it), over ``scheme`` (``X-Forwarded-Proto``;
        None: Traefik says http, the others nothing)."""
        settings = self.settings
        if form == "nginx":
            said = [("Host", host), (settings.decision_original_method_header, method),
                    (settings.decision_original_uri_header, target)]
            called_method, path = "GET", "/nginx"
        elif form == "traefik":
            said = [("X-Forwarded-Method", method), ("X-Forwarded-Proto", scheme or "http"),
                    ("X-Forwarded-Host", host), ("X-Forwarded-Uri", target)]
            called_method, path = "GET", "/traefik"
        else:
            said = [("Host", host)]
            called_method, path = method, settings.decision_envoy_prefix + target
        if client is not None:
            said.append(("X-Forwarded-For", client))
        if scheme is not None and form != "traefik":
            said.append(("X-Forwarded-Proto", scheme))
        replaced = {name.lower() for name, _ in said}
        sent = [(n, v) for n, v in pairs(headers) if n.lower() not in replaced]
        return called_method, path, sent + said

    async def ask(
        self, form: str, method: str, target: str, headers: Headers = (),
        host: str = HOST, client: str | None = None, scheme: str | None = None,
    ) -> Reply:
        called_method, path, sent = self.request_form(form, method, target, headers, host,
                                                      client, scheme)
        return await self.call(called_method, path, sent)

    async def call(self, method: str, path: str, headers: Headers = ()) -> Reply:
        """``path`` exactly as written (no dot resolution, no quoting)."""
        return await fetch(self.session, method, self.url + path, headers)

    async def through_proxy(self, method: str, target: str, headers: Headers = (),
                            host: str = HOST) -> Reply:
        return await fetch(self.session, method, self.listening.proxy + target,
                           [*pairs(headers), ("Host", host)])

    async def scrape(self) -> str:
        assert self.listening.metrics is not None
        async with self.session.get(self.listening.metrics + "/metrics") as response:
            assert response.status == 200
            return await response.text()


async def fetch(session: aiohttp.ClientSession, method: str, url: str,
                headers: Headers = ()) -> Reply:
    async with session.request(method, URL(url, encoded=True), headers=pairs(headers),
                               allow_redirects=False) as response:
        return Reply(response.status, response.headers, await response.read())


@contextlib.asynccontextmanager
async def deciding(settings: Settings, session: aiohttp.ClientSession
                   ) -> AsyncIterator[Decider]:
    """keygate with these settings, serving as ``keygate serve`` does."""
    keygate = build_gateway(settings)
    async with running(keygate) as listening:
        assert listening.decision is not None
        yield Decider(listening, keygate, session)


# -- what keygate tells its operator -------------------------------------------------------

def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A metrics scrape's samples of ``name``, by their sorted labels."""
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def stage_count(text: str, stage: str) -> float:
    counts = samples(text, "keygate_request_duration_seconds_count")
    return counts.get((("stage", stage),), 0)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def collected_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of keygate's loggers, debug included."""
    logger = logging.getLogger("keygate")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def until(condition: Callable[[], bool]) -> None:
    """aiohttp writes an access line after the answer: wait for it (bounded)."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not logged in time")
