"""Shared fixtures: a private redis-server, real aiohttp upstreams, keygate's two apps.

Every test gets its own ``store_prefix`` so tests never see each other's keys, on a
redis-server started for this test session on a free port (``--save "" --appendonly
no``), never the machine's shared Redis. Without a redis-server binary the tests fall
back to the embedded fakeredis, loudly; with ``KEYGATE_TESTS_REQUIRE_REDIS=1`` (set by
``.ci/run``) that fallback is an error instead.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis_cluster
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict
from ports import free_port

from gateway.app import build_gateway, proxy_handler, upstream_pool
from gateway.context import Gateway
from gateway.management import build_management_app
from gateway.settings import Settings, load_settings
from gateway.store import CLI_ACTOR

TEST_SECRET = "test-secret-" + "x" * 40
FALLBACK_MARKER = Path(__file__).parent / ".fakeredis-fallback"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("KEYGATE_TESTS_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed and KEYGATE_TESTS_REQUIRE_REDIS=1")
        warnings.warn("redis-server not found: tests fall back to fakeredis", stacklevel=1)
        FALLBACK_MARKER.write_text("tests ran on fakeredis\n")
        yield "memory://"
        return
    FALLBACK_MARKER.unlink(missing_ok=True)
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"private redis-server on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster for this test session (``redis_cluster.py``)."""
    why_not = redis_cluster.available()
    if why_not is not None:
        if os.environ.get("KEYGATE_TESTS_REQUIRE_REDIS") == "1":
            pytest.fail(f"no Redis Cluster: {why_not}, and KEYGATE_TESTS_REQUIRE_REDIS=1")
        pytest.skip(f"no Redis Cluster: {why_not}")
    with redis_cluster.redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


def on_one_server_and_a_cluster() -> Any:
    """A module's ``redis_url`` that runs each of its tests twice: on the session's
    redis-server and on the session's Redis Cluster. Use as
    ``redis_url = on_one_server_and_a_cluster()`` in a test module."""

    @pytest.fixture(params=["one-server", "cluster"])
    def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
        if request.param == "cluster":
            if redis_url.startswith("memory://"):
                pytest.skip("no redis-server: no cluster either")
            return str(request.getfixturevalue("cluster_url"))
        return redis_url

    return redis_url


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class FakeClock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self, start: float = 1_790_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class Upstream:
    """A real aiohttp server that records what keygate forwarded to it."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def _upstream_app(record: Upstream) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        record.requests.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": request.headers.copy(),
                "body_sha256": digest.hexdigest(),
                "body_size": size,
            }
        )
        # ?set_cookie=…: the answer sets those cookies (what an upstream may try)
        headers = [("X-Upstream", "echo"),
                   *(("Set-Cookie", value) for value in request.query.getall("set_cookie", ()))]
        return web.json_response(
            {"method": request.method, "path": request.raw_path, "size": size},
            headers=CIMultiDict(headers),
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        """GET /stream/{megabytes}: a large body written chunk by chunk."""
        megabytes = int(request.match_info["mb"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = megabytes * 1024 * 1024
        await response.prepare(request)
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(megabytes):
            await response.write(block)
        return response

    async def slow(request: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(float(request.query.get("seconds", "5")))
        return web.Response(text="late")

    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_get("/stream/{mb:\\d+}", stream)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Any]) -> Upstream:
    record = Upstream()
    server = await aiohttp_server(_upstream_app(record))
    record.url = str(server.make_url("")).rstrip("/")
    return record


def default_routes(upstream_url: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "orders",
            "path_prefix": "/orders",
            "upstream": upstream_url,
            "account": "acme",
            "resource": "orders",
        },
        {
            "name": "beta-orders",
            "path_prefix": "/beta/orders",
            "upstream": upstream_url,
            "account": "beta",
            "resource": "orders",
        },
        {
            "name": "catalog",
            "host": "*.api.test",
            "path_prefix": "/catalog",
            "upstream": upstream_url,
            "account_from": "host",
            "resource": "catalog",
        },
        {
            "name": "per-account",
            "path_prefix": "/accounts",
            "upstream": upstream_url,
            "account_from": "path",
            "account_segment": 2,
            "resource": "orders",
            "actions": {"DELETE": "admin"},
        },
        {
            "name": "stream",
            "path_prefix": "/stream",
            "upstream": upstream_url,
            "account": "acme",
            "resource": "orders",
        },
        {
            "name": "slow",
            "path_prefix": "/slow",
            "upstream": upstream_url,
            "account": "acme",
            "resource": "orders",
        },
    ]


@pytest.fixture
def make_settings(redis_url: str, upstream: Upstream) -> Callable[..., Settings]:
    """Settings on the private Redis with a fresh prefix; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "store_url": redis_url,
            "store_prefix": f"test-{uuid.uuid4().hex[:12]}:",
            "secret": TEST_SECRET,
            "routes": default_routes(upstream.url),
            # failed authentications are counted in fixed windows of the clock: with the
            # default minute, a test on the wall clock that counts failures past a minute's
            # end sees the count start over (a 401 where a 429 was due); in a day-long
            # window that happens about once in 100,000 runs of such a test
            "auth_failure_window": 86_400.0,
        }
        values.update(overrides)
        return load_settings(env={}).with_values(**values)

    return make


