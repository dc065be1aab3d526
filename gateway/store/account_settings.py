"""An account's settings: one hash, each change audited."""

from __future__ import annotations

from typing import Any

from .core import StoreCore, unavailable
from .records import Actor


class AccountSettings(StoreCore):
    @unavailable
    async def get_settings(self, account: str) -> dict[str, str]:
        return await self.redis.hgetall(self.names.account(account, "settings"))

    @unavailable
    async def put_setting(self, account: str, name: str, value: Any, actor: Actor) -> None:
        await self.scripts.put_setting(
            keys=[self.names.account(account, "settings"), self.names.account(account, "audit")],
            args=[
                self.audit_max_events,
                self.event(actor, "settings.update", account),
                name,
                value,
            ],
        )
