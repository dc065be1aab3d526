"""Instructions per call of each stage of the decision pipeline, counted by callgrind.

A server under load shows only its total; this runs the stages one at a time in a
process of their own, under callgrind, on keygate's real components (``build_gateway``
from the benchmark's config, its Redis, the warm credential and decision caches, the
same request facts the decision API builds for the benchmark's request). Each stage is
called ``n`` times in a loop between two calls of ``os.getppid()``, and callgrind dumps
its counters on entry to libc's ``getppid`` (``--dump-before=getppid``), so each dump
holds one loop and nothing else; an empty loop of the same shape is subtracted.

    stage_instructions(config, env, creds, path) -> {stage: instructions per call}

Run as a script, it is the measured process (its parent reads the dumps).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fixtures import decision_headers  # noqa: E402
from gateway.app import build_gateway  # noqa: E402
from gateway.pipeline import RequestFacts  # noqa: E402
from gateway.process import run_event_loop  # noqa: E402
from gateway.settings import load_settings  # noqa: E402

BASELINE = "baseline"


async def _stages(config: str, creds: dict[str, str], path: str, n: int) -> list[str]:
    settings = load_settings(config)
    if settings.metrics_listen is not None:
        raise SystemExit("measure the stages with metrics off: their cost is measured apart")
    gateway = build_gateway(settings)
    gateway.start()
    # The credential cache is used while its invalidation channel was heard from in the
    # last 3 s (pinged every second, when the loop is free): a loop that outlasts that
    # would measure round trips to Redis. Lookups are HMGETs: none may happen in a loop.
    probe = aioredis.from_url(settings.store_url)

    async def lookups() -> int:
        return (await probe.info("commandstats")).get("cmdstat_hmget", {}).get("calls", 0)

    try:
        store, pipeline = gateway.store, gateway.pipeline
        deadline = time.monotonic() + 60
        while not store.cache_trusted:
            if time.monotonic() > deadline:
                raise SystemExit("the credential cache never became trusted")
            await asyncio.sleep(0.1)
        # the request exactly as the decision API sees it behind nginx
        headers = CIMultiDictProxy(CIMultiDict(decision_headers(creds, path)))
        facts = RequestFacts("GET", "127.0.0.1", path, "", headers, "127.0.0.1",
                             headers["X-Request-Id"])
        first = await pipeline.decide(facts)  # fills the caches (one store round trip)
        if not first.allowed or first.routed is None or first.identity is None:
            raise SystemExit(f"the benchmark's request is refused: {first.refusal!r}")
        routed, identity = first.routed, first.identity
        authenticators = pipeline.authenticators

        async def authenticate():  # as the pipeline does: the first that says "mine"
            for authenticator in authenticators:
                found = await authenticator.authenticate(headers, routed.account)
                if found is not None:
                    return found
            return None

        authenticated = await authenticate()
        assert authenticated is not None
        app_key, token = creds["X-API-AppKey"], creds["X-API-AppToken"]
        found = store.cached_lookup(app_key, routed.account)
        assert found is not None
        resource, action = routed.route.resource, routed.action

        async def nothing() -> None:
            return None

        async def routing() -> None:
            pipeline.routes.resolve_request("GET", "127.0.0.1", path)

        async def authentication() -> None:
            await authenticate()

        async def token_hmac() -> None:
            gateway.hasher.matches(token, found.token_digests)

        async def authorization() -> None:
            pipeline.authorize(authenticated, resource, action)

        async def mutators() -> None:
            for mutator in pipeline.mutators:
                mutator.headers(identity, routed.route)

        async def decide() -> None:
            await pipeline.decide(facts)

        stages: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            (BASELINE, nothing), ("routing", routing), ("authentication", authentication),
            ("token HMAC", token_hmac), ("authorization", authorization),
            ("mutators", mutators), ("decide", decide),
        ]
        for name, stage in stages:
            await asyncio.sleep(1.2)  # a ping answered: the cache trusted for 3 s
            if not store.cache_trusted:
                raise SystemExit("the credential cache is bypassed: no stage would be cached")
            before = await lookups()
            os.getppid()  # dump: what ran before this loop
            for _ in range(n):
                await stage()
            os.getppid()  # dump: this loop
            if await lookups() != before:
                raise SystemExit(f"stage {name}: the store was asked, the loop outlasted the "
                                 "credential cache's trust; lower n")
        if store.cached_lookup(app_key, routed.account) is not found:
            raise SystemExit("the key's cache entry changed during the run")
        return [name for name, _ in stages]
    finally:
        await probe.aclose()
        await gateway.close()


def stage_instructions(
    config: Path, env: dict[str, str], creds: dict[str, str], path: str, n: int = 200
) -> dict[str, float]:
    """Instructions per call of each stage (the empty loop subtracted), keygate with
    ``config`` (metrics off) deciding ``GET path`` with ``creds``."""
    directory = Path(tempfile.mkdtemp(prefix="keygate-stages-"))
    out_file = directory / "cg.out"
    try:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-before=getppid",
             f"--callgrind-out-file={out_file}", sys.executable, __file__, str(config),
             json.dumps(creds), path, str(n)],
            env=env, capture_output=True, text=True, timeout=1800,
        )
        if result.returncode != 0:
            raise RuntimeError(f"stage measurement failed: {result.stdout[-2000:]}"
                               f"{result.stderr[-2000:]}")
        names = json.loads(result.stdout.strip().splitlines()[-1])
        counts = {}
        for i, name in enumerate(names):
            # two markers per stage: the second one's dump is the loop
            dump = (directory / f"cg.out.{2 * i + 2}").read_text()
            totals = re.search(r"^totals:\s+(\d+)", dump, re.M)
            assert totals is not None, f"no totals in the dump of {name}"
            counts[name] = int(totals.group(1)) / n
        baseline = counts.pop(BASELINE)
        return {name: count - baseline for name, count in counts.items()}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    names = run_event_loop(_stages(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3],
                                   int(sys.argv[4])))
    print(json.dumps(names))
