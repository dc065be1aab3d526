"""The admin page in Debian's Chromium (python playwright, never a downloaded browser),
on a keygate served in a thread over the test run's store (the private redis-server, or
memory://): every journey of the
API Keys page, as an administrator clicks through it, checked against the store and
the proxy port.

Every test gets a fresh browser context and account; every page is watched for
requests to another host, Content-Security-Policy violations and script errors (see
ui_site.Watch). Screenshots of each tab at 1280×800 and 390×844 go to tests/artifacts/.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from ui_site import (
    CHROMIUM_ARGS,
    Made,
    Site,
    Watch,
    chromium_path,
    fresh_account,
    site,
    sync_playwright,
)

from gateway.renewal import add_months
from gateway.settings import shipped_default
from gateway.store import CLI_ACTOR, KeyQuery

try:
    from playwright.sync_api import expect
except ImportError:  # ui_site skips the tests with a clear message
    expect = None

ARTIFACTS = Path(__file__).parent / "artifacts"
SIZES = [(1280, 800), (390, 844)]
TABS = ["Generated keys", "External keys", "Settings", "Audit"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[Site]:
    with site(redis_url) as running:
        yield running


class Browsing:
    """A fresh context and page, watched; checked when the test ends."""

    def __init__(self, browser: Any, served: Site, **options: Any):
        self.served = served
        self.context = browser.new_context(locale="en-US", timezone_id="UTC",
                                           **{"viewport": {"width": 1280, "height": 800},
                                              **options})
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.watch = Watch(served.management)
        self.watch.attach(self.page)
        self.api_urls: list[str] = []
        self.page.on("request", lambda r: self.api_urls.append(r.url)
                     if "/api/v1/" in r.url else None)

    def close(self) -> None:
        self.context.close()
        self.watch.check()


@pytest.fixture
def open_page(browser, served) -> Iterator[Any]:
    opened: list[Browsing] = []

    def make(**options: Any) -> Browsing:
        browsing = Browsing(browser, served, **options)
        opened.append(browsing)
        return browsing

    yield make
    for browsing in opened:
        browsing.close()


def sign_in(page: Any, served: Site, key: Made, account: str = "") -> None:
    page.goto(served.management + "/")
    page.get_by_label("API key", exact=True).fill(key.app_key)
    page.get_by_label("API token", exact=True).fill(key.token)
    if account:
        page.get_by_label(re.compile("^Account")).fill(account)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who-key")).to_have_text(key.app_key)


def generated_row(page: Any, app_key: str) -> Any:
    return page.locator("#panel-generated tbody tr").filter(has_text=app_key)


def external_row(page: Any, app_key: str) -> Any:
    return page.locator("#panel-external tbody tr").filter(has_text=app_key)


def dialog(page: Any) -> Any:
    return page.locator("dialog[open]")


def storage(page: Any) -> str:
    return page.evaluate("() => JSON.stringify([Object.entries(localStorage), "
                         "Object.entries(sessionStorage), document.cookie])")


# -- sign-in ---------------------------------------------------------------------------
def test_sign_in_keeps_the_token_out_of_the_page_and_sign_out_ends_it(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    browsing = open_page()
    page = browsing.page
    page.goto(served.management + "/admin")
    assert page.url == served.management + "/admin/"
    # a wrong token: the API's message, in place
    page.get_by_label("API key", exact=True).fill(owner.app_key)
    # (its last character changed: one that is "x" already would make it right)
    wrong = owner.token[:-1] + ("y" if owner.token.endswith("x") else "x")
    page.get_by_label("API token", exact=True).fill(wrong)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("invalid API credentials")
    assert page.locator("#sign-in-error").get_attribute("role") == "alert"
    # disabled while the request ran, the button has the focus back (not the page's start)
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()

    sign_in(page, served, owner)
    expect(page.locator("#who-account")).to_have_text(account)
    cookie = next(c for c in browsing.context.cookies() if c["name"] == "keygate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain HTTP here; behind TLS it is Secure
    # neither the token nor the session is anywhere a script could read it
    kept = storage(page)
    assert kept == '[[],[],""]', kept
    html = page.content()
    assert owner.token not in html and cookie["value"] not in html
    assert page.get_by_label("API token", exact=True).input_value() == ""

    page.reload()  # the fragment names the account and tab: still signed in
    expect(page.locator("#who-key")).to_have_text(owner.app_key)
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#sign-in-notice")).to_have_text("You are signed out.")
    assert not [c for c in browsing.context.cookies() if c["name"] == "keygate_session"]
    # ended on the server, not only forgotten by the browser: the page's sign-out
    # carries the CSRF proof that a cookie-authenticated sign-out needs
    status, body = served.request(served.management, "GET", f"/api/v1/accounts/{account}/me",
                                  {"Cookie": f"keygate_session={cookie['value']}"})
    assert status == 401 and body is not None
    assert body["error"]["code"] == "session_ended", body
    assert page.locator("#panel-generated tbody").count() == 0  # nothing left behind

    # signed out in another tab: the cookie is gone for this one too, and it says so
    sign_in(page, served, owner)
    other = browsing.context.new_page()
    other.goto(page.url)
    other.get_by_role("button", name="Sign out").click()
    expect(other.locator("#sign-in-notice")).to_have_text("You are signed out.")
    other.close()
    page.get_by_role("tab", name="Audit").click()
    expect(page.locator("#sign-in-notice")).to_contain_text("you signed out in another tab")
    expect(page.get_by_label("API key", exact=True)).to_be_focused()


def test_a_key_without_any_api_keys_permission_is_told_so(open_page, served):
    account = fresh_account()
    reader = served.make_key(account, ["orders-reader"])
    page = open_page().page
    page.goto(served.management + "/admin/")
    page.get_by_label("API key", exact=True).fill(reader.app_key)
    page.get_by_label("API token", exact=True).fill(reader.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("do not allow")
    expect(page.locator("#workspace")).to_be_hidden()


def test_an_external_key_signs_in_to_the_account_that_granted_it_roles(open_page, served):
    account, partner_account = fresh_account(), fresh_account()
    served.make_key(account, ["owner"], label="the owner")
    partner = served.make_key(partner_account, ["orders-reader"], label="partner")
    served.call(lambda gateway: gateway.store.add_grant(account, partner.app_key, "auditor",
                                                        ["api-keys-viewer"], CLI_ACTOR))
    page = open_page().page
    page.goto(served.management + "/admin/")
    page.get_by_label(re.compile("^Account")).fill("Not An Account")
    page.get_by_label("API key", exact=True).fill(partner.app_key)
    page.get_by_label("API token", exact=True).fill(partner.token)
    page.get_by_role("button", name="Sign in").click()  # the browser checks the pattern
    expect(page.locator("#workspace")).to_be_hidden()
    # and says which (the browser's bubble shows the title under "Please match the
    # requested format."; a screen reader reads it as the field's description)
    expect(page.get_by_label(re.compile("^Account"))).to_have_accessible_description(
        re.compile("lowercase letters, digits and inner hyphens"))
    sign_in(page, served, partner, account=account)
    expect(page.locator("#who-account")).to_have_text(account)
    expect(page.locator("#panel-generated")).to_contain_text("the owner")
    expect(page.get_by_role("button", name="Generate key")).to_have_count(0)


# -- generated keys --------------------------------------------------------------------
def test_generate_a_key_and_use_its_token_through_the_proxy(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    browsing = open_page()
    browsing.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                       origin=served.management)
    page = browsing.page
    sign_in(page, served, owner)
    label = '<img src=x onerror="window.pwned=1"> orders bot'
    page.get_by_role("button", name="Generate key").click()
    generate = dialog(page)
    generate.get_by_label("Label").fill(label)
    roles = [c.get_attribute("value") for c in generate.locator('input[name="roles"]').all()]
    assert "owner" in roles and "orders-reader" in roles  # an owner may give every role
    generate.get_by_label("orders-reader", exact=True).check()
    generate.get_by_role("button", name="Generate").click()
    expect(generate).to_contain_text("it will not be shown again")
    # the field has the focus, and the warning is read with it
    expect(generate.get_by_label("API token")).to_be_focused()
    expect(generate.get_by_label("API token")).to_have_accessible_description(
        re.compile(r"A token was made for API key \S+\. Copy the token now .* not be shown again"))
    token = generate.get_by_label("API token").input_value()
    assert token.startswith("kgt_")
    generate.get_by_role("button", name="Copy").click()
    expect(generate.get_by_role("status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == token
    app_key = re.search(r"API key (\S+?)\.", generate.inner_text()).group(1)
    generate.get_by_role("button", name="Done").click()
    expect(page.locator("dialog")).to_have_count(0)
    assert token not in page.content()  # the dialog, and the token with it, is gone

    row = generated_row(page, app_key)
    expect(row).to_contain_text(label)  # shown as typed, not run
    assert page.evaluate("window.pwned") is None
    expect(row).to_contain_text("orders-reader")
    assert served.through_proxy(account, app_key, token) == (200, "")

    # a one-time link instead: the link reveals a token that works
    page.get_by_role("button", name="Generate key").click()
    generate = dialog(page)
    generate.get_by_label("Label").fill("linked")
    generate.get_by_label("catalog-reader", exact=True).check()
    generate.get_by_label("orders-reader", exact=True).check()
    generate.get_by_role("radio", name=re.compile("one-time link")).check()
    generate.get_by_role("button", name="Generate").click()
    expect(generate).to_contain_text("reveals the token once")
    link = generate.get_by_label("One-time link", exact=True).input_value()
    assert link.startswith(served.management + "/api/v1/token-links/")
    generate.get_by_role("button", name="Done").click()
    status, opened = served.request(served.management, "POST", link[len(served.management):])
    assert status == 200 and opened is not None
    assert served.through_proxy(account, opened["appKey"], opened["appToken"]) == (200, "")


def test_the_one_time_link_page_is_styled_under_a_strict_policy(open_page, served):
    """The link's page loads its stylesheet as a file: a policy with no 'unsafe-inline',
    and no violation of it in the browser (ui_site.Watch)."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    status, made = served.request(served.management, "POST", f"/api/v1/accounts/{account}/keys",
                                  {"X-API-AppKey": owner.app_key, "X-API-AppToken": owner.token},
                                  {"label": "linked", "roles": ["orders-reader"],
                                   "delivery": "link"})
    assert status == 201 and made is not None
    page = open_page().page
    styles: list[str] = []
    page.on("request", lambda r: styles.append(r.url) if r.resource_type == "stylesheet" else None)
    answer = page.goto(made["tokenLink"])
    assert answer is not None and answer.status == 200
    csp = answer.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "style-src 'self'" in csp, csp
    assert styles == [served.management + "/admin/link.css"]
    # the stylesheet applied: the page's column and the button's colour are its own
    assert page.evaluate("getComputedStyle(document.body).maxWidth") == "640px"
    page.get_by_role("button", name="Reveal the token").click()
    token = page.locator("code").nth(1).inner_text()
    assert page.evaluate("getComputedStyle(document.body).maxWidth") == "640px"
    assert served.through_proxy(account, made["appKey"], token)[0] == 200


