"""The key store: the only module that imports redis.

Layout (every name starts with the ``store_prefix`` setting, ``kg:`` by default):

``{p}key:{appKey}`` — hash, one per key, holding everything authentication needs::

    acct        owner account
    label       the owner's label
    status      active | inactive
    created     creation time, ms since the epoch
    tokCreated  when the current token was issued, ms
    tok         HMAC-SHA256 digest of the token (hex); never the token
    g:{account} the key's grant in that account, JSON {"roles": [...], ...}; the owner's
                own grant is ``g:{acct}``

    After a delete the hash is replaced by a tombstone ``{deleted: ms}`` so that a key
    name is never issued twice.

``{p}acct:{account}:keys`` — sorted set of the account's generated keys by creation time.

Because a key's grants live in its own hash, authenticating a key for a target account
is a single ``HMGET`` (one round trip), and every change to a key is a Lua script over
that hash and the indexes, so it is atomic. Lua scripts name index keys they derive
(``acct:*``) themselves, so this layout suits one Redis (or a replica set), not a cluster.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from .errors import StoreUnavailable

log = logging.getLogger("keygate.store")

ACTIVE = "active"
INACTIVE = "inactive"
STATUSES = (ACTIVE, INACTIVE)

P = ParamSpec("P")
T = TypeVar("T")


def _unavailable(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn a lost Redis into a 503 for the caller instead of a stack trace."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("store unavailable in %s: %s", func.__name__, exc)
            raise StoreUnavailable() from exc

    return wrapper


@dataclass(frozen=True)
class Grant:
    roles: tuple[str, ...]
    status: str = ACTIVE

    @classmethod
    def decode(cls, raw: str | None) -> Grant | None:
        if not raw:
            return None
        data = orjson.loads(raw)
        return cls(tuple(data.get("roles", ())), data.get("status", ACTIVE))

    def encode(self) -> str:
        return orjson.dumps({"roles": list(self.roles), "status": self.status}).decode()


@dataclass(frozen=True)
class KeyRecord:
    """A generated key as the owner account sees it. Holds digests, never tokens."""

    app_key: str
    account: str
    label: str
    status: str
    created: int
    token_created: int
    roles: tuple[str, ...]
    token_digests: tuple[str, ...] = field(repr=False, default=())

    @classmethod
    def from_hash(cls, app_key: str, h: dict[str, str]) -> KeyRecord | None:
        if "acct" not in h:
            return None
        own = Grant.decode(h.get("g:" + h["acct"]))
        return cls(
            app_key=app_key,
            account=h["acct"],
            label=h.get("label", ""),
            status=h.get("status", INACTIVE),
            created=int(h.get("created", 0)),
            token_created=int(h.get("tokCreated", 0)),
            roles=own.roles if own else (),
            token_digests=tuple(d for d in (h.get("tok"),) if d),
        )


@dataclass(frozen=True)
class AuthLookup:
    """What authenticating a key for one target account needs, read in one round trip."""

    owner: str | None
    status: str | None
    token_digests: tuple[str, ...] = field(repr=False)
    grant: Grant | None

    @property
    def exists(self) -> bool:
        return self.owner is not None


_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

_UPDATE = """
if redis.call('HGET', KEYS[1], 'acct') ~= ARGV[1] then return false end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return redis.call('HGETALL', KEYS[1])
"""

_DELETE = """
if redis.call('HGET', KEYS[1], 'acct') ~= ARGV[1] then return 0 end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'g:' and string.sub(f, 3) ~= ARGV[1] then
    redis.call('ZREM', ARGV[3] .. string.sub(f, 3) .. ':ext', ARGV[2])
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'deleted', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

SORT_FIELDS = {
    "creationDate": lambda r: (r.created, r.app_key),
    "creationDateToken": lambda r: (r.token_created, r.app_key),
    "label": lambda r: (r.label.casefold(), r.app_key),
    "appKey": lambda r: (r.app_key,),
    "status": lambda r: (r.status, r.app_key),
}


@dataclass(frozen=True)
class KeyQuery:
    q: str = ""
    status: str | None = None
    role: str | None = None
    sort: str = "creationDate"
    descending: bool = True
    page: int = 1
    per_page: int = 20

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.status or self.role)

    def accepts(self, record: KeyRecord) -> bool:
        if self.status and record.status != self.status:
            return False
        if self.role and self.role not in record.roles:
            return False
        if self.q:
            needle = self.q.casefold()
            return needle in record.label.casefold() or needle in record.app_key.casefold()
        return True


