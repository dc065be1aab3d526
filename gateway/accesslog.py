"""A structured access log: one JSON object per request (off by default: it costs
throughput). Query strings are left out, since clients put secrets in them, and so is
anything in the path that could be a one-time link's secret (see :func:`_loggable`).
Both ports log through :class:`JsonAccessLogger`."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import unicodedata
from urllib.parse import unquote

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .credentials import LINK_SECRET_BYTES
from .middleware import REQUEST_ID

APP_KEY = web.RequestKey("app_key", str)
# the client's address as keygate trusts it (trusted_proxies), when it differs from the peer
CLIENT = web.RequestKey("client", str)


# A one-time link's secret: 256 random bits in unpadded base64url (43 characters).
_SECRET_LENGTH = math.ceil(LINK_SECRET_BYTES * 8 / 6)
_SECRET_RUN = re.compile(f"[A-Za-z0-9_-]{{{_SECRET_LENGTH},}}")
_LINKS = "token-links"
_MAX_DECODES = 4


def _loggable(path: str) -> str:
    """The path with anything that could be a one-time link's secret replaced by ``…``.

    A link's path is its secret: whoever reads the log could open it, and the request
    that wrote it need not have reached the link handler (``//api/v1/token-links/…``,
    ``/API/V1/Token-Links/…``, ``%``-escapes, a 404 on the proxy port: the secret is
    just as valid afterwards). So the check does not depend on how the path was
    spelled or routed: the path is decoded until no escape is left (a path that still
    decodes after ``_MAX_DECODES`` rounds is withheld whole), then everything after
    ``token-links`` (any case) is dropped, and any run of base64url characters at least
    as long as a secret is replaced wherever it stands (a longer run may hold a secret
    with something glued to it). That costs the log a few long identifiers, such as
    hex digests, in exchange for never holding a secret. The usual path needs a
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


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        self.logger.info(
            orjson.dumps(
                {
                    "time": round(time.time(), 3),
                    "remote": request.get(CLIENT) or request.remote,
                    "method": request.method,
                    "path": _loggable(request.path),
                    "status": response.status,
                    "bytes": response.body_length,
                    "ms": round(time_ * 1000, 3),
                    "requestId": request.get(REQUEST_ID),
                    "appKey": request.get(APP_KEY),
                }
            ).decode()
        )


def access_logger() -> logging.Logger:
    """``keygate.access``: bare JSON lines on stderr, not mixed into other log formats."""
    logger = logging.getLogger("keygate.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
