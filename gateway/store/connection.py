"""The Redis client a store URL names."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

# one in-process server per memory:// URL, so every Store of this process on memory://X
# sees the same keys and hears the same invalidations
_MEMORY_SERVERS: dict[str, Any] = {}


def client_from_url(url: str, max_connections: int) -> aioredis.Redis:
    """A client for ``redis://``, ``rediss://`` and ``unix://`` URLs, or for
    ``memory://NAME``: an embedded server (fakeredis) shared by this process."""
    if url.startswith("memory://"):
        import fakeredis  # only the embedded store needs it

        server = _MEMORY_SERVERS.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(
            server=server,
            decode_responses=True,
            connection_pool_class=aioredis.BlockingConnectionPool,
            max_connections=max_connections,
        )
    # A blocking pool queues requests beyond max_connections instead of failing them: a
    # burst of cold keys waits a little rather than getting 503s.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
