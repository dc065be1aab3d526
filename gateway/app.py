"""Wiring only: settings → components → the proxy port's server, the management
application and the decision port's server → listening sites."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web

from . import decision, proxy
from .accesslog import AccessLogger, access_logger
from .connections import ConnectionGuard, guard_for, raise_file_limit, server_logger
from .context import Gateway
from .credentials import TokenHasher
from .decision_server import DecisionServer
from .errors import ConfigError, StoreUnavailable
from .escalation import Delegation
from .forwarded import TrustedProxies
from .http_head import AIOHTTP_LIMITS
from .lifecycle import KeyLifecycle
from .management import build_management_app
from .management.metrics import build_metrics_app
from .middleware import new_request_id
from .pipeline import Pipeline
from .pipeline.authenticators import BearerAuthenticator, HeaderAuthenticator
from .pipeline.authorizer import CasbinAuthorizer
from .pipeline.mutators import IdentityHeaders, IdentityToken
from .policy import Policy
from .policy.sync import PolicyInvalid, PolicySync, RolesStillHeld
from .process import runner_shutdown_timeout, stop_event, stop_serving
from .ratelimit import AuthFailureLimiter
from .renewal_gauge import RenewalGauge
from .routes import parse_routes
from .sessions.service import Sessions
from .settings import Settings, load_secrets, url_without_passwords
from .store import CacheSettings, NewerLayout, Store
from .telemetry import Telemetry, multiprocess_dir, worker_exited, workers_share_metrics
from .upstream import UpstreamPool
from .usage import Denials, LastUsed, UsageObserver

log = logging.getLogger("keygate")

MEMORY_WARNING = (
    "store_url is memory://: keys live inside this process only and are lost when it "
    "stops; use redis://… for anything real"
)


def build_gateway(
    settings: Settings, *, clock: Callable[[], float] = time.time, store: Store | None = None
) -> Gateway:
    """Everything that can be wrong with the configuration fails here, before listening."""
    server_secrets, generated = load_secrets(settings)
    if generated:
        log.warning("no server secret configured; using a random one for this process")
    policy = Policy.load(settings.model_path, settings.policies_dir)
    routes = parse_routes(settings.routes)
    if store is None:
        store = Store.from_url(
            settings.store_url,
            settings.store_prefix,
            clock,
            settings.audit_max_events,
            CacheSettings(
                size=settings.credential_cache_size,
                ttl=settings.credential_cache_ttl,
                unknown_size=max(1, settings.credential_cache_size // 10),
                unknown_ttl=settings.unknown_key_cache_ttl,
            ),
            settings.store_max_connections,
            settings.audit_max_access_events,
            settings.search_index_max_keys,
        )
    decision.check_settings(settings)
    fmt = settings.credential_format
    hasher = TokenHasher(server_secrets)
    header_auth = HeaderAuthenticator(
        store, hasher, fmt, settings.key_header, settings.token_header,
        settings.max_credential_length,
    )
    # metrics off (no metrics_listen): nothing on the request path is timed or counted
    telemetry = Telemetry(settings.metrics_listen is not None, multiprocess_dir())
    store.observer = telemetry.store
    last_used = LastUsed(store, settings.last_used_interval, clock)
    denials = Denials(store, settings.denial_sample_seconds, clock, telemetry.denials)
    limiter = AuthFailureLimiter(
        store, settings.auth_failure_limit, settings.auth_failure_key_limit,
        settings.auth_failure_window, clock,
    )
    authorizer = CasbinAuthorizer(policy, settings.decision_cache_size, telemetry.pipeline)
    sessions = Sessions(
        store=store, server_secrets=server_secrets, algorithm=settings.jwt_algorithm,
        issuer=settings.jwt_issuer, audience=settings.jwt_audience,
        session_ttl=settings.session_ttl, leeway=settings.jwt_leeway,
        identity_audience=settings.identity_token_audience,
        identity_ttl=settings.identity_token_ttl,
        # JWT times are checked against the system clock (pyjwt's), so they are made by it
        key_files=settings.jwt_private_key_files,
    )
    pipeline = Pipeline(
        routes,
        # the key/token pair first: a request carrying it and an upstream's own Bearer
        # token is the pair's, and its Authorization header goes upstream untouched
        [header_auth, BearerAuthenticator(store, sessions, settings.session_cookie)],
        authorizer,
        [IdentityHeaders(settings.identity_header_prefix),
         IdentityToken(settings.identity_token_header, sessions)],
        UsageObserver(last_used, denials),
        limiter,
        telemetry.pipeline,
    )
    policy_sync = PolicySync(
        authorizer, store, settings.model_path, settings.policies_dir,
        instance=f"{socket.gethostname()} pid {os.getpid()}", clock=clock,
        watch_interval=settings.policy_watch_interval, reloaded=telemetry.reloaded,
        refused=telemetry.policy_refused,
    )
    telemetry.watch_policy(policy_sync.status)
    return Gateway(
        settings=settings,
        store=store,
        pipeline=pipeline,
        routes=routes,
        hasher=hasher,
        fmt=fmt,
        lifecycle=KeyLifecycle(store, fmt, hasher, settings.token_link_ttl, clock),
        last_used=last_used,
        denials=denials,
        registry=telemetry.registry,
        telemetry=telemetry,
        delegation=Delegation(authorizer),
        renewal_gauge=RenewalGauge(
            store, settings.renewal_gauge_interval, clock, telemetry.registry
        ),
        trusted_proxies=(
            TrustedProxies(settings.trusted_proxies) if settings.trusted_proxies else None
        ),
        policy_sync=policy_sync,
        sessions=sessions,
        clock=clock,
    )


def upstream_pool(settings: Settings) -> UpstreamPool:
    """The proxy's connections to the upstreams (keep-alive pools, no decompression,
    no headers of its own)."""
    return UpstreamPool(
        max_connections=settings.upstream_max_connections,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        idle_timeout=settings.upstream_idle_timeout,
    )


def proxy_handler(
    gateway: Gateway, pool: UpstreamPool
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The proxy port's one handler, forwarding through ``pool`` (which the caller
    closes once the port has stopped)."""
    settings = gateway.settings
    forwarder = proxy.Forwarder(
        pool, (settings.key_header, settings.token_header, settings.identity_token_header),
        settings.identity_header_prefix, settings.session_cookie,
    )
    return proxy.ProxyPort(gateway, forwarder).request_handler()


