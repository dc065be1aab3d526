"""schemathesis against the management API as served, over every operation of its own
OpenAPI document, with an owner key's credentials on every request.

keygate runs as ``serve`` runs it (``running()``: the request reader, the connection
guard, both ports) in a thread with its own event loop, on the private redis-server;
schemathesis sends what the document allows and what it does not, and checks each
answer: never a 5xx, a documented status, the documented content type, and a body that
conforms to the documented schema (errors included: the one error shape).

A path's ``account`` that the pattern allows is replaced by ``acme``, the owner key's
account, so that requests get past authorization and reach the handlers; accounts the
pattern refuses are sent as generated. ``KEYGATE_FUZZ_EXAMPLES`` raises the number of
examples per operation (default 50: the whole run takes well under a minute).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from conftest import TEST_SECRET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from threaded import InThread, serving

from gateway.app import build_gateway, running
from gateway.credentials import ACCOUNT_RE
from gateway.management.api import all_operations
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR

EXAMPLES = int(os.environ.get("KEYGATE_FUZZ_EXAMPLES", "50"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
ACCOUNT = "acme"


class Served(InThread):
    """keygate on free loopback ports, in a thread with its own event loop."""

    def __init__(self, redis_url: str):
        super().__init__()
        self.redis_url = redis_url
        self.management = ""
        self.headers: dict[str, str] = {}

    async def serve(self, stop: asyncio.Event) -> None:
        settings = load_settings(env={}).with_values(
            store_url=self.redis_url, store_prefix=f"fuzz-api-{uuid.uuid4().hex[:10]}:",
            secret=TEST_SECRET, proxy_listen="127.0.0.1:0", management_listen="127.0.0.1:0",
            metrics_listen="",
            # the fuzzer sends wrong credentials on purpose (login): no budget runs out
            auth_failure_limit=10**9, auth_failure_key_limit=10**9,
        )
        gateway = build_gateway(settings)
        async with running(gateway) as listening:
            owner = await gateway.lifecycle.create(ACCOUNT, "fuzz owner", ["owner"], CLI_ACTOR)
            assert owner.token is not None
            # something to list, export and audit
            for n in range(3):
                await gateway.lifecycle.create(ACCOUNT, f"key {n}", ["orders-reader"],
                                               CLI_ACTOR)
            self.headers = {settings.key_header: owner.record.app_key,
                            settings.token_header: owner.token}
            self.management = listening.management
            self.ready.set()
            await stop.wait()


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[Served]:
    with serving(Served(redis_url), redis_url) as server:
        yield server


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as kept_alive:
        yield kept_alive


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Any:
    schema = schemathesis.openapi.from_url(served.management + "/api/v1/openapi.json")
    schema.config.generation.update(max_examples=EXAMPLES, with_security_parameters=False)
    return schema


# One test per operation of keygate's operations table (the document's operations, as
# tests/test_openapi.py checks). schemathesis's own pytest plugin resolves a schema from
# a fixture through pytest internals that pytest 9 no longer has, so the cases come
# from its documented strategy API instead.
OPERATION_IDS = sorted(op.operation_id for op in all_operations())


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_every_operation_answers_as_documented(operation_id: str, api_schema: Any,
                                               served: Served,
                                               session: requests.Session) -> None:
    operation = api_schema.find_operation_by_id(operation_id)
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def answers_as_documented(case: Any) -> None:
        account = case.path_parameters.get("account") if case.path_parameters else None
        if isinstance(account, str) and ACCOUNT_RE.fullmatch(account):
            case.path_parameters["account"] = ACCOUNT
        case.call_and_validate(base_url=served.management, session=session,
                               headers=dict(served.headers), checks=CHECKS, timeout=10)

    answers_as_documented()
