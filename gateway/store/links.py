"""One-time token links: the token, sealed under a key derived from the link secret
(which is not stored), kept under ``link:{sha256(secret)}`` until opened or expired.
A link is written by the change that issues its token (create, renew)."""

from __future__ import annotations

from typing import Any

import orjson

from .core import StoreCore, unavailable
from .records import Actor


class Links(StoreCore):
    @unavailable
    async def open_link(self, link_id: str, request_id: str = "") -> dict[str, Any] | None:
        """Take the sealed token out of a link, exactly once (GETDEL); None if gone,
        expired (keygate's clock; Redis's TTL only collects the garbage) or never was.
        The link has a slot of its own: clearing it from its key and the audit event are
        a second script in the key's slot, after the take."""
        name = self.names.link(link_id)
        raw = await self.redis.getdel(name)
        if raw is None:
            return None
        value: dict[str, Any] = orjson.loads(raw)
        if int(value["expires"]) <= self.now_ms():
            return None
        account, app_key = str(value["account"]), str(value["appKey"])
        event = self.event(Actor("token-link", request_id), "token.link-opened", app_key)
        await self.scripts.open_link(
            keys=[self.names.key(app_key), self.names.account(account, "audit")],
            args=[name, self.audit_max_events, event],
        )
        return value

    @unavailable
    async def link_valid(self, link_id: str) -> bool:
        raw = await self.redis.get(self.names.link(link_id))
        return raw is not None and orjson.loads(raw)["expires"] > self.now_ms()
