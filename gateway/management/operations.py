"""The management API's operations, each declared once: its route, who may call it, what
it takes and what it answers.

A handler is registered through an :class:`Operations` table instead of aiohttp's
``RouteTableDef``. The table's wrapper runs, in this order, before the handler:

1. the path parameters, decoded into the operation's path model (a bad account is a
   400 before any credential is looked at, as it always was);
2. authentication and authorization, as the declared :class:`Permission` says;
3. the query string, then the JSON body, decoded into their models.

The handler receives the results as keyword arguments (``identity``, ``path``,
``query``, ``body``: the ones its operation declares, checked when it is registered),
so it cannot read an input the document does not describe. Every refusal is a 400 in
the one error shape whose message names the field; the error codes are those clients
already branch on (``unknown_field``, ``missing_field``, ``bad_<field>``,
``bad_query``). :mod:`.openapi` writes the document from the same declarations.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from aiohttp import web
from msgspec import inspect as mi

from ..errors import BadRequest, UnsupportedMediaType

Handler = Callable[..., Awaitable[web.StreamResponse]]
# Authorization, supplied by common.py: (request, permission, account) -> identity
Authorizer = Callable[[web.Request, "Permission", "str | None"], Awaitable[Any]]


@dataclass(frozen=True)
class Permission:
    """Who may call: the caller's roles must allow ``resource``/one of ``actions``, in
    the path's account, or with ``own_account`` in the account that owns the key."""

    resource: str
    actions: tuple[str, ...]
    own_account: bool = False

    def describe(self) -> str:
        where = "the account that owns the calling key" if self.own_account else (
            "the path's account")
        either = " or ".join(f"`{a}`" for a in self.actions)
        return f"`{self.resource}`/{either} in {where}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    tag: str
    handler: Handler
    permission: Permission | None
    params: type | None  # path parameters
    query: type | None
    body: Any  # the body's type (a model, or an Annotated model); None: no body
    body_optional: bool  # no body at all is the model's defaults
    responses: Mapping[int, Any]  # status -> model | None (no body) | {media type: model}
    errors: Mapping[int, tuple[str, ...]]  # status -> the error codes it may carry
    # status -> the model of ``details`` that every error of that status carries
    error_details: Mapping[int, type] = field(default_factory=dict)
    # "body" or a status -> {name: example value}, shown with the body's schema
    examples: Mapping[str | int, Mapping[str, Any]] = field(default_factory=dict)
    head: bool = False  # HEAD answers too: the same headers, no body
    cached: bool = False  # answers with an ETag and Cache-Control, and 304 to If-None-Match
    # status -> what the answer's own headers are, from the settings (a cookie's name):
    # settings -> {header name: OpenAPI header object}; an empty mapping declares none
    response_headers: Mapping[int, Callable[[Any], Mapping[str, Any]]] = field(
        default_factory=dict)


class Operations:
    """A module's operations (what ``RouteTableDef`` is to routes, and their document)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.items: list[Operation] = []

    def get(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.add("GET", path, **declared)

    def post(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.add("POST", path, **declared)

    def put(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.add("PUT", path, **declared)

    def patch(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.add("PATCH", path, **declared)

    def delete(self, path: str, **declared: Any) -> Callable[[Handler], Handler]:
        return self.add("DELETE", path, **declared)

    def add(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        responses: Mapping[int, Any],
        operation_id: str | None = None,
        permission: Permission | None = None,
        params: type | None = None,
        query: type | None = None,
        body: Any = None,
        body_optional: bool = False,
        errors: Mapping[int, Iterable[str]] | None = None,
        error_details: Mapping[int, type] | None = None,
        examples: Mapping[str | int, Mapping[str, Any]] | None = None,
        head: bool = False,
        cached: bool = False,
        response_headers: Mapping[int, Callable[[Any], Mapping[str, Any]]] | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            operation = Operation(
                method=method,
                path=path,
                operation_id=operation_id or _camel(handler.__name__),
                summary=summary,
                description=inspect.cleandoc(handler.__doc__ or ""),
                tag=self.tag,
                handler=handler,
                permission=permission,
                params=params,
                query=query,
                body=body,
                body_optional=body_optional,
                responses=dict(responses),
                errors={status: tuple(codes) for status, codes in (errors or {}).items()},
                error_details=dict(error_details or {}),
                examples=dict(examples or {}),
                head=head,
                cached=cached,
                response_headers=dict(response_headers or {}),
            )
            _check(operation)
            self.items.append(operation)
            return handler

        return register


def head_operation_id(operation: Operation) -> str:
    """The operationId of the HEAD beside a GET that answers it (``head=True``)."""
    return operation.operation_id + "Head"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _check(operation: Operation) -> None:
    """The handler takes exactly what its operation declares, and the path model names
    exactly the path's parameters: a mismatch fails at import, not on a request."""
    declared = {"identity": operation.permission, "path": operation.params,
                "query": operation.query, "body": operation.body}
    wanted = {name for name, present in declared.items() if present is not None}
    taken = set(list(inspect.signature(operation.handler).parameters)[1:])
    if taken != wanted:
        raise TypeError(f"{operation.handler.__qualname__} takes {sorted(taken)}; its "
                        f"operation declares {sorted(wanted)}")
    in_path = set(re.findall(r"{(\w+)}", operation.path))
    modelled = {spec.wire for spec in field_specs(operation.params)} if operation.params else (
        set())
    if in_path != modelled:
        raise TypeError(f"{operation.method} {operation.path}: the path names {sorted(in_path)}"
                        f", its model {sorted(modelled)}")


