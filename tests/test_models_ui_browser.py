"""/ui/models in a real browser, in the style of tests/test_ui_browser.py: Playwright (sync API)
driving Debian's Chromium at a phone's size against a live upload API (the `api` fixture: uvicorn,
users alice/bob and root). An admin sees every engine and model, ready or not and why, prewarms a
voice and the speech model (a refused prewarm shows the server's reason); a user gets the 403 page,
and the upload wizard refuses a language pair this server cannot dub before uploading anything. The
Reprocessing panel at 360 px: an admin previews the rule's picks (a real job whose run failed without a
stage failure, in the stack's job store and Dagster instance), queues it, and asking again queues nothing
twice. Screenshots go to tests/artifacts/models-*.png."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import expect

from resources.jobstore import JobStore
from sensors.run_requests import stages_from
from test_redub_browser import overflowing
from test_reprocess import new_job, run_of
from test_ui_browser import Watch, login, shot, small_targets

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).parent / "artifacts"
PREWARM = "**/api/runtime/models/prewarm"
REPROCESS = "**/api/runtime/reprocess"
NARROW = {"width": 360, "height": 780}


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


def failed_job(api, tmp_path) -> tuple[str, str]:
    """A job of alice's (from an upload) whose only run failed without a stage failure, as when its run worker
    died: the rule picks it as transient. In the stack's job store and Dagster instance: (job id, run id)."""
    assert os.environ["DAGSTER_HOME"] == api.env["DAGSTER_HOME"]
    store = JobStore()
    instance = dg.DagsterInstance.from_config(api.env["DAGSTER_HOME"])
    try:
        job = new_job(store, instance, tmp_path, owner=api.users["alice"].id, upload_id=secrets.token_hex(16))
        run = run_of(instance, job, dg.DagsterRunStatus.FAILURE)
    finally:
        instance.dispose()
    return job.id, run.run_id


