"""A TCP relay in front of the real redis-server: how a test makes keygate's store go
away at an exact point (and come back), as a network partition or a crashed server
would, without stopping the Redis that other tests share.

A cut aborts every relayed connection (RST, no orderly close) and, until
:meth:`Relay.restore`, closes each new one at once, so keygate sees exactly what a
dead server looks like: connections reset, reconnects refused. :meth:`Relay.cut_on`
arms a cut at the moment keygate sends a given command for the n-th time; that command
is not forwarded, so it fails for certain, whatever the timing.
"""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.down = False
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pattern: bytes | None = None
        self._remaining = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.down = True
        for client, upstream in list(self._links):
            for writer in (client, upstream):
                writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.down = False

    def cut_on(self, command: str, key: str, occurrence: int = 1) -> None:
        """Cut when keygate sends ``command`` on ``key`` for the ``occurrence``-th time
        (as redis-py writes it: a RESP array of bulk strings)."""
        self.cut_on_parts([command, key], occurrence)

    def cut_on_parts(self, parts: list[str], occurrence: int = 1) -> None:
        """Cut when keygate sends a command holding ``parts`` one after the other for the
        ``occurrence``-th time (e.g. a script's number of keys, its one key and its first
        argument)."""
        self._pattern = b"".join(b"$%d\r\n%s\r\n" % (len(p.encode()), p.encode())
                                 for p in parts)
        self._remaining = occurrence

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, watch=True),
                                 self._pipe(up_reader, writer, watch=False))
        finally:
            self._tasks.discard(task)
            self._links.discard(link)

    def _triggered(self, data: bytes) -> bool:
        if self._pattern is None:
            return False
        self._remaining -= data.count(self._pattern)
        if self._remaining > 0:
            return False
        self._pattern = None
        return True

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    watch: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if watch and self._triggered(data):
                    self.cut()
                    return
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(ConnectionError, OSError):
            sink.transport.abort()
