"""The management application: health and the /api/v1 routes (metrics have their own
port: see metrics.py)."""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY, Gateway
from ..errors import StoreUnavailable
from ..middleware import request_id_and_errors, server_header
from ..views import iso
from . import (
    account_settings,
    audit,
    explain,
    export,
    external_keys,
    keys,
    links,
    policy_admin,
    sessions,
)
from .common import json_response


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Says nothing about the store, on purpose."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the store answers, so requests can be authenticated. ``policy`` says
    which version serves and whether it is the one the deployment announced (an
    instance out of sync is still ready: it serves the policy its files hold)."""
    if not await request.app[GATEWAY].store.ping():
        raise StoreUnavailable("not ready: keygate cannot reach its key store")
    gateway = request.app[GATEWAY]
    policy = gateway.policy_sync.status()
    return json_response(
        {
            "status": "ready",
            "policyVersion": policy.version,
            "policy": {
                "version": policy.version,
                "announced": policy.announced,
                "inSync": policy.in_sync,
                "loadedAt": iso(policy.loaded_at),
            },
            # "bypassed" until the invalidation channel is subscribed: every request then
            # reads the store, which is correct, only slower
            "credentialCache": "trusted" if gateway.store.cache_trusted else "bypassed",
        }
    )


def build_management_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[request_id_and_errors],
        client_max_size=gateway.settings.management_max_body,
    )
    app[GATEWAY] = gateway
    app.on_response_prepare.append(server_header)  # streamed answers (exports) too
    for prefix in ("", "/api/v1"):
        app.router.add_get(prefix + "/healthz", healthz)
        app.router.add_get(prefix + "/readyz", readyz)
    for module in (keys, external_keys, export, links, account_settings, audit, policy_admin,
                   explain, sessions):
        app.router.add_routes(module.routes)
    return app
