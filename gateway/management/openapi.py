"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of the management API, written
from the operations table (:mod:`.operations`) and its models (:mod:`.schema`), the
same declarations every request is validated with, so the two cannot drift.

The document depends on the settings (the credential header names, the session
cookie), so it is built once when the management app is built, and served as the same
bytes, with a strong ETag, to every caller: it needs no credentials and reveals nothing
a client could not learn by calling the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

import msgspec
import orjson
from aiohttp import web

from .. import __version__
from ..pipeline.csrf import SAFE_METHODS  # what the CSRF check leaves alone
from ..settings import Settings
from .common import cached_response, strong_etag
from .operations import (
    Operation,
    Operations,
    field_specs,
    head_operation_id,
    model_of,
    refusal_codes,
)
from .schema import Error

operations = Operations("meta")

OPENAPI_PATH = "/api/v1/openapi.json"
DOCUMENT = web.AppKey("openapi_document", bytes)
DOCUMENT_ETAG = web.AppKey("openapi_etag", str)
COMPONENT = "#/components/schemas/{name}"
DOCUMENT_MAX_AGE = 300
SESSION_COOKIE = "keygate_session"

AUTHENTICATED = [{"appKey": [], "appToken": []}, {"bearer": []}, {"sessionCookie": []}]

# Why each status is answered, beside the codes an operation lists for it.
ERROR_MEANINGS = {
    400: "The request is malformed: a parameter or body field does not match the schema "
         "(the message names it), or the credentials are malformed.",
    401: "Missing or invalid credentials, or an inactive key. An unknown key and a wrong "
         "token get the same answer.",
    403: "Authenticated, but not permitted.",
    404: "Not found.",
    409: "Conflicts with the current state.",
    410: "Gone.",
    413: "The body is larger than `management_max_body`.",
    414: "The request line (path and query) is too long.",
    415: "The body is not JSON (`Content-Type: application/json`).",
    431: "The request's header fields are too large or too many.",
    429: "Too many failed authentications from this address or for this key; retry after "
         "`Retry-After` seconds.",
    503: "The key store is unreachable; retry later.",
}
CSRF_MEANING = ("a write authenticated by the session cookie alone came without the "
                "`X-Keygate-CSRF: 1` header, or from another origin.")

# the refusals of authentication (any credential: the pair, Bearer, the session cookie)
# and of authorization, on every operation that asks for a permission
AUTHENTICATION_CODES = ("missing_credentials", "incomplete_credentials", "invalid_credentials",
                        "key_inactive", "invalid_session", "session_expired",
                        "session_ended")
AUTHORIZATION_CODES = ("no_grant", "grant_inactive", "no_roles", "not_permitted")
CACHE_HEADERS = {
    "ETag": {"description": "A hash of the answer's bytes; send it back in "
                            "`If-None-Match` to revalidate (304 while it is the same).",
             "required": True, "schema": {"type": "string"}},
    "Cache-Control": {"description": "`public, max-age=N`: cacheable for N seconds.",
                      "required": True, "schema": {"type": "string"}},
}


def _error_statuses(operation: Operation) -> dict[int, tuple[str, ...]]:
    """Every error status an operation can answer, with its codes: those its
    declaration implies (decoding its inputs, authentication, reading a body) and those
    it lists."""
    implied: dict[int, tuple[str, ...]] = {}

    def add(status: int, *codes: str) -> None:
        implied[status] = implied.get(status, ()) + codes

    # the request reader's refusals, before any operation is chosen (as served; malformed
    # HTTP, which no client following this document sends, is in the info description)
    add(400, "malformed_request")
    add(414, "uri_too_long")
    add(431, "request_header_fields_too_large")
    add(503, "too_many_connections")
    if operation.params is not None and refusal_codes(operation.params, "path"):
        add(400, *refusal_codes(operation.params, "path"))
    if operation.permission is not None:
        add(400, "malformed_credentials")
        add(401, *AUTHENTICATION_CODES)
        add(403, *AUTHORIZATION_CODES)
        if operation.method not in SAFE_METHODS:
            add(403, "csrf_refused")
        add(429, "too_many_failures")
        add(503, "store_unavailable")
    if operation.query is not None:
        add(400, *refusal_codes(operation.query, "query"))
    if operation.body is not None:
        add(400, *refusal_codes(model_of(operation.body), "body"))
        add(413, "payload_too_large")
        add(415, "unsupported_media_type")
    for status, codes in operation.errors.items():
        add(status, *codes)
    return {status: tuple(dict.fromkeys(codes)) for status, codes in sorted(implied.items())}


