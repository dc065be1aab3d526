"""`keygate demo`: keygate on the embedded store in front of a small echo upstream."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .app import MEMORY_WARNING, build_gateway, running
from .errors import ConfigError
from .process import stop_event
from .settings import DEFAULTS_DIR, Settings
from .store import CLI_ACTOR

log = logging.getLogger("keygate")

# deploy/demo.toml, shipped inside the package (see gateway/settings.py)
DEMO_CONFIG = DEFAULTS_DIR / "demo.toml"


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


@dataclass(frozen=True)
class DemoPorts:
    """The demo's ports: None keeps the config's (or the environment's) value."""

    upstream: int = 9000
    proxy: int | None = None
    management: int | None = None
    metrics: int | None = None  # None: /metrics off, unless metrics_listen is configured


# which option moves which port, to say so when the port is taken
_PORT_OPTIONS = {
    "proxy_listen": "--proxy-port",
    "management_listen": "--management-port",
    "metrics_listen": "--metrics-port",
}


def demo_settings(settings: Settings, ports: DemoPorts, upstream_port: int) -> Settings:
    """The config's settings with the demo's ports, every route sent to the echo."""
    changes: dict[str, Any] = {
        "routes": [{**route, "upstream": f"http://127.0.0.1:{upstream_port}"}
                   for route in settings.routes],
    }
    if ports.proxy is not None:
        changes["proxy_listen"] = f"127.0.0.1:{ports.proxy}"
    if ports.management is not None:
        changes["management_listen"] = f"127.0.0.1:{ports.management}"
    if ports.metrics is not None:
        changes["metrics_listen"] = f"127.0.0.1:{ports.metrics}"
    elif settings.source.get("metrics_listen", "default") == "default":
        changes["metrics_listen"] = ""  # a demo need not take port 9108 from anyone
    return settings.with_values(**changes)


async def start_echo(port: int) -> tuple[web.AppRunner, int]:
    """The echo upstream on ``port`` (0: any free one); a taken port is a usage error
    that names the option, not a traceback."""
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"--upstream-port: the demo's echo upstream cannot listen on 127.0.0.1:{port} "
            f"({exc.strerror}); choose another port with --upstream-port"
        ) from None
    return runner, runner.addresses[0][1]


async def run_demo(settings: Settings, ports: DemoPorts = DemoPorts()) -> None:
    """Until SIGTERM or SIGINT (Ctrl-C), then the same graceful stop as ``serve``."""
    echo_runner, upstream_port = await start_echo(ports.upstream)
    try:
        settings = demo_settings(settings, ports, upstream_port)
        gateway = build_gateway(settings)
        if settings.in_memory:
            log.warning(MEMORY_WARNING)
        try:
            async with running(gateway) as (proxy_url, management_url, metrics_url, *_):
                stop = stop_event(asyncio.get_running_loop())
                issued = await gateway.lifecycle.create(
                    "acme", "demo key", ["orders-writer", "user-admin-restricted"], CLI_ACTOR
                )
                # another account's key, for the External keys tab: acme may grant it
                partner = await gateway.lifecycle.create(
                    "globex", "globex partner", ["orders-reader"], CLI_ACTOR
                )
                record, token = issued.record, issued.token
                key_h, token_h = settings.key_header, settings.token_header
                creds = f"-H '{key_h}: {record.app_key}' -H '{token_h}: {token}'"
                partner_creds = (f"-H '{key_h}: {partner.record.app_key}' "
                                 f"-H '{token_h}: {partner.token}'")
                metrics_line = (f"\n  metrics         {metrics_url}/metrics"
                                if metrics_url else "")
                print(
                    f"""
keygate demo is running (embedded memory:// store: nothing is kept)
  proxy           {proxy_url}   -> echo upstream http://127.0.0.1:{upstream_port}
  management API  {management_url}/api/v1
  admin page      {management_url}/admin/   (sign in with the key and token below){metrics_line}

A key in account "acme" with roles orders-writer and user-admin-restricted:
  API key    {record.app_key}
  API token  {token}
(the token is shown only this once; keygate keeps only its HMAC)

An authorized request through the proxy (200, the echo shows the identity headers):
  curl -i {proxy_url}/orders/42 {creds}

Without the token (401), and the key list on the management API:
  curl -i {proxy_url}/orders/42 -H '{key_h}: {record.app_key}'
  curl -s {management_url}/api/v1/accounts/acme/keys {creds}

A key of another account, "globex" (orders-reader there), for the External keys tab:
  API key    {partner.record.app_key}
  API token  {partner.token}
acme's orders refuse it (403) until acme grants it a role there (admin page, External
keys, Add: the key and orders-reader; or POST /api/v1/accounts/acme/external-keys):
  curl -i {proxy_url}/accounts/acme/orders/1 {partner_creds}

Ctrl-C stops it.""",
                    flush=True,
                )
                await stop.wait()
        except ConfigError as exc:
            raise ConfigError(_with_port_option(str(exc))) from None
    finally:
        await echo_runner.cleanup()


def _with_port_option(message: str) -> str:
    for setting, option in _PORT_OPTIONS.items():
        if message.startswith(f"setting {setting}: cannot listen"):
            return f"{message}; choose another port with {option}"
    return message
