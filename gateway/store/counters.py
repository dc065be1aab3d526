"""Writes of the request path that are counted, not audited: failed-authentication
budgets and last-used times (batched by gateway.usage)."""

from __future__ import annotations

from collections.abc import Mapping

from .core import StoreCore, unavailable
from .names import owner_of


class Counters(StoreCore):
    @unavailable
    async def count_auth_failure(self, kind: str, subject: str, window: int, ttl: float) -> int:
        """One more failed authentication of ``subject`` (an address or a key) in window
        number ``window``; the total so far. The counter expires with its window, so
        Redis holds at most one small key per failing subject per window."""
        name = self.names.failure_counter(kind, window, subject)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.pexpire(name, max(1, int(ttl * 1000)))
            total, _ = await pipe.execute()
        return int(total)

    @unavailable
    async def record_last_used(self, times: Mapping[str, int]) -> None:
        """Write a batch of last-used times: one script per account (its keys and its
        last-use index share a slot), one after the other (a background write: one
        connection at a time); deleted keys are skipped. The keys whose time moved are
        appended to the account's moves stream where a copy follows it (search.py)."""
        by_account: dict[str, list[str]] = {}
        for app_key in times:
            by_account.setdefault(owner_of(app_key), []).append(app_key)
        for account, app_keys in by_account.items():
            await self.scripts.record_last_used(
                keys=[self.names.account(account, "uses"),
                      self.names.account(account, "moves"),
                      *(self.names.key(n) for n in app_keys)],
                args=[*app_keys, *(times[n] for n in app_keys)])
