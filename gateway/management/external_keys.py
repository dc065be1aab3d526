"""External keys: roles this account grants to keys that other accounts own.

The granting account manages only its grant (label, roles, status); the key itself,
its token, its owner's label and its grants elsewhere stay with the owner account and
are never shown here.
"""

from __future__ import annotations

from aiohttp import web
from msgspec import UNSET

from ..context import GATEWAY
from ..errors import BadRequest, Conflict, NotFound
from ..pipeline import Identity
from ..store import ExternalKey as Grant
from ..store import GrantExists, KeyNotFound, OwnKey
from ..views import external_json
from .common import EDIT, VIEW, actor, json_response, store_refusals
from .keys import bad_input, checked_patch
from .operations import Operations
from .schema import (
    AccountPath,
    AtLeastOneChange,
    Change,
    ExternalKey,
    ExternalKeyListQuery,
    ExternalKeyPage,
    KeyPath,
    NewExternalKey,
)

operations = Operations("external keys")

SORTS = {
    "addedDate": lambda x: (x.added, x.app_key),
    "label": lambda x: (x.label.casefold(), x.app_key),
    "appKey": lambda x: (x.app_key,),
    "account": lambda x: (x.owner, x.app_key),
    "status": lambda x: (x.status, x.app_key),
}

EXTERNAL_KEYS = "/api/v1/accounts/{account}/external-keys"
EXTERNAL_KEY = EXTERNAL_KEYS + "/{appKey}"
MISSING = {404: ("external_key_not_found",)}
GUARDED = {403: ("escalation_refused",), 404: ("external_key_not_found",),
           409: ("key_changed",)}


def _missing(app_key: str, account: str) -> NotFound:
    return NotFound(
        f"API key {app_key!r} is not an external key of account {account!r}",
        code="external_key_not_found",
    )


@operations.post(EXTERNAL_KEYS, summary="Grant roles to another account's key",
                 permission=EDIT, params=AccountPath, body=NewExternalKey,
                 responses={201: ExternalKey},
                 errors={400: ("bad_app_key", "own_key", "unknown_role", "bad_label"),
                         403: ("escalation_refused",), 404: ("key_not_found",),
                         409: ("external_key_exists",)})
async def add_external_key(request: web.Request, identity: Identity, path: AccountPath,
                           body: NewExternalKey) -> web.Response:
    """The key stays with its owner account, which manages its token; this account
    manages only the grant (label, roles, status)."""
    app_key = body.app_key
    gateway = request.app[GATEWAY]
    with bad_input():
        label, roles = gateway.lifecycle.checked_grant(
            app_key, None if body.label is UNSET else body.label, body.roles, gateway.policy
        )
    account = identity.account
    gateway.delegation.check_assign(identity, roles)
    try:
        with bad_input():
            added = await gateway.lifecycle.add_external(
                account, app_key, label, roles, actor(request, identity), policy=gateway.policy
            )
    except KeyNotFound:
        raise NotFound(f"there is no API key {app_key!r}", code="key_not_found") from None
    except OwnKey:
        raise BadRequest(
            f"{app_key!r} belongs to account {account!r}; change its roles under "
            f"/accounts/{account}/keys instead",
            code="own_key",
        ) from None
    except GrantExists:
        raise Conflict(
            f"{app_key!r} is already an external key of account {account!r}; PATCH it instead",
            code="external_key_exists",
        ) from None
    return json_response(external_json(added), status=201)


@operations.get(EXTERNAL_KEYS, summary="List external keys", permission=VIEW,
                params=AccountPath, query=ExternalKeyListQuery,
                responses={200: ExternalKeyPage})
async def list_external_keys(request: web.Request, identity: Identity, path: AccountPath,
                             query: ExternalKeyListQuery) -> web.Response:
    search = query.q.casefold()

    def accepts(x: Grant) -> bool:
        return (
            (not query.status or x.status == query.status)
            and (not query.role or query.role in x.roles)
            and (not search or search in x.label.casefold() or search in x.app_key.casefold())
        )

    found = [x for x in await request.app[GATEWAY].store.all_grants(identity.account)
             if accepts(x)]
    found.sort(key=SORTS[query.sort], reverse=query.order == "desc")
    start = (query.page - 1) * query.per_page
    return json_response(
        {
            "items": [external_json(x) for x in found[start : start + query.per_page]],
            "total": len(found),
            "page": query.page,
            "perPage": query.per_page,
        }
    )


@operations.get(EXTERNAL_KEY, summary="Read an external key", permission=VIEW, params=KeyPath,
                responses={200: ExternalKey}, errors=MISSING)
async def get_external_key(request: web.Request, identity: Identity, path: KeyPath
                           ) -> web.Response:
    found = await request.app[GATEWAY].store.get_grant(identity.account, path.app_key)
    if found is None:
        raise _missing(path.app_key, identity.account)
    return json_response(external_json(found))


@operations.patch(EXTERNAL_KEY, summary="Change an external key's grant", permission=EDIT,
                  params=KeyPath, body=AtLeastOneChange, responses={200: ExternalKey},
                  errors={**GUARDED, 400: ("empty_change", "unknown_role", "bad_label")})
async def update_external_key(request: web.Request, identity: Identity, path: KeyPath,
                              body: Change) -> web.Response:
    changes = checked_patch(request, body)
    app_key = path.app_key
    gateway = request.app[GATEWAY]
    current = await gateway.store.get_grant(identity.account, app_key)
    if current is None:
        raise _missing(app_key, identity.account)
    gateway.delegation.check_change(identity, app_key, current.roles, changes.get("roles"))
    with bad_input(), store_refusals(app_key, identity.account):
        updated = await gateway.lifecycle.update_external(
            identity.account, app_key, changes, actor(request, identity),
            policy=gateway.policy, expect_roles=current.roles,
        )
    if updated is None:
        raise _missing(app_key, identity.account)
    return json_response(external_json(updated))


@operations.delete(EXTERNAL_KEY, summary="Remove an external key's grant", permission=EDIT,
                   params=KeyPath, responses={204: None}, errors=GUARDED)
async def remove_external_key(request: web.Request, identity: Identity, path: KeyPath
                              ) -> web.Response:
    """Removes the grant only; the key lives on in its owner account."""
    app_key = path.app_key
    gateway = request.app[GATEWAY]
    current = await gateway.store.get_grant(identity.account, app_key)
    if current is None:
        raise _missing(app_key, identity.account)
    gateway.delegation.check_act_on(identity, app_key, current.roles)
    with store_refusals(app_key, identity.account):
        removed = await gateway.lifecycle.remove_external(
            identity.account, app_key, actor(request, identity), expect_roles=current.roles
        )
    if not removed:
        raise _missing(app_key, identity.account)
    return web.Response(status=204)
