"""Edit and re-dub in a real browser: Playwright driving Debian's Chromium at a phone's size against a live
stack (uvicorn + a real dagster-daemon, whose run request sensor launches the re-dub).

On a finished English -> Spanish job, alice opens the job page, gets a 422 for a timing edit that overlaps
the previous segment (shown next to that segment, nothing saved, her other change kept), changes the Spanish
text of one segment, saves, presses Re-dub and follows the Runs section until the re-dub run (its own entry,
with its own three stages) is done; the Spanish VTT the API serves then carries the new text and the player
is a new one. The page at 360 px wide: nothing overflows sideways, textareas are full width, controls are
touch-sized. Then the pin toggle, and what retention leaves: the editor says the working files are gone
(410), and an expired job shows the banner instead of downloads. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

import mediagen
from live import running_stack, upload_file
from test_jobs_api import wait_state
from test_ui_browser import ARTIFACTS, PHONE, Watch, login

pytestmark = pytest.mark.slow

SENTENCES = mediagen.SCRIPT[:4]
NEW_TEXT = "Hoy hablamos del mar y de los barcos."
NARROW = {"width": 360, "height": 780}


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    work = tmp_path_factory.mktemp("redub_ui_media")
    wav, _ = mediagen.speech_track(SENTENCES, work, voice="espeak")
    return mediagen.make_video(wav, work / "redub ui talk.mp4")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("redub_ui"), daemon=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def done_job(stack, talk):
    with stack.client("alice") as c:
        _, job_id = upload_file(c, talk, "es")
        view = wait_state(c, job_id, {"done", "failed"})
    assert view["state"] == "done", view
    return job_id


def shot(page, name: str, full: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


@pytest.fixture
def page(browser, stack):
    ctx = browser.new_context(base_url=stack.url, viewport=PHONE, device_scale_factor=1, is_mobile=True,
                              has_touch=True)
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    page.on("dialog", lambda d: d.accept())
    login(page, "alice")
    yield page
    ctx.close()


def overflowing(page) -> list:
    """Visible elements that stick out of the viewport sideways, and whether the page scrolls sideways."""
    return page.evaluate("""() => {
        const w = document.documentElement.clientWidth;
        const out = [...document.querySelectorAll('body *')]
          .filter(e => e.offsetParent !== null && !e.closest('.visually-hidden'))
          .map(e => [e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className, e.getBoundingClientRect().right])
          .filter(([, right]) => right > w + 0.5);
        const sw = document.documentElement.scrollWidth;
        if (sw > w) out.push(['page scrollWidth', sw]);
        return out; }""")


def small_targets(page) -> list:
    """Visible controls under 44×44 CSS px."""
    return page.evaluate("""() => [...document.querySelectorAll('button, a.btn, input, select, textarea, summary')]
        .filter(e => e.offsetParent !== null)
        .map(e => [e.id || e.textContent.trim().slice(0, 30), e.getBoundingClientRect().width,
                   e.getBoundingClientRect().height])
        .filter(([, w, h]) => w < 44 || h < 44)""")


def test_edit_save_and_redub_from_the_job_page(stack, done_job, page):
    watch = Watch(page)
    page.goto(f"/ui/jobs/{done_job}")
    editor = page.locator("#editor")
    expect(editor.get_by_role("heading", name="Edit transcript and translation")).to_be_visible()
    cards = page.locator("#segments > li.segment")
    expect(cards.first).to_be_visible()
    with stack.client("alice") as c:
        seg = c.get(f"/api/jobs/{done_job}/segments").json()
    assert cards.count() == len(seg["segments"]) >= 4  # one per sentence of SENTENCES
    first, target = seg["segments"][0], seg["segments"][1]
    card = page.locator(f'#segments li[data-segment-id="{target["id"]}"]')
    expect(card.locator("h3")).to_have_text(re.compile(r"^Segment 1 · \d+:\d\d\.\d – \d+:\d\d\.\d$"))
    spanish = card.get_by_label("Translation (Spanish)")
    expect(spanish).to_have_value(target["text"])
    expect(card.get_by_label("Original (English)")).to_have_value(target["source_text"])
    assert spanish.get_attribute("maxlength") == str(seg["limits"]["max_text_chars"])
    expect(card.locator('[data-field="edited"]')).to_be_hidden()
    runs = page.locator("#runs > li.run")
    expect(runs).to_have_count(1)
    expect(runs.first.locator('[data-field="kind"]')).to_have_text("Dub")
    expect(runs.first.locator(".run-head [data-field=state]")).to_have_text("Done")
    expect(runs.first.locator(".run-stages li")).to_have_count(7)
    shot(page, "redub-01-editor", full=True)

    # a timing edit that overlaps the previous segment: 422, shown at that segment and field; nothing saved,
    # the typed translation is still there
    spanish.fill(NEW_TEXT)
    expect(card.locator('[data-field="unsaved"]')).to_be_visible()
    card.get_by_text("Timing and voice").click()
    start = card.get_by_label("Starts at (seconds)")
    original_start = start.input_value()
    start.fill(f"{first['start']:.2f}")
    page.get_by_role("button", name="Save changes").click()
    error = card.locator('[data-field="error"]')
    expect(error).to_contain_text(f"overlaps segment {first['id']}")
    expect(error).to_contain_text("Start")
    expect(page.locator("#editor-error")).to_contain_text("your changes were not saved")
    expect(page.locator("#editor-status")).to_have_text("Not saved: your changes are still here.")
    expect(start).to_have_attribute("aria-invalid", "true")
    expect(start).to_be_focused()
    expect(spanish).to_have_value(NEW_TEXT)
    with stack.client("alice") as c:
        assert c.get(f"/api/jobs/{done_job}/segments").json()["revision"] == seg["revision"]
    shot(page, "redub-02-overlap-422")

    # put the timing back and save: only the changed translation goes out, with the revision
    start.fill(original_start)
    with page.expect_request(lambda r: r.method == "PUT" and r.url.endswith("/segments")) as put:
        page.get_by_role("button", name="Save changes").click()
    assert put.value.post_data_json == {"revision": seg["revision"],
                                        "segments": [{"id": target["id"], "text": NEW_TEXT}]}
    expect(page.locator("#editor-status")).to_have_text(re.compile(r"^Saved 1 changed line\."))
    expect(page.locator("#editor-error")).to_be_hidden()
    expect(card.locator('[data-field="edited"]')).to_be_visible()
    expect(card.locator('[data-field="unsaved"]')).to_be_hidden()
    expect(card.locator('[data-field="error"]')).to_be_hidden()
    with stack.client("alice") as c:
        saved = c.get(f"/api/jobs/{done_job}/segments").json()
    assert saved["revision"] == seg["revision"] + 1
    assert [s["text"] for s in saved["segments"] if s["edited"]] == [NEW_TEXT]

    # re-dub: a new run of its own in the Runs section, followed to the end
    old_src = page.locator("video#player").get_attribute("src")
    page.get_by_role("button", name="Re-dub").click()
    expect(page.locator("#editor-status")).to_contain_text("Re-dub requested")
    redub = page.locator('#runs > li.run[data-kind="redub"]')
    expect(redub).to_have_count(1, timeout=60_000)
    expect(redub.locator('[data-field="kind"]')).to_have_text("Re-dub")
    expect(page.get_by_role("button", name="Re-dub")).to_be_disabled(timeout=30_000)  # while it runs
    shot(page, "redub-03-running")
    expect(redub.locator(".run-head [data-field=state]")).to_have_text("Done", timeout=240_000)
    expect(redub.locator(".run-stages li")).to_have_count(3)
    assert redub.locator(".run-stages li").evaluate_all("ls => ls.map(l => l.dataset.stage)") == [
        "dubbed_speech", "dubbed_mix", "dubbed_video"]
    expect(redub.locator(".run-stages [data-field=state]")).to_have_text(["Done", "Done", "Done"])
    expect(page.locator("#job-state .badge")).to_have_text("Done", timeout=30_000)
    expect(page.locator("#timeline li[data-stage='dubbed_speech'] [data-field='meta']")).to_contain_text(
        "tts synthesized: 1")
    # the outputs and the player were refreshed; the editor is back with the edit marked
    player = page.locator("video#player")
    expect(player).to_have_attribute("src", re.compile(r"\?v="), timeout=20_000)
    assert player.get_attribute("src") != old_src
    expect(page.locator('#outputs a[href$=".es.vtt"]')).to_be_visible()
    expect(page.get_by_role("button", name="Re-dub")).to_be_enabled(timeout=20_000)
    expect(card.get_by_label("Translation (Spanish)")).to_have_value(NEW_TEXT)
    expect(card.locator('[data-field="edited"]')).to_be_visible()
    expect(page.locator("#log li.log-sep")).to_contain_text(["— re-dub —"])
    shot(page, "redub-04-done", full=True)

    with stack.client("alice") as c:
        view = c.get(f"/api/jobs/{done_job}").json()
        vtt = next(o for o in view["outputs"] if o.endswith(".es.vtt"))
        assert NEW_TEXT in c.get(f"/api/jobs/{done_job}/outputs/{vtt}").text
        tl = c.get(f"/api/jobs/{done_job}/timeline").json()
    assert [r["kind"] for r in tl["runs"]] == ["run", "redub"]

    # Re-dub again without a new edit: the server queues nothing (this revision had its run); the page says
    # so and does not sit waiting for a run
    page.get_by_role("button", name="Re-dub").click()
    expect(page.locator("#editor-status")).to_contain_text("already sent for re-dubbing")
    expect(page.get_by_role("button", name="Re-dub")).to_be_enabled()
    expect(runs).to_have_count(2)

    # a phone 360 px wide: one column, nothing sideways, full-width textareas, touch-sized controls
    page.set_viewport_size(NARROW)
    page.reload()
    expect(cards.first).to_be_visible()
    card.get_by_text("Timing and voice").click()
    assert overflowing(page) == []
    assert small_targets(page) == []
    widths = page.evaluate("""() => [...document.querySelectorAll('#segments textarea')].map(t =>
        [t.getBoundingClientRect().width, t.closest('li').clientWidth
         - parseFloat(getComputedStyle(t.closest('li')).paddingLeft)
         - parseFloat(getComputedStyle(t.closest('li')).paddingRight)])""")
    assert widths and all(abs(w - inner) < 1 for w, inner in widths), widths
    shot(page, "redub-05-360px", full=True)
    # keyboard: the editor's fields and buttons are in the tab order
    spanish = card.get_by_label("Translation (Spanish)")
    spanish.focus()
    page.keyboard.press("Tab")
    expect(card.get_by_text("Timing and voice")).to_be_focused()
    page.get_by_role("button", name="Save changes").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#editor-status")).to_have_text("Nothing to save: no line was changed.")
    assert watch.unexpected() == []


def test_someone_else_saved_first_keeps_my_unsaved_edit(stack, done_job, page):
    """A save with a stale revision is a 409: the message is at the top, the typed text stays, and "Load the
    latest version" brings in the other save while keeping the unsaved edit, which then saves."""
    page.goto(f"/ui/jobs/{done_job}")
    cards = page.locator("#segments > li.segment")
    expect(cards.first).to_be_visible()
    with stack.client("alice") as c:
        seg = c.get(f"/api/jobs/{done_job}/segments").json()
    mine, theirs = seg["segments"][2], seg["segments"][3]
    my_card = page.locator(f'#segments li[data-segment-id="{mine["id"]}"]')
    their_card = page.locator(f'#segments li[data-segment-id="{theirs["id"]}"]')
    my_card.get_by_label("Translation (Spanish)").fill("Los niños juegan en el jardín.")
    with stack.client("alice") as c:  # another tab saves first
        r = c.put(f"/api/jobs/{done_job}/segments", json={"revision": seg["revision"],
                                                          "segments": [{"id": theirs["id"], "text": "Otro cambio."}]})
        assert r.status_code == 200, r.text
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#editor-error")).to_contain_text("changed since you loaded them")
    expect(page.locator("#editor-error")).to_contain_text("(HTTP 409)")
    expect(page.locator("#editor-error")).to_be_in_viewport()
    expect(page.get_by_role("button", name="Load the latest version (keeps your changes)")).to_be_focused()
    expect(my_card.get_by_label("Translation (Spanish)")).to_have_value("Los niños juegan en el jardín.")
    expect(their_card.get_by_label("Translation (Spanish)")).to_have_value(theirs["text"])
    shot(page, "redub-06-stale-409")
    page.get_by_role("button", name="Load the latest version (keeps your changes)").click()
    expect(page.locator("#editor-status")).to_contain_text("your unsaved changes are kept")
    expect(their_card.get_by_label("Translation (Spanish)")).to_have_value("Otro cambio.")
    expect(their_card.locator('[data-field="edited"]')).to_be_visible()
    expect(my_card.get_by_label("Translation (Spanish)")).to_have_value("Los niños juegan en el jardín.")
    expect(my_card.locator('[data-field="unsaved"]')).to_be_visible()
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#editor-status")).to_have_text(re.compile(r"^Saved 1 changed line\."))
    with stack.client("alice") as c:
        now = c.get(f"/api/jobs/{done_job}/segments").json()
    assert now["revision"] == seg["revision"] + 2
    assert {s["id"]: s["text"] for s in now["segments"]}[mine["id"]] == "Los niños juegan en el jardín."


