"""The renewal-alert gauge, counted in the background so that a scrape costs the same at
50 keys and at 1,000,000.

An alert level is a range of token dates (gateway.renewal.alert_range), so an account's
count per level is one count of ranks per status run of its token-date index (a packed
set: gateway.store.listing), and
the accounts come from the set the store keeps of them (gateway.store.accounts): no key
is read and nothing is scanned. Counting at scrape time once read every key (2.5 s at
50,000 keys, and five scrapers cut the proxy from 18,000 to 611 requests/s); here one
background task counts every ``renewal_gauge_interval`` seconds, yielding to the event
loop after each account, and a scrape renders the last finished count: no store access,
whoever scrapes and however often.

At most one count runs at a time, and the next starts ``interval`` seconds after the
previous one ended, so a slow store or a huge account stretches the schedule instead of
piling counts up. A count that fails (store unreachable) leaves the previous result in
place; ``keygate_keys_renewal_alert_computed_timestamp_seconds`` says how old it is.
Memory is one counter triple per account, whatever the number of keys.

Under ``serve --workers N`` every worker counts (from the same store, so to the same
result) and the gauge is a custom collector on the scrape registry of
:mod:`gateway.telemetry`: the worker that answers a scrape renders its own last count,
once, rather than the N counts being summed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from .background import stop_task
from .errors import StoreUnavailable
from .renewal import ALERTS, DEFAULT_RENEWAL_PERIOD, RENEWAL_PERIODS, alert_range
from .store import Store

log = logging.getLogger("keygate.metrics")

GAUGE = "keygate_keys_renewal_alert"
COMPUTED = "keygate_keys_renewal_alert_computed_timestamp_seconds"
CHUNK = 500


def _period(raw: str | None) -> int:
    """The account's renewal period; a value the settings API would refuse counts as the
    default rather than stopping the whole count."""
    try:
        period = int(float(raw)) if raw is not None else DEFAULT_RENEWAL_PERIOD
    except ValueError:
        return DEFAULT_RENEWAL_PERIOD
    return period if period in RENEWAL_PERIODS else DEFAULT_RENEWAL_PERIOD


class RenewalGauge:
    """A Prometheus collector over the last finished count; :meth:`refresh` counts."""

    def __init__(
        self,
        store: Store,
        interval: float,
        clock: Callable[[], float],
        registry: CollectorRegistry,
        chunk: int = CHUNK,
    ):
        self.store = store
        self.interval = interval
        self.clock = clock
        self.chunk = chunk
        self.counts: dict[str, Counter[str]] = {}
        self.computed_at: float | None = None  # clock time the last count finished
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        registry.register(self)

    async def refresh(self) -> None:
        """Count every account's keys per alert level now. The result replaces the
        previous one only once complete, so a scrape never sees half a count."""
        now_ms = int(self.clock() * 1000)
        counts: dict[str, Counter[str]] = {}
        for account in await self.store.accounts():
            settings = await self.store.get_settings(account)
            period = _period(settings.get("renewalPeriodMonths"))
            sizes = await self.store.count_token_dates(
                account, [alert_range(level, period, now_ms) for level in ALERTS], self.chunk
            )
            counts[account] = Counter({a: n for a, n in zip(ALERTS, sizes, strict=True) if n})
            await asyncio.sleep(0)  # an account's work at most between two requests
            if self._stopping.is_set():
                return
        self.counts = counts
        self.computed_at = self.clock()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.refresh()
            except StoreUnavailable:
                log.warning("could not count keys for %s; the gauge keeps its last count",
                            GAUGE)
            except Exception:  # keep counting on the next round; the timestamp shows it
                log.exception("counting keys for %s failed", GAUGE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop counting (see :mod:`gateway.background` for why a flag as well)."""
        if self._task is not None:
            await stop_task(self._task, self._stopping)
            self._task = None


    # -- the collector: renders what is there, touches nothing else ------------------
    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            GAUGE,
            "Generated keys per account and renewal alert level (none, orange, red), as of "
            f"the last background count: counted every renewal_gauge_interval "
            f"({self.interval:g} s) after the previous count ends, so it may be that old "
            f"plus one count's duration; see {COMPUTED}",
            labels=["account", "level"],
        )
        computed = GaugeMetricFamily(
            COMPUTED,
            f"Unix time at which the last count of {GAUGE} finished (0: none yet)",
        )
        return gauge, computed

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        gauge, computed = self._families()
        for account, tally in self.counts.items():
            for level in ALERTS:
                gauge.add_metric([account, level], tally.get(level, 0))
        computed.add_metric([], self.computed_at or 0.0)
        yield gauge
        yield computed
