"""Load and instruction counts: wrk (or a Python load generator when wrk is missing) for
requests/s and latency, callgrind (valgrind) for user-space instructions per request."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# the test suite's ports (below the kernel's ephemeral range), for the servers a run starts
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ports import free_port as free_port  # noqa: E402


def put_in_place(report: Path, figures: list[tuple[str, str]], apart: str,
                 command: str) -> None:
    """Rows measured apart from the run the report's header dates, put in place in its
    table (a row of the same measure replaced, a new one added at its end), under a line
    that says when and by which ``command`` (``apart``: how that line starts, one per
    kind of rows measured apart)."""
    print("\n".join(f"{k}  {v}" for k, v in figures))
    lines = report.read_text().splitlines() if report.exists() else [
        "# Benchmarks", "", "| measure | result |", "|---|---|"]
    note = (f"{apart} {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}`,"
            f" on {os.cpu_count()} cores ({cpu_model()}), where {python_pace()}.")
    if noted := [i for i, text in enumerate(lines) if text.startswith(apart)]:
        del lines[noted[0] : noted[0] + 2]  # the note and the blank line after it
    table = min(i for i, text in enumerate(lines) if text.startswith("|"))
    lines[table:table] = [note, ""]
    for measure, value in figures:
        line = f"| {measure} | {value} |"
        at = [i for i, text in enumerate(lines) if text.startswith(f"| {measure} |")]
        if at:
            lines[at[0]] = line
        else:
            last = max(i for i, text in enumerate(lines) if text.startswith("|"))
            lines.insert(last + 1, line)
    report.write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {report}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def python_pace() -> str:
    """How fast this machine runs Python now (best of three), so that rows measured
    apart, on other days or machines, can be compared: the same CPU model has differed
    by twice as much between two machines of one kind."""
    best = min(_loop_seconds() for _ in range(3))
    return f"a Python loop of 10,000,000 additions took {best:.2f} s"


def _loop_seconds() -> float:
    started = time.perf_counter()
    total = 0
    for number in range(10_000_000):
        total += number
    return time.perf_counter() - started


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float

    def __str__(self) -> str:
        return f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"


def median(runs: list[Load]) -> Load:
    """The run with the median requests/s (its own latencies with it)."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def all_runs(runs: list[Load]) -> str:
    return f"(all runs: {', '.join(f'{r.rps:,.0f}' for r in runs)})"


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> Load:
    cmd = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # anchored: a "+/- Stdev" column such as "87.50%" must not pass for the 50% line
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} non-2xx responses under load")
    return Load(rps, p50, p99)


async def python_load(url: str, headers: dict[str, str], seconds: int, connections: int) -> Load:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections)
    ) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    return Load(
        len(latencies) / seconds,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def instructions_per_request(
    cmd: list[str], port: int, path: str, headers: dict[str, str], env: dict[str, str],
    seconds: int = 8, settled: Callable[[], None] | None = None, keep: Path | None = None,
) -> float:
    """User-space instructions per request of the server ``cmd`` (listening on ``port``),
    counted by callgrind over a wrk run of ``seconds`` (4 connections) after a warm-up.
    Kernel work (the socket calls) is not counted: this measures the Python side.
    ``settled`` waits until the server's start-up work is done (so that it is not
    counted as the requests'). ``keep``: where to copy callgrind's dump (for
    ``callgrind_annotate``)."""
    out_file = Path(tempfile.mkdtemp(prefix="keygate-cg-")) / "cg.out"
    child = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out_file}", *cmd],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=180)
        url = f"http://127.0.0.1:{port}{path}"
        asyncio.run(preflight(url, headers))
        if settled is not None:
            settled()
        wrk_headers = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        subprocess.run(["wrk", "-t1", "-c4", "-d3s", *wrk_headers, url],
                       capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-i", "on", str(child.pid)],
                       capture_output=True, check=True)
        out = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", *wrk_headers, url],
                             capture_output=True, text=True, check=True).stdout
        subprocess.run(["callgrind_control", "-i", "off", str(child.pid)],
                       capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(child.pid)],
                       capture_output=True, check=True)
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        if "Non-2xx" in out:
            raise RuntimeError(f"{cmd}: non-2xx answers under callgrind:\n{out}")
        # the dump is written after the command returns: wait for its last line
        deadline = time.monotonic() + 60
        totals = None
        while totals is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd}: callgrind wrote no dump")
            time.sleep(0.2)
            for dump in out_file.parent.iterdir():
                totals = re.search(r"^totals:\s+(\d+)", dump.read_text(), re.M)
                if totals is not None:
                    if keep is not None:
                        shutil.copy(dump, keep)
                    break
        return int(totals.group(1)) / requests  # type: ignore[union-attr]
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        shutil.rmtree(out_file.parent, ignore_errors=True)


async def preflight(url: str, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}: {await r.text()}")


def load(url: str, headers: dict[str, str], seconds: int, connections: int) -> Load:
    asyncio.run(preflight(url, headers))
    if shutil.which("wrk"):
        return run_wrk(url, headers, seconds, connections)
    return asyncio.run(python_load(url, headers, seconds, connections))
