"""What the request path observes, recorded without making requests wait.

* :class:`LastUsed` remembers when each key last authenticated and writes the times in
  one batch per interval (so at most one write per key per interval per process), and
  once more on shutdown. A batch the store refused (it was unreachable) is kept, newest
  time per key, and written with the next one.
* :class:`Denials` counts access denials per (account, resource) and samples them into
  the account's audit log: the first denial of a key on a resource in a sampling window
  is written with the number of denials since the previous sample, so a client
  hammering a forbidden route cannot flood the log.

Both are bounded in memory and both write in background tasks: a slow or absent store
costs a log line, never a request. Neither lets a client grow anything with names it
makes up (see :class:`Denials`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from .background import stop_task
from .cache import LRU
from .errors import StoreUnavailable
from .pipeline import Principal
from .store import Actor, Store

log = logging.getLogger("keygate.usage")

MAX_TRACKED = 100_000  # keys with a pending last-used time; denial sampling windows
UNKNOWN_ACCOUNT = "(unknown)"  # not a DNS label, so no real account can be called that
OTHER_ACCOUNTS = "(other)"
MAX_LABELLED_ACCOUNTS = 10_000  # real accounts with their own series; the rest share one
MAX_HELD = 10_000  # denials waiting for the store to confirm their account
MAX_WRITES = 10_000  # sampled denials waiting to be written
KNOWN_ACCOUNTS = 10_000  # confirmed accounts remembered, so a busy one costs no round trip
KNOWN_TTL = 300.0
CONCURRENT_CALLS = 16  # store calls the denial writer has in flight at once
WARN_EVERY = 60.0


class _Warnings:
    """At most one warning per kind per ``WARN_EVERY`` seconds: a store outage under
    load must cost a log line, not a log line per request."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, float("-inf")) >= WARN_EVERY:
            self._last[kind] = now
            log.warning(message, *args)


class LastUsed:
    def __init__(self, store: Store, interval: float, clock: Callable[[], float]):
        self.store = store
        self.interval = interval
        self.clock = clock
        self._pending: dict[str, int] = {}
        self._written: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._warnings = _Warnings()

    def touch(self, app_key: str) -> None:
        now = self.clock()
        if now - self._written.get(app_key, float("-inf")) < self.interval:
            return
        pending = self._pending
        # a key already pending may always move to a newer time; a new one needs room
        if app_key in pending or len(pending) < MAX_TRACKED:
            pending[app_key] = int(now * 1000)

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self.store.record_last_used(batch)
        except asyncio.CancelledError:
            self._keep(batch)
            raise
        except StoreUnavailable:
            self._keep(batch)
            self._warnings.warn(
                "last-used", "could not record last-used times of %d keys; kept for the "
                "next batch (%d pending)", len(batch), len(self._pending),
            )
            return
        now = self.clock()
        if len(self._written) > MAX_TRACKED:
            self._written.clear()
        for app_key in batch:
            self._written[app_key] = now

    def _keep(self, batch: dict[str, int]) -> None:
        """Put an unwritten batch back under the same cap; where the key was touched
        again meanwhile, the newer time wins."""
        pending = self._pending
        for app_key, used in batch.items():
            newer = pending.get(app_key)
            if newer is not None:
                pending[app_key] = max(newer, used)
            elif len(pending) < MAX_TRACKED:
                pending[app_key] = used

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            await self.flush()

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop (a flush it had in flight keeps its batch), then write what
        is left."""
        if self._task is not None:
            await stop_task(self._task, self._stopping)
            self._task = None
        await self.flush()
        if self._pending:
            log.warning("last-used times of %d keys were not written", len(self._pending))


class _Window:
    """A sampling window of one (key, account, resource): when its sample was written,
    and how many denials came after it."""

    __slots__ = ("started", "count")

    def __init__(self, started: float, count: int):
        self.started = started
        self.count = count


class _Held:
    """Denials of one (account, key, resource) waiting for the account to be confirmed:
    the first one's details, and how many there were."""

    __slots__ = ("time", "action", "reason", "request_id", "count")

    def __init__(self, at: float, action: str, reason: str, request_id: str):
        self.time = at
        self.action = action
        self.reason = reason
        self.request_id = request_id
        self.count = 1


