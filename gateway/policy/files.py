"""Authorization decisions: the only module that imports casbin.

A decision is a pure function of ``(roles, account, resource, action)`` and of the
policy files, identified by :attr:`Policy.version`. All of a key's roles are put to
Casbin *together* (``r.sub`` is the role set, see ``model.conf``) so that the policy
effect "some allow and no deny" is evaluated over every line any of the roles matches:
a deny on one role beats an allow on another, which evaluating role by role would miss.

The policy files are parsed and checked here, line by line, before Casbin sees them, so
that a mistake is reported with its file, line and reason and keygate refuses to start
rather than silently authorizing less (or more) than the security team wrote.
A loaded :class:`Policy` is never mutated: reloading builds a new one and swaps the
reference, so a request never sees half a policy.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import casbin

from ..credentials import is_valid_account
from ..errors import ConfigError

ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9_.:/*-]{0,127}$")
EFFECTS = ("allow", "deny")


@dataclass(frozen=True)
class PolicyLine:
    file: str
    line: int
    values: tuple[str, ...]


def _problem(file: str, line: int, reason: str) -> ConfigError:
    return ConfigError(f"policy {file}, line {line}: {reason}")


def parse_policy_files(policies_dir: Path) -> tuple[list[PolicyLine], list[PolicyLine]]:
    """Read every ``*.csv`` in the directory into checked ``p`` and ``g`` lines."""
    if not policies_dir.is_dir():
        raise ConfigError(f"setting policies_dir: {policies_dir} is not a directory")
    files = sorted(policies_dir.glob("*.csv"))
    if not files:
        raise ConfigError(f"setting policies_dir: no *.csv policy files in {policies_dir}")
    p_lines: list[PolicyLine] = []
    g_lines: list[PolicyLine] = []
    for path in files:
        name = path.name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"policy {name}: cannot read it ({exc})") from None
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            values = [v.strip() for v in next(csv.reader([raw], skipinitialspace=True))]
            kind, fields = values[0], tuple(values[1:])
            if kind == "p":
                _check_p(name, number, fields)
                p_lines.append(PolicyLine(name, number, fields))
            elif kind == "g":
                _check_g(name, number, fields)
                g_lines.append(PolicyLine(name, number, fields))
            else:
                raise _problem(name, number, f"a line starts with p or g, not {kind!r}")
    _check_no_cycles(g_lines)
    return p_lines, g_lines


def _check_p(file: str, line: int, fields: tuple[str, ...]) -> None:
    if len(fields) != 5:
        raise _problem(
            file, line,
            f"a p line has 5 values (role, account, resource, action, allow|deny), "
            f"found {len(fields)}",
        )
    role, account, resource, action, effect = fields
    if not ROLE_RE.fullmatch(role):
        raise _problem(file, line, f"invalid role name {role!r}")
    if account != "*" and not is_valid_account(account):
        raise _problem(file, line, f"account must be '*' or an account name, not {account!r}")
    for what, value in (("resource", resource), ("action", action)):
        if not NAME_RE.fullmatch(value):
            raise _problem(file, line, f"invalid {what} {value!r}")
    if effect not in EFFECTS:
        raise _problem(file, line, f"effect must be allow or deny, not {effect!r}")


def _check_g(file: str, line: int, fields: tuple[str, ...]) -> None:
    if len(fields) != 2:
        raise _problem(
            file, line, f"a g line has 2 values (role, inherited role), found {len(fields)}"
        )
    for role in fields:
        if not ROLE_RE.fullmatch(role):
            raise _problem(file, line, f"invalid role name {role!r}")
    if fields[0] == fields[1]:
        raise _problem(file, line, f"role {fields[0]!r} cannot inherit itself")


def _check_no_cycles(g_lines: Sequence[PolicyLine]) -> None:
    parents: dict[str, list[PolicyLine]] = {}
    for g in g_lines:
        parents.setdefault(g.values[0], []).append(g)

    def visit(role: str, path: tuple[str, ...]) -> None:
        for g in parents.get(role, ()):
            parent = g.values[1]
            if parent in path:
                chain = " -> ".join((*path, parent))
                raise _problem(g.file, g.line, f"role inheritance cycle {chain}")
            visit(parent, (*path, parent))

    for role in parents:
        visit(role, (role,))


class Policy:
    """One loaded, immutable policy. Build with :meth:`load`."""

    def __init__(self, model_path: Path, p_lines: list[PolicyLine], g_lines: list[PolicyLine]):
        try:
            enforcer = casbin.Enforcer(str(model_path))
        except Exception as exc:  # casbin raises bare Exceptions for model errors
            raise ConfigError(f"setting model_path: {model_path}: {exc}") from None
        role_manager = enforcer.get_role_manager()

        def has_role(roles: Iterable[str], wanted: str) -> bool:
            return any(r == wanted or role_manager.has_link(r, wanted) for r in roles)

        enforcer.add_function("hasRole", has_role)
        p_rules = list(dict.fromkeys(p.values for p in p_lines))
        g_rules = list(dict.fromkeys(g.values for g in g_lines))
        if p_rules:
            enforcer.add_policies([list(v) for v in p_rules])
        if g_rules:
            enforcer.add_grouping_policies([list(v) for v in g_rules])
        enforcer.build_role_links()
        self._enforcer = enforcer
        self.p_lines: tuple[PolicyLine, ...] = tuple(p_lines)
        self.g_lines: tuple[PolicyLine, ...] = tuple(g_lines)
        self._parents: dict[str, set[str]] = {}
        for rule in g_rules:
            self._parents.setdefault(rule[0], set()).add(rule[1])
        self.lines = len(p_rules) + len(g_rules)
        self.roles: frozenset[str] = frozenset(
            [v[0] for v in p_rules] + [r for v in g_rules for r in v]
        )
        digest = hashlib.sha256(model_path.read_bytes())
        for rule in (*p_rules, *g_rules):
            digest.update(b"\x1f".join(x.encode() for x in rule) + b"\x1e")
        self.version = digest.hexdigest()[:16]

    @classmethod
    def load(cls, model_path: Path, policies_dir: Path) -> Policy:
        if not Path(model_path).is_file():
            raise ConfigError(f"setting model_path: {model_path} is not a file")
        p_lines, g_lines = parse_policy_files(Path(policies_dir))
        return cls(Path(model_path), p_lines, g_lines)

    def decide(self, roles: Sequence[str], account: str, resource: str, action: str) -> bool:
        """Allowed when some role allows and no role denies (resource, action) in account."""
        if not roles:
            return False
        return bool(self._enforcer.enforce(tuple(roles), account, resource, action))

    def explain(
        self, roles: Sequence[str], account: str, resource: str, action: str
    ) -> tuple[bool, list[list[str]]]:
        """The decision and the policy line that decided it, for operators debugging."""
        allowed, rule = self._enforcer.enforce_ex(tuple(roles), account, resource, action)
        # pycasbin explains with the one rule that decided, or nothing
        return bool(allowed and roles), [list(rule)] if rule else []

    def unknown_roles(self, roles: Iterable[str]) -> list[str]:
        return [r for r in roles if r not in self.roles]

    def inherited(self, roles: Iterable[str]) -> frozenset[str]:
        """The roles and every role they inherit (``g, child, parent``), transitively:
        the roles whose ``p`` lines apply to a key holding ``roles``."""
        seen: set[str] = set()
        todo = list(roles)
        while todo:
            role = todo.pop()
            if role not in seen:
                seen.add(role)
                todo.extend(self._parents.get(role, ()))
        return frozenset(seen)

    def lines_of(
        self, roles: Iterable[str], account: str, effect: str
    ) -> list[PolicyLine]:
        """The ``p`` lines with ``effect`` that apply to ``roles`` (inheritance included)
        in ``account``: lines for every account (``*``) and lines for this one."""
        held = self.inherited(roles)
        return [
            line for line in self.p_lines
            if line.values[0] in held
            and line.values[1] in ("*", account)
            and line.values[4] == effect
        ]

    def decide_ex(
        self, roles: Sequence[str], account: str, resource: str, action: str
    ) -> tuple[bool, bool]:
        """``(allowed, denied)``: allowed as :meth:`decide`; denied when a deny line
        matches, whatever allows."""
        if not roles:
            return False, False
        allowed, rule = self._enforcer.enforce_ex(tuple(roles), account, resource, action)
        denied = not allowed and bool(rule) and rule[-1] == "deny"
        return bool(allowed), denied


def pattern_matches(name: str, pattern: str) -> bool:
    """Casbin's ``keyMatch``, as the model's matcher applies it to resources and actions."""
    return bool(casbin.util.key_match(name, pattern))


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some name matches both Casbin ``keyMatch`` patterns ``a`` and ``b``.

    ``keyMatch`` reads a pattern as a literal, or as a prefix when it holds ``*`` (the
    text before the first ``*``; what follows it is ignored). Two prefixes overlap when
    one extends the other; a literal and a prefix when the literal starts with it.
    """
    a_star, b_star = a.find("*"), b.find("*")
    if a_star < 0 and b_star < 0:
        return a == b
    if a_star < 0:
        return a.startswith(b[:b_star])
    if b_star < 0:
        return b.startswith(a[:a_star])
    pa, pb = a[:a_star], b[:b_star]
    return pa.startswith(pb) or pb.startswith(pa)
