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

What an upstream makes of the normal form still depends on the upstream, so the route
decides the rest (:meth:`RouteTable.resolve`). Java servers drop ``;`` parameters
(``/admin;x`` is ``/admin``), Windows and IIS drop trailing dots (``/admin.`` is
``/admin``), and case-insensitive servers read ``/Admin`` as ``/admin``: each would let a
key allowed on ``/acme`` act on ``/acme/admin``. Such paths are refused unless their
route says its upstream reads them that way, and then they are routed and authorized as
that upstream will read them.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from yarl import URL

from .credentials import is_valid_account
from .errors import BadRequest, ConfigError, NotFound
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


def _without_suffixes(path: str, encoded_params: bool = True) -> tuple[str, bool, bool]:
    """``path`` as an upstream that drops ``;`` parameters and trailing dots acts on it
    (``/a;x/b./`` → ``/a/b/``), and whether it had parameters and trailing dots.

    Parameters start at ``;`` and, with ``encoded_params``, at ``%3B``. A segment that
    is nothing but dots once its parameters are gone (``...``, ``...;x``) is refused:
    an upstream might read it as ``.`` or ``..``."""
    had_params = had_dots = False
    kept: list[str] = []
    segments = path.split("/")
    bare = ""
    for segment in segments[1:]:
        bare = segment.split(";", 1)[0]
        if encoded_params:
            bare = bare.split("%3B", 1)[0]
        if bare != segment:
            had_params = True
        if bare.endswith("."):
            had_dots = True
            bare = bare.rstrip(".")
            if not bare:
                raise BadRequest(
                    "the request path has a segment made of dots only (such as '...'); "
                    "an upstream might read it as '.' or '..'",
                    code="bad_path",
                )
        if bare:
            kept.append(bare)
    trailing = not bare and bool(kept)
    return "/" + "/".join(kept) + ("/" if trailing else ""), had_params, had_dots


def lower_path(path: str) -> str:
    """A normalised path lower-cased, but not its %-escapes (``%C3%89`` stays upper-case,
    the one form ``normalise_path`` gives them)."""
    if "%" not in path:
        return path.lower()
    first, *escaped = path.split("%")
    return first.lower() + "".join("%" + part[:2] + part[2:].lower() for part in escaped)


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
    # the upstream drops ';' parameters / trailing dots, or ignores case (see resolve)
    allow_matrix_params: bool = False
    allow_trailing_dots: bool = False
    case_insensitive: bool = False
    # send the upstream a signed identity token (identity_token_header), not only headers
    identity_token: bool = False
    # its aud claim on this route (None: identity_token_audience), so that one upstream
    # cannot replay a token it received to another that checks its own audience
    identity_token_audience: str | None = None

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


Resolution = tuple[Route, str, str]


class Routed(NamedTuple):
    """A request placed on its route: the target account, the path authorized, the path
    to forward (they differ only where the route says its upstream reads a path
    differently), and the action its method means on that route."""

    route: Route
    account: str
    path: str
    forward_path: str
    action: str


