"""keygate's benchmark: ratios measured side by side in one run, written to BENCHMARKS.md.

    python bench/run.py [--seconds 8] [--connections 64] [--keys 10000] [--memory-keys 100000]
                        [--instructions]

Starts a private redis-server, a fast upstream, a bare aiohttp pass-through proxy with
keygate's client settings, and keygate (``keygate serve``) with a realistic config
(10,000 keys, 1,000 policy lines, 100 roles, 50 accounts), drives each with the same
load (wrk when installed, else a Python load generator) and reports requests/s, p50 and
p99, the keygate/bare ratio, per-decision cost at 10 and 10,000 policy lines, Redis
round trips per request for warm and cold keys, Redis memory per key at 100,000 keys,
the peak RSS of exporting them, the time to list a page, and ``--workers 2``. keygate
runs twice side by side, with metrics on (``metrics_listen`` set, as shipped) and off,
in the same alternating rounds, so on / off is what the metrics cost.

Two yardsticks: the bare proxy as the aiohttp docs would write it, and a "lean" one
forwarding exactly as keygate does (its server-side techniques and its upstream client,
``gateway.upstream``) with no authentication, so that keygate / lean is
the cost of authentication, routing and header hygiene alone. ``--instructions`` also
counts CPU instructions per request under callgrind (valgrind): unlike requests/s on a
shared machine, those counts repeat from run to run.

Not part of the test run: numbers on a shared 2-core machine are noisy, so they are
ratios from one run, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import build_gateway  # noqa: E402
from gateway.pipeline.authorizer import CasbinAuthorizer  # noqa: E402
from gateway.policy import Policy  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store import CLI_ACTOR, KeyQuery  # noqa: E402

SECRET = "benchmark-secret-" + "b" * 40
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> Load:
    cmd = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # anchored: a "+/- Stdev" column such as "87.50%" must not pass for the 50% line
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} non-2xx responses under load")
    return Load(rps, p50, p99)


async def python_load(url: str, headers: dict[str, str], seconds: int, connections: int) -> Load:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections)
    ) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    return Load(
        len(latencies) / seconds,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def instructions_per_request(
    cmd: list[str], port: int, path: str, headers: dict[str, str], env: dict[str, str],
    seconds: int = 8, settled: Callable[[], None] | None = None,
) -> float:
    """User-space instructions per request of the server ``cmd`` (listening on ``port``),
    counted by callgrind over a wrk run of ``seconds`` (4 connections) after a warm-up.
    Kernel work (the socket calls) is not counted: this measures the Python side.
    ``settled`` waits until the server's start-up work is done (so that it is not
    counted as the requests')."""
    out_file = Path(tempfile.mkdtemp(prefix="keygate-cg-")) / "cg.out"
    child = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out_file}", *cmd],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=180)
        url = f"http://127.0.0.1:{port}{path}"
        asyncio.run(preflight(url, headers))
        if settled is not None:
            settled()
        wrk_headers = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        subprocess.run(["wrk", "-t1", "-c4", "-d3s", *wrk_headers, url],
                       capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-i", "on", str(child.pid)],
                       capture_output=True, check=True)
        out = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", *wrk_headers, url],
                             capture_output=True, text=True, check=True).stdout
        subprocess.run(["callgrind_control", "-i", "off", str(child.pid)],
                       capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(child.pid)],
                       capture_output=True, check=True)
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        if "Non-2xx" in out:
            raise RuntimeError(f"{cmd}: non-2xx answers under callgrind:\n{out}")
        deadline = time.monotonic() + 30
        dumps: list[Path] = []
        while time.monotonic() < deadline and not dumps:
            dumps = [p for p in out_file.parent.iterdir() if p.stat().st_size > 0]
            time.sleep(0.2)
        totals = re.search(r"^totals:\s+(\d+)", dumps[0].read_text(), re.M)
        return int(totals.group(1)) / requests  # type: ignore[union-attr]
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        shutil.rmtree(out_file.parent, ignore_errors=True)


async def preflight(url: str, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}: {await r.text()}")


def load(url: str, headers: dict[str, str], seconds: int, connections: int) -> Load:
    asyncio.run(preflight(url, headers))
    if shutil.which("wrk"):
        return run_wrk(url, headers, seconds, connections)
    return asyncio.run(python_load(url, headers, seconds, connections))


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


