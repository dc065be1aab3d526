"""Reading keys in bulk: an account's keys page by page or all of them in chunks, and
the accounts keygate knows.

An unfiltered listing in creation order reads only its page; a filtered or otherwise
sorted one reads the listed fields of every key of the account (O(keys in the account):
see the README), then the page's keys whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .core import StoreCore, unavailable, unavailable_iter
from .names import glob_escape
from .records import KeyRecord


@dataclass(frozen=True)
class KeyQuery:
    q: str = ""
    status: str | None = None
    role: str | None = None
    sort: str = "creationDate"
    descending: bool = True
    page: int = 1
    per_page: int = 20
    # extra predicate on the record (e.g. the renewal alert), applied after the others
    where: Callable[[KeyRecord], bool] | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.status or self.role or self.where)

    def accepts(self, record: KeyRecord) -> bool:
        if self.status and record.status != self.status:
            return False
        if self.role and self.role not in record.roles:
            return False
        if self.q:
            needle = self.q.casefold()
            if needle not in record.label.casefold() and needle not in record.app_key.casefold():
                return False
        return self.where is None or self.where(record)


SORT_FIELDS: dict[str, Callable[[KeyRecord], Any]] = {
    "creationDate": lambda r: (r.created, r.app_key),
    "creationDateToken": lambda r: (r.token_created, r.app_key),
    "label": lambda r: (r.label.casefold(), r.app_key),
    "appKey": lambda r: (r.app_key,),
    "status": lambda r: (r.status, r.app_key),
    "lastUsed": lambda r: (r.last_used or 0, r.app_key),
}

# the fields a filtered listing reads of every key (no digests, no other grants)
_LISTED = ["acct", "label", "status", "created", "tokCreated", "newTokCreated", "lastUsed"]


class KeyListing(StoreCore):
    @unavailable
    async def list_keys(self, account: str, query: KeyQuery) -> tuple[list[KeyRecord], int]:
        """One page of the account's generated keys and the total that match."""
        index = self.names.account(account, "keys")
        start = (query.page - 1) * query.per_page
        if not query.filtered and query.sort == "creationDate":
            # Fast path: the index is already in creation order; read only the page.
            total = await self.redis.zcard(index)
            names = await self.redis.zrange(
                index, start, start + query.per_page - 1, desc=query.descending
            )
            return [r for r in await self._load(names) if r is not None], total
        # Filter and sort on the listed fields only, then read the page's keys whole.
        names = await self.redis.zrange(index, 0, -1)
        fields = [*_LISTED, "g:" + account]
        light: list[KeyRecord] = []
        for offset in range(0, len(names), 1000):
            batch = names[offset : offset + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hmget(self.names.key(name), fields)
                rows = await pipe.execute()
            for name, row in zip(batch, rows, strict=True):
                present = {f: v for f, v in zip(fields, row, strict=True) if v}
                record = KeyRecord.from_hash(name, present)
                if record is not None and query.accepts(record):
                    light.append(record)
        light.sort(key=SORT_FIELDS[query.sort], reverse=query.descending)
        page = [r.app_key for r in light[start : start + query.per_page]]
        return [r for r in await self._load(page) if r is not None], len(light)

    @unavailable
    async def accounts(self) -> list[str]:
        """Accounts that own generated keys (SCAN: for metrics, not for requests)."""
        head, tail = self.names.account_prefix, ":keys"
        names = [n async for n in self.redis.scan_iter(
            match=f"{glob_escape(head)}*{tail}", count=1000)]
        return sorted(n[len(head) : -len(tail)] for n in names)

    @unavailable
    async def account_exists(self, account: str) -> bool:
        """Whether the account has generated keys, external keys or settings: the
        accounts that exist as far as keygate knows (one round trip)."""
        return bool(
            await self.redis.exists(
                self.names.account(account, "keys"),
                self.names.account(account, "ext"),
                self.names.account(account, "settings"),
            )
        )

    @unavailable
    async def all_keys(self, account: str) -> list[KeyRecord]:
        names = await self.redis.zrange(self.names.account(account, "keys"), 0, -1)
        return [r for r in await self._load(names) if r is not None]

    async def _load(self, names: Sequence[str], chunk: int = 500) -> list[KeyRecord | None]:
        records: list[KeyRecord | None] = []
        for offset in range(0, len(names), chunk):
            batch = names[offset : offset + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hgetall(self.names.key(name))
                hashes = await pipe.execute()
            records += [KeyRecord.from_hash(n, h) for n, h in zip(batch, hashes, strict=True)]
        return records

    @unavailable_iter
    async def iter_keys(self, account: str, chunk: int = 500) -> AsyncIterator[list[KeyRecord]]:
        """All generated keys of an account, a chunk at a time (bounded memory)."""
        index = self.names.account(account, "keys")
        start = 0
        while True:
            names = await self.redis.zrange(index, start, start + chunk - 1)
            if not names:
                return
            yield [r for r in await self._load(names, chunk) if r is not None]
            start += chunk
