"""The quality gate as users meet it, on a live stack (uvicorn + a real dagster-daemon + a local server speaking
ntfy's publish API): a rushed talk's dub is stopped by speech_kept before anything is published; the job
needs review in the job view, the list (and its state filter) and the timeline; GET /quality reads the checks
from Dagster (owner and admin only); the owner is told "Dub needs review: speech_kept: ..."; the Quality panel
in Chromium at a phone's size names the lines and links to them in the editor; "Publish anyway" (audited,
queued once) runs the stages again with the check accepted, and the job is done with its outputs. A job that
passes every check shows them all passed."""

from __future__ import annotations

import re
import secrets
import time

import pytest
from playwright.sync_api import expect

import mediagen
from live import running_stack, upload_file
from ntfy_fake import FakeNtfy
from test_jobs_api import wait_state
from test_ui_browser import ARTIFACTS, PHONE, Watch, login

pytestmark = pytest.mark.slow
SECRET = "tk_" + secrets.token_hex(14)
FINISHED = {"done", "failed", "needs_review", "cancelled"}


@pytest.fixture(scope="module")
def ntfy():
    server = FakeNtfy(auth=f"Bearer {SECRET}").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ntfy):
    env = dict(NTFY_URL=ntfy.url, NTFY_AUTH=SECRET, PUBLIC_BASE_URL="https://dub.example.org",
               NOTIFY_SENSOR_INTERVAL_S="1", NTFY_OUTBOX_INTERVAL_S="1")
    with running_stack(tmp_path_factory.mktemp("quality_api"), env, daemon=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def talks(tmp_path_factory, rushed_video):
    folder = tmp_path_factory.mktemp("calm")
    wav, _ = mediagen.speech_track(mediagen.SCRIPT[:3], folder)
    return rushed_video, mediagen.make_video(wav, folder / "calm talk.mp4")


@pytest.fixture(scope="module")
def review_job(stack, talks):
    with stack.client("alice") as c:
        _, job_id = upload_file(c, talks[0], "es")
        view = wait_state(c, job_id, FINISHED)
    assert view["state"] == "needs_review", view
    return job_id


def test_a_job_stopped_by_a_check_needs_review_everywhere(stack, review_job):
    with stack.client("alice") as a, stack.client("bob") as b, stack.client("root") as r:
        view = a.get(f"/api/jobs/{review_job}").json()
        assert view["outputs"] == [] and [x["check"] for x in view["review"]] == ["speech_kept"]
        assert view["review"][0]["stage"] == "dubbed_speech" and "do not fit" in view["review"][0]["description"]
        listed = a.get("/api/jobs", params={"state": "needs_review"}).json()["jobs"]
        assert [j["job_id"] for j in listed] == [review_job] and listed[0]["review"][0]["check"] == "speech_kept"
        assert a.get("/api/jobs", params={"state": "failed"}).json()["jobs"] == []
        timeline = a.get(f"/api/jobs/{review_job}/timeline").json()
        stage = next(s for s in timeline["stages"] if s["stage"] == "dubbed_speech")
        assert stage["state"] == "review" and stage["error"].startswith("speech_kept: ")
        assert [s["state"] for s in timeline["stages"] if s["stage"] in ("dubbed_mix", "dubbed_video")] == \
            ["pending", "pending"]

        q = a.get(f"/api/jobs/{review_job}/quality")
        assert q.status_code == 200, q.text
        q = q.json()
        assert q["state"] == "needs_review" and q["summary"].startswith("needs review: speech_kept: ")
        by_name = {c["name"]: c for c in q["checks"]}
        assert list(by_name) == ["speech_speed", "speech_kept", "coverage", "no_overlap", "round_trip", "loudness",
                                 "output_streams", "sync"]  # pipeline order
        # the run stopped at dubbed_speech: what comes after it was never evaluated, and says why
        assert {n: by_name[n]["status"] for n in ("round_trip", "loudness", "output_streams", "sync")} == dict.fromkeys(
            ("round_trip", "loudness", "output_streams", "sync"), "not_run")
        assert by_name["sync"]["description"] == "not run: an earlier check stopped the run"
        kept = by_name["speech_kept"]
        assert (kept["status"], kept["passed"], kept["severity"], kept["blocking"], kept["asset"]) == \
            ("failed", False, "error", True, "dubbed_speech")
        assert kept["run_id"] == view["run_id"] and kept["metadata"]["cut_count"] >= 1
        assert [c["id"] for c in kept["metadata"]["cut_segments"]]
        assert by_name["speech_speed"]["status"] == "passed" and by_name["coverage"]["status"] == "passed"
        assert b.get(f"/api/jobs/{review_job}/quality").status_code == 404  # another user's job
        assert r.get(f"/api/jobs/{review_job}/quality").status_code == 200  # an admin
        assert a.get("/api/jobs/j" + "0" * 32 + "/quality").status_code == 404
        # retry re-runs the same inputs into the same check: refused, with what to do instead
        retry = a.post(f"/api/jobs/{review_job}/retry")
        assert retry.status_code == 409 and "needs_review" in retry.json()["detail"]
        assert a.get(f"/api/jobs/{review_job}/outputs/rushed_talk.es.mkv").status_code == 409


def test_the_owner_is_told_the_dub_needs_review(stack, review_job, ntfy):
    deadline = time.time() + 60
    while time.time() < deadline and not ntfy.to("dub-alice"):
        time.sleep(0.5)
    [message] = ntfy.to("dub-alice")
    assert message.title.startswith("Dub needs review: speech_kept: "), message.title
    assert "Not published" in message.message and message.click.endswith(f"/ui/jobs/{review_job}")
    assert "warning" in message.tags


def test_quality_panel_names_the_lines_and_publish_anyway(stack, review_job, browser, ntfy):
    ctx = browser.new_context(base_url=stack.url, viewport=PHONE, device_scale_factor=1, is_mobile=True,
                              has_touch=True)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    page.on("dialog", lambda d: d.accept())
    watch = Watch(page)
    login(page, "alice")
    page.goto("/ui")
    card = page.locator(f'li.job-card[data-job-id="{review_job}"]')
    expect(card.locator('[data-field="state"]')).to_have_text("Needs review")
    expect(card.locator('[data-field="last"]')).to_have_text("Not published: speech_kept failed")
    page.goto(f"/ui/jobs/{review_job}")
    panel = page.locator("#quality")
    expect(panel.get_by_role("heading", name="Quality")).to_be_visible()
    expect(page.locator("#quality-summary")).to_have_text(re.compile(r"^needs review: speech_kept: "))
    kept = page.locator('#checks li[data-check="speech_kept"]')
    expect(kept.locator('[data-field="status"]')).to_have_text("Failed")
    expect(page.locator('#checks li[data-check="sync"] [data-field="status"]')).to_have_text("Not run")
    links = kept.locator(".qcheck-lines a")
    expect(links.first).to_be_visible()
    with stack.client("alice") as c:
        cut = c.get(f"/api/jobs/{review_job}/quality").json()
    ids = [x["id"] for x in next(x for x in cut["checks"] if x["name"] == "speech_kept")["metadata"]["cut_segments"]]
    expect(links).to_have_count(len(ids))
    expect(page.locator("#segments > li.segment").first).to_be_visible()  # the editor is open for review
    links.first.click()  # goes to that line in the editor, its first field focused
    focused = page.evaluate("document.activeElement.closest('li.segment')?.dataset.segmentId")
    assert focused == str(ids[0]), focused
    box = links.first.bounding_box()
    assert box["height"] >= 44 and box["width"] >= 44
    overflow = page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
    assert not overflow
    page.locator("#quality").screenshot(path=str(ARTIFACTS / "quality-01-needs-review.png"))

    page.get_by_role("button", name="Publish anyway").click()
    expect(page.locator("#quality-status")).to_have_text(re.compile(r"^Publishing: .*speech_kept accepted"))
    expect(page.locator("#job-state .badge")).to_have_text("Done", timeout=240_000)
    expect(kept.locator('[data-field="status"]')).to_have_text("Accepted", timeout=30_000)
    expect(page.locator("#outputs a").first).to_be_visible()
    expect(page.locator('#runs > li.run[data-kind="publish"] [data-field="kind"]')).to_have_text(
        "Published after review")
    page.locator("#quality").screenshot(path=str(ARTIFACTS / "quality-02-published.png"))
    assert not watch.unexpected(), watch.errors
    ctx.close()

    with stack.client("alice") as a:
        again = a.post(f"/api/jobs/{review_job}/publish")
        assert again.status_code == 409 and "this one is done" in again.json()["detail"]
        q = a.get(f"/api/jobs/{review_job}/quality").json()
        statuses = {c["name"]: c["status"] for c in q["checks"]}
        assert statuses["speech_kept"] == "accepted" and statuses["sync"] == "passed"
        assert q["summary"].endswith("(speech_kept accepted)")
        timeline = a.get(f"/api/jobs/{review_job}/timeline").json()
        assert [r["kind"] for r in timeline["runs"]] == ["run", "publish"]
        assert "published after review by alice" in timeline["runs"][1]["reason"]
    audit = (stack.root / "api.log").read_text(errors="replace")
    assert '"job_publish_requested"' in audit and '"speech_kept"' in audit
    deadline = time.time() + 60
    while time.time() < deadline and len(ntfy.to("dub-alice")) < 2:
        time.sleep(0.5)
    assert ntfy.to("dub-alice")[-1].title.startswith("Reviewed dub ready: rushed talk.mp4")


def test_publish_is_for_the_owner_and_only_once(stack, talks):
    with stack.client("alice") as a, stack.client("bob") as b:
        _, job_id = upload_file(a, talks[0], "es")
        assert wait_state(a, job_id, FINISHED)["state"] == "needs_review"
        assert b.post(f"/api/jobs/{job_id}/publish").status_code == 404
        first = a.post(f"/api/jobs/{job_id}/publish")
        assert first.status_code == 202, first.text
        assert first.json()["queued"] is True and first.json()["accepted"] == ["speech_kept"]
        assert first.json()["stages"] == ["dubbed_speech", "dubbed_mix", "dubbed_video"]
        second = a.post(f"/api/jobs/{job_id}/publish")  # a double click: the same request, nothing new
        assert second.status_code in (202, 409)
        if second.status_code == 202:
            assert second.json()["queued"] is False and second.json()["request_key"] == first.json()["request_key"]
        assert wait_state(a, job_id, {"done", "failed", "cancelled"})["state"] == "done"  # after the publish run
        assert [r["kind"] for r in a.get(f"/api/jobs/{job_id}/timeline").json()["runs"]] == ["run", "publish"]


def test_a_dub_that_passes_shows_every_check_passed(stack, talks):
    with stack.client("alice") as a:
        _, job_id = upload_file(a, talks[1], "es")
        assert wait_state(a, job_id, FINISHED)["state"] == "done"
        q = a.get(f"/api/jobs/{job_id}/quality").json()
        statuses = {c["name"]: c["status"] for c in q["checks"]}
        assert statuses == {"speech_speed": "passed", "speech_kept": "passed", "coverage": "passed",
                            "no_overlap": "passed", "round_trip": "skipped", "loudness": "passed",
                            "output_streams": "passed", "sync": "passed"}
        assert q["summary"] == "8 of 8 checks passed"
        assert a.post(f"/api/jobs/{job_id}/publish").status_code == 409