def config_file(tmp: Path, redis_url: str, prefix: str, upstream_port: int,
                policies: Path, name: str = "a", metrics: bool = True) -> tuple[Path, int, int]:
    proxy_port, management_port = free_port(), free_port()
    path = tmp / f"keygate-{prefix.strip(':')}-{name}.toml"
    metrics_listen = f"127.0.0.1:{free_port()}" if metrics else ""
    path.write_text(
        f'proxy_listen = "127.0.0.1:{proxy_port}"\n'
        f'management_listen = "127.0.0.1:{management_port}"\n'
        f'metrics_listen = "{metrics_listen}"\n'
        f'store_url = "{redis_url}"\nstore_prefix = "{prefix}"\n'
        f'policies_dir = "{policies}"\n'
        "[[routes]]\n"
        'name = "orders"\npath_prefix = "/accounts"\n'
        f'upstream = "http://127.0.0.1:{upstream_port}"\n'
        'account_from = "path"\naccount_segment = 2\nresource = "orders"\n'
    )
    return path, proxy_port, management_port


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


async def create_keys(settings, accounts: list[str], count: int, roles: list[str]):
    """Create ``count`` keys spread over ``accounts``; returns (app_key, token, account)."""
    gateway = build_gateway(settings)
    made = []
    try:
        for start_at in range(0, count, 200):
            batch = [
                gateway.lifecycle.create(
                    accounts[i % len(accounts)], f"key {i}", [roles[i % len(roles)]], CLI_ACTOR
                )
                for i in range(start_at, min(count, start_at + 200))
            ]
            for issued in await asyncio.gather(*batch):
                made.append((issued.record.app_key, issued.token, issued.record.account))
    finally:
        await gateway.store.close()
    return made


async def round_trips(redis_url: str, proxy_port: int, keys, warm_key) -> tuple[float, float]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    url = f"http://127.0.0.1:{proxy_port}"
    async with aiohttp.ClientSession() as session:

        async def get(key) -> None:
            app_key, token, account = key
            async with session.get(
                f"{url}/accounts/{account}/orders/1",
                headers={"X-API-AppKey": app_key, "X-API-AppToken": token},
            ) as r:
                await r.read()
                assert r.status == 200, r.status

        for _ in range(5):
            await get(warm_key)
        n = 500
        before = await commands_total(client)
        for _ in range(n):
            await get(warm_key)
        warm = (await commands_total(client) - before) / n
        cold_keys = keys[:n]
        before = await commands_total(client)
        for key in cold_keys:
            await get(key)
        cold = (await commands_total(client) - before) / len(cold_keys)
    await client.aclose()
    return warm, cold


async def revocation_delays(
    management_a: int, proxy_b: int, admin, clients
) -> list[float]:
    """Seconds from a deactivation answered by instance A's management API until
    instance B's proxy refuses the key (polling), for each client key; B has the key
    in its cache before each deactivation, so this is the invalidation channel's delay."""
    delays = []
    admin_headers = {"X-API-AppKey": admin[0], "X-API-AppToken": admin[1]}
    async with aiohttp.ClientSession() as session:
        for app_key, token, account in clients:
            headers = {"X-API-AppKey": app_key, "X-API-AppToken": token}
            url = f"http://127.0.0.1:{proxy_b}/accounts/{account}/orders/1"
            for _ in range(3):
                async with session.get(url, headers=headers) as r:
                    assert r.status == 200, r.status
            async with session.patch(
                f"http://127.0.0.1:{management_a}/api/v1/accounts/{account}/keys/{app_key}",
                headers=admin_headers, json={"status": "inactive"},
            ) as r:
                assert r.status == 200, await r.text()
            changed = time.monotonic()
            while True:
                async with session.get(url, headers=headers) as r:
                    if r.status == 401:
                        break
                    assert r.status == 200, r.status
                if time.monotonic() - changed > 10:
                    raise RuntimeError("instance B still accepts a deactivated key after 10 s")
            delays.append(time.monotonic() - changed)
    return delays