def test_admin_previews_and_queues_a_reprocess(api, browser, tmp_path):
    job_id, run_id = failed_job(api, tmp_path)
    key = f"reprocess:transient:{run_id}"
    reason = f"transient: source_media failed (the run failed without a stage failure) in run {run_id}"
    with api.client("alice") as alice:
        refused = alice.post("/api/runtime/reprocess", json={"rule": "transient", "dry_run": True})
    assert refused.status_code == 403, refused.text

    # a user: no Models page, so no panel
    ctx, page = new_page(browser, api)
    login(page, "alice")
    assert page.goto("/ui/models").status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Admins only")
    expect(page.locator("#reprocess")).to_have_count(0)
    ctx.close()

    ctx, page = new_page(browser, api)
    page.set_viewport_size(NARROW)
    watch = Watch(page)
    login(page, "root")
    page.goto("/ui/models")
    panel = page.locator("#reprocess")
    expect(panel.get_by_role("heading", level=2)).to_have_text("Reprocessing")
    expect(panel.locator("#reprocess-schedule")).to_contain_text("by itself every 15 minutes")
    expect(panel.locator("#reprocess-schedule")).to_contain_text("DUBBING_REPROCESS_CRON: */15 * * * *")
    preview = panel.get_by_role("button", name="Preview")
    run_now = panel.get_by_role("button", name="Reprocess these now")
    expect(run_now).to_be_disabled()  # preview first
    status, error = page.locator("#reprocess-status"), page.locator("#reprocess-error")
    expect(status).to_have_attribute("aria-live", "polite")
    expect(error).to_have_attribute("role", "alert")

    # an out-of-range limit is refused in the page, at the field
    limit = panel.get_by_label("At most")
    expect(limit).to_have_value("10")
    limit.fill("101")
    preview.click()
    expect(error).to_have_text("Error: “At most” must be a whole number from 1 to 100.")
    expect(limit).to_be_focused()
    expect(limit).to_have_attribute("aria-invalid", "true")
    limit.fill("100")
    expect(error).to_be_hidden()

    # by keyboard: the rule, the limit, then Enter on Preview; nothing is queued by a preview
    rule = panel.get_by_label("Which jobs")
    rule.select_option("transient")
    rule.focus()
    page.keyboard.press("Tab")
    expect(limit).to_be_focused()
    page.keyboard.press("Tab")
    expect(preview).to_be_focused()
    with page.expect_response(REPROCESS) as answer:
        page.keyboard.press("Enter")
    assert answer.value.request.post_data_json == {"rule": "transient", "limit": 100, "dry_run": True}
    expect(status).to_have_text("Preview, nothing queued yet: 1 job would run again.")
    item = panel.locator(f'#reprocess-list li[data-job-id="{job_id}"]')
    expect(panel.locator("#reprocess-list li")).to_have_count(1)
    expect(item.locator('[data-field="reason"]')).to_have_text(reason)
    expect(item.locator('[data-field="rule"]')).to_have_text("Transient failure")
    expect(item.locator('[data-field="from"]')).to_have_text("Runs again from: Probe (source_media)")
    expect(item.get_by_role("link", name=job_id)).to_have_attribute("href", f"/ui/jobs/{job_id}")
    expect(item.locator('[data-field="queued"]')).to_have_count(0)
    expect(preview).to_be_focused()
    expect(run_now).to_be_enabled()
    assert JobStore().run_requests_of(job_id) == []

    # 360 px: nothing sideways, touch-sized controls and job links
    assert overflowing(page) == []
    assert small_targets(page) == []
    assert item.get_by_role("link").bounding_box()["height"] >= 44
    panel.scroll_into_view_if_needed()
    panel.screenshot(path=str(ARTIFACTS / "models-06-reprocess-preview-360px.png"))

    # changing the rule makes the preview stale
    rule.select_option("all")
    expect(run_now).to_be_disabled()
    expect(panel.locator("#reprocess-list")).to_be_hidden()
    preview.click()
    expect(item.locator('[data-field="reason"]')).to_have_text(reason)

    # reprocess now: queued for the run request sensor, as a "reprocess" request by root
    with page.expect_response(REPROCESS) as answer:
        run_now.click()
    assert [(p["job_id"], p["key"], p["queued"]) for p in answer.value.json()["picked"]] == [(job_id, key, True)]
    expect(status).to_have_text("Queued 1 job: the run request sensor starts it within seconds.")
    expect(item.locator('[data-field="queued"]')).to_have_text("Queued")
    requests = JobStore().run_requests_of(job_id)
    assert [(r.kind, r.key, r.stages, r.requested_by) for r in requests] == [
        ("reprocess", key, stages_from("source_media"), api.users["root"].id)]
    assert overflowing(page) == []
    panel.screenshot(path=str(ARTIFACTS / "models-07-reprocess-queued-360px.png"))

    # again: the server does not pick a queued key twice; the page lists the job as already queued
    with page.expect_response(REPROCESS) as answer:
        run_now.click()
    assert job_id not in {p["job_id"] for p in answer.value.json()["picked"]}
    expect(status).to_have_text("Queued nothing new. 1 job was already queued before.")
    expect(item.locator('[data-field="queued"]')).to_have_text("Already queued before")
    assert len(JobStore().run_requests_of(job_id)) == 1

    # errors, with the server's detail: a 403 (the body alice's request got), then no network
    page.route(REPROCESS, lambda route: route.fulfill(status=403, json=refused.json()))
    preview.click()
    expect(error).to_have_text(f"Error: Preview: {refused.json()['detail']} (HTTP 403)")
    expect(status).to_have_text("")
    shot(page, "models-08-reprocess-403-360px")
    page.unroute(REPROCESS)
    page.route(REPROCESS, lambda route: route.abort())
    run_now.click()
    expect(error).to_have_text("Error: Reprocess: No connection to the server: the network connection failed.")
    page.unroute(REPROCESS)
    assert len(JobStore().run_requests_of(job_id)) == 1
    preview.click()
    expect(error).to_be_hidden()
    expect(status).to_have_text("Nothing to reprocess for this rule now.")
    expect(panel.locator("#reprocess-list")).to_be_hidden()
    assert watch.unexpected() == []
    ctx.close()
