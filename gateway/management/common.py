"""What every management handler needs: the caller's identity, JSON in and out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from ..accesslog import APP_KEY, CLIENT
from ..context import GATEWAY
from ..credentials import is_valid_account
from ..errors import BadRequest, Conflict, UnsupportedMediaType
from ..lifecycle import DELIVERIES, Issued, checked_label
from ..middleware import request_id_of
from ..pipeline import Identity
from ..renewal import DEFAULT_RENEWAL_PERIOD
from ..store import STATUSES, Actor, KeyChanged, LastOwnerKey
from ..views import iso

RESOURCE = "api-keys"
# Every (resource, action) the management API checks, besides ("role:NAME", "assign")
# for handing out a role: what a policy line may name without any route using it.
POLICY_RESOURCE = "policy"
MANAGEMENT_PERMISSIONS: tuple[tuple[str, str], ...] = (
    (RESOURCE, "view"),
    (RESOURCE, "edit"),
    (RESOURCE, "renew-token"),
    (RESOURCE, "edit-settings"),
    (POLICY_RESOURCE, "reload"),
)

MAX_PER_PAGE = 100


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def path_account(request: web.Request) -> str:
    account = request.match_info["account"]
    if not is_valid_account(account):
        raise BadRequest(
            f"{account!r} is not an account name (lowercase letters, digits and '-')",
            code="bad_account",
        )
    return account


def client_address(request: web.Request) -> str:
    """The client's address as keygate trusts it: the peer, or behind trusted proxies
    the first untrusted address of X-Forwarded-For (see gateway.forwarded)."""
    peer = request.remote or ""
    proxies = request.app[GATEWAY].trusted_proxies
    if proxies is None:
        return peer
    client, _ = proxies.client_address(peer, request.headers.getall("X-Forwarded-For", ()))
    request[CLIENT] = client
    return client


async def authorize(request: web.Request, action: str | tuple[str, ...]) -> Identity:
    """Authenticate like the proxy and authorize ``api-keys``/``action`` in the path's
    account (several actions: the first the caller's roles allow, in ``identity.action``)."""
    identity = await request.app[GATEWAY].pipeline.check(
        request.headers, path_account(request), RESOURCE, action, request_id_of(request),
        client_address(request),
    )
    request[APP_KEY] = identity.principal.app_key
    return identity


def actor(request: web.Request, identity: Identity) -> Actor:
    return Actor(identity.principal.app_key, request_id_of(request))


async def renewal_period(request: web.Request, account: str) -> int:
    settings = await request.app[GATEWAY].store.get_settings(account)
    return int(settings.get("renewalPeriodMonths", DEFAULT_RENEWAL_PERIOD))


def delivery_field(value: Any) -> str:
    if value not in DELIVERIES:
        raise BadRequest(f"delivery must be one of: {', '.join(DELIVERIES)}", code="bad_delivery")
    return value


def secret_fields(request: web.Request, issued: Issued) -> dict[str, Any]:
    """The new token, or the one-time link that reveals it, for a response body."""
    if issued.token is not None:
        return {"appToken": issued.token}
    base = request.app[GATEWAY].settings.management_public_url.rstrip("/")
    if not base:
        base = f"{request.scheme}://{request.host}"
    return {
        "tokenLink": f"{base}/api/v1/token-links/{issued.link_secret}",
        "tokenLinkExpires": iso(issued.link_expires),
    }


async def json_body(
    request: web.Request,
    allowed: set[str],
    required: frozenset[str] = frozenset(),
    empty_ok: bool = False,
) -> dict[str, Any]:
    if empty_ok and not request.body_exists:
        return {}
    content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType()
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="bad_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="bad_json")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}; allowed fields: {', '.join(sorted(allowed))}",
            code="unknown_field",
        )
    missing = sorted(required - set(data))
    if missing:
        raise BadRequest(f"missing required field {missing[0]!r}", code="missing_field")
    return data


def label_field(value: Any) -> str:
    try:
        return checked_label(value)
    except ValueError as exc:
        raise BadRequest(str(exc), code="bad_label") from None


def roles_field(request: web.Request, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise BadRequest("roles must be a list of role names", code="bad_roles")
    roles = list(dict.fromkeys(value))
    unknown = request.app[GATEWAY].policy.unknown_roles(roles)
    if unknown:
        defined = ", ".join(sorted(request.app[GATEWAY].policy.roles))
        raise BadRequest(
            f"unknown role {unknown[0]!r}; roles defined in the policies: {defined}",
            code="unknown_role",
        )
    return roles


def status_field(value: Any) -> str:
    if value not in STATUSES:
        raise BadRequest(f"status must be one of: {', '.join(STATUSES)}", code="bad_status")
    return value


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # the length check first: int() of a 5,000-digit string raises instead of answering
    too_long = len(raw) > len(str(high))
    if too_long or not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}", code="bad_query")
    return int(raw)


def choice_param(request: web.Request, name: str, allowed: tuple[str, ...] | Any) -> str | None:
    value = request.query.get(name) or None
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be one of: {', '.join(allowed)}", code="bad_query")
    return value


async def grant_changes(request: web.Request) -> dict[str, Any]:
    """The body of a PATCH of a key or a grant: label, roles, status, at least one."""
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
    return changes


@contextlib.contextmanager
def store_refusals(app_key: str, account: str) -> Iterator[None]:
    """The store's refusals of a guarded change, as 409s that say what to do."""
    try:
        yield
    except KeyChanged:
        raise Conflict(
            f"the roles of API key {app_key!r} changed while this request was being "
            "checked; read the key again and retry",
            code="key_changed",
        ) from None
    except LastOwnerKey:
        raise Conflict(
            f"API key {app_key!r} is the last active owner key of account {account!r}; "
            "create or activate another owner key first (the keygate CLI, which works on "
            "the store directly, can still change it)",
            code="last_owner_key",
        ) from None
