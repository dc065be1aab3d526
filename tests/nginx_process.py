"""The machine's nginx for tests and the benchmark: found (Debian's ``nginx-light`` has
the ``auth_request`` module), given ``deploy/nginx/keygate.conf`` as shipped with only
its three addresses replaced, and run in the foreground as this user with a private
prefix, pid and logs. Used by tests/test_nginx.py and bench/nginx.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "nginx" / "keygate.conf"
# the addresses in the shipped file, replaced by the caller's
DECISION_ADDRESS = "server 127.0.0.1:8082;"
UPSTREAM_ADDRESS = "server 127.0.0.1:9000;"
LISTEN = "listen 8088;"


def nginx_binary() -> str | None:
    """The machine's nginx, if it has the auth_request module."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx",
                                                                      os.X_OK) else None)
    if binary is None:
        return None
    built = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr
    return binary if "http_auth_request_module" in built else None


def shipped_site(decision_port: int, upstream_port: int, listen_port: int) -> str:
    """``deploy/nginx/keygate.conf`` with these three addresses; nothing else changes."""
    text = SHIPPED.read_text()
    for placeholder in (DECISION_ADDRESS, UPSTREAM_ADDRESS, LISTEN):
        if text.count(placeholder) != 1:
            raise RuntimeError(f"{SHIPPED}: expected {placeholder!r} once")
    return (text.replace(DECISION_ADDRESS, f"server 127.0.0.1:{decision_port};")
                .replace(UPSTREAM_ADDRESS, f"server 127.0.0.1:{upstream_port};")
                .replace(LISTEN, f"listen 127.0.0.1:{listen_port};"))


def start(binary: str, site: str, workdir: Path, listen_port: int, workers: str = "auto",
          connections: int = 1024, timeout: float = 10) -> subprocess.Popen[bytes]:
    """nginx in the foreground serving ``site`` (an http-block include), everything under
    ``workdir``, once it accepts on ``listen_port``; a RuntimeError with its error log
    if it does not."""
    (workdir / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {workdir / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # as root, nginx would hand its workers to another user, who cannot use workdir
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (workdir / "nginx.conf").write_text(
        f"{user}worker_processes {workers};\nevents {{ worker_connections {connections}; }}\n"
        f"http {{ {temp} access_log off; include {workdir / 'site.conf'}; }}\n"
    )
    error_log = workdir / "error.log"
    child = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", str(error_log),
         "-g", f"daemon off; pid {workdir / 'nginx.pid'}; error_log {error_log} warn;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", listen_port), timeout=0.2):
            return child
        if child.poll() is not None or time.monotonic() > deadline:
            stop(child)
            log = error_log.read_text() if error_log.exists() else ""
            raise RuntimeError(f"nginx did not start: {log}")
        time.sleep(0.02)


def stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
