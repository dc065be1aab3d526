"""Unit and property tests of ``gateway.routes``: ``normalise_path`` and, at the end,
``RouteTable.resolve`` (pure, no I/O).

The contract (DESIGN.md §2, routes.py docstring): the path is normalised once; the result
is what routing and authorization see *and* exactly what is forwarded. So the result must
be a fixed point (normalising it again changes nothing), must contain nothing an upstream
could resolve differently (no dot segments, no empty segments, no encoded separators), and
must mean the same path as the input. Whatever cannot be normalised unambiguously is a 400.
"""

from __future__ import annotations

import posixpath
import re
import string
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest, ConfigError, NotFound
from gateway.routes import RouteTable, lower_path, normalise_path, parse_routes

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


# -- examples ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/orders", "/orders"),
        ("/orders/42", "/orders/42"),
        ("/orders/42/", "/orders/42/"),  # a trailing slash is kept
        ("//orders//42", "/orders/42"),  # empty segments are merged
        ("///", "/"),
        ("/orders/./42", "/orders/42"),
        ("/orders/../admin", "/admin"),
        ("/orders/42/..", "/orders"),
        ("/orders/%2e%2e/beta/orders", "/beta/orders"),  # encoded dots are dots
        ("/orders/%2E%2e/beta/orders", "/beta/orders"),
        ("/orders/.%2e/admin", "/admin"),
        ("/orders/%2e/42", "/orders/42"),
        ("/public/%2e%2e/orders/7", "/orders/7"),
        ("/%6Frders/42", "/orders/42"),  # escapes of unreserved characters are decoded
        ("/orders/%7e%41%5F", "/orders/~A_"),
        ("/orders/%e2%82%ac", "/orders/%E2%82%AC"),  # other escapes kept, upper-cased
        ("/orders/a%3bb", "/orders/a%3Bb"),
        ("/orders/%252e%252e", "/orders/%252e%252e"),  # an encoded '%' is data, not a dot
        ("/orders/a;v=1/42", "/orders/a;v=1/42"),  # parameters on a normal segment are fine
        ("/orders/...", "/orders/..."),  # three dots are a name
        ("/orders/.hidden", "/orders/.hidden"),
        ("/a/b/c/../../d", "/a/d"),
    ],
)
def test_normalises(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",  # not a path
        "orders/42",  # relative
        "http://evil/orders",  # absolute-form request target
        "/..",  # above the root
        "/../orders",
        "/orders/../../x",
        "/%2e%2e/orders",
        "/orders/%2f",  # encoded separators: meaning depends on the upstream
        "/orders/%2F..%2Fadmin",
        "/public/..%2f",
        "/orders%2f42",
        "/orders/a%5cb",
        "/orders/a%5Cb",
        "/orders\\..\\admin",  # literal backslash
        "/orders/..;/x",  # the Tomcat bypass
        "/orders/..;jsessionid=1/x",
        "/orders/.;x/42",
        "/orders/%2e%2e;/x",
        "/orders/%2e;x/42",
        "/orders/..%3B/x",  # '..;' once the upstream decodes it
        "/orders/..%3bjsessionid=1/x",
        "/orders/.%3Bx/42",
        "/orders/a%00b",  # encoded control characters
        "/orders/a%0Ab",
        "/orders/a%7fb",
        "/orders/a b",  # raw space, control and non-ASCII characters
        "/orders/a\tb",
        "/orders/caf\u00e9",
        "/orders/%",  # malformed escapes
        "/orders/%4",
        "/orders/%zz",
        "/orders/%g0",
        "/orders/42#frag",
        "/orders/42?x=1",  # the query is not part of the path given to normalise_path
    ],
)
def test_refuses_ambiguous_paths_with_400(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        normalise_path(raw)
    assert info.value.status == 400
    assert info.value.code == "bad_path"
    assert info.value.message  # says what is wrong


# -- properties -------------------------------------------------------------------------

# Path pieces chosen to hit every branch: names, dot segments in all spellings, empty
# segments, separators (raw and encoded), parameters, escapes of unreserved and reserved
# characters, malformed escapes and characters that are not allowed raw.
PIECES = [
    "a", "B", "orders", "42", "~x", "-", "_", ".", "..", "...", "", ";", ";v=1",
    "%2e", "%2E", "%2e%2e", ".%2e", "%2E.", "%41", "%7e", "%7E", "%5f", "%2d",
    "%2f", "%2F", "%5c", "%00", "%25", "%252e", "%3b", "%3B", "%e2%82%ac", "%20",
    "%", "%4", "%zz", "..;", ".;x", "\\", " ", "\u00e9", ":", "@", "!$&'()*+,=",
]
segments = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
raw_paths = st.lists(segments, max_size=8).map(lambda segs: "/" + "/".join(segs))

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _decode_unreserved(path: str) -> str:
    def one(match: re.Match[str]) -> str:
        char = chr(int(match[1], 16))
        return char if char in UNRESERVED else "%" + match[1].upper()

    return _ESCAPE.sub(one, path)


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


@settings(max_examples=600, deadline=None)
@given(raw_paths)
@example("/orders/%2e%2e/beta/orders")
@example("/orders/..;/x")
@example("//a//b/./c/../")
def test_result_is_a_canonical_fixed_point_or_a_400(raw: str) -> None:
    try:
        result = normalise_path(raw)
    except BadRequest as exc:
        assert exc.status == 400 and exc.code == "bad_path"
        return
    # A fixed point: the forwarded path is what was authorized, and a second keygate
    # (or a retry through this one) sees the same thing.
    assert normalise_path(result) == result
    assert result.startswith("/")
    assert "//" not in result
    assert "\\" not in result
    for segment in _segments(result):
        # nothing an upstream could resolve: no dot segment, in any spelling
        decoded = unquote(segment)  # what an upstream that percent-decodes sees
        assert decoded not in (".", "..")
        assert segment.split(";", 1)[0] not in (".", "..")  # no '..;x' (Tomcat)
        assert "/" not in decoded and "\\" not in decoded
    # escapes left in the result are upper-case and never of unreserved characters
    for escape in _ESCAPE.findall(result):
        assert escape == escape.upper()
        assert chr(int(escape, 16)) not in UNRESERVED


@settings(max_examples=600, deadline=None)
@given(raw_paths)
def test_result_means_the_same_path_as_the_input(raw: str) -> None:
    """Independent oracle: decode unreserved escapes, merge slashes, and let
    ``posixpath.normpath`` resolve the dot segments; same segments as keygate's result.
    Inputs that climb above the root must be refused (normpath would clamp them)."""
    try:
        result = normalise_path(raw)
    except BadRequest:
        return
    decoded = re.sub("/+", "/", _decode_unreserved(raw))
    assert _segments(result) == _segments(posixpath.normpath(decoded))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["..", "%2e%2e", ".%2E", "a", "b", "."]), min_size=1, max_size=8))
