"""Prometheus metrics that are true: every family counts what it says, label values stay
bounded whatever a client sends, metrics off costs the request path nothing, and under
``serve --workers 2`` every scrape shows the sum of all workers (custom collectors once).
The Grafana dashboard asks only for what keygate exports, and the README lists it all.

Real stack: the private redis-server, the proxy port as served (ProxyRunner), the
metrics application, real sockets for the connection guard, and ``keygate serve`` in a
subprocess for the workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import TEST_SECRET, Key, ProxyTestServer
from ports import free_port
from prometheus_client.parser import text_string_to_metric_families
from relay import Relay

from gateway import pipeline, proxy, series, telemetry
from gateway.app import build_gateway, reload_policy, running
from gateway.context import Gateway
from gateway.management.metrics import build_metrics_app
from gateway.settings import PROJECT_ROOT
from gateway.store import CLI_ACTOR, KeyQuery

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = "keygate_requests_total"
DURATION = "keygate_request_duration_seconds"


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples if s.name == name
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text, name).get(tuple(sorted(labels.items())))


def wrong_token(key: Key) -> dict[str, str]:
    """The key with another token (its last character changed, so never the same)."""
    last = "y" if key.token.endswith("x") else "x"
    return {**key.headers, "X-API-AppToken": key.token[:-1] + last}


def stage_counts(text: str) -> dict[str, float]:
    return {dict(k)["stage"]: v for k, v in samples(text, DURATION + "_count").items()}


async def scrape(client: Any) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


@pytest.fixture
async def metrics(gateway: Gateway, aiohttp_client: Callable[..., Any]) -> Any:
    return await aiohttp_client(build_metrics_app(gateway))


# -- what the proxy port counts ----------------------------------------------------------
async def test_each_request_is_counted_once_by_route_status_class_and_decision(
    proxy, metrics, make_key
):
    reader = await make_key("acme", ["orders-reader"])
    wrong = wrong_token(reader)
    sent = [
        *[("GET", "/orders/1", reader.headers)] * 5,            # allowed, 200
        *[("POST", "/orders/1", reader.headers)] * 4,           # 403 not_permitted
        *[("GET", "/beta/orders/1", reader.headers)] * 3,       # 403 no_grant
        *[("GET", "/orders/1", {})] * 2,                        # 401 missing_credentials
        *[("GET", "/orders/1", wrong)] * 3,                     # 401 invalid_credentials
        ("GET", "/nowhere", reader.headers),                    # 404 no_route
        ("GET", "/orders/a%2Fb", reader.headers),               # 400 bad_path
    ]
    for method, path, headers in sent:
        response = await proxy.request(method, path, headers=headers)
        await response.read()
    text = await scrape(metrics)
    assert samples(text, REQUESTS) == {
        (("decision", "allowed"), ("route", "orders"), ("status", "2xx")): 5,
        (("decision", "not_permitted"), ("route", "orders"), ("status", "4xx")): 4,
        (("decision", "no_grant"), ("route", "beta-orders"), ("status", "4xx")): 3,
        (("decision", "missing_credentials"), ("route", "orders"), ("status", "4xx")): 2,
        (("decision", "invalid_credentials"), ("route", "orders"), ("status", "4xx")): 3,
        (("decision", "no_route"), ("route", "(none)"), ("status", "4xx")): 1,
        (("decision", "bad_path"), ("route", "(none)"), ("status", "4xx")): 1,
    }
    # each stage observed exactly for the requests that reached it
    assert stage_counts(text) == {
        "authentication": 5 + 4 + 3 + 2 + 3,
        "authorization": 5 + 4 + 3,
        "upstream": 5,
        "total": len(sent),
    }
    # buckets down to 5 µs (a cached decision takes about 1), cumulative, +Inf = count
    total = sorted((float(dict(k)["le"]), v) for k, v in samples(text, DURATION + "_bucket")
                   .items() if dict(k)["stage"] == "total")
    assert [le for le, _ in total] == [*telemetry.STAGE_BUCKETS, float("inf")]
    assert [v for _, v in total] == sorted(v for _, v in total)
    assert total[-1][1] == len(sent)


async def test_an_upstream_failure_counts_as_allowed_with_its_error(
    proxy_with, make_key, closed_port
):
    key = await make_key("acme", ["orders-reader"])
    routes = [{"name": "dead", "path_prefix": "/dead", "upstream": f"http://127.0.0.1:{closed_port}",
               "account": "acme", "resource": "orders"}]
    other = await proxy_with(routes=routes, metrics_listen="127.0.0.1:0")
    response = await other.get("/dead/1", headers=key.headers)
    assert response.status == 502
    text = other.server.gateway.telemetry.exposition().decode()
    assert samples(text, REQUESTS) == {
        (("decision", "allowed"), ("route", "dead"), ("status", "5xx")): 1}
    assert samples(text, "keygate_forward_errors_total") == {
        (("code", "upstream_unreachable"), ("route", "dead")): 1}
    assert stage_counts(text)["upstream"] == 1  # a failed attempt is timed too


async def test_no_label_value_is_chosen_by_the_client(gateway, proxy, metrics, make_key):
    """Random paths, hosts, accounts, keys, tokens and header names: the number of series
    stays what keygate's own code and config allow, and none of the strings appears."""
    key = await make_key("acme", ["orders-reader"])
    before = await scrape(metrics)
    chosen = [uuid.uuid4().hex for _ in range(150)]
    for i, word in enumerate(chosen):
        headers = {f"X-{word}": word, "Host": f"{word}.api.test"}
        if i % 3 == 0:
            headers.update(key.headers)
        elif i % 3 == 1:
            headers.update({"X-API-AppKey": f"kgk-acme-{word[:10].upper()}",
                            "X-API-AppToken": "kgt_" + word})
        path = (f"/accounts/{word}/orders/1", f"/{word}", f"/catalog/{word}")[i % 3]
        response = await proxy.get(path, headers=headers)
        await response.read()
    text = await scrape(metrics)
    for word in chosen:
        assert word not in text and word[:10].upper() not in text
    series = samples(text, REQUESTS)
    assert len(series) <= 8, series  # routes × a few decisions, not one per request
    assert len(text) < len(before) + 20_000  # whatever it grew by is not per request


