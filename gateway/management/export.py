"""``/accounts/{account}/export?format=xlsx|csv[&sheet=generated|external]``.

XLSX holds both sheets. CSV holds one sheet, ``generated`` unless ``sheet=external``:
one file per sheet keeps each CSV a plain table any tool can read.

A store outage is a 503 in the one JSON shape as long as nothing has been sent: the
XLSX file is complete on disk before its first byte goes out, and CSV reads its first
rows before answering. Once the status line has said 200, the only honest way left to
fail is to reset the connection: a clean end (the last chunk, or for an HTTP/1.0 client
an orderly close) would hand the client a truncated file that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ..context import GATEWAY
from ..errors import StoreUnavailable
from ..export import csv_chunks, filename, write_xlsx
from ..middleware import REQUEST_ID_HEADER, request_id_of
from ..pipeline import Identity
from .common import VIEW
from .operations import Operations
from .schema import AccountPath, ExportQuery

log = logging.getLogger("keygate.export")

operations = Operations("export")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CHUNK = 256 * 1024


@operations.get("/api/v1/accounts/{account}/export", summary="Export the account's keys",
                permission=VIEW, params=AccountPath, query=ExportQuery,
                responses={200: {XLSX: bytes, "text/csv": str}})
async def export(request: web.Request, identity: Identity, path: AccountPath,
                 query: ExportQuery) -> web.StreamResponse:
    """XLSX (the default) holds the sheets `generated` and `external`; CSV is one sheet
    per file (`sheet=generated`, the default, or `external`). Streamed in bounded
    memory; a store failure after the first byte resets the connection rather than end
    a truncated file cleanly."""
    gateway = request.app[GATEWAY]
    account, now = identity.account, gateway.now_ms()
    # prepared here, before the error middleware could add the request id
    response = web.StreamResponse(headers={"Cache-Control": "no-store",
                                           REQUEST_ID_HEADER: request_id_of(request)})
    if query.format == "csv":
        sheet = query.sheet or "generated"
        response.content_type = "text/csv"
        response.charset = "utf-8"
        response.headers["Content-Disposition"] = (
            f'attachment; filename="{filename(account, "csv", now, sheet)}"'
        )
        chunks = csv_chunks(gateway.store, account, sheet)
        # read up to the first rows before answering, so a store failure is still a 503
        opening = await anext(chunks) + await anext(chunks, b"")
        await response.prepare(request)
        await response.write(opening)
        return await _send_rest(request, response, chunks)

    handle, name = tempfile.mkstemp(prefix="keygate-export-", suffix=".xlsx")
    os.close(handle)
    path = Path(name)
    try:
        await write_xlsx(gateway.store, account, path)
        response.content_type = XLSX
        response.content_length = path.stat().st_size
        response.headers["Content-Disposition"] = (
            f'attachment; filename="{filename(account, "xlsx", now)}"'
        )
        await response.prepare(request)
        return await _send_rest(request, response, _file_chunks(path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


async def _send_rest(
    request: web.Request, response: web.StreamResponse, chunks: AsyncIterator[bytes]
) -> web.StreamResponse:
    """Send the rest of a body whose status line is out; on any failure, reset the
    connection (no last chunk, no orderly close) instead of ending cleanly."""
    try:
        async for chunk in chunks:
            await response.write(chunk)
    except Exception as exc:
        # the store logs its own outages, and a client that went away is no error
        if not isinstance(exc, StoreUnavailable | ConnectionError):
            log.exception("export of %s failed after its first byte", request.path)
        _reset(request)
        return response  # aiohttp's closing write_eof meets the closed transport
    await response.write_eof()
    return response


def _reset(request: web.Request) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN: an HTTP/1.0 client reads a
    body to the end of the connection, so an orderly close would end its file cleanly."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
