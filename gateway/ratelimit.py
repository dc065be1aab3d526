"""Budgets for failed authentication: per client address, and per key for wrong tokens.

Tokens carry 160 random bits, so guessing one is hopeless; what a flood of failed
attempts costs is work (an HMAC and, for a key not in the cache, a store round trip)
and, for whoever watches, noise that hides real attacks. So keygate counts failures and,
past a budget per window, answers 429 with ``Retry-After``:

* **per client address** (``auth_failure_limit``): a blocked address gets 429 for every
  request that would be authenticated, before any lookup, until its window ends. IPv6
  clients are counted per /64, the block one customer usually gets. The address is the
  one keygate trusts (``trusted_proxies``): behind a load balancer that is not
  configured as trusted, every client shares the balancer's address and budget.
* **per key, for wrong tokens** (``auth_failure_key_limit``): once a key's budget is
  spent, a wrong token for it gets 429 instead of 401 — but the right token still
  works. Key names are public identifiers: blocking the key itself would let anyone who
  knows a key's name lock its owner out.

Where the counters live: in the store (``INCR`` on a key per subject and window, which
expires with the window), so failures through every worker of every instance draw on
one budget. Only a failure costs a round trip; successful requests cost none. Each
process also remembers, in a bounded map, the subjects it has seen over budget until
their window ends, so a blocked client costs no round trip either. A process learns of a
block from its own next failed attempt: across N processes, at most N - 1 attempts beyond
the budget are answered 401 before every process answers 429.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from .cache import LRU
from .errors import StoreUnavailable

log = logging.getLogger("keygate.ratelimit")

ADDRESS = "a"
KEY = "k"


class FailureCounter(Protocol):
    async def count_auth_failure(self, kind: str, subject: str, window: int, ttl: float) -> int:
        """Add one failure to (kind, subject) in window number ``window``; the total."""
        ...


def address_subject(address: str) -> str:
    """What an address is counted as: itself (IPv4), or its /64 (IPv6)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # not an IP address (a unix socket, a test client): as is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AuthFailureLimiter:
    def __init__(
        self,
        counter: FailureCounter,
        address_limit: int,
        key_limit: int,
        window: float,
        clock: Callable[[], float] = time.time,
        tracked: int = 100_000,
    ):
        self.counter = counter
        self.address_limit = address_limit
        self.key_limit = key_limit
        self.window = window
        self.clock = clock
        # subject -> end of the window it is blocked in (bounded: a flood of addresses
        # that each fail once never enters it; only subjects over budget do)
        self._blocked: LRU[tuple[str, str], float] = LRU(tracked)

    def _retry_after(self, kind: str, subject: str) -> float | None:
        until = self._blocked.get((kind, subject))
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            self._blocked.pop((kind, subject))
            return None
        return left

    def address_blocked(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None: no I/O (the request path)."""
        if not address or not len(self._blocked):
            return None
        return self._retry_after(ADDRESS, address_subject(address))

    async def failed(self, address: str, wrong_token_for: str | None) -> float | None:
        """Count one failed authentication from ``address`` (and, for a wrong token, of
        that key). Seconds until it may try again when a budget is now spent, else None.
        Without a store the failure is not counted (the 401 stands): an outage must not
        turn every mistyped token into a 503."""
        try:
            return await self._count(address, wrong_token_for)
        except StoreUnavailable:
            log.warning("failed authentication not counted: the store is unavailable")
            return None

    async def _count(self, address: str, wrong_token_for: str | None) -> float | None:
        now = self.clock()
        number = math.floor(now / self.window)
        ends = (number + 1) * self.window
        ttl = ends - now + 1.0
        waits = []
        if wrong_token_for is not None:
            wait = self._retry_after(KEY, wrong_token_for)
            if wait is None:
                total = await self.counter.count_auth_failure(KEY, wrong_token_for, number, ttl)
                if total > self.key_limit:
                    self._blocked.put((KEY, wrong_token_for), ends)
                    wait = ends - now
            if wait is not None:
                waits.append(wait)
        if address:
            subject = address_subject(address)
            total = await self.counter.count_auth_failure(ADDRESS, subject, number, ttl)
            if total > self.address_limit:
                self._blocked.put((ADDRESS, subject), ends)
                waits.append(ends - now)
        return max(waits) if waits else None
