"""An account's records as older keygates left them, made from the current layout: for
the tests of indexing an account again and of ``keygate store migrate``."""

from __future__ import annotations

import orjson

from gateway.store import Store
from gateway.store.names import OLDER_CREATION_INDEX
from gateway.store.packed_index import PackedIndex
from gateway.store.records import grant_fields, token_digest


async def creation_index_as_sorted_set(store: Store, account: str) -> None:
    """The account's creation index as layouts 1 and 2 kept it: the sorted set ``keys``
    (the same scores), and no packed set ``created``."""
    created = PackedIndex(store.scripts, store.names.account(account, "created"))
    if entries := await created.range(0, 10**9):
        await store.redis.zadd(store.names.account(account, OLDER_CREATION_INDEX),
                               dict(entries))
    await created.drop()


async def hashes_written_the_longer_way(store: Store, account: str) -> None:
    """The hashes of the account's keys as a keygate before layout 3 wrote them: the
    token digests in hex, the own grant an object, the creation date always."""
    redis, names = store.redis, store.names
    for app_key in await redis.zrange(names.account(account, OLDER_CREATION_INDEX), 0, -1):
        name = names.key(app_key)
        held = await redis.hgetall(name)
        if held.get("acct") != account:
            continue
        longer = {"created": held.get("created") or held["tokCreated"]}
        for field in ("tok", "newTok"):
            if field in held:
                longer[field] = token_digest(held[field])
        own = grant_fields(held[f"g:{account}"])
        longer[f"g:{account}"] = orjson.dumps(
            {"roles": own["roles"], "status": own.get("status", "active")}).decode()
        await redis.hset(name, mapping=longer)
