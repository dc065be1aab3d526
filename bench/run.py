"""keygate's benchmark: ratios measured side by side in one run, written to BENCHMARKS.md.

    python bench/run.py [--seconds 8] [--connections 64] [--keys 10000] [--memory-keys 100000]
                        [--instructions] [--million | --million-only]

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

The decision API (``decision_listen``) in the same rounds, when the machine's nginx has
``auth_request`` (``bench/nginx.py``): nginx as a proxy alone; nginx with
``deploy/nginx/keygate.conf`` asking keygate (one worker, then ``--workers 2``); the
same nginx asking the least decision service aiohttp can run (``decision-floor`` in
``bench/servers.py``: what any aiohttp-based decider could reach) and keygate's own
decision server deciding nothing (``decision-floor-keygate``: what the decision port
reaches before it decides anything); and the decision API
alone, wrk sending what nginx's ``auth_request`` subrequest sends (wrk connects from
loopback, which the decision API trusts by default, as it trusts nginx on the same
host). ``--instructions`` adds where a decision request's instructions go: aiohttp's
server and keygate's connection guard (counted on the floor server, bare and guarded),
the pipeline's stages (``bench/decision_stages.py``), the handler and the metrics.

``--million`` adds listing and memory at 1,000,000 keys in one account (bench/million.py:
every page type, about five minutes to load); ``--million-only`` measures just that and
puts its rows in place in the existing BENCHMARKS.md, and ``--memory-only`` does the same
for the rows of Redis memory, listing and export at ``--memory-keys`` keys.

Not part of the test run: numbers on a shared 2-core machine are noisy, so they are
ratios from one run, never assertions (tests/test_bench.py only checks that it runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))  # the test suite's Redis Cluster launcher
import redis_cluster  # noqa: E402

from bench.decision_stages import stage_instructions  # noqa: E402
from bench.figures import (  # noqa: E402
    memory_and_listing,
    memory_rows,
    revocation_delays,
    round_trips,
)
from bench.fixtures import (  # noqa: E402
    PY,
    SECRET,
    KeygateConfig,
    config_file,
    create_keys,
    decision_cost,
    decision_headers,
    keygate_headers,
    private_redis,
    renewal_count_done,
    start,
    wait_trusted,
    write_policies,
)
from bench.measure import (  # noqa: E402
    Load,
    all_runs,
    cpu_model,
    free_port,
    instructions_per_request,
    load,
    median,
    put_in_place,
    wait_port,
)
from bench.million import million, million_only  # noqa: E402
from bench.million import rows as million_figures  # noqa: E402
from bench.nginx import nginx_binary, proxy_alone_site, shipped_site, start_nginx  # noqa: E402
from gateway.settings import load_settings  # noqa: E402

SERVERS = str(ROOT / "bench" / "servers.py")


@dataclass
class Target:
    """One thing the load rounds drive: its URL and the headers each request carries."""

    url: str
    headers: dict[str, str]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(config: KeygateConfig, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return start([PY, "-m", "gateway", "--config", str(config.path), "serve", *extra], env)


def load_rounds(units: list[list[str]], targets: dict[str, Target], rounds: int, seconds: int,
                connections: int) -> dict[str, list[Load]]:
    """``rounds`` runs of every target. Each round runs the units in another order
    (rotated), and the targets of a unit back to back, first one then the other (so
    that a drift on the shared machine hits all of them, and favours none of a pair)."""
    runs: dict[str, list[Load]] = {name: [] for unit in units for name in unit}
    for r in range(rounds):
        for unit in units[r % len(units):] + units[:r % len(units)]:
            for name in unit[:: 1 if r % 2 == 0 else -1]:
                target = targets[name]
                runs[name].append(load(target.url, target.headers, seconds, connections))
    return runs


def decision_breakdown(instructions: dict[str, float], stages: dict[str, float]) -> str:
    """Where a decision request's instructions go, from the servers' counts and the
    pipeline's stages: keygate's decision server deciding nothing (behind the connection
    guard) is the server's share; what the metrics-off decision API adds beyond it and
    the pipeline is its handler's own; metrics are on minus off."""
    total = instructions["decision API"]
    server = instructions["keygate's decision server, deciding nothing"]
    pipeline = stages["decide"]
    handler = instructions["decision API, metrics off"] - server - pipeline
    metrics = total - instructions["decision API, metrics off"]
    parts = ("routing", "authentication", "authorization", "mutators")
    rest = pipeline - sum(stages[p] for p in parts)

    def k(count: float) -> str:
        return f"{count / 1000:,.1f}k ({count / total * 100:.0f} %)"

    return (
        f"keygate's decision server behind the connection guard (strict head reading, "
        f"request id, writing the answer, event loop) {k(server)}; Pipeline.decide "
        f"{k(pipeline)}: routing and path "
        f"normalisation {stages['routing'] / 1000:.1f}k, authentication "
        f"{stages['authentication'] / 1000:.1f}k (the token's HMAC-SHA256 "
        f"{stages['token HMAC'] / 1000:.1f}k of it), authorization (grant, cached Casbin "
        f"decision) {stages['authorization'] / 1000:.1f}k, identity headers "
        f"{stages['mutators'] / 1000:.1f}k, the rest (failure budget check, last-used, "
        f"the decision) {rest / 1000:.1f}k; the decision handler itself (caller check, "
        f"original request, client address, answer headers) {k(handler)}; metrics "
        f"{k(metrics)}; for comparison, aiohttp's server deciding nothing "
        f"{instructions['aiohttp floor'] / 1000:,.1f}k, behind the guard "
        f"{instructions['aiohttp floor, guarded'] / 1000:,.1f}k"
    )


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
    parser.add_argument("--million", action="store_true",
                        help="also list and measure 1,000,000 keys in one account (bench/"
                             "million.py: about 5 minutes and 2 GB of Redis)")
    parser.add_argument("--million-only", action="store_true",
                        help="only the 1,000,000-key rows, put in the report's table in place")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the rows of Redis memory, listing and export at "
                             "--memory-keys keys, put in the report's table in place")
    args = parser.parse_args()
    if args.million_only:
        return million_only(Path(args.output))
    if args.memory_only:
        return memory_only(Path(args.output), args.memory_keys)
    tmp = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    nginx_dirs: list[Path] = []
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs.append(start(["redis-server", "--port", str(redis_port), "--save", "",
                        "--appendonly", "no", "--dir", str(tmp)]))
    rows: list[tuple[str, str]] = []
    cluster = contextlib.ExitStack()
    try:
        wait_port(redis_port)
        cluster_url = cluster.enter_context(redis_cluster.redis_cluster(tmp / "cluster"))
        env = {**os.environ, "KEYGATE_SECRET": SECRET}
        upstream_port, bare_port, lean_port = free_port(), free_port(), free_port()
        floor_port, keygate_floor_port = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        procs.append(start([PY, SERVERS, "upstream", str(upstream_port)]))
        procs.append(start([PY, SERVERS, "bare-proxy", str(bare_port), upstream_url]))
        procs.append(start([PY, SERVERS, "lean-proxy", str(lean_port), upstream_url]))
        procs.append(start([PY, SERVERS, "decision-floor", str(floor_port)]))
        procs.append(start([PY, SERVERS, "decision-floor-keygate", str(keygate_floor_port)]))
        policies = tmp / "policies"
        roles = write_policies(policies)
        config = config_file(tmp, redis_url, "kg:", upstream_port, policies)
        settings = load_settings(config.path, env={"KEYGATE_SECRET": SECRET})
        accounts = [f"acct-{i:02d}" for i in range(50)]
        print(f"creating {args.keys} keys in {len(accounts)} accounts …", flush=True)
        keys = asyncio.run(create_keys(settings, accounts, args.keys, ["role-000"] + roles[:1]))
        (admin,) = asyncio.run(create_keys(settings, accounts[:1], 1, ["owner"]))
        # the same keygate on a 3-master Redis Cluster, with keys of its own
        config_cluster = config_file(tmp, cluster_url, "kg:", upstream_port, policies,
                                     name="cluster")
        cluster_keys = asyncio.run(create_keys(
            load_settings(config_cluster.path, env={"KEYGATE_SECRET": SECRET}), accounts,
            min(args.keys, 1_000), ["role-000"] + roles[:1],
            # a few at a time: many first commands at once on a new cluster client can
            # trip redis-py while it opens its connections
            batch=8))
        revoked = asyncio.run(create_keys(settings, accounts[:1], 20, ["role-000"]))
        # beside it, on the same keys and Redis with ports of their own: the same keygate
        # with metrics off, and with --workers 2
        config_off = config_file(tmp, redis_url, "kg:", upstream_port, policies,
                                 name="metrics-off", metrics=False)
        config_w2 = config_file(tmp, redis_url, "kg:", upstream_port, policies, name="w2")
        keygate_off_proc = serve(config_off, env)
        keygate_w2_proc = serve(config_w2, env, "--workers", "2")
        keygate_proc = serve(config, env)
        keygate_cluster_proc = serve(config_cluster, env)
        procs += [keygate_off_proc, keygate_w2_proc, keygate_proc, keygate_cluster_proc]
        for port in (upstream_port, bare_port, lean_port, floor_port, keygate_floor_port,
                     config.proxy_port,
                     config_off.proxy_port, config_w2.proxy_port, config.decision_port,
                     config_cluster.proxy_port):
            wait_port(port)
        for each in (config, config_off, config_w2, config_cluster):
            asyncio.run(wait_trusted(each.management_port))
        renewal_count_done(config.path)()  # its first count of every key: not under load

        app_key, token, account = keys[0]
        creds = {"X-API-AppKey": app_key, "X-API-AppToken": token}
        path = f"/accounts/{account}/orders/1"
        targets = {
            "bare": Target(f"http://127.0.0.1:{bare_port}{path}", {}),
            "lean": Target(f"http://127.0.0.1:{lean_port}{path}", {}),
            "keygate": Target(f"http://127.0.0.1:{config.proxy_port}{path}", creds),
            "keygate, metrics off": Target(f"http://127.0.0.1:{config_off.proxy_port}{path}",
                                           creds),
            "keygate --workers 2": Target(f"http://127.0.0.1:{config_w2.proxy_port}{path}",
                                          creds),
            "decision API alone": Target(f"http://127.0.0.1:{config.decision_port}/nginx",
                                         decision_headers(creds, path)),
            "keygate on a Redis Cluster": Target(
                f"http://127.0.0.1:{config_cluster.proxy_port}/accounts/{cluster_keys[0][2]}"
                "/orders/1", {"X-API-AppKey": cluster_keys[0][0],
                              "X-API-AppToken": cluster_keys[0][1]}),
        }
        units = [["bare"], ["lean"], ["keygate", "keygate, metrics off"],
                 ["keygate --workers 2"], ["decision API alone"],
                 ["keygate on a Redis Cluster"]]
        nginx = nginx_binary()
        if nginx is not None:
            for name, site_for, headers in (
                ("nginx alone", lambda port: proxy_alone_site(upstream_port, port), {}),
                ("nginx + keygate", lambda port: shipped_site(config.decision_port,
                                                              upstream_port, port), creds),
                ("nginx + keygate --workers 2", lambda port: shipped_site(
                    config_w2.decision_port, upstream_port, port), creds),
                ("nginx + aiohttp floor", lambda port: shipped_site(floor_port, upstream_port,
                                                                    port), creds),
                ("nginx + keygate's server floor", lambda port: shipped_site(
                    keygate_floor_port, upstream_port, port), creds),
            ):
                listen = free_port()
                proc, workdir = start_nginx(nginx, site_for(listen), listen)
                procs.append(proc)
                nginx_dirs.append(workdir)
                targets[name] = Target(f"http://127.0.0.1:{listen}{path}", headers)
            units += [["nginx alone", "nginx + keygate"], ["nginx + keygate --workers 2"],
                      ["nginx + aiohttp floor"], ["nginx + keygate's server floor"]]
        print("load: upstream direct, then every target in alternating rounds …", flush=True)
        direct = load(f"http://127.0.0.1:{upstream_port}{path}", {}, args.seconds,
                      args.connections)
        runs = load_rounds(units, targets, args.rounds, args.seconds, args.connections)
        medians = {name: median(each) for name, each in runs.items()}

        def shown(name: str) -> str:
            return f"{medians[name]}  {all_runs(runs[name])}"

        bare, lean, keygate = medians["bare"], medians["lean"], medians["keygate"]
        workers2 = medians["keygate --workers 2"]
        decision_alone = medians["decision API alone"]
        # metrics on / off per round (each pair ran back to back), and their median
        metrics_ratios = sorted(on.rps / off.rps for on, off in zip(
            runs["keygate"], runs["keygate, metrics off"], strict=True))
        # latency without queueing: one connection, one request at a time
        bare_one = load(targets["bare"].url, {}, args.seconds, 1)
        keygate_one = load(targets["keygate"].url, creds, args.seconds, 1)
        keygate_off_one = load(targets["keygate, metrics off"].url, creds, args.seconds, 1)
        for proc in (keygate_off_proc, keygate_w2_proc):
            stop(proc)

        warm_trips, cold_trips = asyncio.run(round_trips([redis_url], config.proxy_port,
                                                         keys[1:], keys[0]))
        cluster_warm, cluster_cold = asyncio.run(round_trips(
            redis_cluster.node_urls(cluster_url), config_cluster.proxy_port, cluster_keys[1:],
            cluster_keys[0]))
        stop(keygate_cluster_proc)
        print("revocation: a second instance on the same Redis …", flush=True)
        config_b = config_file(tmp, redis_url, "kg:", upstream_port, policies, name="b")
        keygate_b_proc = serve(config_b, env)
        procs.append(keygate_b_proc)
        wait_port(config_b.proxy_port)
        asyncio.run(wait_trusted(config_b.management_port))
        delays = sorted(asyncio.run(revocation_delays(config.management_port,
                                                      config_b.proxy_port, admin, revoked)))
        for proc in (keygate_b_proc, keygate_proc):
            stop(proc)

        instructions: dict[str, float] = {}
        stages: dict[str, float] = {}
        if args.instructions:
            print("instructions per request under callgrind …", flush=True)
            keygate_cmd = [PY, "-m", "gateway", "--config", str(config.path), "serve"]
            keygate_off_cmd = [PY, "-m", "gateway", "--config", str(config_off.path), "serve"]
            nginx_asks = decision_headers(creds, path)
            for name, cmd, port, url_path, headers, settled in (
                ("bare", [PY, SERVERS, "bare-proxy", str(cg_port := free_port()), upstream_url],
                 cg_port, path, {}, None),
                ("bare, sent keygate's 8 upstream headers by the client",
                 [PY, SERVERS, "bare-proxy", str(cg_port := free_port()), upstream_url],
                 cg_port, path, keygate_headers(app_key, account), None),
                ("lean", [PY, SERVERS, "lean-proxy", str(cg_port := free_port()), upstream_url],
                 cg_port, path, {}, None),
                ("keygate", keygate_cmd, config.proxy_port, path, creds,
                 renewal_count_done(config.path)),
                ("keygate, metrics off", keygate_off_cmd, config_off.proxy_port, path, creds,
                 None),
                ("decision API", keygate_cmd, config.decision_port, "/nginx", nginx_asks,
                 renewal_count_done(config.path)),
                ("decision API, metrics off", keygate_off_cmd, config_off.decision_port,
                 "/nginx", nginx_asks, None),
                ("aiohttp floor", [PY, SERVERS, "decision-floor", str(cg_port := free_port())],
                 cg_port, "/nginx", nginx_asks, None),
                ("aiohttp floor, guarded",
                 [PY, SERVERS, "decision-floor-guarded", str(cg_port := free_port())],
                 cg_port, "/nginx", nginx_asks, None),
                ("keygate's decision server, deciding nothing",
                 [PY, SERVERS, "decision-floor-keygate", str(cg_port := free_port())],
                 cg_port, "/nginx", nginx_asks, None),
            ):
                instructions[name] = instructions_per_request(cmd, port, url_path, headers,
                                                              env, settled=settled)
            print("instructions per call of the pipeline's stages …", flush=True)
            stages = stage_instructions(config_off.path, env, creds, path)

        print("decision cost by policy size …", flush=True)
        decisions = decision_cost(tmp)
        print(f"memory: {args.memory_keys} keys, export, listing …", flush=True)
        memory = asyncio.run(memory_and_listing(redis_url, tmp, args.memory_keys))

        million_rows = []
        if args.million:
            print("1,000,000 keys in one account: load, list, memory …", flush=True)
            million_rows = million_figures(asyncio.run(million(redis_url)))

        added_p99 = keygate_one.p99_ms - bare_one.p99_ms
        ratio = keygate.rps / bare.rps
        instruction_rows = []
        if instructions:
            kg = instructions["keygate"]
            decision = instructions["decision API"]
            instruction_rows = [
                ("instructions per request (callgrind, user space)",
                 "; ".join(f"{name} {count / 1000:,.0f}k" for name, count in instructions.items()
                           if name in ("bare", "lean", "keygate", "keygate, metrics off")
                           or name.startswith("bare,"))),
                ("instructions: bare / keygate, lean / keygate",
                 f"{instructions['bare'] / kg:.3f}, {instructions['lean'] / kg:.3f}"),
                ("instructions added by metrics (keygate on − off)",
                 f"{(kg - instructions['keygate, metrics off']) / 1000:,.1f}k per request "
                 f"({(kg / instructions['keygate, metrics off'] - 1) * 100:.1f} %)"),
                ("instructions per decision request (callgrind, user space)",
                 "; ".join(f"{name} {count / 1000:,.0f}k" for name, count in instructions.items()
                           if "decision" in name or "floor" in name)),
                ("instructions: keygate's proxy / decision API (the requests/s ratio they "
                 "would allow)", f"{kg / decision:.3f}"),
                ("where a decision request's instructions go", decision_breakdown(instructions,
                                                                                  stages)),
            ]
        nginx_rows = [("nginx rows", "skipped: no nginx with the auth_request module")]
        if nginx is not None:
            alone, asking = medians["nginx alone"], medians["nginx + keygate"]
            asking2 = medians["nginx + keygate --workers 2"]
            floor = medians["nginx + aiohttp floor"]
            server_floor = medians["nginx + keygate's server floor"]
            nginx_rows = [
                ("nginx alone (proxy to the same upstream)", shown("nginx alone")),
                ("nginx + keygate decision API, one worker", shown("nginx + keygate")),
                ("nginx + keygate decision API, --workers 2",
                 shown("nginx + keygate --workers 2")),
                ("nginx + aiohttp floor (a decider that decides nothing)",
                 shown("nginx + aiohttp floor")),
                ("nginx + keygate (one worker) / nginx alone (target ≥ 0.40)",
                 f"{asking.rps / alone.rps:.3f} (medians of {args.rounds} alternating runs)"),
                ("nginx + keygate --workers 2 / nginx alone",
                 f"{asking2.rps / alone.rps:.3f} ({asking2.rps / asking.rps:.2f}× one worker)"),
                ("nginx + keygate's decision server deciding nothing",
                 shown("nginx + keygate's server floor")),
                ("nginx + aiohttp floor / nginx alone (what an aiohttp decider can reach)",
                 f"{floor.rps / alone.rps:.3f}"),
                ("nginx + keygate's server floor / nginx alone (what keygate's decision port "
                 "reaches before it decides anything)", f"{server_floor.rps / alone.rps:.3f}"),
            ]
        rows = [
            ("upstream direct", str(direct)),
            ("bare aiohttp proxy", shown("bare")),
            ("keygate (auth + authz + proxy, warm)", shown("keygate")),
            ("lean proxy (keygate's forwarding, no auth)", shown("lean")),
            ("keygate / bare proxy (target ≥ 1.0)", f"{ratio:.3f} (medians of "
                                                     f"{args.rounds} alternating runs)"),
            ("keygate / lean proxy (cost of auth, routing, header hygiene)",
             f"{keygate.rps / lean.rps:.3f}"),
            ("keygate, metrics off", shown("keygate, metrics off")),
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
                                    f"{workers2.p99_ms:.2f} ms  "
                                    f"{all_runs(runs['keygate --workers 2'])}"),
            ("decision API alone (wrk → /nginx as auth_request asks, one worker)",
             shown("decision API alone")),
            ("decision API alone / keygate's proxy (target ≥ 2.0)",
             f"{decision_alone.rps / keygate.rps:.3f} (medians of {args.rounds} alternating "
             "runs)"),
            *nginx_rows,
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
            ("keygate on a 3-master Redis Cluster (same keygate, warm key)",
             shown("keygate on a Redis Cluster")),
            ("keygate on a Cluster / on one server (same ratio to the bare proxy: 1.0)",
             f"{medians['keygate on a Redis Cluster'].rps / keygate.rps:.3f} (cluster / bare "
             f"{medians['keygate on a Redis Cluster'].rps / bare.rps:.3f}, one server / bare "
             f"{ratio:.3f})"),
            ("Redis commands per request on the Cluster, warm key / cold key (target 1)",
             f"{cluster_warm:.3f} / {cluster_cold:.3f} (summed over the three masters)"),
            *memory_rows(args.memory_keys, memory),
            *million_rows,
        ]
    finally:
        for proc in reversed(procs):
            stop(proc)
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
        for workdir in nginx_dirs:
            shutil.rmtree(workdir, ignore_errors=True)

    write_report(rows, args)


def memory_only(report: Path, count: int) -> None:
    """The rows of Redis memory, listing and export at ``count`` keys alone, on a
    redis-server of their own, put in place in the report's table."""
    with private_redis() as (redis_url, workdir):
        figures = memory_rows(count, asyncio.run(memory_and_listing(redis_url, workdir, count)))
    put_in_place(report, figures, f"The {count:,}-key rows were measured apart:",
                 f"python bench/run.py --memory-only --memory-keys {count}")


def write_report(rows: list[tuple[str, str]], args: argparse.Namespace) -> None:
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    print("\n" + table)
    machine = (
        f"{platform.node()}: {os.cpu_count()} cores ({cpu_model()}), "
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
        f"{' --million' if args.million else ''}"
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


if __name__ == "__main__":
    main()