async def test_label_values_from_code_are_capped_even_if_a_bug_made_them_up():
    """The cap that stands between a future bug (a code made from input) and unbounded
    series: past MAX_CODE_VALUES distinct values, the rest share (other)."""
    on = telemetry.Telemetry(enabled=True)
    requests = on.requests
    assert requests is not None
    for i in range(series.MAX_CODE_VALUES + 50):
        requests.answered("orders", 403, f"code-{i}", time.perf_counter())
    text = on.exposition().decode()
    decisions = {dict(k)["decision"] for k in samples(text, REQUESTS)}
    assert len(decisions) == series.MAX_CODE_VALUES + 1
    assert value(text, REQUESTS, route="orders", status="4xx", decision="(other)") == 50


# -- caches, store, policy ---------------------------------------------------------------
async def test_cache_hits_misses_and_evictions(
    make_settings, clock, aiohttp_client, make_key, gateway
):
    gw = build_gateway(make_settings(store_prefix=gateway.settings.store_prefix,
                                     credential_cache_size=2, decision_cache_size=1),
                       clock=clock)
    gw.start()
    try:
        client = await aiohttp_client(ProxyTestServer(gw))
        await _until(lambda: gw.store.cache_trusted)
        keys = [await make_key("acme", ["orders-reader"], label=f"k{i}") for i in range(3)]
        first = keys[0]
        for _ in range(3):
            assert (await client.get("/orders/1", headers=first.headers)).status == 200
        text = gw.telemetry.exposition().decode()
        hits, misses, evictions = ("keygate_cache_hits_total", "keygate_cache_misses_total",
                                   "keygate_cache_evictions_total")
        assert value(text, misses, cache="credential") == 1  # one round trip, then memory
        assert value(text, hits, cache="credential") == 2
        assert value(text, misses, cache="decision") == 1
        assert value(text, hits, cache="decision") == 2
        assert value(text, evictions, cache="credential") == 0
        # three keys through a cache of two: the third evicts the first; a write
        # decision evicts the read decision from a decision cache of one
        for k in keys[1:]:
            assert (await client.get("/orders/1", headers=k.headers)).status == 200
        assert (await client.post("/orders/1", headers=keys[2].headers)).status == 403
        text = gw.telemetry.exposition().decode()
        assert value(text, evictions, cache="credential") == 1
        assert value(text, evictions, cache="decision") == 1
        assert value(text, misses, cache="credential") == 3
    finally:
        await gw.close()


