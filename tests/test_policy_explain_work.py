"""The work an explanation takes is bounded: judging ``(role:R, assign)`` reads each line
a bounded number of times (it once put every line of R to Casbin, which scans every
line of the policy: quadratic, seconds on the event loop for a role of a thousand
lines), what is still costly in the worst case is refused past a fixed limit, and the
judgement from the indexed lines is the one Casbin's decisions give.

Work is counted in steps (``WorkMeter.spent``), never timed. Real Casbin with the real
model.conf; policy directories in tmp_path. (The endpoint's answers:
test_policy_explain_api.py.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_explain_diff import RICH as EXPLAIN_RICH

from gateway.cli import main
from gateway.policy import Policy, PolicyLine, patterns_overlap
from gateway.policy.delegation import CallerJudge, assignment, escaped_denies, judge_assign
from gateway.policy.explain import explain, matching_lines
from gateway.policy.reading import CallerReading, LineOverlaps, TooMuchWork, WorkMeter
from gateway.settings import PROJECT_ROOT

MODEL = PROJECT_ROOT / "model.conf"
POLICIES = PROJECT_ROOT / "policies"
# what a linear judgement may spend per line of the policy (a Casbin scan costs 11 per
# line, and an explanation of an assignment makes two; each line of R a few look-ups)
STEPS_PER_LINE = 40


@pytest.fixture(autouse=True)
def no_keygate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("KEYGATE_")]:
        monkeypatch.delenv(name)


def large_policy(directory: Path, lines: int, deny_lines: int = 0) -> Path:
    """The shipped policies plus role ``big`` granting ``lines`` distinct permissions,
    and role ``denier`` with ``deny_lines`` deny lines on other resources."""
    shutil.copytree(POLICIES, directory)
    text = [f"p, big, *, res{n}, act{n % 7}, allow\n" for n in range(lines)]
    text += [f"p, denier, *, other{n}, act{n % 7}, deny\n" for n in range(deny_lines)]
    (directory / "large.csv").write_text("".join(text))
    return directory


def explained(policy: Policy, roles: list[str], resource: str, action: str,
              meter: WorkMeter) -> tuple[object, object]:
    e = explain(policy, roles, "acme", resource, action, meter)
    return e, assignment(policy, e.roles, "acme", resource, action, meter)


def test_judging_a_large_role_takes_work_linear_in_the_policy(tmp_path):
    spent = {}
    for lines in (750, 1500):
        policy = Policy.load(MODEL, large_policy(tmp_path / str(lines), lines))
        meter = WorkMeter()
        _, verdict = explained(policy, ["owner"], "role:big", "assign", meter)
        assert verdict.allowed and verdict.how == "holds-permissions"
        assert len(verdict.lines) == lines  # every line of big, each held
        assert meter.spent <= STEPS_PER_LINE * len(policy.p_lines), meter.spent
        spent[lines] = meter.spent
    # twice the lines, about twice the work (quadratic work would be four times)
    assert spent[1500] < 2.5 * spent[750], spent


def test_a_key_holding_the_large_role_itself_is_judged_in_linear_work(tmp_path):
    # the caller's own lines are as many as the role's: each question is a look-up in
    # their index, not a scan of them
    policy = Policy.load(MODEL, large_policy(tmp_path / "p", 1500))
    meter = WorkMeter()
    _, verdict = explained(policy, ["big", "user-admin-restricted"], "role:big", "assign",
                           meter)
    assert verdict.allowed and verdict.how == "holds-permissions"
    assert meter.spent <= STEPS_PER_LINE * len(policy.p_lines), meter.spent


def test_a_caller_with_many_deny_lines_is_judged_in_linear_work(tmp_path):
    # each line of big against each deny line of the caller was quadratic (2,250,000
    # comparisons, refused past the limit); the caller's deny lines are now indexed by
    # their patterns, and each line of big is a look-up in them
    policy = Policy.load(MODEL, large_policy(tmp_path / "p", 1500, deny_lines=1500))
    meter = WorkMeter(1_000_000)
    _, verdict = explained(policy, ["owner", "denier"], "role:big", "assign", meter)
    assert verdict.allowed and verdict.how == "holds-permissions"
    assert len(verdict.lines) == 1500
    assert meter.spent <= STEPS_PER_LINE * len(policy.p_lines), meter.spent


def test_cli_explain_answers_many_deny_lines_under_the_apis_limit(tmp_path, capsys,
                                                                  monkeypatch):
    import gateway.cli_policy_tools as tools

    directory = large_policy(tmp_path / "p", 1500, deny_lines=1500)
    monkeypatch.setattr(tools, "MAX_CLI_EXPLAIN_WORK", 1_000_000)
    assert main(["policy", "explain", "--account", "acme", "--resource", "role:big",
                 "--action", "assign", "--policies", str(directory), "--role", "owner",
                 "--role", "denier", "--json"]) == 0
    assert '"how":"holds-permissions"' in capsys.readouterr().out.replace(" ", "")


# -- loops the meter once missed -------------------------------------------------------
def handing_out_chain(directory: Path, roles: int = 150, others: int = 1500) -> Path:
    """Roles r0000… each hand out the next and every one of ``others`` cheap roles g…;
    the last grants what the caller ``boss`` is denied. Judging ``role:r0000`` settles
    which roles may be handed out together: one pass over them all per role of the
    chain (150 x 150 x 1,500 edges looked at), while what the rule asks of each role
    is cheap."""
    shutil.copytree(POLICIES, directory)
    text = ["p, boss, *, *, *, allow\n", "p, boss, *, vault, read, deny\n"]
    for n in range(roles):
        text.append(f"p, r{n:04d}, *, role:g*, assign, allow\n")
        text.append(f"p, r{n:04d}, *, role:r{n + 1:04d}, assign, allow\n" if n < roles - 1
                    else f"p, r{n:04d}, *, vault, read, allow\n")
    text += [f"p, g{n:05d}, *, thing, read, allow\n" for n in range(others)]
    (directory / "chain.csv").write_text("".join(text))
    return directory


def deep_assigner(directory: Path, depth: int = 2000, others: int = 100) -> Path:
    """``boss`` inherits a chain of ``depth`` roles and may assign every role g…;
    ``handout`` hands out the ``others`` roles g…. Judging ``role:handout`` asks about
    each g role, each allowed by boss's assign line, whose inheritance chain (through
    the 2,000 roles) was walked again for each."""
    shutil.copytree(POLICIES, directory)
    text = ["p, boss, *, *, *, allow\n", "p, boss, *, role:g*, assign, allow\n",
            "p, handout, *, role:g*, assign, allow\n", "g, boss, c00000\n"]
    text += [f"g, c{n:05d}, c{n + 1:05d}\n" for n in range(depth)]
    text.append(f"p, c{depth:05d}, *, other, read, allow\n")
    text += [f"p, g{n:05d}, *, thing, read, allow\n" for n in range(others)]
    (directory / "deep.csv").write_text("".join(text))
    return directory


@pytest.mark.parametrize("shape, role", [(handing_out_chain, "r0000"),
                                         (deep_assigner, "handout")])
def test_crafted_roles_are_refused_past_the_limit_not_judged_at_length(tmp_path, shape,
                                                                        role):
    policy = Policy.load(MODEL, shape(tmp_path / "p"))
    meter = WorkMeter(1_000_000)
    with pytest.raises(TooMuchWork):
        explained(policy, ["boss"], f"role:{role}", "assign", meter)
    assert meter.spent <= 1_000_000 + 4 * len(policy.p_lines) + 2 * len(policy.g_lines)


def test_cli_explain_refuses_crafted_roles(tmp_path, capsys, monkeypatch):
    import gateway.cli_policy_tools as tools

    monkeypatch.setattr(tools, "MAX_CLI_EXPLAIN_WORK", 1_000_000)
    for shape, role in ((handing_out_chain, "r0000"), (deep_assigner, "handout")):
        directory = shape(tmp_path / role)
        assert main(["policy", "explain", "--account", "acme", "--resource",
                     f"role:{role}", "--action", "assign", "--policies", str(directory),
                     "--role", "boss"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "more than 1000000 steps" in err and "Traceback" not in err


def test_a_deep_caller_is_walked_once_for_every_role_it_may_assign(tmp_path):
    # the walk through its 2,000 roles (2,000,000 steps) is made by the explanation,
    # by the question of edit on api-keys and once by the judgement, not once more
    # for each of the 100 roles boss's assign line allows
    policy = Policy.load(MODEL, deep_assigner(tmp_path / "p"))
    meter = WorkMeter(20_000_000)
    _, verdict = explained(policy, ["boss"], "role:handout", "assign", meter)
    assert verdict.allowed and verdict.how == "holds-permissions"
    assert meter.spent < 10_000_000, meter.spent


# -- the judgement from indexed lines is Casbin's --------------------------------------
# the explain tests' rich lines, and patterns that overlap a deny partly
RICH = EXPLAIN_RICH + """\
p, helper, *, orders/*, write, allow
p, partial, *, orders*, *, allow
p, partial, *, ord*, re*, deny
"""
ROLES = ["base", "mid", "top", "blocker", "admin", "admin2", "helper", "partial", "owner",
         "orders-writer", "orders-reader", "suspended-partner", "user-admin-restricted",
         "catalog-reader", "api-keys-viewer", "ghost"]


@pytest.fixture(scope="module")
def rich_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    directory = tmp_path_factory.mktemp("rich") / "p"
    shutil.copytree(POLICIES, directory)
    (directory / "rich.csv").write_text(RICH)
    return Policy.load(MODEL, directory)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caller=st.lists(st.sampled_from(ROLES), min_size=1, max_size=3, unique=True),
       account=st.sampled_from(["acme", "beta", "gamma"]),
       role=st.sampled_from(sorted(set(ROLES) - {"ghost"})),
       by_assign_line=st.booleans())
def test_the_judgement_from_indexed_lines_is_the_one_casbin_gives(
    rich_policy, caller, account, role, by_assign_line
):
    indexed = judge_assign(rich_policy, caller, account, role, by_assign_line=by_assign_line)
    asked = judge_assign(rich_policy, caller, account, role, by_assign_line=by_assign_line,
                         decide=rich_policy.decide)
    assert indexed == asked


NAME = st.from_regex(r"[a-z][a-z/:*-]{0,10}", fullmatch=True)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caller=st.lists(st.sampled_from(ROLES), min_size=1, max_size=3, unique=True),
       account=st.sampled_from(["acme", "beta", "gamma"]),
       resource=st.one_of(st.sampled_from(["orders", "orders/1", "ord", "catalog", "*",
                                           "orders/*", "role:base"]), NAME),
       action=st.one_of(st.sampled_from(["read", "write", "re", "*", "delete"]), NAME))
def test_a_reading_decides_as_casbin(rich_policy, caller, account, resource, action):
    reading = CallerReading(rich_policy, caller, account, WorkMeter())
    assert reading.decide(caller, account, resource, action) == \
        rich_policy.decide(caller, account, resource, action)


# -- indexed overlaps are the brute-force ones -----------------------------------------
# keyMatch patterns over a small alphabet, so that literals, prefixes and their
# overlaps (equal, one extending the other, "*" alone, text after the "*") all occur
PATTERN = st.from_regex(r"[ab]{0,3}(\*[ab]?)?", fullmatch=True)
SMALL_ROLES = ["r0", "r1", "r2", "r3"]


@st.composite
def small_policies(draw: st.DrawFn) -> Policy:
    """A few roles with random allow and deny lines (accounts * or acme or beta) and
    random inheritance without cycles (a role inherits only later ones)."""
    lines = draw(st.lists(st.tuples(
        st.sampled_from(SMALL_ROLES), st.sampled_from(["*", "acme", "beta"]), PATTERN,
        PATTERN, st.sampled_from(["allow", "deny"])), min_size=1, max_size=14, unique=True))
    inherits = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             max_size=3, unique=True))
    p_lines = [PolicyLine("random.csv", n + 1, values) for n, values in enumerate(lines)]
    g_lines = [PolicyLine("random.csv", len(lines) + n + 1, (f"r{a}", f"r{b}"))
               for n, (a, b) in enumerate(inherits) if a < b]
    return Policy(MODEL, p_lines, g_lines)


def brute_touching(lines: list[PolicyLine], resource: str, action: str) -> bool:
    return any(patterns_overlap(resource, line.values[2])
               and patterns_overlap(action, line.values[3]) for line in lines)


@settings(max_examples=500, deadline=None)
@given(patterns=st.lists(st.tuples(PATTERN, PATTERN), max_size=12),
       resource=PATTERN, action=PATTERN)
def test_indexed_overlaps_are_the_brute_force_ones(patterns, resource, action):
    lines = [PolicyLine("x.csv", n, ("r", "*", r, a, "deny"))
             for n, (r, a) in enumerate(patterns)]
    found = LineOverlaps(lines).touching(resource, action, WorkMeter())
    assert (found is not None) == brute_touching(lines, resource, action)
    if found is not None:
        assert brute_touching([found], resource, action)


@settings(max_examples=300, deadline=None)
@given(policy=small_policies(),
       caller=st.lists(st.sampled_from(SMALL_ROLES), min_size=1, max_size=2, unique=True),
       role=st.sampled_from(SMALL_ROLES), account=st.sampled_from(["acme", "beta"]))
def test_the_indexed_rule_on_a_roles_lines_is_the_brute_force_reading(
    policy, caller, role, account
):
    # the rule on the role alone (no assign line), each of its allow lines read against
    # every deny line of the caller one by one, and each permission put to Casbin
    verdict = CallerJudge(policy, caller, account, None, WorkMeter()).base(role, False)
    if any(m.effect == "deny" for m in matching_lines(policy, caller, account,
                                                     f"role:{role}", "assign")):
        assert verdict.how == "denied"
        return
    denies = policy.lines_of(caller, account, "deny")
    expected = "holds-permissions"
    for line in policy.lines_of([role], account, "allow"):
        granted, action = line.values[2], line.values[3]
        if brute_touching(denies, granted, action) or not policy.decide(
                caller, account, granted, action):
            expected = "lacks-permission"
            assert [m.line for m in verdict.lines] == [line]
            break
    assert verdict.how == expected


@settings(max_examples=300, deadline=None)
@given(policy=small_policies(),
       held=st.lists(st.sampled_from(SMALL_ROLES), min_size=1, max_size=3, unique=True),
       new_roles=st.lists(st.sampled_from(SMALL_ROLES), max_size=3, unique=True),
       account=st.sampled_from(["acme", "beta"]))
def test_the_indexed_escaped_denies_are_the_brute_force_ones(policy, held, new_roles,
                                                             account):
    kept = set(policy.lines_of(new_roles, account, "deny"))
    allows = policy.lines_of(new_roles, account, "allow")
    expected = [deny for deny in policy.lines_of(held, account, "deny")
                if deny not in kept and brute_touching(allows, deny.values[2],
                                                       deny.values[3])]
    assert escaped_denies(policy, held, new_roles, account) == expected
