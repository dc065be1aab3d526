"""Generated keys: create, read, change, delete, and their tokens' renewal.

Each change is one script (``scripts/*.lua``) run through :meth:`StoreCore.change`:
precondition, change, audit event and invalidation notice together or not at all, in the
owner account's slot. What lives in other slots is written before the change (a new
one-time link, which opens nothing until the change names it) or after it (dropping a
replaced link, the deleted key's entries in other accounts' external-key indexes), each
idempotent and harmless if a crash leaves it undone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import orjson
import redis.exceptions

from .accounts import AccountRecords
from .core import unavailable
from .records import (
    ACTIVE,
    CREATED,
    SYSTEM_ACTOR,
    Actor,
    Grant,
    KeyRecord,
    TokenLink,
    label_fold,
    pairs,
    stored_digest,
)
from .refusals import StoreRefusal, TokenLinkPending


class KeyChanges(AccountRecords):
    @unavailable
    async def create_key(
        self,
        app_key: str,
        account: str,
        label: str,
        roles: Sequence[str],
        token_digest: str,
        actor: Actor = SYSTEM_ACTOR,
        link: TokenLink | None = None,
    ) -> KeyRecord | None:
        """Store a new key. :class:`KeyNameTaken` when the name was ever used before
        (the caller draws another)."""
        now = self.now_ms()
        fields: dict[str, Any] = {
            "acct": account,
            "label": label,
            "status": ACTIVE,
            # no 'created': the token's date is the key's until a renewal writes it
            # (scripts/key_hash.lua keep_created)
            "tokCreated": now,
            "tok": stored_digest(token_digest),
            "g:" + account: Grant(tuple(roles)).encode(),
        }
        if folded := label_fold(label):
            fields["lf"] = folded
        names = self.names
        keys = [
            names.key(app_key), names.account(account, "audit"), names.account(account, "owners"),
            *names.listing(account),
        ]
        await self._name_account(account)  # before the change (accounts.py)
        args: list[Any] = [now, app_key, *await self._write_link(link, now)]
        for name, value in fields.items():
            args += [name, value]
        try:
            await self.change(
                self.scripts.create_key, account, app_key, CREATED, actor,
                keys=keys, args=args, now=now,
            )
        except StoreRefusal:  # nothing written; (a lost reply may hide a commit: kept)
            await self._drop_link(link)
            raise
        return await self.get_key(account, app_key)

    async def _write_link(self, link: TokenLink | None, now: int) -> list[Any]:
        """Write a one-time link before the change that names it (a link has a slot of
        its own); the link's name and expiry for the change script, or ``['', 0]``."""
        if link is None:
            return ["", 0]
        name = self.names.link(link.link_id)
        await self.redis.set(name, link.sealed, px=max(1, link.expires - now))
        return [name, link.expires]

    async def _drop_link(self, link: TokenLink | str | None) -> None:
        """Delete a link the change did not keep (refused, or the token it sealed is
        gone). Idempotent; a link left behind by a crash expires with its TTL, and
        opens nothing a key still accepts."""
        if link:
            name = link if isinstance(link, str) else self.names.link(link.link_id)
            with contextlib.suppress(redis.exceptions.RedisError):
                await self.redis.delete(name)

    @unavailable
    async def get_key(self, account: str, app_key: str) -> KeyRecord | None:
        """The key when it exists and ``account`` owns it."""
        record = KeyRecord.from_hash(app_key, await self.redis.hgetall(self.names.key(app_key)))
        if record is None or record.account != account:
            return None
        return record

    @unavailable
    async def update_key(
        self,
        account: str,
        app_key: str,
        *,
        actor: Actor = SYSTEM_ACTOR,
        label: str | None = None,
        roles: Sequence[str] | None = None,
        status: str | None = None,
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
        keep_an_owner: bool = False,
    ) -> KeyRecord | None:
        """Change a generated key; None when ``account`` owns no such key.

        With ``expect_roles``, :class:`KeyChanged` when the key's roles are not those;
        with ``keep_an_owner``, :class:`LastOwnerKey` when the change would leave the
        account without an active owner key.
        """
        args: list[Any] = [app_key]
        if label is not None:
            args += ["label", label, "lf", label_fold(label)]
        if roles is not None:
            args += ["g:" + account, Grant(tuple(roles)).encode()]
        if status is not None:
            args += ["status", status]
        names = self.names
        result = await self.change(
            self.scripts.update_key, account, app_key, "key.update", actor,
            keys=[names.key(app_key), names.account(account, "audit"),
                  names.account(account, "owners"), *names.listing(account)],
            args=args, expect_roles=expect_roles, expect_elsewhere=expect_elsewhere,
            keep_an_owner=keep_an_owner,
        )
        if result[0] == "missing":
            return None
        return KeyRecord.from_hash(app_key, pairs(result[1]))

    @unavailable
    async def delete_key(
        self,
        account: str,
        app_key: str,
        *,
        actor: Actor = SYSTEM_ACTOR,
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
        keep_an_owner: bool = False,
    ) -> bool:
        """Delete a generated key (its name is never issued again); False when
        ``account`` owns no such key. Refusals as in :meth:`update_key`."""
        names = self.names
        await self.finish_followups(app_key)  # the tombstone would drop them
        result = await self.change(
            self.scripts.delete_key, account, app_key, "key.delete", actor,
            keys=[names.key(app_key), names.account(account, "audit"),
                  names.account(account, "owners"), *names.listing(account)],
            args=[app_key, self.now_ms()],
            expect_roles=expect_roles, expect_elsewhere=expect_elsewhere,
            keep_an_owner=keep_an_owner,
        )
        if result[0] != "ok":
            return False
        # the follow-ups in other slots, idempotent: an entry a crash leaves in another
        # account's index is never listed (listing reads the grant from the hash)
        link, pending, granting = result[1], result[2], result[3:]
        await self._drop_link(link)
        # grants made since finish_followups above: in force until now, so audited
        for other, followup in (orjson.loads(pending) if pending else {}).items():
            await self.apply_followup(app_key, other, followup)
        for other in granting:
            await self.redis.zrem(names.account(other, "ext"), app_key)
        return True

    # -- token renewal ---------------------------------------------------------------
    @unavailable
    async def renew_token(
        self,
        account: str,
        app_key: str,
        digest: str,
        *,
        keep_old: bool,
        actor: Actor,
        link: TokenLink | None = None,
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
    ) -> KeyRecord | None:
        """Issue a new token digest. ``keep_old``: both work until finish/undo.

        None when the key is missing; :class:`RenewalPending` when a renewal is pending,
        :class:`TokenLinkPending` while the last token's link is unopened and valid
        (both are :class:`RenewalRefused`).
        """
        now = self.now_ms()
        action = "token.renew" if keep_old else "token.renew-now"
        keys = [self.names.key(app_key), self.names.account(account, "audit"),
                *self.names.listing(account)]
        args: list[Any] = [now, "later" if keep_old else "now", stored_digest(digest),
                           *await self._write_link(link, now), app_key]

        async def renew() -> Any:
            return await self.change(
                self.scripts.renew_token, account, app_key, action, actor,
                keys=keys, args=args, expect_roles=expect_roles, expect_elsewhere=expect_elsewhere,
            )

        try:
            try:
                result = await renew()
            except TokenLinkPending:
                if not await self._forget_taken_link(app_key):
                    raise
                result = await renew()
        except StoreRefusal:  # nothing written; (a lost reply may hide a commit: kept)
            await self._drop_link(link)
            raise
        if result[0] == "missing":
            await self._drop_link(link)
            return None
        await self._drop_link(result[2])  # the previous token's unopened link
        return KeyRecord.from_hash(app_key, pairs(result[1]))

    async def _forget_taken_link(self, app_key: str) -> bool:
        """Whether the key's pending link was forgotten because its record is gone: a
        link is taken (GETDEL, in its own slot) before its key forgets it, so a store
        lost between the two left the key refusing renewals until the link's expiry,
        with no one able to open it. Gone means gone for good: nothing writes a link's
        record but before its key names it."""
        key = self.names.key(app_key)
        name = await self.redis.hget(key, "link")
        if not name or await self.redis.exists(name):
            return False
        return bool(await self.scripts.forget_link(keys=[key], args=[name]))

    @unavailable
    async def end_renewal(
        self,
        account: str,
        app_key: str,
        *,
        finish: bool,
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
    ) -> KeyRecord | None:
        """Finish (old token stops) or undo (new token dropped) a pending renewal.

        The record after, None when the key is missing; :class:`NoRenewalPending` when
        nothing is pending.
        """
        action = "token.finish-renewal" if finish else "token.undo-renewal"
        result = await self.change(
            self.scripts.end_renewal, account, app_key, action, actor,
            keys=[self.names.key(app_key), self.names.account(account, "audit"),
                  *self.names.listing(account)],
            args=["finish" if finish else "undo", app_key], expect_roles=expect_roles,
            expect_elsewhere=expect_elsewhere,
        )
        if result[0] == "missing":
            return None
        await self._drop_link(result[2])  # an unopened link of a dropped new token
        return KeyRecord.from_hash(app_key, pairs(result[1]))
