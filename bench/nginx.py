"""nginx in the benchmark: the machine's nginx (Debian's ``nginx-light`` has the
``auth_request`` module), as this user, with a private prefix, pid and logs.

Two sites: ``deploy/nginx/keygate.conf`` as shipped, with only its three addresses
replaced by the benchmark's ports (nginx asks keygate's decision API about every request,
then forwards), and nginx as a proxy alone: the shipped site's forwarding (keep-alive
upstream connections, HTTP/1.1, no buffering either way, the same headers set) with no
``auth_request``. Both run with Debian's ``worker_processes auto`` (one worker per core).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's nginx launcher
import nginx_process  # noqa: E402
from nginx_process import nginx_binary, shipped_site  # noqa: E402

__all__ = ["nginx_binary", "proxy_alone_site", "shipped_site", "start_nginx"]


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
    child = nginx_process.start(binary, site, workdir, listen_port, workers="auto")
    time.sleep(0.2)  # both workers accepting
    return child, workdir
