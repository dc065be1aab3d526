"""A key's roles in one account, for the policy tools (``keygate policy explain|test``
and ``GET /accounts/{account}/explain``).

The roles a request would be authorized with (``gateway.pipeline.grants``): a key's own
roles in its owner account, the roles an account granted it otherwise. Only a key that
holds roles *in the account asked about* resolves: to a caller of account A, a key of
another account that A never granted anything does not exist, exactly like a key that
does not exist at all (same answer, and the same store reads either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .credentials import CredentialFormat
from .store import ACTIVE, Store

DELETED = "deleted"  # key_status of a grant whose key its owner account deleted


@dataclass(frozen=True)
class KeyRoles:
    app_key: str
    account: str
    roles: tuple[str, ...]
    # the key's status for an own key; for an external key, the grant's status in the
    # account (the key's own status belongs to its owner account: shown apart)
    status: str
    external: bool
    # an external key's own status in its owner account (None: an own key, whose status
    # is ``status``; "deleted": the owner account deleted it, the grant outlived it).
    # Not shown in the answer, only its consequence: the decision is a refusal.
    key_status: str | None = None

    @property
    def refusal(self) -> str | None:
        """Why keygate refuses the key in this account before it asks the policy, as
        its answer to a request would say, or None. The key's own state comes first, as
        authentication checks it before the grant."""
        if self.key_status == DELETED:
            return "this API key no longer exists (401 invalid_credentials)"
        if self.external and self.key_status not in (None, ACTIVE):
            return "this API key is inactive (401 key_inactive)"
        if self.status == ACTIVE:
            return None
        if self.external:
            return (f"this API key's access to account {self.account!r} is inactive "
                    "(403 grant_inactive)")
        return "this API key is inactive (401 key_inactive)"

    def as_json(self) -> dict[str, Any]:
        return {"appKey": self.app_key, "status": self.status,
                "kind": "external" if self.external else "generated"}


async def key_roles(
    store: Store, fmt: CredentialFormat, app_key: str, account: str
) -> KeyRoles | None:
    """The key's roles in ``account``, or None when it holds none there (or is no key).

    The owner account is read from the key's name (``kgk-acme-…``), not from the store,
    so whether a key of another account exists costs one read either way and answers
    alike."""
    owner = fmt.key_account(app_key)
    if owner is None:
        return None
    if owner == account:
        record = await store.get_key(account, app_key)
        if record is None:
            return None
        return KeyRoles(app_key, account, record.roles, record.status, external=False)
    grant = await store.get_grant(account, app_key)
    if grant is None:
        return None
    # authentication reads the key in its owner account first: an inactive or deleted
    # key is refused there, whatever the grant says (a second read, only for a grant)
    home = await store.get_key(owner, app_key)
    return KeyRoles(app_key, account, grant.roles, grant.status, external=True,
                    key_status=home.status if home is not None else DELETED)