def register(app: web.Application, operations: Iterable[Operation],
             authorize: Authorizer) -> None:
    """Route every operation on ``app``; ``authorize`` checks a declared permission."""
    for operation in operations:
        serving = _serving(operation, authorize)
        app.router.add_route(operation.method, operation.path, serving,
                             name=operation.operation_id)
        if operation.head:  # aiohttp sends the headers of the GET's answer, no body
            app.router.add_route("HEAD", operation.path, serving,
                                 name=head_operation_id(operation))


def _serving(operation: Operation, authorize: Authorizer) -> Handler:
    body_model = model_of(operation.body) if operation.body is not None else None

    async def serve(request: web.Request) -> web.StreamResponse:
        given: dict[str, Any] = {}
        if operation.params is not None:
            given["path"] = decode_path(request.match_info, operation.params)
        if operation.permission is not None:
            account = getattr(given.get("path"), "account", None)
            given["identity"] = await authorize(request, operation.permission, account)
        if operation.query is not None:
            given["query"] = decode_query(request.query, operation.query)
        if body_model is not None:
            given["body"] = await decode_body(request, body_model, operation.body_optional)
        return await operation.handler(request, **given)

    serve.__name__ = serve.__qualname__ = operation.handler.__name__
    return serve


def model_of(declared: Any) -> type:
    """The model of a declared type: ``Annotated[Model, Meta(...)]`` is ``Model``."""
    if typing.get_origin(declared) is typing.Annotated:
        return typing.get_args(declared)[0]
    return declared


# -- fields ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """What the decoder needs to know of one field of a model."""

    attr: str  # the model's attribute
    wire: str  # its name in JSON and query strings
    type: Any
    required: bool
    code: str | None  # the error code its Meta names, if any
    message: str | None  # the refusal its Meta words, if any
    choices: tuple[Any, ...] = ()  # a Literal's values
    bounds: tuple[int, int] | None = None  # an int's range
    is_list: bool = False
    is_bool: bool = False
    constrained: bool = True  # False: any string will do (no refusal to document)
    empty_refused: bool = False  # a query parameter given empty is refused, not dropped


def _core(info: Any, extra: dict[str, Any]) -> Any:
    """The type under Annotated metadata and ``| None`` (inspect drops ``| UNSET``)."""
    while True:
        if isinstance(info, mi.Metadata):
            extra.update(info.extra or {})
            info = info.type
        elif isinstance(info, mi.UnionType):
            kept = [t for t in info.types if not isinstance(t, mi.NoneType)]
            if len(kept) != 1:
                return info
            info = kept[0]
        else:
            return info


@functools.cache
def field_specs(model: type) -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(model, include_extras=True)
    specs = []
    for info in msgspec.structs.fields(model):
        extra: dict[str, Any] = {}
        core = _core(mi.type_info(hints[info.name]), extra)
        bounds = None
        if isinstance(core, mi.IntType):
            low = core.ge if core.ge is not None else 0
            bounds = (low, core.le if core.le is not None else 2**63 - 1)
        specs.append(FieldSpec(
            attr=info.name,
            wire=info.encode_name,
            type=hints[info.name],
            required=info.required,
            code=extra.get("code"),
            message=extra.get("message"),
            choices=tuple(core.values) if isinstance(core, mi.LiteralType) else (),
            bounds=bounds,
            is_list=isinstance(core, mi.ListType),
            is_bool=isinstance(core, mi.BoolType),
            constrained=core != mi.StrType(),
            empty_refused=bool(extra.get("empty_refused")),
        ))
    return tuple(specs)


def _forbids_unknown(model: type) -> bool:
    return bool(model.__struct_config__.forbid_unknown_fields)  # type: ignore[attr-defined]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def refusal_codes(model: type, location: str) -> tuple[str, ...]:
    """The 400 codes decoding ``model`` may answer (``location``: path, query, body)."""
    if location == "query":
        return ("bad_query", *(spec.code for spec in field_specs(model) if spec.code))
    codes = [spec.code or f"bad_{_snake(spec.wire)}" for spec in field_specs(model)
             if spec.constrained]
    if location == "body":
        codes = ["bad_json", "unknown_field", "missing_field", *codes]
    return tuple(codes)