def test_a_reprocess_run_is_named_by_its_reason(stack, done_job, page):
    """The runs list names a scheduled reprocess by its reason (the timeline answer is extended here: a
    reprocess needs an engine upgrade to be requested)."""
    def with_reprocess(route):
        tl = route.fetch().json()
        tl["runs"].append({"run_id": "r" * 36, "status": "FAILURE", "kind": "reprocess",
                           "reason": "newer ASR model (tiny.en -> small.en)", "resumed": [],
                           "stages": [{"stage": "transcript", "label": "ASR", "state": "failed", "duration_s": 1.5}]})
        route.fulfill(json=tl)

    page.route(f"**/api/jobs/{done_job}/timeline", with_reprocess)
    page.goto(f"/ui/jobs/{done_job}")
    entry = page.locator('#runs > li.run[data-kind="reprocess"]')
    expect(entry.locator('[data-field="kind"]')).to_have_text("Reprocess: newer ASR model (tiny.en -> small.en)")
    expect(entry.locator(".run-head [data-field=state]")).to_have_text("Failed")
    expect(entry.locator('.run-stages li[data-stage="transcript"]')).to_contain_text("ASR")
    expect(entry.locator('.run-stages [data-field="duration"]')).to_have_text("1.5 s")
    expect(page.locator('#runs > li.run[data-kind="run"] [data-field="kind"]')).to_have_text("Dub")
    page.unroute_all(behavior="ignoreErrors")  # a refresh after the log's end may still be in the route