def proxy_runner(
    gateway: Gateway, pool: UpstreamPool, shutdown_timeout: float, **server_options: Any
) -> web.ServerRunner:
    """The proxy port on aiohttp's low-level server: its one handler does the routing,
    so an Application's router and middleware chain would only add work per request."""
    # auto_decompress=False: a gzip body must reach the upstream as the client sent it.
    server = web.Server(proxy_handler(gateway, pool), auto_decompress=False,
                        **server_options)
    return web.ServerRunner(server, shutdown_timeout=shutdown_timeout)


def decision_server(gateway: Gateway, guard: ConnectionGuard) -> DecisionServer:
    """The decision API on keygate's own HTTP/1.1 server (gateway.decision_server),
    behind the same connection guard: it reads each head once and writes its answers
    itself, with no aiohttp request or response per decision."""
    access_log = AccessLogger(access_logger(), "") if gateway.settings.access_log else None
    return DecisionServer(decision.DecisionPort(gateway), guard, access_log)


class Listening(NamedTuple):
    """Base URLs of the ports a process serves (``metrics`` and ``decision`` None when
    they are off)."""

    proxy: str
    management: str
    metrics: str | None
    decision: str | None = None


async def check_store_layout(store: Store) -> None:
    """Refuse to serve a store that a later keygate migrated (this one would write its
    records in the older way); say so when ``keygate store migrate`` has work to do. A
    store that does not answer yet is not checked here: readiness checks it on every
    probe."""
    try:
        layout = await store.layout_at_start()
    except StoreUnavailable:
        return
    if layout.newer:
        assert layout.store is not None
        raise ConfigError(f"store_url: {NewerLayout(layout.store)}")
    if not layout.migrated:
        log.warning("the key store's layout is %s, this keygate's is %d: each account's "
                    "indexes are built on its first listing; once every instance runs this "
                    "keygate, run `keygate store migrate` to build them all now",
                    "not recorded" if layout.store is None else layout.store, layout.keygate)


