"""`python -m gateway …` as an operator runs it: real subprocesses on the private Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECRET = "cli-test-secret-" + "y" * 40
TIMEOUT = 30  # seconds any one command may take before the test fails (not a timing check)


def clean_environ() -> dict[str, str]:
    """The test process's environment without any KEYGATE_* setting leaking in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}


@pytest.fixture
def cli_env(redis_url: str) -> dict[str, str]:
    if not redis_url.startswith("redis://"):
        pytest.skip("the CLI tests need the private redis-server (a memory:// store is per "
                    "process)")
    return {
        **clean_environ(),
        "KEYGATE_STORE_URL": redis_url,
        "KEYGATE_SECRET": SECRET,
        "KEYGATE_STORE_PREFIX": f"cli-{uuid.uuid4().hex[:12]}:",
    }


def keygate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )


async def akeygate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same, without blocking the event loop (an in-test upstream must keep serving)."""
    return await asyncio.to_thread(keygate, env, *args)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


# -- keys ------------------------------------------------------------------------------
def test_keys_lifecycle(cli_env):
    created = json.loads(ok(keygate(
        cli_env, "keys", "create", "--account", "acme", "--label", "ci", "--role", "owner",
        "--json",
    )))
    app_key, token = created["appKey"], created["appToken"]
    assert re.fullmatch(r"kgk-acme-[0-9A-Z]{10}", app_key)
    assert re.fullmatch(r"kgt_[0-9A-Za-z]{36}", token)
    assert created["label"] == "ci" and created["roles"] == ["owner"]
    assert created["status"] == "active"

    listing_text = ok(keygate(cli_env, "keys", "list", "--account", "acme", "--json"))
    assert token not in listing_text
    listing = json.loads(listing_text)
    assert [row["appKey"] for row in listing] == [app_key]
    assert "appToken" not in listing[0]
    assert listing[0]["status"] == "active"

    # the human-readable listing shows it too
    assert app_key in ok(keygate(cli_env, "keys", "list", "--account", "acme"))

    ok(keygate(cli_env, "keys", "deactivate", app_key))
    listing = json.loads(ok(keygate(cli_env, "keys", "list", "--account", "acme", "--json")))
    assert listing[0]["status"] == "inactive"

    ok(keygate(cli_env, "keys", "activate", app_key))
    listing = json.loads(ok(keygate(cli_env, "keys", "list", "--account", "acme", "--json")))
    assert listing[0]["status"] == "active"

    ok(keygate(cli_env, "keys", "delete", app_key))
    assert json.loads(ok(keygate(cli_env, "keys", "list", "--account", "acme", "--json"))) == []

    again = keygate(cli_env, "keys", "delete", app_key)
    assert again.returncode == 1
    assert app_key in again.stderr


def test_keys_create_plain_output_and_several_roles(cli_env):
    out = ok(keygate(cli_env, "keys", "create", "--account", "beta", "--label", "two roles",
                     "--role", "orders-reader", "--role", "catalog-reader"))
    match = re.search(r"API key\s+(kgk-beta-\S+)", out)
    assert match is not None
    assert re.search(r"API token\s+kgt_\S+", out)
    listing = json.loads(ok(keygate(cli_env, "keys", "list", "--account", "beta", "--json")))
    assert listing[0]["appKey"] == match.group(1)
    assert listing[0]["roles"] == ["orders-reader", "catalog-reader"]


def test_keys_create_unknown_role_exits_2(cli_env):
    result = keygate(cli_env, "keys", "create", "--account", "acme", "--label", "x",
                     "--role", "emperor")
    assert result.returncode == 2
    assert "emperor" in result.stderr
    assert json.loads(ok(keygate(cli_env, "keys", "list", "--account", "acme", "--json"))) == []


@pytest.mark.parametrize("label", ["", "evil\x1b[2Jlabel"])
def test_keys_create_refuses_labels_the_api_refuses(cli_env, label):
    result = keygate(cli_env, "keys", "create", "--account", "acme", "--label", label,
                     "--role", "owner")
    assert result.returncode == 2, result
    assert "label" in result.stderr
    assert json.loads(ok(keygate(cli_env, "keys", "list", "--account", "acme", "--json"))) == []


def test_keys_change_of_a_malformed_key_is_no_such_key(cli_env):
    result = keygate(cli_env, "keys", "delete", "not-a-key")
    assert result.returncode == 1
    assert result.stderr == "keygate: no API key not-a-key\n"


def test_keys_commands_refuse_the_memory_store():
    env = {**clean_environ(), "KEYGATE_STORE_URL": "memory://"}
    for args in (("keys", "create", "--account", "acme", "--label", "x", "--role", "owner"),
                 ("keys", "list", "--account", "acme")):
        result = keygate(env, *args)
        assert result.returncode == 2, result
        assert "store_url" in result.stderr
        assert "Traceback" not in result.stderr


def test_keys_commands_need_a_secret_for_a_real_store(cli_env):
    env = {k: v for k, v in cli_env.items() if k != "KEYGATE_SECRET"}
    result = keygate(env, "keys", "list", "--account", "acme")
    assert result.returncode == 2
    assert "secret" in result.stderr


def test_unreachable_store_exits_2_naming_store_url(cli_env):
    env = {**cli_env, "KEYGATE_STORE_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = keygate(env, "keys", "list", "--account", "acme")
    assert result.returncode == 2
    assert "store_url" in result.stderr


def test_bad_config_file_exits_2_naming_the_setting(tmp_path, cli_env):
    config = tmp_path / "keygate.toml"
    config.write_text('proxy_listen = "127.0.0.1:1"\nstore_urll = "redis://x"\n')
    for args in (("serve",), ("keys", "list", "--account", "acme")):
        result = keygate(cli_env, "--config", str(config), *args)
        assert result.returncode == 2, (args, result)
        assert "store_urll" in result.stderr
        assert "Traceback" not in result.stderr
    # and through KEYGATE_CONFIG
    result = keygate({**cli_env, "KEYGATE_CONFIG": str(config)}, "policy", "check")
    assert result.returncode == 2 and "store_urll" in result.stderr


def test_bad_env_setting_exits_2():
    env = {**clean_environ(), "KEYGATE_PROXY_LISTEN": "nowhere"}
    result = keygate(env, "policy", "check")
    assert result.returncode == 2
    assert "proxy_listen" in result.stderr and "KEYGATE_PROXY_LISTEN" in result.stderr


def test_keys_create_with_a_bad_account_is_a_usage_error(cli_env):
    result = keygate(cli_env, "keys", "create", "--account", "Not_An_Account",
                     "--label", "x", "--role", "owner")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "Not_An_Account" in result.stderr


# -- external keys, account settings (the rest: tests/test_cli_commands.py) -------------
def test_external_keys_and_account_settings_as_an_operator_runs_them(cli_env):
    partner = json.loads(ok(keygate(
        cli_env, "keys", "create", "--account", "beta", "--label", "partner", "--role",
        "owner", "--json",
    )))
    added = json.loads(ok(keygate(
        cli_env, "external-keys", "add", "--account", "acme", partner["appKey"],
        "--role", "orders-reader", "--label", "from beta", "--json",
    )))
    assert (added["appKey"], added["account"], added["roles"]) == (
        partner["appKey"], "beta", ["orders-reader"]
    )
    again = keygate(cli_env, "external-keys", "add", "--account", "acme", partner["appKey"],
                    "--role", "orders-reader")
    assert again.returncode == 1 and "already an external key" in again.stderr
    assert partner["appToken"] not in again.stdout + again.stderr
    assert json.loads(ok(keygate(
        cli_env, "settings", "set", "--account", "acme", "--renewal-period-months", "6",
        "--json",
    ))) == {"renewalPeriodMonths": 6}


# -- policy, settings ------------------------------------------------------------------
def test_policy_check_prints_the_roles():
    out = ok(keygate(clean_environ(), "policy", "check"))
    assert "policy OK" in out
    roles_line = next(line for line in out.splitlines() if line.startswith("roles:"))
    for role in ("owner", "user-admin-restricted", "orders-reader", "orders-writer"):
        assert role in roles_line


def test_policy_check_reports_a_bad_policy(tmp_path):
    (tmp_path / "bad.csv").write_text("p, r, *, orders, read, allow\np, r, *, orders\n")
    env = {**clean_environ(), "KEYGATE_POLICIES_DIR": str(tmp_path)}
    result = keygate(env, "policy", "check")
    assert result.returncode == 1, result  # errors found (2: it could not run)
    assert result.stdout.startswith("bad.csv:2: error: syntax: a p line has 5 values")
    assert result.stdout.endswith("\n1 error, 0 warnings\n") and result.stderr == ""


def test_settings_prints_the_reference_table():
    out = ok(keygate(clean_environ(), "settings"))
    assert out.startswith("| setting | environment | default | meaning |")
    assert "| `proxy_listen` | `KEYGATE_PROXY_LISTEN` | `'127.0.0.1:8080'` |" in out
    assert "`routes` | (file only)" in out


# -- serve -----------------------------------------------------------------------------
async def wait_until_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.returncode is None, "keygate exited before it answered /healthz"
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            assert loop.time() < deadline, "keygate did not answer /healthz in time"
            await asyncio.sleep(0.1)


async def poll_until_status(url: str, headers: dict[str, str], status: int) -> dict:
    """GET until the answer has ``status`` (changes propagate asynchronously), bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url, headers=headers) as response:
                if response.status == status:
                    return await response.json()
                seen = response.status
            assert loop.time() < deadline, f"still {seen}, never {status}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def spawned(*args: str, env: dict[str, str]):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env=env, cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_proxies_with_a_cli_made_key(cli_env, upstream, tmp_path):
    proxy_port, management_port = free_port(), free_port()
    config = tmp_path / "keygate.toml"
    config.write_text(f"""
proxy_listen = "127.0.0.1:{proxy_port}"
management_listen = "127.0.0.1:{management_port}"
metrics_listen = "127.0.0.1:{free_port()}"

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "{upstream.url}"
account = "acme"
resource = "orders"
""")
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    management_url = f"http://127.0.0.1:{management_port}"
    async with spawned("--config", str(config), "serve", env=cli_env) as proc:
        await wait_until_healthy(management_url, proc)

        created = json.loads(ok(await akeygate(
            cli_env, "--config", str(config), "keys", "create", "--account", "acme",
            "--label", "serve test", "--role", "orders-reader", "--json",
        )))
        headers = {"X-API-AppKey": created["appKey"], "X-API-AppToken": created["appToken"]}
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy_url + "/orders/7", headers=headers) as response:
                assert response.status == 200
                assert (await response.json())["path"] == "/orders/7"
            async with session.get(proxy_url + "/orders/7") as response:
                assert response.status == 401
            async with session.get(management_url + "/readyz") as response:
                assert response.status == 200
        assert upstream.last["headers"]["X-Keygate-Key"] == created["appKey"]
        assert "X-API-AppToken" not in upstream.last["headers"]

        # a change made by another process (the CLI) reaches the running gateway
        for command, status, code in (("deactivate", 401, "key_inactive"),
                                      ("activate", 200, None),
                                      ("delete", 401, "invalid_credentials")):
            ok(await akeygate(cli_env, "--config", str(config), "keys", command,
                              created["appKey"]))
            body = await poll_until_status(proxy_url + "/orders/7", headers, status)
            if code is not None:
                assert body["error"]["code"] == code

        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(proc.wait(), TIMEOUT)
        stderr = (await proc.stderr.read()).decode()
        assert returncode == 0, stderr
        assert "Traceback" not in stderr


