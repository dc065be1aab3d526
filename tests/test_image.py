"""The container image, built and run as a user would.

No image registry is reachable where these tests run, so the base image is made from
Debian packages (``debootstrap --variant=minbase`` + ``docker import``, cached by tag)
and the Python dependencies are served to the build from a wheelhouse on loopback.
Containers and builds use the host's network only (``--network host``): no traffic
leaves loopback. The image then runs against the tests' private Redis with a mounted
config, mounted policies and a secret file, and an authorized request through its
proxy port reaches an upstream served by the test.

Where no Docker daemon can run (no docker.io, not root, no cgroups…) the tests are
skipped with the reason, which is also left in ``tests/.image-skipped`` for ``.ci/run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import aiohttp
import pytest
from ports import free_port
from served import TIMEOUT, wait_for

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARKER = Path(__file__).parent / ".image-skipped"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
IMAGE_TAG = "keygate-test:latest"  # kept between runs: its layers are the build cache
BUILD_TIMEOUT = 900  # seconds: debootstrap downloads a Debian system on a cold cache

pytestmark = pytest.mark.slow


def skip(reason: str) -> None:
    SKIP_MARKER.write_text(reason + "\n")
    pytest.skip(reason)


def sh(*args: str | Path, timeout: float = TIMEOUT, **kwargs) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout, check=False, **kwargs)
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


# -- a Docker daemon ---------------------------------------------------------------------
def daemon_answers(docker: str) -> bool:
    try:
        return subprocess.run([docker, "version"], capture_output=True, timeout=20,
                              check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The docker client, with a daemon: a running one, or one started for these tests.

    A lock makes concurrent test sessions on one machine take turns, so that one never
    stops a daemon the other is using.
    """
    SKIP_MARKER.unlink(missing_ok=True)
    client = shutil.which("docker")
    if client is None:
        skip("no docker client (Debian: apt-get install docker.io)")
    lock = take_turns()
    started = None
    try:
        if not daemon_answers(client):
            started = start_dockerd(client, tmp_path_factory.mktemp("dockerd") / "dockerd.log")
        yield client
    finally:
        if started is not None:
            started.terminate()
            try:
                started.wait(timeout=30)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()
        lock.close()


def take_turns(patience: float = BUILD_TIMEOUT) -> IO[str]:
    """The machine-wide lock of these tests, waited for a bounded time (a session that
    hangs with it must not hang every other one)."""
    lock = (Path(tempfile.gettempdir()) / "keygate-image-tests.lock").open("w")
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                skip(f"another test session kept the Docker daemon for over {patience:.0f} s")
            time.sleep(1)