@pytest.fixture
async def gateway(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[Gateway]:
    gw = build_gateway(make_settings(), clock=clock)
    gw.start()
    yield gw
    await gw.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the clients here do not verify it)."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class ProxyTestServer(RawTestServer):
    """keygate's proxy port for ``aiohttp_client``, served as in production
    (``proxy_handler`` on aiohttp's low-level server, no decompression), with its own
    upstream pool, closed with the server."""

    def __init__(self, gateway: Gateway, **kwargs: Any):
        self.gateway = gateway
        self.pool = upstream_pool(gateway.settings)
        super().__init__(proxy_handler(gateway, self.pool), **kwargs)

    async def start_server(self, **kwargs: Any) -> None:
        await super().start_server(**{"auto_decompress": False, **kwargs})

    async def close(self) -> None:
        await super().close()
        await self.pool.close()


@pytest.fixture
async def proxy(gateway: Gateway, aiohttp_client: Callable[..., Any]) -> Any:
    return await aiohttp_client(ProxyTestServer(gateway))


@pytest.fixture
async def proxy_with(
    gateway: Gateway, make_settings: Callable[..., Any], clock: Any, aiohttp_client: Any
) -> AsyncIterator[Callable[..., Any]]:
    """Another keygate over the same keys (same store prefix, so make_key works) with
    other settings, wired and started as in production."""
    started: list[Gateway] = []

    async def make(**overrides: Any) -> Any:
        settings = make_settings(store_prefix=gateway.settings.store_prefix, **overrides)
        gw = build_gateway(settings, clock=clock)
        gw.start()
        started.append(gw)
        return await aiohttp_client(ProxyTestServer(gw))

    yield make
    for gw in started:
        await gw.close()


@pytest.fixture
async def management(gateway: Gateway, aiohttp_client: Callable[..., Any]) -> Any:
    return await aiohttp_client(build_management_app(gateway))


@dataclass(frozen=True)
class Key:
    app_key: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-AppKey": self.app_key, "X-API-AppToken": self.token}


@pytest.fixture
def make_key(gateway: Gateway) -> Callable[..., Any]:
    """Create a generated key directly in the store (as `keygate keys create` does)."""

    async def make(account: str = "acme", roles: list[str] | None = None, label: str = "k") -> Key:
        issued = await gateway.lifecycle.create(
            account, label, ["orders-writer"] if roles is None else roles, CLI_ACTOR
        )
        assert issued.token is not None
        return Key(issued.record.app_key, issued.token)

    return make


@pytest.fixture
async def admin_key(make_key: Callable[..., Any]) -> Key:
    """A key of account acme that may manage acme's keys."""
    return await make_key("acme", ["user-admin-restricted"], label="admin")


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's environment as a CLI command reads it: no stray KEYGATE_* setting,
    the private Redis under a fresh prefix, the test secret. Skips on memory:// (a CLI
    command runs its own store, which memory:// would not share)."""
    if redis_url.startswith("memory://"):
        pytest.skip("the CLI needs the private redis-server (memory:// is per process)")
    for name in list(os.environ):
        if name.startswith("KEYGATE_"):
            monkeypatch.delenv(name)
    values = {
        "KEYGATE_STORE_URL": redis_url,
        "KEYGATE_SECRET": TEST_SECRET,
        "KEYGATE_STORE_PREFIX": f"cli-{uuid.uuid4().hex[:12]}:",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


class Ran:
    """What a command run in-process printed, and its exit status."""

    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """main() sets up logging for a process; put this one's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], restored_logging: None) -> Callable[..., Ran]:
    """``gateway.cli.main([...])`` in-process (use with ``env``)."""
    from gateway.cli import main

    def run(*argv: str) -> Ran:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse: --help, --version, usage errors
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, err
        return Ran(code, out, err)

    return run
