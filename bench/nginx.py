"""nginx in the benchmark: the machine's nginx (Debian's ``nginx-light`` has the
``auth_request`` module), as this user, with a private prefix, pid and logs.

Two sites: ``deploy/nginx/keygate.conf`` as shipped, with only its three addresses
replaced by the benchmark's ports (nginx asks keygate's decision API about every request,
then forwards), and nginx as a proxy alone: the shipped site's forwarding (keep-alive
upstream connections, HTTP/1.1, no buffering either way, the same headers set) with no
``auth_request``. Both run with Debian's ``worker_processes auto`` (one worker per core).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.measure import wait_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "nginx" / "keygate.conf"
# the addresses in the shipped file, replaced by the benchmark's
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
    """``deploy/nginx/keygate.conf`` with the benchmark's three addresses."""
    text = SHIPPED.read_text()
    for placeholder in (DECISION_ADDRESS, UPSTREAM_ADDRESS, LISTEN):
        if text.count(placeholder) != 1:
            raise RuntimeError(f"{SHIPPED}: expected {placeholder!r} once")
    return (text.replace(DECISION_ADDRESS, f"server 127.0.0.1:{decision_port};")
                .replace(UPSTREAM_ADDRESS, f"server 127.0.0.1:{upstream_port};")
                .replace(LISTEN, f"listen 127.0.0.1:{listen_port};"))


def proxy_alone_site(upstream_port: int, listen_port: int) -> str:
    """The shipped site's forwarding without auth_request: nginx's own cost."""
    return f"""
upstream backend {{
    server 127.0.0.1:{upstream_port};
    keepalive 32;
}}
server {{
    listen 127.0.0.1:{listen_port};
    server_tokens off;
    client_max_body_size 0;
    location / {{
        proxy_pass http://backend;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Request-Id $request_id;
        proxy_hide_header X-Request-Id;
        add_header X-Request-Id $request_id always;
        proxy_request_buffering off;
        proxy_buffering off;
    }}
}}
"""


def start_nginx(binary: str, site: str, listen_port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """nginx in the foreground serving ``site`` (an http-block include); returns the
    process and its private directory (the caller stops one and removes the other)."""
    workdir = Path(tempfile.mkdtemp(prefix="keygate-bench-nginx-"))
    (workdir / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {workdir / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # as root, nginx would hand its workers to another user, who cannot read this
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (workdir / "nginx.conf").write_text(
        f"{user}worker_processes auto;\nevents {{ worker_connections 1024; }}\n"
        f"http {{ {temp} access_log off; include {workdir / 'site.conf'}; }}\n"
    )
    error_log = workdir / "error.log"
    child = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", str(error_log),
         "-g", f"daemon off; pid {workdir / 'nginx.pid'}; error_log {error_log} warn;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(listen_port, timeout=10)
    except RuntimeError:
        child.terminate()
        child.wait(timeout=10)
        log = error_log.read_text() if error_log.exists() else ""
        raise RuntimeError(f"nginx did not start: {log}") from None
    time.sleep(0.2)  # both workers accepting
    return child, workdir
