"""`keygate demo`: keygate on the embedded store in front of a small echo upstream."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from .app import MEMORY_WARNING, build_gateway, running
from .settings import PROJECT_ROOT, load_settings
from .store import CLI_ACTOR

log = logging.getLogger("keygate")

DEMO_CONFIG = PROJECT_ROOT / "deploy" / "demo.toml"


async def echo(request: web.Request) -> web.Response:
    """Shows what the upstream receives: note the identity headers and no token."""
    return web.json_response(
        {
            "upstream": "keygate demo echo",
            "method": request.method,
            "path": request.path_qs,
            "headers": {k: v for k, v in request.headers.items()},
        }
    )


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def run_demo(config: Path = DEMO_CONFIG, upstream_port: int = 9000) -> None:
    settings = load_settings(config)
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    settings = settings.with_values(
        routes=[{**route, "upstream": upstream_url} for route in settings.routes]
    )
    gateway = build_gateway(settings)
    log.warning(MEMORY_WARNING)
    upstream = web.AppRunner(echo_app(), access_log=None)
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
    try:
        async with running(gateway) as (proxy_url, management_url, _):
            issued = await gateway.lifecycle.create(
                "acme", "demo key", ["orders-writer", "user-admin-restricted"], CLI_ACTOR
            )
            record, token = issued.record, issued.token
            key_h, token_h = settings.key_header, settings.token_header
            creds = f"-H '{key_h}: {record.app_key}' -H '{token_h}: {token}'"
            print(
                f"""
keygate demo is running (embedded memory:// store: nothing is kept)
  proxy           {proxy_url}   -> echo upstream http://127.0.0.1:{upstream_port}
  management API  {management_url}/api/v1

A key in account "acme" with roles orders-writer and user-admin-restricted:
  API key    {record.app_key}
  API token  {token}
(the token is shown only this once; keygate keeps only its HMAC)

An authorized request through the proxy (200, the echo shows the identity headers):
  curl -i {proxy_url}/orders/42 {creds}

Without the token (401), and the key list on the management API:
  curl -i {proxy_url}/orders/42 -H '{key_h}: {record.app_key}'
  curl -s {management_url}/api/v1/accounts/acme/keys {creds}

Ctrl-C stops it.""",
                flush=True,
            )
            await asyncio.Event().wait()
    finally:
        await upstream.cleanup()
