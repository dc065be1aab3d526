"""Stopping a background loop without trusting cancellation alone.

A cancellation that reaches the Redis client in the middle of a command can come back
as a connection error, which the store turns into StoreUnavailable, which a loop that
outlives store outages catches and survives: it would then sleep on, and shutdown would
wait for it forever. So each loop also watches an Event, and stopping sets it too.
"""

from __future__ import annotations

import asyncio

STOP_TIMEOUT = 5.0  # the store client's own socket timeout: one command in flight


async def stop_task(task: asyncio.Task[None], stopping: asyncio.Event) -> None:
    """Set ``stopping``, cancel ``task`` and wait for it, at most ``STOP_TIMEOUT``
    seconds: shutdown never hangs on a background loop."""
    stopping.set()
    task.cancel()
    await asyncio.wait({task}, timeout=STOP_TIMEOUT)