def test_pin_toggle(stack, done_job, page):
    page.goto(f"/ui/jobs/{done_job}")
    pin = page.get_by_role("button", name="Keep this job (never expire)")
    expect(pin).to_have_attribute("aria-pressed", "false")
    pin.click()
    expect(pin).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#pin-status")).to_have_text("The retention policy never deletes this job's files.")
    with stack.client("alice") as c:
        assert c.get(f"/api/jobs/{done_job}").json()["pinned"] is True
    page.reload()
    expect(pin).to_have_attribute("aria-pressed", "true")
    shot(page, "redub-07-pinned")
    pin.press("Enter")  # the keyboard works the toggle too
    expect(pin).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#pin-status")).to_contain_text("Not kept")
    with stack.client("alice") as c:
        assert c.get(f"/api/jobs/{done_job}").json()["pinned"] is False


def test_what_retention_leaves(stack, done_job, page):
    """Retention's tombstones, set as its sweep sets them: first the working files (the editor says it can no
    longer edit; the outputs are still offered), then everything (a banner instead of the downloads)."""
    from resources.jobstore import JobStore

    store = JobStore()  # the stack's job store: make_stack pointed this process at its data folder
    store.mark_expired(done_job, artifacts=True)
    page.goto(f"/ui/jobs/{done_job}")
    expect(page.locator("#editor-gone")).to_have_text(
        "This job's working files were removed by the retention policy; it can no longer be edited.")
    expect(page.locator("#segments li")).to_have_count(0)
    expect(page.get_by_role("button", name="Re-dub")).to_be_hidden()
    expect(page.locator("#result")).to_be_visible()
    shot(page, "redub-08-working-files-removed")

    store.mark_expired(done_job, everything=True)
    page.reload()
    expect(page.locator("#job-state .badge")).to_have_text("Expired")
    banner = page.locator("#expired-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("deleted by the retention policy on")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#editor")).to_be_hidden()
    expect(page.locator("#pin-box")).to_be_hidden()
    expect(page.get_by_role("button", name="Retry")).to_be_hidden()
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    shot(page, "redub-09-expired")
    with stack.client("alice") as c:
        view = c.get(f"/api/jobs/{done_job}").json()
        assert view["state"] == "expired"
