"""Decision tables (``keygate policy test``): the shipped tables pass on the shipped
policies, the runner reports a failing row with its decision and the lines behind it,
``never`` rows catch a violation wherever it hides (an account, a pattern, an
assignment), bad table files stop the command (exit 2), and a table of any size runs in
time that grows with its distinct questions.

Real Casbin with the real model.conf and policies/ (copied to tmp_path where a test
changes them); key rows and the assignment rows' agreement with the management API run
against the private redis-server.
"""

from __future__ import annotations

import shutil
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import TEST_SECRET

from gateway.cli import main
from gateway.escalation import Delegation
from gateway.management.common import MANAGEMENT_PERMISSIONS
from gateway.pipeline.authorizer import CasbinAuthorizer
from gateway.policy import Policy
from gateway.policy.delegation import judge_assign
from gateway.policy.table_runner import render_text, run_tables
from gateway.policy.tables import TableError, keys_needed, load_table, parse_table
from gateway.settings import PROJECT_ROOT

MODEL = PROJECT_ROOT / "model.conf"
POLICIES = PROJECT_ROOT / "policies"
SHIPPED_TABLES = sorted((POLICIES / "tests").glob("*.toml"))
API_KEYS_ACTIONS = ("view", "edit", "renew-token", "edit-settings")


@pytest.fixture(autouse=True)
def no_keygate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads KEYGATE_* settings: none may leak in from the test's environment."""
    import os

    for name in [n for n in os.environ if n.startswith("KEYGATE_")]:
        monkeypatch.delenv(name)


