"""Authorization decisions: the only module that imports casbin (the model, the
lines, the decisions).

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
import functools
import hashlib
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin

from ..credentials import is_valid_account
from ..errors import ConfigError

ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9_.:/*-]{0,127}$")
EFFECTS = ("allow", "deny")
# A valid line is a few hundred characters at most (five names of at most 128); a longer
# one is refused before the CSV reader sees it (its field limit would raise).
MAX_LINE_LENGTH = 4096
# A policy or table file is text written by people: one larger than this is refused
# unread (a hostile pull request could link policies/x.csv to /dev/zero).
MAX_FILE_BYTES = 16 * 1024 * 1024
# Only CR, LF and CRLF end a line, as in the editors and review tools people read the
# files in: Python's splitlines() would also break at form feeds, U+2028 and the like,
# which a review shows inside one line (a comment could hide a rule after one).
LINE_BREAK = re.compile(r"\r\n|\r|\n")
# No value may hold "#", so a refused line holding one is most likely a comment after
# the values, which CSV reads as part of the last one.
INLINE_COMMENT = "a comment goes on a line of its own: '#' after the values is read as part of them"
# How much of a value a message quotes: a hostile file cannot make a report huge.
EXCERPT = 48

# The stable names of the problems a line can have (``keygate policy check`` codes).
SYNTAX, BAD_EFFECT, CYCLE, UNREADABLE = "syntax", "bad-effect", "inheritance-cycle", "unreadable"


@dataclass(frozen=True)
class PolicyLine:
    file: str
    line: int
    values: tuple[str, ...]


@dataclass(frozen=True)
class LineProblem:
    """Something wrong in a policy file, where it is and why, under a stable ``code``.

    The loader stops at the first one (:meth:`error`); ``keygate policy check`` reports
    every one. ``line`` is None when the problem is the whole file (it cannot be read).
    """

    file: str
    line: int | None
    code: str
    reason: str

    def error(self) -> ConfigError:
        if self.line is None or self.code == UNREADABLE:
            return ConfigError(f"policy {self.file}: {self.reason}")
        return ConfigError(f"policy {self.file}, line {self.line}: {self.reason}")


@dataclass(frozen=True)
class PolicyFiles:
    """A policy directory as read: the valid lines and every problem, in file order.

    A line with a problem is left out of ``p_lines``/``g_lines``, so that what is left
    can still be analysed; inheritance cycles are not looked for here
    (:func:`inheritance_cycles`)."""

    files: tuple[str, ...]
    p_lines: tuple[PolicyLine, ...]
    g_lines: tuple[PolicyLine, ...]
    problems: tuple[LineProblem, ...]


def excerpt(value: str) -> str:
    """``value`` quoted for a message (escapes shown, never raw control characters) and
    cut to a bounded length."""
    if len(value) <= EXCERPT:
        return repr(value)
    return f"{value[:EXCERPT]!r}... ({len(value)} characters)"


def parse_policy_files(policies_dir: Path) -> tuple[list[PolicyLine], list[PolicyLine]]:
    """Read every ``*.csv`` in the directory into checked ``p`` and ``g`` lines; the
    first problem (in file and line order, then inheritance cycles) is a ConfigError."""
    read = read_policy_files(policies_dir)
    if read.problems:
        raise read.problems[0].error()
    cycles = inheritance_cycles(read.g_lines)
    if cycles:
        raise cycles[0].error()
    return list(read.p_lines), list(read.g_lines)


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. OSError otherwise: a
    device, pipe or socket (a link to ``/dev/zero`` never ends, a FIFO never opens) or
    a larger file is refused with a reason, not read to the end of memory."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(f"{path.name} is not a regular file")
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path.name} is larger than {limit // (1024 * 1024)} MiB")
    return data


def policy_file_paths(policies_dir: Path) -> list[Path]:
    """The policy files of a directory: its ``*.csv``, sorted by name."""
    return sorted(Path(policies_dir).glob("*.csv"))


def read_policy_file(path: Path, policies_dir: Path) -> bytes:
    """The bytes of one policy file of ``policies_dir`` (:func:`read_bounded`), which
    must be in that directory once symbolic links are followed. A link may point within
    it (a Kubernetes ConfigMap volume links each file to a hidden subdirectory), never
    out of it: the files come from pull requests, and ``policies/x.csv`` linked to the
    server secret or a private key would otherwise be read, and its first line quoted
    in the error that names the line (``policy check`` in CI, a refused reload's
    answer). Such a file is an OSError, refused unread."""
    return read_bounded(inside_directory(path, policies_dir))


def inside_directory(path: Path, policies_dir: Path) -> Path:
    """``path`` with its symbolic links followed, when that is inside ``policies_dir``
    (links within it are fine); an OSError when it leads out of it (through the file
    itself or a directory on the way, ``tests`` linked elsewhere)."""
    target = path.resolve()
    if not target.is_relative_to(Path(policies_dir).resolve()):
        raise OSError(f"{path.name} links to a file outside the policy directory")
    return target


def read_policy_files(policies_dir: Path) -> PolicyFiles:
    """Every ``*.csv`` of the directory (sorted by name), each line checked by the same
    rules as the loader's, every problem kept. A directory that is missing or holds no
    policy file is a ConfigError: there is nothing to read."""
    if not policies_dir.is_dir():
        raise ConfigError(f"setting policies_dir: {policies_dir} is not a directory")
    paths = policy_file_paths(policies_dir)
    if not paths:
        raise ConfigError(f"setting policies_dir: no *.csv policy files in {policies_dir}")
    p_lines: list[PolicyLine] = []
    g_lines: list[PolicyLine] = []
    problems: list[LineProblem] = []
    for path in paths:
        name = path.name
        try:
            text = read_policy_file(path, policies_dir).decode("utf-8")
        except OSError as exc:
            problems.append(LineProblem(name, None, UNREADABLE, f"cannot read it ({exc})"))
            continue
        except UnicodeDecodeError as exc:
            line = exc.object.count(b"\n", 0, exc.start) + 1
            problems.append(LineProblem(name, line, UNREADABLE, f"cannot read it ({exc})"))
            continue
        for number, raw in enumerate(LINE_BREAK.split(text), start=1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            kind, fields, problem = _split(raw)
            if problem is None:
                check = {"p": p_line_problem, "g": g_line_problem}.get(kind)
                if check is None:
                    problem = (SYNTAX, f"a line starts with p or g, not {excerpt(kind)}")
                else:
                    problem = check(fields)
            if problem is not None:
                code, reason = problem
                if "#" in raw:
                    reason += f" ({INLINE_COMMENT})"
                problems.append(LineProblem(name, number, code, reason))
            else:
                (p_lines if kind == "p" else g_lines).append(PolicyLine(name, number, fields))
    return PolicyFiles(
        tuple(path.name for path in paths), tuple(p_lines), tuple(g_lines), tuple(problems)
    )


def _split(raw: str) -> tuple[str, tuple[str, ...], tuple[str, str] | None]:
    if len(raw) > MAX_LINE_LENGTH:
        return "", (), (
            SYNTAX, f"the line is {len(raw)} characters long; a policy line has at most "
                    f"{MAX_LINE_LENGTH}",
        )
    try:
        values = [v.strip() for v in next(csv.reader([raw], skipinitialspace=True))]
    except csv.Error as exc:
        return "", (), (SYNTAX, f"not a CSV line ({exc})")
    return values[0], tuple(values[1:]), None


def p_line_problem(fields: tuple[str, ...]) -> tuple[str, str] | None:
    """``(code, reason)`` when the values after ``p`` are not a valid policy line."""
    if len(fields) != 5:
        return SYNTAX, (
            f"a p line has 5 values (role, account, resource, action, allow|deny), "
            f"found {len(fields)}"
        )
    role, account, resource, action, effect = fields
    if not ROLE_RE.fullmatch(role):
        return SYNTAX, f"invalid role name {excerpt(role)}"
    if account != "*" and not is_valid_account(account):
        return SYNTAX, f"account must be '*' or an account name, not {excerpt(account)}"
    for what, value in (("resource", resource), ("action", action)):
        if not NAME_RE.fullmatch(value):
            return SYNTAX, f"invalid {what} {excerpt(value)}"
    if effect not in EFFECTS:
        return BAD_EFFECT, f"effect must be allow or deny, not {excerpt(effect)}"
    return None


def g_line_problem(fields: tuple[str, ...]) -> tuple[str, str] | None:
    """``(code, reason)`` when the values after ``g`` are not a valid inheritance line."""
    if len(fields) != 2:
        return SYNTAX, f"a g line has 2 values (role, inherited role), found {len(fields)}"
    for role in fields:
        if not ROLE_RE.fullmatch(role):
            return SYNTAX, f"invalid role name {excerpt(role)}"
    if fields[0] == fields[1]:
        return CYCLE, f"role {fields[0]!r} cannot inherit itself"
    return None


def inheritance_cycles(g_lines: Sequence[PolicyLine]) -> list[LineProblem]:
    """The ``g`` lines that close an inheritance cycle, each with the chain it closes.

    One depth-first search over the roles (``g, child, parent`` is an edge from child to
    parent; roles and lines in file order): a line whose parent is on the current path
    closes a cycle. Every cycle holds at least one such line and without them none is
    left, so fixing what is reported fixes every cycle. Each role and line is visited
    once, O(roles + lines), and the search keeps its own stack, so a long chain of
    roles cannot exhaust Python's. (The number of distinct cycles can grow
    exponentially with the lines; they are not enumerated.)
    """
    parents: dict[str, list[PolicyLine]] = {}
    for g in g_lines:
        parents.setdefault(g.values[0], []).append(g)
    ON_PATH, DONE = 1, 2
    state: dict[str, int] = {}
    found: list[LineProblem] = []
    for start in parents:
        if start in state:
            continue
        path, position = [start], {start: 0}
        state[start] = ON_PATH
        pending = [iter(parents[start])]
        while pending:
            g = next(pending[-1], None)
            if g is None:
                pending.pop()
                finished = path.pop()
                del position[finished]
                state[finished] = DONE
                continue
            parent = g.values[1]
            seen = state.get(parent)
            if seen == ON_PATH:
                chain = [*path[position[parent]:], parent]
                found.append(LineProblem(
                    g.file, g.line, CYCLE, f"role inheritance cycle {_chain(chain)}"
                ))
            elif seen is None:
                state[parent] = ON_PATH
                position[parent] = len(path)
                path.append(parent)
                pending.append(iter(parents.get(parent, ())))
    return found


def _chain(roles: Sequence[str], most: int = 12) -> str:
    if len(roles) > most:
        half = most // 2
        roles = [*roles[:half], f"... ({len(roles) - 2 * half} more)", *roles[-half:]]
    return " -> ".join(roles)


def policy_version(model_text: bytes, p_rules: Iterable[Sequence[str]],
                   g_rules: Iterable[Sequence[str]]) -> str:
    """The policy's content hash: the model and the distinct rules in order. Comments,
    blank lines, spacing and repeated lines do not change it; anything that could change
    a decision does."""
    digest = hashlib.sha256(model_text)
    for rule in (*p_rules, *g_rules):
        digest.update(b"\x1f".join(x.encode() for x in rule) + b"\x1e")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelDefinition:
    """What a Casbin model file defines, as Casbin read it: the request and policy
    tokens (``r_sub``, …), the policy effect and the matcher expressions."""

    request: tuple[str, ...]
    policy: tuple[str, ...]
    effect: str
    matcher: str


# the rule a model is tried on when it is read alone: it matches the trial question
# below, so that the whole matcher, not only its first term, is evaluated
_TRIAL_RULE = ("keygate-trial-role", "*", "keygate-trial", "keygate-trial", "allow")


def read_model(model_path: Path, evaluate: bool = True) -> ModelDefinition:
    """The model as Casbin loads it and (``evaluate``) evaluates it; a ConfigError when
    Casbin cannot (its own errors are bare TypeErrors, KeyErrors and SyntaxErrors from
    its parser and its expression evaluator: the message says which)."""
    try:
        enforcer = casbin.Enforcer(str(model_path), _RulesAdapter([_TRIAL_RULE], []))
        enforcer.add_function("hasRole", lambda roles, wanted: wanted in roles)
    except Exception as exc:  # casbin raises whatever its parser hits
        raise ConfigError(
            f"Casbin cannot load it ({type(exc).__name__}: {excerpt(str(exc))})"
        ) from None
    if evaluate:
        try_model(enforcer, [_TRIAL_RULE])
    return _definition(enforcer.get_model())


def try_model(enforcer: Any, p_rules: Sequence[Sequence[str]]) -> None:
    """Evaluate the model once, as a request would: Casbin compiles the matcher and the
    effect only when it first decides, so a matcher that does not parse (an unclosed
    parenthesis), or that names a function or a token the model does not define, loads
    without a word and then fails every request. Asked here, with the first rule's own
    values (so that every term of a conjunction is reached) and with a role no rule
    names, it becomes a ConfigError at load: ``policy check`` reports it, and a reload
    is refused while the running policy keeps serving."""
    questions = [(("keygate-no-such-role",), "keygate-no-such-account", "keygate-no-such-resource",
                  "keygate-no-such-action")]
    if p_rules:
        role, account, resource, action = p_rules[0][:4]
        questions.append(((role,), "keygate-trial" if account == "*" else account,
                          resource, action))
    for question in questions:
        try:
            enforcer.enforce(*question)
        except Exception as exc:  # the expression evaluator raises what it meets
            raise ConfigError(
                f"Casbin cannot evaluate its matcher or effect ({type(exc).__name__}: "
                f"{excerpt(str(exc))})"
            ) from None


def _definition(model: Any) -> ModelDefinition:
    return ModelDefinition(
        tuple(model["r"]["r"].tokens), tuple(model["p"]["p"].tokens),
        model["e"]["e"].value, model["m"]["m"].value,
    )


class _RulesAdapter(casbin.persist.Adapter):
    """The checked, de-duplicated rules, handed to Casbin as its adapter loads a policy
    (``load_policy_line``), which appends them. ``Enforcer.add_policies`` would look each
    rule up among all the earlier ones first, quadratic in the number of lines (94 s
    for 100,000 lines, measured); this is linear. The values cannot hold a comma or a
    quote (``ROLE_RE``, ``NAME_RE``), so joining them is lossless."""

    def __init__(self, p_rules: list[tuple[str, ...]], g_rules: list[tuple[str, ...]]):
        self.rules = [("p", rule) for rule in p_rules] + [("g", rule) for rule in g_rules]

    def load_policy(self, model: Any) -> None:
        for kind, rule in self.rules:
            casbin.persist.load_policy_line(", ".join((kind, *rule)), model)


class Policy:
    """One loaded, immutable policy. Build with :meth:`load`."""

    def __init__(self, model_path: Path, p_lines: list[PolicyLine], g_lines: list[PolicyLine]):
        p_rules = list(dict.fromkeys(p.values for p in p_lines))
        g_rules = list(dict.fromkeys(g.values for g in g_lines))
        try:
            enforcer = casbin.Enforcer(str(model_path), _RulesAdapter(p_rules, g_rules))
        except Exception as exc:  # casbin raises bare Exceptions for model errors
            raise ConfigError(f"setting model_path: {model_path}: {exc}") from None
        # Inheritance as the tools read it (inherited(), any depth), not through Casbin's
        # role manager, which stops following g lines ten levels down: a role inherited
        # deeper, and its deny lines, would apply to explain, lint and diff but not to
        # requests. Memoized per set of roles: the policy never changes.
        @functools.lru_cache(maxsize=4096)
        def closure(roles: tuple[str, ...]) -> frozenset[str]:
            return self.inherited(roles)

        def has_role(roles: Iterable[str], wanted: str) -> bool:
            return wanted in closure(tuple(roles))

        enforcer.add_function("hasRole", has_role)
        self._enforcer = enforcer
        # questions put to Casbin (each evaluates the matcher on every line): public, so
        # that the work a caller makes the policy do can be counted
        self.casbin_questions = 0
        self.model = _definition(enforcer.get_model())
        self.p_lines: tuple[PolicyLine, ...] = tuple(p_lines)
        # each role's own p lines with their place in file order: lines_of() reads the
        # lines of the roles asked about, not every line of the policy
        self._own_lines: dict[str, list[tuple[int, PolicyLine]]] = {}
        for place, line in enumerate(self.p_lines):
            self._own_lines.setdefault(line.values[0], []).append((place, line))
        self.g_lines: tuple[PolicyLine, ...] = tuple(g_lines)
        self._parents: dict[str, set[str]] = {}
        for rule in g_rules:
            self._parents.setdefault(rule[0], set()).add(rule[1])
        self.lines = len(p_rules) + len(g_rules)
        self.roles: frozenset[str] = frozenset(
            [v[0] for v in p_rules] + [r for v in g_rules for r in v]
        )
        self.version = policy_version(model_path.read_bytes(), p_rules, g_rules)
        try:
            try_model(enforcer, p_rules)
        except ConfigError as exc:
            raise ConfigError(f"setting model_path: {model_path}: {exc}") from None

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
        self.casbin_questions += 1
        return bool(self._enforcer.enforce(tuple(roles), account, resource, action))

    def explain(
        self, roles: Sequence[str], account: str, resource: str, action: str
    ) -> tuple[bool, list[list[str]]]:
        """The decision and the policy line that decided it, for operators debugging."""
        self.casbin_questions += 1
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
        in ``account``: lines for every account (``*``) and lines for this one, in file
        order. It reads only those roles' lines."""
        found = [
            (place, line)
            for role in self.inherited(roles)
            for place, line in self._own_lines.get(role, ())
            if line.values[1] in ("*", account) and line.values[4] == effect
        ]
        found.sort(key=lambda item: item[0])
        return [line for _, line in found]

    def decide_ex(
        self, roles: Sequence[str], account: str, resource: str, action: str
    ) -> tuple[bool, bool]:
        """``(allowed, denied)``: allowed as :meth:`decide`; denied when a deny line
        matches, whatever allows."""
        if not roles:
            return False, False
        self.casbin_questions += 1
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


def pattern_covers(general: str, specific: str) -> bool:
    """Whether every name the ``keyMatch`` pattern ``specific`` matches, ``general``
    matches too (a literal matches itself; a pattern, every name starting with its text
    before the first ``*``). A literal covers only itself; a pattern covers a literal
    that starts with its prefix, and a pattern whose prefix extends its own."""
    g_star = general.find("*")
    s_star = specific.find("*")
    if g_star < 0:
        return s_star < 0 and general == specific
    return (specific if s_star < 0 else specific[:s_star]).startswith(general[:g_star])
