"""The Redis client a store URL names.

``redis://``, ``rediss://`` and ``unix://`` name one server (redis-py's own URL format).
``redis+sentinel://`` names a master through Redis Sentinel::

    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/SERVICE[?db=N
        &sentinel_username=…&sentinel_password=…]

HOST:PORT are sentinels (port 26379 if left out; an IPv6 address in brackets), SERVICE
the name they monitor the master under (``sentinel monitor SERVICE …``), USER and
PASSWORD the master's credentials (percent-encoded), ``db`` the database (0 if left
out), ``sentinel_username`` and ``sentinel_password`` the sentinels' own credentials if
they require them. Every connection asks the sentinels where the master is, so after a
failover new connections — the invalidation listener's included — reach the new master.

``redis+cluster://`` names a Redis Cluster by some of its nodes::

    redis+cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]

The client learns the rest of the cluster from them (port 6379 if left out). On a
cluster the store uses its hash-tagged layout (``names.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
DEFAULT_CLUSTER_PORT = 6379
MAX_CLUSTER_NODES = 16  # startup nodes only: the client discovers the others
DEFAULT_SENTINEL_PORT = 26379
MAX_SENTINELS = 16  # each is a client of its own; a quorum never needs more
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")
_OPTIONS = frozenset({"db", "sentinel_username", "sentinel_password"})

# one in-process server per memory:// URL, so every Store of this process on memory://X
# sees the same keys and hears the same invalidations
_MEMORY_SERVERS: dict[str, Any] = {}

# The same client options for one server and for a sentinel-managed master.
_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
# Asking a sentinel is on the path of every new connection: a sentinel that does not
# answer at once is skipped for the next one (no retry with backoff: seconds of it, per
# sentinel, before a 503 or a new master's address).
_SENTINEL_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1, "socket_timeout": 1, "retry": Retry(NoBackoff(), 0),
}
POOL_WAIT = 5  # seconds a store call waits for a free connection before failing


# redis-py's cluster client, when a call on a node meets a dropped connection or a
# timeout, disconnects that node's idle connections while other calls may be taking
# them: such a call then fails inside redis-py's connection code with an AttributeError
# or TypeError (the connection's writer gone under it) instead of a ConnectionError.
# It is a connection lost, not a bug of keygate's (no frame of keygate's runs there):
# 503, as for any. (Reproduced in tests/test_cluster.py by cutting client connections
# under load.)
_CONNECTION_CODE = "redis.asyncio.connection"
# A cluster client that cannot (re)discover the cluster — no startup node answers, or
# the nodes do not yet cover every slot — raises RedisClusterException, which is not a
# RedisError (the class also stands for misuse, such as a command without a key). Raised
# by its discovery, it means the store cannot serve now.
_CLUSTER_CODE = "redis.asyncio.cluster"
_DISCOVERY = "initialize"

# What a call on the Redis client may raise when the store is lost: RedisError, or one
# of the above (each judged by lost_store).
CLIENT_FAILURES = (
    redis.exceptions.RedisError, redis.exceptions.RedisClusterException,
    AttributeError, TypeError,
)


def lost_store(exc: BaseException) -> bool:
    """Whether an exception that is not a RedisError still means a lost store: raised in
    redis-py's connection code, or by the cluster client's discovery."""
    if isinstance(exc, redis.exceptions.RedisClusterException):
        return _raised_in(exc, _CLUSTER_CODE, _DISCOVERY)
    return isinstance(exc, AttributeError | TypeError) and _raised_in(exc, _CONNECTION_CODE)


def _raised_in(exc: BaseException, module: str, function: str | None = None) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__") == module and (
                function is None or frame.f_code.co_name == function):
            return True
        tb = tb.tb_next
    return False


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (its ``repr`` shows no password)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:
        hosts = _addresses(self.sentinels)
        return f"SentinelURL({SENTINEL_SCHEME}://{hosts}/{self.service}?db={self.db})"


def _addresses(addresses: tuple[tuple[str, int], ...]) -> str:
    """HOST:PORT,… as a URL writes them (an IPv6 address in brackets)."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def is_cluster_url(url: str) -> bool:
    return url.lower().startswith(CLUSTER_SCHEME + "://")


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL (its ``repr`` shows no password)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"ClusterURL({CLUSTER_SCHEME}://{_addresses(self.nodes)})"


