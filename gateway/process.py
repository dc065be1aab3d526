"""How a keygate process runs and stops: the event loop, the stop signals, and the
graceful shutdown of its ports.

Stopping (SIGTERM, SIGINT) is one bounded sequence, logged step by step:

1. **No new connections.** Every listening socket closes at once, so a load balancer's
   next connection is refused and goes to another instance instead of waiting here.
2. **Requests in flight finish.** Idle keep-alive connections close; a connection in
   the middle of a request is answered, then closed (aiohttp's graceful shutdown:
   ``BaseRunner.cleanup`` with ``shutdown_timeout``). All ports drain at the same time,
   so the wait is ``shutdown_timeout`` in all, not once per port.
3. **What is left is cut.** At ``shutdown_timeout`` every connection still open is
   aborted (through the connection guard, which holds them all), and the log says how
   many requests were cut. aiohttp's own cleanup then has :data:`CUT_GRACE` seconds to
   finish; a handler that ignores all of this (an upstream that never answers) is not
   waited for: it is cancelled when the event loop ends.
4. **Batched writes, then the store** (``Gateway.close``, by the caller): last-used
   times and sampled denials are written, and the store connection closes.

So a stop takes at most ``shutdown_timeout`` + :data:`CUT_GRACE` seconds plus the final
writes, whatever clients and upstreams do, and a process that stopped this way exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .connections import ConnectionGuard

log = logging.getLogger("keygate")

# Seconds aiohttp's cleanup may take after the cut, before it is no longer waited for.
CUT_GRACE = 2.0


def runner_shutdown_timeout(timeout: float) -> float:
    """The ``shutdown_timeout`` to give aiohttp's runners for keygate's ``timeout``.

    A little longer than keygate's own, so that keygate cuts first: aiohttp then finds
    the cut connections gone and finishes its cleanup at once. Were aiohttp first, it
    would cancel the request and wait for the handler once more, as long again (its
    deadline is rounded up to a whole second past 5 s, hence half a second of margin
    within :data:`CUT_GRACE`)."""
    return timeout + 0.5
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_event_loop(coro: Awaitable[Any]) -> Any:
    """uvloop when it is installed (it is a dependency), else asyncio's own loop."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
        return asyncio.run(coro)  # type: ignore[arg-type]


def stop_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (logged), in place of their default actions,
    which would end the process without the graceful shutdown."""
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            log.info("%s received: stopping", signal.Signals(signum).name,
                     extra={"event": "shutdown.signal"})
        stop.set()

    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(signum, on_signal, signum)
    return stop


@dataclass(frozen=True)
class Drained:
    """What stopping the ports found: requests in flight when it began, and how many of
    them had to be cut at ``shutdown_timeout``."""

    in_flight: int
    cut: int


async def stop_serving(
    listeners: Iterable[asyncio.Server],
    runners: Iterable[web.BaseRunner],
    guard: ConnectionGuard,
    timeout: float,
    *,
    quiet: bool = False,
) -> Drained:
    """Steps 1 to 3 of the module docstring. ``runners`` must have been made with
    ``shutdown_timeout=runner_shutdown_timeout(timeout)``. ``quiet``: a process that
    never finished starting logs nothing of it."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for listener in listeners:
        listener.close()
    in_flight = len(guard.busy)
    if not quiet:
        log.info(
            "stopping: new connections are refused; %d requests in flight, waiting up to "
            "%g s for them (shutdown_timeout)", in_flight, timeout,
            extra={"event": "shutdown.draining", "inFlight": in_flight},
        )
    cleanups = [loop.create_task(runner.cleanup()) for runner in runners]
    _, pending = await asyncio.wait(cleanups, timeout=timeout) if cleanups else ((), set())
    cut = 0
    if pending:
        remaining = [*guard.busy, *guard.idle, *guard.heads]
        cut = len(guard.busy)
        for connection in remaining:
            connection.abort()
        log.warning(
            "shutdown_timeout (%g s) reached: cut %d requests still in flight and closed "
            "%d connections", timeout, cut, len(remaining),
            extra={"event": "shutdown.cut", "cut": cut, "connections": len(remaining)},
        )
        _, pending = await asyncio.wait(pending, timeout=CUT_GRACE)
        if pending:  # a handler that outlives its connection: not waited for
            log.warning("%d ports did not finish closing %g s after the cut; not waiting "
                        "for them", len(pending), CUT_GRACE,
                        extra={"event": "shutdown.abandoned"})
            for task in pending:
                task.cancel()
    for task in cleanups:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("closing a port failed", exc_info=task.exception(),
                      extra={"event": "shutdown.error"})
    if not quiet:
        log.info(
            "stopped serving after %.1f s: %d of %d requests in flight finished, %d cut",
            loop.time() - began, max(in_flight - cut, 0), in_flight, cut,
            extra={"event": "shutdown.drained", "inFlight": in_flight, "cut": cut},
        )
    return Drained(in_flight, cut)
