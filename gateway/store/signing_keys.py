"""JWT signing keys, sealed under the server secret (gateway.sessions.keys), in one
hash: kid → sealed key. Every write is published, so every instance reloads its ring."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from .core import StoreCore, unavailable


class SigningKeys(StoreCore):
    @unavailable
    async def signing_keys(self) -> list[str]:
        return list(await self.redis.hvals(self.names.signing_keys_record))

    async def _signing_keys(
        self, only_if_none: bool, write: Sequence[str], remove: Sequence[str]
    ) -> list[str]:
        args: list[str] = [self.channel, "1" if only_if_none else "0"]
        for sealed in write:
            args += [orjson.loads(sealed)["kid"], sealed]
        args += ["--", *remove]
        return list(await self.scripts.write_signing_keys(
            keys=[self.names.signing_keys_record], args=args))

    @unavailable
    async def first_signing_key(self, sealed: str) -> list[str]:
        """Store ``sealed`` unless a key is stored already (instances starting together
        agree on one); every stored key."""
        return await self._signing_keys(True, [sealed], ())

    @unavailable
    async def add_signing_key(
        self, sealed: str, retired: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        """A rotation in one script: the new key, the earlier ones as retired, the kids in
        ``remove`` (retired keys whose tokens have all expired) dropped, and every
        instance told; every stored key."""
        return await self._signing_keys(False, [*retired, sealed], remove)