def _refusal(spec: FieldSpec, error: msgspec.ValidationError | None) -> str:
    """A refusal that names the field and never quotes the value (it may be huge)."""
    if spec.message:
        return spec.message
    if spec.choices:
        return f"{spec.wire} must be one of: {', '.join(str(c) for c in spec.choices)}"
    if spec.bounds:
        return f"{spec.wire} must be a whole number from {spec.bounds[0]} to {spec.bounds[1]}"
    if spec.is_bool:
        return f"{spec.wire} must be true or false"
    text = str(error) if error is not None else "invalid value"
    if "`$" in text:  # msgspec's "... - at `$[0]`": the path inside the value
        return text.replace("`$", f"`{spec.wire}", 1)
    return f"{text} - at `{spec.wire}`"


def _convert(spec: FieldSpec, value: Any, code: str) -> Any:
    try:
        return msgspec.convert(value, spec.type, strict=True)
    except msgspec.ValidationError as exc:
        raise BadRequest(_refusal(spec, exc), code=code) from None


def _excerpt(name: str) -> str:
    return repr(name[:40])


# -- path ------------------------------------------------------------------------------
def decode_path(match_info: Mapping[str, str], model: type) -> Any:
    values = {}
    for spec in field_specs(model):
        code = spec.code or f"bad_{_snake(spec.wire)}"
        values[spec.attr] = _convert(spec, match_info[spec.wire], code)
    return model(**values)


# -- query -----------------------------------------------------------------------------
def decode_query(query: Any, model: type) -> Any:
    """A query string (a multidict) into ``model``. A parameter given empty is one not
    given (a list's filters, sent by forms that leave a field blank), unless its field
    says ``empty_refused``: a question's parts (``key=``, ``role=``), where answering
    as if it were absent would answer another question; a parameter that is not a list
    may be given once; whole numbers are ASCII digits (no sign, no exponent, no other
    script's digits) of bounded length."""
    specs = field_specs(model)
    if _forbids_unknown(model):
        known = {spec.wire for spec in specs}
        unknown = sorted(set(query) - known)
        if unknown:
            raise BadRequest(f"unknown parameter {_excerpt(unknown[0])}; parameters: "
                             f"{', '.join(sorted(known))}", code="bad_query")
    values = {}
    for spec in specs:
        code = spec.code or "bad_query"  # a field's own code is about its value
        given = query.getall(spec.wire, ())
        if spec.empty_refused and "" in given:
            raise BadRequest(f"parameter {spec.wire!r} is empty", code="bad_query")
        given = [v for v in given if v != ""]
        if not given:
            if spec.required:
                raise BadRequest(f"missing parameter {spec.wire!r}", code="bad_query")
            continue
        if spec.is_list:
            values[spec.attr] = _convert(spec, given, code)
            continue
        if len(given) > 1:
            raise BadRequest(f"give {spec.wire} once", code="bad_query")
        raw: Any = given[0]
        if spec.bounds is not None:
            # the length first: int() of a 5,000-digit string costs before it refuses
            if len(raw) > len(str(spec.bounds[1])) or not (raw.isascii() and raw.isdigit()):
                raise BadRequest(_refusal(spec, None), code=code)
            raw = int(raw)
        values[spec.attr] = _convert(spec, raw, code)
    return model(**values)


# -- body ------------------------------------------------------------------------------
async def decode_body(request: web.Request, model: type, optional: bool) -> Any:
    if optional and not request.body_exists:
        return model()
    # the type must be said: a body without one is what another origin's page can make a
    # browser send without asking first (``fetch`` of a Blob, no CORS preflight), and
    # login, which no CSRF proof guards (there is no session yet), relies on it
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType()
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="bad_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="bad_json")
    return decode_object(data, model)


def decode_object(data: Mapping[str, Any], model: type) -> Any:
    specs = field_specs(model)
    known = {spec.wire for spec in specs}
    unknown = sorted(set(data) - known)
    if unknown and _forbids_unknown(model):
        raise BadRequest(f"unknown field {_excerpt(unknown[0])}; allowed fields: "
                         f"{', '.join(sorted(known))}", code="unknown_field")
    missing = [spec.wire for spec in specs if spec.required and spec.wire not in data]
    if missing:
        raise BadRequest(f"missing required field {missing[0]!r}", code="missing_field")
    values = {}
    for spec in specs:
        if spec.wire in data:
            code = spec.code or f"bad_{_snake(spec.wire)}"
            values[spec.attr] = _convert(spec, data[spec.wire], code)
    return model(**values)

