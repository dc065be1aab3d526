"""Talking to a keygate that runs outside the test process (an installed wheel, a
container): free ports, one plain HTTP request, waiting until an address answers.

Blocking on purpose: these tests drive subprocesses, and nothing here may wait forever
(every call has a deadline, and a process that exits stops the wait at once).
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

TIMEOUT = 60.0  # seconds any one step may take before the test fails (not a timing check)


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without KEYGATE_* settings or a PYTHONPATH leaking in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KEYGATE_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, **extra}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def request(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Answer:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def wait_for(url: str, status: int = 200, *, alive: Callable[[], str | None],
             timeout: float = TIMEOUT) -> float:
    """Poll ``url`` until it answers ``status``; returns the seconds it took.

    ``alive`` returns None while the server may still come up, else why it never will
    (its process exited, with its output): the wait then fails at once.
    """
    start = time.monotonic()
    seen = "no answer"
    while True:
        dead = alive()
        if dead is not None:
            raise AssertionError(f"{url}: the server stopped before answering: {dead}")
        try:
            answer = request(url, timeout=2.0)
            if answer.status == status:
                return time.monotonic() - start
            seen = f"status {answer.status}"
        except OSError as exc:
            seen = repr(exc)
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{url}: no {status} within {timeout:.0f} s (last: {seen})")
        time.sleep(0.05)


def process_alive(proc: subprocess.Popen[str]) -> Callable[[], str | None]:
    def alive() -> str | None:
        if proc.poll() is None:
            return None
        out, err = proc.communicate()
        return f"exit {proc.returncode}\n{out}\n{err}"

    return alive
