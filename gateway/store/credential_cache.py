"""The credential cache: what authenticating a key needs, kept in memory and trusted
only while it is known to be coherent with the store.

Pure (no I/O): :class:`gateway.store.invalidation.InvalidationListener` keeps it
coherent. The rules, the part a reviewer should check:

* every script that changes a key hash PUBLISHes the key's name on the invalidation
  channel inside the same script, so no change is committed without its notice;
* each process drops the key on receipt (and at once for its own changes: ``forget``);
* the cache is used only while the subscription is known good: after a subscribe
  confirmation (which redis-py also gets after a silent reconnect) the cache is flushed
  and trusted; on an error, or when the channel has been silent (not even a PONG to the
  listener's pings) for LIVENESS seconds, it is flushed and bypassed;
* a lookup that raced an invalidation does not put its (possibly stale) answer in the
  cache: a generation counter, bumped by every invalidation, must not have moved
  between the read and the put (``ticket`` … ``remember``);
* unknown keys go to a separate, small, short-lived cache, so a flood of made-up keys
  cannot evict real ones;
* only digests are cached; the token is still compared on every request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cache import LRU
from .records import AuthLookup

if TYPE_CHECKING:
    from .core import Observer

# Accounts remembered per cached key (its grants and "no grant here" answers).
MAX_ACCOUNTS_PER_KEY = 64
# Silence on the invalidation channel for this many seconds means the subscription may
# have missed revocations, so the cache is not trusted until resynced.
LIVENESS = 3.0


@dataclass(frozen=True)
class CacheSettings:
    """Credential cache sizes; ``size=0`` turns the cache off."""

    size: int = 100_000
    ttl: float = 60.0
    unknown_size: int = 10_000
    unknown_ttl: float = 2.0


class CredentialCache:
    def __init__(self, settings: CacheSettings):
        # known keys: app key → target account → what the store answered for it
        self.known: LRU[str, dict[str, AuthLookup]] | None = (
            LRU(settings.size, settings.ttl) if settings.size > 0 else None
        )
        self.unknown: LRU[str, AuthLookup] | None = (
            LRU(settings.unknown_size, settings.unknown_ttl) if settings.size > 0 else None
        )
        self.observer: Observer | None = None
        self.subscribed = False
        self.last_heard = float("-inf")
        self._generation = 0

    @property
    def enabled(self) -> bool:
        return self.known is not None

    @property
    def trusted(self) -> bool:
        return (self.known is not None and self.subscribed
                and time.monotonic() - self.last_heard < LIVENESS)

    # -- what the listener tells -------------------------------------------------------
    def heard(self) -> None:
        """Anything came on the channel (a message, a PONG): the subscription is alive."""
        self.last_heard = time.monotonic()

    def resubscribed(self) -> None:
        """A subscription was confirmed: changes may have been missed before it, so
        everything is dropped, and from now on the cache may be trusted."""
        self.flush()
        self.subscribed = True

    def lost(self) -> None:
        """The subscription is gone: bypass the cache until it is back."""
        self.subscribed = False
        self.flush()

    def flush(self) -> None:
        self._generation += 1
        if self.known is not None and self.unknown is not None:
            self.known.clear()
            self.unknown.clear()

    def forget(self, app_key: str) -> None:
        self._generation += 1
        if self.known is not None and self.unknown is not None:
            self.known.pop(app_key)
            self.unknown.pop(app_key)

    # -- the request path ----------------------------------------------------------------
    def lookup(self, app_key: str, account: str) -> AuthLookup | None:
        """The answer for ``app_key`` in ``account`` from memory, or None: no I/O."""
        if self.known is None or not self.trusted:
            return None
        per_account = self.known.get(app_key)
        if per_account is not None and account in per_account:
            found = per_account[account]
        else:
            found = self.unknown.get(app_key)  # type: ignore[union-attr]
        # A miss is counted by ``ticket``, where it costs the round trip: a caller
        # that looks here first and then reads the store must not count it twice.
        if found is not None and self.observer is not None:
            self.observer.cache_hit()
        return found

    def ticket(self) -> int | None:
        """Before reading the store on a miss: the generation to hand to ``remember``
        (None when the cache is not trusted: the answer will not be kept)."""
        if self.observer is not None:
            self.observer.cache_miss()
        return self._generation if self.trusted else None

    def remember(self, ticket: int | None, app_key: str, account: str,
                 found: AuthLookup) -> None:
        """Keep what the store answered, unless an invalidation came in between."""
        if ticket is None or ticket != self._generation or not self.trusted:
            return
        observer = self.observer
        if found.exists:
            known: LRU[str, dict[str, AuthLookup]] = self.known  # type: ignore[assignment]
            per_account = known.get(app_key)
            if per_account is None:
                per_account = {}
                if observer is not None and len(known) >= known.size:
                    observer.cache_evicted()  # the put below drops the oldest key
                known.put(app_key, per_account)
            if len(per_account) >= MAX_ACCOUNTS_PER_KEY:
                # The target account comes from the request: a key asking for made-up
                # accounts must not grow its entry. A miss there costs a round trip;
                # a grant makes room by dropping the oldest entry.
                if found.grant is None:
                    return
                del per_account[next(iter(per_account))]
                if observer is not None:
                    observer.cache_evicted()
            per_account[account] = found
        else:
            unknown: LRU[str, AuthLookup] = self.unknown  # type: ignore[assignment]
            if observer is not None and len(unknown) >= unknown.size:
                observer.cache_evicted()
            unknown.put(app_key, found)