@contextlib.asynccontextmanager
async def running(gateway: Gateway, reuse_port: bool = False) -> AsyncIterator[Listening]:
    """The ports listening behind the process's connection guard; yields their base
    URLs. The store's Lua scripts are loaded on its nodes first. Background work starts
    once every port is bound (a busy port is a configuration error with nothing to
    undo). On the way out, the graceful shutdown of ``gateway.process`` (bounded by
    ``shutdown_timeout``), then batched writes, and the store last."""
    settings = gateway.settings
    # The store's Lua scripts on every node before a port listens: a burst of first
    # requests meets no NOSCRIPT (each would wait for their load).
    if not await gateway.store.load_scripts():
        log.warning("the store's Lua scripts are not loaded on every master yet; a "
                    "master that lacks them gets them on the first call that needs them")
    shutdown_timeout = runner_shutdown_timeout(settings.shutdown_timeout)
    server_options: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": settings.keepalive_timeout,
        "logger": server_logger(),
        **AIOHTTP_LIMITS,
    }
    if settings.access_log:
        server_options.update(access_log=access_logger(), access_log_class=AccessLogger)
    pool = upstream_pool(settings)
    runners: list[tuple[str, web.BaseRunner]] = [
        ("proxy_listen", proxy_runner(gateway, pool, shutdown_timeout, **server_options)),
        ("management_listen", web.AppRunner(
            build_management_app(gateway), shutdown_timeout=shutdown_timeout, **server_options
        )),
    ]
    if settings.metrics_listen is not None:
        runners.append(("metrics_listen", web.AppRunner(
            build_metrics_app(gateway), shutdown_timeout=shutdown_timeout, **server_options
        )))
    guard = guard_for(settings, new_request_id)
    servers: list[tuple[str, web.BaseRunner | DecisionServer]] = [*runners]
    if settings.decision_listen is not None:
        servers.append(("decision_listen", decision_server(gateway, guard)))
    listeners: list[asyncio.Server] = []
    urls: dict[str, str] = {}
    started = False
    try:
        for name, runner in servers:
            host, port = getattr(settings, name)
            if isinstance(runner, DecisionServer):
                opening = runner.listen(host, port, reuse_port)
            else:
                await runner.setup()
                assert runner.server is not None
                opening = guard.listen(runner.server, host, port, reuse_port)
            try:
                listener = await opening
            except OSError as exc:
                raise ConfigError(
                    f"setting {name}: cannot listen on {host}:{port} ({exc.strerror})"
                ) from None
            listeners.append(listener)
            bound = listener.sockets[0].getsockname()
            urls[name] = f"http://{bound[0]}:{bound[1]}"
        gateway.start()
        started = True
        yield Listening(urls["proxy_listen"], urls["management_listen"],
                        urls.get("metrics_listen"), urls.get("decision_listen"))
    finally:
        # the decision server's cleanup() drains as the runners' does
        await stop_serving(listeners, [runner for _, runner in servers],  # type: ignore[misc]
                           guard, settings.shutdown_timeout, quiet=not started)
        await pool.close()  # after the proxy port: no request is using it any more
        await guard.close()
        await gateway.close()
        if started:
            log.info("stopped: batched writes done, store closed",
                     extra={"event": "shutdown.done"})


async def reload_policy(gateway: Gateway, by: str = "") -> bool:
    """Load model.conf and policies/ again, swap them in and announce the version
    (SIGHUP; see gateway.policy.sync). A broken file, or one that drops a role keys
    still hold, keeps the old policy; the refusal is logged there."""
    try:
        await gateway.policy_sync.reload(by=by)
    except (PolicyInvalid, RolesStillHeld, StoreUnavailable):
        return False
    return True


async def serve(
    settings: Settings,
    on_ready: Callable[[str, str], None] | None = None,
    reuse_port: bool = False,
) -> None:
    files = raise_file_limit()  # before the connection cap is derived from it
    if files is not None:
        before, after = files
        if after > before:
            log.info("open file limit raised from %d to %d (the hard limit)", before, after)
        else:
            log.info("open file limit: %d (the hard limit, or not raisable)", after)
    gateway = build_gateway(settings)
    if settings.in_memory:
        log.warning(MEMORY_WARNING)
    if not await gateway.store.ping():
        log.warning("the store at %s does not answer yet; requests get 503 until it does",
                    url_without_passwords(settings.store_url))
    try:  # no stored JWT signing key opens with the server secret, or the store's layout
        # is a later keygate's: say so, do not start
        await gateway.sessions.check_at_start()
        await check_store_layout(gateway.store)
    except ConfigError:
        await gateway.close()
        raise
    loop = asyncio.get_running_loop()
    stop = stop_event(loop)  # SIGTERM, SIGINT: the graceful shutdown of running()
    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        by = f"{gateway.policy_sync.instance} (SIGHUP)"
        task = loop.create_task(reload_policy(gateway, by))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    async with running(gateway, reuse_port) as listening:
        proxy_url, management_url, metrics_url, decision_url = listening
        log.info("proxy on %s, management API on %s, metrics on %s, decision API on %s "
                 "(pid %d)", proxy_url, management_url, metrics_url or "(off)",
                 decision_url or "(off)", os.getpid(),
                 extra={"event": "listening", "pid": os.getpid()})
        if on_ready is not None:
            on_ready(proxy_url, management_url)
        await stop.wait()