def renew_later(page: Any, app_key: str) -> str:
    generated_row(page, app_key).get_by_role("button", name="Renew token").click()
    renew = dialog(page)
    expect(renew.get_by_role("radio", name=re.compile("^Later"))).to_be_checked()
    assert page.evaluate(UNLABELLED) == []
    renew.get_by_role("button", name="Renew token").click()
    token = renew.get_by_label("API token").input_value()
    renew.get_by_role("button", name="Done").click()
    return token


def test_renew_later_then_delete_the_old_token(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="integration")
    page = open_page().page
    sign_in(page, served, owner)
    new_token = renew_later(page, key.app_key)
    row = generated_row(page, key.app_key)
    expect(row).to_contain_text("Renewal pending")
    expect(row).to_contain_text("Old token: still works")
    expect(row).to_contain_text("New token: issued")
    # both work until the old one is deleted
    assert served.through_proxy(account, key.app_key, key.token)[0] == 200
    assert served.through_proxy(account, key.app_key, new_token)[0] == 200
    row.get_by_role("button", name="Delete old token").click()
    confirm = dialog(page)
    expect(confirm).to_contain_text("Integrations still using the old token will stop working")
    confirm.get_by_role("button", name="Delete old token").click()
    expect(row).not_to_contain_text("Renewal pending")
    expect(row.get_by_role("button", name="Renew token")).to_be_visible()
    assert served.through_proxy(account, key.app_key, key.token) == (401, "invalid_credentials")
    assert served.through_proxy(account, key.app_key, new_token)[0] == 200


def test_a_pending_renewal_says_what_each_token_does_as_the_key_status_changes(
        open_page, served):
    """Both tokens of a pending renewal work while the key is active and are both refused
    while it is not: the row says so, as the proxy answers."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="switched off mid-renewal")
    page = open_page().page
    sign_in(page, served, owner)
    new_token = renew_later(page, key.app_key)
    row = generated_row(page, key.app_key)
    pending = row.locator(".pending li")
    expect(pending).to_have_text([
        "Old token: still works, until you delete it",
        re.compile(r"^New token: issued .+, works$"),
    ])

    row.get_by_role("button", name="Deactivate").click()
    dialog(page).get_by_role("button", name="Deactivate key").click()
    expect(row).to_contain_text("Inactive")
    expect(pending).to_have_text([
        "Old token: refused while the key is inactive",
        re.compile(r"^New token: issued .+, refused while the key is inactive$"),
    ])
    expect(row).not_to_contain_text("works")
    assert served.through_proxy(account, key.app_key, key.token) == (401, "key_inactive")
    assert served.through_proxy(account, key.app_key, new_token) == (401, "key_inactive")

    row.get_by_role("button", name="Activate").click()
    expect(pending).to_have_text([
        "Old token: still works, until you delete it",
        re.compile(r"^New token: issued .+, works$"),
    ])
    assert served.through_proxy(account, key.app_key, key.token)[0] == 200
    assert served.through_proxy(account, key.app_key, new_token)[0] == 200


def test_undo_a_renewal_on_another_key(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-writer"], label="other integration")
    page = open_page().page
    sign_in(page, served, owner)
    new_token = renew_later(page, key.app_key)
    row = generated_row(page, key.app_key)
    row.get_by_role("button", name="Undo").click()
    confirm = dialog(page)
    expect(confirm).to_contain_text("The new token stops working now")
    confirm.get_by_role("button", name="Undo renewal").click()
    expect(row).not_to_contain_text("Renewal pending")
    assert served.through_proxy(account, key.app_key, new_token) == (401, "invalid_credentials")
    assert served.through_proxy(account, key.app_key, key.token)[0] == 200
    # renewing Now replaces the token at once
    generated_row(page, key.app_key).get_by_role("button", name="Renew token").click()
    renew = dialog(page)
    renew.get_by_role("radio", name=re.compile("^Now")).check()
    renew.get_by_role("button", name="Renew token").click()
    replaced = renew.get_by_label("API token").input_value()
    renew.get_by_role("button", name="Done").click()
    assert served.through_proxy(account, key.app_key, key.token)[0] == 401
    assert served.through_proxy(account, key.app_key, replaced)[0] == 200


def test_renewing_the_signed_in_keys_own_token_now_shows_the_new_one(open_page, served):
    """The session came from the old token, which stops at once: the new token stays on
    screen until Done, and only then is the administrator sent back to sign in."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    page = open_page().page
    sign_in(page, served, owner)
    generated_row(page, owner.app_key).get_by_role("button", name="Renew token").click()
    renew = dialog(page)
    renew.get_by_role("radio", name=re.compile("^Now")).check()
    renew.get_by_role("button", name="Renew token").click()
    token = renew.get_by_label("API token")
    expect(token).to_be_visible()
    page.wait_for_timeout(500)  # where the table was read again at once, and refused
    expect(token).to_be_visible()
    new_token = token.input_value()
    assert served.through_proxy(account, owner.app_key, new_token)[0] == 200
    renew.get_by_role("button", name="Done").click()
    expect(page.locator("#sign-in-notice")).to_contain_text("the key's token was renewed")
    sign_in(page, served, Made(owner.app_key, new_token))


def test_edit_deactivate_then_delete(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="before")
    page = open_page().page
    sign_in(page, served, owner)
    row = generated_row(page, key.app_key)
    row.get_by_role("button", name="Edit").click()
    edit = dialog(page)
    assert page.evaluate(UNLABELLED) == []
    edit.get_by_label("Label").fill("after")
    edit.get_by_label("catalog-reader", exact=True).check()
    edit.get_by_role("button", name="Save").click()
    expect(row).to_contain_text("after")
    expect(row).to_contain_text("catalog-reader")
    record = served.key(account, key.app_key)
    assert record.label == "after" and set(record.roles) == {"orders-reader", "catalog-reader"}

    row.get_by_role("button", name="Deactivate").click()
    confirm = dialog(page)
    expect(confirm).to_contain_text("Integrations that use this key will stop working")
    confirm.get_by_role("button", name="Cancel").click()
    assert served.key(account, key.app_key).status == "active"
    row.get_by_role("button", name="Deactivate").click()
    dialog(page).get_by_role("button", name="Deactivate key").click()
    expect(row).to_contain_text("Inactive")
    assert served.through_proxy(account, key.app_key, key.token) == (401, "key_inactive")
    row.get_by_role("button", name="Activate").click()
    expect(row.get_by_role("button", name="Deactivate")).to_be_visible()
    assert served.through_proxy(account, key.app_key, key.token)[0] == 200

    row.get_by_role("button", name="Delete").click()
    confirm = dialog(page)
    delete = confirm.get_by_role("button", name="Delete key")
    expect(delete).to_be_disabled()
    assert page.evaluate(UNLABELLED) == []
    confirm.get_by_label("I understand that this action cannot be undone").check()
    expect(delete).to_be_enabled()
    delete.click()
    expect(generated_row(page, key.app_key)).to_have_count(0)
    assert served.key(account, key.app_key) is None


