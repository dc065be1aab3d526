"""Export of an account's keys (DESIGN.md §3): XLSX with the sheets generated and external,
CSV one sheet per file, the `keygate export` CLI. Real stack: the private redis-server,
real Casbin, both aiohttp apps, openpyxl to read what came out."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openpyxl
import orjson
import pytest
from conftest import TEST_SECRET, Key, on_one_server_and_a_cluster

from gateway.store import CLI_ACTOR

# the store, audit and export behaviour on one server and on a Redis Cluster
redis_url = on_one_server_and_a_cluster()

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["id", "keyName", "roles", "label", "creationDate", "creationDateToken",
             "creationDateNewToken", "status"]
EXTERNAL = ["id", "keyName", "roles", "account", "addedDate", "status"]
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FORMULA_LABELS = ['=HYPERLINK("http://evil.test/?x=1","click")', "+1+2", "-3-4", "@SUM(A1:A2)"]
# concurrent store calls per batch
BATCH = 50
OTHER_LABELS = ['plain, with "quotes"', "Zürich ✓ 東京", "a=b+c", "'already quoted"]


# -- helpers ---------------------------------------------------------------------------
def export_url(account: str = "acme") -> str:
    return f"/api/v1/accounts/{account}/export"


def naive(iso: str | None) -> datetime | None:
    """The API's ISO date as the naive UTC datetime a spreadsheet holds."""
    if iso is None:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).replace(
        tzinfo=None)


def day_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def random_part(app_key: str) -> str:
    match = re.fullmatch(r"kgk-[a-z0-9-]+-([0-9A-Z]{10})", app_key)
    assert match, app_key
    return match[1]


async def expect_error(response: Any, status: int, code: str | None = None) -> None:
    text = await response.text()
    assert response.status == status, text
    error = orjson.loads(text)["error"]
    assert error["status"] == status
    if code is not None:
        assert error["code"] == code, error


async def fetch(management: Any, key: Key, account: str = "acme",
                **params: str) -> tuple[Any, bytes]:
    response = await management.get(export_url(account), params=params, headers=key.headers)
    body = await response.read()
    assert response.status == 200, body[:500]
    return response, body


def xlsx_rows(data: bytes | Path) -> dict[str, list[tuple[Any, ...]]]:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    book = openpyxl.load_workbook(source)
    try:
        for sheet in book.worksheets:
            for row in sheet.iter_rows():
                for cell in row:
                    assert cell.data_type != "f", (sheet.title, cell.coordinate, cell.value)
        return {s.title: [tuple(r) for r in s.iter_rows(values_only=True)]
                for s in book.worksheets}
    finally:
        book.close()


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def by_key(rows: list[Any], column: int = 1) -> dict[str, Any]:
    """Data rows (after the header) by keyName; fails on a duplicate."""
    found: dict[str, Any] = {}
    for row in rows[1:]:
        assert row[column] not in found, f"duplicate row for {row[column]}"
        found[row[column]] = row
    return found


