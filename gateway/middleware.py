"""Middlewares shared by both ports: a request id on everything, errors as one JSON shape."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Callable
from time import perf_counter
from typing import Any

from aiohttp import hdrs, web
from multidict import istr

from .connections import guarded
from .errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from .logs import bind_request_fields, unbind_request_fields

log = logging.getLogger("keygate")

REQUEST_ID_HEADER = istr("X-Request-Id")  # istr: multidict need not case-fold it each use
SERVER = "keygate"  # the Server header of every answer: no versions for scanners to match
REQUEST_ID = web.RequestKey("request_id", str) if hasattr(web, "RequestKey") else "request_id"
# the error body's "code", kept on the response for the access log (no body parsing)
ERROR_CODE = web.ResponseKey("error_code", str)
# the API key that proved its credentials (allowed, or refused once proven): access log
APP_KEY = web.RequestKey("app_key", str)
# on the proxy port: the route's name and the account it targets, once they are known
ROUTE = web.RequestKey("route", str)
ACCOUNT = web.RequestKey("account", str)
# when keygate began handling the request (perf_counter): the access log's latency, at
# the clock's resolution (the event loop's clock is milliseconds under uvloop)
STARTED = web.RequestKey("started", float)
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

_FROM_AIOHTTP: dict[int, type[GatewayError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def request_id_of(request: web.BaseRequest) -> str:
    return request.get(REQUEST_ID) or new_request_id()  # type: ignore[arg-type]


_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """Unique, not secret: a random per-process prefix and a counter (no syscall per
    request, unlike reading the OS's random source)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def request_id_for(incoming: str | None) -> str:
    """A well-formed client request id (``X-Request-Id``, kept for tracing across
    hops), else a new one. (Ids of ASCII letters and digits, as front proxies make
    them, are told apart without the pattern.)"""
    if incoming is not None and (
        8 <= len(incoming) <= 128 and incoming.isascii() and incoming.isalnum()
        or _CLIENT_REQUEST_ID.fullmatch(incoming)
    ):
        return incoming
    return new_request_id()


def error_response(error: GatewayError, request_id: str) -> web.Response:
    response = web.Response(
        body=error.body(request_id),
        status=error.status,
        content_type="application/json",
        headers={**error.headers, REQUEST_ID_HEADER: request_id, hdrs.SERVER: SERVER},
    )
    response[ERROR_CODE] = error.code
    return response


async def server_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` signal handler: covers answers that are streamed
    (prepared inside the handler, before ``errors_as_json`` sees them)."""
    response.headers[hdrs.SERVER] = SERVER


async def errors_as_json(request: web.BaseRequest, handler):  # type: ignore[no-untyped-def]
    """Keep a well-formed client request id (for tracing across hops) or make one, and
    turn every exception into the JSON error shape; a bug is a 500 with no details.

    The management app uses it as a middleware; the proxy port, whose one handler takes
    every request on aiohttp's low-level server, calls it directly.

    On a guarded connection (``gateway.connections``) it also tells the guard when a
    request's handling starts and ends (so that the idle deadline starts then), and
    answers the refusal of a malformed request in place of the synthetic request that
    stands for it."""
    connection = guarded(request.transport)
    if connection is None:
        return await _answer(request, handler)
    refusal = connection.request_started(request)
    try:
        if refusal is not None:
            request[REQUEST_ID] = request_id = new_request_id()
            response = error_response(refusal, request_id)
            response.force_close()
            return response
        return await _answer(request, handler)
    finally:
        connection.request_finished()


def _fields_of(request: web.BaseRequest) -> Callable[[], dict[str, Any]]:
    """What a log line written while ``request`` is handled says of it (read when the
    line is written: the route and the key are known only part of the way through)."""
    def fields() -> dict[str, Any]:
        return {"requestId": request.get(REQUEST_ID), "route": request.get(ROUTE),
                "account": request.get(ACCOUNT), "appKey": request.get(APP_KEY)}
    return fields


async def _answer(request: web.BaseRequest, handler):  # type: ignore[no-untyped-def]
    request[STARTED] = perf_counter()
    request[REQUEST_ID] = request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
    bound = bind_request_fields(_fields_of(request))
    try:
        return await _handled(request, handler, request_id)
    finally:
        unbind_request_fields(bound)


async def _handled(request: web.BaseRequest, handler, request_id: str):  # type: ignore[no-untyped-def]
    try:
        response = await handler(request)
    except GatewayError as exc:
        if exc.app_key is not None:  # proven, then refused: for the access log
            request[APP_KEY] = exc.app_key
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers[REQUEST_ID_HEADER] = request_id
            exc.headers[hdrs.SERVER] = SERVER
            raise
        kind = _FROM_AIOHTTP.get(exc.status)
        error = kind() if kind else GatewayError(exc.reason)
        if kind is None:
            error.status = exc.status
            error.code = exc.reason.lower().replace(" ", "_")
        response = error_response(error, request_id)
        if hdrs.ALLOW in exc.headers:  # a 405 names the methods there are (RFC 9110)
            response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
        return response
    except Exception:
        log.exception("unhandled error (request id %s)", request_id)
        return error_response(GatewayError(), request_id)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
        response.headers[hdrs.SERVER] = SERVER
    return response


request_id_and_errors = web.middleware(errors_as_json)
