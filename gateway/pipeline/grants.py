"""Grant resolution: the roles a proven key holds in the account the request targets.

A key's grant in its own account is its roles; in another account it is what that
account granted it (an external key). The authenticator read the grant in the same
store round trip as the key; this stage only judges it.
"""

from __future__ import annotations

from ..errors import Forbidden
from ..store import ACTIVE
from .identity import Authenticated


def granted_roles(auth: Authenticated) -> tuple[str, ...]:
    """The roles to authorize with, or 403: no grant here, an inactive grant, no roles."""
    grant, account = auth.grant, auth.account
    if grant is None:
        raise Forbidden(f"this API key has no access to account {account!r}", code="no_grant")
    if grant.status != ACTIVE:
        raise Forbidden(
            f"this API key's access to account {account!r} is inactive", code="grant_inactive"
        )
    if not grant.roles:
        raise Forbidden(f"this API key holds no roles in account {account!r}", code="no_roles")
    return grant.roles
