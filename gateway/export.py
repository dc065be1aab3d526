"""Export an account's keys as XLSX (two sheets) or CSV (one sheet), in bounded memory.

Keys are read from the store a chunk at a time and written as they come: xlsxwriter
runs in constant-memory mode (rows go to temporary files, the workbook is assembled on
disk), CSV is streamed. Neither format ever contains a token or a token digest: rows are
built field by field from the public columns below.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import xlsxwriter

from .store import ExternalKey, KeyRecord, Store

GENERATED_COLUMNS = (
    "id", "keyName", "roles", "label", "creationDate", "creationDateToken",
    "creationDateNewToken", "status",
)
EXTERNAL_COLUMNS = ("id", "keyName", "roles", "account", "addedDate", "status")
SHEETS = ("generated", "external")
FORMATS = ("xlsx", "csv")


def _date(ms: int | None) -> datetime | None:
    # spreadsheet dates carry no zone: the export is in UTC, as the column notes say
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None) if ms else None


def key_id(app_key: str) -> str:
    """The key's unique random part (``kgk-acme-7QX2M4PZ9B`` → ``7QX2M4PZ9B``)."""
    return app_key.rsplit("-", 1)[-1]


def generated_row(r: KeyRecord) -> list[Any]:
    return [key_id(r.app_key), r.app_key, ", ".join(r.roles), r.label, _date(r.created),
            _date(r.token_created), _date(r.new_token_created), r.status]


def external_row(x: ExternalKey) -> list[Any]:
    return [key_id(x.app_key), x.app_key, ", ".join(x.roles), x.owner, _date(x.added), x.status]


def _sheet(store: Store, account: str, sheet: str) -> tuple[
    Sequence[str], AsyncIterator[list[Any]], Callable[[Any], list[Any]]
]:
    if sheet == "generated":
        return GENERATED_COLUMNS, store.iter_keys(account), generated_row
    return EXTERNAL_COLUMNS, store.iter_grants(account), external_row


def filename(account: str, fmt: str, now_ms: int, sheet: str | None = None) -> str:
    day = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m-%d")
    part = f"-{sheet}" if sheet else ""
    return f"keygate-{account}-api-keys{part}-{day}.{fmt}"


async def write_xlsx(store: Store, account: str, path: Path | BinaryIO) -> None:
    """Both sheets into ``path``, or into a file already open for writing (so that a
    target that cannot be written fails before the export's work, not after)."""
    workbook = xlsxwriter.Workbook(
        str(path) if isinstance(path, Path) else path,
        {"constant_memory": True, "strings_to_formulas": False, "strings_to_urls": False},
    )
    bold = workbook.add_format({"bold": True})
    date_format = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})

    def write(sheet: Any, first_row: int, rows: list[list[Any]]) -> None:
        for offset, row in enumerate(rows):
            for col, value in enumerate(row):
                if isinstance(value, datetime):
                    sheet.write_datetime(first_row + offset, col, value, date_format)
                elif value is not None:
                    sheet.write_string(first_row + offset, col, value)

    for name in SHEETS:
        columns, batches, to_row = _sheet(store, account, name)
        worksheet = workbook.add_worksheet(name)
        worksheet.write_row(0, 0, columns, bold)
        worksheet.set_column(0, len(columns) - 1, 22)
        next_row = 1
        async for batch in batches:
            rows = [to_row(item) for item in batch]
            # writing is CPU work: keep the event loop (and the proxy) responsive
            await asyncio.to_thread(write, worksheet, next_row, rows)
            next_row += len(rows)
    await asyncio.to_thread(workbook.close)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# where a spreadsheet splits cells at ';' (Excel's list separator in much of Europe),
# whatever follows a ';' starts a cell, quoted or not: a label's '"' after a ';' is
# written doubled, and that cell then opens with an empty quoted string that the rest
# follows ('x;"=1;' gives the cell '=1'), so quotes and spaces do not hide a formula
_FORMULA_AFTER_SEMICOLON = re.compile(r';(?=[ "]*[=+\-@\t\r])')


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds") + "Z"
    # a label like =HYPERLINK(...) must not become a formula in a spreadsheet, nor one
    # like x;=HYPERLINK(...) where ';' separates cells: the same apostrophe defuses it
    value = _FORMULA_AFTER_SEMICOLON.sub(";'", value)
    return "'" + value if value.startswith(_FORMULA_START) else value


async def csv_chunks(store: Store, account: str, sheet: str) -> AsyncIterator[bytes]:
    columns, batches, to_row = _sheet(store, account, sheet)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    yield buffer.getvalue().encode()
    async for batch in batches:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows([_csv_cell(v) for v in to_row(item)] for item in batch)
        yield buffer.getvalue().encode()
