"""keygate in a thread with its own event loop, for tests whose client is blocking
(http.client, requests, schemathesis, playwright's sync API).

A subclass writes ``serve(stop)``: start keygate, note what the test needs, then
``await stop.wait()``. :func:`serving` starts it, waits until it is ready (or failed:
its exception is raised in the test), and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import TypeVar

import pytest

READY_WITHIN = 30.0  # seconds; a deadline, not a timing check


class InThread:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        raise NotImplementedError

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        await self.serve(self.stop)

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()


Served = TypeVar("Served", bound=InThread)


@contextlib.contextmanager
def serving(server: Served, redis_url: str) -> Iterator[Served]:
    if redis_url.startswith("memory://"):
        pytest.skip("keygate runs in a thread of its own here: needs the private redis")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(READY_WITHIN), "keygate did not start"
    if server.error is not None:
        raise server.error
    try:
        yield server
    finally:
        if server.loop is not None and server.stop is not None and not server.loop.is_closed():
            server.loop.call_soon_threadsafe(server.stop.set)
        thread.join(READY_WITHIN)
