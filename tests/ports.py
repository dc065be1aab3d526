"""Loopback ports for the servers that tests (and the benchmark) start.

A port found by binding port 0 comes from the kernel's ephemeral range, the range from
which every outgoing connection also takes its local port. Between that check and the
server's own bind, one of the many client connections a test run makes may take the
port, and the server fails to start ("address already in use"), a failure that has
nothing to do with what the test checks. Ports below the ephemeral range are taken only
by an explicit bind, so they are chosen there: each is handed out once per process,
from a random start (two test runs on one machine seldom meet), and only after a bind
shows it free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# A Redis Cluster node also listens on its port + 10000 (the cluster bus): below
# FIRST + SPAN + 10000 both stay under the usual ephemeral range (32768 and up).
FIRST, SPAN = 12000, 10000
BUS_OFFSET = 10000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_LAST = min(FIRST + SPAN, _ephemeral_start() - BUS_OFFSET)
_order = list(range(FIRST, _LAST))
_at = random.randrange(len(_order))
_given: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port no server holds now and this process has not handed out before.

    ``with_bus``: the port + 10000 is free as well (a Redis Cluster node's bus port).
    """
    global _at
    for _ in range(len(_order)):
        port = _order[_at % len(_order)]
        _at += 1
        if port in _given or not _bindable(port):
            continue
        if with_bus and not _bindable(port + BUS_OFFSET):
            continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {FIRST}..{_LAST - 1}")