def test_search_filters_sorting_paging_and_renewal_markers_are_the_servers(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    for n in range(22):
        served.make_key(account, ["orders-reader"], label=f"bulk {n:02d}")
    special = served.make_key(account, ["catalog-reader"], label="alpha special")
    inactive = served.make_key(account, ["orders-reader"], label="sleeping")

    async def deactivate(gateway: Any) -> None:
        await gateway.store.update_key(account, inactive.app_key, actor=CLI_ACTOR,
                                       status="inactive")

    served.call(deactivate)
    orange = served.make_key(account, ["orders-reader"], label="aging", age_days=100)
    red = served.make_key(account, ["orders-reader"], label="ancient", age_days=200)
    browsing = open_page()
    page = browsing.page
    sign_in(page, served, owner)
    panel = page.locator("#panel-generated")
    summary = panel.locator(".pager .summary")
    expect(summary).to_have_text("Page 1 of 2 · 27 keys")
    expect(panel.locator("tbody tr")).to_have_count(20)
    panel.get_by_role("button", name="Next page").click()
    expect(summary).to_have_text("Page 2 of 2 · 27 keys")
    expect(panel.locator("tbody tr")).to_have_count(7)
    # the last page: "Next page" is disabled, and the focus is on the other button
    expect(panel.get_by_role("button", name="Previous page")).to_be_focused()
    panel.get_by_role("button", name="Previous page").click()
    expect(summary).to_have_text("Page 1 of 2 · 27 keys")
    expect(panel.get_by_role("button", name="Next page")).to_be_focused()
    panel.get_by_label("Per page").select_option("10")
    expect(summary).to_have_text("Page 1 of 3 · 27 keys")

    panel.get_by_label("Search label or key").fill("SPECIAL")
    expect(panel.locator("tbody tr")).to_have_count(1)
    expect(generated_row(page, special.app_key)).to_be_visible()
    panel.get_by_label("Search label or key").fill(inactive.app_key[-6:])
    expect(generated_row(page, inactive.app_key)).to_be_visible()
    expect(panel.locator("tbody tr")).to_have_count(1)
    panel.get_by_label("Search label or key").fill("")
    expect(summary).to_have_text("Page 1 of 3 · 27 keys")

    panel.get_by_label("Status").select_option("inactive")
    expect(summary).to_have_text("Page 1 of 1 · 1 key")
    expect(generated_row(page, inactive.app_key)).to_be_visible()
    panel.get_by_label("Status").select_option("")
    panel.get_by_label("Role").select_option("catalog-reader")
    expect(summary).to_have_text("Page 1 of 1 · 1 key")
    expect(generated_row(page, special.app_key)).to_be_visible()
    panel.get_by_label("Role").select_option("")

    for alert, key, months in (("orange", orange, 3), ("red", red, 6)):
        panel.get_by_label("Renewal alert").select_option(alert)
        expect(summary).to_have_text("Page 1 of 1 · 1 key")
        marker = generated_row(page, key.app_key).locator(f'[data-alert="{alert}"]')
        record = served.key(account, key.app_key)
        since = add_months(datetime.fromtimestamp(record.token_created / 1000, UTC), months)
        expected = f"since {since.strftime('%b')} {since.day}, {since.year}"
        title = marker.get_attribute("title")
        assert expected in title, (title, expected)
        # and in words on the page, not only in the tooltip
        words = "Renew now" if alert == "red" else "Renew soon"
        expect(marker.locator(".marker-text")).to_have_text(f"{words} · {expected}")
    panel.get_by_label("Renewal alert").select_option("")
    expect(summary).to_have_text("Page 1 of 3 · 27 keys")

    label_header = panel.locator('th[data-sort="label"]')
    label_header.get_by_role("button").click()
    expect(label_header).to_have_attribute("aria-sort", "ascending")
    # the arrow is drawn, not read: the column and its button are named by the title
    expect(label_header.get_by_role("button")).to_have_accessible_name("Label")
    expect(panel.get_by_role("columnheader", name="Created", exact=True)).to_have_count(1)
    expect(panel.locator("tbody tr").first).to_contain_text("aging")
    label_header.get_by_role("button").click()
    expect(label_header).to_have_attribute("aria-sort", "descending")
    expect(panel.locator("tbody tr").first).to_contain_text("sleeping")

    # the server did it all: the page asked with the list API's parameters
    asked = " ".join(browsing.api_urls)
    for parameter in ("q=SPECIAL", "status=inactive", "role=catalog-reader", "renewal=orange",
                      "renewal=red", "sort=label", "order=asc", "order=desc", "page=2",
                      "perPage=10"):
        assert parameter in asked, parameter


def since_words(app_key: str, account: str, served: Site, months: int) -> str:
    """"since Mon D, YYYY": the day a key's renewal alert began, as the page writes it."""
    record = served.key(account, app_key)
    since = add_months(datetime.fromtimestamp(record.token_created / 1000, UTC), months)
    return f"since {since.strftime('%b')} {since.day}, {since.year}"


@pytest.mark.parametrize("width,height", SIZES)
def test_the_renewal_alert_says_since_when_in_words(open_page, served, width, height):
    """Not only in a tooltip (touch and keyboard users never see one): the date is text
    in the row, in view at a phone's width too; the tooltip stays for the mouse."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    orange = served.make_key(account, ["orders-reader"], label="aging", age_days=100)
    red = served.make_key(account, ["orders-reader"], label="ancient", age_days=200)
    page = open_page(viewport={"width": width, "height": height}).page
    sign_in(page, served, owner)
    for key, alert, words, months in ((orange, "orange", "Renew soon", 3),
                                      (red, "red", "Renew now", 6)):
        marker = generated_row(page, key.app_key).locator(f'[data-alert="{alert}"]')
        since = since_words(key.app_key, account, served, months)
        text = marker.locator(".marker-text")
        expect(text).to_have_text(f"{words} · {since}")
        expect(text).to_be_visible()
        marker.scroll_into_view_if_needed()
        for part in (".alert-level", ".alert-since"):  # each whole, inside the viewport
            box = marker.locator(part).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (
                part, box)
        assert since in marker.get_attribute("title")
        # the API gives the date: the page does not need the settings to say it
        listed = page.evaluate(f"""async () => (await (await fetch(
            '/api/v1/accounts/{account}/keys?renewal={alert}')).json()).items[0]""")
        assert listed["renewalAlertSince"] is not None
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def pager(page: Any, panel: str) -> dict[str, Any]:
    """The pager of a tab: its buttons, the page number and the summary."""
    nav = page.locator(f"#{panel} nav.pager")
    return {
        "nav": nav,
        "first": nav.get_by_role("button", name="First page"),
        "previous": nav.get_by_role("button", name="Previous page"),
        "next": nav.get_by_role("button", name="Next page"),
        "last": nav.get_by_role("button", name="Last page"),
        "number": nav.get_by_label("Page", exact=True),
        "go": nav.get_by_role("button", name="Go", exact=True),
        "summary": nav.locator(".summary"),
    }


def page_through(page: Any, panel: str, total: str, pages: int, rows_on_last: int) -> None:
    """First, Last and a page number, by keyboard: "Page [N] of M", the focus kept in the
    pager, out-of-range numbers refused by the browser before any request."""
    p = pager(page, panel)
    rows = page.locator(f"#{panel} tbody tr")
    expect(p["summary"]).to_have_text(f"Page 1 of {pages} · {total}")
    expect(p["number"]).to_have_value("1")
    expect(p["number"]).to_have_accessible_description(f"of {pages}")
    expect(p["nav"]).to_contain_text(f"of {pages}")
    expect(p["first"]).to_be_disabled()
    expect(p["previous"]).to_be_disabled()
    assert page.evaluate(UNLABELLED) == []

    p["last"].focus()
    page.keyboard.press("Enter")
    expect(p["summary"]).to_have_text(f"Page {pages} of {pages} · {total}")
    expect(p["number"]).to_have_value(str(pages))
    expect(rows).to_have_count(rows_on_last)
    expect(p["last"]).to_be_disabled()
    expect(p["next"]).to_be_disabled()
    expect(p["previous"]).to_be_focused()  # not lost with the disabled button

    p["first"].focus()
    page.keyboard.press("Enter")
    expect(p["summary"]).to_have_text(f"Page 1 of {pages} · {total}")
    expect(p["next"]).to_be_focused()

    # a page number, typed and sent with Enter; the focus stays in the field
    p["number"].focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Enter")
    expect(p["summary"]).to_have_text(f"Page 2 of {pages} · {total}")
    expect(p["number"]).to_be_focused()
    # past the last page: the browser refuses it, and nothing is asked
    p["number"].fill(str(pages + 1))
    p["go"].click()
    assert p["number"].evaluate("e => e.validity.rangeOverflow")
    expect(p["summary"]).to_have_text(f"Page 2 of {pages} · {total}")
    p["number"].fill("1")
    p["go"].click()
    expect(p["summary"]).to_have_text(f"Page 1 of {pages} · {total}")


def test_first_last_and_a_page_number_on_both_key_tabs(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    for n in range(24):
        served.make_key(account, ["orders-reader"], label=f"bulk {n:02d}")
    for n in range(11):
        partner = served.make_key(fresh_account(), ["orders-reader"])
        served.call(lambda gateway, key=partner.app_key, n=n: gateway.store.add_grant(
            account, key, f"partner {n:02d}", ["orders-reader"], CLI_ACTOR))
    browsing = open_page()
    page = browsing.page
    sign_in(page, served, owner)
    page.locator("#panel-generated").get_by_label("Per page").select_option("10")
    page_through(page, "panel-generated", "25 keys", 3, 5)
    page.get_by_role("tab", name="External keys").click()
    page.locator("#panel-external").get_by_label("Per page").select_option("10")
    page_through(page, "panel-external", "11 external keys", 2, 1)
    # the list API's own page numbers: one request per page, wherever it is
    asked = " ".join(browsing.api_urls)
    assert "/keys?" in asked and "page=3" in asked
    assert "/external-keys?" in asked and "page=2" in asked


# -- external keys, settings, export, audit --------------------------------------------
def test_external_keys_add_edit_and_remove(open_page, served):
    account, partner_account = fresh_account(), fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    partner = served.make_key(partner_account, ["orders-reader"], label="partner's own")
    page = open_page().page
    sign_in(page, served, owner)
    page.get_by_role("tab", name="External keys").click()
    panel = page.locator("#panel-external")
    expect(panel).to_contain_text("No external key matches.")
    panel.get_by_role("button", name="Add external key").click()
    add = dialog(page)
    assert page.evaluate(UNLABELLED) == []
    add.get_by_label("API key").fill("kgk-nope-AAAAAAAAAA")
    add.get_by_label("orders-reader", exact=True).check()
    add.get_by_role("button", name="Add").click()
    expect(add.get_by_role("alert")).to_contain_text("there is no API key")  # in place
    # the button, disabled while the request ran, has the focus back: not the page's start
    expect(add.get_by_role("button", name="Add")).to_be_focused()
    add.get_by_label("API key").fill(partner.app_key)
    add.get_by_label("Label (optional)").fill("partner integration")
    add.get_by_role("button", name="Add").click()
    row = external_row(page, partner.app_key)
    expect(row).to_contain_text(partner_account)
    expect(row).to_contain_text("partner integration")
    expect(row).to_contain_text("Active")
    assert served.through_proxy(account, partner.app_key, partner.token)[0] == 200

    row.get_by_role("button", name="Edit").click()
    edit = dialog(page)
    # a label taken away is not silently kept: the browser asks for one, then the API
    edit.get_by_label("Label").fill("")
    edit.get_by_role("button", name="Save").click()
    expect(edit.get_by_label("Label")).to_be_focused()
    edit.get_by_label("Label").fill("   ")
    edit.get_by_role("button", name="Save").click()
    expect(edit.get_by_role("alert")).to_contain_text("label must be a non-empty string")
    edit.get_by_label("Label").fill("partner integration")
    edit.get_by_label("orders-reader", exact=True).uncheck()
    edit.get_by_label("catalog-reader", exact=True).check()
    edit.get_by_label("Status").select_option("inactive")
    edit.get_by_role("button", name="Save").click()
    expect(row).to_contain_text("catalog-reader")
    expect(row).to_contain_text("Inactive")
    assert served.through_proxy(account, partner.app_key, partner.token) == (403,
                                                                            "grant_inactive")

    row.get_by_role("button", name="Remove").click()
    confirm = dialog(page)
    expect(confirm).to_contain_text(f"stays with its owner account, {partner_account}")
    confirm.get_by_role("button", name="Remove external key").click()
    expect(external_row(page, partner.app_key)).to_have_count(0)
    assert served.through_proxy(account, partner.app_key, partner.token) == (403, "no_grant")
    # the key itself lives on in its own account
    assert served.through_proxy(partner_account, partner.app_key, partner.token)[0] == 200


def test_settings_change_the_renewal_period(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    aging = served.make_key(account, ["orders-reader"], label="aging", age_days=100)
    page = open_page().page
    sign_in(page, served, owner)
    expect(generated_row(page, aging.app_key).locator('[data-alert="orange"]')).to_have_count(1)
    page.get_by_role("tab", name="Settings").click()
    panel = page.locator("#panel-settings")
    three = panel.get_by_role("radio", name=re.compile("3 months"))
    expect(three).to_be_checked()
    expect(panel).to_contain_text("3 months (recommended)")
    expect(panel).to_contain_text("Tokens never expire because of this setting")
    panel.get_by_role("radio", name=re.compile("6 months")).check()
    panel.get_by_role("button", name="Apply").click()
    expect(panel.get_by_role("status")).to_have_text("Applied: 6 months.")
    expect(panel.get_by_role("button", name="Apply")).to_be_focused()
    stored = served.call(lambda gateway: gateway.store.get_settings(account))
    assert int(stored["renewalPeriodMonths"]) == 6
    # the reminder follows: 100 days is no longer due
    page.get_by_role("tab", name="Generated keys").click()
    expect(generated_row(page, aging.app_key)).to_be_visible()
    expect(generated_row(page, aging.app_key).locator("[data-alert]")).to_have_count(0)


def test_export_downloads_the_workbook(open_page, served, tmp_path):
    account, partner_account = fresh_account(), fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="exported")
    partner = served.make_key(partner_account, ["orders-reader"])
    served.call(lambda gateway: gateway.store.add_grant(account, partner.app_key, "p",
                                                        ["orders-reader"], CLI_ACTOR))
    page = open_page(accept_downloads=True).page
    sign_in(page, served, owner)
    with page.expect_download() as download:
        page.get_by_role("button", name="Export").click()
    expect(page.get_by_role("button", name="Export")).to_be_focused()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".xlsx" and account in saved.name
    workbook = openpyxl.load_workbook(saved, read_only=True)
    assert workbook.sheetnames == ["generated", "external"]
    generated = [row for row in workbook["generated"].iter_rows(values_only=True)]
    assert generated[0][:2] == ("id", "keyName")
    names = {row[1] for row in generated[1:]}
    assert names == {owner.app_key, key.app_key}
    external = [row[1] for row in workbook["external"].iter_rows(min_row=2, values_only=True)]
    assert external == [partner.app_key]
    workbook.close()


def test_audit_view_filters_and_pages(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    made = [served.make_key(account, ["orders-reader"], label=f"k{n}") for n in range(22)]
    page = open_page().page
    sign_in(page, served, owner)
    # one change through the page, to be found by its actor
    generated_row(page, made[-1].app_key).get_by_role("button", name="Deactivate").click()
    dialog(page).get_by_role("button", name="Deactivate key").click()
    expect(generated_row(page, made[-1].app_key)).to_contain_text("Inactive")
    page.get_by_role("tab", name="Audit").click()
    panel = page.locator("#panel-audit")
    rows = panel.locator("tbody tr")
    expect(rows).to_have_count(20)
    expect(rows.first).to_contain_text("key.update")  # newest first
    expect(rows.first).to_contain_text("status: active → inactive")
    panel.get_by_role("button", name="Older").click()
    expect(panel.locator(".summary")).to_have_text("Page 2 · 4 events")
    expect(panel.get_by_role("button", name="Older")).to_be_disabled()
    expect(panel.get_by_role("button", name="Newer")).to_be_focused()
    panel.get_by_role("button", name="Newer").click()
    expect(panel.locator(".summary")).to_have_text("Page 1 · 20 events")
    panel.get_by_label("Actor key").fill(owner.app_key)
    panel.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(made[-1].app_key)
    panel.get_by_label("Actor key").fill("")
    panel.get_by_label("Action").select_option("key.create")
    panel.get_by_label("Target").fill(made[5].app_key)
    panel.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("k5")


# -- who sees what ---------------------------------------------------------------------
def test_a_user_admin_restricted_session_cannot_give_owner(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="the owner")
    admin = served.make_key(account, ["user-admin-restricted"], label="user admin")
    business = served.make_key(account, ["orders-writer"], label="business")
    page = open_page().page
    sign_in(page, served, admin)
    # the owner's key offers no action, and says why in words (no tooltip); a business
    # key does
    expect(generated_row(page, owner.app_key).get_by_role("button")).to_have_count(0)
    expect(generated_row(page, owner.app_key).get_by_role("cell").last).to_have_text(
        "None: it holds roles you may not give")
    expect(generated_row(page, business.app_key).get_by_role("button", name="Edit")).to_be_visible()

    page.get_by_role("button", name="Generate key").click()
    generate = dialog(page)
    offered = {c.get_attribute("value") for c in generate.locator('input[name="roles"]').all()}
    assert "owner" not in offered and "user-admin-restricted" not in offered
    assert {"orders-reader", "orders-writer", "catalog-reader"} <= offered
    # forced through the DOM: the API refuses, and the page says why, in place
    page.evaluate("""() => {
        const box = document.querySelector('dialog[open] fieldset');
        const input = document.createElement('input');
        input.type = 'checkbox'; input.name = 'roles'; input.value = 'owner'; input.checked = true;
        box.append(input);
    }""")
    generate.get_by_label("Label").fill("escalation")
    generate.get_by_role("button", name="Generate").click()
    alert = generate.get_by_role("alert")
    expect(alert).to_contain_text("may not assign role 'owner'")
    expect(generate.get_by_label("API token")).to_have_count(0)
    generate.get_by_role("button", name="Cancel").click()
    # and by fetch from the page: the cookie, the CSRF header, still the API's refusal
    refused = page.evaluate(f"""async () => {{
        const r = await fetch('/api/v1/accounts/{account}/keys/{owner.app_key}', {{
            method: 'PATCH', headers: {{'Content-Type': 'application/json',
            'X-Keygate-CSRF': '1'}}, body: JSON.stringify({{status: 'inactive'}}),
            referrerPolicy: 'same-origin'}});
        return [r.status, (await r.json()).error.code];
    }}""")
    assert refused == [403, "escalation_refused"]
    assert served.key(account, owner.app_key).status == "active"
    keys, _ = served.call(lambda gateway: gateway.store.list_keys(account, KeyQuery()))
    assert "escalation" not in {k.label for k in keys}


def test_a_viewer_sees_no_controls_it_may_not_use(open_page, served):
    account = fresh_account()
    viewer = served.make_key(account, ["api-keys-viewer"], label="viewer")
    other = served.make_key(account, ["orders-reader"], label="someone")
    page = open_page().page
    sign_in(page, served, viewer)
    expect(generated_row(page, other.app_key)).to_be_visible()
    expect(page.get_by_role("button", name="Generate key")).to_have_count(0)
    expect(page.locator("#panel-generated tbody").get_by_role("button")).to_have_count(0)
    expect(page.get_by_role("button", name="Export")).to_be_visible()
    page.get_by_role("tab", name="External keys").click()
    expect(page.locator("#panel-external")).to_contain_text("No external key matches.")
    expect(page.get_by_role("button", name="Add external key")).to_have_count(0)
    page.get_by_role("tab", name="Settings").click()
    panel = page.locator("#panel-settings")
    # the current period in words, not a disabled radio button that Tab skips
    expect(panel.locator(".read-only-value")).to_have_text(
        "Renewal reminder period: 3 months (recommended)")
    expect(panel.get_by_role("radio")).to_have_count(0)
    expect(panel.get_by_role("button", name="Apply")).to_have_count(0)
    expect(panel).to_contain_text("needs the permission to edit API keys settings")
    expect(panel).to_contain_text("Tokens never expire because of this setting")


def test_keys_with_one_api_keys_permission_see_what_they_may_use(browser, redis_url, tmp_path):
    for shipped in shipped_default("policies").glob("*.csv"):
        shutil.copy(shipped, tmp_path)
    (tmp_path / "narrow.csv").write_text("p, key-renewer, *, api-keys, renew-token, allow\n"
                                         "p, settings-editor, *, api-keys, edit-settings, allow\n"
                                         "p, key-editor, *, api-keys, edit, allow\n")
    with site(redis_url, policies_dir=str(tmp_path)) as narrow:
        account = fresh_account()
        # old enough for the account's 6 months (the page cannot read them: it has no
        # view permission, so the list API says since when)
        renewer = narrow.make_key(account, ["key-renewer"], label="renewer", age_days=200)
        editor = narrow.make_key(account, ["settings-editor"], label="settings editor")
        key_editor = narrow.make_key(account, ["key-editor"], label="key editor")
        narrow.call(lambda gateway: gateway.store.put_setting(account, "renewalPeriodMonths", 6,
                                                              CLI_ACTOR))
        browsing = Browsing(browser, narrow)
        try:
            page = browsing.page
            sign_in(page, narrow, renewer)
            expect(page.get_by_role("tab")).to_have_text(["Generated keys"])
            expect(page.get_by_role("button", name="Export")).to_be_hidden()
            expect(page.get_by_role("button", name="Generate key")).to_have_count(0)
            expect(generated_row(page, renewer.app_key).get_by_role("button")).to_have_text(
                ["Renew token"])
            since = since_words(renewer.app_key, account, narrow, 6)
            expect(generated_row(page, renewer.app_key).locator(
                '[data-alert="orange"] .marker-text')).to_have_text(f"Renew soon · {since}")

            # edit-settings without view: the period cannot be read, so none is shown as
            # the current one (the account's is 6 months, not the default 3)
            sign_in(page, narrow, editor)
            expect(page.get_by_role("tab")).to_have_text(["Settings"])
            panel = page.locator("#panel-settings")
            expect(panel).to_contain_text("The current period is not shown")
            for months in ("3 months", "6 months"):
                expect(panel.get_by_role("radio", name=re.compile(months))).not_to_be_checked()
            three = panel.get_by_role("radio", name=re.compile("3 months"))
            panel.get_by_role("button", name="Apply").click()  # nothing chosen: the browser asks
            expect(three).to_be_focused()
            three.check()
            panel.get_by_role("button", name="Apply").click()
            expect(panel.get_by_role("status")).to_have_text("Applied: 3 months.")
            stored = narrow.call(lambda gateway: gateway.store.get_settings(account))
            assert int(stored["renewalPeriodMonths"]) == 3

            # edit without view: no tab can show anything; said at sign-in, not a blank page
            page.get_by_role("button", name="Sign out").click()
            page.get_by_label("API key", exact=True).fill(key_editor.app_key)
            page.get_by_label("API token", exact=True).fill(key_editor.token)
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#sign-in-error")).to_be_visible()
            expect(page.locator("#sign-in-error")).to_contain_text(
                "may change API keys but not view them")
            expect(page.locator("#workspace")).to_be_hidden()
        finally:
            browsing.close()


EXPIRED = "Your session has expired. Sign in again to continue."


def test_an_expired_session_returns_to_sign_in_with_a_clear_message(browser, redis_url):
    """The cookie's Max-Age is the session's lifetime: the browser drops it as the
    session expires, and the API sees no cookie at all; the page still says the session
    expired. After a reload too (the fragment names an account: there was a session),
    with no cookie left or with one the API finds expired."""
    with site(redis_url, session_ttl=2, jwt_leeway=0) as short:
        account = fresh_account()
        owner = short.make_key(account, ["owner"], label="owner")
        browsing = Browsing(browser, short)
        try:
            page = browsing.page
            sign_in(page, short, owner)
            page.get_by_role("button", name="Generate key").click()  # mid-work
            page.wait_for_timeout(2_500)
            dialog(page).get_by_label("Label").fill("too late")
            dialog(page).get_by_role("button", name="Generate").click()
            expect(page.locator("#sign-in-notice")).to_have_text(EXPIRED)
            expect(page.locator("dialog")).to_have_count(0)
            expect(page.locator("#workspace")).to_be_hidden()
            sign_in(page, short, owner)  # and back in

            # expired while nobody looked, then a reload: no cookie is left to send
            page.get_by_role("tab", name="Settings").click()
            expect(page).to_have_url(re.compile(f"#/{account}/settings$"))
            page.wait_for_timeout(2_500)
            assert not [c for c in browsing.context.cookies() if c["name"] == "keygate_session"]
            page.reload()
            expect(page.locator("#sign-in-notice")).to_have_text(EXPIRED)
            expect(page.locator("#workspace")).to_be_hidden()
            # signing in again goes back where it was: the account and the tab
            expect(page.get_by_label(re.compile("^Account"))).to_have_value(account)
            page.get_by_label("API key", exact=True).fill(owner.app_key)
            page.get_by_label("API token", exact=True).fill(owner.token)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("tab", name="Settings")).to_have_attribute(
                "aria-selected", "true")
            expect(page).to_have_url(re.compile(f"#/{account}/settings$"))

            # a cookie the browser still sends but the API finds expired: session_expired
            status, login = short.request(short.management, "POST", "/api/v1/auth/login",
                                          body={"appKey": owner.app_key,
                                                "appToken": owner.token})
            assert status == 200 and login is not None
            browsing.context.clear_cookies()
            browsing.context.add_cookies([{"name": "keygate_session", "value": login["token"],
                                           "url": short.management}])  # no Max-Age
            page.wait_for_timeout(2_500)
            status, body = short.request(
                short.management, "GET", f"/api/v1/accounts/{account}/me",
                {"Cookie": f"keygate_session={login['token']}"})
            assert status == 401 and body is not None
            assert body["error"]["code"] == "session_expired", body
            page.reload()
            expect(page.locator("#sign-in-notice")).to_have_text(EXPIRED)

            # a page that never had a session shows the sign-in form with no notice
            fresh = browsing.context.new_page()
            fresh.goto(short.management + "/admin/")
            expect(fresh.get_by_label("API key", exact=True)).to_be_focused()
            expect(fresh.locator("#sign-in-notice")).to_have_text("")
            fresh.close()
        finally:
            browsing.close()


# -- quality ---------------------------------------------------------------------------
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter(el => el.offsetParent !== null || el.closest('dialog[open]'))
    .filter(el => el.type !== 'hidden')
    .filter(el => el.tagName === 'BUTTON'
        ? !(el.textContent.trim() || el.getAttribute('aria-label'))
        : !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
    .map(el => el.outerHTML)"""


def contrast_on_white(css_color: str) -> float:
    """WCAG's contrast ratio of an ``rgb(r, g, b)`` colour against white."""

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(n) for n in re.findall(r"\d+", css_color)[:3])
    luminance = 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
    return 1.05 / (luminance + 0.05)


