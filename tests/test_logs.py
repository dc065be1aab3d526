"""Log lines: the two formats, and the access log through them, on real servers.

The access log is written by keygate's real ports (the proxy on aiohttp's low-level
server, the management application) with the logger class ``running()`` gives them,
into a logger of the test's own whose handler formats exactly as ``configure_logging``
would, so what is asserted is the text that reaches standard error.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from conftest import ProxyTestServer

from gateway.accesslog import AccessLogger
from gateway.logs import JsonFormatter, RequestFields, TextFormatter, configure_logging
from gateway.management import build_management_app
from gateway.middleware import ERROR_CODE


def record(msg: str, *args: Any, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    made = logging.getLogger("keygate.test").makeRecord(
        "keygate.test", level, __file__, 1, msg, args, None, extra=extra or None
    )
    return made


# -- the formatters ---------------------------------------------------------------------
def test_json_line_has_the_fields_the_event_and_the_extras():
    line = orjson.loads(JsonFormatter().format(record(
        "denied %s on %s", "kgk-acme-AAAAAAAAAA", "orders",
        event="access.denied", requestId="r1", appKey="kgk-acme-AAAAAAAAAA", account="acme",
        route="orders", status=403, errorCode="forbidden", ms=1.25,
    )))
    assert line.pop("time").endswith("Z")
    assert line.pop("pid") == os.getpid()  # which of --workers' processes wrote it
    assert line == {
        "level": "info", "logger": "keygate.test", "event": "access.denied",
        "message": "denied kgk-acme-AAAAAAAAAA on orders", "requestId": "r1",
        "appKey": "kgk-acme-AAAAAAAAAA", "account": "acme", "route": "orders",
        "status": 403, "errorCode": "forbidden", "ms": 1.25,
    }


def test_json_event_defaults_to_the_message_before_its_arguments():
    line = orjson.loads(JsonFormatter().format(record("policy reloaded: %s", "v2")))
    assert line["event"] == "policy reloaded: %s"
    assert line["message"] == "policy reloaded: v2"


def test_a_value_cannot_forge_a_json_field_or_a_line():
    hostile = 'x", "level": "critical"}\n{"event": "forged'
    text = JsonFormatter().format(record("got %s", hostile, account=hostile))
    assert "\n" not in text
    line = orjson.loads(text)
    assert line["level"] == "info" and line["account"] == hostile
    assert line["message"] == f"got {hostile}"


def test_extras_cannot_replace_the_core_fields_and_odd_values_still_render():
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    line = orjson.loads(JsonFormatter().format(record("m", level=logging.WARNING,
                                                       logger_extra=Opaque())))
    assert line["level"] == "warning" and line["logger"] == "keygate.test"
    assert line["logger_extra"] == "opaque"


def test_json_line_carries_the_exception_in_one_field():
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    text = JsonFormatter().format(made)
    assert "\n" not in text  # the traceback's newlines are escaped inside the field
    line = orjson.loads(text)
    assert "ValueError: boom" in line["exception"]


def test_text_line_is_todays_format_and_cannot_be_split():
    text = TextFormatter().format(record("path %s", "/a\n2026-01-01 INFO keygate: forged\r"))
    assert " INFO keygate.test: path /a\\n2026-01-01 INFO keygate: forged\\r" in text
    assert "\n" not in text and "\r" not in text


def test_configure_logging_writes_json_to_stderr_and_replaces_itself(
    restored_logging, monkeypatch
):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging(False, "text")
    configure_logging(False, "json")  # once the settings are read: replaces, not adds
    logging.getLogger("keygate.test").info("listening on %s", "127.0.0.1:1",
                                           extra={"event": "listening"})
    logging.getLogger("keygate.test").debug("not at info level")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1
    assert orjson.loads(lines[0])["event"] == "listening"
    # a stream replaced later (as pytest and daemonisers do) is the one written to
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("keygate.test").warning("moved")
    assert orjson.loads(later.getvalue())["message"] == "moved"


# -- the access log on the real ports ---------------------------------------------------
class Collected(logging.Handler):
    def __init__(self, formatter: logging.Formatter):
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, made: logging.LogRecord) -> None:
        self.lines.append(self.format(made))


@pytest.fixture(params=["json", "text"])
def access_log(request: pytest.FixtureRequest) -> Iterator[tuple[str, logging.Logger, Collected]]:
    logger = logging.getLogger(f"keygate.test-access-{request.param}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    collected = Collected(JsonFormatter() if request.param == "json" else TextFormatter())
    logger.addHandler(collected)
    yield request.param, logger, collected
    logger.removeHandler(collected)


async def logged_ports(gateway, aiohttp_client, logger) -> tuple[Any, Any]:
    async def start(server: Any) -> Any:
        # the runner options running() passes with access_log = true
        await server.start_server(access_log_class=AccessLogger, access_log=logger)
        return await aiohttp_client(server)

    return await start(ProxyTestServer(gateway)), await start(
        TestServer(build_management_app(gateway))
    )


@contextlib.asynccontextmanager
async def text_access_log(
    gateway: Any, aiohttp_client: Any, name: str
) -> AsyncIterator[tuple[Any, Collected]]:
    """The proxy port with its access lines collected in the text format, on a logger of
    this test's own."""
    logger = logging.getLogger(f"keygate.test-access-{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    collected = Collected(TextFormatter())
    logger.addHandler(collected)
    try:
        proxy, _ = await logged_ports(gateway, aiohttp_client, logger)
        yield proxy, collected
    finally:
        logger.removeHandler(collected)


async def until_logged(collected: Collected, count: int) -> None:
    """aiohttp writes the access line after the answer: wait for it (bounded)."""
    for _ in range(200):
        if len(collected.lines) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(collected.lines)} access lines, expected {count}")