class _Schemas:
    """Components for every model the operations name, and the schema of each."""

    def __init__(self, operations: list[Operation]) -> None:
        wanted: list[Any] = [Error]
        for op in operations:
            wanted += [t for t in (op.params, op.query, op.body) if t is not None]
            for answer in op.responses.values():
                media = answer if isinstance(answer, Mapping) else {"application/json": answer}
                wanted += [t for t in media.values() if t is not None and t is not bytes]
            wanted += list(op.error_details.values())
        refs, self.components = msgspec.json.schema_components(wanted, ref_template=COMPONENT)
        self.refs = {id(t): ref for t, ref in zip(wanted, refs, strict=True)}
        self.parameter_models = {t.__name__ for op in operations
                                 for t in (op.params, op.query) if t is not None}

    def of(self, declared: Any) -> dict[str, Any]:
        return self.refs[id(declared)]

    def parameters(self, model: type, where: str) -> list[dict[str, Any]]:
        schema = self.components[model.__name__]
        required = set(schema.get("required", ()))
        found = []
        for spec in field_specs(model):
            field_schema = dict(schema["properties"][spec.wire])
            parameter: dict[str, Any] = {
                "name": spec.wire, "in": where,
                "required": where == "path" or spec.wire in required,
                "schema": field_schema,
            }
            if "description" in field_schema:
                parameter["description"] = field_schema.pop("description")
            found.append(parameter)
        return found

    def public_components(self) -> dict[str, Any]:
        """Path and query models become parameters, not schemas of their own."""
        return {name: schema for name, schema in sorted(self.components.items())
                if name not in self.parameter_models}


def _examples(named: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"examples": {name: {"value": value} for name, value in named.items()}} if (
        named) else {}


def _content(schemas: _Schemas, answer: Any,
             examples: Mapping[str, Any] | None = None) -> dict[str, Any]:
    media = answer if isinstance(answer, Mapping) else {"application/json": answer}
    content = {}
    for media_type, declared in media.items():
        # binary: no schema (OpenAPI 3.1 describes raw bytes by the media type alone)
        content[media_type] = {} if declared is bytes else {"schema": schemas.of(declared)}
        if media_type == "application/json":
            content[media_type].update(_examples(examples))
    return content


def _error_schema(schemas: _Schemas, details: type | None) -> dict[str, Any]:
    """The one error shape; with ``details``, the same shape whose ``details`` is that
    model (every error of the status carries it)."""
    error = {"$ref": COMPONENT.format(name="Error")}
    if details is None:
        return error
    return {"allOf": [error, {
        "type": "object",
        "properties": {"error": {"type": "object", "required": ["details"],
                                 "properties": {"details": schemas.of(details)}}},
    }]}


def _responses(schemas: _Schemas, operation: Operation,
               settings: Settings) -> dict[str, Any]:
    request_id = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}
    responses: dict[str, Any] = {}
    for status, answer in sorted(operation.responses.items()):
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase,
                                    "headers": dict(request_id)}
        if operation.cached and status in (200, 304):
            response["headers"].update(CACHE_HEADERS)
        declared = operation.response_headers.get(status)
        if declared is not None:
            response["headers"].update(declared(settings))
        if answer is not None:
            response["content"] = _content(schemas, answer, operation.examples.get(status))
        responses[str(status)] = response
    for status, codes in _error_statuses(operation).items():
        listed = f" Codes: {', '.join(f'`{c}`' for c in codes)}." if codes else ""
        meaning = ERROR_MEANINGS.get(status, HTTPStatus(status).phrase)
        if "csrf_refused" in codes:
            meaning = (f"Refused: {CSRF_MEANING}" if set(codes) == {"csrf_refused"}
                       else f"{meaning} Or {CSRF_MEANING}")
        details = operation.error_details.get(status)
        if details is not None:
            listed += f" `details`: `{details.__name__}`."
        error: dict[str, Any] = {
            "description": meaning + listed,
            "headers": dict(request_id),
            "content": {"application/json": {"schema": _error_schema(schemas, details)}},
        }
        if status == 429:
            error["headers"]["Retry-After"] = {
                "description": "Seconds to wait before authenticating again.",
                "required": True, "schema": {"type": "integer", "minimum": 1}}
        responses[str(status)] = error
    return responses


