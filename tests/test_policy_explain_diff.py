"""``keygate policy explain`` and ``keygate policy diff``: the lines behind a decision
(agreeing with Casbin on every input), a key's roles read from the store, and a diff
that reports every permission a change gives or takes, per role and account. (The
explain endpoint of the management API: test_policy_explain_api.py.)

Real Casbin with the real model.conf; policy directories in tmp_path; keys on the
private redis-server.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import TEST_SECRET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.management.common import MANAGEMENT_PERMISSIONS
from gateway.policy import Policy
from gateway.policy.delegation import may_assign
from gateway.policy.diff import diff_policies
from gateway.policy.explain import explain, parents_of
from gateway.policy.lint import lint_policy
from gateway.policy.names import fresh_account, named_accounts, stand_in
from gateway.policy.table_runner import Runner
from gateway.policy.tables import Row
from gateway.settings import PROJECT_ROOT

MODEL = PROJECT_ROOT / "model.conf"
POLICIES = PROJECT_ROOT / "policies"

# lines that give the property test something to chew on: patterns, account lines,
# chains of inheritance, denies from an inherited role, a role that only denies
RICH = """\
p, base, *, orders, read, allow
p, base, acme, orders/*, write, allow
p, mid, *, catalog*, read, allow
p, mid, beta, *, delete, deny
g, top, mid
g, mid, base
p, top, acme, orders, *, deny
p, blocker, *, *, write, deny
p, admin, *, *, *, allow
p, admin, beta, orders, read, deny
g, admin2, admin
g, top, admin2
p, helper, acme, role:base, assign, allow
p, helper, *, api-keys, edit, allow
"""


@pytest.fixture(autouse=True)
def no_keygate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("KEYGATE_")]:
        monkeypatch.delenv(name)


def keygate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def copy_policies(target: Path, extra: str = "", name: str = "extra.csv") -> Path:
    shutil.copytree(POLICIES, target)
    if extra:
        (target / name).write_text(extra)
    return target


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture(scope="module")
def rich_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return Policy.load(MODEL, copy_policies(tmp_path_factory.mktemp("rich") / "p", RICH))


# -- explain ---------------------------------------------------------------------------
def test_explain_names_the_deciding_lines_with_the_inheritance_path():
    policy = Policy.load(MODEL, POLICIES)
    examples = POLICIES / "examples.csv"
    reader_line = line_of(examples, "p, orders-reader, *, orders, read")
    deny_line = line_of(examples, "p, suspended-partner")

    e = explain(policy, ["orders-writer"], "acme", "orders", "read")
    assert e.allowed and e.agrees
    (m,) = e.decided_by
    assert (m.location, m.role, m.effect) == (f"examples.csv:{reader_line}", "orders-reader",
                                              "allow")
    assert m.via == ("orders-writer", "orders-reader")

    e = explain(policy, ["orders-writer", "suspended-partner"], "acme", "orders", "read")
    assert not e.allowed
    assert [d.location for d in e.decided_by] == [f"examples.csv:{deny_line}"]
    assert [d.location for d in e.matched] == [f"examples.csv:{reader_line}",
                                               f"examples.csv:{deny_line}"]
    assert "deny line beats every allow" in e.reason

    e = explain(policy, ["catalog-reader"], "acme", "orders", "read")
    assert not e.allowed and e.decided_by == () and "no policy line allows it" in e.reason
    e = explain(policy, [], "acme", "orders", "read")
    assert not e.allowed and "no roles" in e.reason
    e = explain(policy, ["ghost", "orders-reader"], "acme", "orders", "read")
    assert e.allowed and e.unknown_roles == ("ghost",)


def test_explain_takes_the_shortest_inheritance_path(rich_policy):
    # top reaches base through mid (top → mid → base) and admin through admin2
    e = explain(rich_policy, ["top"], "gamma", "orders", "read")
    paths = {m.role: m.via for m in e.matched}
    assert paths["base"] == ("top", "mid", "base")
    assert paths["admin"] == ("top", "admin2", "admin")
    # holding base directly: the one-element path wins
    e = explain(rich_policy, ["top", "base"], "gamma", "orders", "read")
    assert {m.role: m.via for m in e.matched}["base"] == ("base",)


ROLE_CHOICES = ["base", "mid", "top", "blocker", "admin", "admin2", "helper", "ghost",
                "owner", "orders-writer", "orders-reader", "suspended-partner",
                "user-admin-restricted", "catalog-reader", "api-keys-viewer"]
NAMES = ["orders", "orders/1", "orders/", "catalog", "catalogue", "catalog-x", "api-keys",
         "role:base", "role:owner", "policy", "x", stand_in("*"), stand_in("orders/*")]
ACTIONS = ["read", "write", "delete", "assign", "view", "edit", "reload", "purge"]
name_text = st.from_regex(r"[a-z][a-z/:*-]{0,12}", fullmatch=True)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    roles=st.lists(st.sampled_from(ROLE_CHOICES), max_size=4),
    account=st.sampled_from(["acme", "beta", "gamma"]),
    resource=st.one_of(st.sampled_from(NAMES), name_text),
    action=st.one_of(st.sampled_from(ACTIONS), name_text),
)
def test_explain_agrees_with_decide_on_every_input(rich_policy, roles, account, resource, action):
    policy = rich_policy
    e = explain(policy, roles, account, resource, action)
    assert e.allowed == policy.decide(roles, account, resource, action)
    assert e.agrees
    if e.allowed:
        assert e.decided_by and all(m.effect == "allow" for m in e.decided_by)
    elif e.decided_by:
        assert all(m.effect == "deny" for m in e.decided_by)
    held = policy.inherited(roles)
    links = {(g.values[0], g.values[1]) for g in policy.g_lines}
    for m in e.matched:
        assert m.role in held and m.via[0] in roles and m.via[-1] == m.role
        assert all(pair in links for pair in zip(m.via, m.via[1:], strict=False))
        assert m.account in ("*", account)


def test_parents_come_from_the_g_lines(rich_policy):
    assert parents_of(rich_policy)["top"] == ("admin2", "mid")


# -- keygate policy explain ------------------------------------------------------------
def test_cli_explain_prints_the_decision_and_the_lines(capsys):
    code, out, _ = keygate(capsys, "policy", "explain", "--account", "acme", "--resource",
                           "orders", "--action", "read", "--role", "orders-writer")
    assert code == 0
    reader_line = line_of(POLICIES / "examples.csv", "p, orders-reader, *, orders, read")
    assert out.splitlines()[0] == ("ALLOWED  roles orders-writer  account acme  resource "
                                   "orders  action read")
    assert (f"  examples.csv:{reader_line}  p, orders-reader, *, orders, read, allow "
            "(held as orders-writer → orders-reader)") in out.splitlines()
    code, out, _ = keygate(capsys, "policy", "explain", "--account", "acme", "--resource",
                           "orders", "--action", "read", "--role", "orders-writer",
                           "--role", "suspended-partner", "--format", "json")
    data = orjson.loads(out)
    assert code == 0 and data["allowed"] is False
    assert data["roles"] == ["orders-writer", "suspended-partner"]
    assert [d["effect"] for d in data["decidedBy"]] == ["deny"]
    assert set(data["decidedBy"][0]) == {"file", "line", "role", "account", "resource",
                                         "action", "effect", "via"}


def test_cli_explain_of_an_assignment_gives_the_management_apis_answer(capsys):
    code, out, _ = keygate(capsys, "policy", "explain", "--account", "acme", "--resource",
                           "role:api-keys-viewer", "--action", "assign", "--role",
                           "user-admin-restricted", "--json")
    data = orjson.loads(out)
    # no line allows it to Casbin, yet the escalation rule does: it holds view
    assert data["allowed"] is False
    assert data["assignment"]["allowed"] is True
    assert data["assignment"]["how"] == "holds-permissions"
    code, out, _ = keygate(capsys, "policy", "explain", "--account", "acme", "--resource",
                           "role:owner", "--action", "assign", "--role",
                           "user-admin-restricted")
    deny = line_of(POLICIES / "builtin.csv", "role:owner, assign, deny")
    assert "escalation rule): denied: a policy line denies it" in out
    assert f"builtin.csv:{deny}" in out


@pytest.mark.parametrize("argv, message", [
    (["--account", "Acme", "--resource", "orders", "--action", "read", "--role", "x"],
     "not an account name"),
    (["--account", "acme", "--resource", "orders/*", "--action", "read", "--role", "x"],
     "resource must be a name"),
    (["--account", "acme", "--resource", "orders", "--action", "re ad", "--role", "x"],
     "action must be a name"),
    (["--account", "acme", "--resource", "orders", "--action", "read", "--role", "a b"],
     "is not a role name"),
    (["--account", "acme", "--resource", "orders", "--action", "read", "--policies",
      "/nonexistent-dir", "--role", "x"], "is not a directory"),
])
def test_cli_explain_refuses_bad_arguments(capsys, argv, message):
    code, out, err = keygate(capsys, "policy", "explain", *argv)
    assert code == 2 and out == "" and message in err


QUESTION = {"--account": "acme", "--resource": "orders", "--action": "read"}


@pytest.mark.parametrize("option, who", [
    ("--key", ["--key", ""]),
    ("--role", ["--role", ""]),
    ("--role", ["--role", "orders-reader", "--role", ""]),
    ("--account", ["--role", "orders-reader"]),
    ("--resource", ["--role", "orders-reader"]),
    ("--action", ["--role", "orders-reader"]),
])
def test_cli_explain_refuses_an_empty_value(capsys, option, who):
    # an unset shell variable (--key "$KEY") is a mistake, not a question without a key
    question = {**QUESTION, **({option: ""} if option in QUESTION else {})}
    argv = [a for pair in question.items() for a in pair]
    code, out, err = keygate(capsys, "policy", "explain", *argv, *who)
    assert code == 2 and out == ""
    assert f"{option} is empty" in err


def test_cli_explain_needs_roles_or_a_key(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["policy", "explain", "--account", "acme", "--resource", "orders",
              "--action", "read"])
    assert exited.value.code == 2


@pytest.fixture
def store_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not redis_url.startswith("redis://"):
        pytest.skip("--key needs the private redis-server (memory:// is per process)")
    monkeypatch.setenv("KEYGATE_STORE_URL", redis_url)
    monkeypatch.setenv("KEYGATE_SECRET", TEST_SECRET)
    monkeypatch.setenv("KEYGATE_STORE_PREFIX", f"explain-{uuid.uuid4().hex[:12]}:")


def test_cli_explain_reads_a_keys_roles_in_the_account(capsys, store_env):
    def create(account: str, *roles: str) -> str:
        code, out, err = keygate(capsys, "keys", "create", "--account", account, "--label",
                                 "t", *[a for r in roles for a in ("--role", r)], "--json")
        assert code == 0, err
        return orjson.loads(out)["appKey"]

    own, partner, stranger = create("acme", "orders-writer"), create("globex", "owner"), \
        create("initech", "owner")
    assert keygate(capsys, "external-keys", "add", "--account", "acme", partner,
                   "--role", "catalog-reader")[0] == 0
    question = ["--account", "acme", "--resource", "orders", "--action", "write"]
    code, out, _ = keygate(capsys, "policy", "explain", *question, "--key", own, "--json")
    data = orjson.loads(out)
    assert code == 0 and data["allowed"] and data["roles"] == ["orders-writer"]
    assert data["key"] == {"appKey": own, "status": "active", "kind": "generated"}
    # the partner is owner in globex, but holds only catalog-reader in acme
    code, out, _ = keygate(capsys, "policy", "explain", *question, "--key", partner)
    assert code == 0 and out.startswith("DENIED  roles catalog-reader")
    assert f"external key {partner} (active) holds catalog-reader in acme" in out
    for key in (stranger, "kgk-acme-0000000000", "not-a-key"):
        code, out, err = keygate(capsys, "policy", "explain", *question, "--key", key)
        assert code == 1 and out == ""
        assert "holds roles in account acme" in err
    # an inactive key is refused before the policy is asked: denied, saying so and what
    # the policy alone would answer
    assert keygate(capsys, "keys", "deactivate", own)[0] == 0
    code, out, _ = keygate(capsys, "policy", "explain", *question, "--key", own)
    assert code == 0 and out.startswith("DENIED  roles orders-writer"), out
    assert "this API key is inactive (401 key_inactive)" in out
    assert "the policy alone would allow it" in out
    code, out, _ = keygate(capsys, "policy", "explain", *question, "--key", own, "--json")
    data = orjson.loads(out)
    assert data["allowed"] is False and data["key"]["status"] == "inactive"
    assert data["decidedBy"] == [] and data["matched"]


def test_cli_explain_with_a_key_needs_a_shared_store(capsys):
    code, _, err = keygate(capsys, "policy", "explain", "--account", "acme", "--resource",
                           "orders", "--action", "read", "--key", "kgk-acme-0000000000")
    assert code == 2 and "memory://" in err


# -- policy diff -----------------------------------------------------------------------
@pytest.fixture
def sides(tmp_path: Path) -> tuple[Path, Path]:
    return copy_policies(tmp_path / "old"), copy_policies(tmp_path / "new")


def diff_of(old: Path, new: Path) -> Any:
    return diff_policies(Policy.load(MODEL, old), Policy.load(MODEL, new),
                         MANAGEMENT_PERMISSIONS)


def changes(diff: Any) -> dict[str, tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]]:
    return {
        c.role: ({(p.account, p.resource, p.action) for p in c.gained},
                 {(p.account, p.resource, p.action) for p in c.lost})
        for c in diff.changes
    }


def test_a_new_inheritance_line_shows_every_permission_it_brings(sides):
    old, new = sides
    (new / "more.csv").write_text("g, catalog-reader, orders-writer\n")
    found = changes(diff_of(old, new))
    gained, lost = found["catalog-reader"]
    assert {("*", "orders", "read"), ("*", "orders", "write")} <= gained and lost == set()
    assert set(found) == {"catalog-reader"}


def test_a_deny_and_an_account_line_show_per_account(sides):
    old, new = sides
    (new / "more.csv").write_text(
        "p, auditor, acme, orders, read, allow\n"
        "p, orders-writer, beta, orders, write, deny\n"
    )
    diff = diff_of(old, new)
    assert diff.added_roles == ("auditor",)
    found = changes(diff)
    assert found["auditor"] == ({("acme", "orders", "read")}, set())
    assert found["orders-writer"] == (set(), {("beta", "orders", "write")})
    # owner may now hand out auditor (a new role): in acme and in every other account
    assert ("acme", "role:auditor", "assign") in found["owner"][0]
    assert ("*", "role:auditor", "assign") in found["owner"][0]
    # user-admin-restricted holds no orders read in acme: it may not assign auditor there
    # (it may elsewhere, where auditor grants nothing)
    assert found["user-admin-restricted"] == ({("*", "role:auditor", "assign")}, set())


def test_a_removed_role_and_a_lost_assign_line(sides):
    old, new = sides
    examples = new / "examples.csv"
    examples.write_text("\n".join(
        line for line in examples.read_text().splitlines()
        if "catalog-reader" not in line and "role:orders-writer" not in line) + "\n")
    diff = diff_of(old, new)
    assert diff.removed_roles == ("catalog-reader",)
    found = changes(diff)
    assert found["catalog-reader"] == (set(), {("*", "catalog", "read")})
    gained, lost = found["user-admin-restricted"]
    assert gained == set()
    assert lost == {("*", "role:orders-writer", "assign"), ("*", "role:catalog-reader", "assign")}
    removed = next(c for c in diff.changes if c.role == "catalog-reader")
    assert removed.status == "removed"


def test_a_pattern_line_is_shown_as_written(sides):
    old, new = sides
    (new / "more.csv").write_text("p, orders-reader, *, reports/*, read, allow\n")
    found = changes(diff_of(old, new))
    assert ("*", "reports/*", "read") in found["orders-reader"][0]
    assert ("*", "reports/*", "read") in found["orders-writer"][0]  # inherits it


def test_a_change_without_effect_shows_none(sides):
    old, new = sides
    builtin = new / "builtin.csv"
    lines = builtin.read_text().splitlines()
    # reordered, commented, one line repeated: nothing any key can do changes
    builtin.write_text("# reviewed\n" + "\n".join(reversed(lines)) + "\n" + lines[-1] + "\n")
    diff = diff_of(old, new)
    assert not diff.changed and diff.changes == ()


def test_the_diff_misses_no_change_a_brute_force_finds(sides):
    """Every role, every account either side names and the stand-in, every pair the
    policies and the management API name (patterns by their stand-ins): where decide
    differs, the diff lists it. (The diff asks only where an allow line could match.)"""
    old, new = sides
    (new / "more.csv").write_text(RICH + "p, orders-writer, gamma, catalog, read, allow\n"
                                  "p, api-keys-viewer, *, api-keys, view, deny\n")
    examples = new / "examples.csv"
    examples.write_text(examples.read_text().replace("g, orders-writer, orders-reader\n", ""))
    before, after = Policy.load(MODEL, old), Policy.load(MODEL, new)
    diff = diff_policies(before, after, MANAGEMENT_PERMISSIONS)
    found = changes(diff)
    fresh = fresh_account(named_accounts([before, after]))
    accounts = [*named_accounts([before, after]), fresh]
    pairs = {(line.values[2], line.values[3]) for p in (before, after) for line in p.p_lines}
    pairs |= set(MANAGEMENT_PERMISSIONS)
    expected: dict[str, tuple[set, set]] = {}
    for role in sorted(before.roles | after.roles):
        for account in accounts:
            for resource, action in pairs:
                if action == "assign" and resource.startswith("role:"):
                    continue  # the escalation rule, checked in the tests above
                question = (account, stand_in(resource), stand_in(action))
                was, now = before.decide([role], *question), after.decide([role], *question)
                if was != now:
                    shown = ("*" if account == fresh else account, resource, action)
                    expected.setdefault(role, (set(), set()))[0 if now else 1].add(shown)
    assert expected  # the change did change things
    for role, (gained, lost) in expected.items():
        listed_gained, listed_lost = found[role]
        # a named account decided exactly like the stand-in may be folded into "*"
        assert {g for g in gained if g[0] == "*"} <= listed_gained, role
        assert {g for g in lost if g[0] == "*"} <= listed_lost, role
        for account, resource, action in gained - listed_gained:
            assert ("*", resource, action) in listed_gained, (role, account, resource)
        for account, resource, action in lost - listed_lost:
            assert ("*", resource, action) in listed_lost, (role, account, resource)
    for role, (gained, lost) in found.items():
        plain = {p for p in gained | lost if not p[1].startswith("role:")}
        true_gains, true_losses = expected.get(role, (set(), set()))
        assert plain <= true_gains | true_losses, role


def test_cli_diff_text_and_json(sides, capsys):
    old, new = sides
    (new / "more.csv").write_text("p, auditor, acme, orders, read, allow\n"
                                  "p, orders-reader, *, orders, list, allow\n")
    code, out, _ = keygate(capsys, "policy", "diff", str(old), str(new))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"policy diff {old} (version ")
    assert "roles added: auditor" in lines
    auditor = lines.index("role auditor (new role)")
    assert lines[auditor + 1] == "  + acme orders read"
    writer = lines.index("role orders-writer")
    assert lines[writer + 1] == "  + * orders list"
    assert lines[-1].startswith("(account *:")
    code, out, _ = keygate(capsys, "policy", "diff", str(old), str(new), "--format", "json")
    data = orjson.loads(out)
    assert code == 0 and data["changed"] is True and data["addedRoles"] == ["auditor"]
    assert data["old"]["directory"] == str(old) and data["new"]["version"] != \
        data["old"]["version"]
    auditor = next(r for r in data["roles"] if r["role"] == "auditor")
    assert auditor == {"role": "auditor", "status": "added", "lost": [],
                       "gained": [{"account": "acme", "resource": "orders", "action": "read"}]}


def test_cli_diff_of_identical_directories(sides, capsys):
    code, out, _ = keygate(capsys, "policy", "diff", str(sides[0]), str(sides[1]))
    assert code == 0 and out.splitlines()[1] == "no role's permissions change"


def test_cli_diff_that_cannot_run_exits_2_a_side_that_does_not_load_1(sides, capsys):
    """A missing directory is a wrong command (2); files that do not load are what a
    policy command finds, as policy check does (1), naming the side, file and line; in
    JSON, a document saying so on standard output."""
    old, new = sides
    code, _, err = keygate(capsys, "policy", "diff", str(old), str(new / "nope"))
    assert code == 2 and err.startswith("keygate: NEW:") and "is not a directory" in err
    (new / "broken.csv").write_text("p, owner, *, *, *, maybe\n")
    code, out, err = keygate(capsys, "policy", "diff", str(old), str(new))
    assert code == 1 and out == ""
    assert err.startswith("keygate: NEW (") and "broken.csv, line 1" in err
    code, out, err = keygate(capsys, "policy", "diff", str(old), str(new), "--format", "json")
    error = orjson.loads(out)["error"]
    assert code == 1 and (error["file"], error["line"], error["exitStatus"]) == (
        "broken.csv", 1, 1)
    assert error["message"] == err.removeprefix("keygate: ").rstrip("\n")
    for command in (["policy", "test", "--policies", str(new)],
                    ["policy", "explain", "--policies", str(new), "--account", "acme",
                     "--resource", "orders", "--action", "read", "--role", "owner"]):
        code, out, err = keygate(capsys, *command, "--format", "json")
        assert code == 1 and orjson.loads(out)["error"]["file"] == "broken.csv", err


# == the tools agree with enforcement ================================================
def _policy_dir(root: Path, name: str, text: str) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "p.csv").write_text(text)
    return directory


def _policy(root: Path, name: str, text: str) -> Policy:
    return Policy.load(MODEL, _policy_dir(root, name, text))


# -- the stand-in of a pattern: no narrower pattern matches it ------------------------
# A stand-in made of a word ("orders/any-other") was matched by the narrower patterns
# "orders/a*", "orders/an*"…: a deny on one of them hid every other name of the broad
# pattern from diff and from never rows.

def test_diff_reports_write_gained_when_deny_narrowed(tmp_path: Path) -> None:
    old = _policy(tmp_path, "old", "p, x, *, orders/*, write, allow\n"
                                   "p, x, *, orders/*, write, deny\n")
    new = _policy(tmp_path, "new", "p, x, *, orders/*, write, allow\n"
                                   "p, x, *, orders/a*, write, deny\n")
    # enforcement: the change lets x write orders/b (and every orders/<not a...>)
    assert not old.decide(["x"], "acme", "orders/b", "write")
    assert new.decide(["x"], "acme", "orders/b", "write")
    diff = diff_policies(old, new)
    gained = [(p.account, p.resource, p.action)
              for change in diff.changes if change.role == "x" for p in change.gained]
    # observed: "no role's permissions change" (diff.changed is False)
    assert diff.changed, "policy diff reports no change although x gains write on orders/b"
    assert ("*", "orders/*", "write") in gained


def test_never_row_fails_when_role_writes_other_orders(tmp_path: Path) -> None:
    policy = _policy(tmp_path, "p", "p, x, *, orders/*, write, allow\n"
                                    "p, x, *, orders/a*, write, deny\n")
    assert policy.decide(["x"], "acme", "orders/b", "write")  # the property is violated
    row = Row("never", "t.toml", 1, None, "x never writes orders", ("x",), None, None,
              "orders/*", "write", None)
    result = Runner(policy).run_never(row)
    # observed: passed, 0 violations (only stand-ins under "orders/a" were asked)
    assert not result.passed, "never row passes although x may write orders/b"


# -- inheritance at any depth, in requests as in the tools -------------------------------
# Casbin's default role manager stops following g lines ten levels down; the tools
# (inherited, explain, lint, delegation) follow them to any depth. Requests now do too.

CHAIN = "".join(f"g, r{i}, r{i + 1}\n" for i in range(10))  # r0 -> ... -> r10
DEEP = "p, r0, *, orders, read, allow\np, r10, *, orders, *, deny\n" + CHAIN


def test_deep_inherited_deny_is_enforced(tmp_path: Path) -> None:
    policy = _policy(tmp_path, "p", DEEP)
    assert "r10" in policy.inherited(["r0"])
    # README: every p line of a role the key holds or inherits through g lines takes
    # part, and deny always wins. observed: allowed (the deny of r10 is ignored)
    assert not policy.decide(["r0"], "acme", "orders", "read")


def test_explain_agrees_with_decision_on_deep_inheritance(tmp_path: Path) -> None:
    policy = _policy(tmp_path, "p", DEEP)
    e = explain(policy, ["r0"], "acme", "orders", "read")
    # explain.py: "With the shipped model.conf it always does [agree]". observed:
    # allowed, agrees False, "allowed by the model ... which does not decide as
    # keygate's model does", decided_by empty
    assert e.agrees, e.reason


def test_lint_shadowed_allow_really_never_applies(tmp_path: Path) -> None:
    directory = _policy_dir(tmp_path, "p", DEEP)
    report = lint_policy(MODEL, directory)
    shadowed = [f.line for f in report.findings if f.code == "shadowed-allow"]
    assert shadowed == [1]  # lint: "this allow never applies"
    # but enforcement allows through exactly that line: removing it changes the decision
    with_line = Policy.load(MODEL, directory)
    without = _policy(tmp_path, "q", DEEP.split("\n", 1)[1])
    assert with_line.decide(["r0"], "acme", "orders", "read") == without.decide(
        ["r0"], "acme", "orders", "read"
    ), "lint calls p.csv:1 shadowed, yet removing it turns an allow into a deny"


# -- a diff over many roles asks about the roles the change touches ---------------------
# Who may assign whom grows with the square of the roles, and every answer is a Casbin
# decision reading every line: 200 roles took minutes to diff, thousands hours.
MANY = 150


def casbin_decisions(work: Any) -> tuple[Any, int]:
    """``work()``'s result and how many decisions Casbin made meanwhile (counted by
    the profiler, not by replacing anything)."""
    profiler = cProfile.Profile()
    result = profiler.runcall(work)
    calls = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return result, sum(c[1] for (_, _, name), c in calls.items() if name == "enforce_ex")


def test_a_diff_over_many_roles_asks_only_about_the_roles_it_touches(tmp_path):
    common = ["p, owner, *, *, *, allow", "p, admin, *, api-keys, edit, allow"]
    common += [f"p, r{i}, *, res{i}, read, allow" for i in range(1, MANY)]
    common += [f"g, r{i + 1}, r{i}" for i in range(0, MANY - 1, 2)]
    old = _policy(tmp_path, "old", "\n".join([*common, "p, r0, *, res0, read, allow"]))
    new = _policy(tmp_path, "new", "\n".join([*common, "p, r0, *, res0, *, allow",
                                              "p, extra, *, x, y, allow"]))
    diff, decisions = casbin_decisions(lambda: diff_policies(old, new, MANAGEMENT_PERMISSIONS))
    assert decisions < 4 * MANY, decisions  # 48,809 when every pair was asked
    assert diff.added_roles == ("extra",)
    found = changes(diff)
    # r0's new line reaches r1, which inherits it; owner may now assign extra
    assert ("*", "res0", "*") in found["r0"][0] and ("*", "res0", "*") in found["r1"][0]
    assert ("*", "role:extra", "assign") in found["owner"][0]
    assert "admin" not in found and "r2" not in found and "r3" not in found
    # the whole answer is the one asking every question gives: each role, each side
    for change in diff.changes:
        for permission in change.gained:
            account = "acme" if permission.account == "*" else permission.account
            resource = stand_in(permission.resource)
            action = stand_in(permission.action)
            if permission.action != "assign":
                assert new.decide([change.role], account, resource, action)
                assert not old.decide([change.role], account, resource, action)


def test_a_role_that_hands_out_a_changed_role_is_asked_about_though_untouched(tmp_path):
    """boss may assign x only while it may assign every role x hands out (y): y's line
    changing changes boss's verdict on x, though neither boss's lines nor x's changed.
    The diff answers as asking boss every question on both sides does."""
    head = ["p, boss, *, *, *, allow", "p, boss, *, orders, write, deny",
            "p, x, *, role:y, assign, allow"]
    old = _policy(tmp_path, "old", "\n".join([*head, "p, y, *, orders, read, allow"]))
    new = _policy(tmp_path, "new", "\n".join([*head, "p, y, *, orders, write, allow"]))
    lost = changes(diff_policies(old, new, MANAGEMENT_PERMISSIONS))["boss"][1]
    assert may_assign(old, ["boss"], "acme", "x").allowed
    assert not may_assign(new, ["boss"], "acme", "x").allowed
    assert ("*", "role:x", "assign") in lost and ("*", "role:y", "assign") in lost


def test_cli_diff_into_a_pipe_its_reader_closed_ends_quietly(tmp_path):
    """``keygate policy diff OLD NEW | head -1``: the rest is not wanted; no traceback."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "none.csv").write_text("# nothing yet\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "gateway", "policy", "diff", str(empty), str(POLICIES)],
            env={k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")},
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in ran.stderr and "BrokenPipe" not in ran.stderr, ran.stderr
    assert ran.returncode == 1  # cut short while printing: not a success to report
