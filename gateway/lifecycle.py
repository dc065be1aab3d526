"""Key lifecycle operations shared by the management API and the CLI."""

from __future__ import annotations

from collections.abc import Sequence

from .credentials import CredentialFormat, TokenHasher
from .store import KeyRecord, Store

_NAME_ATTEMPTS = 8


async def issue_key(
    store: Store,
    fmt: CredentialFormat,
    hasher: TokenHasher,
    account: str,
    label: str,
    roles: Sequence[str],
) -> tuple[KeyRecord, str]:
    """Create a generated key; returns the record and the token, which exists only here.

    Key names are random, so a clash with a live or deleted key is vanishingly rare;
    the store refuses a used name atomically and we draw again.
    """
    for _ in range(_NAME_ATTEMPTS):
        token = fmt.new_token()
        record = await store.create_key(
            fmt.new_key(account), account, label, roles, hasher.digest(token)
        )
        if record is not None:
            return record, token
    raise RuntimeError("could not draw an unused key name; the key space is exhausted?")
