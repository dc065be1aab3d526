"""Decision tables: the security team's tests of the policies (``keygate policy test``).

A table is a TOML file, by default in ``<policies_dir>/tests/`` (the policy loader
reads only the ``*.csv`` files of the directory itself, so tables are never policy).
It holds two kinds of rows::

    # a case: one question and the expected answer
    [[case]]
    name = "owner may edit keys"        # optional, printed when the row fails
    roles = ["owner"]                   # the roles a key holds in the account, or:
    # key = "kgk-acme-7QT20DBS4A"       # a key: its roles in the account, from the store
    account = "acme"
    resource = "api-keys"
    action = "edit"
    expect = "allow"                    # or "deny"

    # a property: these roles may never do this, in any account
    [[never]]
    name = "user-admin-restricted never assigns owner"
    roles = ["user-admin-restricted"]
    resource = "role:owner"             # keyMatch patterns allowed: "role:*", "orders/*"
    action = "assign"                   # "*" too

Rules, and why:

* A case names one concrete question: ``*`` is refused in its resource and action
  (a pattern there would be a literal name to Casbin, and test nothing meant).
* Roles a ``roles`` list names must be defined in the policies: a misspelt role grants
  nothing, so a ``deny`` row would pass for the wrong reason. Such a row fails and says
  why. (A key's roles are what the store holds; a role the files no longer define is
  then judged like any other: it grants nothing.)
* ``(role:NAME, assign)`` is decided as the management API decides giving role NAME to
  a key: ``edit`` on ``api-keys`` in the account, then the escalation rule
  (:mod:`gateway.policy.delegation`). Every other question is :meth:`Policy.decide`'s.
* A ``never`` row fails when the roles are allowed the resource and action in some
  account: every account the lines of the roles name, and one they do not name (shown
  as ``*``), standing in for all the others, where only ``*`` lines apply, alike.
  Patterns are tried on every literal name the policies, the routes and the management
  API use that they match, and on a stand-in for "any other name"
  (:mod:`gateway.policy.names`), so a pattern cannot pass for lack of names. Only
  questions some allow line of the roles could match are put to Casbin (without one
  the answer is deny), which keeps a property over many names fast; an assignment is
  always asked (the escalation rule may allow a role no line mentions).

This module reads tables; :mod:`.table_runner` runs them. A failure prints the row
(file:line; the line of its ``[[case]]``/``[[never]]`` header), the decision, and the
policy lines (file:line) that made it (:mod:`.explain`). A file that is not a table
(bad TOML, an unknown or missing field, a wrong type) is a :class:`TableError` naming
the file and the row: the command cannot run (exit 2).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..credentials import is_valid_account
from ..errors import ConfigError
from .files import NAME_RE, excerpt, inside_directory, read_bounded
from .names import is_pattern

KINDS = ("case", "never")
FIELDS = {
    "case": ("name", "roles", "key", "account", "resource", "action", "expect"),
    "never": ("name", "roles", "resource", "action"),
}
EXPECTS = {"allow": True, "deny": False}
MAX_TABLE_BYTES = 16 * 1024 * 1024  # a table is text people review; this is far past that
MAX_NAME_CHARS = 200
# tomllib takes time quadratic in the parts of a dotted key (``x.a.a.a… = 1``: 50,000
# parts, 45 s; a 16 MiB table, hours). A row's longest line is a few hundred
# characters, so longer lines are refused before tomllib reads any.
MAX_TABLE_LINE = 8192
HEADER_RE = re.compile(r"^\s*\[\[\s*(case|never)\s*\]\]\s*(#.*)?$")


class TableError(ConfigError):
    """A table file that cannot be run as written."""


@dataclass(frozen=True)
class Row:
    kind: str  # "case" or "never"
    file: str
    index: int  # 1-based, among the rows of its kind in its file
    line: int | None  # of its [[case]] / [[never]] header, when the file uses them
    name: str
    roles: tuple[str, ...] | None  # None: a key's roles
    key: str | None
    account: str | None  # None for never rows: every account
    resource: str
    action: str
    expect: bool | None  # case rows: True for allow

    @property
    def location(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return f"{self.file} ({self.kind} #{self.index})"

    @property
    def title(self) -> str:
        return self.name or f"{self.kind} #{self.index}"


@dataclass(frozen=True)
class Table:
    file: str
    rows: tuple[Row, ...]


# -- reading tables --------------------------------------------------------------------
def load_table(path: Path, shown_as: str, policies_dir: Path | None = None) -> Table:
    """Read and check one table file; ``shown_as`` is the name errors and rows print.
    ``policies_dir``: the table was found there, not named by the user, and is read
    only if it is inside it once links are followed, as a policy file is
    (:func:`~.files.read_policy_file`): a pull request's ``tests/x.toml`` linked to a
    secret would otherwise have its values printed as rows' names or refusals."""
    try:
        if policies_dir is not None:
            path = inside_directory(path, policies_dir)
        text = read_bounded(path, MAX_TABLE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise TableError(f"decision table {shown_as}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"decision table {shown_as}: cannot read it ({exc})") from None
    return parse_table(text, shown_as)


def parse_table(text: str, shown_as: str) -> Table:
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > MAX_TABLE_LINE:
            raise TableError(
                f"decision table {shown_as}: line {number} is {len(line)} characters long; "
                f"a table line has at most {MAX_TABLE_LINE}"
            )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TableError(f"decision table {shown_as}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise TableError(f"decision table {shown_as}: values nested too deeply") from None
    unknown = sorted(set(data) - set(KINDS))
    if unknown:
        raise TableError(
            f"decision table {shown_as}: unknown entry {excerpt(unknown[0])}; a table holds "
            "[[case]] and [[never]] rows"
        )
    headers = _header_lines(text)
    rows: list[Row] = []
    for kind in KINDS:
        raw_rows = data.get(kind, [])
        if not isinstance(raw_rows, list) or not all(isinstance(r, dict) for r in raw_rows):
            raise TableError(
                f"decision table {shown_as}: {kind!r} must be rows written [[{kind}]]"
            )
        lines = headers[kind] if len(headers[kind]) == len(raw_rows) else [None] * len(raw_rows)
        for index, (raw, line) in enumerate(zip(raw_rows, lines, strict=True), start=1):
            rows.append(_row(raw, kind, shown_as, index, line))
    if not rows:
        raise TableError(f"decision table {shown_as}: no [[case]] or [[never]] rows")
    rows.sort(key=lambda r: (r.line or 0, KINDS.index(r.kind), r.index))
    return Table(shown_as, tuple(rows))


def _header_lines(text: str) -> dict[str, list[int]]:
    """The line of each ``[[case]]``/``[[never]]`` header (tomllib gives no positions).
    Used only when the count agrees with the rows parsed (rows written as inline
    arrays, or headers inside multi-line strings, fall back to the row's index)."""
    found: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for number, line in enumerate(text.splitlines(), start=1):
        match = HEADER_RE.match(line)
        if match:
            found[match.group(1)].append(number)
    return found


def _row(raw: dict[str, Any], kind: str, file: str, index: int, line: int | None) -> Row:
    where = f"decision table {file}, {kind} #{index}" + (f" (line {line})" if line else "")

    def bad(problem: str) -> TableError:
        return TableError(f"{where}: {problem}")

    allowed = FIELDS[kind]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        hint = " (a never row holds for every account)" if unknown[0] == "account" else ""
        hint = hint or (" (a never row takes roles: it is a property of roles)"
                        if unknown[0] == "key" else "")
        raise bad(f"unknown field {excerpt(unknown[0])}{hint}; the fields of a {kind} row: "
                  f"{', '.join(allowed)}")
    required = ["resource", "action"] + (["account", "expect"] if kind == "case" else ["roles"])
    missing = [f for f in required if f not in raw]
    if missing:
        raise bad(f"missing field {missing[0]!r}")
    if kind == "case" and ("roles" in raw) == ("key" in raw):
        raise bad("give roles = [...] or key = \"...\" (one of them)")

    def text_field(name: str, limit: int = MAX_NAME_CHARS) -> str:
        value = raw[name]
        if not isinstance(value, str) or not value or len(value) > limit:
            raise bad(f"{name} must be a non-empty string of at most {limit} characters")
        if not value.isprintable():
            raise bad(f"{name} holds characters that are not printable")
        return value

    name = text_field("name") if "name" in raw else ""
    roles = None
    if "roles" in raw:
        value = raw["roles"]
        if (not isinstance(value, list) or not value
                or not all(isinstance(r, str) and r for r in value)):
            raise bad("roles must be a non-empty list of role names")
        if any(len(r) > MAX_NAME_CHARS or not r.isprintable() for r in value):
            raise bad("roles must be role names (printable, at most 200 characters)")
        roles = tuple(dict.fromkeys(value))
    key = text_field("key") if "key" in raw else None
    account = None
    if kind == "case":
        account = text_field("account")
        if not is_valid_account(account):
            raise bad(f"account {account!r} is not an account name (lowercase letters, "
                      "digits and '-')")
    resource, action = text_field("resource"), text_field("action")
    for what, value in (("resource", resource), ("action", action)):
        if not NAME_RE.fullmatch(value):
            raise bad(f"{what} {value!r} is not a name the policies could use")
        if kind == "case" and is_pattern(value):
            raise bad(f"a case asks about one {what}: {value!r} holds '*' (a pattern "
                      "belongs in a [[never]] row)")
    expect = None
    if kind == "case":
        expect_text = raw["expect"]
        if not isinstance(expect_text, str) or expect_text not in EXPECTS:
            raise bad(f"expect must be \"allow\" or \"deny\", not {excerpt(str(expect_text))}")
        expect = EXPECTS[expect_text]
    return Row(kind, file, index, line, name, roles, key, account, resource, action, expect)


def keys_needed(tables: Iterable[Table]) -> list[tuple[str, str]]:
    """The (key, account) pairs whose roles the store must supply, in table order."""
    return list(dict.fromkeys(
        (row.key, row.account) for table in tables for row in table.rows
        if row.key is not None and row.account is not None
    ))
