"""Several keygate processes on one Redis: revocation reaches the others within 1 s,
and ``serve --workers N`` runs and stops as one service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from conftest import TEST_SECRET, on_one_server_and_a_cluster
from ports import free_port

# the store, cache and revocation behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")


def _config(tmp_path: Path, name: str, redis_url: str, prefix: str, upstream: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'proxy_listen = "127.0.0.1:{free_port()}"\n'
        f'management_listen = "127.0.0.1:{free_port()}"\n'
        f'metrics_listen = "127.0.0.1:{free_port()}"\n'
        f'store_url = "{redis_url}"\n'
        f'store_prefix = "{prefix}"\n'
        "[[routes]]\n"
        'name = "orders"\npath_prefix = "/orders"\n'
        f'upstream = "{upstream}"\naccount = "acme"\nresource = "orders"\n'
    )
    return path


def _urls(config: Path) -> tuple[str, str]:
    text = config.read_text()
    ports = [line.split(":")[-1].strip('"') for line in text.splitlines() if "_listen" in line]
    return f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


def _env() -> dict[str, str]:
    return {**os.environ, "KEYGATE_SECRET": TEST_SECRET}


def _start(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", *extra],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


async def _ready(session: aiohttp.ClientSession, management: str, trusted: bool) -> None:
    """Wait (bounded) until the instance answers, and with trusted=True until its
    credential cache is in use, so the revocation test exercises invalidation."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with session.get(management + "/readyz") as response:
                body = await response.json()
                if response.status == 200 and (not trusted or body["credentialCache"] == "trusted"):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{management} did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _create_key(config: Path, role: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "keys", "create",
         "--account", "acme", "--label", role, "--role", role, "--json"],
        env=_env(), capture_output=True, check=True, timeout=60,
    )
    return json.loads(out.stdout)


async def _refused_within_1s(session: aiohttp.ClientSession, url: str,
                             headers: dict[str, str]) -> float:
    """Ask until refused with a 401 (bounded to a second); answers how long it took (ms)."""
    changed = time.monotonic()
    status = 200
    while time.monotonic() - changed < 1.0:
        async with session.get(url, headers=headers) as r:
            status = r.status
        if status == 401:
            break
        await asyncio.sleep(0.005)
    delay_ms = (time.monotonic() - changed) * 1000
    assert status == 401, f"instance B still accepted it after {delay_ms:.0f} ms"
    return delay_ms


async def test_deactivation_or_sign_out_through_one_instance_is_refused_by_the_other_within_1s(
    tmp_path, redis_url, upstream, record_property
):
    if redis_url.startswith("memory://"):
        pytest.skip("two processes need a shared Redis")
    prefix = f"inst-{uuid.uuid4().hex[:8]}:"
    config_a = _config(tmp_path, "a", redis_url, prefix, upstream.url)
    config_b = _config(tmp_path, "b", redis_url, prefix, upstream.url)
    (_proxy_a, management_a), (proxy_b, management_b) = _urls(config_a), _urls(config_b)
    instance_a, instance_b = _start(config_a), _start(config_b)
    try:
        admin = _create_key(config_a, "user-admin-restricted")
        async with aiohttp.ClientSession() as session:
            await _ready(session, management_a, trusted=False)
            await _ready(session, management_b, trusted=True)
            admin_headers = {"X-API-AppKey": admin["appKey"], "X-API-AppToken": admin["appToken"]}
            async with session.post(
                management_a + "/api/v1/accounts/acme/keys", headers=admin_headers,
                json={"label": "client", "roles": ["orders-reader"]},
            ) as response:
                assert response.status == 201
                client = await response.json()
            client_headers = {"X-API-AppKey": client["appKey"],
                              "X-API-AppToken": client["appToken"]}
            async with session.post(management_a + "/api/v1/auth/login", json={
                "appKey": client["appKey"], "appToken": client["appToken"]}) as response:
                assert response.status == 200
                signed_in = {"Authorization": f"Bearer {(await response.json())['token']}"}
            for headers in (client_headers, signed_in) * 3:  # B now holds the key in its cache
                async with session.get(proxy_b + "/orders/1", headers=headers) as r:
                    assert r.status == 200
            async with session.post(management_a + "/api/v1/auth/logout",
                                    headers=signed_in) as response:
                assert response.status == 204
            await _refused_within_1s(session, proxy_b + "/orders/1", signed_in)
            async with session.get(proxy_b + "/orders/1", headers=client_headers) as r:
                assert r.status == 200  # the pair is not a session: it goes on

            async with session.patch(
                management_a + f"/api/v1/accounts/acme/keys/{client['appKey']}",
                headers=admin_headers, json={"status": "inactive"},
            ) as response:
                assert response.status == 200
            delay_ms = await _refused_within_1s(session, proxy_b + "/orders/1", client_headers)
            record_property("revocation_delay_ms", round(delay_ms, 1))
            print(f"revocation seen by the other instance after {delay_ms:.1f} ms")
    finally:
        assert _stop(instance_a) == 0
        assert _stop(instance_b) == 0


