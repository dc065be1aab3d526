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

from ..context import GATEWAY
from ..errors import BadRequest, Conflict, StoreUnavailable
from ..middleware import request_id_of
from ..pipeline import Identity
from ..policy.sync import PolicyInvalid, RolesStillHeld
from .common import RELOAD_POLICY, actor, json_response
from .operations import Operations
from .schema import (
    POLICY_RELOAD_EXAMPLES,
    PolicyReload,
    PolicyReloaded,
    RolesStillHeldDetails,
)

log = logging.getLogger("keygate.policy")

operations = Operations("policy")


@operations.post("/api/v1/policy/reload", summary="Reload the policy files everywhere",
                 permission=RELOAD_POLICY, body=PolicyReload, body_optional=True,
                 responses={200: PolicyReloaded},
                 errors={400: ("policy_invalid",), 403: ("not_permitted",),
                         409: ("roles_still_held",)},
                 error_details={409: RolesStillHeldDetails}, examples=POLICY_RELOAD_EXAMPLES)
async def reload_policy(request: web.Request, identity: Identity,
                        body: PolicyReload) -> web.Response:
    """Reloads this instance's policy files, validates them, swaps them in and announces
    the version to the other instances. Refused (409 `roles_still_held`, the roles and
    who holds them in `details`) while keys still hold roles the files no longer
    define, unless `force`; a policy that does not load is a 400 and changes nothing."""
    gateway = request.app[GATEWAY]
    force = body.force
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
