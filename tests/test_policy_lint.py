"""``keygate policy check``: every check on small policy directories (the real
model.conf, the real Casbin), the shadow analysis cross-checked against Casbin's own
decisions, the command in-process, and ``--store`` on the private Redis.

Hostile inputs (huge files, deep chains, weird bytes): tests/test_policy_lint_abuse.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Ran

from gateway.errors import ConfigError
from gateway.management.common import MANAGEMENT_PERMISSIONS
from gateway.policy import Policy
from gateway.policy.files import parse_policy_files, pattern_covers
from gateway.policy.lint import LintReport, RouteUse, lint_policy
from gateway.routes import parse_routes
from gateway.settings import load_settings
from gateway.store import CLI_ACTOR

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL = PROJECT_ROOT / "model.conf"
POLICIES = PROJECT_ROOT / "policies"
DEPLOY_CONFIG = PROJECT_ROOT / "deploy" / "keygate.toml"
ORDERS_ROUTE = RouteUse("orders", "orders", ("read", "write"))


def policy_dir(tmp_path: Path, *files: tuple[str, str]) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files:
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def lint(tmp_path: Path, text: str, routes: tuple[RouteUse, ...] = (),
         **kwargs: Any) -> LintReport:
    return lint_policy(MODEL, policy_dir(tmp_path, ("team.csv", text)), routes,
                       MANAGEMENT_PERMISSIONS, **kwargs)


def found(report: LintReport, code: str | None = None) -> list[tuple[str, str]]:
    """(location, code) of every finding, or of those with ``code``."""
    return [(f.location, f.code) for f in report.findings if code in (None, f.code)]


def only(report: LintReport, code: str) -> Any:
    matching = [f for f in report.findings if f.code == code]
    assert len(matching) == 1, report.findings
    return matching[0]


# -- the shipped policies ------------------------------------------------------------
def test_the_shipped_policies_lint_clean_with_the_example_routes():
    settings = load_settings(str(DEPLOY_CONFIG), env={})
    routes = [RouteUse.of(r) for r in parse_routes(settings.routes).routes]
    report = lint_policy(MODEL, POLICIES, routes, MANAGEMENT_PERMISSIONS)
    assert report.findings == ()
    loaded = Policy.load(MODEL, POLICIES)
    assert (report.version, report.lines) == (loaded.version, loaded.lines)
    assert set(report.roles) == loaded.roles


def test_route_uses_follow_methods_overrides_and_the_defaults():
    table = parse_routes([
        {"name": "plain", "upstream": "http://127.0.0.1:9", "account": "acme",
         "resource": "orders", "actions": {"DELETE": "admin"}},
        {"name": "reads", "upstream": "http://127.0.0.1:9", "account": "acme",
         "path_prefix": "/r", "resource": "reports", "methods": ["GET", "HEAD"]},
        {"name": "one", "upstream": "http://127.0.0.1:9", "account": "acme",
         "path_prefix": "/x", "resource": "x", "action": "call"},
    ])
    uses = {use.name: use for use in map(RouteUse.of, table.routes)}
    assert uses["plain"].actions == ("admin", "read", "write")
    assert uses["reads"].actions == ("read",)
    assert uses["one"] == RouteUse("one", "x", ("call",))


# -- syntax, effects: every problem, the loader's first unchanged -------------------
def test_every_syntax_problem_is_reported_not_only_the_first(tmp_path):
    directory = policy_dir(
        tmp_path,
        ("a.csv", "# fine\np, r, *, orders, read, allow\np, r, *, orders, read\n"
                  "x, r, q\np, bad role, *, orders, read, allow\n"),
        ("b.csv", "g, a, b, c\np, r, Acme, orders, read, allow\np, r, *, orders, read, maybe\n"),
    )
    report = lint_policy(MODEL, directory)
    assert found(report) == [
        ("a.csv:3", "syntax"), ("a.csv:4", "syntax"), ("a.csv:5", "syntax"),
        ("b.csv:1", "syntax"), ("b.csv:2", "syntax"), ("b.csv:3", "bad-effect"),
    ]
    assert all(f.severity == "error" for f in report.findings)
    assert report.version is None and report.errors == 6
    # the loader stops at the first, with the message it always had
    with pytest.raises(ConfigError) as info:
        Policy.load(MODEL, directory)
    assert str(info.value) == (
        "policy a.csv, line 3: a p line has 5 values (role, account, resource, action, "
        "allow|deny), found 4"
    )
    assert only(report, "bad-effect").message == "effect must be allow or deny, not 'maybe'"


def test_a_comment_after_the_values_is_refused_with_the_reason(tmp_path):
    report = lint(tmp_path, "p, r, *, orders, read, allow  # readers\n")
    assert "comment goes on a line of its own" in only(report, "bad-effect").message


def test_valid_lines_give_no_syntax_findings(tmp_path):
    report = lint(tmp_path, "p, r, *, orders/*, re*, allow\np, r, acme, a:b.c_d, x, deny\n"
                            "g, s, r\n\n   # indented comment\n")
    assert found(report, "syntax") == [] and report.version is not None


# -- inheritance cycles -------------------------------------------------------------
def test_every_cycle_is_reported_once_with_its_chain(tmp_path):
    report = lint(tmp_path, "p, a, *, orders, read, allow\n"
                            "g, a, b\ng, b, c\ng, c, a\n"        # a -> b -> c -> a
                            "g, x, y\ng, y, x\n"                 # x -> y -> x
                            "g, s, s\n"                          # itself
                            "g, d, a\n")                         # inherits a cycle: no cycle
    cycles = [(f.location, f.message) for f in report.findings
              if f.code == "inheritance-cycle"]
    assert cycles == [
        ("team.csv:4", "role inheritance cycle a -> b -> c -> a"),
        ("team.csv:6", "role inheritance cycle x -> y -> x"),
        ("team.csv:7", "role 's' cannot inherit itself"),
    ]
    assert report.version is None


def test_no_cycle_in_a_diamond(tmp_path):
    report = lint(tmp_path, "p, base, *, orders, read, allow\n"
                            "g, top, left\ng, top, right\ng, left, base\ng, right, base\n")
    assert found(report, "inheritance-cycle") == []


# -- duplicates ---------------------------------------------------------------------
def test_duplicates_are_reported_at_the_later_line_naming_the_first(tmp_path):
    directory = policy_dir(
        tmp_path,
        ("a.csv", "p, r, *, orders, read, allow\ng, w, r\np, r,*,orders,read,allow\n"),
        ("b.csv", "p, r, *, orders, read, allow\ng, w, r\np, r, *, orders, write, allow\n"),
    )
    report = lint_policy(MODEL, directory)
    duplicates = [(f.location, f.related) for f in report.findings
                  if f.code == "duplicate-line"]
    assert duplicates == [("a.csv:3", "a.csv:1"), ("b.csv:1", "a.csv:1"),
                          ("b.csv:2", "a.csv:2")]
    assert report.lines == 3  # as the loaded policy counts them
    assert report.version == Policy.load(MODEL, directory).version


# -- shadowed and redundant allows --------------------------------------------------
@pytest.mark.parametrize(("lines", "shadowed_by"), [
    ("p, r, *, orders, read, allow\np, r, *, orders, read, deny\n", "team.csv:2"),
    ("p, r, *, orders/eu, read, allow\np, r, *, orders/*, *, deny\n", "team.csv:2"),
    ("p, r, acme, orders, read, allow\np, r, *, *, *, deny\n", "team.csv:2"),
    ("p, r, acme, orders, read, allow\np, r, acme, ord*, re*, deny\n", "team.csv:2"),
    # a deny of a role r inherits binds every key holding r
    ("p, parent, *, orders, *, deny\ng, r, parent\np, r, *, orders, read, allow\n",
     "team.csv:1"),
    ("p, top, *, orders, *, deny\ng, mid, top\ng, r, mid\np, r, *, orders/*, read, allow\n",
     None),  # "orders" does not match "orders/…"
    ("p, top, *, orders*, *, deny\ng, mid, top\ng, r, mid\np, r, *, orders/*, read, allow\n",
     "team.csv:1"),
    # not shadowed: the deny is narrower, in another account, or of a role r does not hold
    ("p, r, *, orders/*, read, allow\np, r, *, orders/eu, read, deny\n", None),
    ("p, r, *, orders, *, allow\np, r, *, orders, read, deny\n", None),
    ("p, r, *, orders, read, allow\np, r, acme, orders, read, deny\n", None),
    ("p, r, beta, orders, read, allow\np, r, acme, orders, read, deny\n", None),
    ("p, child, *, orders, *, deny\ng, child, r\np, r, *, orders, read, allow\n", None),
])
def test_an_allow_a_deny_always_defeats_is_shadowed(tmp_path, lines, shadowed_by):
    report = lint(tmp_path, lines)
    shadowed = [f.related for f in report.findings if f.code == "shadowed-allow"]
    assert shadowed == ([shadowed_by] if shadowed_by else [])
    if shadowed_by:
        finding = only(report, "shadowed-allow")
        assert finding.severity == "warning" and shadowed_by in finding.message


@pytest.mark.parametrize(("lines", "redundant"), [
    ("p, r, *, orders/*, read, allow\np, r, acme, orders/eu, read, allow\n",
     [("team.csv:2", "team.csv:1")]),
    ("p, r, acme, orders/eu, read, allow\np, r, *, orders/*, *, allow\n",
     [("team.csv:1", "team.csv:2")]),
    ("p, base, *, *, read, allow\ng, r, base\np, r, *, orders, read, allow\n",
     [("team.csv:3", "team.csv:1")]),
    # same meaning, other spelling: the later one is the redundant one
    ("p, r, *, orders*, read, allow\np, r, *, orders*x, read, allow\n",
     [("team.csv:2", "team.csv:1")]),
    # not redundant: narrower, another account, a role that inherits r, another action
    ("p, r, *, orders/eu, read, allow\np, r, *, orders/*, read, allow\n",
     [("team.csv:1", "team.csv:2")]),
    ("p, r, acme, orders, read, allow\np, r, beta, orders, read, allow\n", []),
    ("p, child, *, *, *, allow\ng, child, r\np, r, *, orders, read, allow\n", []),
    ("p, r, *, orders, read, allow\np, r, *, orders, write, allow\n", []),
])
def test_an_allow_another_already_grants_is_redundant(tmp_path, lines, redundant):
    report = lint(tmp_path, lines)
    assert [(f.location, f.related) for f in report.findings
            if f.code == "redundant-allow"] == redundant


def test_a_shadowed_allow_is_not_also_called_redundant(tmp_path):
    report = lint(tmp_path, "p, r, *, *, *, allow\np, r, *, orders, read, allow\n"
                            "p, r, *, orders, *, deny\n")
    assert found(report, "shadowed-allow") == [("team.csv:2", "shadowed-allow")]
    assert found(report, "redundant-allow") == []


def test_pattern_covers_agrees_with_keymatch():
    """Exhaustive over a small alphabet: ``general`` covers ``specific`` exactly when
    every name ``specific`` matches (tried up to a length past both) matches too."""
    from gateway.policy import pattern_matches

    alphabet = "ab*"
    patterns = ["".join(p) for n in range(1, 4) for p in itertools.product(alphabet, repeat=n)]
    names = ["".join(p) for n in range(0, 6) for p in itertools.product("ab", repeat=n)]
    for general, specific in itertools.product(patterns, repeat=2):
        matched = [n for n in names if pattern_matches(n, specific)]
        expected = all(pattern_matches(n, general) for n in matched)
        assert pattern_covers(general, specific) == expected, (general, specific)


VOCABULARY = {
    "account": ["*", "acme"],
    "resource": ["orders", "orders/eu", "orders/*", "ord*", "*", "catalog"],
    "action": ["read", "write", "*", "re*"],
}


def witness(pattern: str) -> str:
    """A name ``pattern`` matches that no other pattern of the vocabulary matches unless
    it covers ``pattern``: its literal, or its prefix and a word no pattern holds."""
    star = pattern.find("*")
    return pattern if star < 0 else pattern[:star] + "zq9"


def test_the_shadow_analysis_agrees_with_casbin_on_random_policies(tmp_path):
    """For random small policies: an allow is reported shadowed exactly when Casbin
    denies its role at the allow's witness request, and (not shadowed) redundant
    exactly when the policy without that line still allows it there."""
    rng = random.Random(14)
    roles = ["a", "b", "c", "d"]
    for round_ in range(120):
        g = sorted({(x, y) for x, y in itertools.combinations(roles, 2) if rng.random() < 0.3})
        p = sorted({
            (rng.choice(roles), rng.choice(VOCABULARY["account"]),
             rng.choice(VOCABULARY["resource"]), rng.choice(VOCABULARY["action"]),
             rng.choice(["allow", "allow", "deny"]))
            for _ in range(rng.randint(2, 9))
        })
        text = "".join(f"g, {x}, {y}\n" for x, y in g) + "".join(
            f"p, {', '.join(v)}\n" for v in p)
        directory = policy_dir(tmp_path / str(round_), ("team.csv", text))
        report = lint_policy(MODEL, directory)
        shadowed = {f.line for f in report.findings if f.code == "shadowed-allow"}
        redundant = {f.line for f in report.findings if f.code == "redundant-allow"}
        p_lines, g_lines = parse_policy_files(directory)
        policy = Policy(MODEL, p_lines, g_lines)
        for line in p_lines:
            role, account, resource, action, effect = line.values
            if effect != "allow":
                continue
            ask = ("zeta" if account == "*" else account, witness(resource), witness(action))
            _, denied = policy.decide_ex([role], *ask)
            assert (line.line in shadowed) == denied, (text, line)
            if not denied:
                others = [x for x in p_lines if x is not line]
                allowed = Policy(MODEL, others, g_lines).decide([role], *ask)
                assert (line.line in redundant) == allowed, (text, line)


# -- resources and actions nothing uses ---------------------------------------------
def test_resources_and_actions_no_route_and_no_management_permission_uses(tmp_path):
    report = lint(tmp_path, (
        "p, r, *, orders, read, allow\n"          # the route
        "p, r, *, ordres, read, allow\n"          # misspelt: unused resource
        "p, r, *, orders, delete, allow\n"        # the route never asks delete
        "p, r, *, ord*, *, allow\n"               # patterns use what they match
        "p, r, *, api-keys, view, allow\n"        # management permissions
        "p, r, *, api-keys, frobnicate, allow\n"
        "p, r, *, policy, reload, allow\n"
        "p, r, *, role:r, assign, allow\n"        # assigning a defined role
        "p, r, *, role:ghost, assign, allow\n"    # no such role
        "p, r, *, role:*, assign, allow\n"
        "p, r, *, *, *, deny\n"                   # deny lines too (this one matches all)
        "p, r, *, catalog, read, deny\n"
    ), routes=(ORDERS_ROUTE,))
    assert found(report, "unused-resource") + found(report, "unused-action") == [
        ("team.csv:2", "unused-resource"), ("team.csv:9", "unused-resource"),
        ("team.csv:12", "unused-resource"),
        ("team.csv:3", "unused-action"), ("team.csv:6", "unused-action"),
    ]
    assert "names no role" in next(f.message for f in report.findings
                                   if f.line == 9 and f.code == "unused-resource")


def test_without_routes_only_the_route_side_of_the_usage_check_is_skipped(tmp_path):
    """A policy repository checked without its deployment's config: a business resource
    may be a route's, so it is not judged; keygate's own resources still are."""
    report = lint(tmp_path, (
        "p, r, *, ordres, read, allow\n"          # may be a route's: not judged
        "p, r, *, api-keys, delete, allow\n"      # no such management permission
        "p, r, *, policy, reloadd, allow\n"       # misspelt
        "p, r, *, role:ghost, assign, allow\n"    # no such role
        "p, r, *, role:r, asign, allow\n"         # misspelt action
        "p, r, *, api-keys, view, allow\n"        # fine
        "p, r, *, role:r, assign, allow\n"        # fine
        "p, r, *, api-keys, *, allow\n"           # fine: matches the permissions
    ))
    assert found(report, "unused-resource") + found(report, "unused-action") == [
        ("team.csv:4", "unused-resource"),
        ("team.csv:2", "unused-action"), ("team.csv:3", "unused-action"),
        ("team.csv:5", "unused-action"),
    ]
    assert report.as_json()["skipped"] == [
        "unused-resource:routes", "unused-action:routes", "undefined-role-held",
    ]


# -- roles that do nothing ----------------------------------------------------------
def test_roles_that_are_only_inherited_or_hold_nothing(tmp_path):
    report = lint(tmp_path, (
        "p, orders-reader, *, orders, read, allow\n"
        "g, orders-writer, orders-reader\n"       # fine: inherits permissions
        "g, auditor, orders-raeder\n"             # misspelt parent
        "p, banned, *, orders, *, deny\n"         # deny-only roles do something
        "g, alias, alias-parent\n"                # neither has a line
    ))
    assert found(report, "role-never-granted") == [
        ("team.csv:3", "role-never-granted"), ("team.csv:5", "role-never-granted"),
    ]
    assert "'orders-raeder'" in report.findings[0].message
    assert found(report, "role-without-permissions") == [
        ("team.csv:3", "role-without-permissions"), ("team.csv:5", "role-without-permissions"),
    ]
    assert {f.message.split("'")[1] for f in report.findings
            if f.code == "role-without-permissions"} == {"auditor", "alias"}


def test_a_role_on_a_cycle_still_carries_what_the_cycle_holds(tmp_path):
    report = lint(tmp_path, "g, one, two\ng, two, one\np, two, *, orders, read, allow\n"
                            "g, three, one\n")
    assert found(report, "role-without-permissions") == []
    assert found(report, "inheritance-cycle") == [("team.csv:2", "inheritance-cycle")]


# -- the model ----------------------------------------------------------------------
def test_a_model_casbin_cannot_load_or_keygate_cannot_ask(tmp_path):
    directory = policy_dir(tmp_path, ("team.csv", "p, r, *, orders, read, allow\n"))
    broken = tmp_path / "broken.conf"
    broken.write_text("[request_definition]\nr = sub\n")
    report = lint_policy(broken, directory)
    assert found(report) == [("broken.conf", "model")] and report.version is None
    other = tmp_path / "other.conf"
    other.write_text(MODEL.read_text().replace(
        "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))",
        "e = some(where (p.eft == allow))",
    ).replace("r = sub, dom, obj, act", "r = sub, obj, act").replace(
        "p.dom == r.dom", "true"))
    report = lint_policy(other, directory)
    assert found(report) == [("other.conf", "model"), ("other.conf", "model-differs"),
                             ("other.conf", "model-differs")]
    with pytest.raises(ConfigError, match="model_path"):
        lint_policy(tmp_path / "missing.conf", directory)


@pytest.mark.parametrize("matcher", [
    "hasRole(r.sub, p.sub) && (",
    "hasRole(r.sub, p.sub) && nosuch(r.obj)",
    "hasRole(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.foo == 1",
    "keyMatch(r.obj, p.obj) || undefined_name",
])
def test_a_matcher_casbin_cannot_evaluate_is_an_error(tmp_path, matcher):
    """Casbin loads such a model and fails only when it first decides: every request
    would be a 500. The check evaluates it, as a request would."""
    directory = policy_dir(tmp_path, ("team.csv", "p, r, *, orders, read, allow\n"))
    model = tmp_path / "model.conf"
    model.write_text("\n".join(f"m = {matcher}" if line.startswith("m = ") else line
                               for line in MODEL.read_text().splitlines()) + "\n")
    report = lint_policy(model, directory)
    assert ("model.conf", "model") in found(report) and report.version is None
    [error] = [f for f in report.findings if f.code == "model"]
    assert "cannot evaluate its matcher" in error.message
    with pytest.raises(ConfigError, match="cannot evaluate its matcher"):
        Policy.load(model, directory)


# -- the command --------------------------------------------------------------------
@pytest.fixture
def no_keygate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KEYGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def cli(cli: Callable[..., Ran], no_keygate_env: None) -> Callable[..., Ran]:
    """conftest's in-process command line, with no KEYGATE_* setting from outside."""
    return cli


