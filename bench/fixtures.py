"""What the benchmark sets up: policies, keys, keygate's config files and processes."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import aiohttp
import redis.asyncio as aioredis

from bench.measure import free_port, wait_port
from gateway.app import build_gateway
from gateway.pipeline.authorizer import CasbinAuthorizer
from gateway.policy import Policy
from gateway.store import CLI_ACTOR

ROOT = Path(__file__).resolve().parent.parent
SECRET = "benchmark-secret-" + "b" * 40
PY = sys.executable


def keygate_headers(app_key: str, account: str) -> dict[str, str]:
    """The headers keygate adds upstream, for the bare proxy to forward as the client's."""
    return {
        "X-Keygate-Key": app_key, "X-Keygate-Owner-Account": account,
        "X-Keygate-Account": account, "X-Keygate-Roles": "role-000,role-000",
        "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "127.0.0.1:8080", "X-Request-Id": "0123456789abcdef01234567",
    }


# -- fixtures of the run -------------------------------------------------------------------
def write_policies(directory: Path, roles: int = 100, lines: int = 1000) -> list[str]:
    """``roles`` roles over 50 resources; ``lines`` p/g lines in all, some deny."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "policies" / "builtin.csv", directory / "builtin.csv")
    rows = []
    names = [f"role-{i:03d}" for i in range(roles)]
    for n in range(lines - roles // 2):
        role = names[n % roles]
        resource = f"resource-{(n // roles) % 50:02d}"
        effect = "deny" if n % 97 == 0 else "allow"
        rows.append(f"p, {role}, *, {resource}, {('read', 'write')[n % 2]}, {effect}")
    rows.append("p, role-000, *, orders, *, allow")
    rows += [f"g, {names[i]}, {names[i + 1]}" for i in range(0, roles - 1, 2)]
    (directory / "bench.csv").write_text("\n".join(rows) + "\n")
    return names


def policy_with_lines(directory: Path, lines: int) -> Policy:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [f"p, role-{n % 100:03d}, *, resource-{n % 500}, read, allow" for n in range(lines)]
    (directory / "p.csv").write_text("\n".join(rows) + "\n")
    return Policy.load(ROOT / "model.conf", directory)


def decision_cost(tmp: Path) -> dict[int, tuple[float, float]]:
    """µs per decision through the authorizer's cache, and uncached, by policy size."""
    result = {}
    for lines in (10, 10_000):
        policy = policy_with_lines(tmp / f"policy-{lines}", lines)
        keeper = CasbinAuthorizer(policy, 100_000)
        args = (("role-001", "role-002"), "acct-01", "resource-1", "read")
        keeper.decide(*args)
        n = 200_000
        cached = timeit.timeit(lambda: keeper.decide(*args), number=n) / n * 1e6  # noqa: B023
        m = 20 if lines > 1000 else 2000
        uncached = timeit.timeit(lambda: policy.decide(*args), number=m) / m * 1e6  # noqa: B023
        result[lines] = (cached, uncached)
    return result


async def commands_total(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


class KeygateConfig(NamedTuple):
    path: Path
    proxy_port: int
    management_port: int
    decision_port: int


def config_file(tmp: Path, redis_url: str, prefix: str, upstream_port: int,
                policies: Path, name: str = "a", metrics: bool = True) -> KeygateConfig:
    """A keygate config on free ports, the decision API on (``decision_listen``)."""
    proxy_port, management_port, decision_port = free_port(), free_port(), free_port()
    path = tmp / f"keygate-{prefix.strip(':')}-{name}.toml"
    metrics_listen = f"127.0.0.1:{free_port()}" if metrics else ""
    path.write_text(
        f'proxy_listen = "127.0.0.1:{proxy_port}"\n'
        f'management_listen = "127.0.0.1:{management_port}"\n'
        f'decision_listen = "127.0.0.1:{decision_port}"\n'
        f'metrics_listen = "{metrics_listen}"\n'
        f'store_url = "{redis_url}"\nstore_prefix = "{prefix}"\n'
        f'policies_dir = "{policies}"\n'
        "[[routes]]\n"
        'name = "orders"\npath_prefix = "/accounts"\n'
        f'upstream = "http://127.0.0.1:{upstream_port}"\n'
        'account_from = "path"\naccount_segment = 2\nresource = "orders"\n'
    )
    return KeygateConfig(path, proxy_port, management_port, decision_port)


def decision_headers(creds: dict[str, str], path: str) -> dict[str, str]:
    """A decision request as nginx's auth_request subrequest sends it for ``GET path``
    (deploy/nginx/keygate.conf), to the decision API's ``/nginx``."""
    return {**creds, "X-Original-Method": "GET", "X-Original-URI": path,
            "X-Forwarded-For": "127.0.0.1", "X-Request-Id": "0123456789abcdef01234567"}


def renewal_count_done(config: Path, timeout: float = 600) -> Callable[[], None]:
    """For a keygate with metrics on: wait until its first background count of the
    renewal gauge has finished (every key read once, at start): under callgrind that
    takes long enough to land in the measured window otherwise."""
    host, _, port = tomllib.loads(config.read_text())["metrics_listen"].rpartition(":")

    def wait() -> None:
        url = f"http://{host}:{port}/metrics"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(url) as r:  # noqa: S310
                done = re.search(rb"^keygate_keys_renewal_alert_computed_timestamp_seconds "
                                 rb"([\d.e+]+)", r.read(), re.M)
                if done and float(done.group(1)) > 0:
                    return
            time.sleep(0.5)
        raise RuntimeError("keygate's first renewal count did not finish")

    return wait


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, Path]]:
    """A redis-server of its own on a free loopback port, keeping nothing on disk: its
    URL and a working directory, both gone afterwards (rows measured apart)."""
    workdir = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    port = free_port()
    server = start(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                    "--dir", str(workdir)])
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0", workdir
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def wait_trusted(management_port: int) -> None:
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{management_port}/readyz") as r:
                    if r.status == 200 and (await r.json())["credentialCache"] == "trusted":
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("keygate did not become ready")


async def create_keys(settings, accounts: list[str], count: int, roles: list[str],
                      batch: int = 200):
    """Create ``count`` keys spread over ``accounts``, ``batch`` at a time; returns
    (app_key, token, account)."""
    gateway = build_gateway(settings)
    made = []
    try:
        for start_at in range(0, count, batch):
            wanted = list(range(start_at, min(count, start_at + batch)))
            for attempt in range(3):
                outcomes = await asyncio.gather(*(
                    gateway.lifecycle.create(
                        accounts[i % len(accounts)], f"key {i}", [roles[i % len(roles)]],
                        CLI_ACTOR)
                    for i in wanted), return_exceptions=True)
                failed = [i for i, issued in zip(wanted, outcomes, strict=True)
                          if isinstance(issued, BaseException)]
                made += [(issued.record.app_key, issued.token, issued.record.account)
                         for issued in outcomes if not isinstance(issued, BaseException)]
                if not failed:
                    break
                # redis-py's cluster client, after a connection error, can close
                # connections other calls are opening (an AttributeError from inside
                # it): those keys are made again
                if attempt == 2:
                    raise next(o for o in outcomes if isinstance(o, BaseException))
                wanted = failed
                await asyncio.sleep(0.5)
    finally:
        await gateway.store.close()
    return made
