"""The route table and path normalisation: request → (route, account, resource, action).

Authorization is only as good as the path it looked at. If keygate authorized
``/public/../admin`` as ``/public`` and the upstream resolved it to ``/admin``, every
policy would be void. So the path is normalised *once*, here, by one rule, and the
normalised path is both what routing/authorization see and exactly what is forwarded:

* ``%XX`` escapes of unreserved characters are decoded (``%2e`` → ``.``, ``%41`` → ``A``);
  escapes are upper-cased; malformed escapes are refused.
* ``.`` segments are dropped, ``..`` removes the previous segment; ``..`` above the
  root is refused. Empty segments (``//``) are merged.
* Anything whose meaning depends on the upstream's parser is refused with 400 rather
  than guessed: encoded ``/`` or ``\\`` (``%2f``, ``%5c``), a literal backslash, NUL and
  control characters, non-ASCII bytes, and dot segments carrying parameters (``..;x``
  or ``..%3Bx``, the Tomcat bypass).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from .credentials import is_valid_account
from .errors import BadRequest, ConfigError
from .upstream import Origin

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ALLOWED_RAW = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%")
_HEX = frozenset("0123456789abcdefABCDEF")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ACTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def normalise_path(raw: str) -> str:
    """Return the one unambiguous form of ``raw`` (a path without query) or raise 400."""
    if (
        "%" not in raw
        and "/." not in raw
        and "//" not in raw
        and raw.startswith("/")
        and _ALLOWED_RAW.issuperset(raw)
    ):
        # Nothing to decode, no dot or empty segment: already in its one form. (Most
        # requests; the property test pins this shortcut to the full rule below.)
        return raw
    return _normalise(raw)


def _normalise(raw: str) -> str:
    if not raw.startswith("/"):
        raise BadRequest("the request path must start with '/'", code="bad_path")
    if not _ALLOWED_RAW.issuperset(raw):
        raise BadRequest(
            "the request path contains characters that must be percent-encoded "
            "(backslash, space, control or non-ASCII)",
            code="bad_path",
        )
    segments: list[str] = []
    parts = raw.split("/")
    for part in parts[1:]:
        segment = _decode_unreserved(part)
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise BadRequest("the request path climbs above the root ('..')", code="bad_path")
            segments.pop()
            continue
        if segment.split(";", 1)[0].split("%3B", 1)[0] in (".", ".."):
            raise BadRequest(
                "the request path has a dot segment with parameters (e.g. '..;')", code="bad_path"
            )
        segments.append(segment)
    trailing = len(parts) > 2 and parts[-1] == "" and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


def _decode_unreserved(segment: str) -> str:
    if "%" not in segment:
        return segment
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        escape = segment[i + 1 : i + 3]
        if len(escape) != 2 or not _HEX.issuperset(escape):
            raise BadRequest("the request path has a malformed %-escape", code="bad_path")
        decoded = chr(int(escape, 16))
        if decoded in "/\\" or ord(decoded) < 0x20 or ord(decoded) == 0x7F:
            raise BadRequest(
                f"the request path encodes a separator or control character (%{escape}); "
                "its meaning would depend on the upstream",
                code="bad_path",
            )
        out.append(decoded if decoded in UNRESERVED else "%" + escape.upper())
        i += 3
    return "".join(out)


def _prefix_matches(prefix: str, path: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class Route:
    name: str
    upstream: URL
    path_prefix: str = "/"
    host: str | None = None
    methods: frozenset[str] | None = None
    account: str | None = None
    account_from: str = "fixed"
    account_segment: int = 0
    resource: str = ""
    action: str | None = None
    actions: Mapping[str, str] = field(default_factory=dict)
    strip_prefix: bool = False

    def matches(self, method: str, host: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.host is not None:
            if self.host.startswith("*."):
                if not (host.endswith(self.host[1:]) and host.count(".") == self.host.count(".")):
                    return False
            elif host != self.host:
                return False
        return _prefix_matches(self.path_prefix, path)

    def action_for(self, method: str) -> str:
        if method in self.actions:
            return self.actions[method]
        if self.action:
            return self.action
        return "read" if method in READ_METHODS else "write"

    def account_for(self, host: str, path: str) -> str:
        if self.account_from == "fixed":
            assert self.account is not None
            return self.account
        if self.account_from == "host":
            candidate = host.split(".", 1)[0]
        else:
            # the path is normalised (one leading "/", no empty segments but a trailing one)
            segments = path.split("/", self.account_segment + 1)
            index = self.account_segment
            candidate = segments[index] if index < len(segments) else ""
        if not is_valid_account(candidate):
            if self.account_from == "host":
                where = f"the host's first label {candidate!r}"
            else:
                where = f"path segment {self.account_segment} ({candidate!r})"
            raise BadRequest(
                f"route {self.name!r} takes the account from {where}, which is not an account name",
                code="bad_account",
            )
        return candidate

    def upstream_target(self, path: str, query: str) -> str:
        """The request-target sent upstream: the upstream URL's own path, then ``path``
        (and ``query``), both already in their one encoded form, passed on untouched."""
        if self.strip_prefix and self.path_prefix != "/":
            path = path[len(self.path_prefix) :] or "/"
            if not path.startswith("/"):
                path = "/" + path
        target = self._upstream_path + path
        return target + "?" + query if query else target

    @functools.cached_property
    def _upstream_path(self) -> str:
        return self.upstream.raw_path.rstrip("/")

    @functools.cached_property
    def origin(self) -> Origin:
        return Origin.of(self.upstream)


class RouteTable:
    """Routes ordered most specific first: a named host before wildcard hosts before
    any host, then the longest path prefix."""

    def __init__(self, routes: Iterable[Route]):
        def specificity(route: Route) -> tuple[int, int]:
            host_rank = 0 if route.host is None else (1 if route.host.startswith("*.") else 2)
            return (-host_rank, -len(route.path_prefix))

        self.routes = sorted(routes, key=specificity)

    def match(self, method: str, host: str, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(method, host, path):
                return route
        return None


_ROUTE_FIELDS = {
    "name", "upstream", "path_prefix", "host", "methods", "account", "account_from",
    "account_segment", "resource", "action", "actions", "strip_prefix",
}


def parse_routes(raw_routes: list[dict[str, Any]]) -> RouteTable:
    """Validate ``[[routes]]`` tables; errors name ``routes[i].field``."""
    routes = []
    names: set[str] = set()
    for i, raw in enumerate(raw_routes):
        where = f"routes[{i}]"

        def bad(field_name: str, problem: str, where: str = where) -> ConfigError:
            return ConfigError(f"setting {where}.{field_name}: {problem}")

        unknown = sorted(set(raw) - _ROUTE_FIELDS)
        if unknown:
            known = ", ".join(sorted(_ROUTE_FIELDS))
            raise bad(unknown[0], f"unknown field; known fields: {known}")
        name = raw.get("name", f"route-{i}")
        if not isinstance(name, str) or not name or name in names:
            raise bad("name", "must be a unique, non-empty string")
        names.add(name)
        upstream_raw = raw.get("upstream")
        if not isinstance(upstream_raw, str):
            raise bad("upstream", "required: the upstream base URL, e.g. http://127.0.0.1:9000")
        upstream = URL(upstream_raw)
        if upstream.scheme not in ("http", "https") or not upstream.host:
            raise bad("upstream", f"must be an http:// or https:// URL, got {upstream_raw!r}")
        if upstream.query_string or upstream.fragment:
            raise bad("upstream", "must not carry a query or fragment")
        prefix_raw = raw.get("path_prefix", "/")
        try:
            prefix = normalise_path(prefix_raw) if isinstance(prefix_raw, str) else None
        except BadRequest as exc:
            raise bad("path_prefix", exc.message) from None
        if prefix is None:
            raise bad("path_prefix", "must be a path starting with '/'")
        prefix = prefix.rstrip("/") or "/"
        host = raw.get("host")
        if host is not None:
            if not isinstance(host, str) or not re.fullmatch(r"(\*\.)?[a-z0-9.-]+", host.lower()):
                raise bad("host", "must be a host name or *.domain")
            host = host.lower()
        methods = raw.get("methods")
        if methods is not None:
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise bad("methods", "must be a list of HTTP methods")
            methods = frozenset(m.upper() for m in methods)
        account = raw.get("account")
        account_from = raw.get("account_from", "fixed" if account is not None else None)
        segment = raw.get("account_segment", 0)
        if account_from == "fixed":
            if not isinstance(account, str) or not is_valid_account(account):
                raise bad("account", f"must be an account name (a DNS label), got {account!r}")
        elif account_from == "host":
            if account is not None:
                raise bad("account", "give either account or account_from, not both")
        elif account_from == "path":
            if account is not None:
                raise bad("account", "give either account or account_from, not both")
            if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
                raise bad("account_segment", "must be the 1-based path segment holding the account")
        else:
            raise bad(
                "account_from",
                "each route needs account = NAME, or account_from = \"host\" or \"path\"",
            )
        resource = raw.get("resource")
        if not isinstance(resource, str) or not ACTION_RE.fullmatch(resource):
            raise bad("resource", "required: the resource name used in the policies")
        action = raw.get("action")
        if action is not None and (not isinstance(action, str) or not ACTION_RE.fullmatch(action)):
            raise bad("action", "must be an action name")
        actions = raw.get("actions", {})
        if not isinstance(actions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and ACTION_RE.fullmatch(v)
            for k, v in actions.items()
        ):
            raise bad("actions", "must map HTTP methods to action names, e.g. {DELETE = \"admin\"}")
        strip = raw.get("strip_prefix", False)
        if not isinstance(strip, bool):
            raise bad("strip_prefix", "must be true or false")
        routes.append(
            Route(
                name=name,
                upstream=upstream,
                path_prefix=prefix,
                host=host,
                methods=methods,
                account=account,
                account_from=account_from,
                account_segment=segment,
                resource=resource,
                action=action,
                actions={k.upper(): v for k, v in actions.items()},
                strip_prefix=strip,
            )
        )
    return RouteTable(routes)