def run_workers(settings: Settings, workers: int, config_file: str | None) -> int:
    """N processes serving the same ports (SO_REUSEPORT: the kernel spreads connections).

    Each worker loads the settings itself and keeps its own caches; the invalidation
    channel keeps them coherent. The parent only supervises: a signal stops them all,
    and a worker that dies takes the others down so the service manager sees it.
    With metrics on, the workers keep them in a private directory of this run, so that
    whichever answers a scrape renders the sum of all (see ``gateway.telemetry``).
    """
    if settings.in_memory:
        raise ConfigError(
            "setting store_url: --workers needs a shared store; memory:// lives inside one "
            "process, so each worker would have its own keys"
        )
    build_gateway(settings)  # fail on a bad config here, once, not in N workers
    from .logs import configure_logging

    configure_logging(log.isEnabledFor(logging.DEBUG), settings.log_format, with_pid=True)
    if settings.metrics_listen is None:
        return _supervise(workers, config_file, None)
    with workers_share_metrics() as metrics_dir:
        return _supervise(workers, config_file, metrics_dir)


WORKER_CONFIG_ERROR = 2  # a worker that cannot listen exits with it, as `keygate serve` does


def _supervise(workers: int, config_file: str | None, metrics_dir: str | None) -> int:
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_worker, args=(config_file, log.isEnabledFor(logging.DEBUG)),
                        name=f"keygate-worker-{i}")
        for i in range(workers)
    ]
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping and _frame is not None:  # a signal, not a worker's death
            log.info("%s received: passing it to %d workers", signal.Signals(signum).name,
                     sum(1 for child in children if child.is_alive()),
                     extra={"event": "workers.stopping"})
        stopping = True
        for child in children:
            if child.is_alive():
                child.terminate()

    def hangup(signum: int, _frame: Any) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGHUP)

    # before any worker exists: a stop signal must never leave workers without a parent
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hangup)
    for child in children:
        if not stopping:  # a stop that came this early leaves nothing to start
            child.start()
    log.info("supervising %d workers (pid %d): pids %s", workers, os.getpid(),
             ", ".join(str(c.pid) for c in children),
             extra={"event": "workers.started", "pid": os.getpid(),
                    "workers": [c.pid for c in children]})
    from multiprocessing.connection import wait

    exited: set[int] = set()
    worker_died = False
    while any(child.is_alive() for child in children):
        wait([c.sentinel for c in children if c.is_alive()], timeout=1.0)
        if metrics_dir is not None:
            for child in children:
                if child.exitcode is not None and child.pid not in exited:
                    assert child.pid is not None
                    exited.add(child.pid)
                    worker_exited(child.pid, metrics_dir)
        if not stopping and any(c.exitcode not in (None, 0) for c in children):
            log.error("a worker died; stopping the others")
            stop(signal.SIGTERM, None)
            worker_died = True
    # a worker stopped by the signal itself (it was still starting) has not failed
    stopped = (0, -signal.SIGTERM, -signal.SIGINT) if stopping else (0,)
    failed = [c for c in children if c.pid is not None and c.exitcode not in stopped]
    for child in failed:
        log.error("%s (pid %s) exited with %s", child.name, child.pid, child.exitcode,
                  extra={"event": "workers.failed", "workerPid": child.pid})
    log.info("workers stopped", extra={"event": "workers.stopped", "pid": os.getpid()})
    if any(c.exitcode == WORKER_CONFIG_ERROR for c in failed):
        return WORKER_CONFIG_ERROR  # a port in use: the CLI's "bad configuration" (2)
    return 1 if failed or worker_died else 0


def _worker(config_file: str | None, verbose: bool = False) -> None:
    from .logs import configure_logging
    from .process import run_event_loop
    from .settings import load_settings

    settings = load_settings(config_file)
    configure_logging(verbose, settings.log_format, with_pid=True)
    log.info("%s started (pid %d)", multiprocessing.current_process().name, os.getpid(),
             extra={"event": "worker.started", "pid": os.getpid()})
    try:
        run_event_loop(serve(settings, reuse_port=True))
    except ConfigError as exc:  # a port in use: one line, as without --workers
        print(f"keygate: configuration error: {exc}", file=sys.stderr)
        sys.exit(WORKER_CONFIG_ERROR)