def start_dockerd(client: str, log: Path) -> subprocess.Popen[bytes]:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        skip("no Docker daemon running and no dockerd (Debian: apt-get install docker.io)")
    if os.geteuid() != 0:
        skip("no Docker daemon running, and dockerd must start as root")
    # no bridge and no iptables rules: containers use the host's network, nothing else
    with log.open("wb") as out:
        proc = subprocess.Popen([dockerd, "--bridge=none", "--iptables=false"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not daemon_answers(client):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            skip("dockerd could not start here: " + " | ".join(tail))
        time.sleep(0.2)
    return proc


# -- a base image from Debian packages ---------------------------------------------------
def debian_suite() -> str | None:
    with contextlib.suppress(OSError):
        release = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
        if release.get("ID") == "debian":
            return release.get("VERSION_CODENAME", "").strip('"') or None
    return None


@pytest.fixture(scope="module")
def base_image(docker: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A minimal Debian with python3, made once and then found by its tag."""
    suite = debian_suite()
    if suite is None:
        skip("the base image is made with debootstrap from this Debian system's release")
    recipe = f"{suite} minbase {' '.join(BASE_PACKAGES)}"
    tag = f"keygate-test-base:{suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"
    if subprocess.run([docker, "image", "inspect", tag], capture_output=True,
                      check=False).returncode == 0:
        return tag
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        skip("no debootstrap to make a base image (Debian: apt-get install debootstrap)")
    rootfs = tmp_path_factory.mktemp("base") / "rootfs"
    try:
        sh(debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite,
           rootfs, timeout=BUILD_TIMEOUT)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                      "usr/share/man", "usr/share/locale", "usr/share/info"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh(docker, "import",
           "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["/bin/bash"]', "-", tag,
           stdin=tar.stdout, timeout=BUILD_TIMEOUT)
        assert tar.wait(timeout=TIMEOUT) == 0
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tag


# -- the dependencies, served on loopback ------------------------------------------------
def matching_interpreter(version: str) -> str | None:
    """A Python on this machine of exactly the base image's version: pip evaluates
    markers such as python_full_version < "3.11.3" with the interpreter it runs for."""
    major_minor = ".".join(version.split(".")[:2])
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which(f"python{major_minor}")):
        if candidate and Path(candidate).exists():
            found = subprocess.run(
                [candidate, "-c", "import platform; print(platform.python_version())"],
                capture_output=True, text=True, timeout=TIMEOUT, check=False,
            ).stdout.strip()
            if found == version:
                return candidate
    return None


@pytest.fixture(scope="module")
def wheelhouse_url(docker: str, base_image: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """keygate's dependencies and build requirements for the base image's Python, as
    wheels from this machine's pip configuration, served over HTTP on loopback."""
    version = sh(docker, "run", "--rm", "--network", "host", "--entrypoint", "python3",
                 base_image, "-c", "import platform; print(platform.python_version())").strip()
    interpreter = matching_interpreter(version)
    if interpreter is None:
        skip(f"no Python {version} here to pick the base image's dependency wheels")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = tmp_path_factory.mktemp("requirements") / "requirements.txt"
    requirements.write_text("\n".join(
        project["project"]["dependencies"] + project["build-system"]["requires"]
    ) + "\n")
    wheels = tmp_path_factory.mktemp("wheelhouse")
    sh(sys.executable, "-m", "pip", "--python", interpreter, "download", "--quiet",
       "--only-binary=:all:", "--dest", wheels, "-r", requirements, timeout=BUILD_TIMEOUT)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(wheels))
    # Docker's build cache counts build arguments: the same URL for the same requirements
    # lets a second build reuse the dependency layer (any free port if that one is taken)
    stable = 20000 + int(hashlib.sha256(requirements.read_bytes()).hexdigest(), 16) % 20000
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", stable), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def keygate_image(docker: str, base_image: str, wheelhouse_url: str) -> str:
    """deploy/Dockerfile built from the repository's root, as the README says."""
    def image_id() -> str | None:
        found = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", IMAGE_TAG],
                               capture_output=True, text=True, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    previous = image_id()
    # --force-rm: a failed step leaves no container behind
    sh(docker, "build", "--network", "host", "--force-rm", "--file",
       ROOT / "deploy" / "Dockerfile",
       "--build-arg", f"BASE={base_image}", "--build-arg", "PIP_NO_INDEX=1",
       "--build-arg", f"PIP_FIND_LINKS={wheelhouse_url}", "--tag", IMAGE_TAG, ROOT,
       timeout=BUILD_TIMEOUT)
    if previous is not None and previous != image_id():  # the replaced image is garbage
        subprocess.run([docker, "rmi", previous], capture_output=True, check=False)
    return IMAGE_TAG


# -- the image, running ------------------------------------------------------------------
def readable_copy_of_policies(target: Path) -> Path:
    """policies/ plus a role only this test defines: a key may hold it only if the
    container read the mounted policies, not the ones shipped in the package."""
    shutil.copytree(ROOT / "policies", target)
    (target / "image-test.csv").write_text("p, image-test-reader, *, orders, read, allow\n")
    target.chmod(0o755)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


async def test_the_image_serves_an_authorized_request_through_its_proxy_port(
    docker, keygate_image, redis_url, upstream, tmp_path, record_property
):
    if not redis_url.startswith("redis://"):
        pytest.skip("the container needs the private redis-server")
    secret = "image-test-secret-" + uuid.uuid4().hex + "s" * 20
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o444)
    config = tmp_path / "keygate.toml"
    config.write_text(
        f'store_url = "{redis_url}"\n'
        f'store_prefix = "image-{uuid.uuid4().hex[:12]}:"\n'
        "[[routes]]\n"
        'name = "orders"\n'
        'path_prefix = "/orders"\n'
        f'upstream = "{upstream.url}"\n'
        'account = "acme"\n'
        'resource = "orders"\n'
    )
    config.chmod(0o644)
    policies = readable_copy_of_policies(tmp_path / "policies")
    proxy = f"127.0.0.1:{free_port()}"
    management = f"127.0.0.1:{free_port()}"
    # the documented mount points; the ports are free ones, since the host's network is
    # shared (the image's defaults listen on 0.0.0.0:8080, :8081 and :9108)
    run_args = [
        "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "-v", f"{config}:/etc/keygate/keygate.toml:ro",
        "-v", f"{policies}:/etc/keygate/policies:ro",
        "-v", f"{secret_file}:/run/secrets/keygate:ro",
        "-e", "KEYGATE_CONFIG=/etc/keygate/keygate.toml",
        "-e", "KEYGATE_POLICIES_DIR=/etc/keygate/policies",
        "-e", "KEYGATE_SECRET_FILE=/run/secrets/keygate",
        "-e", f"KEYGATE_PROXY_LISTEN={proxy}",
        "-e", f"KEYGATE_MANAGEMENT_LISTEN={management}",
        "-e", f"KEYGATE_METRICS_LISTEN=127.0.0.1:{free_port()}",
    ]

    def docker_cmd(*args: str) -> str:
        return sh(docker, *args)

    created = json.loads(await asyncio.to_thread(
        docker_cmd, "run", "--rm", *run_args, keygate_image,
        "keys", "create", "--account", "acme", "--label", "image", "--role",
        "image-test-reader", "--json",
    ))
    headers = {"X-API-AppKey": created["appKey"], "X-API-AppToken": created["appToken"]}

    name = f"keygate-test-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    await asyncio.to_thread(docker_cmd, "run", "--detach", "--name", name,
                            "--health-interval", "1s", *run_args, keygate_image)
    try:
        def alive() -> str | None:
            state = subprocess.run([docker, "inspect", "--format", "{{.State.Status}}", name],
                                   capture_output=True, text=True, check=False).stdout.strip()
            if state in ("created", "running"):
                return None
            logs = subprocess.run([docker, "logs", name], capture_output=True, text=True,
                                  check=False)
            return f"{state}: {logs.stdout[-2000:]}{logs.stderr[-2000:]}"

        await asyncio.to_thread(wait_for, f"http://{management}/healthz", alive=alive)
        record_property("cold_start_seconds", round(time.monotonic() - started, 2))

        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{proxy}/orders/7", headers=headers) as response:
                assert response.status == 200, await response.text()
            async with session.get(f"http://{management}/readyz") as response:
                assert response.status == 200
        assert upstream.last["headers"]["X-Keygate-Key"] == created["appKey"]
        assert "X-API-AppToken" not in upstream.last["headers"]

        inspect = json.loads(await asyncio.to_thread(docker_cmd, "inspect", name))[0]
        assert inspect["Config"]["User"] == "10001:10001"
        # the final stage holds the venv with keygate and its dependencies, nothing to build
        # with and no source tree; and keygate runs as the image's user
        await asyncio.to_thread(
            docker_cmd, "exec", name, "python", "-c",
            "import importlib.util, os, sys; "
            "assert os.getuid() == 10001, os.getuid(); "
            "assert importlib.util.find_spec('pip') is None; "
            "assert not os.path.exists('/src') and not os.path.exists('/opt/build'); "
            "assert sys.prefix == '/opt/keygate', sys.prefix",
        )

        # the image's HEALTHCHECK finds the moved management port (checked every second)
        deadline = time.monotonic() + TIMEOUT
        while True:
            inspect = json.loads(await asyncio.to_thread(docker_cmd, "inspect", name))[0]
            health = inspect["State"]["Health"]
            if health["Status"] == "healthy":
                break
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.5)

        await asyncio.to_thread(docker_cmd, "stop", "--time", "20", name)  # SIGTERM
        inspect = json.loads(await asyncio.to_thread(docker_cmd, "inspect", name))[0]
        logs = subprocess.run([docker, "logs", name], capture_output=True, text=True,
                              check=False)
        output = logs.stdout + logs.stderr
        assert inspect["State"]["ExitCode"] == 0, output
        assert "Traceback" not in output
        assert secret not in output and created["appToken"] not in output
    finally:
        subprocess.run([docker, "rm", "--force", name], capture_output=True, check=False)

