"""The access log: one line per request, through the same formatter as every other
log line (``log_format``: text, or a JSON object with the fields as their own keys).
Off by default: it costs throughput.

What a line holds: the client's address, method, path, status, bytes, latency, request
id, API key, target account, route and error code. The request path leaves what it
learned on the request (:data:`APP_KEY`, :data:`CLIENT`, :data:`ACCOUNT`,
:data:`ROUTE`; the error code on the response, ``gateway.middleware.ERROR_CODE``), so
logging costs no second look at anything. What it never holds: the query string (clients
put secrets in it), the credential headers, and anything in the path that could be a
one-time link's secret or a token (see :func:`loggable_path`).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from time import perf_counter
from urllib.parse import unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .credentials import (
    LINK_SECRET_BYTES,
    TOKEN_CHECKSUM_CHARS,
    TOKEN_RANDOM_CHARS,
    is_valid_account,
)
from .middleware import ACCOUNT, APP_KEY, ERROR_CODE, REQUEST_ID, ROUTE, STARTED

# the client's address as keygate trusts it (trusted_proxies), when it differs from the peer
CLIENT = web.RequestKey("client", str)
# on the decision API: the method and path (no query) of the request it decided on, as
# the front proxy reported them; the line shows them instead of the call to the API
ORIGINAL_REQUEST = web.RequestKey("original_request", tuple)


# A one-time link's secret: 256 random bits in unpadded base64url (43 characters).
_SECRET_LENGTH = math.ceil(LINK_SECRET_BYTES * 8 / 6)
# A token: a prefix (a setting), "_", then base62 characters. Matched without its prefix,
# so the rule holds whatever prefix a deployment chose.
_TOKEN_BODY = TOKEN_RANDOM_CHARS + TOKEN_CHECKSUM_CHARS
_SECRET_RUN = re.compile(f"[A-Za-z0-9_-]{{{_SECRET_LENGTH},}}|_[0-9A-Za-z]{{{_TOKEN_BODY}}}")
_LINKS = "token-links"
_MAX_DECODES = 4


def _loggable(path: str) -> str:
    """The path with anything that could be a one-time link's secret or a token
    replaced by ``…``.

    A link's path is its secret: whoever reads the log could open it, and the request
    that wrote it need not have reached the link handler (``//api/v1/token-links/…``,
    ``/API/V1/Token-Links/…``, ``%``-escapes, a 404 on the proxy port: the secret is
    just as valid afterwards). So the check does not depend on how the path was
    spelled or routed: the path is decoded until no escape is left (a path that still
    decodes after ``_MAX_DECODES`` rounds is withheld whole), then everything after
    ``token-links`` (any case) is dropped, and any run of base64url characters at least
    as long as a secret is replaced wherever it stands (a longer run may hold a secret
    with something glued to it), as is the body of anything shaped like a token
    (``_`` and 36 base62 characters: a client that put its token in the path has leaked
    it, but the log need not keep it). That costs the log a few long identifiers, such
    as hex digests, in exchange for never holding a secret. The usual path needs a
    substring test and one regular expression search.
    """
    decoded = path
    for _ in range(_MAX_DECODES):
        if "%" not in decoded:
            break
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        if "%" in decoded and unquote(decoded) != decoded:
            return "(withheld)"
    if not decoded.isascii():
        decoded = unicodedata.normalize("NFKC", decoded)  # fullwidth letters and the like
    links = decoded.lower().find(_LINKS)
    if links < 0 and _SECRET_RUN.search(decoded) is None:
        return path
    if links >= 0:
        decoded = decoded[: links + len(_LINKS)] + "/…"
    return _SECRET_RUN.sub("…", decoded)


def _in_quotes(text: str) -> str:
    """``text`` for the quoted request field of the text line, one token: ``"``, ``\\``
    and spaces escaped as ``\\x22``, ``\\x5C`` and ``\\x20`` (nginx escapes ``"`` so),
    so that a path can neither close the field nor seem to write a status, a key or an
    account of its own after it, for a parser or for a reader."""
    if '"' not in text and "\\" not in text and " " not in text:
        return text
    return text.replace("\\", "\\x5C").replace('"', "\\x22").replace(" ", "\\x20")


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log hook (``access_log_class``) for every port: one record per
    answered request on the ``keygate.access`` logger, its fields as ``extra``."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        route, account = request.get(ROUTE), request.get(ACCOUNT)
        if route is None:
            route, account = _management_route(request)
        original = request.get(ORIGINAL_REQUEST)
        method, path = original if original is not None else (request.method, request.path)
        path = _loggable(path)
        status = response.status
        started = request.get(STARTED)
        ms = round((perf_counter() - started if started is not None else time_) * 1000, 3)
        remote = request.get(CLIENT) or request.remote
        app_key = request.get(APP_KEY)
        error_code = response.get(ERROR_CODE)
        request_id = request.get(REQUEST_ID)
        self.logger.info(
            '%s "%s %s" %d %.3f ms key=%s account=%s route=%s error=%s id=%s',
            remote, _in_quotes(method), _in_quotes(path), status, ms, app_key or "-",
            account or "-",
            route or "-", error_code or "-", request_id,
            extra={
                "event": "request",
                "requestId": request_id,
                "appKey": app_key,
                "account": account,
                "route": route,
                "status": status,
                "errorCode": error_code,
                "ms": ms,
                "remote": remote,
                "method": method,
                "path": path,
                "bytes": response.body_length,
            },
        )


def _management_route(request: web.BaseRequest) -> tuple[str | None, str | None]:
    """On the management port: the matched path pattern (``/api/v1/accounts/{account}
    /keys``) and the path's account when it is one (a path segment the client chose is
    logged only once it passed the account-name rule)."""
    match_info = getattr(request, "match_info", None)  # web.Request; the proxy has none
    if match_info is None:
        return None, None
    resource = match_info.route.resource
    account = match_info.get("account")
    return (
        resource.canonical if resource is not None else None,
        account if account is not None and is_valid_account(account) else None,
    )


def access_logger() -> logging.Logger:
    """``keygate.access``: its lines go to the root logger's handler, in ``log_format``
    like every other line (see gateway.logs.configure_logging)."""
    logger = logging.getLogger("keygate.access")
    logger.setLevel(logging.INFO)
    return logger
