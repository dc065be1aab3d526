"""``GET /api/v1/accounts/{account}/me``: who the caller is in the account and what it
may do there, so that a client (the admin page) offers only what the API will accept.

It is a hint, never a gate: every other endpoint still decides for itself. The
answers come from the same places the endpoints ask — the cached Casbin decisions for
the four ``api-keys`` actions, and :meth:`gateway.escalation.Delegation.assignable` for
the roles a role picker may offer — so they agree with what a write would get.

Who may ask: a key holding any of the four ``api-keys`` actions in the account. A key
with none has nothing to do on the API keys page, and the list of roles the policies
define (which the answer carries) is for those who manage keys, not for every business
key; such a key gets the same ``403 not_permitted`` every other endpoint would give it.
"""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY
from ..pipeline import Identity
from .common import RESOURCE, json_response
from .operations import Operations, Permission
from .schema import AccountPath, Model

operations = Operations("me")

ACTIONS = ("view", "edit", "renew-token", "edit-settings")
ANY_API_KEYS_ACTION = Permission(RESOURCE, ACTIONS)


class Permissions(Model):
    """Whether the caller's roles allow each `api-keys` action in the account."""

    view: bool
    edit: bool
    renew_token: bool
    edit_settings: bool


class Me(Model):
    """The caller in the path's account."""

    app_key: str
    owner: str  # the account that owns the calling key
    account: str  # the account asked about (the path's)
    roles: list[str]
    permissions: Permissions
    assignable_roles: list[str]  # roles this key may give (gateway.escalation)
    defined_roles: list[str]  # every role the policies define (for filters)
    authenticated_by: str  # "headers", "bearer" or "cookie"


@operations.get("/api/v1/accounts/{account}/me", summary="The caller and what it may do here",
                permission=ANY_API_KEYS_ACTION, params=AccountPath, responses={200: Me})
async def me(request: web.Request, identity: Identity, path: AccountPath) -> web.Response:
    """The calling key, its roles in the account, which `api-keys` actions they allow,
    and the roles it may assign (what a role picker should offer; the API refuses the
    others with `escalation_refused`). Needs any one of the four `api-keys` actions."""
    gateway = request.app[GATEWAY]
    decide = gateway.pipeline.authorizer.decide
    roles, account = identity.roles, identity.account
    allowed = {action: decide(roles, account, RESOURCE, action) for action in ACTIONS}
    return json_response({
        "appKey": identity.principal.app_key,
        "owner": identity.principal.owner,
        "account": account,
        "roles": list(roles),
        "permissions": {
            "view": allowed["view"],
            "edit": allowed["edit"],
            "renewToken": allowed["renew-token"],
            "editSettings": allowed["edit-settings"],
        },
        "assignableRoles": gateway.delegation.assignable(roles, account),
        "definedRoles": sorted(gateway.policy.roles),
        "authenticatedBy": identity.carrier or "headers",
    })
