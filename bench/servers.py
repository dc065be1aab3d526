"""The benchmark's comparison servers, each run as its own process under uvloop.

``upstream``: a minimal HTTP/1.1 keep-alive server answering every request with a small
fixed 200, so the upstream is never the bottleneck.
``bare-proxy``: an aiohttp pass-through proxy with keygate's client settings (one
ClientSession, TCPConnector with keygate's connection limit and timeouts,
DummyCookieJar, auto_decompress=False, no default headers, streaming both ways,
hop-by-hop headers removed) and no authentication: keygate's yardstick, written the
way the aiohttp docs show (an Application with a catch-all route).
``lean-proxy``: the same forwarding with every technique keygate's proxy port uses
(aiohttp's low-level server; keygate's own upstream client, ``gateway.upstream``; an
upstream body of known length ≤ 64 KiB read whole and answered in one write) and no
authentication. keygate / lean isolates what authentication, routing and header hygiene
cost, with no forwarding technique in keygate's favour.
``decision-floor``: the least a decision service on aiohttp can do: its low-level server
answering every request 200 with the five headers keygate's decision API answers for
nginx (the path taken from ``X-Original-URI``), deciding nothing. What aiohttp itself
costs per decision request: parsing, the request object, the response, the event loop.
``decision-floor-guarded``: the same behind keygate's connection guard (its strict
request reader) and its error wrapper with the request id, as keygate's aiohttp ports run.
``decision-floor-keygate``: what the decision port itself runs on (keygate's own HTTP/1.1
server, ``gateway.decision_server``, behind the connection guard) with a decider that
decides nothing and answers as ``decision-floor`` does: the decision port's cost per
request besides its decision.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.connections import guard_for, server_logger  # noqa: E402
from gateway.decision import JSON, DecisionAnswer  # noqa: E402
from gateway.decision_server import DecisionServer  # noqa: E402
from gateway.errors import GatewayError  # noqa: E402
from gateway.http_head import AIOHTTP_LIMITS  # noqa: E402
from gateway.middleware import errors_as_json, new_request_id  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.upstream import Origin, UpstreamAnswer, UpstreamPool  # noqa: E402

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
    b"Connection: keep-alive\r\n\r\n{\"status\":\"ok\"}\n"
)


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        # requests in the benchmark carry no body: one response per header block
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def run_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
       "transfer-encoding", "upgrade", "host"}


def client_session() -> aiohttp.ClientSession:
    """keygate's upstream settings (gateway.app.upstream_pool, with its defaults), as a
    ClientSession: connection limit, connect and read timeouts, no cookies, no
    decompression, no headers of its own."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=60),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
    )


async def answer(
    request: web.BaseRequest, up: aiohttp.ClientResponse | UpstreamAnswer, *,
    small_bodies_whole: bool,
) -> web.StreamResponse:
    """The upstream's answer back to the client, hop-by-hop headers removed; with
    ``small_bodies_whole``, a body of known length ≤ 64 KiB goes back in one write."""
    out = [(k, v) for k, v in up.headers.items() if k.lower() not in HOP]
    if small_bodies_whole and up.content_length is not None and up.content_length <= 65536:
        return web.Response(status=up.status, reason=up.reason, headers=out,
                            body=await up.read())
    response = web.StreamResponse(status=up.status, reason=up.reason, headers=out)
    await response.prepare(request)
    async for chunk in up.content.iter_chunked(65536):
        await response.write(chunk)
    await response.write_eof()
    return response


async def forward(
    session: aiohttp.ClientSession, upstream: str, request: web.BaseRequest
) -> web.StreamResponse:
    """Pass ``request`` to ``upstream`` and its answer back, hop-by-hop headers removed."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    body = request.content if request.body_exists else None
    async with session.request(
        request.method, upstream + request.raw_path, headers=headers, data=body,
        allow_redirects=False,
    ) as up:
        return await answer(request, up, small_bodies_whole=False)


def bare_proxy_app(upstream: str) -> web.Application:
    async def client_ctx(app: web.Application):
        app["session"] = client_session()
        yield
        await app["session"].close()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await forward(request.app["session"], upstream, request)

    app = web.Application(handler_args={"auto_decompress": False})
    app.cleanup_ctx.append(client_ctx)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def lean_forward(
    pool: UpstreamPool, origin: Origin, request: web.BaseRequest
) -> web.StreamResponse:
    """``forward`` on keygate's upstream client, small bodies answered in one write."""
    # the pool writes the body's framing itself
    headers = [(k, v) for k, v in request.headers.items()
               if k.lower() not in HOP and k.lower() != "content-length"]
    body = request.content if request.body_exists else None
    async with await pool.send(
        origin, request.method, request.raw_path, headers, body, request.content_length
    ) as up:
        return await answer(request, up, small_bodies_whole=True)