async def test_invalidations_heard_and_resyncs_are_counted(gateway, make_key):
    await _until(lambda: gateway.store.cache_trusted)
    text = gateway.telemetry.exposition().decode()
    assert value(text, "keygate_cache_resyncs_total") == 1
    key = await make_key("acme", ["orders-reader"])
    await gateway.store.update_key("acme", key.app_key, actor=CLI_ACTOR, label="renamed")

    def heard() -> bool:
        text = gateway.telemetry.exposition().decode()
        return (value(text, "keygate_cache_invalidations_total") or 0) >= 2

    await _until(heard)  # the create and the update, each published by its script


async def test_copies_made_for_q_are_counted_with_their_time(gateway, make_key):
    """Each copy of a label index that q's search makes (gateway/store/search.py) is
    observed once, with the seconds it took; a search that uses the copy kept is not."""
    copies = "keygate_search_copy_duration_seconds"
    search = gateway.store.label_search
    # a copy from the first key (else 20,000), made by the search itself
    search.min_keys, search.in_redis_while_made = 0, 0
    text = gateway.telemetry.exposition().decode()
    assert value(text, copies + "_count") == 0
    for _ in range(3):
        await make_key("acme", ["orders-reader"])
    for _ in range(2):
        _, total = await gateway.store.list_keys("acme", KeyQuery(q="k", per_page=10))
        assert total >= 3
    text = gateway.telemetry.exposition().decode()
    assert gateway.store.label_search.builds == 1
    assert value(text, copies + "_count") == 1 and value(text, copies + "_sum") > 0


async def test_store_latency_and_errors_while_redis_is_gone(
    make_settings, clock, aiohttp_client, redis_url
):
    if redis_url.startswith("memory://"):
        pytest.skip("cuts a relay in front of a real redis-server")
    relay = await Relay(int(redis_url.rsplit(":", 1)[1].split("/")[0])).start()
    gw = build_gateway(make_settings(store_url=relay.url), clock=clock)
    try:
        client = await aiohttp_client(ProxyTestServer(gw))
        issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
        key = Key(issued.record.app_key, issued.token or "")
        assert (await client.get("/orders/1", headers=key.headers)).status == 200
        relay.cut()
        response = await client.get("/orders/1", headers=key.headers)
        assert response.status == 503
        text = gw.telemetry.exposition().decode()
        assert value(text, "keygate_store_errors_total", operation="auth_lookup") == 1
        assert value(text, "keygate_store_duration_seconds_count", operation="auth_lookup") == 2
        assert value(text, REQUESTS, route="orders", status="5xx",
                     decision="store_unavailable") == 1
    finally:
        await gw.close()
        await relay.close()