def test_screenshots_of_each_tab_at_both_sizes_and_nothing_overflows(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    served.make_key(account, ["orders-reader", "catalog-reader"], label="a business key")
    served.make_key(account, ["orders-writer"], label="aging key", age_days=120)
    # a label without a space: it wraps in its column, never widening the page
    served.make_key(account, ["orders-reader"],
                    label="orders_integration_partner_acme_production_eu_west_1")
    partner = served.make_key(fresh_account(), ["orders-reader"])
    served.call(lambda gateway: gateway.store.add_grant(account, partner.app_key, "partner",
                                                        ["orders-reader"], CLI_ACTOR))
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in SIZES:
        page = open_page(viewport={"width": width, "height": height}).page
        page.goto(served.management + "/admin/")
        page.get_by_label("API key", exact=True).wait_for()
        page.screenshot(path=ARTIFACTS / f"ui-sign-in-{width}x{height}.png", full_page=True)
        sign_in(page, served, owner)
        for tab in TABS:
            page.get_by_role("tab", name=tab).click()
            panel = page.locator('[role="tabpanel"]:not([hidden])')
            expect(panel).to_be_visible()
            if tab != "Settings":
                expect(panel.locator("tbody tr").first).to_be_visible()
            page.wait_for_timeout(100)
            name = tab.split()[0].lower()
            page.screenshot(path=ARTIFACTS / f"ui-{name}-{width}x{height}.png", full_page=True)
            # tables scroll inside their frame; the page itself never scrolls sideways
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, (tab, width, overflow)
            assert page.evaluate(UNLABELLED) == [], (tab, width)
            # a key breaks at its hyphens, not into a column a few characters wide
            lines = page.evaluate("""() => Math.max(0, ...[...document.querySelectorAll(
                '[role="tabpanel"]:not([hidden]) td code.key')]
                .map(c => c.getClientRects().length))""")
            assert lines <= 2, (tab, width, lines)
            # the renewal reminders' coloured text reads at 4.5:1 at least (WCAG AA)
            for color in page.evaluate("""() => [...document.querySelectorAll(
                    '[role="tabpanel"]:not([hidden]) .marker-text, .pending')]
                    .map(e => getComputedStyle(e).color)"""):
                assert contrast_on_white(color) >= 4.5, (tab, color)
            size = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
            assert size >= 14
    for width, height in SIZES:
        for name in ("sign-in", "generated", "external", "settings", "audit"):
            assert (ARTIFACTS / f"ui-{name}-{width}x{height}.png").stat().st_size > 1000


NARROW = (390, 844)
# where a tab is drawn, how its focus ring is drawn, and the part of the tab list in view
TAB_GEOMETRY = """tab => {
    const list = tab.closest('[role="tablist"]').getBoundingClientRect();
    const box = tab.getBoundingClientRect();
    const style = getComputedStyle(tab);
    const listStyle = getComputedStyle(tab.parentElement);
    return {top: box.top, left: box.left, right: box.right,
            listLeft: list.left, listRight: list.right,
            outline: style.outlineStyle, outlineWidth: parseFloat(style.outlineWidth),
            outlineOffset: parseFloat(style.outlineOffset),
            clips: listStyle.overflowX !== 'visible'};
}"""


def test_at_390_px_the_tabs_keep_one_row_and_nothing_widens_the_page(open_page, served):
    """A phone's width: the four tabs on one row inside the viewport, each reached by the
    keyboard with its focus ring in view; no tab, table or dialog scrolls the page."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    served.make_key(account, ["orders-reader"],
                    label="orders_integration_partner_acme_production_eu_west_1")
    partner = served.make_key(fresh_account(), ["orders-reader"])
    served.call(lambda gateway: gateway.store.add_grant(account, partner.app_key, "partner",
                                                        ["orders-reader"], CLI_ACTOR))
    width, height = NARROW
    page = open_page(viewport={"width": width, "height": height}).page
    sign_in(page, served, owner)
    tabs = page.get_by_role("tab")
    expect(tabs).to_have_count(len(TABS))

    def tabs_by_keyboard(width: int) -> None:
        tabs.last.focus()
        for name in [*TABS, TABS[0]]:  # from the last around to the first, and around again
            page.keyboard.press("ArrowRight")
            tab = page.get_by_role("tab", name=name)
            expect(tab).to_be_focused()
            expect(page.locator(f"#{tab.get_attribute('aria-controls')}")).to_be_visible()
            rows = {round(t.evaluate(TAB_GEOMETRY)["top"]) for t in tabs.all()}
            assert len(rows) == 1, (width, name, rows)  # one row, whichever is selected
            shape = tab.evaluate(TAB_GEOMETRY)
            assert shape["listLeft"] >= 0 and shape["listRight"] <= width, shape
            # the focused tab is in view, its ring too (inside the tab where the list
            # clips), to the pixel (scroll offsets are whole pixels, layout is not)
            assert shape["listLeft"] - 1 <= shape["left"] <= shape["right"] \
                <= shape["listRight"] + 1, (width, name, shape)
            assert shape["outline"] != "none" and shape["outlineWidth"] >= 2, shape
            if shape["clips"]:
                assert shape["outlineOffset"] + shape["outlineWidth"] <= 0, shape
            assert page.evaluate("document.documentElement.scrollWidth") <= width, name

    tabs_by_keyboard(width)
    # all four in view at once at 390 px, with no scrolling of the row
    first, last = tabs.first.evaluate(TAB_GEOMETRY), tabs.last.evaluate(TAB_GEOMETRY)
    assert first["listLeft"] <= first["left"] and last["right"] <= last["listRight"], last
    # narrower still (320 px): the row scrolls inside itself, and each tab is reached
    page.set_viewport_size({"width": 320, "height": height})
    tabs_by_keyboard(320)
    page.set_viewport_size({"width": width, "height": height})

    for name in TABS:  # each tab's content, loaded, is no wider than the viewport
        page.get_by_role("tab", name=name).click()
        panel = page.locator('[role="tabpanel"]:not([hidden])')
        if name != "Settings":
            expect(panel.locator("tbody tr").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width, name

    page.get_by_role("tab", name="Generated keys").click()
    page.get_by_role("button", name="Generate key").click()
    box = dialog(page).bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, box
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.keyboard.press("Escape")
    expect(page.locator("dialog")).to_have_count(0)


def test_keyboard_only(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    page = open_page().page
    page.goto(served.management + "/admin/")
    key_input = page.get_by_label("API key", exact=True)
    expect(key_input).to_be_focused()
    page.keyboard.type(owner.app_key)
    page.keyboard.press("Tab")
    expect(page.get_by_label("API token", exact=True)).to_be_focused()
    page.keyboard.type(owner.token)
    page.keyboard.press("Enter")
    expect(page.locator("#who-key")).to_have_text(owner.app_key)

    generated = page.get_by_role("tab", name="Generated keys")
    generated.focus()
    page.keyboard.press("ArrowRight")
    external = page.get_by_role("tab", name="External keys")
    expect(external).to_be_focused()
    expect(external).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-external")).to_be_visible()
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="Audit")).to_be_focused()
    page.keyboard.press("ArrowRight")  # wraps around
    expect(generated).to_be_focused()
    outline = page.evaluate("""() => {
        const s = getComputedStyle(document.activeElement);
        return [s.outlineStyle, parseFloat(s.outlineWidth)];
    }""")
    assert outline[0] != "none" and outline[1] >= 2, outline  # focus is visible

    # a dialog: focus moves in, Escape closes it, focus comes back to its button
    button = page.get_by_role("button", name="Generate key")
    button.focus()
    page.keyboard.press("Enter")
    expect(dialog(page)).to_have_count(1)
    assert page.evaluate("!!document.activeElement.closest('dialog[open]')")
    assert page.evaluate(UNLABELLED) == []
    page.keyboard.type("typed by keyboard")  # the first field has the focus
    page.keyboard.press("Escape")
    expect(page.locator("dialog")).to_have_count(0)
    expect(button).to_be_focused()

    # Escape while the request runs: the dialog stays for the token it will show
    page.keyboard.press("Enter")
    page.keyboard.type("slow answer")
    page.evaluate("""() => { const answer = window.fetch; window.fetch = (...args) =>
        new Promise(wait => setTimeout(wait, 700)).then(() => answer(...args)); }""")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    expect(dialog(page).get_by_label("API token")).to_be_visible()
    page.keyboard.press("Escape")  # now it closes
    expect(page.locator("dialog")).to_have_count(0)
    page.evaluate("() => location.reload()")  # the page's own fetch again
    expect(page.locator("#who-key")).to_have_text(owner.app_key)

    # the skip link moves the focus and leaves the fragment (the account and tab) alone
    at = page.url
    page.get_by_role("link", name="Skip to content").focus()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    assert page.url == at
    page.reload()
    expect(page.locator("#who-account")).to_have_text(account)


def test_focus_stays_on_the_row_it_acted_on(open_page, served):
    """A row's buttons are drawn anew after every change: focus goes back to the same
    row's button (or the one at its place), the table when the row is gone."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="acted on")
    page = open_page().page
    sign_in(page, served, owner)
    row = generated_row(page, key.app_key)

    def press(name: str) -> None:
        # each row's button is named with its key: "Edit kgk-…", "Activate kgk-…"
        row.get_by_role("button", name=f"{name} {key.app_key}", exact=True).focus()
        page.keyboard.press("Enter")

    press("Edit")
    page.keyboard.press("End")  # the label field has the focus
    page.keyboard.type(" again")
    page.keyboard.press("Enter")
    expect(row).to_contain_text("acted on again")
    expect(row.get_by_role("button", name="Edit")).to_be_focused()
    press("Renew token")
    dialog(page).get_by_role("button", name="Renew token").press("Enter")
    dialog(page).get_by_role("button", name="Done").press("Enter")
    expect(row.get_by_role("button", name="Delete old token")).to_be_focused()
    press("Deactivate")
    dialog(page).get_by_role("button", name="Deactivate key").press("Enter")
    expect(row.get_by_role("button", name="Activate")).to_be_focused()
    press("Activate")
    expect(row.get_by_role("button", name="Deactivate")).to_be_focused()
    press("Delete")
    page.keyboard.press("Space")  # "I understand" has the focus
    dialog(page).get_by_role("button", name="Delete key").press("Enter")
    expect(generated_row(page, key.app_key)).to_have_count(0)
    expect(page.get_by_role("region", name="Generated keys")).to_be_focused()


# -- editing oneself, refusals that say when, lists that could not be read -------------
SIGNED_OUT_OF_PAGE = "The key you are signed in with may no longer use this page"


def test_editing_your_own_key_asks_before_it_drops_your_roles(open_page, served):
    """A key may drop its own roles (even one it may not give, and never get back): the
    page offers them on its own key only, says so, and asks before saving; after the
    save it reads again what the key may do, and a key left with no part in API keys
    is back at sign-in, told why, with no table left to click."""
    account = fresh_account()
    admin = served.make_key(account, ["user-admin-restricted"], label="user admin")
    other = served.make_key(account, ["orders-reader"], label="business")
    page = open_page().page
    sign_in(page, served, admin)

    # another key: only the roles the caller may assign
    generated_row(page, other.app_key).get_by_role("button", name="Edit").click()
    offered = {c.get_attribute("value")
               for c in dialog(page).locator('input[name="roles"]').all()}
    assert "owner" not in offered and "user-admin-restricted" not in offered, offered
    dialog(page).get_by_role("button", name="Cancel").click()

    # its own key: the role it may not give is offered (it may drop it), and said to be
    row = generated_row(page, admin.app_key)
    row.get_by_role("button", name="Edit").click()
    edit = dialog(page)
    mine = edit.get_by_role("checkbox", name=re.compile("^user-admin-restricted"))
    expect(mine).to_be_checked()
    expect(mine).to_be_enabled()
    expect(mine).to_have_accessible_name(
        re.compile(r"^user-admin-restricted \(yours: once removed, you may not give it back\)"))
    mine.uncheck()
    edit.get_by_role("button", name="Save").click()
    # asked first: nothing saved yet
    warning = edit.get_by_role("alert").filter(has_text="key you are signed in with")
    expect(warning).to_contain_text("removes the role user-admin-restricted")
    expect(warning).to_contain_text("you lose access to this page")
    understood = edit.get_by_label("I understand that I may lose access to this page")
    expect(understood).to_be_focused()
    assert list(served.key(account, admin.app_key).roles) == ["user-admin-restricted"]
    # ticked again: the warning, no longer true, goes, and Save asks nothing
    mine.check()
    expect(warning).to_be_hidden()
    expect(understood).to_have_count(0)
    edit.get_by_label("Label").fill("user admin, renamed")
    expect(edit.get_by_role("button", name="Save anyway")).to_have_count(0)
    edit.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("dialog")).to_have_count(0)
    expect(row).to_contain_text("user admin, renamed")
    assert list(served.key(account, admin.app_key).roles) == ["user-admin-restricted"]

    # dropped for real: the page reads /me again, and the key may do nothing here now
    row.get_by_role("button", name="Edit").click()
    edit = dialog(page)
    edit.get_by_role("checkbox", name=re.compile("^user-admin-restricted")).uncheck()
    edit.get_by_role("button", name="Save").click()
    edit.get_by_label("I understand that I may lose access to this page").check()
    edit.get_by_role("button", name="Save anyway").click()
    expect(page.locator("#sign-in-notice")).to_contain_text(SIGNED_OUT_OF_PAGE)
    expect(page.locator("#sign-in-notice")).to_contain_text(account)
    expect(page.locator("#workspace")).to_be_hidden()
    expect(page.locator("#panel-generated tbody")).to_have_count(0)
    expect(page.get_by_label("API key", exact=True)).to_be_focused()
    expect(page.get_by_label(re.compile("^Account"))).to_have_value(account)
    assert list(served.key(account, admin.app_key).roles) == []
    # and the session it no longer needs is over
    assert not [c for c in page.context.cookies() if c["name"] == "keygate_session"]


