"""A real Redis Cluster for tests: three masters started from the machine's
``redis-server`` (``--cluster-enabled yes``) on free loopback ports and joined with
``redis-cli --cluster create``. Used by the ``store_url`` fixture (conftest) so the
store, cache and revocation suites run on a cluster as well as on one server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from ports import free_port
from redis.crc import key_slot

MASTERS = 3




def _answers(port: int, command: bytes, expected: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(command)
            return expected in conn.recv(4096)
    except OSError:
        return False


def node_urls(url: str) -> list[str]:
    """``redis://`` URLs of the nodes a ``redis+cluster://`` URL lists; any other URL as
    it is."""
    if not url.startswith("redis+cluster://"):
        return [url]
    return [f"redis://{node}/0" for node in url.removeprefix("redis+cluster://").split(",")]


def available() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed"
    return None


def master_of(url: str, slot: int) -> int:
    """The index (in the URL's order) of the master serving ``slot``."""
    ports = [int(node.rsplit(":", 1)[1])
             for node in url.removeprefix("redis+cluster://").split(",")]
    client = redis.Redis(port=ports[0], socket_timeout=2)
    try:
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return ports.index(int(master[1]))
    finally:
        client.close()
    raise LookupError(f"no master serves slot {slot}")


def _node(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    node_dir = workdir / str(port)
    node_dir.mkdir(parents=True)
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
         "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
         "--dir", str(node_dir), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def add_replica(workdir: Path, url: str, master: int) -> tuple[int, subprocess.Popen[bytes]]:
    """Start one more node and make it a replica of the cluster's ``master`` (an index in
    the URL's order); its port and process, once it has copied the master's data. The
    caller stops the process."""
    ports = [int(node.rsplit(":", 1)[1])
             for node in url.removeprefix("redis+cluster://").split(",")]
    port = free_port(with_bus=True)
    process = _node(workdir, port)
    deadline = time.monotonic() + 10
    while not _answers(port, b"PING\r\n", b"+PONG"):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the replica did not start")
        time.sleep(0.05)
    with redis.Redis(port=ports[master], decode_responses=True) as admin:
        master_id = admin.execute_command("CLUSTER", "MYID")
    subprocess.run(
        ["redis-cli", "--cluster", "add-node", f"127.0.0.1:{port}", f"127.0.0.1:{ports[0]}",
         "--cluster-slave", "--cluster-master-id", master_id],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
    )
    # CLUSTER SLOTS (what clients discover the nodes by) lists a replica once it has
    # replicated something: a write in the master's slots; and every node must list it
    # (the gossip reaches them one after the other), whichever a client asks
    with redis.Redis(port=ports[master], socket_timeout=2) as admin:
        slots = [(start, end) for start, end, node, *_ in
                 admin.execute_command("CLUSTER", "SLOTS") if int(node[1]) == ports[master]]
        name = next(f"replica-probe-{i}" for i in range(100_000)
                    if any(a <= key_slot(f"replica-probe-{i}".encode()) <= b for a, b in slots))
        deadline = time.monotonic() + 20
        while not all(_lists(node_port, port) for node_port in ports):
            admin.set(name, "x")
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not reach its master")
            time.sleep(0.05)
    return port, process


def _lists(node_port: int, replica_port: int) -> bool:
    """Whether the node on ``node_port`` lists the node on ``replica_port`` in CLUSTER
    SLOTS."""
    with redis.Redis(port=node_port, socket_timeout=2) as node:
        return any(int(entry[1]) == replica_port
                   for row in node.execute_command("CLUSTER", "SLOTS") for entry in row[2:])


def fail_over(url: str, replica_port: int) -> None:
    """Promote the replica (CLUSTER FAILOVER, as an operator would); return once the
    URL's first node sees it serve its slots."""
    with redis.Redis(port=replica_port) as replica:
        replica.execute_command("CLUSTER", "FAILOVER")
    first = int(url.removeprefix("redis+cluster://").split(",")[0].rsplit(":", 1)[1])
    deadline = time.monotonic() + 20
    with redis.Redis(port=first, socket_timeout=2) as client:
        while not any(int(master[1]) == replica_port
                      for _, _, master, *_ in client.execute_command("CLUSTER", "SLOTS")):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica was not promoted")
            time.sleep(0.05)


@contextmanager
def redis_cluster(workdir: Path, keep_processes: bool = False) -> Iterator[Any]:
    """Start the cluster; yield its ``redis+cluster://`` URL (every master listed), or
    with ``keep_processes`` the URL and the node processes, in the URL's order."""
    ports = [free_port(with_bus=True) for _ in range(MASTERS)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            processes.append(_node(workdir, port))
        deadline = time.monotonic() + 10
        while not all(_answers(p, b"PING\r\n", b"+PONG") for p in ports):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("a cluster node did not start")
            time.sleep(0.05)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
        )
        deadline = time.monotonic() + 20
        while not all(_answers(p, b"CLUSTER INFO\r\n", b"cluster_state:ok") for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        yield (url, processes) if keep_processes else url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
