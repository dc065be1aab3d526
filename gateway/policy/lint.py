"""``keygate policy check``: what is wrong, or suspicious, in model.conf, the policy
files and the routes that use them — every finding at once, with ``file:line``.

Security teams change the policies through review; a reviewer reads lines, not their
effect. The linter reports what the lines do together that no single line shows.
Each finding has a severity, a stable code (CI filters on it) and a message that quotes
at most a bounded excerpt of any value (a hostile file cannot flood a report).

Errors — keygate would refuse the files, the deployment is already inconsistent, or
the files cannot be what was meant:

``unreadable``         a file that cannot be read as UTF-8 text (at the line of the first
                       bad byte)
``syntax``             a line the loader refuses (values, names, accounts)
``bad-effect``         an effect other than ``allow`` or ``deny``
``inheritance-cycle``  ``g`` lines through which a role inherits itself, each cycle at
                       the line that closes it, with its chain
``model``              a model.conf Casbin cannot load, or whose request or policy
                       definition is not the one keygate puts questions to
``no-rules``           no file holds a ``p`` line: keygate would load the policy and
                       refuse every request and every management call, the owner's
                       included (even ``POST /policy/reload`` needs a permission the
                       policies define). That is a truncated checkout, an empty volume
                       or a failed template, never a policy anyone meant to serve; a
                       deliberate lock-down is a deny line (``p, owner, *, *, *, deny``)
``undefined-role-held`` (with a store) keys or grants of an account hold a role the
                       files do not define: their holders lose what the role gave, and a
                       reload that removed it should not have happened unnoticed

Warnings — the files load, but something in them does nothing, or not what it seems:

``empty-file``         a policy file that holds no rule (empty, or only comments and
                       blank lines): a file emptied by mistake loads silently, its rules
                       simply gone
``duplicate-line``     a line that repeats an earlier one (at the later, naming the first)
``shadowed-allow``     an allow that a deny always defeats (see :mod:`.analysis`)
``redundant-allow``    an allow that another allow of the role, or of a role it
                       inherits, already grants
``unused-resource``    a line whose resource no route, no management permission and no
                       role (``role:NAME``) uses: a misspelling, or a rule for an API
                       keygate does not front
``unused-action``      the resource is used, but never with an action the line matches
``role-never-granted`` a role named only as the inherited side of ``g`` lines and in no
                       ``p`` line: nothing defines it, so inheriting it gives nothing
                       (typically a misspelt role in a ``g`` line)
``role-without-permissions`` a role that inherits roles but neither it nor they have a
                       ``p`` line: holding it allows and denies nothing
``role-never-held``    (with a store) a role the files define (it has ``p`` lines) that
                       no key or grant holds in any account, neither itself nor through a
                       role that inherits it: defined, never granted — a leftover, or a
                       role whose keys were never made
``model-differs``      a model whose effect or matcher is not keygate's: the analyses
                       above assume deny beats allow and keyMatch patterns
``analysis-limit``     the shadow/redundancy analysis stopped at its work budget
                       (hostile-sized input); the count of allow lines left unchecked

Resources and actions count as used by a route (its resource, with every action its
methods map to), by a management permission (``api-keys`` view, edit, renew-token,
edit-settings; ``policy`` reload), and by ``role:NAME``/``assign`` for every role the
files name. A pattern on a line counts as used when it matches a used name. With no
routes configured at all, only the route side is skipped (a policy repository checked
without its deployment's config would warn on every business resource) and the report
says so: lines on keygate's own resources (``api-keys``, ``policy``, ``role:NAME``) are
still checked, so ``api-keys, delete`` or ``role:ghost, assign`` is reported either way.

Everything here is pure: it reads the files it is given, and takes the routes, the
management permissions and the roles held in the store as arguments.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .analysis import LOOKUP_BUDGET, RoleGraph, covered_allows, meaning
from .delegation import ASSIGN, ROLE_RESOURCE_PREFIX
from .files import (
    PolicyFiles,
    PolicyLine,
    excerpt,
    inheritance_cycles,
    policy_version,
    read_model,
    read_policy_files,
)
from .reading import DENY_OVERRIDES, MATCHER, POLICY_TOKENS, REQUEST_TOKENS

ERROR, WARNING = "error", "warning"
READ_METHODS = ("GET", "HEAD", "OPTIONS")



@dataclass(frozen=True)
class Finding:
    """One thing the linter reports. ``file`` is a policy file's name relative to the
    policy directory (or the model's file name), None for what is about no file:
    ``scope`` then says what (``store``, ``policy``). ``related`` is the other line
    involved (``file:line``): the first of a repeated line, the deny that shadows an
    allow."""

    severity: str
    code: str
    message: str
    file: str | None = None
    line: int | None = None
    related: str | None = None
    scope: str = "policy"

    @property
    def location(self) -> str:
        if self.file is None:
            return f"({self.scope})"
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "severity": self.severity,
                "code": self.code, "message": self.message, "related": self.related,
                "scope": self.scope}


@dataclass(frozen=True)
class RouteUse:
    """What one route asks the policies: its resource, with every action its methods
    can map to."""

    name: str
    resource: str
    actions: tuple[str, ...]

    @classmethod
    def of(cls, route: Any) -> RouteUse:
        """From a :class:`gateway.routes.Route`: without a method list, every method,
        so its overrides, and its one action or both defaults (GET → read, POST →
        write)."""
        if route.methods is not None:
            actions = {route.action_for(method) for method in route.methods}
        else:
            actions = set(route.actions.values())
            actions.update([route.action] if route.action else ["read", "write"])
        return cls(route.name, route.resource, tuple(sorted(actions)))


@dataclass(frozen=True)
class LintReport:
    findings: tuple[Finding, ...]
    version: str | None  # the version keygate would serve; None when it would refuse
    lines: int  # distinct rules, as the loaded policy counts them
    roles: tuple[str, ...]
    routes: tuple[str, ...]
    routes_checked: bool  # False: no routes, only keygate's own resources checked for use
    store_checked: bool

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == WARNING)

    def as_json(self) -> dict[str, Any]:
        # without routes, the use of resources only keygate's own permissions name
        skipped = [] if self.routes_checked else ["unused-resource:routes",
                                                  "unused-action:routes"]
        if not self.store_checked:
            skipped.append("undefined-role-held")
        return {
            "findings": [f.as_json() for f in self.findings],
            "errors": self.errors,
            "warnings": self.warnings,
            "policy": {"version": self.version, "lines": self.lines,
                       "roles": list(self.roles)},
            "routes": list(self.routes),
            "skipped": skipped,
        }


def lint_policy(
    model_path: Path,
    policies_dir: Path,
    routes: Sequence[RouteUse] = (),
    management: Iterable[tuple[str, str]] = (),
    held: Mapping[str, Mapping[str, int]] | None = None,
    budget: int = LOOKUP_BUDGET,
) -> LintReport:
    """Every finding over the model, the directory's policy files and the routes;
    ``held`` (account → role → keys and grants holding it, from the store) adds the
    roles held but not defined. A missing model or policy directory, or one without
    policy files, is a ConfigError: there is nothing to check."""
    if not Path(model_path).is_file():
        raise ConfigError(f"setting model_path: {model_path} is not a file")
    read = read_policy_files(Path(policies_dir))
    findings = [Finding(ERROR, p.code, p.reason, _name(p.file), p.line) for p in read.problems]
    model_findings = check_model(Path(model_path))
    findings += model_findings
    findings += _empty(read)

    p_lines, dup_p = _distinct(read.p_lines)
    g_lines, dup_g = _distinct(read.g_lines)
    findings += [
        Finding(WARNING, "duplicate-line", f"repeats {_where(first)}", _name(line.file),
                line.line, _where(first))
        for line, first in sorted((*dup_p, *dup_g), key=lambda d: _order(d[0]))
    ]
    cycles = inheritance_cycles(g_lines)
    findings += [Finding(ERROR, c.code, c.reason, _name(c.file), c.line) for c in cycles]

    graph = RoleGraph.build(p_lines, g_lines)
    findings += _covered(p_lines, graph, budget)
    findings += _roles(p_lines, g_lines, graph)
    findings += _unused(p_lines, routes, management, graph.roles)
    if held is not None:
        findings += _undefined_held(held, set(graph.roles))
        findings += _never_held(held, p_lines, graph)

    loads = not read.problems and not cycles and not any(
        f.severity == ERROR for f in model_findings
    )
    version = None
    if loads:
        version = policy_version(
            Path(model_path).read_bytes(), [p.values for p in p_lines],
            [g.values for g in g_lines],
        )
    findings.sort(key=_finding_order)
    return LintReport(
        tuple(findings), version, len(p_lines) + len(g_lines), tuple(sorted(graph.roles)),
        tuple(route.name for route in routes), bool(routes), held is not None,
    )


def check_model(model_path: Path) -> list[Finding]:
    """The model loads, asks what keygate asks — (roles, account, resource, action),
    with five values a policy line — and decides as the analyses assume."""
    name = _name(model_path.name)
    try:
        model = read_model(model_path, evaluate=False)
    except ConfigError as exc:
        return [Finding(ERROR, "model", str(exc), name)]
    found = []
    if model.request != REQUEST_TOKENS or model.policy != POLICY_TOKENS:
        found.append(Finding(
            ERROR, "model",
            "keygate asks r = sub, dom, obj, act and reads p = sub, dom, obj, act, eft; "
            "this model defines others", name,
        ))
    else:  # questions as keygate puts them: the matcher and effect must evaluate
        try:
            read_model(model_path)
        except ConfigError as exc:
            found.append(Finding(ERROR, "model", str(exc), name))
    if " ".join(model.effect.split()) != DENY_OVERRIDES:
        found.append(Finding(WARNING, "model-differs",
                             "the policy effect is not keygate's (some allow and no deny): "
                             "the shadowed and redundant line checks assume it", name))
    if " ".join(model.matcher.split()) != MATCHER:
        found.append(Finding(WARNING, "model-differs",
                             "the matcher is not keygate's (hasRole, '*' or the account, "
                             "keyMatch): the line checks assume it", name))
    return found


def _empty(read: PolicyFiles) -> list[Finding]:
    """Files without a rule, and a policy without any ``p`` line (see the codes)."""
    with_rules = {line.file for line in (*read.p_lines, *read.g_lines)}
    with_rules.update(problem.file for problem in read.problems)
    found = [
        Finding(WARNING, "empty-file",
                "the file holds no rule (it is empty, or holds only comments and blank "
                "lines)", _name(name))
        for name in read.files if name not in with_rules
    ]
    if not read.p_lines and not read.problems:
        found.append(Finding(
            ERROR, "no-rules",
            "the policy files hold no p line: keygate would refuse every request and "
            "every management call, the owner's included (to lock everything down on "
            "purpose, write a deny line such as 'p, owner, *, *, *, deny')",
        ))
    return found


def _covered(p_lines: Sequence[PolicyLine], graph: RoleGraph, budget: int) -> list[Finding]:
    coverage = covered_allows(p_lines, graph, budget)
    found = []
    for item in coverage.covered:
        role = item.line.values[0]
        other = item.by.values[0]
        through = "" if other == role else f" (role {other!r}, which {role!r} inherits)"
        if item.shadowed:
            message = (f"this allow never applies: the deny at {_where(item.by)}{through} "
                       f"covers it for every key holding {role!r}")
        else:
            message = f"grants nothing new: {_where(item.by)}{through} already allows it"
        found.append(Finding(
            WARNING, "shadowed-allow" if item.shadowed else "redundant-allow", message,
            _name(item.line.file), item.line.line, _where(item.by),
        ))
    if coverage.unchecked:
        found.append(Finding(
            WARNING, "analysis-limit",
            f"the shadowed/redundant analysis stopped at its budget of {budget} lookups: "
            f"{coverage.unchecked} allow lines were not checked",
        ))
    return found


def _roles(
    p_lines: Sequence[PolicyLine], g_lines: Sequence[PolicyLine], graph: RoleGraph
) -> list[Finding]:
    with_lines = {line.values[0] for line in p_lines}
    carrying = graph.carrying(with_lines)
    first_g: dict[str, PolicyLine] = {}
    for line in g_lines:
        for role in line.values:
            first_g.setdefault(role, line)
    found = []
    for role in graph.roles:
        if role in with_lines:
            continue
        line = first_g[role]  # a role without p lines is named by a g line
        if role not in graph.parents:
            found.append(Finding(
                WARNING, "role-never-granted",
                f"role {role!r} is only inherited (g lines) and no p line grants it "
                f"anything: inheriting it changes nothing (a misspelt role?)",
                _name(line.file), line.line,
            ))
        elif role not in carrying:
            found.append(Finding(
                WARNING, "role-without-permissions",
                f"role {role!r} has no p line, nor has any role it inherits: holding it "
                f"allows and denies nothing", _name(line.file), line.line,
            ))
    return found


class _Uses:
    """The (resource, action) pairs something asks about, searchable by keyMatch
    pattern: sorted names, so a pattern's prefix is one binary search."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        by_action: dict[str, set[str]] = {}
        for resource, action in pairs:
            by_action.setdefault(action, set()).add(resource)
        self.resources = sorted({r for names in by_action.values() for r in names})
        self.by_action = {a: sorted(names) for a, names in by_action.items()}

    def resource_used(self, pattern: str) -> bool:
        return _any_match(self.resources, pattern)

    def action_used(self, resource: str, action: str) -> bool:
        is_pattern, text = meaning(action)
        return any(
            (name.startswith(text) if is_pattern else name == text)
            and _any_match(resources, resource)
            for name, resources in self.by_action.items()
        )


def _any_match(names: Sequence[str], pattern: str) -> bool:
    is_pattern, text = meaning(pattern)
    i = bisect.bisect_left(names, text)
    return i < len(names) and (names[i].startswith(text) if is_pattern else names[i] == text)


def _unused(
    p_lines: Sequence[PolicyLine], routes: Sequence[RouteUse],
    management: Iterable[tuple[str, str]], roles: Iterable[str],
) -> list[Finding]:
    """Lines whose resource or action nothing uses. Without routes, only lines on
    keygate's own resources (a management permission's, ``role:NAME``) are judged: any
    other resource may be a route's of a config not given."""
    pairs = [(route.resource, action) for route in routes for action in route.actions]
    management = list(management)
    own = {resource for resource, _ in management}
    pairs += management
    pairs += [(ROLE_RESOURCE_PREFIX + role, ASSIGN) for role in roles]
    uses = _Uses(pairs)
    found = []
    for line in p_lines:
        resource, action = line.values[2], line.values[3]
        if not routes and not (resource in own or resource.startswith(ROLE_RESOURCE_PREFIX)):
            continue
        if not uses.resource_used(resource):
            if resource.startswith(ROLE_RESOURCE_PREFIX):
                why = f"resource {excerpt(resource)} names no role the policy files define"
            else:
                why = (f"no route and no management permission uses resource "
                       f"{excerpt(resource)}")
            found.append(Finding(WARNING, "unused-resource", why, _name(line.file), line.line))
        elif not uses.action_used(resource, action):
            found.append(Finding(
                WARNING, "unused-action",
                f"no route and no management permission uses action {excerpt(action)} "
                f"on resource {excerpt(resource)}", _name(line.file), line.line,
            ))
    return found


def _undefined_held(held: Mapping[str, Mapping[str, int]], defined: set[str]) -> list[Finding]:
    found = []
    for account in sorted(held):
        for role, count in sorted(held[account].items()):
            if role not in defined:
                holders = "1 key or grant holds" if count == 1 else \
                    f"{count} keys or grants hold"
                found.append(Finding(
                    ERROR, "undefined-role-held",
                    f"account {excerpt(account)}: {holders} role {excerpt(role)}, which the "
                    f"policy files do not define (it grants them nothing)",
                    scope="store",
                ))
    return found


def _never_held(
    held: Mapping[str, Mapping[str, int]], p_lines: Sequence[PolicyLine], graph: RoleGraph
) -> list[Finding]:
    """Roles with ``p`` lines that no key or grant holds, nor inherits through a role
    held: at the role's first line. A walk up from the roles held: O(roles + lines)."""
    reached = graph.inherited(
        {role for counts in held.values() for role, count in counts.items() if count})
    first: dict[str, PolicyLine] = {}
    for line in p_lines:
        first.setdefault(line.values[0], line)
    return [
        Finding(WARNING, "role-never-held",
                f"role {role!r}: no key or grant holds it in any account, nor a role that "
                f"inherits it (defined, never granted)", _name(line.file), line.line,
                scope="store")
        for role, line in first.items() if role not in reached
    ]


def _distinct(
    lines: Iterable[PolicyLine],
) -> tuple[list[PolicyLine], list[tuple[PolicyLine, PolicyLine]]]:
    """The first line of each distinct value tuple, and (repeat, first) pairs."""
    first: dict[tuple[str, ...], PolicyLine] = {}
    repeats = []
    for line in lines:
        earlier = first.setdefault(line.values, line)
        if earlier is not line:
            repeats.append((line, earlier))
    return list(first.values()), repeats


def _name(file: str) -> str:
    """A file name as printed: as it is when plain printable text, else quoted with
    escapes (a file name is the one part of a location a file's author controls)."""
    return file if file.isprintable() and file.strip() == file else repr(file)


def _where(line: PolicyLine) -> str:
    return f"{_name(line.file)}:{line.line}"


def _order(line: PolicyLine) -> tuple[str, int]:
    return line.file, line.line


def _finding_order(finding: Finding) -> tuple[int, str, int, str]:
    # file findings by file and line; those about the deployment last
    if finding.file is None:
        return 1, "", 0, finding.code
    return 0, finding.file, finding.line or 0, finding.code