async def memory_and_listing(redis_url: str, tmp: Path, count: int):
    """Redis bytes per key at ``count`` keys in one account, export RSS, page listing."""
    prefix = "mem:"
    settings = load_settings(env={}).with_values(
        store_url=redis_url, store_prefix=prefix, secret=SECRET
    )
    client = aioredis.from_url(redis_url, decode_responses=True)
    await create_keys(settings, ["small"], 1000, ["owner"])
    before = (await client.info("memory"))["used_memory"]
    await create_keys(settings, ["bulk"], count, ["owner"])
    after = (await client.info("memory"))["used_memory"]
    audit = await client.memory_usage(f"{prefix}acct:bulk:audit") or 0
    gateway = build_gateway(settings)
    timings = {}
    for name, query in (
        ("page (creation order)", KeyQuery(page=10, per_page=50)),
        ("page filtered by q", KeyQuery(q="key 99", per_page=50)),
    ):
        start = time.perf_counter()
        await gateway.store.list_keys("bulk", query)
        timings[name] = (time.perf_counter() - start) * 1000
    await gateway.store.close()
    await client.aclose()
    env = {**os.environ, "KEYGATE_STORE_URL": redis_url, "KEYGATE_STORE_PREFIX": prefix,
           "KEYGATE_SECRET": SECRET}
    exports = {}
    for account in ("small", "bulk"):
        out = tmp / f"export-{account}.xlsx"
        start = time.perf_counter()
        child = subprocess.Popen(
            [PY, "-m", "gateway", "export", "--account", account, "-o", str(out)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, no one else's
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise RuntimeError(f"export of {account} failed")
        exports[account] = (usage.ru_maxrss / 1024, time.perf_counter() - start,
                            out.stat().st_size)
    return (after - before) / count, ((after - before) - audit) / count, timings, exports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; median kept")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--memory-keys", type=int, default=100_000)
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per request under callgrind")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs.append(start(["redis-server", "--port", str(redis_port), "--save", "",
                        "--appendonly", "no", "--dir", str(tmp)]))
    rows: list[tuple[str, str]] = []
    try:
        wait_port(redis_port)
        env = {**os.environ, "KEYGATE_SECRET": SECRET}
        upstream_port, bare_port, lean_port = free_port(), free_port(), free_port()
        servers = str(ROOT / "bench" / "servers.py")
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        procs.append(start([PY, servers, "upstream", str(upstream_port)]))
        procs.append(start([PY, servers, "bare-proxy", str(bare_port), upstream_url]))
        procs.append(start([PY, servers, "lean-proxy", str(lean_port), upstream_url]))
        policies = tmp / "policies"
        roles = write_policies(policies)
        config, proxy_port, management_port = config_file(
            tmp, redis_url, "kg:", upstream_port, policies
        )
        settings = load_settings(config, env={"KEYGATE_SECRET": SECRET})
        accounts = [f"acct-{i:02d}" for i in range(50)]
        print(f"creating {args.keys} keys in {len(accounts)} accounts …", flush=True)
        keys = asyncio.run(create_keys(settings, accounts, args.keys, ["role-000"] + roles[:1]))
        (admin,) = asyncio.run(create_keys(settings, accounts[:1], 1, ["owner"]))
        revoked = asyncio.run(create_keys(settings, accounts[:1], 20, ["role-000"]))
        # the same keygate with metrics off, beside it: same keys, same Redis, own ports
        config_off, proxy_off, management_off = config_file(
            tmp, redis_url, "kg:", upstream_port, policies, name="metrics-off", metrics=False
        )
        keygate_off_proc = start([PY, "-m", "gateway", "--config", str(config_off), "serve"],
                                 env)
        procs.append(start([PY, "-m", "gateway", "--config", str(config), "serve"], env))
        for port in (upstream_port, bare_port, lean_port, proxy_port, proxy_off):
            wait_port(port)
        asyncio.run(wait_trusted(management_port))
        asyncio.run(wait_trusted(management_off))

        app_key, token, account = keys[0]
        creds = {"X-API-AppKey": app_key, "X-API-AppToken": token}
        path = f"/accounts/{account}/orders/1"
        print("load: upstream direct, then bare, lean and keygate alternating …", flush=True)
        direct = load(f"http://127.0.0.1:{upstream_port}{path}", {}, args.seconds, args.connections)
        bare_runs, lean_runs, keygate_runs, off_runs = [], [], [], []
        for _ in range(args.rounds):  # alternating, so drift on a shared machine hits all
            bare_runs.append(load(f"http://127.0.0.1:{bare_port}{path}", {}, args.seconds,
                                  args.connections))
            lean_runs.append(load(f"http://127.0.0.1:{lean_port}{path}", {}, args.seconds,
                                  args.connections))
            # metrics on and off back to back, first one then the other (a drift within
            # a round must not always favour the same one)
            for metrics_on in (True, False)[:: 1 if len(keygate_runs) % 2 == 0 else -1]:
                port, runs = (proxy_port, keygate_runs) if metrics_on else (proxy_off, off_runs)
                runs.append(load(f"http://127.0.0.1:{port}{path}", creds, args.seconds,
                                 args.connections))
        bare, lean, keygate, keygate_off = (
            sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
            for runs in (bare_runs, lean_runs, keygate_runs, off_runs)
        )
        # metrics on / off per round (each pair ran back to back), and their median
        metrics_ratios = sorted(on.rps / off.rps for on, off in zip(keygate_runs, off_runs,
                                                                    strict=True))
        # latency without queueing: one connection, one request at a time
        bare_one = load(f"http://127.0.0.1:{bare_port}{path}", {}, args.seconds, 1)
        keygate_one = load(f"http://127.0.0.1:{proxy_port}{path}", creds, args.seconds, 1)
        keygate_off_one = load(f"http://127.0.0.1:{proxy_off}{path}", creds, args.seconds, 1)
        keygate_off_proc.terminate()
        keygate_off_proc.wait(timeout=20)

        warm_trips, cold_trips = asyncio.run(round_trips(redis_url, proxy_port, keys[1:],
                                                         keys[0]))
        print("revocation: a second instance on the same Redis …", flush=True)
        config_b, proxy_b, management_b = config_file(
            tmp, redis_url, "kg:", upstream_port, policies, name="b"
        )
        procs.append(start([PY, "-m", "gateway", "--config", str(config_b), "serve"], env))
        wait_port(proxy_b)
        asyncio.run(wait_trusted(management_b))
        delays = sorted(asyncio.run(revocation_delays(management_port, proxy_b, admin, revoked)))
        for _ in range(2):  # instance B, then A
            procs[-1].terminate()
            procs[-1].wait(timeout=20)
            procs.pop()

        print("load: keygate --workers 2 …", flush=True)
        procs.append(start([PY, "-m", "gateway", "--config", str(config), "serve",
                            "--workers", "2"], env))
        wait_port(proxy_port)
        asyncio.run(wait_trusted(management_port))
        time.sleep(1)
        workers2 = load(f"http://127.0.0.1:{proxy_port}{path}", creds, args.seconds,
                        args.connections)
        procs[-1].terminate()
        procs[-1].wait(timeout=20)

        instructions: dict[str, float] = {}
        if args.instructions:
            print("instructions per request under callgrind …", flush=True)
            for name, cmd, port, headers, settled in (
                ("bare", [PY, servers, "bare-proxy", str(cg_port := free_port()), upstream_url],
                 cg_port, {}, None),
                ("bare, sent keygate's 8 upstream headers by the client",
                 [PY, servers, "bare-proxy", str(cg_port := free_port()), upstream_url],
                 cg_port, keygate_headers(app_key, account), None),
                ("lean", [PY, servers, "lean-proxy", str(cg_port := free_port()), upstream_url],
                 cg_port, {}, None),
                ("keygate", [PY, "-m", "gateway", "--config", str(config), "serve"],
                 proxy_port, creds, renewal_count_done(config)),
                ("keygate, metrics off",
                 [PY, "-m", "gateway", "--config", str(config_off), "serve"], proxy_off, creds,
                 None),
            ):
                instructions[name] = instructions_per_request(cmd, port, path, headers, env,
                                                              settled=settled)

        print("decision cost by policy size …", flush=True)
        decisions = decision_cost(tmp)
        print(f"memory: {args.memory_keys} keys, export, listing …", flush=True)
        per_key, per_key_no_audit, listing, exports = asyncio.run(
            memory_and_listing(redis_url, tmp, args.memory_keys)
        )

        added_p99 = keygate_one.p99_ms - bare_one.p99_ms
        ratio = keygate.rps / bare.rps
        instruction_rows = []
        if instructions:
            kg = instructions["keygate"]
            instruction_rows = [
                ("instructions per request (callgrind, user space)",
                 "; ".join(f"{name} {count / 1000:,.0f}k" for name, count in instructions.items())),
                ("instructions: bare / keygate, lean / keygate",
                 f"{instructions['bare'] / kg:.3f}, {instructions['lean'] / kg:.3f}"),
                ("instructions added by metrics (keygate on − off)",
                 f"{(kg - instructions['keygate, metrics off']) / 1000:,.1f}k per request "
                 f"({(kg / instructions['keygate, metrics off'] - 1) * 100:.1f} %)"),
            ]
        rows = [
            ("upstream direct", f"{direct.rps:,.0f} req/s, p50 {direct.p50_ms:.2f} ms, "
                                f"p99 {direct.p99_ms:.2f} ms"),
            ("bare aiohttp proxy", f"{bare.rps:,.0f} req/s, p50 {bare.p50_ms:.2f} ms, "
                                   f"p99 {bare.p99_ms:.2f} ms  (all runs: "
                                   f"{', '.join(f'{r.rps:,.0f}' for r in bare_runs)})"),
            ("keygate (auth + authz + proxy, warm)",
             f"{keygate.rps:,.0f} req/s, p50 {keygate.p50_ms:.2f} ms, p99 {keygate.p99_ms:.2f} ms"
             f"  (all runs: {', '.join(f'{r.rps:,.0f}' for r in keygate_runs)})"),
            ("lean proxy (keygate's forwarding, no auth)",
             f"{lean.rps:,.0f} req/s, p50 {lean.p50_ms:.2f} ms, p99 {lean.p99_ms:.2f} ms"
             f"  (all runs: {', '.join(f'{r.rps:,.0f}' for r in lean_runs)})"),
            ("keygate / bare proxy (target ≥ 1.0)", f"{ratio:.3f} (medians of "
                                                     f"{args.rounds} alternating runs)"),
            ("keygate / lean proxy (cost of auth, routing, header hygiene)",
             f"{keygate.rps / lean.rps:.3f}"),
            ("keygate, metrics off",
             f"{keygate_off.rps:,.0f} req/s, p50 {keygate_off.p50_ms:.2f} ms, p99 "
             f"{keygate_off.p99_ms:.2f} ms  (all runs: "
             f"{', '.join(f'{r.rps:,.0f}' for r in off_runs)})"),
            ("keygate metrics on / off (cost of metrics)",
             f"{metrics_ratios[len(metrics_ratios) // 2]:.3f} (median of {args.rounds} "
             f"back-to-back pairs: {', '.join(f'{r:.3f}' for r in metrics_ratios)})"),
            ("one connection: bare / keygate",
             f"p50 {bare_one.p50_ms:.3f} / {keygate_one.p50_ms:.3f} ms, p99 "
             f"{bare_one.p99_ms:.3f} / {keygate_one.p99_ms:.3f} ms"),
            ("p99 added by keygate, one connection (target ≤ 1 ms)", f"{added_p99:+.3f} ms"),
            ("one connection: keygate metrics off / on",
             f"p50 {keygate_off_one.p50_ms:.3f} / {keygate_one.p50_ms:.3f} ms, p99 "
             f"{keygate_off_one.p99_ms:.3f} / {keygate_one.p99_ms:.3f} ms"),
            ("keygate --workers 2", f"{workers2.rps:,.0f} req/s "
                                    f"({workers2.rps / keygate.rps:.2f}× one worker; "
                                    f"{workers2.rps / 2:,.0f} per worker), p99 "
                                    f"{workers2.p99_ms:.2f} ms"),
            *instruction_rows,
            ("decision, 10 policy lines", f"{decisions[10][0]:.2f} µs cached, "
                                          f"{decisions[10][1]:.1f} µs uncached"),
            ("decision, 10,000 policy lines", f"{decisions[10_000][0]:.2f} µs cached, "
                                              f"{decisions[10_000][1]:,.0f} µs uncached"),
            ("revocation seen by a second instance (target ≤ 1 s)",
             f"median {delays[len(delays) // 2] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms "
             f"over {len(delays)} deactivations"),
            ("Redis commands per request, warm key", f"{warm_trips:.3f}"),
            ("Redis commands per request, cold key (target 1)", f"{cold_trips:.3f}"),
            (f"Redis memory per key at {args.memory_keys:,} keys (target ≤ 600 B)",
             f"{per_key:.0f} B with its audit event, {per_key_no_audit:.0f} B without"),
            (f"list a page of 50 at {args.memory_keys:,} keys (target ≤ 50 ms)",
             ", ".join(f"{k}: {v:.1f} ms" for k, v in listing.items())),
            (f"export to XLSX (`keygate export`), 1,000 vs {args.memory_keys:,} keys",
             f"peak RSS {exports['small'][0]:.0f} MB vs {exports['bulk'][0]:.0f} MB; "
             f"{exports['small'][1]:.1f} s vs {exports['bulk'][1]:.1f} s; "
             f"{exports['small'][2] / 1e6:.2f} MB vs {exports['bulk'][2] / 1e6:.1f} MB file"),
        ]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    print("\n" + table)
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores ({_cpu_model()}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load by {'wrk' if shutil.which('wrk') else 'the Python load generator'}, "
        f"{args.connections} connections, {args.seconds} s per run, load generator on the "
        f"same machine"
    )
    md = [
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python bench/run.py"
        f"{' --instructions' if args.instructions else ''}"
        f"{f' --rounds {args.rounds}' if args.rounds != 3 else ''}` "
        "(all figures from one run, side by side).",
        "",
        f"Machine: {machine}.",
        "",
        "| measure | result |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    Path(args.output).write_text("\n".join(md))
    print(f"\nwritten to {args.output}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
