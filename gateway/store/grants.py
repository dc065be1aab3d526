"""External keys: grants of roles in an account to keys that other accounts own.

A grant lives in the key's own hash (field ``g:{account}``, holding the granting
account's label, roles, status and the date it was added), so authenticating a key for
that account stays one HMGET; the account's ``ext`` index lists the keys it granted.

The hash is in the owner account's slot, the index and the granting account's audit
stream in the granting account's: a grant change is one script in the key's slot (the
change, its invalidation notice and a follow-up recorded in the hash) and then the
follow-up applied once in the other slot and cleared (``scripts/grant_snapshot.lua``).
Until the follow-up is applied the grant already works (or no longer does), which is
what authorization needs at once; a follow-up left by a crash is applied before the next
change of the grant, or by ``keygate store migrate``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from .accounts import AccountRecords
from .core import status_of, unavailable, unavailable_iter
from .records import ACTIVE, Actor, ExternalKey


class GrantChanges(AccountRecords):
    @unavailable
    async def add_grant(
        self, account: str, app_key: str, label: str, roles: Sequence[str], actor: Actor
    ) -> ExternalKey:
        """Grant roles in ``account`` to another account's key; the grant as added.

        :class:`KeyNotFound` when there is no such key, :class:`OwnKey` when it belongs
        to ``account``, :class:`GrantExists` when it holds a grant there already.
        """
        now = self.now_ms()
        grant = orjson.dumps(
            {"roles": list(roles), "status": ACTIVE, "label": label, "added": now}
        ).decode()
        await self._name_account(account)  # before the change (accounts.py)
        _, owner, added = await self._grant_change(
            self.scripts.add_grant, account, app_key, "external-key.add", actor,
            args=[grant, now],
        )
        found = ExternalKey.from_grant(app_key, owner, added)
        assert found is not None  # the script answers the owner and the grant it wrote
        return found

    @unavailable
    async def get_grant(self, account: str, app_key: str) -> ExternalKey | None:
        owner, raw = await self.redis.hmget(self.names.key(app_key), ["acct", "g:" + account])
        if owner == account:
            return None
        return ExternalKey.from_grant(app_key, owner, raw)

    @unavailable
    async def update_grant(
        self,
        account: str,
        app_key: str,
        changes: Mapping[str, Any],
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
    ) -> ExternalKey | None:
        """Change the grant of another account's key; None when there is none.
        :class:`KeyChanged` when ``expect_roles`` are not the grant's roles."""
        result = await self._grant_change(
            self.scripts.update_grant, account, app_key, "external-key.update", actor,
            args=[orjson.dumps(dict(changes)).decode()], expect_roles=expect_roles,
        )
        if result[0] == "missing":
            return None
        return ExternalKey.from_grant(app_key, result[1], result[2])

    @unavailable
    async def remove_grant(
        self,
        account: str,
        app_key: str,
        actor: Actor,
        expect_roles: Sequence[str] | None = None,
    ) -> bool:
        """Remove the grant (the key lives on in its owner account); False when there is
        none. :class:`KeyChanged` as in :meth:`update_grant`."""
        result = await self._grant_change(
            self.scripts.remove_grant, account, app_key, "external-key.remove", actor,
            args=[], expect_roles=expect_roles,
        )
        return status_of(result) == "ok"

    async def _grant_change(
        self, script: Any, account: str, app_key: str, action: str, actor: Actor,
        args: list[Any], expect_roles: Sequence[str] | None = None,
    ) -> Any:
        """Run a grant change in the key's slot, then apply its follow-up in the
        granting account's. A follow-up an earlier change left is applied first."""
        for _ in range(2):
            result = await self.change(
                script, account, app_key, action, actor, keys=[self.names.key(app_key)],
                args=[*args, secrets.token_hex(8)], expect_roles=expect_roles,
            )
            if status_of(result) != "followup":
                break
            await self.finish_followups(app_key)
        if status_of(result) == "ok":
            await self.finish_followups(app_key, account)
        return result


    @unavailable_iter
    async def iter_grants(self, account: str, chunk: int = 500) -> AsyncIterator[list[ExternalKey]]:
        """All external keys granted roles in ``account``, a chunk at a time."""
        index = self.names.account(account, "ext")
        start = 0
        while True:
            names = await self.redis.zrange(index, start, start + chunk - 1)
            if not names:
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(self.names.key(name), ["acct", "g:" + account])
                rows = await pipe.execute()
            found = [ExternalKey.from_grant(n, o, g) for n, (o, g) in zip(names, rows, strict=True)]
            yield [x for x in found if x is not None]
            start += chunk

    @unavailable
    async def all_grants(self, account: str) -> list[ExternalKey]:
        return [x async for batch in self.iter_grants(account) for x in batch]
