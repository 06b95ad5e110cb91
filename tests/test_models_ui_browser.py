"""/ui/models in a real browser, in the style of tests/test_ui_browser.py: Playwright (sync API)
driving Debian's Chromium at a phone's size against a live upload API (the `api` fixture: uvicorn,
users alice/bob and root). An admin sees every engine and model, ready or not and why, prewarms a
voice and the speech model (a refused prewarm shows the server's reason); a user gets the 403 page,
and the upload wizard refuses a language pair this server cannot dub before uploading anything.
Screenshots go to tests/artifacts/models-*.png."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from test_ui_browser import Watch, login, shot, small_targets

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).parent / "artifacts"
PREWARM = "**/api/runtime/models/prewarm"


def new_page(browser, api):
    ctx = browser.new_context(base_url=api.url, viewport=PHONE, device_scale_factor=1, is_mobile=True,
                              has_touch=True)
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    return ctx, page


def row(page, model_id: str):
    return page.locator(f'tr[data-model-id="{model_id}"]')


def test_admin_sees_readiness_and_prewarms(api, browser):
    ctx, page = new_page(browser, api)
    watch = Watch(page)
    login(page, "root")
    page.get_by_role("link", name="Models").click()
    page.wait_for_url(re.compile(r"/ui/models$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Models")
    csp = page.goto("/ui/models").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp

    for model_id in ("asr:faster-whisper:bundled:tiny.en", "translation:apertium:eng-spa", "tts:espeak-ng",
                     "tts:piper:en_US-joe-medium"):
        expect(row(page, model_id).locator('[data-field="ready"]')).to_have_text("Ready")
    xtts = row(page, "tts:xtts-v2")
    expect(xtts.locator('[data-field="ready"]')).to_have_text("Not ready")
    expect(xtts.locator('[data-field="reasons"]')).to_contain_text("licence acceptance needed")
    expect(xtts.locator('[data-field="reasons"]')).to_contain_text("coqui-tts is not installed")
    expect(xtts).to_contain_text("Coqui Public Model Licence")
    expect(xtts.get_by_role("button")).to_have_count(0)  # nothing to prewarm that is not ready
    expect(row(page, "translation:argos").locator('[data-field="reasons"]')).to_contain_text(
        "argostranslate not installed")
    expect(row(page, "translation:libretranslate").locator('[data-field="reasons"]')).to_have_text(
        "LIBRETRANSLATE_URL not set")
    expect(row(page, "tts:espeak-ng").locator('[data-field="cache"]')).to_contain_text("nothing to load")
    expect(page.locator("#ready-pairs")).to_contain_text("en→es")
    expect(page.locator("#disk-line")).to_contain_text("MIN_FREE_GB")
    expect(page.locator("#cache-text")).to_have_text("0 models")
    expect(page.locator("main")).not_to_contain_text(api.tokens["root"])
    shot(page, "models-01-phone", full=True)
    assert small_targets(page) == []

    # prewarm a Piper voice: the row says Loaded, with the load time
    piper = row(page, "tts:piper:en_US-joe-medium")
    piper.get_by_role("button", name="Prewarm en_US-joe-medium").click()
    expect(piper.locator('[data-field="loaded"]')).to_have_text("Loaded", timeout=60_000)
    expect(piper.locator('[data-field="cache-text"]')).to_have_text(re.compile(r"^ in \d+\.\d s$"))
    expect(page.locator("#models-status")).to_have_text("en_US-joe-medium: loaded.")
    expect(page.locator("#cache-text")).to_contain_text("1 model")
    shot(page, "models-02-prewarmed")

    # a refused prewarm (as when the disk ran low meanwhile) shows the server's reason; a retry works
    asr = row(page, "asr:faster-whisper:bundled:tiny.en")
    reason = "asr:faster-whisper:bundled:tiny.en is not ready: not enough free disk for new jobs (MIN_FREE_GB)"
    page.route(PREWARM, lambda route: route.fulfill(status=409, json={"detail": reason}))
    button = asr.get_by_role("button", name="Prewarm bundled:tiny.en")
    button.click()
    expect(page.locator("#models-error")).to_have_text(f"Error: bundled:tiny.en: {reason} (HTTP 409)")
    expect(button).to_be_enabled()
    shot(page, "models-03-refused")
    page.unroute(PREWARM)
    button.click()
    expect(asr.locator('[data-field="loaded"]')).to_have_text("Loaded", timeout=60_000)
    expect(page.locator("#models-error")).to_be_hidden()
    expect(page.locator("#cache-text")).to_contain_text("2 models")

    # the server knows: a reload renders both as loaded, and the API says the same
    page.reload()
    for model_id in ("tts:piper:en_US-joe-medium", "asr:faster-whisper:bundled:tiny.en"):
        expect(row(page, model_id).locator('[data-field="loaded"]')).to_have_text("Loaded")
    with api.client("root") as c:
        loaded = {m["id"] for m in c.get("/api/runtime/models").json()["models"] if m["loaded"]}
    assert loaded == {"tts:piper:en_US-joe-medium", "asr:faster-whisper:bundled:tiny.en"}
    page.set_viewport_size({"width": 1280, "height": 900})
    shot(page, "models-04-desktop", full=True)
    assert watch.unexpected() == []
    ctx.close()


def test_users_get_the_403_page_and_the_wizard_refuses_an_unready_pair(api, browser, espeak_video):
    ctx, page = new_page(browser, api)
    watch = Watch(page)
    login(page, "alice")
    expect(page.get_by_role("link", name="Models")).to_have_count(0)
    assert page.goto("/ui/models").status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Admins only")

    calls: list[str] = []
    page.on("request", lambda r: "/api/uploads" in r.url and calls.append(f"{r.method} {r.url}"))
    page.goto("/ui/upload")
    page.set_input_files("#file", str(espeak_video))
    page.locator("#to-langs").click()
    page.get_by_label("Dub into").select_option("fr")
    page.get_by_role("button", name="Start upload").click()
    expect(page.locator("#langs-error")).to_have_text(
        "Error: this server cannot make this dub now: no translation backend for en→fr: apertium eng-fra not "
        "installed; argostranslate not installed; LIBRETRANSLATE_URL not set.")
    expect(page.get_by_label("Dub into")).to_be_focused()
    expect(page.locator("#step-upload")).to_be_hidden()
    shot(page, "models-05-wizard-refuses-pair")
    assert not any("POST" in c for c in calls), calls  # nothing was uploaded

    page.get_by_label("Voice", exact=True).select_option("xtts")
    page.get_by_label("Dub into").select_option("es")
    page.get_by_role("button", name="Start upload").click()
    expect(page.locator("#langs-error")).to_contain_text("XTTS-v2 not ready")
    assert not any("POST" in c for c in calls), calls

    page.get_by_label("Voice", exact=True).select_option("auto")
    page.get_by_role("button", name="Start upload").click()
    expect(page.locator("#langs-error")).to_be_hidden()
    page.wait_for_url(re.compile(r"/ui/jobs/j[0-9a-f]{32}$"), timeout=60_000)
    assert any("/api/uploads/init" in c for c in calls)
    assert watch.unexpected() == []
    ctx.close()