# -- demo ------------------------------------------------------------------------------
async def test_demo_prints_a_working_curl_line():
    proxy_port, management_port, upstream_port, metrics_port = (
        free_port(), free_port(), free_port(), free_port())
    ports = ("--proxy-port", str(proxy_port), "--management-port", str(management_port),
             "--upstream-port", str(upstream_port), "--metrics-port", str(metrics_port))
    async with spawned("demo", *ports, env=clean_environ()) as proc:
        printed: list[str] = []

        async def read_until(end: str) -> None:
            assert proc.stdout is not None
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "demo stopped printing before the curl line:\n" + "".join(printed)
                printed.append(line)
                if end in line:
                    return

        await asyncio.wait_for(read_until("curl -i"), TIMEOUT)
        text = "".join(printed)
        assert f"metrics         http://127.0.0.1:{metrics_port}/metrics" in text
        app_key = re.search(r"API key\s+(\S+)", text).group(1)
        token = re.search(r"API token\s+(\S+)", text).group(1)
        curl = printed[-1]
        url = re.search(r"curl -i (http://\S+)", curl).group(1)
        assert url.startswith(f"http://127.0.0.1:{proxy_port}/")
        assert app_key in curl and token in curl
        header_values = dict(re.findall(r"-H '([^:]+): ([^']+)'", curl))
        assert header_values == {"X-API-AppKey": app_key, "X-API-AppToken": token}

        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=header_values) as response:
                assert response.status == 200
                echoed = await response.json()
                assert echoed["upstream"] == "keygate demo echo"
                assert echoed["headers"]["X-Keygate-Key"] == app_key
                assert "X-API-AppToken" not in echoed["headers"]
            async with session.get(url, headers={"X-API-AppKey": app_key}) as response:
                assert response.status == 401

            # the second account's key: refused in acme until acme grants it a role
            await asyncio.wait_for(read_until("Ctrl-C stops it."), TIMEOUT)
            partner_text = "".join(printed).split('"globex"', 1)[1]
            partner = re.search(r"API key\s+(kgk-globex-\S+)", partner_text).group(1)
            partner_curl = next(line for line in printed if partner in line and "curl" in line)
            partner_url = re.search(r"curl -i (http://\S+)", partner_curl).group(1)
            partner_headers = dict(re.findall(r"-H '([^:]+): ([^']+)'", partner_curl))
            async with session.get(partner_url, headers=partner_headers) as response:
                assert response.status == 403
            grant = f"http://127.0.0.1:{management_port}/api/v1/accounts/acme/external-keys"
            async with session.post(grant, headers=header_values,
                                    json={"appKey": partner, "roles": ["orders-reader"]}) as r:
                assert r.status == 201
            async with session.get(partner_url, headers=partner_headers) as response:
                assert response.status == 200
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            async with session.get(metrics) as response:
                assert response.status == 200 and "keygate_requests_total" in await response.text()

        proc.send_signal(signal.SIGTERM)  # the graceful stop, as for serve
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        stderr = (await proc.stderr.read()).decode()
        assert "Traceback" not in stderr and "stopped serving" in stderr


