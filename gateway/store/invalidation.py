"""The invalidation listener: one subscription per process to the invalidation channel,
which keeps the credential cache coherent (rules in ``gateway.store.credential_cache``)
and tells whoever asked when the policy announcement or the JWT signing keys change.

The channel is pinged every PING_INTERVAL seconds, so that a silent channel can be told
from a dead one (the cache's LIVENESS). A lost subscription is retried with backoff;
every confirmed (re)subscription flushes the cache and calls both callbacks, since
notices may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
import redis.exceptions

from .connection import CLIENT_FAILURES, lost_store
from .credential_cache import CredentialCache
from .names import Keyspace

if TYPE_CHECKING:
    from .core import Observer

log = logging.getLogger("keygate.store")

PING_INTERVAL = 1.0


class InvalidationListener:
    def __init__(self, client: aioredis.Redis, names: Keyspace, cache: CredentialCache):
        self.redis = client
        self.names = names
        self.cache = cache
        self.observer: Observer | None = None
        # Called (no I/O, from the listener) when the policy announcement changed or may
        # have been missed (every subscription confirmed); see gateway.policy.sync.
        self.on_policy_announced: Callable[[], None] | None = None
        # Called (no I/O, from the listener) when the JWT signing keys changed (a
        # rotation) or may have been missed; see gateway.sessions.service.
        self.on_signing_keys_changed: Callable[[], None] | None = None
        self.resyncs = 0  # subscriptions confirmed, the first one included
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Subscribe; until then the cache is bypassed. Without a cache, only the
        announcements need the channel (if anyone listens)."""
        wanted = (self.cache.enabled or self.on_policy_announced is not None
                  or self.on_signing_keys_changed is not None)
        if wanted and self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            # bounded: fakeredis's pub/sub read can sit out a cancellation, and shutting
            # down must not wait on it
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None
        self.cache.lost()

    def _resubscribed(self) -> None:
        self.cache.resubscribed()
        self.resyncs += 1
        if self.observer is not None:
            self.observer.resynced()
        if self.on_policy_announced is not None:
            self.on_policy_announced()
        if self.on_signing_keys_changed is not None:
            self.on_signing_keys_changed()

    def _heard(self, name: str) -> None:
        names = self.names
        app_key = names.app_key_of(name)
        if app_key is not None:
            self.cache.forget(app_key)
            if self.observer is not None:
                self.observer.invalidated()
        elif name == names.policy_record and self.on_policy_announced:
            self.on_policy_announced()
        elif name == names.signing_keys_record and self.on_signing_keys_changed is not None:
            self.on_signing_keys_changed()

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._stopping:
            pubsub = None
            try:
                if self.names.clustered:
                    # a cluster client learns the slots on its first command, and its
                    # pub/sub needs them first; classic pub/sub is broadcast to every
                    # node, so one subscription on any node hears every change
                    await self.redis.initialize()
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(self.names.channel)
                pinged = 0.0
                while not self._stopping:
                    if time.monotonic() - pinged >= PING_INTERVAL:
                        await pubsub.ping()
                        pinged = time.monotonic()
                    message = await pubsub.get_message(timeout=PING_INTERVAL)
                    if message is None:
                        continue
                    self.cache.heard()
                    if message["type"] == "subscribe":
                        # (re)connected: changes may have been missed meanwhile
                        self._resubscribed()
                        backoff = 0.1
                    elif message["type"] == "message":
                        self._heard(message["data"])
            except asyncio.CancelledError:
                raise
            except (*CLIENT_FAILURES, OSError) as exc:
                if not isinstance(exc, redis.exceptions.RedisError | OSError) \
                        and not lost_store(exc):
                    raise  # a bug, not a lost connection
                if self._stopping:  # a cancellation that the client turned into an error
                    return
                if self.cache.subscribed:
                    log.warning("invalidation channel lost (%s); credential cache off", exc)
                if self.observer is not None:
                    self.observer.store_failed("invalidation")
                self.cache.lost()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