def _operation(schemas: _Schemas, operation: Operation,
               settings: Settings) -> dict[str, Any]:
    described: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    description = operation.description
    if operation.permission is not None:
        needed = f"Permission: {operation.permission.describe()}."
        description = f"{description}\n\n{needed}" if description else needed
        described["x-keygate-permission"] = {
            "resource": operation.permission.resource,
            "actions": list(operation.permission.actions),
            "account": "own" if operation.permission.own_account else "path",
        }
        described["security"] = AUTHENTICATED
    else:
        described["security"] = []
    if description:
        described["description"] = description
    parameters = []
    if operation.params is not None:
        parameters += schemas.parameters(operation.params, "path")
    if operation.query is not None:
        parameters += schemas.parameters(operation.query, "query")
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {
            "required": not operation.body_optional,
            "content": {"application/json": {"schema": schemas.of(operation.body),
                                             **_examples(operation.examples.get("body"))}},
        }
        if operation.body_optional:
            described["requestBody"]["description"] = (
                "Optional: no body at all means every field's default.")
    described["responses"] = _responses(schemas, operation, settings)
    return described


def _head(get: dict[str, Any], operation: Operation) -> dict[str, Any]:
    """The HEAD beside a GET that answers it: the same headers and statuses, no body."""
    described = {**get, "operationId": head_operation_id(operation),
                 "summary": f"{operation.summary} (headers only)",
                 "responses": {status: {k: v for k, v in response.items() if k != "content"}
                               for status, response in get["responses"].items()}}
    described["description"] = ("The GET's answer without its body: the same status and "
                                "headers.")
    return described


def security_schemes(settings: Settings) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        "appKey": {"type": "apiKey", "in": "header", "name": settings.key_header,
                   "description": "The API key; sent together with its token."},
        "appToken": {"type": "apiKey", "in": "header", "name": settings.token_header,
                     "description": "The API token (the secret) of the key."},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "A session token from `POST /api/v1/auth/login`."},
    }
    cookie = getattr(settings, "session_cookie", SESSION_COOKIE)
    if cookie:
        schemes["sessionCookie"] = {
            "type": "apiKey", "in": "cookie", "name": cookie,
            "description": "The session token, in a cookie instead of the Authorization "
                           f"header (named `__Host-{cookie}` when login came over TLS)."}
    return schemes


def build_document(all_operations: Iterable[Operation], settings: Settings) -> dict[str, Any]:
    ordered = list(all_operations)
    schemas = _Schemas(ordered)
    paths: dict[str, dict[str, Any]] = {}
    for operation in ordered:
        described = _operation(schemas, operation, settings)
        paths.setdefault(operation.path, {})[operation.method.lower()] = described
        if operation.head:
            paths[operation.path]["head"] = _head(described, operation)
    schemes = security_schemes(settings)
    for operation in paths.values():
        for described in operation.values():
            # a scheme the settings turned off is not offered
            described["security"] = [
                need for need in described["security"] if set(need) <= set(schemes)]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keygate management API",
            "version": __version__,
            "description": (
                "Key lifecycle, role grants, token renewal, export, settings, audit and "
                "policy administration for keygate, an authorization gateway for API keys. "
                "Every refusal is the one error shape (`Error`); `code` is stable, "
                "`message` is for people. Requests that are not well-formed HTTP/1.1 are "
                "refused before any operation: 400 `malformed_request`, 417, 501, 505."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        # the management port as integrators reach it (management_public_url), else
        # wherever this document was fetched from
        "servers": [{"url": settings.management_public_url.rstrip("/") or "/",
                     "description": "the management port"}],
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in ordered)],
        "paths": paths,
        "components": {
            "schemas": schemas.public_components(),
            "securitySchemes": schemes,
            "headers": {"RequestId": {
                "description": "The request's id, also in error bodies and the logs; a "
                               "well-formed client-sent X-Request-Id is kept.",
                "required": True, "schema": {"type": "string", "minLength": 1}}},
        },
    }


def install(app: web.Application, all_operations: Iterable[Operation],
            settings: Settings) -> None:
    """Build the document once, for ``GET /api/v1/openapi.json`` to serve."""
    document = orjson.dumps(build_document(all_operations, settings), option=orjson.OPT_SORT_KEYS)
    app[DOCUMENT] = document
    app[DOCUMENT_ETAG] = strong_etag(document)


@operations.get(OPENAPI_PATH, summary="This API's OpenAPI 3.1 document",
                responses={200: dict[str, Any], 304: None}, cached=True)
async def openapi_document(request: web.Request) -> web.Response:
    """No credentials needed. The same bytes until the settings change: cache it, and
    revalidate with `If-None-Match`."""
    return cached_response(request, request.app[DOCUMENT], request.app[DOCUMENT_ETAG],
                           DOCUMENT_MAX_AGE)