# -- store URLs and secrets in errors: one line, never a password ---------------------
PASSWORD = "hunter2"


@pytest.mark.parametrize("url", [
    f"redis+sentinel://:{PASSWORD}/x@h/svc",
    f"redis+cluster://:{PASSWORD}/x@h:7000",
    f"redis://:{PASSWORD}/x@127.0.0.1:1/0",  # redis-py would read "hunter2" as the port
    f"redis://:{PASSWORD}@127.0.0.1:99999/0",
    f"redis://:{PASSWORD}@127.0.0.1:1/0?socket_timeout=abc",
    f"unix://:{PASSWORD}@/tmp/redis.sock?db=x",
])
def test_a_malformed_store_url_is_one_configuration_error_without_the_password(
    cli, env, monkeypatch, url
):
    """Passwords made as base64 hold '/': the URL is checked at start (redis:// by
    redis-py's own reading, whose message may quote part of the password and is not
    repeated), and what an error shows of it stops at the last '@'."""
    monkeypatch.setenv("KEYGATE_STORE_URL", url)
    ran = cli("keys", "list", "--account", "acme")
    assert ran.code == 2 and "store_url" in ran.err, ran.err
    assert PASSWORD not in ran.out + ran.err, ran.err


def test_the_store_does_not_answer_line_never_repeats_a_password(
    cli, env, monkeypatch, closed_port
):
    monkeypatch.setenv("KEYGATE_STORE_URL", f"redis://:12%2F{PASSWORD}@127.0.0.1:{closed_port}/0")
    ran = cli("keys", "list", "--account", "acme")
    assert ran.code == 2 and "does not answer" in ran.err, ran.err
    assert PASSWORD not in ran.out + ran.err, ran.err


