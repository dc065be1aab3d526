"""What every part of the store shares: the client, the names, the scripts, the clock,
the credential cache and its listener, and the one way a change is made.

The parts (keys, grants, links, …) are mixins over :class:`StoreCore`; the ``Store``
facade (``gateway.store``) is all of them together.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, ParamSpec, Protocol, TypeVar

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from ..errors import StoreUnavailable
from .connection import CLIENT_FAILURES, is_cluster_client, lost_store
from .credential_cache import CacheSettings, CredentialCache
from .invalidation import InvalidationListener
from .lua import Script, Scripts
from .names import OLDER_CREATION_INDEX, Keyspace
from .records import Actor, event_header
from .refusals import refusal
from .search import SEARCH_INDEX_MAX_KEYS, LabelSearch

log = logging.getLogger("keygate.store")

P = ParamSpec("P")
T = TypeVar("T")


class Observer(Protocol):
    """What the store tells about itself, for metrics (``gateway.telemetry`` implements
    it; the store imports no metrics library). Called inline, on the request path for
    the cache: each call must be a counter increment's worth of work, never I/O."""

    def cache_hit(self) -> None: ...
    def cache_miss(self) -> None: ...
    def cache_evicted(self) -> None: ...
    def invalidated(self) -> None: ...
    def resynced(self) -> None: ...
    def store_call(self, operation: str, seconds: float) -> None: ...
    def store_failed(self, operation: str) -> None: ...
    def search_copy_made(self, seconds: float) -> None: ...


# The answers of a store that is down, failing over, or (``min-replicas-to-write``)
# refusing writes it could not replicate: the caller gets a 503 and may retry. A
# demoted master's READONLY also means the master moved (a sentinel-managed client
# reconnects to the new one on the next call).
_UNAVAILABLE_ERRORS = (
    redis.exceptions.ConnectionError,  # MasterNotFoundError and LOADING included
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,  # a replica cut off from its master
    redis.exceptions.ClusterError,  # CLUSTERDOWN: a slot nobody serves now
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.TryAgainError,  # a slot moving between nodes
    # (redis-py 8.2 on) a cluster topology refresh that reached no node: every
    # connection it tried was cut at once
    *((redis.exceptions.RedisClusterUnreachableError,)
      if hasattr(redis.exceptions, "RedisClusterUnreachableError") else ()),
)
# Replies redis-py maps to no class of their own (in a script too).
_UNAVAILABLE_REPLIES = ("NOREPLICAS ",)
# How redis-py words an error inside a pipeline: the reply follows, as the repr of the
# original arguments (up to 8.1) or as it is (from 8.2).
_IN_PIPELINE = " of pipeline caused error: "


def store_unavailable(exc: BaseException) -> bool:
    """Whether an error from the Redis client means "the store cannot serve this now",
    not a bug."""
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return True
    if lost_store(exc):
        return True
    if not isinstance(exc, redis.exceptions.ResponseError):
        return False
    reply = str(exc)
    if _IN_PIPELINE in reply:
        reply = reply.rpartition(_IN_PIPELINE)[2].lstrip("('\"")
    return reply.startswith(_UNAVAILABLE_REPLIES)


# Set inside a store call, so that the calls it makes itself are not gated again.
_IN_STORE_CALL: ContextVar[bool] = ContextVar("keygate_in_store_call", default=False)


async def _gated(gate: asyncio.Semaphore, client: Any, call: Callable[[], Awaitable[T]]) -> T:
    async with gate:
        token = _IN_STORE_CALL.set(True)
        try:
            # A cluster client sends a command made before it has discovered the cluster
            # (which master serves which slot) to any master: the first calls of a store,
            # all at once, met MOVED after MOVED, and every few MOVED the client closed
            # all its connections to discover again, under the calls still using them
            # (503s). Every call waits for the discovery first: once done, initialize()
            # returns at once (and again after a failover, where the client asks for it).
            await client.initialize()
            return await call()
        finally:
            _IN_STORE_CALL.reset(token)