def test_climbing_above_the_root_is_always_refused(parts: list[str]) -> None:
    depth = 0
    climbs = False
    for part in parts:
        if _decode_unreserved(part) == "..":
            depth -= 1
            climbs = climbs or depth < 0
            depth = max(depth, 0)
        elif part != ".":
            depth += 1
    raw = "/" + "/".join(parts)
    if climbs:
        with pytest.raises(BadRequest):
            normalise_path(raw)
    else:
        assert len(_segments(normalise_path(raw))) == depth


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=string.ascii_letters + string.digits + "-_~", min_size=1),
                max_size=8))
def test_plain_paths_pass_unchanged(names: list[str]) -> None:
    raw = "/" + "/".join(names)
    assert normalise_path(raw) == raw


@settings(max_examples=600, deadline=None)
@given(raw_paths)
@example("/")
@example("/a/")
@example("/.well-known/x")
@example("/a;b/c")
def test_the_shortcut_for_plain_paths_agrees_with_the_full_rule(raw: str) -> None:
    """``normalise_path`` returns most paths unchanged without walking their segments;
    whatever it answers, the full rule must answer the same (or refuse alike)."""
    from gateway.routes import _normalise

    try:
        expected = _normalise(raw)
    except BadRequest:
        with pytest.raises(BadRequest):
            normalise_path(raw)
        return
    assert normalise_path(raw) == expected


# -- resolve: what the route decides ------------------------------------------------------
#
# Two routes guard different resources: /acme and /acme/admin. Upstreams read some paths
# as another path (Java drops ';' parameters, IIS drops trailing dots, case-insensitive
# servers ignore case), so a path that keygate's prefix match puts under /acme may be
# acted on as /acme/admin. RouteTable.resolve refuses those unless the route says its
# upstream reads them that way, and then routes and authorizes them as it will.

UP = "http://127.0.0.1:9"