async def test_workers_share_the_ports_and_stop_together(tmp_path, redis_url, upstream):
    if redis_url.startswith("memory://"):
        pytest.skip("workers need a shared Redis")
    prefix = f"workers-{uuid.uuid4().hex[:8]}:"
    config = _config(tmp_path, "w", redis_url, prefix, upstream.url)
    proxy_url, management_url = _urls(config)
    parent = _start(config, "--workers", "2")
    try:
        key = _create_key(config, "orders-reader")
        headers = {"X-API-AppKey": key["appKey"], "X-API-AppToken": key["appToken"]}
        async with aiohttp.ClientSession() as session:
            await _ready(session, management_url, trusted=False)
            # spawn's resource tracker is a child too; workers run multiprocessing.spawn
            children = subprocess.run(
                ["pgrep", "-P", str(parent.pid), "-f", "spawn_main"],
                capture_output=True, text=True,
            ).stdout.split()
            workers = [pid for pid in children if b"resource_tracker" not in _cmdline(pid)]
            assert len(workers) == 2, f"expected 2 worker processes, found {children}"
            for _ in range(20):  # new connections each time: the kernel spreads them
                async with aiohttp.ClientSession() as fresh, fresh.get(
                    proxy_url + "/orders/1", headers=headers
                ) as response:
                    assert response.status == 200
    finally:
        assert _stop(parent) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(
            f"/proc/{pid}/status"
        ).read_bytes().lower()


def test_workers_refuse_the_memory_store(tmp_path):
    config = tmp_path / "mem.toml"
    config.write_text('store_url = "memory://"\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--workers", "2"],
        env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "store_url" in done.stderr and "--workers" in done.stderr


async def test_sighup_reloads_the_policy_of_a_running_gateway(tmp_path, redis_url, upstream):
    if redis_url.startswith("memory://"):
        pytest.skip("the CLI and the server need a shared Redis")
    import shutil

    from gateway.settings import PROJECT_ROOT

    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    config = _config(tmp_path, "hup", redis_url, f"hup-{uuid.uuid4().hex[:8]}:", upstream.url)
    config.write_text(f'policies_dir = "{policies}"\n' + config.read_text())
    proxy_url, management_url = _urls(config)
    process = _start(config)
    try:
        key = _create_key(config, "orders-reader")
        headers = {"X-API-AppKey": key["appKey"], "X-API-AppToken": key["appToken"]}
        async with aiohttp.ClientSession() as session:
            await _ready(session, management_url, trusted=False)
            async with session.get(proxy_url + "/orders/1", headers=headers) as response:
                assert response.status == 200
            examples = policies / "examples.csv"
            examples.write_text(examples.read_text().replace(
                "p, orders-reader, *, orders, read, allow",
                "p, orders-reader, *, orders, read, deny",
            ))
            process.send_signal(signal.SIGHUP)
            deadline, status = time.monotonic() + 10, 200
            while status != 403 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                async with session.get(proxy_url + "/orders/1", headers=headers) as response:
                    status = response.status
            assert status == 403
    finally:
        assert _stop(process) == 0


def test_a_port_in_use_is_a_configuration_error_naming_the_setting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "busy.toml"
        config.write_text(f'proxy_listen = "127.0.0.1:{port}"\nmanagement_listen = "127.0.0.1:0"\n'
                          'metrics_listen = ""\n')
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(config), "serve"],
            env=_env(), capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 2
    assert "proxy_listen" in done.stderr and str(port) in done.stderr
    assert "Traceback" not in done.stderr


async def test_access_log_is_one_json_line_per_request_without_secrets(
    tmp_path, redis_url, upstream
):
    if redis_url.startswith("memory://"):
        pytest.skip("the CLI and the server need a shared Redis")
    config = _config(tmp_path, "log", redis_url, f"log-{uuid.uuid4().hex[:8]}:", upstream.url)
    config.write_text('access_log = true\nlog_format = "json"\n' + config.read_text())
    proxy_url, management_url = _urls(config)
    process = _start(config)
    link_secret = "A" * 43  # well-formed, never issued: 410, and it must not be logged
    try:
        key = _create_key(config, "orders-reader")
        headers = {"X-API-AppKey": key["appKey"], "X-API-AppToken": key["appToken"]}
        async with aiohttp.ClientSession() as session:
            await _ready(session, management_url, trusted=False)
            async with session.get(proxy_url + "/orders/1?q=secret", headers=headers) as r:
                assert r.status == 200
                request_id = r.headers["X-Request-Id"]
            async with session.post(f"{management_url}/api/v1/token-links/{link_secret}") as r:
                assert r.status == 410
    finally:
        assert _stop(process) == 0
    stderr = process.stderr.read().decode()
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    proxied = [e for e in lines if e.get("requestId") == request_id]
    assert len(proxied) == 1
    assert proxied[0] | {"time": 0, "ms": 0, "bytes": 0, "message": ""} == {
        "time": 0, "ms": 0, "bytes": 0, "message": "", "level": "info", "pid": process.pid,
        "logger": "keygate.access", "event": "request", "remote": "127.0.0.1",
        "method": "GET", "path": "/orders/1", "status": 200, "requestId": request_id,
        "appKey": key["appKey"], "account": "acme", "route": "orders", "errorCode": None,
    }
    assert any(e.get("path") == "/api/v1/token-links/…" and e["status"] == 410
               and e["errorCode"] == "token_link_gone" for e in lines)
    for secret in (link_secret, key["appToken"], "q=secret"):
        assert secret not in stderr
