"""The metrics port (``metrics_listen``, default loopback): ``GET /metrics`` in the
Prometheus text format, and nothing else.

It is an application of its own, never a route of the management API: the management
port is where integrators open one-time token links, so it may be reachable from
outside, while metrics name every account and are for the monitoring system alone.

A scrape only renders what is already in memory (or, under ``--workers``, in the
workers' metric files, see :mod:`gateway.telemetry`): counters and histograms kept by
the request path with bounded label sets, and the renewal gauge's last background
count (:mod:`gateway.renewal_gauge`). It reads nothing from the store, so a scrape costs
the same at 50 keys and at 1,000,000, and scraping harder cannot slow the proxy down.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..context import GATEWAY, Gateway
from ..middleware import request_id_and_errors


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].telemetry.exposition()
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )


def build_metrics_app(gateway: Gateway) -> web.Application:
    # a scrape carries no body: refuse anything bigger than a request head's worth
    app = web.Application(middlewares=[request_id_and_errors], client_max_size=1024)
    app[GATEWAY] = gateway
    app.router.add_get("/metrics", metrics)
    # under --workers: this worker's totals go to the shared files while it serves
    app.cleanup_ctx.append(gateway.telemetry.publishing)
    return app
