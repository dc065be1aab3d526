"""Hypothesis against the proxy port's credentials: key and token headers, Bearer values
and session cookies, malformed in every way a byte string can be (CR and LF aside: a
header line cannot hold them; the request reader's own tests cover those).

keygate runs as served (``running()``, its request reader and connection guard) in a
thread of its own; the examples go over one kept-alive HTTP/1.1 connection. Whatever is
sent, the answer is 400, 401 or 429 in the one JSON error shape — never a 5xx, never an
allowed request (a real session mutated only in its signature's spare base64 bits would
be the same signature, and may pass).

Every refused value is counted once, by the credential header lines that carried it,
across the four fuzzing tests; the last test of the module asserts that at least 10,000
distinct malformed values were sent and refused (examples Hypothesis repeats, requests
without any credential header, and mutated sessions that may still be valid are not
counted). The default run is derandomized, so CI sends the same values every time.
``KEYGATE_FUZZ_EXAMPLES`` raises the number of examples per test above the default
(3,500) for a longer run, with random examples.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import uuid
from collections.abc import Iterator

import pytest
from aiohttp import web
from conftest import TEST_SECRET
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from threaded import InThread, serving

from gateway.app import build_gateway, running
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR

DEFAULT_EXAMPLES = 3500
# a floor: the variable also scales tests/test_fuzz_api.py (50 per operation by default),
# and setting it for a longer run must not shorten this one
EXAMPLES = max(DEFAULT_EXAMPLES, int(os.environ.get("KEYGATE_FUZZ_EXAMPLES") or 0))
REFUSALS = {400, 401, 429}
REQUIRED_DISTINCT = 10_000

# every malformed credential sent and refused, as the header lines that carried it
# (shared by the fuzzing tests; checked by the last test of the module)
Sent = tuple[tuple[str, bytes], ...]
REFUSED: set[Sent] = set()
FUZZED: set[str] = set()  # the fuzzing tests that ran

# header values a client can send on one line: any byte but CR, LF (and NUL, which the
# HTTP client refuses to write)
LINE_BYTES = st.binary(max_size=600).map(
    lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b""))
TEXTISH = st.one_of(
    LINE_BYTES,
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")
                              .replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")),
    st.sampled_from([b"", b" ", b"\t", b"kgk", b"kgt_", b"Bearer", b"Bearer ", b"null",
                     b"%00", b"a" * 5000, b"\xff\xfe", b"\xe2\x80\xae"]),
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


JWT_HEADERS = st.fixed_dictionaries(
    {"alg": st.sampled_from(["none", "None", "HS256", "ES256", "EdDSA", "RS256", "", "es256"])},
    optional={"kid": st.one_of(st.text(max_size=60), st.integers(), st.none()),
              "typ": st.sampled_from(["JWT", "keygate-session+jwt", "keygate-id+jwt", ""]),
              "jku": st.just("http://127.0.0.1:1/jwks.json"),
              "crit": st.lists(st.text(max_size=5), max_size=2)},
)
JWT_CLAIMS = st.dictionaries(
    st.sampled_from(["iss", "aud", "sub", "acct", "exp", "nbf", "iat", "jti", "gen"]),
    st.one_of(st.text(max_size=40), st.integers(min_value=-2**63, max_value=2**63),
              st.floats(allow_nan=True), st.none(), st.lists(st.text(max_size=5), max_size=3)),
)
JWT_LIKE = st.builds(
    lambda header, claims, signature: (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
        f"{b64(signature)}"
    ).encode(),
    JWT_HEADERS, JWT_CLAIMS, st.binary(max_size=80),
)


class Served(InThread):
    """keygate on free loopback ports, in a thread with its own event loop."""

    def __init__(self, redis_url: str):
        super().__init__()
        self.redis_url = redis_url
        self.proxy_port = 0
        self.key: tuple[str, str] = ("", "")
        self.session = ""

    async def serve(self, stop: asyncio.Event) -> None:
        async def echo(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        upstream_app = web.Application()
        upstream_app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(upstream_app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        settings = load_settings(env={}).with_values(
            store_url=self.redis_url, store_prefix=f"fuzz-{uuid.uuid4().hex[:10]}:",
            secret=TEST_SECRET, proxy_listen="127.0.0.1:0", management_listen="127.0.0.1:0",
            metrics_listen="", auth_failure_limit=10**9, auth_failure_key_limit=10**9,
            routes=[{"name": "orders", "path_prefix": "/orders", "account": "acme",
                     "resource": "orders", "upstream": f"http://127.0.0.1:{port}"}],
        )
        gateway = build_gateway(settings)
        try:
            async with running(gateway) as listening:
                issued = await gateway.lifecycle.create("acme", "fuzz", ["orders-reader"],
                                                        CLI_ACTOR)
                assert issued.token is not None
                self.key = (issued.record.app_key, issued.token)
                digest = gateway.hasher.digest(issued.token)
                self.session, _ = await gateway.sessions.issue(
                    issued.record.app_key, "acme", digest)
                self.proxy_port = int(listening.proxy.rsplit(":", 1)[1])
                self.ready.set()
                await stop.wait()
        finally:
            await runner.cleanup()


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[Served]:
    with serving(Served(redis_url), redis_url) as server:
        yield server


class Client:
    """One kept-alive connection; reconnects when keygate closed it (a 400 may)."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, headers: list[tuple[str, bytes]]) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.connection.putrequest("GET", "/orders/1", skip_accept_encoding=True)
                for name, value in headers:
                    self.connection.putheader(name, value)
                self.connection.endheaders()
                response = self.connection.getresponse()
                body = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                return response.status, body
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[Client]:
    made = Client(served.proxy_port)
    yield made
    with contextlib.suppress(Exception):
        made.connection.close()


