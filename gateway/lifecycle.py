"""Key lifecycle operations shared by the management API and the CLI.

A new token exists in clear only in the return value of :meth:`KeyLifecycle.create` or
:meth:`KeyLifecycle.renew`. With ``delivery="link"`` it is not returned at all: it is
sealed into a one-time link (see :mod:`gateway.credentials`) and the caller gets the
link secret to build a URL from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from .credentials import (
    CredentialFormat,
    TokenHasher,
    is_link_secret,
    link_id,
    new_link_secret,
    seal_token,
    unseal_token,
)
from .store import Actor, KeyNameTaken, KeyRecord, Store, TokenLink

_NAME_ATTEMPTS = 8
DELIVERIES = ("token", "link")
MAX_LABEL = 200


def checked_label(value: object) -> str:
    """A label as stored: trimmed, non-empty, printable (it ends up in terminals and
    spreadsheets), at most MAX_LABEL characters. ValueError says what is wrong."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL:
        raise ValueError(f"label must be a non-empty string of at most {MAX_LABEL} characters")
    if not value.isprintable():
        raise ValueError("label must not contain control characters")
    return value.strip()


@dataclass(frozen=True)
class Issued:
    """A key record with its new secret: the token, or the secret of a one-time link."""

    record: KeyRecord
    token: str | None = None
    link_secret: str | None = None
    link_expires: int | None = None


@dataclass(frozen=True)
class OpenedLink:
    app_key: str
    account: str
    token: str


class KeyLifecycle:
    def __init__(
        self,
        store: Store,
        fmt: CredentialFormat,
        hasher: TokenHasher,
        link_ttl_seconds: float,
        clock: Callable[[], float],
    ):
        self.store = store
        self.fmt = fmt
        self.hasher = hasher
        self.link_ttl_ms = int(link_ttl_seconds * 1000)
        self.clock = clock

    def _link(self, app_key: str, account: str, token: str) -> tuple[str, TokenLink]:
        secret = new_link_secret()
        expires = int(self.clock() * 1000) + self.link_ttl_ms
        value = orjson.dumps(
            {"appKey": app_key, "account": account, "expires": expires,
             "sealed": seal_token(secret, token, app_key)}
        ).decode()
        return secret, TokenLink(link_id(secret), value, expires)

    async def create(
        self,
        account: str,
        label: str,
        roles: Sequence[str],
        actor: Actor,
        delivery: str = "token",
    ) -> Issued:
        """Create a generated key. Key names are random; a clash with a live or deleted
        key is vanishingly rare, the store refuses it atomically and we draw again."""
        for _ in range(_NAME_ATTEMPTS):
            token = self.fmt.new_token()
            app_key = self.fmt.new_key(account)
            secret, link = (None, None)
            if delivery == "link":
                secret, link = self._link(app_key, account, token)
            try:
                record = await self.store.create_key(
                    app_key, account, label, roles, self.hasher.digest(token), actor, link
                )
            except KeyNameTaken:
                continue
            if record is not None:
                if link is None:
                    return Issued(record, token=token)
                return Issued(record, link_secret=secret, link_expires=link.expires)
        raise RuntimeError("could not draw an unused key name; the key space is exhausted?")

    async def renew(
        self,
        account: str,
        app_key: str,
        actor: Actor,
        *,
        keep_old: bool = True,
        delivery: str = "token",
        expect_roles: Sequence[str] | None = None,
    ) -> Issued | None:
        """New token; None if the key is missing; RenewalPending if one is pending,
        TokenLinkPending while the last token's link is unopened (both RenewalRefused);
        KeyChanged if ``expect_roles`` are no longer the key's roles."""
        token = self.fmt.new_token()
        secret, link = (None, None)
        if delivery == "link":
            secret, link = self._link(app_key, account, token)
        record = await self.store.renew_token(
            account, app_key, self.hasher.digest(token), keep_old=keep_old, actor=actor,
            link=link, expect_roles=expect_roles,
        )
        if record is None:
            return None
        if link is None:
            return Issued(record, token=token)
        return Issued(record, link_secret=secret, link_expires=link.expires)

    async def open_link(self, link_secret: str, request_id: str = "") -> OpenedLink | None:
        """The token behind a link, exactly once; None when used, expired or unknown."""
        if not is_link_secret(link_secret):
            return None
        value = await self.store.open_link(link_id(link_secret), request_id)
        if value is None:
            return None
        token = unseal_token(link_secret, value["sealed"], value["appKey"])
        if token is None:
            return None
        return OpenedLink(value["appKey"], value["account"], token)