def config_with_routes(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "keygate.toml"
    config.write_text(extra + '[[routes]]\nname = "orders"\npath_prefix = "/orders"\n'
                      'upstream = "http://127.0.0.1:9"\naccount = "acme"\n'
                      'resource = "orders"\n')
    return config


def test_check_prints_one_line_per_finding_and_a_summary(cli, tmp_path):
    directory = policy_dir(tmp_path, ("team.csv", (
        "p, r, *, orders, read, allow\np, r, *, orders, read, allow\np, r, *, ordres, read, allow\n"
    )))
    ran = cli("--config", str(config_with_routes(tmp_path)), "policy", "check", str(directory))
    assert ran.code == 0, ran.err  # warnings alone
    assert ran.out.splitlines() == [
        "team.csv:2: warning: duplicate-line: repeats team.csv:1",
        "team.csv:3: warning: unused-resource: no route and no management permission uses "
        "resource 'ordres'",
        f"policy OK: 2 lines, version {Policy.load(MODEL, directory).version}",
        "roles: r",
        "routes OK: 1 (orders)",
        "0 errors, 2 warnings",
    ]


def test_check_exits_1_on_errors_and_says_the_files_would_be_refused(cli, tmp_path):
    directory = policy_dir(tmp_path, ("team.csv", "p, r, *, orders, read\ng, a, a\n"))
    ran = cli("policy", "check", str(directory))
    assert ran.code == 1
    lines = ran.out.splitlines()
    assert lines[0].startswith("team.csv:1: error: syntax: a p line has 5 values")
    assert lines[1] == "team.csv:2: error: inheritance-cycle: role 'a' cannot inherit itself"
    assert "keygate would refuse these files" in lines[2]
    assert lines[-1] == "2 errors, 0 warnings"


def test_check_json_is_one_document_for_ci(cli, tmp_path):
    directory = policy_dir(tmp_path, ("team.csv", "p, r, *, orders, read, maybe\n"
                                                  "p, w, *, orders, write, allow\n"))
    ran = cli("--config", str(config_with_routes(tmp_path)), "policy", "check",
              "--format", "json", str(directory))
    assert ran.code == 1
    document = json.loads(ran.out)
    assert document == {
        "findings": [{"file": "team.csv", "line": 1, "severity": "error",
                      "code": "bad-effect", "scope": "policy", "related": None,
                      "message": "effect must be allow or deny, not 'maybe'"}],
        "errors": 1, "warnings": 0,
        "policy": {"version": None, "lines": 1, "roles": ["w"]},
        "routes": ["orders"], "skipped": ["undefined-role-held"],
    }
    assert json.loads(cli("policy", "check", "--json", str(POLICIES)).out)["errors"] == 0


def test_a_directory_of_empty_files_is_an_error_not_a_deny_all_policy(cli, tmp_path):
    # a truncated checkout or an empty volume: keygate would load it and refuse every
    # request and management call, the owner's included
    directory = policy_dir(tmp_path, ("builtin.csv", ""), ("examples.csv", "# soon\n\n"))
    ran = cli("policy", "check", str(directory))
    assert ran.code == 1, ran.out
    lines = ran.out.splitlines()
    assert lines[:3] == [
        "builtin.csv: warning: empty-file: the file holds no rule (it is empty, or holds "
        "only comments and blank lines)",
        "examples.csv: warning: empty-file: the file holds no rule (it is empty, or holds "
        "only comments and blank lines)",
        "(policy): error: no-rules: the policy files hold no p line: keygate would refuse "
        "every request and every management call, the owner's included (to lock "
        "everything down on purpose, write a deny line such as 'p, owner, *, *, *, "
        "deny')",
    ]
    assert lines[3].startswith("policy loads (see the errors above): 0 lines, version ")
    assert lines[-1] == "1 error, 2 warnings"
    report = json.loads(cli("policy", "check", "--json", str(directory)).out)
    assert [(f["file"], f["code"], f["severity"]) for f in report["findings"]] == [
        ("builtin.csv", "empty-file", "warning"), ("examples.csv", "empty-file", "warning"),
        (None, "no-rules", "error"),
    ]
    # g lines alone grant nothing either
    (directory / "builtin.csv").write_text("g, a, b\n")
    assert found(lint_policy(MODEL, directory)) == [
        ("builtin.csv:1", "role-never-granted"), ("builtin.csv:1", "role-without-permissions"),
        ("examples.csv", "empty-file"), ("(policy)", "no-rules"),
    ]


def test_one_empty_file_beside_rules_is_a_warning(tmp_path):
    directory = policy_dir(tmp_path, ("a.csv", "p, r, *, orders, read, allow\n"),
                           ("b.csv", ""))
    report = lint_policy(MODEL, directory)
    assert found(report) == [("b.csv", "empty-file")]
    assert report.errors == 0 and report.version is not None
    # a file whose every line is refused is not "empty": its errors say why
    (directory / "b.csv").write_text("p, r, *, orders\n")
    assert found(lint_policy(MODEL, directory)) == [("b.csv:1", "syntax")]


def test_check_cannot_run_exits_2(cli, tmp_path):
    ran = cli("policy", "check", str(tmp_path / "missing"))
    assert (ran.code, ran.out) == (2, "") and "is not a directory" in ran.err
    empty = tmp_path / "empty"
    empty.mkdir()
    ran = cli("policy", "check", str(empty))
    assert (ran.code, ran.out) == (2, "") and "no *.csv" in ran.err
    ran = cli("policy", "check", "--format", "yaml")
    assert ran.code == 2
    memory = tmp_path / "memory.toml"
    memory.write_text('store_url = "memory://"\n')
    ran = cli("--config", str(memory), "policy", "check", "--store")
    assert (ran.code, ran.out) == (2, "") and "memory://" in ran.err


# -- roles held in the store --------------------------------------------------------
async def test_store_roles_held_that_the_files_no_longer_define(
    gateway, make_key, cli, tmp_path, monkeypatch
):
    if not gateway.settings.store_url.startswith("redis://"):
        pytest.skip("--store needs the private redis-server (memory:// is per process)")
    await make_key("acme", ["orders-writer"])
    await make_key("acme", ["orders-writer", "catalog-reader"])
    await make_key("beta", ["catalog-reader"])
    partner = await make_key("beta", ["owner"])
    await gateway.store.add_grant("acme", partner.app_key, "partner", ["orders-writer"],
                                  CLI_ACTOR)
    revoked = await make_key("gamma", ["orders-writer"])
    await gateway.store.delete_key("gamma", revoked.app_key, actor=CLI_ACTOR)
    monkeypatch.setenv("KEYGATE_STORE_URL", gateway.settings.store_url)
    monkeypatch.setenv("KEYGATE_STORE_PREFIX", gateway.settings.store_prefix)
    # the new files drop orders-writer and catalog-reader
    text = "".join(line + "\n" for line in (POLICIES / "builtin.csv").read_text().splitlines())
    directory = policy_dir(tmp_path, ("builtin.csv", text))

    ran = await asyncio.to_thread(cli, "policy", "check", "--store", "--json", str(directory))
    assert ran.code == 1, ran.err
    held = [(f["scope"], f["message"]) for f in json.loads(ran.out)["findings"]
            if f["code"] == "undefined-role-held"]
    assert held == [
        ("store", "account 'acme': 1 key or grant holds role 'catalog-reader', which the "
                  "policy files do not define (it grants them nothing)"),
        ("store", "account 'acme': 3 keys or grants hold role 'orders-writer', which the "
                  "policy files do not define (it grants them nothing)"),
        ("store", "account 'beta': 1 key or grant holds role 'catalog-reader', which the "
                  "policy files do not define (it grants them nothing)"),
    ]
    # roles the new files define that nothing holds: owner is held (beta), policy-admin
    # and the rest are not
    never = sorted((f["file"], f["message"].split("'")[1]) for f in json.loads(ran.out)[
        "findings"] if f["code"] == "role-never-held")
    assert [role for _, role in never] == [
        "api-keys-viewer", "policy-admin", "user-admin-restricted"]
    # the shipped files define them all; those held by nothing are only warned of, and
    # a role held through one that inherits it is held (orders-reader, by orders-writer)
    ran = await asyncio.to_thread(cli, "policy", "check", "--store", "--json", str(POLICIES))
    assert ran.code == 0, ran.out
    report = json.loads(ran.out)
    assert report["errors"] == 0
    assert sorted(f["message"].split("'")[1] for f in report["findings"]) == [
        "api-keys-viewer", "policy-admin", "suspended-partner", "user-admin-restricted"]
    assert {f["code"] for f in report["findings"]} == {"role-never-held"}
    ran = await asyncio.to_thread(cli, "policy", "check", "--store", str(POLICIES))
    assert ran.out.splitlines()[-2:] == ["store: roles held by keys and grants checked",
                                         "0 errors, 4 warnings"]


async def test_store_that_does_not_answer_cannot_run(cli, closed_port, monkeypatch):
    monkeypatch.setenv("KEYGATE_STORE_URL", f"redis://127.0.0.1:{closed_port}/0")
    ran = await asyncio.to_thread(cli, "policy", "check", "--store", str(POLICIES))
    assert (ran.code, ran.out) == (2, "")
    assert "does not answer" in ran.err and str(closed_port) not in ran.err

