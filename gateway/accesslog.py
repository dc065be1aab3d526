"""A structured access log: one JSON object per request (off by default: it costs
throughput). Query strings are left out, since clients put secrets in them."""

from __future__ import annotations

import logging
import sys
import time

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .middleware import REQUEST_ID

APP_KEY = web.RequestKey("app_key", str)


_SECRET_PATHS = ("/api/v1/token-links/",)


def _loggable(path: str) -> str:
    """A one-time link's path is its secret: whoever reads the log could open it."""
    for prefix in _SECRET_PATHS:
        if path.startswith(prefix):
            return prefix + "…"
    return path


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        self.logger.info(
            orjson.dumps(
                {
                    "time": round(time.time(), 3),
                    "remote": request.remote,
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
