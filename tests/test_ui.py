"""The admin page as served (redirects, files, security headers), its files as shipped
(no inline script or style, nothing from another host, a label on every control, every
module import resolved, in the wheel's package data), and ``GET …/me``, the endpoint
it draws its controls from, checked against what the API really lets each role do.

The page's behaviour in a browser is tests/test_ui_browser.py's."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from gateway.management.ui import CONTENT_SECURITY_POLICY, UI_DIR, UI_ROUTES

ROOT = Path(__file__).resolve().parent.parent
PAGE = "/admin/"
UI_FILES = sorted(p.name for p in UI_DIR.iterdir() if p.is_file())


def me_path(account: str = "acme") -> str:
    return f"/api/v1/accounts/{account}/me"


def assert_error_shape(body: dict[str, Any], status: int, code: str | None = None) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message", "status", "requestId"} <= set(error)
    assert error["status"] == status
    if code is not None:
        assert error["code"] == code, error


# -- served ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/admin", "/ui", "/ui/"])
async def test_the_page_is_one_redirect_away(management, path):
    answer = await management.get(path, allow_redirects=False)
    assert answer.status == 302
    assert answer.headers["Location"] == PAGE
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_page_carries_a_strict_policy_and_security_headers(management):
    answer = await management.get(PAGE)
    assert answer.status == 200
    assert answer.content_type == "text/html" and answer.charset == "utf-8"
    csp = answer.headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["img-src"] == ["'self'", "data:"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Cache-Control"] == "no-cache"
    assert answer.headers["Server"] == "keygate"


@pytest.mark.parametrize("name", UI_FILES)
async def test_every_file_is_served_with_its_type_the_policy_and_an_etag(management, name):
    answer = await management.get(PAGE + name)
    assert answer.status == 200, name
    assert await answer.read() == (UI_DIR / name).read_bytes()
    expected = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                ".svg": "image/svg+xml"}[Path(name).suffix]
    assert answer.content_type == expected
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    etag = answer.headers["ETag"]
    again = await management.get(PAGE + name, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    head = await management.head(PAGE + name)
    assert head.status == 200 and await head.read() == b""


@pytest.mark.parametrize("path", [
    "/admin/nothing.js", "/admin/ui.py", "/admin/..%2fmanagement%2fui.py",
    "/admin/%2e%2e/settings.py", "/admin/..%5c..%5cpyproject.toml", "/admin/.hidden",
    "/admin/index.html%00.js", "/admin/app.js/", "/admin/" + "a" * 5000, "/admin/%ff",
    "/admin/%2e%2e%2f%2e%2e%2fpyproject.toml",
])
async def test_nothing_but_the_pages_files_is_served(management, path):
    answer = await management.get(path, allow_redirects=False)
    assert answer.status in (404, 400), (path, answer.status)
    body = await answer.json()
    assert_error_shape(body, answer.status)
    text = str(body)
    assert "import" not in text and "[tool" not in text  # no file content leaked


async def test_the_page_is_not_writable(management):
    answer = await management.post(PAGE, data=b"x")
    assert answer.status == 405
    assert_error_shape(await answer.json(), 405)


async def test_the_one_time_link_page_has_a_strict_policy_and_its_stylesheet(
    management, admin_key
):
    """No inline style or script on the link's page either: its policy has no
    'unsafe-inline', and its stylesheet is one of the page's files, found from the link."""
    made = await management.post("/api/v1/accounts/acme/keys", headers=admin_key.headers,
                                 json={"label": "linked", "roles": ["orders-reader"],
                                       "delivery": "link"})
    assert made.status == 201, await made.text()
    link = (await made.json())["tokenLink"]
    path = link[link.index("/api/v1/token-links/"):]
    shown = await management.get(path, headers={"Accept": "text/html"})
    opened = await management.post(path, data={}, headers={"Accept": "text/html"})
    for answer in (shown, opened):
        assert answer.status == 200 and answer.content_type == "text/html"
        csp = answer.headers["Content-Security-Policy"]
        directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        assert directives["default-src"] == ["'none'"]
        assert directives["style-src"] == ["'self'"]
        assert "script-src" not in directives  # default-src 'none': no script at all
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        markup = Markup()
        markup.feed(await answer.text())
        assert markup.styles == 0 and not markup.scripts and not markup.inline_attributes
        sheets = [u for u in markup.urls if u.endswith(".css")]
        assert sheets == ["../../../admin/link.css"]
        resolved = urljoin(path, sheets[0])
        assert resolved == PAGE + "link.css"
        sheet = await management.get(resolved)
        assert sheet.status == 200 and sheet.content_type == "text/css"