def test_the_tick_approves_only_the_change_it_was_shown(open_page, served):
    """The "I understand" tick answers the warning on screen: a change made after it
    (another role dropped, the status too) takes the stale warning and its tick away,
    and Save asks again about what it would really do; a form put back saves plainly."""
    account = fresh_account()
    served.make_key(account, ["owner"], label="another owner")  # not the last owner
    me = served.make_key(account, ["owner", "api-keys-viewer"], label="me")
    page = open_page().page
    sign_in(page, served, me)
    generated_row(page, me.app_key).get_by_role("button", name="Edit").click()
    edit = dialog(page)
    warning = edit.locator(".self-warning")
    understood = edit.get_by_label("I understand that I may lose access to this page")
    edit.get_by_role("checkbox", name=re.compile("^api-keys-viewer")).uncheck()
    edit.get_by_role("button", name="Save").click()
    expect(warning).to_contain_text("removes the role api-keys-viewer")
    expect(warning).not_to_contain_text("deactivates")
    understood.check()
    # ticked, then the status changed too: the tick was not for that
    edit.get_by_label("Status").select_option("inactive")
    expect(warning).to_be_hidden()
    expect(understood).to_have_count(0)
    expect(edit.get_by_role("button", name="Save anyway")).to_have_count(0)
    edit.get_by_role("button", name="Save", exact=True).click()
    expect(warning).to_contain_text("removes the role api-keys-viewer")
    expect(warning).to_contain_text("and deactivates the key you are signed in with")
    expect(understood).not_to_be_checked()
    expect(understood).to_be_focused()
    record = served.key(account, me.app_key)
    assert record.status == "active" and set(record.roles) == {"owner", "api-keys-viewer"}

    # put back: no warning, no "Save anyway" left on screen
    edit.get_by_label("Status").select_option("active")
    edit.get_by_role("checkbox", name=re.compile("^api-keys-viewer")).check()
    expect(warning).to_be_hidden()
    expect(edit.get_by_role("button", name="Save", exact=True)).to_be_visible()

    # the status alone, ticked; then a role dropped as well: asked again, about both
    edit.get_by_label("Status").select_option("inactive")
    edit.get_by_role("button", name="Save", exact=True).click()
    expect(warning).to_contain_text("This deactivates the key you are signed in with")
    understood.check()
    edit.get_by_role("checkbox", name="owner", exact=True).uncheck()
    expect(warning).to_be_hidden()
    edit.get_by_role("button", name="Save", exact=True).click()
    expect(warning).to_contain_text("removes the role owner")
    expect(warning).to_contain_text("deactivates")
    assert served.key(account, me.app_key).status == "active"
    # the change the tick was shown for: saved
    edit.get_by_role("checkbox", name="owner", exact=True).check()
    expect(warning).to_be_hidden()
    edit.get_by_role("button", name="Save", exact=True).click()
    expect(warning).to_contain_text("This deactivates the key you are signed in with")
    understood.check()
    edit.get_by_role("button", name="Save anyway").click()
    # the key is inactive: its session is refused, and the page says why in its words
    expect(page.locator("#sign-in-notice")).to_have_text(KEY_INACTIVE)
    expect(page.locator("#workspace")).to_be_hidden()
    record = served.key(account, me.app_key)
    assert record.status == "inactive" and set(record.roles) == {"owner", "api-keys-viewer"}