async def test_policy_version_and_reloads(make_settings, clock, tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    gw = build_gateway(make_settings(policies_dir=str(policies)), clock=clock)
    try:
        text = gw.telemetry.exposition().decode()
        assert samples(text, "keygate_policy_info") == {(("version", gw.policy.version),): 1}
        assert value(text, "keygate_policy_lines") == gw.policy.lines
        assert value(text, "keygate_policy_reloads_total", result="failure") == 0
        examples = policies / "examples.csv"
        examples.write_text(examples.read_text() + "p, extra-role, *, orders, read, allow\n")
        assert await reload_policy(gw)
        examples.write_text(examples.read_text() + "p, broken line\n")
        assert not await reload_policy(gw)
        text = gw.telemetry.exposition().decode()
        assert value(text, "keygate_policy_reloads_total", result="success") == 1
        assert value(text, "keygate_policy_reloads_total", result="failure") == 1
        # the version shown is the one in force: the reloaded one, not the broken one
        assert samples(text, "keygate_policy_info") == {(("version", gw.policy.version),): 1}
    finally:
        await gw.close()


async def test_build_info_names_the_versions(gateway):
    import platform

    text = gateway.telemetry.exposition().decode()
    assert samples(text, "keygate_build_info") == {(
        ("aiohttp", aiohttp.__version__), ("python", platform.python_version()),
        ("version", __import__("gateway").__version__)): 1}


# -- connections -------------------------------------------------------------------------
async def test_open_connections_per_port_and_refusals_by_code(make_settings):
    settings = make_settings(proxy_listen="127.0.0.1:0", management_listen="127.0.0.1:0",
                             metrics_listen="127.0.0.1:0")
    gw = build_gateway(settings)
    async with running(gw) as urls:
        proxy_port = urls.proxy.rsplit(":", 1)[1]
        refusals_before = value(gw.telemetry.exposition().decode(),
                                "keygate_connection_refusals_total",
                                code="malformed_request") or 0
        held = [await asyncio.open_connection("127.0.0.1", int(proxy_port)) for _ in range(3)]

        def open_on_proxy() -> float | None:
            return value(gw.telemetry.exposition().decode(), "keygate_open_connections",
                         port=proxy_port)

        await _until(lambda: open_on_proxy() == 3)
        reader, writer = held[0]
        writer.write(b"GET /orders/1 HTTP/1.1\nHost: x\n\n")  # bare LF: refused, closed
        await reader.read()
        for _, w in held[1:]:
            w.close()
        await _until(lambda: open_on_proxy() == 0)
        text = gw.telemetry.exposition().decode()
        assert value(text, "keygate_connection_refusals_total",
                     code="malformed_request") == refusals_before + 1
        async with aiohttp.ClientSession() as session, session.get(
            urls.metrics + "/metrics"
        ) as response:  # the scrape's own connection is on the metrics port
            assert value(await response.text(), "keygate_open_connections",
                         port=urls.metrics.rsplit(":", 1)[1]) == 1


# -- metrics off -------------------------------------------------------------------------
async def test_metrics_off_the_request_path_neither_times_nor_counts(
    make_settings, clock, aiohttp_client, monkeypatch
):
    """With ``metrics_listen`` empty no clock is read and no counter moves for a request;
    the same requests with metrics on do read it (so the spy can see it)."""
    calls: list[str] = []
    real = time.perf_counter

    def spy() -> float:
        calls.append(sys._getframe(1).f_globals.get("__name__", "?"))
        return real()

    async def traffic(metrics_listen: str) -> tuple[Gateway, list[str]]:
        gw = build_gateway(make_settings(metrics_listen=metrics_listen), clock=clock)
        gw.start()
        try:
            client = await aiohttp_client(ProxyTestServer(gw))
            issued = await gw.lifecycle.create("acme", "k", ["orders-reader"], CLI_ACTOR)
            key = Key(issued.record.app_key, issued.token or "")
            wrong = wrong_token(key)
            with monkeypatch.context() as patched:
                for module in (proxy, pipeline, series):
                    patched.setattr(module, "perf_counter", spy)
                patched.setattr(time, "perf_counter", spy)  # gateway.store.core's
                calls.clear()
                for headers, method, status in (
                    (key.headers, "GET", 200), (key.headers, "GET", 200),
                    (key.headers, "POST", 403), ({}, "GET", 401), (wrong, "GET", 401),
                ):
                    response = await client.request(method, "/orders/1", headers=headers)
                    assert response.status == status
                seen = [c for c in calls if c.startswith("gateway")]
        finally:
            await gw.close()
        return gw, seen

    off, seen_off = await traffic("")
    assert seen_off == []
    assert off.telemetry.requests is None and off.telemetry.pipeline is None
    assert off.store.observer is None and off.pipeline.metrics is None
    text = off.telemetry.exposition().decode()
    assert REQUESTS not in text and DURATION not in text and "keygate_cache" not in text
    on, seen_on = await traffic("127.0.0.1:0")
    assert {"gateway.proxy", "gateway.pipeline", "gateway.store.core"} <= set(seen_on)
    assert sum(samples(on.telemetry.exposition().decode(), REQUESTS).values()) == 5


# -- the README and the dashboard --------------------------------------------------------
def test_the_readme_lists_every_family_with_its_labels():
    readme = (ROOT / "README.md").read_text()
    for name, (kind, labels, _) in telemetry.FAMILIES.items():
        exported = {"counter": name + "_total", "gauge": name, "histogram": name}[kind]
        row = next((line for line in readme.splitlines()
                    if line.startswith(f"| `{exported}`")), None)
        assert row is not None, f"README metrics table lacks {exported}"
        for label in labels:
            assert f"`{label}`" in row, (exported, label)


async def test_every_family_defined_is_exported_with_its_type(gateway, proxy, make_key):
    key = await make_key("acme", ["orders-reader"])
    await proxy.get("/orders/1", headers=key.headers)
    await gateway.renewal_gauge.refresh()
    exported = {f.name: f.type for f in text_string_to_metric_families(
        gateway.telemetry.exposition().decode())}
    assert exported == {name: kind for name, (kind, _, _) in telemetry.FAMILIES.items()}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "inf", "nan"}
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus to every series


