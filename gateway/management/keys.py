"""Generated keys: create, list, get, change, delete (DESIGN.md §3)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..context import GATEWAY
from ..errors import BadRequest, NotFound
from ..lifecycle import issue_key
from ..store import SORT_FIELDS, STATUSES, KeyQuery, KeyRecord
from .common import authorize, iso, json_body, json_response, label_field, roles_field

MAX_PER_PAGE = 100

routes = web.RouteTableDef()


def key_json(record: KeyRecord) -> dict[str, Any]:
    """The public view of a key. Token digests are deliberately not part of it."""
    return {
        "appKey": record.app_key,
        "label": record.label,
        "roles": list(record.roles),
        "status": record.status,
        "creationDate": iso(record.created),
        "creationDateToken": iso(record.token_created),
    }


def status_field(value: Any) -> str:
    if value not in STATUSES:
        raise BadRequest(f"status must be one of: {', '.join(STATUSES)}", code="bad_status")
    return value


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}", code="bad_query")
    return int(raw)


def key_query(request: web.Request) -> KeyQuery:
    q = request.query
    sort = q.get("sort", "creationDate")
    if sort not in SORT_FIELDS:
        raise BadRequest(f"sort must be one of: {', '.join(SORT_FIELDS)}", code="bad_query")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc", code="bad_query")
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of: {', '.join(STATUSES)}", code="bad_query")
    search = q.get("q", "")
    if len(search) > 200:
        raise BadRequest("q must be at most 200 characters", code="bad_query")
    return KeyQuery(
        q=search,
        status=status,
        role=q.get("role") or None,
        sort=sort,
        descending=order == "desc",
        page=_int_param(request, "page", 1, 1, 1_000_000),
        per_page=_int_param(request, "perPage", 20, 1, MAX_PER_PAGE),
    )


def _missing(app_key: str, account: str) -> NotFound:
    return NotFound(f"no API key {app_key!r} in account {account!r}", code="key_not_found")


@routes.post("/api/v1/accounts/{account}/keys")
async def create_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    body = await json_body(request, {"label", "roles"}, required=frozenset({"label", "roles"}))
    label = label_field(body["label"])
    roles = roles_field(request, body["roles"])
    gateway = request.app[GATEWAY]
    record, token = await issue_key(
        gateway.store, gateway.fmt, gateway.hasher, identity.account, label, roles
    )
    return json_response({**key_json(record), "appToken": token}, status=201)


@routes.get("/api/v1/accounts/{account}/keys")
async def list_keys(request: web.Request) -> web.Response:
    identity = await authorize(request, "view")
    query = key_query(request)
    records, total = await request.app[GATEWAY].store.list_keys(identity.account, query)
    return json_response(
        {
            "items": [key_json(r) for r in records],
            "total": total,
            "page": query.page,
            "perPage": query.per_page,
        }
    )


@routes.get("/api/v1/accounts/{account}/keys/{app_key}")
async def get_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "view")
    app_key = request.match_info["app_key"]
    record = await request.app[GATEWAY].store.get_key(identity.account, app_key)
    if record is None:
        raise _missing(app_key, identity.account)
    return json_response(key_json(record))


@routes.patch("/api/v1/accounts/{account}/keys/{app_key}")
async def update_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    body = await json_body(request, {"label", "roles", "status"})
    if not body:
        raise BadRequest("send at least one of label, roles, status", code="empty_change")
    changes: dict[str, Any] = {}
    if "label" in body:
        changes["label"] = label_field(body["label"])
    if "roles" in body:
        changes["roles"] = roles_field(request, body["roles"])
    if "status" in body:
        changes["status"] = status_field(body["status"])
    app_key = request.match_info["app_key"]
    record = await request.app[GATEWAY].store.update_key(identity.account, app_key, **changes)
    if record is None:
        raise _missing(app_key, identity.account)
    return json_response(key_json(record))


@routes.delete("/api/v1/accounts/{account}/keys/{app_key}")
async def delete_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    app_key = request.match_info["app_key"]
    if not await request.app[GATEWAY].store.delete_key(identity.account, app_key):
        raise _missing(app_key, identity.account)
    return web.Response(status=204)