def table(acme: dict | None = None, admin: dict | None = None, *extra: dict) -> RouteTable:
    """/acme (resource catalog) and /acme/admin (resource orders), with route flags."""
    return parse_routes([
        {"name": "acme", "upstream": UP, "path_prefix": "/acme", "account": "acme",
         "resource": "catalog", **(acme or {})},
        {"name": "admin", "upstream": UP, "path_prefix": "/acme/admin", "account": "acme",
         "resource": "orders", **(admin or {})},
        *extra,
    ])


def resolved(routes: RouteTable, path: str, method: str = "GET") -> tuple[str, str, str]:
    route, authorized, forwarded = routes.resolve(method, "api.test", normalise_path(path))
    return route.name, authorized, forwarded


def refused(routes: RouteTable, path: str) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        resolved(routes, path)
    assert (info.value.status, info.value.code) == (400, "bad_path")
    return info.value


def test_plain_paths_resolve_to_themselves():
    routes = table()
    assert resolved(routes, "/acme/orders/1") == ("acme", "/acme/orders/1", "/acme/orders/1")
    assert resolved(routes, "/acme/admin/x") == ("admin", "/acme/admin/x", "/acme/admin/x")
    assert resolved(routes, "/acme/.well-known/x")[0] == "acme"  # a leading dot is a name
    assert resolved(routes, "/acme/a.b/c")[0] == "acme"
    with pytest.raises(NotFound) as info:
        resolved(routes, "/other")
    assert info.value.code == "no_route"


@pytest.mark.parametrize(
    "path",
    [
        "/acme/admin;x", "/acme/admin;jsessionid=0123", "/acme/admin;/x", "/acme/admin;x/y",
        "/acme/admin%3Bx", "/acme/admin%3bx", "/acme/admin%3B",
        "/acme/orders;v=1/42",  # parameters anywhere, not only on a route boundary
        "/acme;x/admin",
    ],
)
def test_matrix_parameters_are_refused_by_default(path):
    error = refused(table(), path)
    assert "';' parameters" in error.message and "allow_matrix_params" in error.message


@pytest.mark.parametrize(
    "path",
    ["/acme/admin.", "/acme/admin%2E", "/acme/admin%2e", "/acme/admin..", "/acme/admin./x",
     "/acme/admin%2e/x", "/acme/x/y.", "/acme/admin/."[:-1] + "x."],
)
def test_segments_ending_in_a_dot_are_refused_by_default(path):
    error = refused(table(), path)
    assert "ending in '.'" in error.message and "allow_trailing_dots" in error.message


@pytest.mark.parametrize("path", ["/acme/...", "/acme/.../admin", "/acme/...;x", "/acme/..%2E"])
def test_segments_of_dots_only_are_refused_whatever_the_route_allows(path):
    allow_all = {"allow_matrix_params": True, "allow_trailing_dots": True}
    assert "dots only" in refused(table(allow_all, allow_all), path).message


def test_parameters_are_judged_by_the_route_reached_without_them():
    """/acme allows parameters, /acme/admin does not: /acme/admin;x is admin's, refused."""
    routes = table({"allow_matrix_params": True})
    assert "'admin'" in refused(routes, "/acme/admin;x").message
    refused(routes, "/acme/admin%3Bx")
    assert resolved(routes, "/acme/x;jsessionid=1/y") == (
        "acme", "/acme/x/y", "/acme/x;jsessionid=1/y"  # authorized without, sent with
    )


def test_allowed_parameters_are_authorized_as_the_path_the_upstream_acts_on():
    allow = {"allow_matrix_params": True}
    routes = table(allow, allow)
    assert resolved(routes, "/acme/admin;x") == ("admin", "/acme/admin", "/acme/admin;x")
    assert resolved(routes, "/acme/admin;x/") == ("admin", "/acme/admin/", "/acme/admin;x/")
    assert resolved(routes, "/acme;x/admin") == ("admin", "/acme/admin", "/acme;x/admin")
    assert resolved(routes, "/acme/;x/admin")[:2] == ("admin", "/acme/admin")  # '//' merged
    # '%3B' may be a separator or data: allowed when both readings give the same route
    assert resolved(routes, "/acme/x%3By/z") == ("acme", "/acme/x/z", "/acme/x%3By/z")
    assert "another route" in refused(routes, "/acme/admin%3Bx").message  # admin, or acme


