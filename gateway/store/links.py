"""One-time token links: the token, sealed under a key derived from the link secret
(which is not stored), kept under ``link:{sha256(secret)}`` until opened or expired.
A link is written by the change that issues its token (create, renew)."""

from __future__ import annotations

from typing import Any

import orjson

from .core import StoreCore, unavailable


class Links(StoreCore):
    @unavailable
    async def open_link(self, link_id: str, request_id: str = "") -> dict[str, Any] | None:
        """Take the sealed token out of a link, exactly once; None if gone or never was."""
        event = orjson.dumps(
            {
                "time": self.now_ms(),
                "actor": "token-link",
                "action": "token.link-opened",
                "requestId": request_id,
            }
        ).decode()
        raw = await self.scripts.open_link(
            keys=[self.names.link(link_id)],
            args=[
                self.names.key_prefix,
                self.names.account_prefix,
                self.audit_max_events,
                event,
                self.now_ms(),
            ],
        )
        return orjson.loads(raw) if raw else None

    @unavailable
    async def link_valid(self, link_id: str) -> bool:
        raw = await self.redis.get(self.names.link(link_id))
        return raw is not None and orjson.loads(raw)["expires"] > self.now_ms()