def refused(status: int, body: bytes) -> None:
    assert status in REFUSALS, (status, body[:300])
    error = json.loads(body)["error"]
    assert error["status"] == status and error["code"] and error["requestId"]


def sent_and_refused(client: Client, headers: list[tuple[str, bytes]], *,
                     counted: bool = True) -> None:
    """Send ``headers``; the answer must be a refusal, and the value is counted as one
    malformed credential (unless ``counted`` is false, or no credential header was sent)."""
    refused(*client.get(headers))
    if counted and headers:
        REFUSED.add(tuple(headers))


@pytest.fixture
def fuzzing(request) -> None:
    FUZZED.add(request.node.name)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=EXAMPLES == DEFAULT_EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(key=st.one_of(st.none(), TEXTISH), token=st.one_of(st.none(), TEXTISH))
def test_malformed_key_and_token_headers(client, fuzzing, key, token):
    headers = []
    if key is not None:
        headers.append(("X-API-AppKey", key))
    if token is not None:
        headers.append(("X-API-AppToken", token))
    sent_and_refused(client, headers)


@FUZZ
@given(scheme=st.sampled_from([b"Bearer ", b"bearer ", b"BEARER  ", b"Bearer\t", b"Basic ",
                               b"", b"Bearer"]),
       value=st.one_of(JWT_LIKE, TEXTISH))
# bytes that are not UTF-8 reach the authenticator as surrogates: pyjwt cannot encode them
@example(scheme=b"Bearer ", value=b"\xb3.a.b")
@example(scheme=b"Bearer ", value=b"ey\x80.e30.x")
def test_malformed_bearer_values(client, fuzzing, scheme, value):
    sent_and_refused(client, [("Authorization", scheme + value)])


@FUZZ
@given(cookie=st.one_of(JWT_LIKE, TEXTISH), name=st.sampled_from(
    [b"keygate_session", b"KEYGATE_SESSION", b"keygate_session ", b"other"]),
       before=st.sampled_from([b"", b"a=b; ", b";;", b"keygate_session=; "]))
@example(cookie=b"\xb3.a.b", name=b"keygate_session", before=b"")
def test_malformed_session_cookies(client, fuzzing, cookie, name, before):
    # a cookie line that holds no keygate_session cookie at all carries no credential
    sent_and_refused(client, [("Cookie", before + name + b"=" + cookie)],
                     counted=b"keygate_session" in (before + name).lower())


def _decoded(token: str) -> list[bytes | None]:
    out: list[bytes | None] = []
    for part in token.split("."):
        try:
            out.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            out.append(None)
    return out


@FUZZ
@given(data=st.data())
def test_mutated_real_sessions_are_refused_unless_they_decode_the_same(
        client, served, fuzzing, data):
    token = served.session
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(
        list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ")))
    how = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
    if how == "replace":
        mutated = token[:position] + replacement + token[position + 1:]
    elif how == "insert":
        mutated = token[:position] + replacement + token[position:]
    elif how == "delete":
        mutated = token[:position] + token[position + 1:]
    else:
        mutated = token[:position]
    headers = [("Authorization", b"Bearer " + mutated.encode())]
    status, body = client.get(headers)
    # The signature covers the encoded header and payload, so only a signature whose
    # spare base64 bits changed can still be the same signature; pyjwt refuses such
    # non-canonical encodings too, but accepting them would not be a forgery.
    head, _, _ = token.rpartition(".")
    same_signature = (mutated.rpartition(".")[0] == head and mutated.count(".") == 2
                      and _decoded(mutated) == _decoded(token)
                      and all(c.isalnum() or c in "-_." for c in mutated))
    # surrounding whitespace is not part of an HTTP field value (RFC 9110 §5.5)
    maybe_valid = same_signature or mutated.strip() == token
    if status == 200:
        assert maybe_valid, (mutated, body[:200])
    else:
        refused(status, body)
        if not maybe_valid:  # a refused variant that may be valid is not counted
            REFUSED.add(tuple(headers))


def test_the_real_credentials_are_allowed(client, served):
    """The other tests' yardstick: the same connection allows what is valid."""
    app_key, token = served.key
    assert client.get([("X-API-AppKey", app_key.encode()),
                       ("X-API-AppToken", token.encode())])[0] == 200
    assert client.get([("Authorization", f"Bearer {served.session}".encode())])[0] == 200


FUZZING_TESTS = {
    "test_malformed_key_and_token_headers", "test_malformed_bearer_values",
    "test_malformed_session_cookies",
    "test_mutated_real_sessions_are_refused_unless_they_decode_the_same",
}


def test_at_least_ten_thousand_distinct_malformed_values_were_refused():
    """After the fuzzing tests (file order): the values they sent that were refused,
    each counted once however often it was sent."""
    assert set(globals()) >= FUZZING_TESTS  # renamed tests are renamed here too
    missing = FUZZING_TESTS - FUZZED
    if missing:
        pytest.skip(f"counts what the whole module sent; did not run: {sorted(missing)}")
    assert len(REFUSED) >= REQUIRED_DISTINCT, (
        f"only {len(REFUSED)} distinct malformed credentials were sent and refused")