async def test_access_lines_say_who_went_where_and_what_came_of_it(
    gateway, aiohttp_client, access_log, make_key, admin_key
):
    log_format, logger, collected = access_log
    proxy, management = await logged_ports(gateway, aiohttp_client, logger)
    key = await make_key("acme", ["orders-reader"])
    wrong = {"X-API-AppKey": key.app_key, "X-API-AppToken": "kgt_" + "A" * 36}
    token_in_path = "/orders/" + key.token  # a client that pasted its token into the URL

    exchanges = [
        (proxy, "GET", "/orders/1?token=" + key.token, key.headers, 200),
        (proxy, "GET", "/orders/2", wrong, 401),
        (proxy, "POST", "/orders/3", key.headers, 403),
        (proxy, "GET", "/nowhere", key.headers, 404),
        (proxy, "GET", token_in_path, key.headers, 200),
        (management, "GET", "/api/v1/accounts/acme/keys", admin_key.headers, 200),
        (management, "GET", "/api/v1/accounts/Not_An_Account/keys", admin_key.headers, 400),
        (management, "GET", "/api/v1/accounts/acme/keys", key.headers, 403),
    ]
    request_ids = []
    for client, method, target, headers, status in exchanges:
        response = await client.request(method, target, headers=headers)
        assert response.status == status, target
        request_ids.append(response.headers["X-Request-Id"])
    await until_logged(collected, len(exchanges))
    text = "\n".join(collected.lines)

    for secret in (key.token, wrong["X-API-AppToken"], admin_key.token,
                   gateway.hasher.digest(key.token), gateway.hasher.digest(admin_key.token)):
        assert secret not in text
    assert key.token[4:] not in text  # not even the token without its prefix

    if log_format == "text":
        assert len(collected.lines) == len(exchanges)  # one line each, whatever the path
        first = collected.lines[0]
        assert ' INFO keygate.test-access-text: 127.0.0.1 "GET /orders/1" 200 ' in first
        assert f"key={key.app_key} account=acme route=orders error=- id={request_ids[0]}" in first
        assert "error=invalid_credentials" in collected.lines[1]
        return

    lines = {line["requestId"]: line for line in map(orjson.loads, collected.lines)}
    ok, bad_token, denied, no_route, pasted, listed, bad_account, not_viewer = (
        lines[request_id] for request_id in request_ids
    )
    assert ok | {"time": 0, "ms": 0, "bytes": 0, "message": ""} == {
        "time": 0, "ms": 0, "bytes": 0, "message": "", "level": "info", "pid": os.getpid(),
        "logger": logger.name, "event": "request", "requestId": request_ids[0],
        "appKey": key.app_key, "account": "acme", "route": "orders", "status": 200,
        "errorCode": None, "remote": "127.0.0.1", "method": "GET", "path": "/orders/1",
    }
    assert isinstance(ok["ms"], float) and ok["bytes"] > 0
    assert (bad_token["status"], bad_token["errorCode"]) == (401, "invalid_credentials")
    assert (bad_token["route"], bad_token["account"], bad_token["appKey"]) == (
        "orders", "acme", None  # not authenticated: the key it claimed is not vouched for
    )
    assert (denied["status"], denied["errorCode"], denied["route"]) == (
        403, "not_permitted", "orders"
    )
    # proven, then refused: whose key it was is logged (the caller holds it)
    assert (denied["appKey"], denied["account"]) == (key.app_key, "acme")
    assert (not_viewer["status"], not_viewer["appKey"]) == (403, key.app_key)
    assert (no_route["status"], no_route["errorCode"], no_route["route"]) == (
        404, "no_route", None
    )
    assert pasted["path"] == "/orders/kgt…"
    assert (listed["route"], listed["account"], listed["appKey"]) == (
        "/api/v1/accounts/{account}/keys", "acme", admin_key.app_key
    )
    # a path segment that is not an account name is not reported as one
    assert (bad_account["account"], bad_account["errorCode"]) == (None, "bad_account")


