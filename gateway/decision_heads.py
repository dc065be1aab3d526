"""How the decision port reads a head: :func:`gateway.http_head.read_request`, and in
one match for a connection whose heads keep their shape.

A front proxy asks about every request with the same header names in the same order
(nginx: its ``proxy_set_header`` lines and the client's headers; Traefik and Envoy
alike); only values change. So once a connection has sent two heads with the same
names, :class:`ShapedReader` reads its next heads with one pattern made for those
names (:class:`HeadShape`): the request line, then each name as sent, a colon,
whitespace and a value of the characters a value may hold, then the empty line. One
``fullmatch`` both checks the head and takes its values, where the general reading
finds every line, then checks the characters, the lines' count and the request line
in four more passes (about 25,000 fewer instructions per request, a tenth of it).

Why it reads exactly as :func:`~gateway.http_head.read_request` does: a head the shape
matches has a request line :func:`~gateway.http_head.read_head`'s pattern allows (the
same methods and target characters, not ``*``), field lines with a token name (the
shape's, which came from an accepted head) and a value without control characters or
bare CR/LF, and nothing else: so the pattern accepts it, and its fields are the ones
the general reading finds (the value after the whitespace that follows the colon, to
the line's end). The shape is used for heads of at most ``MAX_FIELD_LINE`` bytes only
(and its names are at most ``MAX_FIELDS``), where nothing but the framing and routing
fields can refuse a head that the pattern accepts; those are judged by the same
:func:`~gateway.http_head.field_verdict`. A head the shape does not match is read the
general way, so a malformed one gets the same refusal either way
(``tests/test_decision_server.py`` checks both readings byte by byte).

Bounded: shapes are made from names a client chose, so a connection learns at most
:data:`SHAPES_PER_CONNECTION`, a shape is only made for names sent twice in a row, and
the process keeps at most :data:`SHAPES` (compiling one costs as much as a few hundred
requests).
"""

from __future__ import annotations

import re

from .http_head import (
    MAX_FIELD_LINE,
    MAX_FIELDS,
    METHODS,
    Refusal,
    RequestHead,
    field_name,
    field_verdict,
    read_request,
    watched_at,
)

SHAPES = 256
SHAPES_PER_CONNECTION = 4
VERDICTS = 256  # per shape
VERDICT_ENTRY = 512

# read_head's request line, but for the target "*" (which only the general reading takes)
_REQUEST_LINE = (
    "(" + "|".join(re.escape(method.decode("ascii")) for method in METHODS)
    + r") (/[\x21\x22\x24-\x7e]*) HTTP/1\.([01])\r\n"
)
# a field's value: any character but a control character other than HTAB (in the
# decoded head: a byte a value may hold is HTAB, visible ASCII or obs-text, and obs-text
# decodes to a character above 0x7f, or to a surrogate standing for the byte)
_FIELD = r":[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)\r\n"


class HeadShape:
    """The pattern of heads with these field names, in this order; and the verdicts on
    their framing and routing fields, by version and those fields' values (bounded:
    the values are the client's)."""

    __slots__ = ("names", "pattern", "watched", "verdicts")

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.pattern = re.compile(
            _REQUEST_LINE + "".join(re.escape(name) + _FIELD for name in names) + r"\r\n")
        self.watched = watched_at(names)
        self.verdicts: dict[tuple[str, ...], tuple[int, bool] | Refusal] = {}

    def read(self, text: str, match: re.Match[str]) -> RequestHead | Refusal:
        """The request of a head this shape matched (``text``, decoded)."""
        groups = match.groups()
        minor = groups[2]
        values = groups[3:]
        key = (minor, *[values[index] for index, _ in self.watched])
        framing = self.verdicts.get(key)
        if framing is None:
            framing = self.judge(minor, values, key)
        if isinstance(framing, Refusal):
            return framing
        if " \r\n" in text or ("\t" in text and "\t\r\n" in text):  # whitespace at an end
            values = tuple([value.rstrip(" \t") for value in values])
        return (framing[0], framing[1], groups[0], groups[1], "HTTP/1." + minor,
                list(zip(self.names, values, strict=True)))

    def judge(self, minor: str, values: tuple[str, ...], key: tuple[str, ...]
              ) -> tuple[int, bool] | Refusal:
        framing = field_verdict(minor == "1", tuple([
            (name, values[index].encode("utf-8", "surrogateescape").lower())
            for index, name in self.watched]))
        verdicts = self.verdicts
        if sum(map(len, key)) <= VERDICT_ENTRY:
            if len(verdicts) >= VERDICTS:
                verdicts.clear()
            verdicts[key] = framing
        return framing


_SHAPES: dict[tuple[str, ...], HeadShape] = {}


def shape_of(names: tuple[str, ...]) -> HeadShape:
    """The shape for these names, made once per process (while fewer than
    :data:`SHAPES` are kept)."""
    shape = _SHAPES.get(names)
    if shape is None:
        shape = HeadShape(names)
        if len(_SHAPES) >= SHAPES:
            _SHAPES.clear()
        _SHAPES[names] = shape
    return shape


class ShapedReader:
    """:func:`~gateway.http_head.read_request` for one connection, reading heads shaped
    like its last ones in one match (a ``read`` for
    :class:`~gateway.framing.RequestReader`)."""

    __slots__ = ("shape", "last", "learned")

    def __init__(self, shape: HeadShape | None = None):
        self.shape = shape
        self.last: tuple[str, ...] | None = None  # the names of the last head read
        self.learned = 0

    def __call__(self, head: bytes) -> RequestHead | Refusal:
        shape = self.shape
        short = len(head) <= MAX_FIELD_LINE
        if shape is not None and short:
            text = head.decode("utf-8", "surrogateescape")
            match = shape.pattern.fullmatch(text)
            if match is not None:
                return shape.read(text, match)
        read = read_request(head)
        if short and not isinstance(read, Refusal) and self.learned < SHAPES_PER_CONNECTION:
            names = tuple(map(field_name, read[5]))
            if names == self.last and len(names) <= MAX_FIELDS:
                self.shape = shape_of(names)
                self.learned += 1
            self.last = names
        return read