def xlsx_text(data: bytes) -> str:
    """Every file inside the XLSX (it is a zip of XML), as one string."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return "\n".join(archive.read(n).decode("utf-8", "replace") for n in archive.namelist())


async def api(management: Any, method: str, url: str, key: Key, **body: Any) -> dict[str, Any]:
    response = await management.request(method, url, json=body or None, headers=key.headers)
    text = await response.text()
    assert response.status in (200, 201), text
    return orjson.loads(text)


@pytest.fixture
async def populated(management, make_key, gateway, clock) -> dict[str, Any]:
    """acme with generated keys of every kind and external keys from beta and charlie."""
    admin = await make_key("acme", ["user-admin-restricted"], label="admin")
    # beta's and delta's grant owner below: only an owner key may assign owner
    beta_admin = await make_key("beta", ["owner"], label="admin")
    charlie_admin = await make_key("charlie", ["user-admin-restricted"], label="admin")
    delta_admin = await make_key("delta", ["owner"], label="admin")
    tokens = [admin.token, beta_admin.token, charlie_admin.token, delta_admin.token]
    acme_keys = "/api/v1/accounts/acme/keys"

    async def create(label: str, roles: list[str]) -> dict[str, Any]:
        clock.advance(3600 + 0.25)
        created = await api(management, "POST", acme_keys, admin, label=label, roles=roles)
        tokens.append(created["appToken"])
        return created

    labelled = {label: await create(label, ["orders-reader"])
                for label in FORMULA_LABELS + OTHER_LABELS}
    multi = await create("multi", ["orders-writer", "catalog-reader"])
    no_roles = await create("no roles", [])
    inactive = await create("inactive one", ["orders-reader"])
    await api(management, "PATCH", f"{acme_keys}/{inactive['appKey']}", admin,
              status="inactive")
    renewing = await create("renewing", ["orders-reader"])
    clock.advance(86400)
    renewed = await api(management, "POST", f"{acme_keys}/{renewing['appKey']}/token/renew",
                        admin, deleteOld="later")
    tokens.append(renewed["appToken"])
    replaced = await create("replaced", ["orders-reader"])
    clock.advance(86400)
    now = await api(management, "POST", f"{acme_keys}/{replaced['appKey']}/token/renew",
                    admin, deleteOld="now")
    tokens.append(now["appToken"])

    # external keys in acme
    beta_key = await make_key("beta", ["orders-reader"], label="beta-private-label")
    charlie_key = await make_key("charlie", ["orders-reader"], label="charlie-private-label")
    tokens += [beta_key.token, charlie_key.token]
    clock.advance(600)
    await api(management, "POST", "/api/v1/accounts/acme/external-keys", admin,
              appKey=beta_key.app_key, label="=acme label for beta",
              roles=["orders-writer", "catalog-reader"])
    beta_added = clock.now
    clock.advance(600)
    await api(management, "POST", "/api/v1/accounts/acme/external-keys", admin,
              appKey=charlie_key.app_key, label="acme label for charlie", roles=[])
    charlie_added = clock.now
    await api(management, "PATCH", f"/api/v1/accounts/acme/external-keys/{charlie_key.app_key}",
              admin, status="inactive")
    # grants elsewhere that acme's export must not show
    await api(management, "POST", "/api/v1/accounts/delta/external-keys", delta_admin,
              appKey=beta_key.app_key, label="delta-private-label", roles=["owner"])
    await api(management, "POST", "/api/v1/accounts/beta/external-keys", beta_admin,
              appKey=multi["appKey"], label="beta label for acme's key", roles=["owner"])

    listing = await api(management, "GET", acme_keys + "?perPage=100", admin)
    return {
        "admin": admin,
        "tokens": tokens,
        "generated": {k["appKey"]: k for k in listing["items"]},
        "labelled": labelled,
        "multi": multi, "no_roles": no_roles, "inactive": inactive, "renewing": renewing,
        "replaced": replaced,
        "beta_key": beta_key, "beta_added": beta_added,
        "charlie_key": charlie_key, "charlie_added": charlie_added,
        "export_day": day_of(clock.now),
    }


# -- XLSX ------------------------------------------------------------------------------
async def test_xlsx_has_both_sheets_with_exactly_the_columns_and_rows(
    management, populated, gateway
):
    response, body = await fetch(management, populated["admin"], format="xlsx")
    assert response.content_type == XLSX_TYPE
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="keygate-acme-api-keys-{populated["export_day"]}.xlsx"'
    )
    assert response.headers["Cache-Control"] == "no-store"
    # xlsx is the default format
    default_response, default_body = await fetch(management, populated["admin"])
    assert default_response.content_type == XLSX_TYPE

    for data in (body, default_body):
        book = openpyxl.load_workbook(io.BytesIO(data))
        assert book.sheetnames == ["generated", "external"]
        book.close()
    sheets = xlsx_rows(body)
    assert list(sheets["generated"][0]) == GENERATED
    assert list(sheets["external"][0]) == EXTERNAL

    generated = by_key(sheets["generated"])
    expected = populated["generated"]
    assert set(generated) == set(expected)
    assert len(expected) == 1 + len(FORMULA_LABELS) + len(OTHER_LABELS) + 5
    for app_key, api_row in expected.items():
        row = generated[app_key]
        roles = ", ".join(api_row["roles"])
        assert row == (
            random_part(app_key), app_key, roles or row[2], api_row["label"],
            naive(api_row["creationDate"]), naive(api_row["creationDateToken"]),
            naive(api_row["creationDateNewToken"]), api_row["status"],
        ), app_key
        assert isinstance(row[4], datetime) and isinstance(row[5], datetime)
        if not roles:
            assert row[2] in (None, ""), row
    multi = generated[populated["multi"]["appKey"]]
    assert multi[2] == "orders-writer, catalog-reader"
    # the dates are the ones the key really has
    renewing = generated[populated["renewing"]["appKey"]]
    assert isinstance(renewing[6], datetime) and renewing[6] > renewing[5] == renewing[4]
    replaced = generated[populated["replaced"]["appKey"]]
    assert replaced[6] is None and replaced[5] > replaced[4]
    assert generated[populated["inactive"]["appKey"]][7] == "inactive"
    # formula-looking labels are plain text in XLSX (no cell is a formula: xlsx_rows checks)
    for label, created in populated["labelled"].items():
        assert generated[created["appKey"]][3] == label

    external = by_key(sheets["external"])
    beta_key, charlie_key = populated["beta_key"], populated["charlie_key"]
    assert set(external) == {beta_key.app_key, charlie_key.app_key}
    assert external[beta_key.app_key] == (
        random_part(beta_key.app_key), beta_key.app_key, "orders-writer, catalog-reader", "beta",
        datetime.fromtimestamp(populated["beta_added"], UTC).replace(tzinfo=None), "active",
    )
    charlie_row = external[charlie_key.app_key]
    assert charlie_row[0:2] == (random_part(charlie_key.app_key), charlie_key.app_key)
    assert charlie_row[2] in (None, "")
    assert charlie_row[3:] == (
        "charlie",
        datetime.fromtimestamp(populated["charlie_added"], UTC).replace(tzinfo=None),
        "inactive",
    )


async def test_xlsx_dates_keep_the_exact_time(management, make_key, clock):
    clock.advance(0.123)  # a time with milliseconds
    key = await make_key("acme", ["api-keys-viewer"], label="viewer")
    _, body = await fetch(management, key, format="xlsx")
    [row] = xlsx_rows(body)["generated"][1:]
    expected = datetime.fromtimestamp(int(clock.now * 1000) / 1000, UTC).replace(tzinfo=None)
    assert isinstance(row[4], datetime)
    assert abs(row[4] - expected).total_seconds() < 0.002
    assert row[4].replace(microsecond=0) == expected.replace(microsecond=0)


# -- CSV -------------------------------------------------------------------------------
async def test_csv_one_sheet_per_file_generated_by_default(management, populated):
    admin = populated["admin"]
    response, body = await fetch(management, admin, format="csv")
    assert response.content_type == "text/csv"
    assert response.charset == "utf-8"
    disposition = response.headers["Content-Disposition"]
    assert "acme" in disposition and populated["export_day"] in disposition
    assert disposition.startswith("attachment;") and disposition.endswith('.csv"')
    explicit_response, explicit = await fetch(management, admin, format="csv", sheet="generated")
    assert csv_rows(explicit) == csv_rows(body)

    rows = csv_rows(body)
    assert rows[0] == GENERATED
    assert body.startswith(b"id,keyName,")
    generated = by_key(rows)
    assert set(generated) == set(populated["generated"])
    for app_key, api_row in populated["generated"].items():
        row = generated[app_key]
        assert row[0] == random_part(app_key)
        assert row[2] == ", ".join(api_row["roles"])
        for column, field in ((4, "creationDate"), (5, "creationDateToken"),
                              (6, "creationDateNewToken")):
            if api_row[field] is None:
                assert row[column] == ""
            else:
                assert row[column].endswith("Z")
                assert naive(row[column]) == naive(api_row[field]).replace(microsecond=0)
        assert row[7] == api_row["status"]
    assert generated[populated["renewing"]["appKey"]][6] != ""

    ext_response, ext_body = await fetch(management, admin, format="csv", sheet="external")
    disposition = ext_response.headers["Content-Disposition"]
    assert "acme" in disposition and populated["export_day"] in disposition
    assert "external" in disposition
    ext_rows = csv_rows(ext_body)
    assert ext_rows[0] == EXTERNAL
    external = by_key(ext_rows)
    beta_key, charlie_key = populated["beta_key"], populated["charlie_key"]
    assert set(external) == {beta_key.app_key, charlie_key.app_key}
    beta_row = external[beta_key.app_key]
    assert beta_row[:4] == [random_part(beta_key.app_key), beta_key.app_key,
                            "orders-writer, catalog-reader", "beta"]
    assert naive(beta_row[4]) == datetime.fromtimestamp(populated["beta_added"], UTC).replace(
        tzinfo=None, microsecond=0)
    assert beta_row[5] == "active"
    assert external[charlie_key.app_key][2:4] == ["", "charlie"]
    assert external[charlie_key.app_key][5] == "inactive"


async def test_csv_cells_that_could_run_as_formulas_are_quoted(management, populated):
    _, body = await fetch(management, populated["admin"], format="csv")
    generated = by_key(csv_rows(body))
    for label in FORMULA_LABELS:
        row = generated[populated["labelled"][label]["appKey"]]
        assert row[3] == "'" + label
    for label in OTHER_LABELS:  # only a dangerous first character is quoted
        row = generated[populated["labelled"][label]["appKey"]]
        assert row[3] == label
    # every cell of both sheets: none starts with a formula character
    _, external = await fetch(management, populated["admin"], format="csv", sheet="external")
    for rows in (csv_rows(body), csv_rows(external)):
        for row in rows:
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


# -- what an export never holds --------------------------------------------------------
async def test_export_never_contains_a_token_or_a_digest_or_another_accounts_data(
    management, populated, gateway
):
    admin = populated["admin"]
    _, xlsx = await fetch(management, admin, format="xlsx")
    _, generated = await fetch(management, admin, format="csv")
    _, external = await fetch(management, admin, format="csv", sheet="external")
    documents = {
        "xlsx": xlsx_text(xlsx),
        "csv generated": generated.decode(),
        "csv external": external.decode(),
    }
    secrets = set(populated["tokens"]) | {gateway.hasher.digest(t) for t in populated["tokens"]}
    assert len(secrets) == 2 * len(populated["tokens"])
    others = ["beta-private-label", "charlie-private-label", "delta-private-label",
              "beta label for acme's key", "delta"]
    for name, text in documents.items():
        assert populated["beta_key"].app_key in text or name == "csv generated"
        for secret in secrets:
            assert secret not in text, (name, secret)
            # a token's random body without its prefix would be a leak too
            assert secret[4:] not in text, (name, secret)
        for other in others:
            assert other not in text, (name, other)


async def test_export_needs_view_and_valid_parameters(management, populated, make_key):
    viewer = await make_key("acme", ["api-keys-viewer"], label="viewer")
    worker = await make_key("acme", ["orders-writer"], label="worker")
    beta = await make_key("beta", ["user-admin-restricted"], label="beta admin")
    sheets = xlsx_rows((await fetch(management, viewer, format="xlsx"))[1])
    assert len(sheets["generated"]) == 1 + len(populated["generated"]) + 2
    await expect_error(await management.get(export_url(), headers=worker.headers), 403,
                       "not_permitted")
    await expect_error(await management.get(export_url()), 401)
    await expect_error(await management.get(export_url(), headers=beta.headers), 403, "no_grant")
    for params in ({"format": "pdf"}, {"format": "csv", "sheet": "tokens"},
                   {"format": "XLSX"}):
        await expect_error(await management.get(export_url(), params=params,
                                                headers=viewer.headers), 400, "bad_query")


async def test_export_of_an_account_without_external_keys(management, make_key, clock):
    viewer = await make_key("emptyco", ["api-keys-viewer"], label="only key")
    _, body = await fetch(management, viewer, account="emptyco", format="xlsx")
    sheets = xlsx_rows(body)
    assert sheets["external"] == [tuple(EXTERNAL)]
    assert [row[1] for row in sheets["generated"][1:]] == [viewer.app_key]
    _, ext = await fetch(management, viewer, account="emptyco", format="csv", sheet="external")
    assert csv_rows(ext) == [EXTERNAL]
    _, gen = await fetch(management, viewer, account="emptyco", format="csv")
    assert [row[1] for row in csv_rows(gen)] == ["keyName", viewer.app_key]


async def test_export_crosses_the_stores_chunks(management, gateway, make_key):
    """1,201 generated and 601 external keys: more than two of the store's 500-key chunks."""
    viewer = await make_key("acme", ["api-keys-viewer"], label="viewer")

    async def many(account: str, count: int) -> list[str]:
        names: list[str] = []
        for start in range(0, count, BATCH):
            issued = await asyncio.gather(*(
                gateway.lifecycle.create(account, f"bulk {i}", ["orders-reader"], CLI_ACTOR)
                for i in range(start, min(count, start + BATCH))
            ))
            names += [i.record.app_key for i in issued]
        return names

    generated = {viewer.app_key, *await many("acme", 1200)}
    external = await many("beta", 601)
    for start in range(0, len(external), BATCH):
        added = await asyncio.gather(*(
            gateway.store.add_grant("acme", name, "ext", ["orders-reader"], CLI_ACTOR)
            for name in external[start : start + BATCH]
        ))
        assert [x.app_key for x in added] == external[start : start + BATCH]
    assert len(generated) == 1201

    _, body = await fetch(management, viewer, format="xlsx")
    sheets = xlsx_rows(body)
    assert set(by_key(sheets["generated"])) == generated
    assert len(sheets["generated"]) == 1 + 1201
    assert set(by_key(sheets["external"])) == set(external)
    assert len(sheets["external"]) == 1 + 601
    assert all(row[3] == "beta" for row in sheets["external"][1:])

    _, gen_csv = await fetch(management, viewer, format="csv")
    assert set(by_key(csv_rows(gen_csv))) == generated
    assert len(csv_rows(gen_csv)) == 1 + 1201
    _, ext_csv = await fetch(management, viewer, format="csv", sheet="external")
    assert set(by_key(csv_rows(ext_csv))) == set(external)
    assert len(csv_rows(ext_csv)) == 1 + 601