async def test_a_newline_in_the_path_cannot_start_a_text_log_line(
    gateway, aiohttp_client, make_key
):
    async with text_access_log(gateway, aiohttp_client, "newline") as (proxy, collected):
        forged = "/orders/x%0a2026-12-02 12:00:00,000 INFO keygate: forged%0d"
        response = await proxy.get(forged, headers=(await make_key()).headers)
        assert response.status in (200, 400)
        await until_logged(collected, 1)
    assert len(collected.lines) == 1
    assert "\n" not in collected.lines[0] and "\r" not in collected.lines[0]
    assert "\\n2026-12-02" in collected.lines[0]


async def test_every_error_answer_carries_its_code_for_the_log(gateway, aiohttp_client):
    """ERROR_CODE is set where the error body is made, so no answer in the one error
    shape reaches the log without its code (the refused-head stand-in included)."""
    from gateway.errors import Unauthorized
    from gateway.middleware import error_response

    assert error_response(Unauthorized(code="key_inactive"), "rid")[ERROR_CODE] == "key_inactive"


async def test_a_path_cannot_forge_the_fields_of_a_text_access_log_line(
    gateway: Any, aiohttp_client: Any
):
    """A path that decodes to '"' and spaces would close the text line's quoted request
    field and write a status, key and account of the client's choosing before the real
    ones (an anonymous 401 read as a 200 for another key): '"' is escaped as nginx
    does."""
    async with text_access_log(gateway, aiohttp_client, "fields") as (proxy, collected):
        forged = ("/orders/1%22%20200%200.120%20ms%20key=kgk-acme-VICTIM0000%20account=acme"
                  "%20route=orders%20error=-%20id=x%20%22")
        response = await proxy.get(forged)  # no credentials at all
        assert response.status == 401
        await until_logged(collected, 1)
    [line] = collected.lines
    # the request field must stay one field: the client may not close its quotes and
    # write the status and key that the line's readers take for keygate's
    assert '"GET /orders/1" 200 ' not in line, line
    assert " key=kgk-acme-VICTIM0000 " not in line, line


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_a_line_logged_while_a_request_is_handled_says_which_request(
    proxy_with, make_key, closed_port, log_format
):
    """An upstream that fails is a 502 for the client, who reports its X-Request-Id; the
    warning keygate logs then carries that id, the route, the account and the key (the
    handler's filter adds them from the request the task handles), and an event name.
    Lines logged outside any request carry none of them."""
    collected = Collected(JsonFormatter() if log_format == "json" else TextFormatter())
    collected.addFilter(RequestFields())
    proxy_log = logging.getLogger("keygate.proxy")
    proxy_log.addHandler(collected)
    try:
        dead = {"name": "dead", "path_prefix": "/dead", "account": "acme",
                "resource": "orders", "upstream": f"http://127.0.0.1:{closed_port}"}
        client = await proxy_with(routes=[dead])
        key = await make_key("acme", ["orders-reader"])
        response = await client.get("/dead/1", headers=key.headers)
        assert response.status == 502
        request_id = response.headers["X-Request-Id"]
        proxy_log.warning("outside any request")
    finally:
        proxy_log.removeHandler(collected)
    failed, outside = collected.lines
    if log_format == "text":
        assert failed.endswith(f"(request id {request_id})") and "upstream" in failed
        assert "request id" not in outside
        return
    line = orjson.loads(failed)
    assert (line["event"], line["level"]) == ("upstream.failed", "warning")
    assert (line["requestId"], line["route"], line["account"], line["appKey"]) == (
        request_id, "dead", "acme", key.app_key)
    assert key.token not in failed
    assert not {"requestId", "route", "account", "appKey"} & set(orjson.loads(outside))