def promql_names(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, labels matched per metric, labels grouped by) of an expression."""
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    matched: dict[str, set[str]] = {}
    for metric, inside in re.findall(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matched.setdefault(metric, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", inside))
    grouped = {label for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
               for label in re.findall(r"\w+", group)}
    bare = re.sub(r'"[^"]*"|\'[^\']*\'', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", bare)
    names = {word for word, call in re.findall(r"\b([A-Za-z_:][\w:]*)\b\s*(\()?", bare)
             if not call and word.lower() not in PROMQL_WORDS}
    return names, matched, grouped


def dashboard_queries() -> list[str]:
    board = json.loads((ROOT / "deploy" / "grafana" / "keygate.json").read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            metric = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert metric is not None, query
            queries.append(metric.group(1))
    return queries


async def test_the_dashboard_asks_only_for_what_keygate_exports(gateway, proxy, make_key):
    """Scrape a real keygate and check every name and label in every panel against it."""
    key = await make_key("acme", ["orders-reader"])
    await proxy.get("/orders/1", headers=key.headers)
    await gateway.renewal_gauge.refresh()
    families = list(text_string_to_metric_families(gateway.telemetry.exposition().decode()))
    series: dict[str, set[str]] = {}  # every sample name a query may use → its labels
    for family in families:
        labels = set(telemetry.FAMILIES[family.name][1]) | SCRAPE_LABELS
        suffixes = {"counter": ("_total",), "gauge": ("",),
                    "histogram": ("_bucket", "_sum", "_count")}[family.type]
        for suffix in suffixes:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    queries = dashboard_queries()
    used: set[str] = set()
    for query in queries:
        names, matched, grouped = promql_names(query)
        assert names, f"no metric in {query!r}"
        unknown = names - set(series)
        assert not unknown, f"{query!r} names {unknown}, which keygate does not export"
        for metric, labels in matched.items():
            assert labels <= series[metric], (query, metric, labels - series[metric])
        allowed = set().union(*(series[n] for n in names))
        assert grouped <= allowed, (query, grouped - allowed)
        used |= names
    # and it shows what the issue asks for
    for wanted in ("keygate_requests_total", "keygate_request_duration_seconds_bucket",
                   "keygate_cache_hits_total", "keygate_store_duration_seconds_bucket",
                   "keygate_store_errors_total", "keygate_open_connections",
                   "keygate_policy_info", "keygate_keys_renewal_alert",
                   # the decision API's traffic, and the policy across instances
                   "keygate_decision_requests_total", "keygate_policy_in_sync",
                   "keygate_policy_refused", "keygate_policy_announced_info"):
        assert wanted in used, wanted


def test_the_promql_reader_of_the_dashboard_test_can_fail():
    names, matched, grouped = promql_names(
        'sum by (le, stagez) (rate(keygate_made_up_total{route="x",bogus=~"$v"}[5m]))')
    assert names == {"keygate_made_up_total"}
    assert matched == {"keygate_made_up_total": {"route", "bogus"}}
    assert grouped == {"le", "stagez"}


# -- serve --workers 2: one scrape, the sum of all ----------------------------------------


async def test_workers_every_scrape_shows_the_sum_of_all_workers(
    tmp_path, redis_url, upstream
):
    if redis_url.startswith("memory://"):
        pytest.skip("workers need a shared Redis")
    ports = {name: free_port() for name in ("proxy", "management", "metrics")}
    config = tmp_path / "workers.toml"
    config.write_text(
        f'proxy_listen = "127.0.0.1:{ports["proxy"]}"\n'
        f'management_listen = "127.0.0.1:{ports["management"]}"\n'
        f'metrics_listen = "127.0.0.1:{ports["metrics"]}"\n'
        f'store_url = "{redis_url}"\nstore_prefix = "mw-{uuid.uuid4().hex[:8]}:"\n'
        "auth_failure_limit = 1000\n"  # 30 wrong tokens from one address stay 401s
        "[[routes]]\n"
        f'name = "orders"\npath_prefix = "/orders"\nupstream = "{upstream.url}"\n'
        'account = "acme"\nresource = "orders"\n'
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "KEYGATE_SECRET": TEST_SECRET, "TMPDIR": str(scratch)}
    env.pop(telemetry.MULTIPROC_ENV, None)
    created = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "keys", "create",
         "--account", "acme", "--label", "reader", "--role", "orders-reader", "--json"],
        env=env, capture_output=True, check=True, timeout=60,
    )
    issued = json.loads(created.stdout)
    key = Key(issued["appKey"], issued["appToken"])
    parent = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    proxy_url = f"http://127.0.0.1:{ports['proxy']}"
    metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
    try:
        await _until_every_worker_answers(
            f"http://127.0.0.1:{ports['management']}/healthz", parent, workers=2)
        private = list(scratch.glob("keygate-metrics-*"))
        assert len(private) == 1 and oct(private[0].stat().st_mode)[-3:] == "700"
        wrong = wrong_token(key)
        plan = ([("GET", key.headers, 200)] * 50 + [("GET", wrong, 401)] * 30
                + [("POST", key.headers, 403)] * 20)
        request_ids = []
        for method, headers, status in plan:
            # a new connection each time: the kernel spreads connections, not requests
            async with aiohttp.ClientSession() as fresh, fresh.request(
                method, proxy_url + "/orders/1", headers=headers
            ) as response:
                assert response.status == status
                request_ids.append(response.headers["X-Request-Id"])
        # request ids start with a per-process prefix: both workers answered some
        assert len({rid[:12] for rid in request_ids}) == 2

        # three kept-alive connections on the management port, wherever the kernel
        # put them; wait until the proxy's closed ones are gone from every worker
        held = [await asyncio.open_connection("127.0.0.1", ports["management"])
                for _ in range(3)]
        for reader, writer in held:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")

        async def scrape_fresh() -> str:
            async with aiohttp.ClientSession() as fresh, fresh.get(metrics_url) as r:
                assert r.status == 200
                return await r.text()

        expected = {
            (("decision", "allowed"), ("route", "orders"), ("status", "2xx")): 50,
            (("decision", "invalid_credentials"), ("route", "orders"), ("status", "4xx")): 30,
            (("decision", "not_permitted"), ("route", "orders"), ("status", "4xx")): 20,
        }
        # each worker publishes its totals within PUBLISH_INTERVAL: wait for that (and
        # for the proxy's closed connections to be gone), then every scrape must agree
        deadline = time.monotonic() + 20
        while not (samples(text := await scrape_fresh(), REQUESTS) == expected
                   and value(text, "keygate_open_connections", port=str(ports["proxy"])) == 0
                   and value(text, "keygate_open_connections",
                             port=str(ports["management"])) == 3):
            assert time.monotonic() < deadline, "the workers' totals never added up"
            await asyncio.sleep(0.05)
        texts = [await scrape_fresh() for _ in range(8)]
        for family in text_string_to_metric_families(texts[0]):  # typed as in one process
            assert telemetry.FAMILIES[family.name][0] == family.type, family.name
        for text in texts:
            assert samples(text, REQUESTS) == expected
            assert stage_counts(text) == {"authentication": 100, "authorization": 70,
                                          "upstream": 50, "total": 100}
            assert value(text, "keygate_access_denied_total", account="acme",
                         resource="orders") == 20
            assert value(text, "keygate_cache_resyncs_total") == 2  # one per worker
            # the same in every worker: rendered once, never summed
            assert list(samples(text, "keygate_build_info").values()) == [1]
            assert list(samples(text, "keygate_policy_info").values()) == [1]
            assert value(text, "keygate_policy_reloads_total", result="success") == 0
            # livesum over the workers: the three held, wherever they are
            assert value(text, "keygate_open_connections",
                         port=str(ports["management"])) == 3
            assert value(text, "keygate_open_connections", port=str(ports["proxy"])) == 0

        # each worker counts the renewal gauge from the same store: shown once
        async def renewal_counted() -> bool:
            async with aiohttp.ClientSession() as fresh, fresh.get(metrics_url) as r:
                text = await r.text()
            return (value(text, "keygate_keys_renewal_alert_computed_timestamp_seconds")
                    or 0) > 0 and value(text, "keygate_keys_renewal_alert",
                                        account="acme", level="none") == 1
        deadline = time.monotonic() + 20
        while not await renewal_counted():
            assert time.monotonic() < deadline, "the renewal gauge never showed 1 key"
            await asyncio.sleep(0.05)
        for _, writer in held:
            writer.close()
    finally:
        parent.send_signal(signal.SIGTERM)
        try:
            assert parent.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            parent.kill()
            raise
    # the private directory goes with the run
    assert list(scratch.glob("keygate-metrics-*")) == []
    assert b"Traceback" not in (parent.stderr.read() if parent.stderr else b"")


WORKER = """
import sys, time
from gateway import telemetry
metrics = telemetry.Telemetry(True, telemetry.multiprocess_dir())
requests = metrics.requests
for status, decision in ((200, "allowed"),) * 3 + ((401, "missing_credentials"),):
    requests.answered("orders", status, decision, time.perf_counter() - 0.002)
