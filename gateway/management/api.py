"""The management application: health, the /api/v1 operations and their OpenAPI
document (metrics have their own port: see metrics.py)."""

from __future__ import annotations

import itertools
import os

from aiohttp import web

from ..context import GATEWAY, Gateway
from ..errors import StoreUnavailable
from ..middleware import request_id_and_errors, server_header
from ..store import NewerLayout
from ..views import iso
from . import (
    account_settings,
    audit,
    explain,
    export,
    external_keys,
    keys,
    links,
    openapi,
    policy_admin,
    sessions,
    ui,
    whoami,
)
from .common import authorize, json_response
from .csrf import csrf_protection
from .operations import Operation, Operations, register
from .schema import Health, Readiness

health = Operations("health")
NOT_READY = {503: ("store_unavailable", "store_layout_newer")}


def _healthz(operation_id: str, path: str) -> None:
    @health.get(path, summary="Alive", operation_id=operation_id, responses={200: Health})
    async def healthz(request: web.Request) -> web.Response:
        """The process answers. Says nothing about the store, on purpose."""
        return json_response({"status": "ok"})


def _readyz(operation_id: str, path: str) -> None:
    @health.get(path, summary="Ready", operation_id=operation_id, responses={200: Readiness},
                errors=NOT_READY)
    async def readyz(request: web.Request) -> web.Response:
        """The store answers, so requests can be authenticated, and its layout is not
        newer than this keygate's (`store_layout_newer`: a later keygate migrated it,
        and this one would write its records in the older way). `policy` says which
        version serves and whether it is the one the deployment announced (an instance
        out of sync is still ready: it serves the policy its files hold)."""
        gateway = request.app[GATEWAY]
        if not await gateway.store.ping():
            raise StoreUnavailable("not ready: keygate cannot reach its key store")
        layout = await gateway.store.layout()
        if layout.newer:
            assert layout.store is not None
            raise StoreUnavailable(f"not ready: {NewerLayout(layout.store)}",
                                   code="store_layout_newer")
        policy = gateway.policy_sync.status()
        refused = policy.refused
        return json_response(
            {
                "status": "ready",
                "pid": os.getpid(),
                "policyVersion": policy.version,
                "policy": {
                    "version": policy.version,
                    "announced": policy.announced,
                    "inSync": policy.in_sync,
                    "loadedAt": iso(policy.loaded_at),
                    # the code only: /readyz answers anyone who reaches the port, and the
                    # reason names accounts, their role holders and policy lines
                    "lastRefused": None if refused is None else {
                        "code": refused.code, "at": iso(refused.at),
                        "version": refused.version,
                    },
                },
                # "bypassed" until the invalidation channel is subscribed: every request
                # then reads the store, which is correct, only slower
                "credentialCache": "trusted" if gateway.store.cache_trusted else "bypassed",
                "storeLayout": {"store": layout.store, "keygate": layout.keygate,
                                "migrated": layout.migrated},
            }
        )


_healthz("healthz", "/healthz")
_healthz("healthzV1", "/api/v1/healthz")
_readyz("readyz", "/readyz")
_readyz("readyzV1", "/api/v1/readyz")

TABLES = (health, keys.operations, external_keys.operations, export.operations,
          links.operations, account_settings.operations, audit.operations,
          policy_admin.operations, explain.operations, sessions.operations,
          openapi.operations, whoami.operations)


def all_operations() -> list[Operation]:
    return list(itertools.chain.from_iterable(table.items for table in TABLES))


async def not_stored(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """An ``on_response_prepare`` handler: an answer that says nothing of caching is
    kept by no cache (``no-store``) and sniffed by no browser (``nosniff``). Answers
    carry new tokens (create, renew), one-time links, sessions and key data (lists,
    audit, exports); one that may be cached says so itself (the page's files, the JWKS,
    the OpenAPI document)."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def build_management_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        # CSRF after the errors: its refusals are the one error shape
        middlewares=[request_id_and_errors, csrf_protection],
        client_max_size=gateway.settings.management_max_body,
    )
    app[GATEWAY] = gateway
    app.on_response_prepare.append(server_header)  # streamed answers (exports) too
    app.on_response_prepare.append(not_stored)
    operations = all_operations()
    register(app, operations, authorize)
    openapi.install(app, operations, gateway.settings)
    ui.install(app)  # the admin page: not API operations, so not in the document
    return app
