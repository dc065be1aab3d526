"""Budgets for failed authentication: per client address, and per key for wrong tokens.

Tokens carry 160 random bits, so guessing one is hopeless; what a flood of failed
attempts costs is work (an HMAC and, for a key not in the cache, a store round trip)
and, for whoever watches, noise that hides real attacks. So keygate counts failures and,
past a budget per window, answers 429 with ``Retry-After``:

* **per client address** (``auth_failure_limit``): no more credential checks from one
  address fail in a window than its budget, however many it sends at once; once they
  have, the address gets 429 for every request that would be authenticated, before any
  lookup, until its window ends. IPv6 clients are counted per /64, the block one
  customer usually gets. The address is the one keygate trusts (``trusted_proxies``):
  behind a load balancer that is not configured as trusted, every client shares the
  balancer's address and budget.
* **per key, for wrong tokens** (``auth_failure_key_limit``): once a key's budget is
  spent, a wrong token for it gets 429 instead of 401 — but the right token still
  works. Key names are public identifiers: blocking the key itself would let anyone who
  knows a key's name lock its owner out. (So this budget changes answers but cannot
  stop checks; the address budget does.)

Where the counters live: in the store (``INCR`` on a key per subject and window, which
expires with the window), so failures through every worker of every instance draw on
one budget. Each process also remembers, in a bounded map, the subjects it has seen
spend their budget until their window ends, so a blocked client costs no round trip.

Why concurrent guesses cannot overrun the address budget (an :class:`Attempt` is one
authentication, ``async with`` around the credential check): a failed check is counted
in the store before it is answered, and only one check of an address runs at a time in
a process (its *turn*; the others wait for it to end, then look again whether the
address is blocked). So the count a check's failure returns includes every failure
before it, and the address is blocked as soon as the count reaches the budget: in one
process no more checks fail than the budget allows. The success path costs nothing:
no round trip, and no wait in practice for a request whose credentials are in the local
cache, since it is checked without waiting for anything and its turn has ended before
another request starts. What waits is a request that arrives while another from its
address waits for the store (a key not in the cache, a failure being counted). A
process learns that others spent the budget from its own next failure: across N
processes, at most N - 1 checks beyond the budget fail (answered 429) before every
process answers 429 without checking.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .cache import LRU
from .errors import StoreUnavailable, TooManyRequests

log = logging.getLogger("keygate.ratelimit")

ADDRESS = "a"
KEY = "k"


class FailureCounter(Protocol):
    async def count_auth_failure(self, kind: str, subject: str, window: int, ttl: float) -> int:
        """Add one failure to (kind, subject) in window number ``window``; the total."""
        ...


@functools.lru_cache(maxsize=4096)  # asked on every authenticated request
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


class Turn(deque["asyncio.Future[None]"]):
    """An address's one check under way, and the attempts waiting for it in the order
    they came (the deque's items, futures): when it ends it is handed to the first of
    them still waiting (one wake-up per check, where waking them all to race for the
    next turn cost n² wake-ups for n attempts at once). A deque itself, so that taking
    a turn no one holds, as nearly every request does, makes one C object."""

    __slots__ = ()


class Attempt:
    """One authentication under the budgets: ``async with`` around the credential check,
    or, on the request path, :meth:`take_turn_now` (then :meth:`wait_turn` only when it
    says so) and :meth:`end_turn` in a ``finally``, which cost no coroutine when no other
    check of the address is under way (the ``async with`` form costs three: 14.1k
    instructions per request against 9.3k, of a decision's ~110k).

    Taking the turn waits for the check of the address before it to end (429 if the
    address is blocked by then); :meth:`failed` counts a failed check before it is
    answered; ending the turn hands it on. Without a limiter or a client address it does
    nothing, and :meth:`failed` counts the key's budget only."""

    __slots__ = ("limiter", "subject", "turn")

    def __init__(self, limiter: AuthFailureLimiter | None, subject: str | None):
        self.limiter = limiter
        self.subject = subject  # None: no address budget applies
        self.turn: Turn | None = None

    def take_turn_now(self) -> bool:
        """Take the address's turn if no check of it is under way (no I/O, no wait), or
        say that :meth:`wait_turn` must be awaited (False)."""
        if self.limiter is None or self.subject is None:
            return True
        self.turn = self.limiter.take_free_turn(self.subject)
        return self.turn is not None

    async def wait_turn(self) -> None:
        """Take the address's turn once the checks of it before this one ended; 429
        when the address is blocked by then."""
        assert self.limiter is not None and self.subject is not None
        self.turn = await self.limiter.take_turn(self.subject)

    def end_turn(self) -> None:
        if self.turn is not None:
            assert self.limiter is not None and self.subject is not None
            self.limiter.end_turn(self.subject, self.turn)
            self.turn = None

    async def __aenter__(self) -> Attempt:
        if not self.take_turn_now():
            await self.wait_turn()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.end_turn()

    async def failed(self, wrong_token_for: str | None = None) -> float | None:
        """Count this attempt's failed check (and, for a wrong token, one of that key's).
        Seconds until the client may try again when a budget is spent past this check,
        else None (the failure stands: 401)."""
        if self.limiter is None:
            return None
        return await self.limiter.failed(self.subject, wrong_token_for)


def attempt(limiter: AuthFailureLimiter | None, address: str) -> Attempt:
    """An :class:`Attempt` from ``address`` (empty: none known), 429 at once when this
    process knows the address is blocked (no I/O)."""
    if limiter is None:
        return Attempt(None, None)
    return limiter.attempt(address)


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
        # that each fail once never enters it; only subjects that spent a budget do)
        self._blocked: LRU[tuple[str, str], float] = LRU(tracked)
        # address -> its turn, only while taken: as many as checks under way (a check
        # answered from memory alone ends its turn before anyone could see it)
        self._turns: dict[str, Turn] = {}

    def _retry_after(self, kind: str, subject: str) -> float | None:
        until = self._blocked.get((kind, subject))
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            self._blocked.pop((kind, subject))
            return None
        return left

    def attempt(self, address: str) -> Attempt:
        """See :func:`attempt`."""
        if not address:
            return Attempt(self, None)
        subject = address_subject(address)
        if len(self._blocked):
            wait = self._retry_after(ADDRESS, subject)
            if wait is not None:
                raise TooManyRequests(wait)
        return Attempt(self, subject)

    def take_free_turn(self, subject: str) -> Turn | None:
        """The address's turn when no check of it is under way, else None."""
        if subject in self._turns:
            return None
        turn = self._turns[subject] = Turn()
        return turn

    async def take_turn(self, subject: str) -> Turn:
        """The address's turn to check, once the checks of it before this one ended;
        429 when the address is blocked by then."""
        turn = self._turns.get(subject)
        if turn is None:
            turn = self._turns[subject] = Turn()
            return turn
        waiter = asyncio.get_running_loop().create_future()
        turn.append(waiter)
        try:
            await waiter  # handed over: the failure before it, if any, has been counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.end_turn(subject, turn)  # handed over as this attempt was cancelled
            raise
        wait = self._retry_after(ADDRESS, subject)
        if wait is not None:
            self.end_turn(subject, turn)
            raise TooManyRequests(wait)
        return turn

    def end_turn(self, subject: str, turn: Turn) -> None:
        """Hand the turn to the first attempt still waiting for it, else let it go."""
        while turn:
            waiter = turn.popleft()
            if not waiter.done():  # not cancelled meanwhile
                waiter.set_result(None)
                return
        if self._turns.get(subject) is turn:
            del self._turns[subject]

    async def failed(self, subject: str | None, wrong_token_for: str | None) -> float | None:
        """Count one failed check from the address counted as ``subject`` (None: no
        address known), and for a wrong token one of that key's. Without a store the
        failure is not counted (the 401 stands): an outage must not turn every mistyped
        token into a 503."""
        try:
            return await self._count(subject, wrong_token_for)
        except StoreUnavailable:
            log.warning("failed authentication not counted: the store is unavailable")
            return None

    async def _count(self, address: str | None, wrong_token_for: str | None) -> float | None:
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
        if address is not None:
            total = await self.counter.count_auth_failure(ADDRESS, address, number, ttl)
            # blocked once the budget is spent, so that no later check can fail past it
            # (a process that sees it spent only now, by others, answers this one 429)
            if total >= self.address_limit:
                self._blocked.put((ADDRESS, address), ends)
            if total > self.address_limit:
                waits.append(ends - now)
        return max(waits) if waits else None