def check_redis_url(url: str) -> None:
    """Raise ValueError unless redis-py reads ``url`` (``redis://``, ``rediss://``,
    ``unix://``): host, port, database and options. Its own message is not repeated:
    it may quote part of a password (a password holding '/' reads as the port)."""
    try:
        aioredis.ConnectionPool.from_url(url)  # reads the URL; connects to nothing
    except (ValueError, TypeError):
        raise ValueError(
            "redis-py cannot read this URL: check the host, the port (1-65535), the "
            "database number and the options; percent-encode a password holding "
            "'/', '?', '#' or '@'"
        ) from None


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse a ``redis+cluster://`` URL; a ValueError says what is wrong without
    repeating any password."""
    if len(url) > 4096:
        raise ValueError("a redis+cluster:// URL of more than 4096 characters")
    parts = urlsplit(url)
    if parts.scheme.lower() != CLUSTER_SCHEME:
        raise ValueError("expected redis+cluster://")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a redis+cluster:// URL is only nodes: "
                         "redis+cluster://HOST:PORT,HOST:PORT (a cluster has one database)")
    credentials, at, hosts = parts.netloc.rpartition("@")
    if not at:
        credentials = ""
    if not hosts:
        raise ValueError("expected at least one node: redis+cluster://HOST:PORT,…")
    listed = hosts.split(",")
    if len(listed) > MAX_CLUSTER_NODES:
        raise ValueError(f"more than {MAX_CLUSTER_NODES} nodes")
    nodes = tuple(_address(part, DEFAULT_CLUSTER_PORT, "node") for part in listed)
    if len(set(nodes)) != len(nodes):
        raise ValueError("a node is listed twice")
    username, password = _credentials(credentials)
    return ClusterURL(nodes=nodes, username=username, password=password)


def _credentials(text: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    user, colon, secret = text.partition(":")
    if not colon:  # "name@": a user or a password? Said explicitly instead of guessed
        raise ValueError("credentials are written USER:PASSWORD@ or :PASSWORD@")
    return unquote(user) or None, unquote(secret)


def _sentinel_address(part: str) -> tuple[str, int]:
    return _address(part, DEFAULT_SENTINEL_PORT, "sentinel")


def _address(part: str, default_port: int, what: str) -> tuple[str, int]:
    if part.startswith("["):  # [IPv6]:PORT
        host, sep, rest = part[1:].partition("]")
        if not sep or not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise ValueError(f"a {what}'s IPv6 address must be written [ADDRESS]:PORT")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"expected [ADDRESS]:PORT for an IPv6 {what}")
    else:
        host, sep, port_text_or_empty = part.partition(":")
        port_text = port_text_or_empty if sep else None
        if not _HOST.fullmatch(host):
            raise ValueError(f"each {what} must be HOST or HOST:PORT, separated by commas")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise ValueError(f"a {what}'s port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL; a ValueError says what is wrong without
    repeating any password."""
    if len(url) > 4096:
        raise ValueError("a redis+sentinel:// URL of more than 4096 characters")
    parts = urlsplit(url)
    if parts.scheme.lower() != SENTINEL_SCHEME:
        raise ValueError("expected redis+sentinel://")
    if parts.fragment:
        raise ValueError("a redis+sentinel:// URL has no #fragment")
    credentials, at, hosts = parts.netloc.rpartition("@")
    if not at:
        credentials = ""
    if not hosts:
        raise ValueError("expected at least one sentinel: redis+sentinel://HOST:PORT,…/SERVICE")
    listed = hosts.split(",")
    if len(listed) > MAX_SENTINELS:
        raise ValueError(f"more than {MAX_SENTINELS} sentinels")
    sentinels = tuple(_sentinel_address(part) for part in listed)
    if len(set(sentinels)) != len(sentinels):
        raise ValueError("a sentinel is listed twice")
    service = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not _SERVICE.fullmatch(service):
        raise ValueError(
            "expected the monitored service's name after the sentinels: "
            "redis+sentinel://HOST:PORT,…/SERVICE (letters, digits, '.', '_', '-')"
        )
    username, password = _credentials(credentials)
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query),
                          max_num_fields=len(_OPTIONS))
    except ValueError:
        raise ValueError(
            "the query takes db, sentinel_username and sentinel_password, each once"
        ) from None
    for name, value in pairs:
        if name not in _OPTIONS:
            raise ValueError(f"unknown option {name[:40]!r}: the query takes db, "
                             "sentinel_username and sentinel_password")
        if name in options:
            raise ValueError(f"option {name} given twice")
        options[name] = value
    db_text = options.get("db", "0")
    if not db_text.isdigit() or len(db_text) > 5:
        raise ValueError("db must be a database number, 0 or more")
    return SentinelURL(
        sentinels=sentinels,
        service=service,
        db=int(db_text),
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The sentinel-managed master's pool, queueing calls beyond max_connections like
    the pool of a plain URL instead of failing them."""


class SentinelMasterClient(aioredis.Redis):
    """The master's client; closing it closes the clients of the sentinels too."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel is not None:
                await self.sentinel.aclose()


def sentinel_client(
    parsed: SentinelURL, max_connections: int, decode_responses: bool = True
) -> aioredis.Redis:
    sentinel_auth = {
        "username": parsed.sentinel_username,
        "password": parsed.sentinel_password,
    }
    sentinel = Sentinel(
        list(parsed.sentinels),
        sentinel_kwargs={**_SENTINEL_OPTIONS, **sentinel_auth},
    )
    client = sentinel.master_for(
        parsed.service,
        redis_class=SentinelMasterClient,
        connection_pool_class=BlockingSentinelPool,
        max_connections=max_connections,
        timeout=POOL_WAIT,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        # PING each new connection: one that reached a node that is not (or no longer)
        # answering is refused before a command is sent on it
        check_connection=True,
        **{**_CLIENT_OPTIONS, "decode_responses": decode_responses},
    )
    client.sentinel = sentinel
    return client


def client_from_url(
    url: str, max_connections: int, decode_responses: bool = True
) -> aioredis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://``
    URLs, or for ``memory://NAME``: an embedded server (fakeredis) shared by this
    process."""
    if url.startswith("memory://"):
        import fakeredis  # only the embedded store needs it

        server = _MEMORY_SERVERS.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(
            server=server,
            decode_responses=decode_responses,
            connection_pool_class=aioredis.BlockingConnectionPool,
            max_connections=max_connections,
        )
    if is_sentinel_url(url):
        return sentinel_client(parse_sentinel_url(url), max_connections, decode_responses)
    if is_cluster_url(url):
        return cluster_client(parse_cluster_url(url), max_connections, decode_responses)
    # A blocking pool queues requests beyond max_connections instead of failing them: a
    # burst of cold keys waits a little rather than getting 503s.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_WAIT,
        **{**_CLIENT_OPTIONS, "decode_responses": decode_responses},
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


def cluster_client(
    parsed: ClusterURL, max_connections: int, decode_responses: bool = True
) -> Any:
    """A Redis Cluster client (``max_connections`` per node). Slots that moved are
    followed (MOVED, ASK); a cluster that cannot serve a slot answers ClusterDownError,
    a 503 for the caller."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username, password=parsed.password,
        max_connections=max_connections,
        **{**_CLIENT_OPTIONS, "decode_responses": decode_responses},
    )


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, RedisCluster)
