"""``POST /api/v1/policy/reload``: reload this instance's policy files, swap them in and
announce the version to the other instances (see gateway.policy.sync).

The policy is the deployment's, not an account's, so the permission is asked in the
account that owns the calling key: ``policy``/``reload`` (the ``policy-admin`` role, and
``owner``'s ``*``). A reload that took effect is written to that account's audit log,
with the versions before and after; every attempt is logged with the calling key.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ..accesslog import APP_KEY
from ..context import GATEWAY
from ..errors import BadRequest, Conflict, Forbidden, StoreUnavailable
from ..middleware import request_id_of
from ..pipeline import Identity
from ..policy.sync import PolicyInvalid, RolesStillHeld
from .common import POLICY_RESOURCE, actor, client_address, json_body, json_response

log = logging.getLogger("keygate.policy")

routes = web.RouteTableDef()

# Stands for the account of a key header that names none: the pipeline then gives its
# usual answer to a malformed or missing key (401), as for any other request.
NO_ACCOUNT = "-"


async def authorize_in_own_account(request: web.Request, action: str) -> Identity:
    """Authenticate like the proxy, then authorize ``policy``/``action`` in the account
    that owns the key (written in the key itself, confirmed by the store)."""
    gateway = request.app[GATEWAY]
    app_key = request.headers.get(gateway.settings.key_header, "").strip()
    short_enough = len(app_key) <= gateway.settings.max_credential_length
    account = (gateway.fmt.key_account(app_key) if short_enough else None) or NO_ACCOUNT
    identity = await gateway.pipeline.check(
        request.headers, account, POLICY_RESOURCE, action, request_id_of(request),
        client_address(request),
    )
    request[APP_KEY] = identity.principal.app_key
    if identity.principal.owner != identity.account:
        raise Forbidden(
            f"{POLICY_RESOURCE!r}/{action!r} is asked in the account that owns the key",
            code="not_permitted",
        )
    return identity


@routes.post("/api/v1/policy/reload")
async def reload_policy(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    identity = await authorize_in_own_account(request, "reload")
    body = await json_body(request, {"force"}, empty_ok=True)
    force = body.get("force", False)
    if type(force) is not bool:
        raise BadRequest(f"force must be true or false, got {force!r:.40}", code="bad_force")
    caller = identity.principal.app_key
    where: dict[str, Any] = {"appKey": caller, "account": identity.account,
                             "requestId": request_id_of(request)}
    log.info("policy reload asked by API key %s (force: %s)", caller, force,
             extra={"event": "policy.reload_asked", **where})
    try:
        result = await gateway.policy_sync.reload(force=force, by=caller)
    except PolicyInvalid as exc:
        details = None if exc.file is None else {"file": exc.file, "line": exc.line}
        raise BadRequest(
            f"the policy files do not load, the policy in force is unchanged: {exc.message}",
            code="policy_invalid", details=details,
        ) from None
    except RolesStillHeld as exc:
        raise Conflict(
            str(exc), code="roles_still_held",
            details={"held": exc.held, "roles": list(exc.removed), "accounts": exc.accounts,
                     "keys": exc.keys, "truncated": exc.truncated},
        ) from None
    try:
        await gateway.store.audit_policy_reload(
            identity.account, actor(request, identity),
            {"version": result.previous},
            {"version": result.version, "forced": result.forced},
        )
    except StoreUnavailable:  # the reload took effect: say so, and that it is not audited
        log.warning("policy reload by API key %s not written to the audit log of %s: the "
                    "store is unreachable", caller, identity.account,
                    extra={"event": "policy.unaudited", **where})
    return json_response({
        "version": result.version,
        "previous": result.previous,
        "lines": result.lines,
        "announced": result.announced,
        "forced": result.forced,
    })