class Denials:
    """Counts denials on ``keygate_access_denied_total{account,resource}`` and samples
    them into the account's access stream.

    Why it looks the way it does: on a route that takes the account from the host or the
    path, the account in a denial is whatever the client wrote there. Counted and
    sampled under that name, one key sending ``GET /accounts/<random>/…`` made a Prometheus
    series and a Redis stream per request, forever. So a name is used only once the
    store has confirmed that the account exists (it has keys, external keys or settings:
    names only an operator or an account's own admins create):

    * Accounts confirmed recently are remembered in a small LRU (``KNOWN_ACCOUNTS``, for
      ``KNOWN_TTL`` seconds). A denial in one of them is counted and sampled at once, as
      before: a busy real account costs no round trip per denial.
    * Any other denial is held (aggregated per account, key and resource, at most
      ``MAX_HELD`` entries) and a background task asks the store, a few accounts at a
      time; the request never waits on it. Then it is counted under its account and
      sampled, or, when the account does not exist, counted under ``(unknown)`` and
      written nowhere. So the counter is incremented in the background for these: the
      series it would go to is not known before the store answers, and incrementing it
      under the name first would make exactly the series this prevents.
    * Made-up names are never cached: a negative answer would have to be remembered per
      name, which is what an attacker grows. A name held twice in one batch costs one
      round trip; a fresh name per request costs one round trip each, off the request
      path, in exchange for the request it came with.
    * When the held map is full (a flood faster than the store answers) or the store
      cannot answer, denials are counted under ``(unknown)`` and not sampled: the total
      stays right; only the attribution of a not yet confirmed account is lost.
    * Real accounts beyond ``MAX_LABELLED_ACCOUNTS`` share the series ``(other)``;
      resources come from the route table, so the label set is bounded on both axes.
    * Sampling windows live in an LRU of ``MAX_TRACKED``; sampled denials waiting to be
      written are capped at ``MAX_WRITES`` (beyond it they are dropped, with a warning).

    ``counter`` is ``keygate_access_denied{account,resource}``, defined with the other
    metrics in :mod:`gateway.telemetry` (which keeps it per process or, under
    ``--workers``, in the shared files that a scrape sums).
    """

    def __init__(
        self,
        store: Store,
        sample_seconds: float,
        clock: Callable[[], float],
        counter: Counter,
    ):
        self.store = store
        self.sample_seconds = sample_seconds
        self.clock = clock
        self.counter = counter
        self._known: LRU[str, bool] = LRU(KNOWN_ACCOUNTS, KNOWN_TTL)
        self._labelled: set[str] = set()
        self._windows: LRU[tuple[str, str, str], _Window] = LRU(MAX_TRACKED)
        self._held: dict[tuple[str, str, str], _Held] = {}
        self._writes: list[tuple[str, Actor, str, dict[str, Any]]] = []
        self._worker: asyncio.Task[None] | None = None
        self._warnings = _Warnings()

    # -- the request path: no I/O, no waiting ----------------------------------------
    def record(self, app_key: str, account: str, resource: str, action: str, reason: str,
               request_id: str) -> None:
        now = self.clock()
        if self._known.get(account):
            self._count(account, app_key, resource, action, reason, request_id, now, 1)
            return
        slot = (account, app_key, resource)
        held = self._held.get(slot)
        if held is not None:
            held.count += 1
            return
        if len(self._held) >= MAX_HELD:
            self.counter.labels(UNKNOWN_ACCOUNT, resource).inc()
            return
        self._held[slot] = _Held(now, action, reason, request_id)
        self._wake()

    def _series(self, account: str) -> str:
        if account in self._labelled:
            return account
        if len(self._labelled) < MAX_LABELLED_ACCOUNTS:
            self._labelled.add(account)
            return account
        return OTHER_ACCOUNTS

    def _count(self, account: str, app_key: str, resource: str, action: str, reason: str,
               request_id: str, at: float, count: int) -> None:
        """Count ``count`` denials in a confirmed account; the first of a window is
        sampled, with the number since the previous sample."""
        self.counter.labels(self._series(account), resource).inc(count)
        slot = (app_key, account, resource)
        window = self._windows.get(slot)
        if window is not None and at - window.started < self.sample_seconds:
            window.count += count
            return
        self._windows.put(slot, _Window(at, count - 1))
        details = {"resource": resource, "action": action, "reason": reason,
                   "count": (window.count if window else 0) + 1}
        if len(self._writes) >= MAX_WRITES:
            self._warnings.warn("writes", "too many access denials waiting to be written "
                                "to the audit log; dropping samples")
            return
        self._writes.append((account, Actor(app_key, request_id), resource, details))
        self._wake()

    def _wake(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    # -- the background: confirm accounts, write samples -------------------------------
    async def _work(self) -> None:
        try:
            while self._held or self._writes:
                if self._held:
                    held, self._held = self._held, {}
                    await self._confirm(held)
                if self._writes:
                    writes, self._writes = self._writes, []
                    for start in range(0, len(writes), CONCURRENT_CALLS):
                        await asyncio.gather(
                            *(self._write(*w) for w in writes[start : start + CONCURRENT_CALLS])
                        )
        except Exception:  # a bug must not silently stop all denial accounting
            log.exception("access denial accounting failed")
        finally:
            # no await between the loop's last check and this: nothing recorded in
            # between can be left without a worker
            self._worker = None

    async def _confirm(self, held: dict[tuple[str, str, str], _Held]) -> None:
        # an account confirmed by the previous batch costs no second round trip
        exists = {account: True for account, _, _ in held if self._known.get(account)}
        accounts = list(dict.fromkeys(a for a, _, _ in held if a not in exists))
        for start in range(0, len(accounts), CONCURRENT_CALLS):
            group = accounts[start : start + CONCURRENT_CALLS]
            answers = await asyncio.gather(
                *(self.store.account_exists(a) for a in group), return_exceptions=True
            )
            for account, answer in zip(group, answers, strict=True):
                if isinstance(answer, BaseException):
                    if not isinstance(answer, StoreUnavailable):
                        raise answer
                    self._warnings.warn("confirm", "could not check the accounts of access "
                                        "denials; counting them as %s", UNKNOWN_ACCOUNT)
                    answer = False
                exists[account] = answer
                if answer:
                    self._known.put(account, True)
        for (account, app_key, resource), d in held.items():
            if exists[account]:
                self._count(account, app_key, resource, d.action, d.reason, d.request_id,
                            d.time, d.count)
            else:
                self.counter.labels(UNKNOWN_ACCOUNT, resource).inc(d.count)

    async def _write(self, account: str, actor: Actor, resource: str,
                     details: dict[str, Any]) -> None:
        try:
            await self.store.append_access_event(
                account, actor, "access.denied", resource, details
            )
        except StoreUnavailable:
            self._warnings.warn("write", "could not sample an access denial into the audit log")

    async def drain(self) -> None:
        """Wait until every denial recorded so far is counted and its sample written."""
        while self._worker is not None:
            await asyncio.wait({self._worker})


class UsageObserver:
    """The pipeline's observer: last-used times and sampled denials."""

    def __init__(self, last_used: LastUsed, denials: Denials):
        self.last_used = last_used
        self.denials = denials

    def authenticated(self, principal: Principal) -> None:
        self.last_used.touch(principal.app_key)

    def denied(self, principal: Principal, account: str, resource: str, action: str,
               reason: str, request_id: str) -> None:
        self.denials.record(principal.app_key, account, resource, action, reason, request_id)