async def test_a_burst_of_concurrent_key_creations_all_succeed(management, make_key):
    """Bulk creation through the API, as an operator filling an account before an export
    would: every request must succeed (or queue for a store connection), none may fail as
    'store unavailable' (redis-py's asyncio pool raises when it runs out of connections)."""
    admin = await make_key("acme", ["user-admin-restricted"], label="admin")

    async def create(i: int) -> int:
        response = await management.post("/api/v1/accounts/acme/keys",
                                         json={"label": f"burst {i}", "roles": []},
                                         headers=admin.headers)
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(create(i) for i in range(300)))
    assert {s: statuses.count(s) for s in set(statuses)} == {201: 300}
    viewer_rows = csv_rows((await fetch(management, admin, format="csv"))[1])
    assert len(viewer_rows) == 1 + 1 + 300


# -- CLI -------------------------------------------------------------------------------
@pytest.fixture
def cli(gateway, redis_url: str, tmp_path: Path) -> Callable[..., Any]:
    if redis_url.startswith("memory://"):
        pytest.skip("the CLI needs the private redis-server (memory:// is per process)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update({
        "KEYGATE_STORE_URL": redis_url,
        "KEYGATE_SECRET": TEST_SECRET,
        "KEYGATE_STORE_PREFIX": gateway.settings.store_prefix,
    })

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway", *args], env=env,
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )

    return run


