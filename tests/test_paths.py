"""Unit and property tests of ``gateway.routes.normalise_path`` (pure, no I/O).

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

from gateway.errors import BadRequest
from gateway.routes import normalise_path

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