metrics.pipeline.authorization.observe(0.0000049)  # the lowest bucket, 5e-06
metrics.store.store_failed("_auth_lookup")
"""  # and exits without publishing: its atexit hook must


def test_a_worker_that_exits_leaves_its_totals_typed_as_counters_and_histograms(tmp_path):
    env = {**os.environ, telemetry.MULTIPROC_ENV: str(tmp_path)}
    for _ in range(2):  # two workers, one after the other
        subprocess.run([sys.executable, "-c", WORKER], env=env, check=True, timeout=60,
                       cwd=ROOT)
    scrape = subprocess.run(
        [sys.executable, "-c", "from gateway import telemetry; import sys; sys.stdout.write("
         "telemetry.Telemetry(False, telemetry.multiprocess_dir()).exposition().decode())"],
        env=env, check=True, timeout=60, capture_output=True, text=True, cwd=ROOT,
    ).stdout
    types = {f.name: f.type for f in text_string_to_metric_families(scrape)}
    assert types["keygate_requests"] == "counter"
    assert types[DURATION] == "histogram"
    assert samples(scrape, REQUESTS) == {
        (("decision", "allowed"), ("route", "orders"), ("status", "2xx")): 6,
        (("decision", "missing_credentials"), ("route", "orders"), ("status", "4xx")): 2,
    }
    assert stage_counts(scrape) == {"total": 8, "authorization": 2, "authentication": 0,
                                    "upstream": 0}
    buckets = samples(scrape, DURATION + "_bucket")
    assert buckets[(("le", "5e-06"), ("stage", "authorization"))] == 2
    assert buckets[(("le", "0.001"), ("stage", "total"))] == 0  # 2 ms each
    assert buckets[(("le", "0.0025"), ("stage", "total"))] == 8
    assert value(scrape, "keygate_store_errors_total", operation="auth_lookup") == 2
    assert "_bucket gauge" not in scrape and "# TYPE keygate_requests gauge" not in scrape


async def _until_every_worker_answers(url: str, process: subprocess.Popen[bytes],
                                      workers: int) -> None:
    """Until ``workers`` processes have answered ``url`` (told apart by their request
    ids' per-process prefix), each on a new connection as the kernel spreads them: the
    first worker to answer says nothing of the others, still starting. (A worker
    listens on its proxy port before its management port.)"""
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"{workers} workers never answered {url}"
        assert process.poll() is None, "keygate exited before it answered"
        try:
            async with aiohttp.ClientSession() as fresh, fresh.get(url) as response:
                if response.status == 200:
                    seen.add(response.headers["X-Request-Id"][:12])
                    continue
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for something that happens in the background (bounded; the bound is not the
    property under test)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)