async def test_cli_export_writes_the_same_sheets(management, populated, gateway, cli, tmp_path):
    admin = populated["admin"]
    target = tmp_path / "acme.xlsx"
    result = await cli("export", "--account", "acme", "--format", "xlsx", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout
    data = target.read_bytes()
    sheets = xlsx_rows(data)
    assert list(sheets) == ["generated", "external"]
    _, api_xlsx = await fetch(management, admin, format="xlsx")
    assert sheets == xlsx_rows(api_xlsx)
    assert len(sheets["generated"]) == 1 + len(populated["generated"])
    assert len(sheets["external"]) == 3

    gen_target, ext_target = tmp_path / "generated.csv", tmp_path / "external.csv"
    result = await cli("export", "--account", "acme", "--format", "csv", "-o", str(gen_target))
    assert result.returncode == 0, result.stderr
    result = await cli("export", "--account", "acme", "--format", "csv", "--sheet", "external",
                       "-o", str(ext_target))
    assert result.returncode == 0, result.stderr
    _, api_gen = await fetch(management, admin, format="csv")
    _, api_ext = await fetch(management, admin, format="csv", sheet="external")
    assert csv_rows(gen_target.read_bytes()) == csv_rows(api_gen)
    assert csv_rows(ext_target.read_bytes()) == csv_rows(api_ext)
    assert csv_rows(ext_target.read_bytes())[0] == EXTERNAL
    assert {r[1] for r in csv_rows(ext_target.read_bytes())[1:]} == {
        populated["beta_key"].app_key, populated["charlie_key"].app_key}

    texts = [xlsx_text(data), gen_target.read_text(), ext_target.read_text()]
    for token in populated["tokens"]:
        for text in texts:
            assert token not in text
            assert gateway.hasher.digest(token) not in text


async def test_csv_cells_do_not_start_a_formula_where_cells_split_at_semicolons(
    management, make_key
):
    """Excel splits .csv cells at ';' in much of Europe, quoted or not: a label such as
    ``x;=cmd|' /C calc'!A0`` must not give a cell that starts a formula there either."""
    owner = await make_key("acme", ["owner"], label="owner")
    for label in ("x;=cmd|' /C calc'!A0;", "a;+1;-2;@SUM(A1)", "plain; spaced",
                  # a quote after the ';' opens that cell with an empty quoted string
                  # ("" once written), and the formula follows it
                  'q;"=cmd|\' /C calc\'!A0;', 'r;"""@SUM(A1);', 's; "+1;'):
        created = await management.post("/api/v1/accounts/acme/keys", headers=owner.headers,
                                        json={"label": label, "roles": ["orders-reader"]})
        assert created.status == 201, await created.text()
    export = await management.get("/api/v1/accounts/acme/export?format=csv",
                                  headers=owner.headers)
    assert export.status == 200
    text = (await export.read()).decode()
    assert "plain; spaced" in text  # a ';' before anything else is left as it is
    for delimiter in (",", ";"):
        for row in csv.reader(io.StringIO(text), delimiter=delimiter):
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@")), (delimiter, cell)
