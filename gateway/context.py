"""The components one keygate process shares between its two ports, and their AppKeys.

Management handlers reach them through ``request.app[GATEWAY]``; the proxy port's
handler holds the Gateway itself. Nothing here does I/O by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from .credentials import CredentialFormat, TokenHasher
from .escalation import Delegation
from .forwarded import TrustedProxies
from .lifecycle import KeyLifecycle
from .pipeline import Pipeline
from .policy import Policy
from .policy.sync import PolicySync
from .renewal_gauge import RenewalGauge
from .routes import RouteTable
from .sessions.service import Sessions
from .settings import Settings
from .store import Store
from .telemetry import Telemetry
from .usage import Denials, LastUsed


@dataclass
class Gateway:
    settings: Settings
    store: Store
    pipeline: Pipeline
    routes: RouteTable
    hasher: TokenHasher
    fmt: CredentialFormat
    lifecycle: KeyLifecycle
    last_used: LastUsed
    denials: Denials
    registry: CollectorRegistry
    # every metric; its request-path parts are None when metrics_listen is off
    telemetry: Telemetry
    delegation: Delegation
    # counted in the background (start/close), rendered by the metrics port
    renewal_gauge: RenewalGauge
    # None when no proxy is trusted: the peer is then the client
    trusted_proxies: TrustedProxies | None
    # reloads, the announced version, the file watch
    policy_sync: PolicySync
    # session and identity tokens: the signing keys in force
    sessions: Sessions
    clock: Callable[[], float] = field(default=time.time)

    @property
    def policy(self) -> Policy:
        return self.pipeline.authorizer.policy

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def start(self) -> None:
        """Background work of a running process: cache invalidation, policy
        announcements and signing key rotations, the policy file watch (when on),
        last-used writes, and the renewal gauge's count when the metrics port is on
        (nobody reads it otherwise)."""
        self.store.on_signing_keys_changed = self.sessions.heard
        self.store.start_invalidation()
        self.sessions.start()
        self.policy_sync.start()
        self.last_used.start()
        if self.settings.metrics_listen is not None:
            self.renewal_gauge.start()

    async def close(self) -> None:
        """Write what is still buffered, then let go of the store."""
        await self.policy_sync.close()
        await self.sessions.close()
        await self.renewal_gauge.stop()
        await self.last_used.stop()
        await self.denials.drain()
        await self.store.close()


GATEWAY = web.AppKey("gateway", Gateway)
