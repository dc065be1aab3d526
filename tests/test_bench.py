"""The benchmark keeps running: ``bench/run.py`` end to end at tiny sizes (one round, a
second per run), and the decision pipeline's stage counts under callgrind.

No figure is asserted (a shared machine's requests/s are noise, and the benchmark is
not a test); what is asserted is that every row is written with figures in it, and that
the stage counts are counts of the stages (each one positive, the whole pipeline more
than any of its parts), so a benchmark that silently measures nothing fails here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ is not installed: it is run from the checkout
from bench.decision_stages import stage_instructions  # noqa: E402
from bench.fixtures import SECRET, config_file, create_keys, write_policies  # noqa: E402
from bench.nginx import nginx_binary  # noqa: E402

pytestmark = pytest.mark.slow

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="the benchmark starts its own redis-server"
)
FIGURE = re.compile(r"\d")


def table(markdown: str) -> dict[str, str]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| measure"):
            measure, result = line[2:-2].split(" | ", 1)
            rows[measure] = result
    return rows


@needs_redis_server
def test_the_benchmark_runs_and_writes_every_row(tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--seconds", "1", "--rounds", "1",
         "--connections", "8", "--keys", "60", "--memory-keys", "300", "--output", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = table(out.read_text())
    expected = [
        "upstream direct", "bare aiohttp proxy", "keygate (auth + authz + proxy, warm)",
        "keygate / bare proxy (target ≥ 1.0)", "keygate --workers 2",
        "decision API alone (wrk → /nginx as auth_request asks, one worker)",
        "decision API alone / keygate's proxy (target ≥ 2.0)",
        "revocation seen by a second instance (target ≤ 1 s)",
        "keygate on a 3-master Redis Cluster (same keygate, warm key)",
        "keygate on a Cluster / on one server (same ratio to the bare proxy: 1.0)",
        "Redis commands per request on the Cluster, warm key / cold key (target 1)",
    ]
    if nginx_binary() is not None:
        expected += [
            "nginx alone (proxy to the same upstream)",
            "nginx + keygate decision API, one worker",
            "nginx + keygate decision API, --workers 2",
            "nginx + aiohttp floor (a decider that decides nothing)",
            "nginx + keygate (one worker) / nginx alone (target ≥ 0.40)",
        ]
    else:
        assert rows["nginx rows"].startswith("skipped")
    for measure in expected:
        assert measure in rows, f"{measure!r} missing from {sorted(rows)}"
        assert FIGURE.search(rows[measure]), (measure, rows[measure])
    assert rows["decision API alone (wrk → /nginx as auth_request asks, one worker)"] \
        .split(" req/s")[0].replace(",", "").isdigit()
    # the secret the benchmark's keys are hashed with, and their tokens, stay inside it
    assert SECRET not in out.read_text() and "kgt_" not in out.read_text()

    # the memory rows measured again alone are put in place, the rest kept as it was
    memory = "Redis memory per key at 300 keys (target ≤ 600 B)"
    assert memory in rows
    out.write_text(out.read_text().replace(f"| {memory} | {rows[memory]} |",
                                           f"| {memory} | stale |"))
    again = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--memory-only", "--memory-keys",
         "300", "--output", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = table(out.read_text())
    assert FIGURE.search(after[memory]) and "stale" not in after[memory]
    assert {k: v for k, v in after.items() if "300 keys" not in k} == {
        k: v for k, v in rows.items() if "300 keys" not in k}
    # with the machine they ran on and its speed then, to compare runs made apart
    apart = next(line for line in out.read_text().splitlines()
                 if line.startswith("The 300-key rows were measured apart:"))
    assert re.search(r"on \d+ cores \(.+\), where a Python loop of 10,000,000 additions "
                     r"took \d+\.\d\d s\.$", apart), apart


@needs_redis_server
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (callgrind)")
def test_the_decision_stages_are_counted_one_by_one(tmp_path: Path, redis_url: str):
    policies = tmp_path / "policies"
    write_policies(policies, roles=4, lines=20)
    config = config_file(tmp_path, redis_url, "bench-stages:", 9, policies, metrics=False)
    settings = load_settings(config.path, env={"KEYGATE_SECRET": SECRET})
    ((app_key, token, account),) = asyncio.run(
        create_keys(settings, ["acct-00"], 1, ["role-000"]))
    stages = stage_instructions(
        config.path, {**os.environ, "KEYGATE_SECRET": SECRET},
        {"X-API-AppKey": app_key, "X-API-AppToken": token}, f"/accounts/{account}/orders/1",
        n=30,
    )
    parts = ("routing", "authentication", "authorization", "mutators")
    assert set(stages) == {*parts, "token HMAC", "decide"}
    # thousands of instructions each (an empty loop is subtracted; a dump of the wrong
    # loop would show as a stage costing nothing or as much as the whole)
    assert all(stages[name] > 500 for name in stages), stages
    assert stages["authentication"] > stages["token HMAC"], stages
    assert stages["decide"] > sum(stages[p] for p in parts) * 0.9, stages
    assert all(stages["decide"] > stages[p] for p in parts), stages