def keygate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``keygate ARGV`` in this process: exit status, standard output, standard error."""
    capsys.readouterr()
    code = main([*argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the shipped policies (with their tables) that a test may change."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def write_table(directory: Path, name: str, text: str) -> Path:
    (directory / "tests").mkdir(exist_ok=True)
    path = directory / "tests" / name
    path.write_text(text)
    return path


def case(roles: list[str] | None, account: str, resource: str, action: str, expect: str,
         name: str = "", key: str | None = None) -> str:
    who = f'key = "{key}"' if key else f"roles = {orjson.dumps(roles).decode()}"
    named = f'name = "{name}"\n' if name else ""
    return (f"[[case]]\n{named}{who}\naccount = \"{account}\"\nresource = \"{resource}\"\n"
            f"action = \"{action}\"\nexpect = \"{expect}\"\n\n")


def never(roles: list[str], resource: str, action: str, name: str = "") -> str:
    named = f'name = "{name}"\n' if name else ""
    return (f"[[never]]\n{named}roles = {orjson.dumps(roles).decode()}\n"
            f"resource = \"{resource}\"\naction = \"{action}\"\n\n")


def run_text(policy_dir: Path, text: str, name: str = "tests/t.toml") -> Any:
    policy = Policy.load(MODEL, policy_dir)
    return run_tables(policy, [parse_table(text, name)], known_permissions=MANAGEMENT_PERMISSIONS)


# -- the shipped tables ----------------------------------------------------------------
def test_the_shipped_tables_pass_on_the_shipped_policies():
    policy = Policy.load(MODEL, POLICIES)
    tables = [load_table(path, f"tests/{path.name}") for path in SHIPPED_TABLES]
    assert [t.file for t in tables] == ["tests/builtin.toml", "tests/examples.toml"]
    report = run_tables(policy, tables, known_permissions=MANAGEMENT_PERMISSIONS)
    assert report.failures == (), "\n".join(render_text(report))
    assert len(report.results) >= 50
    # never rows really looked: each asked at least one question
    assert all(r.checked > 0 for r in report.results if r.row.kind == "never")


def test_the_shipped_tables_cover_every_predefined_role():
    """Every role the shipped policies define is in some row; every builtin role has a
    row for each of the four api-keys permissions; the escalation rules are pinned."""
    policy = Policy.load(MODEL, POLICIES)
    rows = [row for path in SHIPPED_TABLES for row in load_table(path, path.name).rows]
    in_rows = {role for row in rows for role in row.roles or ()}
    assert policy.roles <= in_rows, sorted(policy.roles - in_rows)
    builtin_roles = {line.values[0] for line in policy.p_lines if line.file == "builtin.csv"}
    for role in builtin_roles - {"policy-admin"}:
        asked = {row.action for row in rows if row.roles == (role,)
                 and row.resource == "api-keys" and row.kind == "case"}
        assert set(API_KEYS_ACTIONS) <= asked, (role, asked)
    nevers = {(row.roles, row.resource) for row in rows if row.kind == "never"}
    assert (("user-admin-restricted",), "role:owner") in nevers
    assert (("user-admin-restricted",), "role:user-admin-restricted") in nevers
    assert (("api-keys-viewer",), "role:*") in nevers


def test_keygate_policy_test_runs_the_shipped_tables_by_default(capsys):
    code, out, _ = keygate(capsys, "policy", "test")
    assert code == 0, out
    assert out.strip().endswith("passed, 0 failed")
    # the README prints this summary line: it must be the one the shipped tables give
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"`{out.strip().splitlines()[-1]}`" in readme
    code, out, _ = keygate(capsys, "policy", "test", "--format", "json")
    report = orjson.loads(out)
    assert code == 0 and report["failed"] == 0 and report["passed"] == report["rows"] >= 50
    assert report["files"] == ["tests/builtin.toml", "tests/examples.toml"]


async def test_assignment_rows_agree_with_the_management_api(management, make_key):
    """Every (role:R, assign) case of the shipped tables, tried for real: a key holding
    the row's roles asks the management API to create a key holding R. 201 exactly
    when the table says allow."""
    rows = [row for path in SHIPPED_TABLES for row in load_table(path, path.name).rows
            if row.kind == "case" and row.resource.startswith("role:")
            and row.action == "assign"]
    assert len(rows) >= 10
    for row in rows:
        caller = await make_key(row.account, list(row.roles), label="caller")
        response = await management.post(
            f"/api/v1/accounts/{row.account}/keys", headers=caller.headers,
            json={"label": "made", "roles": [row.resource.removeprefix("role:")]},
        )
        created = response.status == 201
        assert created == row.expect, (row.title, response.status, await response.text())
        if not created:
            error = (await response.json())["error"]
            assert error["code"] in ("escalation_refused", "not_permitted"), error


def test_the_policy_tools_and_the_gateway_judge_assignments_alike(make_settings):
    """The escalation rule was factored out of gateway.escalation into
    gateway.policy.delegation: the gateway's Delegation (cached decisions) and the pure
    rule give the same reason for every caller role (and pair) and every role."""
    policy = Policy.load(MODEL, POLICIES)
    delegation = Delegation(CasbinAuthorizer(policy))
    roles = sorted(policy.roles)
    callers = [[r] for r in roles] + [[a, b] for a in roles for b in roles if a < b]
    for caller in callers:
        for role in roles:
            for account in ("acme", "globex"):
                expected = delegation.why_not(caller, account, role)
                assert judge_assign(policy, caller, account, role).reason == expected
                assert (judge_assign(policy, caller, account, role, by_assign_line=False).reason
                        == delegation.why_not_hold(caller, account, role))


# -- a failing row ---------------------------------------------------------------------
def test_a_failing_case_prints_the_row_the_decision_and_the_deciding_lines(policies, capsys):
    table = write_table(policies, "review.toml", (
        "# a table of the review\n\n"
        + case(["orders-writer"], "acme", "orders", "write", "allow", name="writes")
        + case(["orders-writer", "suspended-partner"], "acme", "orders", "read", "allow",
               name="suspended partner still reads")
    ))
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 1
    lines = out.splitlines()
    # the row: its file (relative to the policy directory) and the line of its header
    header_line = table.read_text().splitlines().index("[[case]]", 3) + 1
    assert lines[0] == f"tests/review.toml:{header_line}  FAIL  suspended partner still reads"
    assert "expected allow, got deny" in lines[1]
    # the decision and the lines: the deny line decided; the allow it beat is named
    deny = next(n for n, text in enumerate((POLICIES / "examples.csv").read_text()
                                           .splitlines(), 1) if "suspended-partner, *" in text)
    assert f"examples.csv:{deny} denies it" in out
    assert f"    examples.csv:{deny}  p, suspended-partner, *, orders, *, deny" in lines
    assert lines[-1] == "2 rows in 1 table: 1 passed, 1 failed"
    assert "writes" not in out.replace("suspended", "")  # passing rows are not printed


def test_a_failing_row_in_json_carries_the_decision_and_lines(policies, capsys):
    table = write_table(policies, "t.toml", case(["orders-writer"], "acme", "orders", "read",
                                                 "deny"))
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies),
                           "--format", "json", str(table))
    assert code == 1
    (result,) = orjson.loads(out)["results"]
    assert result["passed"] is False and result["line"] == 1 and result["expect"] == "deny"
    decision = result["decision"]
    assert decision["allowed"] is True
    (line,) = decision["decidedBy"]
    assert (line["file"], line["role"], line["effect"]) == ("examples.csv", "orders-reader",
                                                           "allow")
    assert line["via"] == ["orders-writer", "orders-reader"]  # inherited


def test_a_broken_policy_change_fails_the_shipped_tables(policies, capsys):
    """The point of the tables: a change that lets user-admin-restricted hand out every
    role (a role:* assign line, the owner deny removed) fails them, naming the line."""
    builtin = policies / "builtin.csv"
    builtin.write_text(builtin.read_text().replace(
        "p, user-admin-restricted, *, role:owner, assign, deny\n", ""))
    (policies / "helpdesk.csv").write_text("p, user-admin-restricted, *, role:*, assign, allow\n")
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies))
    assert code == 1
    assert "FAIL  user-admin-restricted never assigns owner" in out
    assert "helpdesk.csv:1  p, user-admin-restricted, *, role:*, assign, allow" in out
    assert "FAIL  user-admin-restricted never assigns user-admin-restricted" not in out


# -- never rows ------------------------------------------------------------------------
def test_never_finds_the_one_account_a_line_names(policies):
    (policies / "globex.csv").write_text("p, orders-reader, globex, orders, write, allow\n")
    report = run_text(policies, never(["orders-reader"], "orders", "write", name="ro"))
    (result,) = report.results
    assert not result.passed and result.violation_count == 1
    (violation,) = result.violations
    assert (violation.account, violation.resource, violation.action) == ("globex", "orders",
                                                                          "write")
    assert [m.location for m in violation.lines] == ["globex.csv:1"]
    # and orders-writer, which inherits orders-reader, is caught there too
    (result,) = run_text(policies, never(["orders-writer"], "orders", "write")).results
    assert not result.passed  # it writes everywhere (examples.csv), globex included


def test_never_checks_an_account_no_line_names(policies):
    """A * line applies in accounts the policies never mention: the stand-in '*' finds it."""
    (policies / "late.csv").write_text("p, catalog-reader, *, catalog, write, allow\n")
    (result,) = run_text(policies, never(["catalog-reader"], "*", "write")).results
    assert not result.passed
    assert [(v.account, v.resource, v.action) for v in result.violations] == [
        ("*", "catalog", "write")]


def test_never_with_a_pattern_cannot_pass_for_lack_of_names(policies):
    """No literal 'reports/…' resource is named anywhere: the pattern's stand-in still
    asks, so a line allowing 'reports/*' is caught."""
    (policies / "reports.csv").write_text("p, catalog-reader, *, reports/*, read, allow\n")
    (result,) = run_text(policies, never(["catalog-reader"], "reports/*", "*")).results
    assert not result.passed
    (violation,) = result.violations
    assert violation.resource == "reports/…" and violation.action == "read"
    # a pattern that matches nothing the roles may do passes, having asked
    (result,) = run_text(policies, never(["catalog-reader"], "orders*", "*")).results
    assert result.passed


def test_never_on_assignments_uses_the_escalation_rule(policies):
    """api-keys-viewer gets edit on api-keys in one account: it may then assign the
    roles whose permissions it holds there (escalation rule), which 'assigns nothing'
    catches, in that account only."""
    (policies / "more.csv").write_text("p, api-keys-viewer, globex, api-keys, edit, allow\n")
    (result,) = run_text(policies, never(["api-keys-viewer"], "role:*", "assign")).results
    assert not result.passed
    assert {(v.account, v.resource) for v in result.violations} == {
        ("globex", "role:api-keys-viewer"), ("globex", "role:suspended-partner")}


def test_never_on_the_shipped_policies_passes_and_on_a_violation_fails(policies):
    text = never(["user-admin-restricted"], "role:owner", "assign")
    assert run_text(policies, text).results[0].passed
    # an assign line for owner does not help: the deny line in builtin.csv still wins
    (policies / "x.csv").write_text("p, user-admin-restricted, *, role:owner, assign, allow\n")
    assert run_text(policies, text).results[0].passed
    builtin = policies / "builtin.csv"
    builtin.write_text(builtin.read_text().replace(
        "p, user-admin-restricted, *, role:owner, assign, deny\n", ""))
    (result,) = run_text(policies, text).results
    assert not result.passed
    assert [m.location for m in result.violations[0].lines] == ["x.csv:1"]


# -- rows that cannot prove anything fail -----------------------------------------------
def test_a_misspelt_role_fails_the_row_even_when_it_expects_deny(policies):
    report = run_text(policies, case(["ownr"], "acme", "api-keys", "edit", "deny")
                      + never(["orders-writr"], "api-keys", "*")
                      + case(["owner"], "acme", "role:ownr", "assign", "deny"))
    assert [r.passed for r in report.results] == [False, False, False]
    assert "'ownr' is not defined" in report.results[0].problem
    assert "'orders-writr' is not defined" in report.results[1].problem
    assert "'ownr' (role:ownr) is not defined" in report.results[2].problem


# -- bad table files -------------------------------------------------------------------
BAD_TABLES = {
    "not TOML": ("[[case]\nroles = [", "not valid TOML"),
    "unknown field": (case(["owner"], "acme", "orders", "read", "allow")
                      .replace("expect", "expected"), "unknown field 'expected'"),
    "missing field": (case(["owner"], "acme", "orders", "read", "allow")
                      .replace('action = "read"\n', ""), "missing field 'action'"),
    "roles not a list": (case(["owner"], "acme", "orders", "read", "allow")
                         .replace('["owner"]', '"owner"'), "roles must be a non-empty list"),
    "empty roles": (case([], "acme", "orders", "read", "allow"), "roles must be a non-empty"),
    "a number for a name": (case(["owner"], "acme", "orders", "read", "allow")
                            .replace('"read"', "7"), "action must be a non-empty string"),
    "roles and key": (case(["owner"], "acme", "orders", "read", "allow")
                      .replace("[[case]]\n", '[[case]]\nkey = "kgk-acme-X"\n'),
                      "give roles = [...] or key"),
    "neither roles nor key": (case(["owner"], "acme", "orders", "read", "allow")
                              .replace('roles = ["owner"]\n', ""), "give roles = [...] or key"),
    "bad expect": (case(["owner"], "acme", "orders", "read", "yes"), "expect must be"),
    "bad account": (case(["owner"], "Acme!", "orders", "read", "allow"), "not an account"),
    "pattern in a case": (case(["owner"], "acme", "orders/*", "read", "allow"),
                          "a case asks about one resource"),
    "account in never": (never(["owner"], "orders", "read").replace(
        "[[never]]\n", '[[never]]\naccount = "acme"\n'), "unknown field 'account'"),
    "key in never": (never(["owner"], "orders", "read").replace(
        "[[never]]\n", '[[never]]\nkey = "kgk-acme-X"\n'), "unknown field 'key'"),
    "unknown top level": ("[[cases]]\nroles = [\"owner\"]\n", "unknown entry 'cases'"),
    "case as a table": ("[case]\nroles = [\"owner\"]\n", "must be rows written [[case]]"),
    "no rows": ("# nothing yet\n", "no [[case]] or [[never]] rows"),
    "nested too deeply": ("x = " + "[\n" * 50_000 + "]\n" * 50_000, "nested too deeply"),
    "control characters": (case(["owner"], "acme", "orders", "read", "allow",
                                name="a\\u001b[2Jb"), "not printable"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TABLES))
def test_a_bad_table_stops_the_command_naming_the_file(policies, capsys, kind):
    text, message = BAD_TABLES[kind]
    table = write_table(policies, "bad.toml", text)
    code, out, err = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 2, (out, err)
    assert err.startswith("keygate: decision table tests/bad.toml"), err
    assert message in err, err
    assert len(err.splitlines()) == 1 and out == ""


HUGE = "z" * 5_000  # long, on a line a table may hold


@pytest.mark.parametrize("text", [
    f"{HUGE} = 1\n",
    f"[[case]]\n{HUGE} = 1\n",
    case(["owner"], "acme", "orders", "read", "allow").replace('"allow"', f'"{HUGE}"'),
], ids=["entry", "field", "expect"])
def test_a_bad_tables_message_does_not_grow_with_the_file(text):
    """A name or value the table got wrong is quoted cut short, not 16 MiB of it."""
    with pytest.raises(TableError) as info:
        parse_table(text, "t.toml")
    assert "zzzz" in str(info.value) and len(str(info.value)) < 400


def test_a_table_that_would_take_tomllib_hours_is_refused_unparsed():
    """tomllib's time grows with the square of a dotted key's parts: 50,000 parts took
    45 s, the 800,000 a 16 MiB table holds would take hours. No row needs such a line."""
    with pytest.raises(TableError, match=r"line 2 is \d+ characters long; a table line"):
        parse_table("[[case]]\nx" + ".a" * 50_000 + " = 1\n", "t.toml")


@pytest.mark.parametrize("value", ['["allow"]', "{ a = 1 }", "1", "true"])
def test_an_expect_that_is_not_a_string_is_a_table_error(value):
    text = case(["owner"], "acme", "orders", "read", "allow").replace('"allow"', value)
    with pytest.raises(TableError, match="expect must be"):
        parse_table(text, "t.toml")


def test_a_bad_row_is_named_with_its_line(policies):
    text = (case(["owner"], "acme", "orders", "read", "allow") * 2).replace(
        'expect = "allow"\n\n[[case]]', 'expect = "allow"\n\n[[case]]\nrol = 1', 1)
    with pytest.raises(TableError, match=r"case #2 \(line 8\): unknown field 'rol'"):
        parse_table(text, "t.toml")


def test_a_table_that_is_not_utf8_or_missing_stops_the_command(policies, capsys):
    bad = policies / "tests" / "latin1.toml"
    bad.write_bytes(b'[[case]]\nname = "caf\xe9"\n')
    code, _, err = keygate(capsys, "policy", "test", "--policies", str(policies), str(bad))
    assert code == 2 and "cannot read it" in err
    code, _, err = keygate(capsys, "policy", "test", "--policies", str(policies),
                           str(policies / "tests" / "nope.toml"))
    assert code == 2 and "no such file" in err


def test_no_tables_to_run_is_a_usage_error(policies, capsys):
    shutil.rmtree(policies / "tests")
    code, _, err = keygate(capsys, "policy", "test", "--policies", str(policies))
    assert code == 2 and "no decision tables" in err
    code, _, err = keygate(capsys, "policy", "test", "--policies", str(policies / "nope"))
    assert code == 2 and "is not a directory" in err


def test_rows_written_as_inline_arrays_fall_back_to_their_index(policies):
    text = ('case = [{roles = ["owner"], account = "acme", resource = "orders", '
            'action = "read", expect = "deny"}]\n')
    (result,) = run_text(policies, text).results
    assert not result.passed and result.row.line is None
    assert result.row.location == "tests/t.toml (case #1)"


# -- size ------------------------------------------------------------------------------
def test_a_huge_table_runs_in_time_that_grows_with_its_distinct_questions(policies):
    """40,000 rows over 40 distinct questions: each question is decided once. (Deciding
    every row anew would take several seconds; a quadratic runner, hours.)"""
    questions = [case([role], "acme", "orders", action, "deny")
                 for role in ("catalog-reader", "api-keys-viewer", "policy-admin",
                              "suspended-partner", "user-admin-restricted")
                 for action in ("write", "delete", "list", "purge", "copy", "move", "sync",
                                "tag")]
    text = "".join(questions) * 1000
    table = parse_table(text, "tests/huge.toml")
    assert len(table.rows) == 40_000
    started = time.perf_counter()
    report = run_tables(Policy.load(MODEL, policies), [table])
    elapsed = time.perf_counter() - started
    assert report.failures == ()
    assert elapsed < 10, elapsed


def test_a_never_row_over_many_accounts_and_names_stays_fast(policies):
    """A policy naming 200 accounts and 300 resources: a never row for a role whose
    lines name one account asks about that account and the stand-in, not all 200."""
    lines = [f"p, tenant-{n}, acct-{n}, res-{n % 300}, read, allow" for n in range(200)]
    lines += [f"p, catalog-reader, *, res-{n}, read, allow" for n in range(300)]
    lines.append("p, auditor, acct-7, *, read, allow")
    (policies / "many.csv").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    report = run_text(policies, never(["auditor"], "*", "write")
                      + never(["catalog-reader"], "*", "write")
                      + never(["auditor"], "*", "*"))
    elapsed = time.perf_counter() - started
    assert [r.passed for r in report.results] == [True, True, False]
    assert {v.account for v in report.results[2].violations} == {"acct-7"}
    assert report.results[2].violation_count >= 300
    assert elapsed < 20, elapsed


def test_a_never_row_too_broad_to_check_fails_unasked_saying_so(policies, capsys):
    """Fifty lines, each naming its own account, resource and action, and a catch-all
    allow: a never row over "*"/"*" would be 140,000 decisions over every line
    (minutes; hours with a few more lines). It fails at once, as not proven, and says
    how to narrow it; a narrower row over the same lines still runs."""
    lines = [f"p, grid, acct-{n}, res-{n}, act-{n}, allow" for n in range(50)]
    lines.append("p, grid, *, *, *, allow")
    (policies / "grid.csv").write_text("\n".join(lines) + "\n")
    (policies / "tests" / "grid.toml").write_text(
        never(["grid"], "*", "*", "grid does nothing") + never(["grid"], "res-1", "act-2"))
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies),
                           str(policies / "tests" / "grid.toml"))
    assert code == 1
    broad, narrow = run_text(policies, never(["grid"], "*", "*")
                             + never(["grid"], "res-1", "act-2")).results
    assert not broad.passed and broad.checked == 0 and "narrow" in (broad.problem or "")
    assert "narrow its resource or action" in out
    assert not narrow.passed and narrow.violation_count == len(lines)  # every account


# -- key rows: the key's roles from the store -------------------------------------------
@pytest.fixture
def store_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not redis_url.startswith("redis://"):
        pytest.skip("key rows need the private redis-server (memory:// is per process)")
    monkeypatch.setenv("KEYGATE_STORE_URL", redis_url)
    monkeypatch.setenv("KEYGATE_SECRET", TEST_SECRET)
    monkeypatch.setenv("KEYGATE_STORE_PREFIX", f"tables-{uuid.uuid4().hex[:12]}:")


def create_key(capsys: pytest.CaptureFixture[str], account: str, *roles: str) -> str:
    role_args = [arg for role in roles for arg in ("--role", role)]
    code, out, err = keygate(capsys, "keys", "create", "--account", account, "--label", "t",
                             *role_args, "--json")
    assert code == 0, err
    return orjson.loads(out)["appKey"]


def test_key_rows_read_the_keys_roles_in_the_account(policies, capsys, store_env):
    writer = create_key(capsys, "acme", "orders-writer")
    partner = create_key(capsys, "globex", "catalog-reader")
    stranger = create_key(capsys, "initech", "owner")
    code, _, err = keygate(capsys, "external-keys", "add", "--account", "acme", partner,
                           "--role", "orders-reader")
    assert code == 0, err
    text = (case(None, "acme", "orders", "write", "allow", key=writer, name="own key")
            + case(None, "acme", "orders", "write", "deny", key=partner, name="grant")
            + case(None, "acme", "orders", "read", "allow", key=partner, name="grant reads")
            + case(None, "globex", "catalog", "read", "allow", key=partner, name="home"))
    table = write_table(policies, "keys.toml", text)
    assert keys_needed([load_table(table, "k")]) == [
        (writer, "acme"), (partner, "acme"), (partner, "globex")]
    code, out, err = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 0, out + err
    # a key of another account that acme never granted is refused there: a deny, which
    # a row expecting an allow fails, naming the key
    write_table(policies, "keys.toml", case(None, "acme", "orders", "read", "deny",
                                            key=stranger))
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 0, out
    write_table(policies, "keys.toml", case(None, "acme", "orders", "read", "allow",
                                            key=stranger))
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 1
    assert f"no API key '{stranger}' holds roles in account 'acme'" in out


def test_key_rows_of_an_inactive_key_or_grant_are_denied(policies, capsys, store_env):
    """keygate refuses an inactive key (401) or an inactive grant (403) before it asks
    the policy: a row about such a key is a deny, whatever its roles allow."""
    writer = create_key(capsys, "acme", "orders-writer")
    partner = create_key(capsys, "globex", "catalog-reader")
    assert keygate(capsys, "external-keys", "add", "--account", "acme", partner,
                   "--role", "orders-reader")[0] == 0
    text = (case(None, "acme", "orders", "write", "allow", key=writer, name="own")
            + case(None, "acme", "orders", "read", "allow", key=partner, name="grant"))
    table = write_table(policies, "keys.toml", text)
    assert keygate(capsys, "policy", "test", "--policies", str(policies), str(table))[0] == 0
    assert keygate(capsys, "keys", "deactivate", writer)[0] == 0
    assert keygate(capsys, "external-keys", "update", "--account", "acme", partner,
                   "--status", "inactive")[0] == 0
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 1
    assert "this API key is inactive (401 key_inactive)" in out
    assert "access to account 'acme' is inactive (403 grant_inactive)" in out
    assert "2 failed" in out
    table = write_table(policies, "keys.toml", text.replace('"allow"', '"deny"'))
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 0, out
    # the grant active again, but the key deactivated by its owner account: refused
    # (401) before the grant is read, as keygate decides a request
    assert keygate(capsys, "external-keys", "update", "--account", "acme", partner,
                   "--status", "active")[0] == 0
    assert keygate(capsys, "keys", "deactivate", partner)[0] == 0
    table = write_table(policies, "keys.toml", case(None, "acme", "orders", "read", "allow",
                                                    key=partner, name="grant"))
    code, out, _ = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 1 and "this API key is inactive (401 key_inactive)" in out


def test_key_rows_need_a_shared_store(policies, capsys):
    table = write_table(policies, "keys.toml", case(None, "acme", "orders", "read", "allow",
                                                    key="kgk-acme-7QT20DBS4A"))
    code, _, err = keygate(capsys, "policy", "test", "--policies", str(policies), str(table))
    assert code == 2 and "memory://" in err


def test_the_shipped_tables_are_valid_toml_with_headers_for_every_row():
    for path in SHIPPED_TABLES:
        data = tomllib.loads(path.read_text())
        rows = load_table(path, path.name).rows
        assert len(rows) == len(data.get("case", [])) + len(data.get("never", []))
        assert all(row.line is not None and row.name for row in rows), path