async def until_stopped() -> None:
    """Wait for SIGINT or SIGTERM (how bench/run.py stops its servers)."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_lean_proxy(port: int, upstream: str) -> None:
    # keygate's defaults (gateway.app.upstream_pool)
    pool = UpstreamPool(max_connections=1000, connect_timeout=5, read_timeout=60)
    handler = functools.partial(lean_forward, pool, Origin.of(URL(upstream)))
    runner = web.ServerRunner(web.Server(handler, auto_decompress=False), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await until_stopped()
    finally:
        await runner.cleanup()
        await pool.close()


IDENTITY = (("X-Keygate-Key", "kgk-acct-00-0000000000"), ("X-Keygate-Owner-Account", "acct-00"),
            ("X-Keygate-Account", "acct-00"), ("X-Keygate-Roles", "role-000"))


async def allow_everything(request: web.BaseRequest) -> web.Response:
    """200 with identity headers of the size keygate's answer carries, and the path."""
    path = request.headers.get("X-Original-URI", "/").partition("?")[0]
    return web.Response(headers=[*IDENTITY, ("X-Keygate-Path", path)])


async def run_decision_floor(port: int, guarded: bool) -> None:
    # keygate's server options for its ports (gateway.app.running), access log off
    options = {"access_log": None, "logger": server_logger(), **AIOHTTP_LIMITS}
    if not guarded:
        runner = web.ServerRunner(web.Server(allow_everything, **options))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await until_stopped()
        finally:
            await runner.cleanup()
        return
    handler = functools.partial(errors_as_json, handler=allow_everything)
    server = web.Server(handler, **options)
    guard = guard_for(load_settings(env={}), new_request_id)
    listener = await guard.listen(server, "127.0.0.1", port)
    try:
        await until_stopped()
    finally:
        listener.close()
        await server.shutdown(1)
        await guard.close()


class DecidesNothing:
    """For keygate's decision server, in place of ``gateway.decision.DecisionPort``:
    every caller trusted, every request allowed with ``allow_everything``'s headers."""

    @staticmethod
    def trusts(peer: str) -> bool:
        return True

    async def answer(self, method: str, target: str, host: str, headers, peer: str,
                     trusted: bool, request_id: str) -> DecisionAnswer:
        answer = DecisionAnswer()
        path = headers.get("X-Original-URI", "/").partition("?")[0]
        answer.headers = [*IDENTITY, ("X-Keygate-Path", path)]
        return answer

    @staticmethod
    def refuse(answer: DecisionAnswer, form: str | None, refusal: GatewayError,
               request_id: str) -> None:
        answer.status = refusal.status
        answer.headers = [("Content-Type", JSON)]
        answer.body = refusal.body(request_id)


async def run_decision_floor_keygate(port: int) -> None:
    guard = guard_for(load_settings(env={}), new_request_id)
    server = DecisionServer(DecidesNothing(), guard)  # type: ignore[arg-type]
    listener = await server.listen("127.0.0.1", port)
    try:
        await until_stopped()
    finally:
        listener.close()
        await server.cleanup()
        await guard.close()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "upstream":
        uvloop.run(run_upstream(port))
    elif mode == "lean-proxy":
        uvloop.run(run_lean_proxy(port, sys.argv[3]))
    elif mode in ("decision-floor", "decision-floor-guarded"):
        uvloop.run(run_decision_floor(port, guarded=mode == "decision-floor-guarded"))
    elif mode == "decision-floor-keygate":
        uvloop.run(run_decision_floor_keygate(port))
    else:
        upstream = sys.argv[3]
        web.run_app(bare_proxy_app(upstream), host="127.0.0.1", port=port, access_log=None,
                    print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