def unavailable(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn a lost Redis into a 503 for the caller instead of a stack trace; tell the
    store's observer, if it has one, how long the call took and whether it failed. On a
    cluster, calls beyond ``max_connections`` wait their turn (the call gate)."""
    operation = func.__name__

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store = args[0]
        observer = store.observer  # type: ignore[attr-defined]  # always a Store method
        gate = store.call_gate  # type: ignore[attr-defined]
        started = time.perf_counter() if observer is not None else 0.0
        try:
            if gate is None or _IN_STORE_CALL.get():
                return await func(*args, **kwargs)
            return await _gated(gate, store.redis,  # type: ignore[attr-defined]
                                functools.partial(func, *args, **kwargs))
        except CLIENT_FAILURES as exc:
            if not store_unavailable(exc):
                raise
            if observer is not None:
                observer.store_failed(operation)
            log.warning("store unavailable in %s: %s", operation, exc)
            raise StoreUnavailable() from exc
        finally:
            if observer is not None:
                observer.store_call(operation, time.perf_counter() - started)

    return wrapper


def unavailable_iter(
    func: Callable[P, AsyncIterator[T]],
) -> Callable[P, AsyncIterator[T]]:
    """:func:`unavailable` for async generators: a lost Redis mid-iteration is a
    StoreUnavailable too, so a caller streaming an export can tell it from a bug."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        try:
            async for item in func(*args, **kwargs):
                yield item
        except CLIENT_FAILURES as exc:
            if not store_unavailable(exc):
                raise
            observer = args[0].observer  # type: ignore[attr-defined]
            if observer is not None:  # no latency: an iteration lasts as long as its reader
                observer.store_failed(func.__name__)
            log.warning("store unavailable in %s: %s", func.__name__, exc)
            raise StoreUnavailable() from exc

    return wrapper


def status_of(result: Any) -> Any:
    """A script's status: its answer, or the first item of a list answer."""
    return result[0] if isinstance(result, list) else result


# How long a follow-up's done marker outlives a crash between applying the follow-up and
# clearing it; once cleared, only as long as an instance that read the follow-up before
# may still be on its way to apply it (a request's time, with a wide margin).
FOLLOWUP_MARKER_MS = 30 * 24 * 3600 * 1000
FOLLOWUP_CLEARED_MARKER_MS = 10 * 60 * 1000


class StoreCore:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        clock: Callable[[], float],
        audit_max_events: int = 100_000,
        cache: CacheSettings = CacheSettings(),  # noqa: B008 - frozen, shared safely
        audit_max_access_events: int = 10_000,
        max_connections: int = 100,
        search_index_max_keys: int = SEARCH_INDEX_MAX_KEYS,
    ):
        self.redis = client
        self.prefix = prefix
        self.names = Keyspace(prefix, clustered=is_cluster_client(client))
        # A cluster client's pool per node fails a call past its size (MaxConnectionsError)
        # where a one-server pool waits: on a cluster, store calls wait at this gate
        # instead, one connection per node each at most (a call runs its commands one at
        # a time; a pipeline takes one connection per node), leaving one connection of
        # the pool to the invalidation listener's subscription.
        self.call_gate = (asyncio.Semaphore(max(1, max_connections - 1))
                          if self.names.clustered else None)
        self.channel = self.names.channel
        self.clock = clock
        self.audit_max_events = audit_max_events
        self.audit_max_access_events = audit_max_access_events
        self.scripts = Scripts(client)
        self.credential_cache = CredentialCache(cache)
        self.invalidation = InvalidationListener(client, self.names, self.credential_cache)
        # q's matches in large accounts, from copies of their label indexes (search.py)
        self.label_search = LabelSearch(client, self.names, self.scripts,
                                        max_keys=search_index_max_keys)
        self._observer: Observer | None = None

    # ``observer`` (None: nobody) hears of cache hits, misses, evictions, invalidations,
    # resyncs, of every store call's duration and failure, and of the copies q's search
    # makes; set after construction (gateway.app), it reaches the cache, the listener
    # and the search too.
    @property
    def observer(self) -> Observer | None:
        return self._observer

    @observer.setter
    def observer(self, observer: Observer | None) -> None:
        self._observer = observer
        self.credential_cache.observer = observer
        self.invalidation.observer = observer
        self.label_search.observer = observer

    def forget(self, app_key: str) -> None:
        """Drop the key from this process's credential cache (others hear the notice)."""
        self.credential_cache.forget(app_key)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def event(self, actor: Actor, action: str, target: str, now: int | None = None) -> str:
        """An audit event's header, stamped ``now`` or now (records.event_header)."""
        return event_header(self.now_ms() if now is None else now, actor, action, target)

    async def change(
        self,
        script: Script,
        account: str,
        app_key: str,
        action: str,
        actor: Actor,
        *,
        keys: list[str],
        args: Sequence[Any] = (),
        expect_roles: Sequence[str] | None = None,
        expect_elsewhere: Sequence[tuple[str, Sequence[str]]] | None = None,
        keep_an_owner: bool = False,
        now: int | None = None,
    ) -> Any:
        """Run a script that changes a key hash and answer what it answered, or raise
        the refusal it answered (``gateway.store.refusals``); this process forgets the
        key at once, others on the script's PUBLISH.

        Every such script takes the same first six ARGV (scripts/prelude.lua) — account,
        audit cap, audit event, invalidation channel, the roles the caller checked
        (``expect_roles``: the script refuses with ``changed`` when the key's roles in
        ``account`` differ; with ``expect_elsewhere``, also when the roles other
        accounts granted it differ) and whether the account must keep an active owner
        key — followed by its own ``args``. The event is stamped ``now`` when given (the
        time the change writes in the hash: a creation event then omits it,
        records.AuditEvent). A script that finds the account's owners set not
        complete yet (an account older than the set) is run again once it is.
        """
        expected = "" if expect_roles is None else orjson.dumps(list(expect_roles)).decode()
        if expect_roles is not None and expect_elsewhere is not None:
            expected = orjson.dumps({
                "roles": list(expect_roles),
                "elsewhere": {account: list(roles) for account, roles in expect_elsewhere},
            }).decode()

        async def run() -> Any:
            header = [
                account,
                self.audit_max_events,
                self.event(actor, action, app_key, now),
                self.channel,
                expected,
                "1" if keep_an_owner else "0",
            ]
            try:
                return await script(keys=keys, args=[*header, *args])
            finally:
                self.forget(app_key)

        result = await run()
        if status_of(result) == "unindexed":
            await self.index_owners(account)
            result = await run()
        refused = refusal(status_of(result))
        if refused is not None:
            raise refused
        return result

    @unavailable
    async def index_owners(self, account: str, chunk: int = 500) -> None:
        """Build the account's set of active owner keys from its key records (once per
        account created before the set existed). Each chunk is one script that reads the
        records it indexes, and every change keeps the set up to date meanwhile, so the
        set is right when the pass ends; only then is it marked complete."""
        owners = self.names.account(account, "owners")
        async for names in self.key_chunks(account, chunk):
            await self.scripts.index_owners(
                keys=[owners, *(self.names.key(n) for n in names)], args=[account, *names]
            )
        await self.redis.sadd(owners, "")

    async def key_chunks(self, account: str, chunk: int) -> AsyncIterator[list[str]]:
        """The names of the account's generated keys, about ``chunk`` at a time, for a
        pass over them while keygate serves; a key may be seen twice, so what a pass
        does must be idempotent.

        First the creation index of an older layout (a sorted set, kept until the
        account is indexed again: the keys made before the upgrade) by ZSCAN: every key
        present from the pass's start to its end is seen, whatever is deleted or added
        meanwhile. Then the creation index (a packed set, but for the keys the older
        one holds) read by value after the last entry read: a key added or removed
        meanwhile shifts no other, but one whose status changes meanwhile moves between
        the index's runs and may be missed (the passes that read the packed set — grant
        follow-ups left by a crash — are done again by the next change of that grant
        too)."""
        names: list[str] = []
        older = self.names.account(account, OLDER_CREATION_INDEX)
        older_held = False  # (an account in this layout has none: nothing to skip)
        async for name, _ in self.redis.zscan_iter(older, count=chunk):
            older_held = True
            names.append(name)
            if len(names) >= chunk:
                yield names
                names = []
        if names:
            yield names
        created = self.names.account(account, "created")
        after: list[object] = ["", ""]  # from the first
        while True:
            flat = await self.scripts.packed_index(keys=[created], args=["after", *after, chunk])
            found = flat[0::2]
            if found and older_held:
                # those the older index held were seen in it
                held = await self.redis.zmscore(older, found)
                found = [name for name, score in zip(found, held, strict=True)
                         if score is None]
            if found:
                yield found
            if len(flat) < 2 * chunk:
                return
            after = [flat[-1], flat[-2]]

    @unavailable
    async def finish_followups(self, app_key: str, only: str | None = None) -> int:
        """Apply and clear the key's pending grant follow-ups (``only``: the one of that
        account); how many were applied now. Idempotent."""
        key = self.names.key(app_key)
        fields = await self.redis.hgetall(key)
        applied = 0
        for field, value in fields.items():
            account = field[3:]
            if not field.startswith("fu:") or (only is not None and account != only):
                continue
            applied += await self.apply_followup(app_key, account, value)
            await self.scripts.clear_followup(keys=[key], args=[field, value])
            await self.redis.pexpire(self._done_marker(account, value),
                                     FOLLOWUP_CLEARED_MARKER_MS)
        return applied

    def _done_marker(self, account: str, followup: str) -> str:
        return self.names.account(account, "done:" + str(orjson.loads(followup)["id"]))

    async def apply_followup(self, app_key: str, account: str, followup: str) -> int:
        """Apply one grant follow-up in the granting account's slot, once: 1 when now.

        Its done marker outlives the follow-up's clearing a while: another instance
        that read the same follow-up before it was cleared, and is slow to apply it,
        must find it applied (else, the grant changed meanwhile, its replay would put
        back an index entry and an audit event of a grant that is gone)."""
        return int(await self.scripts.apply_followup(
            keys=[self.names.account(account, "ext"), self.names.account(account, "audit"),
                  self._done_marker(account, followup)],
            args=[followup, app_key, self.audit_max_events, FOLLOWUP_MARKER_MS],
        ))
