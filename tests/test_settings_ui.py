"""The settings page in a real browser (Playwright + Debian's Chromium, phone size) against a live API
whose ntfy server is a local fake (tests/ntfy_fake.py) expecting the platform's Bearer token.

Every user (not only admins) opens /ui/settings from the nav, sets a topic and a priority, saves,
reloads and finds them; an invalid or reserved topic shows the server's 422 reason next to the form
and is not saved; "Send test notification" reaches the fake server on the chosen topic with the
right Authorization header (unsaved changes are saved first); a refusing or failing ntfy server and
the rate limit show their reasons. The NTFY_AUTH secret never reaches a page, an API answer or the
API's log."""

from __future__ import annotations

import re
import secrets

import pytest
from playwright.sync_api import expect

from live import running_stack
from ntfy_fake import FakeNtfy
from test_ui_browser import Watch, login, new_page, shot

pytestmark = pytest.mark.slow

SECRET = "tk_" + secrets.token_hex(15)
BASE = "https://dub.example.test"


@pytest.fixture(scope="module")
def ntfy():
    server = FakeNtfy(auth=f"Bearer {SECRET}").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ntfy):
    env = dict(NTFY_URL=ntfy.url, NTFY_AUTH=SECRET, PUBLIC_BASE_URL=BASE)
    with running_stack(tmp_path_factory.mktemp("settings_ui"), env) as s:
        yield s


def small_controls(page) -> list:
    """Visible controls under 44×44 CSS px; a checkbox counts through its label (the tap target)."""
    return page.evaluate("""() => [...document.querySelectorAll('button, a.btn, input, select, nav a, .check label')]
        .filter(e => e.offsetParent !== null && e.type !== 'checkbox')
        .map(e => [e.id || e.textContent.trim().slice(0, 30), e.getBoundingClientRect().width,
                   e.getBoundingClientRect().height])
        .filter(([, w, h]) => w < 44 || h < 44)""")


def no_secret(page, stack) -> None:
    assert SECRET not in page.content()
    assert SECRET not in stack.log("api")


