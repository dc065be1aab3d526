"""What the request path observes, recorded without making requests wait.

* :class:`LastUsed` remembers when each key last authenticated and writes the times in
  one batch per interval (so at most one write per key per interval per process), and
  once more on shutdown.
* :class:`Denials` counts access denials per (key, account, resource) and samples them
  into the account's audit log: the first denial of a key on a resource in a sampling
  window is written with the number of denials since the previous sample, so a client
  hammering a forbidden route cannot flood the log.

Both are bounded in memory and both write in background tasks: a slow or absent store
costs a log line, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from .auth import Principal
from .errors import StoreUnavailable
from .store import Actor, Store

log = logging.getLogger("keygate.usage")

MAX_TRACKED = 100_000


class LastUsed:
    def __init__(self, store: Store, interval: float, clock: Callable[[], float]):
        self.store = store
        self.interval = interval
        self.clock = clock
        self._pending: dict[str, int] = {}
        self._written: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def touch(self, app_key: str) -> None:
        now = self.clock()
        if now - self._written.get(app_key, float("-inf")) < self.interval:
            return
        if len(self._pending) < MAX_TRACKED:
            self._pending[app_key] = int(now * 1000)

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self.store.record_last_used(batch)
        except StoreUnavailable:
            log.warning("could not record last-used times of %d keys", len(batch))
            return
        now = self.clock()
        if len(self._written) > MAX_TRACKED:
            self._written.clear()
        for app_key in batch:
            self._written[app_key] = now

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


@dataclass
class _Window:
    started: float
    count: int


class Denials:
    def __init__(
        self,
        store: Store,
        sample_seconds: float,
        clock: Callable[[], float],
        registry: CollectorRegistry,
    ):
        self.store = store
        self.sample_seconds = sample_seconds
        self.clock = clock
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.counter = Counter(
            "keygate_access_denied", "Requests refused with 403, by account and resource",
            ["account", "resource"], registry=registry,
        )

    def record(self, app_key: str, account: str, resource: str, action: str, reason: str,
               request_id: str) -> None:
        self.counter.labels(account, resource).inc()
        now = self.clock()
        slot = (app_key, account, resource)
        window = self._windows.get(slot)
        if window is not None and now - window.started < self.sample_seconds:
            window.count += 1
            return
        if len(self._windows) >= MAX_TRACKED:
            self._windows.clear()
        self._windows[slot] = _Window(now, 0)
        since_last = (window.count if window else 0) + 1
        details = {"resource": resource, "action": action, "reason": reason,
                   "count": since_last}
        task = asyncio.get_running_loop().create_task(
            self._write(account, Actor(app_key, request_id), resource, details)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, account: str, actor: Actor, resource: str, details: dict) -> None:
        try:
            await self.store.append_access_event(
                account, actor, "access.denied", resource, details
            )
        except StoreUnavailable:
            log.warning("could not sample an access denial into the audit log")

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class UsageObserver:
    """The Gatekeeper's observer: last-used times and sampled denials."""

    def __init__(self, last_used: LastUsed, denials: Denials):
        self.last_used = last_used
        self.denials = denials

    def authenticated(self, principal: Principal) -> None:
        self.last_used.touch(principal.app_key)

    def denied(self, principal: Principal, account: str, resource: str, action: str,
               reason: str, request_id: str) -> None:
        self.denials.record(principal.app_key, account, resource, action, reason, request_id)