@functools.lru_cache(maxsize=256)
def host_name(host: str) -> str:
    """Host header without port or trailing dot, lower-cased (memoised: clients send a
    handful of distinct hosts, and this runs on every request)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")
"""A request's route, the path it is routed and authorized on (as its upstream will act
on it), and the path forwarded (the same, unless the route lets the upstream drop ``;``
parameters or trailing dots: then the path as sent, which still has them). A plain
tuple: one is built for every request."""


class RouteTable:
    """Routes ordered most specific first: a named host before wildcard hosts before
    any host, then the longest path prefix."""

    def __init__(self, routes: Iterable[Route]):
        def specificity(route: Route) -> tuple[int, int]:
            host_rank = 0 if route.host is None else (1 if route.host.startswith("*.") else 2)
            return (-host_rank, -len(route.path_prefix))

        self.routes = sorted(routes, key=specificity)
        self._case_insensitive = any(route.case_insensitive for route in self.routes)

    def match(self, method: str, host: str, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(method, host, path):
                return route
        return None

    def resolve_request(self, method: str, host_header: str, raw_path: str) -> Routed:
        """The one routing step of every front door: normalise the path (400 if it
        cannot be done unambiguously), find the route (404), its account and action."""
        host = host_name(host_header)
        route, path, forward_path = self.resolve(method, host, normalise_path(raw_path))
        return Routed(route, route.account_for(host, path), path, forward_path,
                      route.action_for(method))

    def resolve(self, method: str, host: str, path: str) -> Resolution:
        """The route of a request whose ``path`` is normalised (``normalise_path``), and
        the paths to authorize and to forward; 404 without a route, 400 when upstreams
        could read the path as another route's.

        The attack: routes ``/acme`` and ``/acme/admin`` guard different resources, and a
        key allowed on ``/acme`` only sends ``/acme/admin;x``, ``/acme/admin.`` or
        ``/acme/Admin``. keygate's prefix match puts each under ``/acme``; a Java server
        (drops ``;`` parameters), IIS (drops trailing dots) or any case-insensitive server
        acts on ``/acme/admin``. So:

        * ``;`` parameters (``%3B`` too) and segments ending in a dot are refused unless
          the route reached *without* them allows them (``allow_matrix_params``,
          ``allow_trailing_dots``); then that is the route and the path authorized, and
          the path as sent is forwarded (its upstream needs the parameters). ``%3B`` must
          give the same route whether the upstream reads it as a separator or as data.
        * a ``case_insensitive`` route is routed and authorized on the lower-cased path,
          which is also the path forwarded; when lower-casing changes which route
          matches, and either route is case-insensitive, the request is refused, since
          keygate cannot know which of them the upstream would serve.
        """
        routed = path
        # ';' parameters ('%3B' too: an upstream that decodes before it splits reads it
        # as one) or a segment ending in a dot; substring tests, as this runs every time
        suffixes = ";" in path or "%3B" in path or "./" in path or path[-1:] == "."
        had_params = had_dots = False
        if suffixes:
            routed, had_params, had_dots = _without_suffixes(path)
        route = self.match(method, host, routed)
        forwarded = path
        if self._case_insensitive:
            lowered = lower_path(path)
            if lowered != path:
                lowered_routed = lower_path(routed)
                lowered_route = self.match(method, host, lowered_routed)
                if lowered_route is not None and lowered_route.case_insensitive:
                    if route is not None and route is not lowered_route \
                            and not route.case_insensitive:
                        raise _case_conflict(route, lowered_route)
                    route, routed, forwarded = lowered_route, lowered_routed, lowered
                elif route is not None and route.case_insensitive:
                    raise _case_conflict(route, lowered_route)
        if route is None:
            # the request is not quoted: its path may hold anything, a token included
            raise NotFound("no route matches this method, host and path", code="no_route")
        if suffixes:
            self._check_suffixes(route, method, host, forwarded, had_params, had_dots)
        return route, routed, forwarded

    def _check_suffixes(
        self, route: Route, method: str, host: str, forwarded: str, params: bool, dots: bool
    ) -> None:
        if params and not route.allow_matrix_params:
            raise BadRequest(
                "the request path has ';' parameters (or '%3B'), which some upstreams drop "
                "before routing ('/admin;x' read as '/admin'); route "
                f"{route.name!r} does not allow them (allow_matrix_params = true would)",
                code="bad_path",
            )
        if dots and not route.allow_trailing_dots:
            raise BadRequest(
                "the request path has a segment ending in '.', which some upstreams drop "
                f"('/admin.' read as '/admin'); route {route.name!r} does not allow it "
                "(allow_trailing_dots = true would)",
                code="bad_path",
            )
        if params and "%3B" in forwarded:
            as_data = self.match(method, host, _without_suffixes(forwarded, False)[0])
            if as_data is not route:
                raise BadRequest(
                    "the request path's '%3B' leads to another route when an upstream "
                    "reads it as data rather than as ';'; send ';' or leave it out",
                    code="bad_path",
                )
        if route.strip_prefix and not _prefix_matches(route.path_prefix, forwarded):
            raise BadRequest(
                f"route {route.name!r} strips its path prefix, which this request spells "
                "with parameters or trailing dots; send the prefix plainly",
                code="bad_path",
            )


def _case_conflict(route: Route, other: Route | None) -> BadRequest:
    other_name = other.name if other is not None else None
    return BadRequest(
        f"the request path falls to route {route.name!r} as sent but to route "
        f"{other_name!r} once lower-cased, and one of them serves a case-insensitive "
        "upstream; send the path in lower case",
        code="bad_path",
    )


MAX_AUDIENCE = 256

_ROUTE_FIELDS = {
    "name", "upstream", "path_prefix", "host", "methods", "account", "account_from",
    "account_segment", "resource", "action", "actions", "strip_prefix",
    "allow_matrix_params", "allow_trailing_dots", "case_insensitive", "identity_token",
    "identity_token_audience",
}
_ROUTE_FLAGS = ("strip_prefix", "allow_matrix_params", "allow_trailing_dots", "case_insensitive",
                "identity_token")


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
        flags = {flag: raw.get(flag, False) for flag in _ROUTE_FLAGS}
        for flag, value in flags.items():
            if not isinstance(value, bool):
                raise bad(flag, "must be true or false")
        if flags["case_insensitive"]:
            if flags["allow_matrix_params"]:
                raise bad(
                    "case_insensitive",
                    "cannot be combined with allow_matrix_params: the path forwarded is "
                    "lower-cased, which would change the parameters' values (session ids)",
                )
            prefix = lower_path(prefix)  # requests are matched lower-cased
        audience = raw.get("identity_token_audience")
        if audience is not None:
            if not flags["identity_token"]:
                raise bad("identity_token_audience",
                          "is the audience of the identity token: set identity_token = true")
            if not (isinstance(audience, str) and 0 < len(audience) <= MAX_AUDIENCE
                    and audience.isascii() and audience.isprintable()):
                raise bad("identity_token_audience",
                          f"must be 1 to {MAX_AUDIENCE} printable ASCII characters")
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
                identity_token_audience=audience,
                **flags,
            )
        )
    return RouteTable(routes)