# -- the files -------------------------------------------------------------------------
class Markup(HTMLParser):
    """Everything of the HTML a policy or an accessibility rule cares about."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.script_text: list[str] = []
        self.styles = 0
        self.inline_attributes: list[str] = []
        self.urls: list[str] = []
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.ids: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "id" in values and values["id"]:
            self.ids.append(values["id"])
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.inline_attributes.append(f"<{tag} {name}>")
            if name in ("src", "href", "action", "formaction", "data") and value:
                self.urls.append(value)
        if tag == "script":
            self.scripts.append(values)
            self._in_script = True
        elif tag == "style":
            self.styles += 1
        elif tag in ("input", "select", "textarea"):
            self.controls.append(values)
        elif tag == "label" and values.get("for"):
            self.label_for.add(values["for"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def parsed() -> Markup:
    markup = Markup()
    markup.feed((UI_DIR / "index.html").read_text(encoding="utf-8"))
    return markup


def test_the_html_has_no_inline_script_or_style():
    markup = parsed()
    assert markup.scripts, "the page loads its script from a file"
    for script in markup.scripts:
        assert script.get("src"), "every script has a src"
    assert not markup.script_text, "no inline script"
    assert markup.styles == 0, "no <style> element"
    assert not markup.inline_attributes, markup.inline_attributes


def test_nothing_is_fetched_from_another_host():
    markup = parsed()
    for url in markup.urls:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:)?//", url, re.I), url
        assert not url.lower().startswith(("javascript:", "data:text/html")), url
    for name in UI_FILES:
        text = (UI_DIR / name).read_text(encoding="utf-8")
        # the SVG namespace is a name, not a fetch
        text = text.replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://", text), name
        assert "@import" not in text, name
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), name


def test_every_control_of_the_html_has_a_label_and_ids_are_unique():
    markup = parsed()
    assert len(markup.ids) == len(set(markup.ids))
    for control in markup.controls:
        if control.get("type") == "hidden":
            continue
        labelled = control.get("id") in markup.label_for or control.get("aria-label")
        assert labelled, control


SCRIPT_SINKS = re.compile(
    r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\s*\(|new Function|"
    r"setAttribute\(\s*['\"](style|on)|\.style\.|localStorage|sessionStorage|document\.cookie")


@pytest.mark.parametrize("name", [n for n in UI_FILES if n.endswith(".js")])
def test_scripts_build_the_page_from_text_and_store_nothing(name):
    """Values from the API become text nodes, never markup (a label may be
    ``<img onerror=…>``); no inline style is set; nothing is kept in the browser's
    storage, and the cookie is not for scripts to read."""
    text = (UI_DIR / name).read_text(encoding="utf-8")
    found = SCRIPT_SINKS.findall(text)
    assert not found, (name, found)


def test_every_module_import_is_a_shipped_file():
    for name in UI_FILES:
        if not name.endswith(".js"):
            continue
        text = (UI_DIR / name).read_text(encoding="utf-8")
        for target in re.findall(r"""from\s+["']([^"']+)["']""", text):
            assert target.startswith("./"), (name, target)
            assert (UI_DIR / target[2:]).is_file(), (name, target)


def test_the_wheel_ships_the_page():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "gateway.ui" in tool["packages"]
    patterns = tool["package-data"]["gateway.ui"]
    for name in UI_FILES:
        assert any(Path(name).match(pattern) for pattern in patterns), name


def test_the_ui_routes_are_all_the_page_has():
    """tests/test_openapi.py leaves these out of "every route is documented"."""
    assert set(UI_ROUTES) == {"/", "/admin", "/ui", "/ui/", "/admin/", "/admin/{name}"}


# -- GET /accounts/{account}/me --------------------------------------------------------
EVERY_ROLE = ["owner", "user-admin-restricted", "api-keys-viewer", "orders-reader",
              "orders-writer", "catalog-reader", "suspended-partner", "policy-admin"]


@pytest.mark.parametrize("roles,permissions", [
    (["owner"], {"view": True, "edit": True, "renewToken": True, "editSettings": True}),
    (["user-admin-restricted"],
     {"view": True, "edit": True, "renewToken": True, "editSettings": True}),
    (["api-keys-viewer"],
     {"view": True, "edit": False, "renewToken": False, "editSettings": False}),
    (["api-keys-viewer", "orders-writer"],
     {"view": True, "edit": False, "renewToken": False, "editSettings": False}),
])
async def test_me_says_what_the_policy_allows(management, make_key, gateway, roles,
                                              permissions):
    key = await make_key("acme", roles)
    answer = await management.get(me_path(), headers=key.headers)
    assert answer.status == 200, await answer.text()
    me = await answer.json()
    assert me["appKey"] == key.app_key and me["owner"] == "acme" and me["account"] == "acme"
    assert sorted(me["roles"]) == sorted(roles)
    assert me["permissions"] == permissions
    assert me["definedRoles"] == sorted(gateway.policy.roles)
    assert me["authenticatedBy"] == "headers"
    assert key.token not in await answer.text()


async def test_the_role_picker_offers_exactly_what_creating_a_key_accepts(
    management, make_key
):
    """assignableRoles is not a guess: for every role the policies define, creating a key
    with it succeeds exactly when /me offers it."""
    for caller_roles in (["owner"], ["user-admin-restricted"]):
        caller = await make_key("acme", caller_roles)
        offered = (await (await management.get(me_path(), headers=caller.headers)).json())[
            "assignableRoles"]
        for role in EVERY_ROLE:
            created = await management.post("/api/v1/accounts/acme/keys", headers=caller.headers,
                                            json={"label": "probe", "roles": [role]})
            assert (created.status == 201) == (role in offered), (caller_roles, role,
                                                                    created.status)
            if created.status != 201:
                assert_error_shape(await created.json(), 403, "escalation_refused")
    assert "owner" not in offered and "user-admin-restricted" not in offered
    assert {"orders-reader", "orders-writer", "catalog-reader"} <= set(offered)


async def test_me_refuses_keys_with_no_part_in_api_keys(management, make_key):
    reader = await make_key("acme", ["orders-reader"])
    answer = await management.get(me_path(), headers=reader.headers)
    assert answer.status == 403
    assert_error_shape(await answer.json(), 403, "not_permitted")


@pytest.mark.parametrize("headers,status,code", [
    ({}, 401, "missing_credentials"),
    ({"X-API-AppKey": "kgk-acme-AAAAAAAAAA", "X-API-AppToken": "kgt_wrong"}, 401,
     "invalid_credentials"),
    ({"X-API-AppKey": "k" * 5000, "X-API-AppToken": "t"}, 400, "malformed_credentials"),
    ({"Cookie": "keygate_session=not.a.jwt"}, 401, None),
    ({"Authorization": "Bearer " + "a" * 3000}, 401, None),
])
async def test_me_is_authenticated_like_every_endpoint(management, headers, status, code):
    answer = await management.get(me_path(), headers=headers)
    assert answer.status == status
    assert_error_shape(await answer.json(), status, code)


@pytest.mark.parametrize("account", ["ACME", "a" * 64, "-acme", "ac me", "acme%0a"])
async def test_me_refuses_a_bad_account_before_credentials(management, admin_key, account):
    answer = await management.get(f"/api/v1/accounts/{account}/me", headers=admin_key.headers)
    assert answer.status in (400, 404)
    assert_error_shape(await answer.json(), answer.status)


async def test_me_in_another_account_is_the_grant_there(management, make_key, admin_key):
    partner = await make_key("beta", ["user-admin-restricted"])
    # no grant in acme yet
    answer = await management.get(me_path("acme"), headers=partner.headers)
    assert answer.status == 403
    assert_error_shape(await answer.json(), 403, "no_grant")
    granted = await management.post("/api/v1/accounts/acme/external-keys",
                                    headers=admin_key.headers,
                                    json={"appKey": partner.app_key, "roles": ["api-keys-viewer"]})
    assert granted.status == 201, await granted.text()
    me = await (await management.get(me_path("acme"), headers=partner.headers)).json()
    assert me["owner"] == "beta" and me["account"] == "acme"
    assert me["roles"] == ["api-keys-viewer"]
    assert me["permissions"] == {"view": True, "edit": False, "renewToken": False,
                                 "editSettings": False}


async def test_me_with_the_session_cookie(management, admin_key):
    login = await management.post("/api/v1/auth/login", json={
        "appKey": admin_key.app_key, "appToken": admin_key.token, "cookie": True})
    assert login.status == 200
    # the cookie carries the session; the body does not (no script reads it from there)
    assert "token" not in await login.json()
    session = login.cookies["keygate_session"].value
    answer = await management.get(me_path(), headers={"Cookie": f"keygate_session={session}"})
    assert answer.status == 200
    me = await answer.json()
    assert me["authenticatedBy"] == "cookie" and me["appKey"] == admin_key.app_key
    assert session not in await answer.text()


async def test_me_is_in_the_openapi_document_and_the_page_is_not(management):
    document = await (await management.get("/api/v1/openapi.json")).json()
    operation = document["paths"]["/api/v1/accounts/{account}/me"]["get"]
    assert operation["operationId"] == "me"
    assert set(operation["x-keygate-permission"]["actions"]) == {
        "view", "edit", "renew-token", "edit-settings"}
    assert not any(path == "/" or path.startswith(("/ui", "/admin"))
                   for path in document["paths"])