def test_a_secret_file_that_is_not_text_is_a_configuration_error(
    cli, env, monkeypatch, tmp_path
):
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xff" + os.urandom(47))  # head -c 48 /dev/urandom > secret
    monkeypatch.delenv("KEYGATE_SECRET")
    monkeypatch.setenv("KEYGATE_SECRET_FILE", str(secret))
    ran = cli("keys", "list", "--account", "acme")
    assert ran.code == 2 and "secret_file" in ran.err and "UTF-8" in ran.err, ran.err


@pytest.mark.parametrize("value", [
    f'["old-{PASSWORD}-secret-aaaaaaaaaaaaaaaaaaaaaa", "new-{PASSWORD}-secret-bbbbbbbbbbbbbbbb"]',
    f'{{ value = "{PASSWORD}-secret-cccccccccccccccccccccccccccc" }}',
    "1234567890123456789012345678901234567",
])
def test_a_secret_of_the_wrong_type_is_a_configuration_error_that_withholds_it(
    cli, env, monkeypatch, tmp_path, value
):
    """A list of the current and previous secrets (as secret_file takes them), a table,
    a number: the error names the setting and says what is wrong, without the value."""
    monkeypatch.delenv("KEYGATE_SECRET")
    config = tmp_path / "keygate.toml"
    config.write_text(f"secret = {value}\n")
    ran = cli("--config", str(config), "keys", "list", "--account", "acme")
    assert ran.code == 2 and "setting secret" in ran.err and "withheld" in ran.err, ran.err
    assert PASSWORD not in ran.out + ran.err and "1234567890" not in ran.err, ran.err
