"""``/metrics``: Prometheus text format.

The renewal gauge is computed at scrape time from the store (every key of every
account), so scrape it at minutes, not seconds, on large deployments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from ..context import GATEWAY
from ..renewal import ALERTS, DEFAULT_RENEWAL_PERIOD, renewal_alert


class _Snapshot:
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def renewal_counts(request: web.Request) -> dict[str, Counter[str]]:
    gateway = request.app[GATEWAY]
    now = gateway.now_ms()
    counts: dict[str, Counter[str]] = {}
    for account in await gateway.store.accounts():
        settings = await gateway.store.get_settings(account)
        period = int(settings.get("renewalPeriodMonths", DEFAULT_RENEWAL_PERIOD))
        counts[account] = Counter(
            renewal_alert(r.token_created, period, now)
            for r in await gateway.store.all_keys(account)
        )
    return counts


async def metrics(request: web.Request) -> web.Response:
    gauge = GaugeMetricFamily(
        "keygate_keys_renewal_alert",
        "Generated keys per renewal alert level (none, orange, red) per account",
        labels=["account", "level"],
    )
    for account, counts in (await renewal_counts(request)).items():
        for level in ALERTS:
            gauge.add_metric([account, level], counts.get(level, 0))
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot([gauge]))
    body = generate_latest(request.app[GATEWAY].registry) + generate_latest(snapshot)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
