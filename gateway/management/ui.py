"""The admin page: the static files of ``gateway/ui/``, served by the management port at
``/admin/`` (``/``, ``/admin`` and ``/ui`` redirect there).

The page is plain HTML, CSS and JavaScript on keygate's own public API; nothing is
built at install time and nothing is fetched from another host. Its files are read
once, when the app is built, into a fixed table: a request can only name one of them,
so no path ever reaches the file system.

Every answer carries a strict Content-Security-Policy (no inline script or style, no
other origin, no framing), ``nosniff`` and ``no-referrer``; the files are revalidated
on every load (``no-cache`` with an ETag), so an upgrade of keygate is seen at once.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
UI_PREFIX = "/admin/"
# Canonical paths of the page's routes: they are not API operations (no OpenAPI entry).
UI_ROUTES = ("/", "/admin", "/ui", "/ui/", "/admin/", "/admin/{name}")

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "object-src 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


UI_FILES = web.AppKey("ui_files", dict)


def load_files(directory: Path = UI_DIR) -> dict[str, StaticFile]:
    """Every file of the page by name (one level: the page has no subdirectories)."""
    files = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        content_type = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        if content_type is None:
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[path.name] = StaticFile(body, content_type, etag)
    return files


def _answer(request: web.Request, name: str) -> web.Response:
    found = request.app[UI_FILES].get(name)
    if found is None:
        raise web.HTTPNotFound()
    headers = {**SECURITY_HEADERS, "ETag": found.etag, "Cache-Control": "no-cache"}
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if found.content_type.startswith("text/") or found.content_type.endswith(
        ("javascript", "+xml")) else None
    return web.Response(body=found.body, content_type=found.content_type, charset=charset,
                        headers=headers)


async def page(request: web.Request) -> web.Response:
    return _answer(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    return _answer(request, request.match_info["name"])


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound(UI_PREFIX, headers=SECURITY_HEADERS)


def install(app: web.Application) -> None:
    """The page's routes on the management app."""
    app[UI_FILES] = load_files()
    for path in ("/", "/admin", "/ui", "/ui/"):
        app.router.add_get(path, to_page)
    app.router.add_get(UI_PREFIX, page)
    app.router.add_get(UI_PREFIX + "{name}", asset)
