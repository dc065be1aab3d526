"""External keys: roles this account grants to keys that other accounts own.

The granting account manages only its grant (label, roles, status); the key itself,
its token, its owner's label and its grants elsewhere stay with the owner account and
are never shown here.
"""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY
from ..errors import BadRequest, Conflict, NotFound
from ..store import STATUSES, ExternalKey
from ..views import external_json
from .common import (
    MAX_PER_PAGE,
    actor,
    authorize,
    choice_param,
    grant_changes,
    int_param,
    json_body,
    json_response,
    label_field,
    roles_field,
    store_refusals,
)

routes = web.RouteTableDef()

SORTS = {
    "addedDate": lambda x: (x.added, x.app_key),
    "label": lambda x: (x.label.casefold(), x.app_key),
    "appKey": lambda x: (x.app_key,),
    "account": lambda x: (x.owner, x.app_key),
    "status": lambda x: (x.status, x.app_key),
}


def _missing(app_key: str, account: str) -> NotFound:
    return NotFound(
        f"API key {app_key!r} is not an external key of account {account!r}",
        code="external_key_not_found",
    )


@routes.post("/api/v1/accounts/{account}/external-keys")
async def add_external_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    body = await json_body(
        request, {"appKey", "label", "roles"}, required=frozenset({"appKey", "roles"})
    )
    app_key = body["appKey"]
    gateway = request.app[GATEWAY]
    if not isinstance(app_key, str) or gateway.fmt.key_account(app_key) is None:
        raise BadRequest(f"{app_key!r} is not an API key", code="bad_app_key")
    label = label_field(body["label"]) if "label" in body else ""
    roles = roles_field(request, body["roles"])
    account = identity.account
    gateway.delegation.check_assign(identity, roles)
    outcome = await gateway.store.add_grant(
        account, app_key, label, roles, actor(request, identity)
    )
    if outcome == "missing":
        raise NotFound(f"there is no API key {app_key!r}", code="key_not_found")
    if outcome == "own":
        raise BadRequest(
            f"{app_key!r} belongs to account {account!r}; change its roles under "
            f"/accounts/{account}/keys instead",
            code="own_key",
        )
    if outcome == "exists":
        raise Conflict(
            f"{app_key!r} is already an external key of account {account!r}; PATCH it instead",
            code="external_key_exists",
        )
    added = await gateway.store.get_grant(account, app_key)
    assert added is not None
    return json_response(external_json(added), status=201)


@routes.get("/api/v1/accounts/{account}/external-keys")
async def list_external_keys(request: web.Request) -> web.Response:
    identity = await authorize(request, "view")
    search = request.query.get("q", "").casefold()
    status = choice_param(request, "status", STATUSES)
    role = request.query.get("role") or None
    sort = choice_param(request, "sort", tuple(SORTS)) or "addedDate"
    descending = (choice_param(request, "order", ("asc", "desc")) or "desc") == "desc"
    page = int_param(request, "page", 1, 1, 1_000_000)
    per_page = int_param(request, "perPage", 20, 1, MAX_PER_PAGE)

    def accepts(x: ExternalKey) -> bool:
        return (
            (not status or x.status == status)
            and (not role or role in x.roles)
            and (not search or search in x.label.casefold() or search in x.app_key.casefold())
        )

    found = [x for x in await request.app[GATEWAY].store.all_grants(identity.account)
             if accepts(x)]
    found.sort(key=SORTS[sort], reverse=descending)
    start = (page - 1) * per_page
    return json_response(
        {
            "items": [external_json(x) for x in found[start : start + per_page]],
            "total": len(found),
            "page": page,
            "perPage": per_page,
        }
    )


@routes.get("/api/v1/accounts/{account}/external-keys/{app_key}")
async def get_external_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "view")
    app_key = request.match_info["app_key"]
    found = await request.app[GATEWAY].store.get_grant(identity.account, app_key)
    if found is None:
        raise _missing(app_key, identity.account)
    return json_response(external_json(found))


@routes.patch("/api/v1/accounts/{account}/external-keys/{app_key}")
async def update_external_key(request: web.Request) -> web.Response:
    identity = await authorize(request, "edit")
    changes = await grant_changes(request)
    app_key = request.match_info["app_key"]
    gateway = request.app[GATEWAY]
    current = await gateway.store.get_grant(identity.account, app_key)
    if current is None:
        raise _missing(app_key, identity.account)
    gateway.delegation.check_change(identity, app_key, current.roles, changes.get("roles"))
    with store_refusals(app_key, identity.account):
        updated = await gateway.store.update_grant(
            identity.account, app_key, changes, actor(request, identity),
            expect_roles=current.roles,
        )
    if updated is None:
        raise _missing(app_key, identity.account)
    return json_response(external_json(updated))


@routes.delete("/api/v1/accounts/{account}/external-keys/{app_key}")
async def remove_external_key(request: web.Request) -> web.Response:
    """Removes the grant only; the key lives on in its owner account."""
    identity = await authorize(request, "edit")
    app_key = request.match_info["app_key"]
    gateway = request.app[GATEWAY]
    current = await gateway.store.get_grant(identity.account, app_key)
    if current is None:
        raise _missing(app_key, identity.account)
    gateway.delegation.check_act_on(identity, app_key, current.roles)
    with store_refusals(app_key, identity.account):
        removed = await gateway.store.remove_grant(
            identity.account, app_key, actor(request, identity), expect_roles=current.roles
        )
    if not removed:
        raise _missing(app_key, identity.account)
    return web.Response(status=204)