KEY_INACTIVE = ("The key you are signed in with was deactivated: its sessions are refused "
                "while it stays inactive. Sign in with another key, or have this one "
                "activated again.")


def test_deactivating_or_deleting_your_own_key_warns_first(open_page, served):
    """Deactivate and Delete on the signed-in key's own row say that it ends this
    session and wait for the same tick as the Edit dialog; on another key's row they
    do not. Signed out by it, the page says why in its own words."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    me = served.make_key(account, ["owner"], label="me")
    page = open_page().page
    sign_in(page, served, me)

    # another key's row: the plain confirmation
    generated_row(page, owner.app_key).get_by_role("button", name="Deactivate").click()
    confirm = dialog(page)
    expect(confirm.get_by_role("alert")).to_have_count(0)
    expect(confirm.get_by_role("checkbox")).to_have_count(0)
    expect(confirm.get_by_role("button", name="Deactivate key")).to_be_enabled()
    confirm.get_by_role("button", name="Cancel").click()

    row = generated_row(page, me.app_key)
    row.get_by_role("button", name="Deactivate").click()
    confirm = dialog(page)
    expect(confirm.get_by_role("alert")).to_contain_text(
        "This deactivates the key you are signed in with, which ends this session.")
    button = confirm.get_by_role("button", name="Deactivate key")
    expect(button).to_be_disabled()
    assert page.evaluate(UNLABELLED) == []
    confirm.get_by_label("I understand that I may lose access to this page").check()
    expect(button).to_be_enabled()
    button.click()
    expect(page.locator("#sign-in-notice")).to_have_text(KEY_INACTIVE)
    expect(page.locator("#workspace")).to_be_hidden()
    assert served.key(account, me.app_key).status == "inactive"

    # delete: both ticks, the undoable one and the own-key one
    again = served.make_key(account, ["owner"], label="me again")
    sign_in(page, served, again)
    generated_row(page, owner.app_key).get_by_role("button", name="Delete").click()
    expect(dialog(page).get_by_role("checkbox")).to_have_count(1)
    dialog(page).get_by_role("button", name="Cancel").click()
    generated_row(page, again.app_key).get_by_role("button", name="Delete").click()
    confirm = dialog(page)
    expect(confirm.get_by_role("alert")).to_contain_text(
        "This deletes the key you are signed in with, which ends this session.")
    delete = confirm.get_by_role("button", name="Delete key")
    expect(delete).to_be_disabled()
    confirm.get_by_label("I understand that this action cannot be undone").check()
    expect(delete).to_be_disabled()
    confirm.get_by_label("I understand that I may lose access to this page").check()
    expect(delete).to_be_enabled()
    confirm.get_by_label("I understand that this action cannot be undone").uncheck()
    expect(delete).to_be_disabled()
    confirm.get_by_label("I understand that this action cannot be undone").check()
    delete.click()
    expect(page.locator("#sign-in-notice")).to_contain_text("the key was deleted")
    expect(page.locator("#workspace")).to_be_hidden()
    assert served.key(account, again.app_key) is None


def test_an_empty_label_reads_as_a_dash(open_page, served):
    """An external key added without a label, and a generated key listed without one
    (an older keygate's), show "—" as other empty cells do, never a blank cell."""
    account, partner_account = fresh_account(), fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    partner = served.make_key(partner_account, ["orders-reader"], label="partner's own")
    served.call(lambda gateway: gateway.store.add_grant(account, partner.app_key, "",
                                                        ["orders-reader"], CLI_ACTOR))
    page = open_page().page

    def unlabelled(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        for item in body["items"]:
            if item["appKey"] == owner.app_key:
                item["label"] = ""
        route.fulfill(response=answer, json=body)

    page.route(re.compile(r"/api/v1/accounts/[^/]+/keys(\?|$)"), unlabelled)
    sign_in(page, served, owner)
    labels = page.locator("#panel-generated thead th").all_inner_texts()
    cell = generated_row(page, owner.app_key).locator("td").nth(labels.index("Label"))
    expect(cell).to_have_text("—")
    page.get_by_role("tab", name="External keys").click()
    labels = page.locator("#panel-external thead th").all_inner_texts()
    row = external_row(page, partner.app_key)
    expect(row.locator("td").nth(labels.index("Label"))).to_have_text("—")
    expect(row.locator("td").nth(labels.index("Owner account"))).to_have_text(partner_account)


def test_a_key_that_keeps_view_after_editing_itself_sees_what_it_may_do_now(
    open_page, served
):
    account = fresh_account()
    served.make_key(account, ["owner"], label="another owner")  # not the last owner
    me = served.make_key(account, ["owner", "api-keys-viewer"], label="me")
    page = open_page().page
    sign_in(page, served, me)
    expect(page.get_by_role("button", name="Generate key")).to_be_visible()
    generated_row(page, me.app_key).get_by_role("button", name="Edit").click()
    edit = dialog(page)
    edit.get_by_role("checkbox", name="owner", exact=True).uncheck()
    edit.get_by_role("button", name="Save").click()
    expect(edit.get_by_role("alert").filter(has_text="signed in with")).to_contain_text(
        "removes the role owner")
    edit.get_by_label("I understand that I may lose access to this page").check()
    edit.get_by_role("button", name="Save anyway").click()
    expect(page.locator("dialog")).to_have_count(0)
    # the page drawn again from the new /me: a viewer's, with no control left to refuse
    expect(page.get_by_role("button", name="Generate key")).to_have_count(0)
    expect(generated_row(page, me.app_key)).to_contain_text("api-keys-viewer")
    expect(page.locator("#panel-generated tbody").get_by_role("button")).to_have_count(0)
    expect(page.locator("#workspace")).to_be_visible()
    expect(page.get_by_role("tab", name="Generated keys")).to_be_focused()
    assert list(served.key(account, me.app_key).roles) == ["api-keys-viewer"]


def test_too_many_failed_sign_ins_say_when_to_try_again(browser, redis_url):
    """Past the failure budget login answers 429 too_many_failures with Retry-After; the
    sign-in form says so in its own words (not the API's "retry after the time in
    Retry-After"), and Sign in waits as long as it said, then works again."""
    with site(redis_url, auth_failure_limit=3, auth_failure_window=4.0) as limited:
        account = fresh_account()
        owner = limited.make_key(account, ["owner"], label="owner")
        browsing = Browsing(browser, limited)
        try:
            page = browsing.page
            page.goto(limited.management + "/admin/")
            wrong = owner.token[:-1] + ("y" if owner.token.endswith("x") else "x")
            error = page.locator("#sign-in-error")
            button = page.get_by_role("button", name="Sign in")
            # (a budget's window is short here: failures that straddle its end start
            # a new one, so a few more tries than the limit may be needed)
            for _ in range(12):
                page.get_by_label("API key", exact=True).fill(owner.app_key)
                page.get_by_label("API token", exact=True).fill(wrong)
                with page.expect_response(lambda r: r.url.endswith("/api/v1/auth/login")):
                    button.click()
                # the answer handled: the button back, or the wait said
                page.wait_for_function(
                    "() => !document.querySelector('#sign-in-form button[type=submit]')"
                    ".disabled || document.getElementById('sign-in-error').textContent"
                    ".startsWith('Too many')")
                if "Try again" in error.inner_text():
                    break
            expect(error).to_have_text(re.compile(
                r"^Too many failed sign-ins from here\. Try again in (\d+ seconds|a second)\.$"))
            assert "Retry-After" not in error.inner_text()
            seconds = re.search(r"Try again in (\d+)", error.inner_text())
            assert seconds is None or 1 <= int(seconds.group(1)) <= 4
            # the button waits; the focus stays in the form; Enter does not sign in
            expect(button).to_be_disabled()
            expect(page.get_by_label("API token", exact=True)).to_be_focused()
            calls = len(browsing.api_urls)
            page.get_by_label("API token", exact=True).fill(owner.token)
            page.get_by_label("API token", exact=True).press("Enter")
            page.wait_for_timeout(300)
            assert len(browsing.api_urls) == calls
            # then it may be used again, and the right token signs in
            expect(button).to_be_enabled(timeout=8_000)
            expect(error).to_have_text("Too many failed sign-ins from here. You may try again now.")
            page.get_by_label("API key", exact=True).fill(owner.app_key)
            page.get_by_label("API token", exact=True).fill(owner.token)
            button.click()
            expect(page.locator("#who-key")).to_have_text(owner.app_key)
        finally:
            browsing.close()


def test_a_list_that_cannot_be_read_leaves_no_row_to_act_on(open_page, served):
    """A refusal that is not keygate's JSON (a front proxy's 503 page) is named by its
    status, with when to come back; the rows shown before are taken away, not left with
    buttons acting on what may have changed; Try again reads the list anew."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="listed")
    page = open_page().page
    sign_in(page, served, owner)
    row = generated_row(page, key.app_key)
    expect(row.get_by_role("button", name="Edit")).to_be_visible()

    def busy(route: Any) -> None:
        route.fulfill(status=503, content_type="text/html", headers={"Retry-After": "30"},
                      body="<html><body>Service Unavailable</body></html>")

    listing = re.compile(r"/api/v1/accounts/[^/]+/keys\?")
    page.route(listing, busy)
    panel = page.locator("#panel-generated")
    panel.get_by_label("Search label or key").fill("list")
    alert = panel.locator("p.error[role=alert]")
    expect(alert).to_have_text(re.compile(
        r"^the server answered 503( Service Unavailable)?\. Try again in 30 seconds\.$"))
    assert "keygate" not in alert.inner_text()
    expect(panel.locator("tbody tr")).to_have_count(1)
    expect(panel.locator("tbody")).to_contain_text("could not be loaded")
    expect(panel.locator("tbody").get_by_role("button", name="Edit")).to_have_count(0)
    for name in ("First page", "Previous page", "Next page", "Last page", "Go"):
        expect(panel.get_by_role("button", name=name, exact=True)).to_be_disabled()

    page.unroute(listing, busy)
    again = panel.get_by_role("button", name="Try again")
    again.focus()
    page.keyboard.press("Enter")
    expect(row.get_by_role("button", name="Edit")).to_be_visible()
    expect(alert).to_have_text("")
    expect(page.get_by_role("region", name="Generated keys")).to_be_focused()

    # a refusal from keygate (JSON) is its own message, said in the same place
    def refused(route: Any) -> None:
        route.fulfill(status=429, content_type="application/json",
                      headers={"Retry-After": "600"},
                      body='{"error":{"code":"too_many_failures","message":"slow down",'
                           '"status":429,"requestId":"r1"}}')

    page.route(listing, refused)
    panel.get_by_label("Search label or key").fill("listed")
    expect(alert).to_have_text(re.compile(r"^slow down\. Try again at \d\d:\d\d( [AP]M)?\. "
                                          r"\(request r1\)$"))
    expect(panel.locator("tbody").get_by_role("button", name="Edit")).to_have_count(0)
    page.unroute(listing, refused)


TAB_ORDER = """() => { const a = document.activeElement;
    return a ? (a.getAttribute('aria-label') || a.textContent.trim() || a.name || a.tagName)
             : null; }"""


def test_tab_goes_round_every_dialog(open_page, served):
    """Tab from a dialog's last control goes to its first, Shift+Tab from the first to
    the last: the focus never leaves for the page behind or the browser. Escape still
    closes it and gives the focus back to the button that opened it."""
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="other")
    page = open_page().page
    sign_in(page, served, owner)

    def in_dialog() -> bool:
        return page.evaluate("!!document.activeElement.closest('dialog[open]')")

    def round_trip(first: Any, last: Any) -> None:
        first.focus()
        page.keyboard.press("Shift+Tab")
        expect(last).to_be_focused()
        page.keyboard.press("Tab")
        expect(first).to_be_focused()
        # all the way round by Tab, never leaving the dialog
        for _ in range(30):
            page.keyboard.press("Tab")
            assert in_dialog(), page.evaluate(TAB_ORDER)
        for _ in range(30):
            page.keyboard.press("Shift+Tab")
            assert in_dialog(), page.evaluate(TAB_ORDER)

    opener = page.get_by_role("button", name="Generate key")
    opener.click()
    generate = dialog(page)
    round_trip(generate.get_by_label("Label"), generate.get_by_role("button", name="Generate"))
    page.keyboard.press("Escape")
    expect(page.locator("dialog")).to_have_count(0)
    expect(opener).to_be_focused()

    # the first stop is a radio group's checked button, not its first
    row = generated_row(page, key.app_key)
    row.get_by_role("button", name="Renew token").click()
    renew = dialog(page)
    renew.get_by_role("radio", name=re.compile("^Now")).check()
    round_trip(renew.get_by_role("radio", name=re.compile("^Now")),
               renew.get_by_role("button", name="Renew token"))
    page.keyboard.press("Escape")

    # the last stop is Cancel while the confirmation's button is disabled
    row.get_by_role("button", name=f"Delete {key.app_key}", exact=True).click()
    confirm = dialog(page)
    round_trip(confirm.get_by_label("I understand that this action cannot be undone"),
               confirm.get_by_role("button", name="Cancel"))
    # the focus sent out of the dialog (to the page's body) comes back in with Tab
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Tab")
    assert in_dialog()
    page.keyboard.press("Escape")
    expect(row.get_by_role("button", name=f"Delete {key.app_key}", exact=True)).to_be_focused()


def test_row_buttons_are_named_with_their_key(open_page, served):
    account = fresh_account()
    owner = served.make_key(account, ["owner"], label="owner")
    key = served.make_key(account, ["orders-reader"], label="named")
    partner = served.make_key(fresh_account(), ["orders-reader"])
    served.call(lambda gateway: gateway.store.add_grant(account, partner.app_key, "partner",
                                                        ["orders-reader"], CLI_ACTOR))
    page = open_page().page
    sign_in(page, served, owner)
    row = generated_row(page, key.app_key)
    for text in ("Edit", "Renew token", "Deactivate", "Delete"):
        button = row.get_by_role("button", name=f"{text} {key.app_key}", exact=True)
        expect(button).to_have_text(text)  # the visible text is as it was
    # no two buttons of the table share a name
    names = page.evaluate("""() => [...document.querySelectorAll(
        '#panel-generated tbody button')].map(b => b.getAttribute('aria-label'))""")
    assert len(names) == len(set(names)) and all(names), names
    page.get_by_role("tab", name="External keys").click()
    grant = external_row(page, partner.app_key)
    for text in ("Edit", "Remove"):
        expect(grant.get_by_role("button", name=f"{text} {partner.app_key}",
                                 exact=True)).to_have_text(text)