class Store:
    def __init__(self, client: aioredis.Redis, prefix: str, clock: Callable[[], float]):
        self.redis = client
        self.prefix = prefix
        self.clock = clock
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._delete = client.register_script(_DELETE)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "kg:", clock: Callable[[], float] = time.time
    ) -> Store:
        if url.startswith("memory://"):
            import fakeredis  # only the embedded store needs it

            client = fakeredis.FakeAsyncRedis(decode_responses=True)
        else:
            client = aioredis.from_url(
                url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
            )
        return cls(client, prefix, clock)

    async def close(self) -> None:
        await self.redis.aclose()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- names -----------------------------------------------------------------------
    def _key(self, app_key: str) -> str:
        return f"{self.prefix}key:{app_key}"

    def _account_keys(self, account: str) -> str:
        return f"{self.prefix}acct:{account}:keys"

    # -- health ----------------------------------------------------------------------
    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False

    # -- authentication --------------------------------------------------------------
    @_unavailable
    async def auth_lookup(self, app_key: str, account: str) -> AuthLookup:
        """Key status, token digests and the grant in ``account``: one HMGET."""
        owner, status, tok, grant = await self.redis.hmget(
            self._key(app_key), ["acct", "status", "tok", "g:" + account]
        )
        return AuthLookup(
            owner=owner,
            status=status,
            token_digests=tuple(d for d in (tok,) if d),
            grant=Grant.decode(grant),
        )

    # -- generated keys --------------------------------------------------------------
    @_unavailable
    async def create_key(
        self, app_key: str, account: str, label: str, roles: Sequence[str], token_digest: str
    ) -> KeyRecord | None:
        """Store a new key; None when the name was ever used before (caller retries)."""
        now = self.now_ms()
        fields = {
            "acct": account,
            "label": label,
            "status": ACTIVE,
            "created": now,
            "tokCreated": now,
            "tok": token_digest,
            "g:" + account: Grant(tuple(roles)).encode(),
        }
        args: list[Any] = [now, app_key]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._key(app_key), self._account_keys(account)]
        created = await self._create(keys=keys, args=args)
        if not created:
            return None
        return KeyRecord(app_key, account, label, ACTIVE, now, now, tuple(roles), (token_digest,))

    @_unavailable
    async def get_key(self, account: str, app_key: str) -> KeyRecord | None:
        """The key when it exists and ``account`` owns it."""
        record = KeyRecord.from_hash(app_key, await self.redis.hgetall(self._key(app_key)))
        if record is None or record.account != account:
            return None
        return record

    @_unavailable
    async def update_key(
        self,
        account: str,
        app_key: str,
        *,
        label: str | None = None,
        roles: Sequence[str] | None = None,
        status: str | None = None,
    ) -> KeyRecord | None:
        args: list[Any] = [account]
        if label is not None:
            args += ["label", label]
        if roles is not None:
            args += ["g:" + account, Grant(tuple(roles)).encode()]
        if status is not None:
            args += ["status", status]
        flat = await self._update(keys=[self._key(app_key)], args=args)
        if not flat:
            return None
        return KeyRecord.from_hash(app_key, dict(zip(flat[::2], flat[1::2], strict=True)))

    @_unavailable
    async def delete_key(self, account: str, app_key: str) -> bool:
        deleted = await self._delete(
            keys=[self._key(app_key), self._account_keys(account)],
            args=[account, app_key, f"{self.prefix}acct:", self.now_ms()],
        )
        return bool(deleted)

    @_unavailable
    async def list_keys(self, account: str, query: KeyQuery) -> tuple[list[KeyRecord], int]:
        """One page of the account's generated keys and the total that match."""
        index = self._account_keys(account)
        start = (query.page - 1) * query.per_page
        if not query.filtered and query.sort == "creationDate":
            # Fast path: the index is already in creation order; read only the page.
            total = await self.redis.zcard(index)
            names = await self.redis.zrange(
                index, start, start + query.per_page - 1, desc=query.descending
            )
            return [r for r in await self._load(names) if r is not None], total
        names = await self.redis.zrange(index, 0, -1)
        records = [r for r in await self._load(names) if r is not None and query.accepts(r)]
        records.sort(key=SORT_FIELDS[query.sort], reverse=query.descending)
        return records[start : start + query.per_page], len(records)

    async def _load(self, names: Sequence[str], chunk: int = 500) -> list[KeyRecord | None]:
        records: list[KeyRecord | None] = []
        for offset in range(0, len(names), chunk):
            batch = names[offset : offset + chunk]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hgetall(self._key(name))
                hashes = await pipe.execute()
            records += [KeyRecord.from_hash(n, h) for n, h in zip(batch, hashes, strict=True)]
        return records