def test_trailing_dots_are_judged_by_the_route_reached_without_them():
    routes = table({"allow_trailing_dots": True})
    assert "'admin'" in refused(routes, "/acme/admin.").message
    refused(routes, "/acme/admin%2E/x")
    assert resolved(routes, "/acme/readme./x") == ("acme", "/acme/readme/x", "/acme/readme./x")
    both = table({"allow_trailing_dots": True}, {"allow_trailing_dots": True})
    assert resolved(both, "/acme/admin..") == ("admin", "/acme/admin", "/acme/admin..")
    assert resolved(both, "/acme/admin./x") == ("admin", "/acme/admin/x", "/acme/admin./x")
    refused(both, "/acme/admin.;x")  # parameters are still not allowed


def test_case_insensitive_route_authorizes_and_forwards_the_lower_cased_path():
    ci = {"case_insensitive": True}
    routes = table(ci, ci)
    assert resolved(routes, "/ACME/Orders/1") == ("acme", "/acme/orders/1", "/acme/orders/1")
    assert resolved(routes, "/acme/Admin") == ("admin", "/acme/admin", "/acme/admin")
    assert resolved(routes, "/acme/%41DMIN/x") == ("admin", "/acme/admin/x", "/acme/admin/x")
    # escapes keep their one (upper-case) form
    assert resolved(routes, "/acme/%c3%89t%C3%A9")[2] == "/acme/%C3%89t%C3%A9"


@pytest.mark.parametrize("path", ["/acme/Admin", "/acme/ADMIN/x", "/acme/%41dmin", "/acme/aDmin"])
def test_case_insensitive_route_cannot_reach_what_a_case_sensitive_route_guards(path):
    routes = table({"case_insensitive": True})
    assert "lower-cased" in refused(routes, path).message
    # the same paths in lower case are admin's, as always
    assert resolved(routes, lower_path(normalise_path(path)))[0] == "admin"


def test_case_sensitive_route_cannot_take_what_a_case_insensitive_route_serves():
    """A case-sensitive catch-all must not take /ACME/x, which the case-insensitive
    upstream behind /acme would serve as /acme/x."""
    routes = parse_routes([
        {"name": "all", "upstream": UP, "path_prefix": "/", "account": "acme",
         "resource": "catalog"},
        {"name": "acme", "upstream": UP, "path_prefix": "/acme", "account": "acme",
         "resource": "orders", "case_insensitive": True},
    ])
    refused(routes, "/ACME/x")
    refused(routes, "/Acme")
    assert resolved(routes, "/acme/X") == ("acme", "/acme/x", "/acme/x")
    assert resolved(routes, "/Other/X") == ("all", "/Other/X", "/Other/X")  # untouched
    assert resolved(routes, "/AcmeX")[0] == "all"


def test_upper_case_that_only_a_case_sensitive_route_could_serve_is_no_route():
    routes = table({"case_insensitive": True})
    with pytest.raises(NotFound):
        resolved(routes, "/ACME/admin")  # acme would lower it into admin's path


def test_case_insensitive_routes_allow_trailing_dots_as_iis_does():
    flags = {"case_insensitive": True, "allow_trailing_dots": True}
    routes = table(flags, flags)
    assert resolved(routes, "/Acme/ADMIN./x") == ("admin", "/acme/admin/x", "/acme/admin./x")
    refused(table(flags), "/acme/Admin.")  # lower-cased and without the dot: admin's


def test_a_stripped_prefix_must_be_spelled_plainly():
    routes = parse_routes([
        {"name": "acme", "upstream": UP, "path_prefix": "/acme", "account": "acme",
         "resource": "catalog", "strip_prefix": True, "allow_matrix_params": True},
    ])
    route, _, forwarded = routes.resolve("GET", "h", "/acme/x;v=1")
    assert route.upstream_target(forwarded, "") == "/x;v=1"
    assert "strips its path prefix" in refused(routes, "/acme;v=1/x").message


def test_route_flags_are_validated():
    base = {"name": "r", "upstream": UP, "account": "acme", "resource": "orders"}
    for flag in ("allow_matrix_params", "allow_trailing_dots", "case_insensitive"):
        assert getattr(parse_routes([base]).routes[0], flag) is False  # default
        assert getattr(parse_routes([{**base, flag: True}]).routes[0], flag) is True
        with pytest.raises(ConfigError, match=rf"routes\[0\]\.{flag}: must be true or false"):
            parse_routes([{**base, flag: "yes"}])
    with pytest.raises(ConfigError, match=r"routes\[0\]\.case_insensitive: cannot be combined"):
        parse_routes([{**base, "case_insensitive": True, "allow_matrix_params": True}])
    ci = parse_routes([{**base, "path_prefix": "/Acme/Orders", "case_insensitive": True}])
    assert ci.routes[0].path_prefix == "/acme/orders"  # matched lower-cased


