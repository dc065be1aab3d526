"""The one error shape keygate speaks, and whose fault each error is.

Every refusal, from either port, is ``{"error": {"code", "message", "status",
"requestId"}}``. Codes are stable identifiers that clients may branch on; messages are
for people and say what to do. An error that carries data a program needs (the roles a
policy reload would remove, per account) adds it as ``details``, beside those four.
Subclasses exist per HTTP status so that handlers raise meaning ("this is the client's
fault") and the middleware alone decides how it looks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson


class GatewayError(Exception):
    """Base class: an error that becomes a JSON response with ``status``."""

    status = 500
    code = "internal_error"
    message = "keygate failed to handle the request; this is a bug in keygate"
    headers: Mapping[str, str] = MappingProxyType({})  # extra response headers
    details: Mapping[str, Any] | None = None  # the error body's "details", when set
    # the API key that proved its credentials before this refusal (a 403, a CSRF
    # refusal): the access log names it; never part of the answer
    app_key: str | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if message is not None:
            self.message = message
        if code is not None:
            self.code = code
        if details is not None:
            self.details = details
        super().__init__(self.message)

    def body(self, request_id: str) -> bytes:
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "status": self.status,
            "requestId": request_id,
        }
        if self.details is not None:
            error["details"] = self.details
        return orjson.dumps({"error": error})


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    message = "the request is malformed"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    message = "missing or invalid API credentials"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    message = "the API key is not permitted to do this"


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    message = "nothing here"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"
    message = "this method is not allowed on this path"


class Conflict(GatewayError):
    status = 409
    code = "conflict"
    message = "the request conflicts with the current state"


class Gone(GatewayError):
    status = 410
    code = "gone"
    message = "this resource is gone"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"
    message = "the request body is too large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"
    message = "send the body as JSON with Content-Type: application/json"


class TooManyRequests(GatewayError):
    status = 429
    code = "too_many_failures"
    message = "too many failed authentications; retry after the time in Retry-After"

    def __init__(self, retry_after: float, message: str | None = None, *,
                 code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, math.ceil(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}


class BadGateway(GatewayError):
    status = 502
    code = "upstream_unreachable"
    message = "the upstream service could not be reached; this is not the client's fault"


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"
    message = "keygate cannot reach its key store; retry later"


class GatewayTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    message = "the upstream service did not answer in time; this is not the client's fault"


class ConfigError(Exception):
    """A setting, route or policy file is wrong; raised at start, never per request.

    The message names the setting (or file and line) and the problem, because the
    person reading it is an operator looking at a failed deployment.
    """
