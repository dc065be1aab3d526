"""The components one keygate process shares between its two ports, and their AppKeys.

Handlers reach them through ``request.app[GATEWAY]``; nothing here does I/O by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .auth import Gatekeeper
from .credentials import CredentialFormat, TokenHasher
from .policy import Policy
from .routes import RouteTable
from .settings import Settings
from .store import Store


@dataclass
class Gateway:
    settings: Settings
    store: Store
    gatekeeper: Gatekeeper
    routes: RouteTable
    hasher: TokenHasher
    fmt: CredentialFormat
    clock: Callable[[], float] = field(default=time.time)

    @property
    def policy(self) -> Policy:
        return self.gatekeeper.policy


GATEWAY = web.AppKey("gateway", Gateway)
HTTP_CLIENT = web.AppKey("http_client", aiohttp.ClientSession)