def test_lower_path_leaves_escapes_in_their_one_form():
    assert lower_path("/A/B%C3%89c/%2FX") == "/a/b%C3%89c/%2Fx"
    assert lower_path("/abc") == "/abc"


# A property over every combination of route flags: whatever resolve accepts, the
# upstream of the chosen route, reading the forwarded path the way the route says it
# does, acts on exactly the path that was authorized, and keygate routes that path to
# the same route. An independent oracle (regular expressions) does the upstream's reading.

RESOLVE_PIECES = ["acme", "admin", "Admin", "ACME", "x", ";x", ";", "%3B", "%3Bv", ".", "..",
                  "%2E", "%41", "%e2%82%ac", "a.b", ""]
resolve_paths = st.tuples(
    st.sampled_from(["", "/acme", "/Acme", "/acme/admin", "/acme/ADMIN"]),
    st.lists(st.lists(st.sampled_from(RESOLVE_PIECES), max_size=3).map("".join), max_size=4),
).map(lambda parts: parts[0] + "/" + "/".join(parts[1]))
FLAG_SETS = [
    {}, {"allow_matrix_params": True}, {"allow_trailing_dots": True},
    {"allow_matrix_params": True, "allow_trailing_dots": True},
    {"case_insensitive": True}, {"case_insensitive": True, "allow_trailing_dots": True},
]


def _as_upstream_reads(path: str, route, encoded_params: bool = True) -> str:
    if route.case_insensitive:  # letters, not the hex digits of escapes
        path = re.sub(r"(%[0-9A-F]{2})|([A-Z])", lambda m: m[1] or m[2].lower(), path)
    separators = ";|%3B" if encoded_params else ";"
    if route.allow_matrix_params:
        path = re.sub(rf"({separators})[^/]*", "", path)
    if route.allow_trailing_dots:
        path = re.sub(r"\.+(?=/|$)", "", path)
    trailing = path.endswith("/")
    segments = [s for s in path.split("/") if s]
    return "/" + "/".join(segments) + ("/" if trailing and segments else "")


@settings(max_examples=800, deadline=None)
@given(resolve_paths, st.sampled_from(FLAG_SETS), st.sampled_from(FLAG_SETS),
       st.sampled_from([None, {}, {"case_insensitive": True}]))
def test_the_upstream_acts_on_the_path_keygate_authorized(raw, acme, admin, catch_all):
    extra = [] if catch_all is None else [
        {"name": "all", "upstream": UP, "path_prefix": "/", "account": "acme",
         "resource": "catalog", **catch_all}]
    routes = table(acme, admin, *extra)
    try:
        path = normalise_path(raw)
        route, authorized, forwarded = routes.resolve("GET", "h", path)
    except (BadRequest, NotFound):
        return
    assert routes.match("GET", "h", authorized) is route
    if route.case_insensitive:
        assert forwarded == lower_path(path) and authorized == lower_path(authorized)
        # no reading of the path, in any case, belongs to another route
        assert routes.match("GET", "h", lower_path(authorized)) is route
    else:
        assert forwarded == path
    assert _as_upstream_reads(forwarded, route) == authorized
    if route.allow_matrix_params and "%3B" in forwarded:
        as_data = _as_upstream_reads(forwarded, route, encoded_params=False)
        assert routes.match("GET", "h", as_data) is route
    # what the route does not declare is not in the forwarded path at all
    if not route.allow_matrix_params:
        assert ";" not in forwarded and "%3B" not in forwarded
    if not route.allow_trailing_dots:  # (a dot inside a parameter is the parameter's)
        assert not re.search(r"\.(/|$)", re.sub(r"(;|%3B)[^/]*", "", forwarded))
    # a case-sensitive route never takes a path that a case-insensitive route would
    # serve once lower-cased
    if not route.case_insensitive and path != lower_path(path):
        lowered = re.sub(r"(%[0-9A-F]{2})|([A-Z])", lambda m: m[1] or m[2].lower(), authorized)
        other = routes.match("GET", "h", lowered)
        assert other is None or not other.case_insensitive or other is route