def test_user_sets_topic_and_priority_saves_reloads_and_tests(stack, browser, ntfy):
    ctx, page = new_page(browser, stack)
    watch = Watch(page)
    login(page, "alice")
    page.get_by_role("link", name="Settings").click()  # in every user's nav now
    page.wait_for_url(re.compile(r"/ui/settings$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Settings")
    expect(page.get_by_role("link", name="Models")).to_have_count(0)  # still admins only
    resp = page.reload()
    assert resp.status == 200 and SECRET not in resp.text()
    assert "script-src 'self'" in resp.headers["content-security-policy"]

    # what the page says about the server: its URL (no secret) and the topic to subscribe to
    expect(page.locator("#server-url")).to_have_text(ntfy.url)
    expect(page.locator("#subscribe-topic")).to_have_text("dub-alice")
    expect(page.locator("#server-info")).to_contain_text("ntfy app")
    expect(page.locator("#not-configured")).to_have_count(0)
    topic = page.get_by_label("Topic")
    expect(topic).to_have_value("")
    expect(topic).to_have_attribute("placeholder", "dub-alice")
    expect(page.locator("#topic-hint")).to_contain_text("64 letters, digits")
    expect(page.get_by_label("Priority")).to_have_value("3")
    expect(page.get_by_label("Send me notifications")).to_be_checked()
    for label in ("is ready", "has failed", "was cancelled"):
        expect(page.get_by_label(label)).to_be_checked()
    options = page.locator("#priority option").all_text_contents()
    assert [o.split(" (")[0] for o in options] == ["1 · min", "2 · low", "3 · default", "4 · high", "5 · max"]
    shot(page, "settings-01-initial", full=True)
    assert small_controls(page) == []

    # an invalid topic: the server's 422 reason next to the form, nothing saved
    topic.fill("my phone!")
    page.get_by_role("button", name="Save").click()
    error = page.locator("#settings-error")
    expect(error).to_have_text(re.compile(
        r"^Error: notifications\.topic: topic must be 1 to 64 characters, each a letter, digit, '-' or '_' "
        r"\(HTTP 422\)$"))
    expect(topic).to_have_attribute("aria-invalid", "true")
    expect(topic).to_be_focused()
    expect(page.locator("#settings-status")).to_have_text("Not saved.")
    shot(page, "settings-02-invalid-topic")
    topic.fill("docs")
    page.get_by_role("button", name="Save").click()
    expect(error).to_contain_text("topic 'docs' is reserved by ntfy; choose another name (HTTP 422)")

    # a valid topic and priority: saved, and still there after a reload
    topic.fill("dub-alice-phone_7")
    page.get_by_label("Priority").select_option("4")
    page.get_by_label("was cancelled").uncheck()
    expect(page.locator("#settings-status")).to_have_text("You have unsaved changes.")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#settings-status")).to_have_text("Saved. Notifications go to the topic dub-alice-phone_7.")
    expect(error).to_be_hidden()
    expect(topic).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#subscribe-topic")).to_have_text("dub-alice-phone_7")
    page.reload()
    expect(page.get_by_label("Topic")).to_have_value("dub-alice-phone_7")
    expect(page.get_by_label("Priority")).to_have_value("4")
    expect(page.get_by_label("was cancelled")).not_to_be_checked()
    expect(page.get_by_label("is ready")).to_be_checked()
    expect(page.locator("#subscribe-topic")).to_have_text("dub-alice-phone_7")
    with stack.client("alice") as c:
        got = c.get("/api/settings").json()
    assert got["notifications"] == {"enabled": True, "topic": "dub-alice-phone_7", "priority": 4, "on_success": True,
                                    "on_failure": True, "on_cancel": False, "effective_topic": "dub-alice-phone_7",
                                    "default_topic": "dub-alice"}
    assert got["server"] == {"configured": True, "url": ntfy.url, "auth_configured": True, "deep_links": True}

    # the test button: delivered to the fake ntfy server, on the chosen topic, with the platform's token
    page.get_by_role("button", name="Send test notification").click()
    expect(page.locator("#test-status")).to_have_text(
        "Delivered to the topic dub-alice-phone_7. It should show up in the ntfy app now.")
    [msg] = ntfy.to("dub-alice-phone_7")
    assert msg.authorization == f"Bearer {SECRET}"
    assert msg.priority == 4 and msg.title == "Test notification from the dubbing platform"
    assert "alice" in msg.message and msg.click == f"{BASE}/ui/settings"
    shot(page, "settings-03-test-delivered", full=True)

    # at once again: the rate limit's reason
    page.get_by_role("button", name="Send test notification").click()
    expect(page.locator("#test-error")).to_have_text(
        "Error: one test notification every 5 s: try again shortly (HTTP 429)")
    assert len(ntfy.to("dub-alice-phone_7")) == 1

    # back to the default topic: an empty field
    page.get_by_label("Topic").fill("")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#settings-status")).to_have_text("Saved. Notifications go to the topic dub-alice.")
    expect(page.locator("#subscribe-topic")).to_have_text("dub-alice")
    page.get_by_label("Send me notifications").uncheck()
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#settings-status")).to_have_text("Saved. Notifications are off.")
    page.reload()
    expect(page.get_by_label("Send me notifications")).not_to_be_checked()
    expect(page.get_by_label("Topic")).to_have_value("")
    no_secret(page, stack)
    assert watch.unexpected() == []
    ctx.close()


def test_test_button_saves_first_and_shows_why_delivery_failed(stack, browser, ntfy):
    ctx, page = new_page(browser, stack)
    watch = Watch(page)
    login(page, "bob")
    page.goto("/ui/settings")
    expect(page.locator("#subscribe-topic")).to_have_text("dub-bob")

    # unsaved changes go to the server before the test, so the test goes where the form says
    page.get_by_label("Topic").fill("dub-bob-tablet")
    page.get_by_label("Priority").select_option("2")
    page.get_by_role("button", name="Send test notification").click()
    expect(page.locator("#test-status")).to_contain_text("Delivered to the topic dub-bob-tablet.")
    expect(page.locator("#settings-status")).to_have_text("Saved. Notifications go to the topic dub-bob-tablet.")
    [msg] = ntfy.to("dub-bob-tablet")
    assert msg.priority == 2 and msg.authorization == f"Bearer {SECRET}"

    # an invalid unsaved topic: not saved, nothing sent
    before = len(ntfy.requests)
    page.get_by_label("Topic").fill("bad.topic")
    page.get_by_role("button", name="Send test notification").click()
    expect(page.locator("#settings-error")).to_contain_text("topic must be 1 to 64 characters")
    expect(page.locator("#test-error")).to_contain_text("save your settings first")
    assert len(ntfy.requests) == before
    page.get_by_label("Topic").fill("dub-bob-tablet")  # back to the saved value: the error goes away
    expect(page.locator("#settings-error")).to_be_hidden()
    expect(page.get_by_label("Topic")).not_to_have_attribute("aria-invalid", "true")

    # the ntfy server refuses the platform's credentials: the reason names NTFY_AUTH (never its value)
    ntfy.expected_auth = "Bearer tk_someone_else"
    try:
        page.wait_for_timeout(5_100)  # the per-user rate limit of the test button
        page.get_by_role("button", name="Send test notification").click()
        expect(page.locator("#test-error")).to_have_text(re.compile(
            r"^Error: the test notification was not delivered: the ntfy server answered HTTP 403 \(forbidden\): "
            r"check NTFY_AUTH .*\(HTTP 502\)$"))
        expect(page.locator("#test-status")).to_have_text("")
        shot(page, "settings-04-test-refused")
    finally:
        ntfy.expected_auth = f"Bearer {SECRET}"

    # the ntfy server is failing
    ntfy.fail_next(1, 503)
    page.wait_for_timeout(5_100)
    page.get_by_role("button", name="Send test notification").click()
    expect(page.locator("#test-error")).to_contain_text("the ntfy server answered HTTP 503")
    page.wait_for_timeout(5_100)
    page.get_by_role("button", name="Send test notification").click()  # and back
    expect(page.locator("#test-status")).to_contain_text("Delivered to the topic dub-bob-tablet.")
    expect(page.locator("#test-error")).to_be_hidden()
    assert len(ntfy.to("dub-bob-tablet")) == 2
    no_secret(page, stack)
    assert watch.unexpected() == []
    ctx.close()


def test_admin_sees_the_same_page_on_a_desktop(stack, browser, ntfy):
    ctx, page = new_page(browser, stack)
    login(page, "root")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("link", name="Settings")).to_have_attribute("aria-current", "page")
    expect(page.locator("#subscribe-topic")).to_have_text("dub-root")
    expect(page.get_by_role("button", name="Send test notification")).to_be_enabled()
    shot(page, "settings-05-desktop-admin", full=True)
    no_secret(page, stack)
    ctx.close()
