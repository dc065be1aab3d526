"""The accounts keygate knows, kept as one set (``{p}accounts``), so that what goes over
every account — the renewal gauge, the role holders a policy reload counts, ``keygate
store migrate`` — reads that set instead of scanning every name in Redis (at 1,000,000
keys a scan is a thousand round trips and about a second of Redis's time, repeated by
every instance at each count of the gauge).

A change that can make an account known — a key created in it, an external key granted
there — names the account in the set *before* the change: the set has a slot of its own
on a cluster, so it cannot change in the same script, and the order chosen is the one
whose crash is harmless. An account named with nothing in it (its change refused, or
never run) costs a member, and every reader skips it; an account left out would be
missed by the gauge. For the same reason an account stays named once its last key is
gone: removing it could race with a change that has named it and not yet run.

The member '' says the set is complete. A store written by a keygate that kept no such
set is scanned once, as every read of the accounts did before, and what the scan finds
is added with ''. An older keygate still running during an upgrade names nothing, so
``keygate store migrate`` scans again whatever the set says: run it once every instance
runs this version (the README's upgrade steps).
"""

from __future__ import annotations

from .core import StoreCore, unavailable
from .names import OLDER_CREATION_INDEX

# the member that says every account is named (no account is called '')
COMPLETE = ""
# accounts checked for keys, or added to the set, per round trip
CHUNK = 1000


class AccountRecords(StoreCore):
    async def _name_account(self, account: str) -> None:
        """Name ``account`` in the set of known accounts (before a change that makes it
        known; idempotent)."""
        await self.redis.sadd(self.names.accounts_record, account)

    async def _known_accounts(self, rescan: bool = False) -> list[str]:
        """Every account that owns or owned generated keys or granted external keys, and
        any named before a change that was then refused; sorted. ``rescan``: find the
        accounts by a scan as well, and name those missing (``migrate``)."""
        named: set[str] = await self.redis.smembers(self.names.accounts_record)
        if rescan or COMPLETE not in named:
            scanned = await self._scan_accounts()
            # named before the mark: a reader that sees the mark sees them all
            missing = sorted(scanned - named)
            for start in range(0, len(missing), CHUNK):
                await self.redis.sadd(self.names.accounts_record,
                                      *missing[start:start + CHUNK])
            await self.redis.sadd(self.names.accounts_record, COMPLETE)
            named |= scanned
        return sorted(account for account in named if account != COMPLETE)

    async def _scan_accounts(self) -> set[str]:
        """The accounts that hold generated or external keys, found by SCAN over every
        master (an upgraded store's first read, and ``migrate``'s)."""
        found: set[str] = set()
        async for name in self.redis.scan_iter(match=self.names.accounts_pattern(),
                                               count=1000):
            record = self.names.account_record(name)
            if record is not None and record[1] in ("created", OLDER_CREATION_INDEX, "ext"):
                found.add(record[0])
        return found

    @unavailable
    async def accounts(self, rescan: bool = False) -> list[str]:
        """Accounts that own generated keys now, sorted: the known ones whose creation
        index exists (for metrics and migrate, never for requests: one read of the set,
        then one round trip per CHUNK accounts)."""
        known = await self._known_accounts(rescan)
        owning: list[str] = []
        for start in range(0, len(known), CHUNK):
            chunk = known[start:start + CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                for account in chunk:
                    pipe.exists(self.names.account(account, "created"),
                                self.names.account(account, OLDER_CREATION_INDEX))
                found = await pipe.execute()
            owning += [account for account, held in zip(chunk, found, strict=True) if held]
        return owning
