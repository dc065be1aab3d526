"""``/accounts/{account}/export?format=xlsx|csv[&sheet=generated|external]``.

XLSX holds both sheets. CSV holds one sheet, ``generated`` unless ``sheet=external``:
one file per sheet keeps each CSV a plain table any tool can read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from aiohttp import web

from ..context import GATEWAY
from ..export import FORMATS, SHEETS, csv_chunks, filename, write_xlsx
from .common import authorize, choice_param

routes = web.RouteTableDef()

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CHUNK = 256 * 1024


@routes.get("/api/v1/accounts/{account}/export")
async def export(request: web.Request) -> web.StreamResponse:
    identity = await authorize(request, "view")
    fmt = choice_param(request, "format", FORMATS) or "xlsx"
    sheet = choice_param(request, "sheet", SHEETS)
    gateway = request.app[GATEWAY]
    account, now = identity.account, gateway.now_ms()
    response = web.StreamResponse(headers={"Cache-Control": "no-store"})
    if fmt == "csv":
        sheet = sheet or "generated"
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
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

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
        with path.open("rb") as source:
            while chunk := source.read(CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
