"""The web UI in a real browser: Playwright (sync API) driving Debian's Chromium at a phone's size
(390×844) against a live stack (uvicorn + a real dagster-daemon).

Log in through the form, upload a generated video through the wizard while the network drops
chunk requests for a while (the UI says so, retries with backoff and finishes once the network is
back), follow the job page until Export is done, download the MKV and find the player. Also: pages
redirect to the login without a session, another user's job is a 404 page, admin pages are for
admins (the settings page is everyone's: tests/test_settings_ui.py), and a reload during an upload
continues the same upload from next_missing (pause/resume, cancel of the job). Screenshots of every
step go to tests/artifacts/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

import mediagen

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
IPHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.5 Mobile/15E148 Safari/604.1")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHUNKS = "**/api/uploads/*/chunk*"
CHUNK = 256 * 1024  # UPLOAD_CHUNK_BYTES of the api fixture


@pytest.fixture(scope="module")
def stack(api):
    api.start_daemon()  # warms up while the browser logs in and uploads
    yield api
    api.stop("daemon")


@pytest.fixture(scope="module")
def big_video(tmp_path_factory):
    """The test script's speech (~24 s) over a noisy test pattern: about 2 MB, 9 chunks of 256 KiB."""
    work = tmp_path_factory.mktemp("ui_media")
    wav, _ = mediagen.speech_track(mediagen.SCRIPT, work, voice="espeak")
    out = work / "ui talk.mp4"  # a space in the name, as people's files have
    mediagen.ffmpeg("-f", "lavfi", "-t", f"{mediagen.wav_seconds(wav):.3f}", "-i", "testsrc2=size=480x270:rate=15",
                    "-i", str(wav), "-map", "0:v", "-map", "1:a", "-vf", "noise=alls=25:allf=t",
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "600k", "-maxrate", "600k",
                    "-bufsize", "1M", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", str(out))
    assert out.stat().st_size > 6 * CHUNK
    return out


class Gate:
    """A page.route handler for chunk PUTs: lets `allow` through, then drops every request (as a
    dead network would) until unrouted. Records each request's index and headers."""

    def __init__(self, allow: int):
        self.allow, self.aborted, self.seen = allow, 0, []

    def __call__(self, route):
        req = route.request
        self.seen.append({"index": int(re.search(r"index=(\d+)", req.url).group(1)),
                          "csrf": req.header_value("x-csrf-token"), "sha": req.header_value("x-chunk-sha256")})
        if self.allow > 0:
            self.allow -= 1
            route.continue_()
        else:
            self.aborted += 1
            route.abort("internetdisconnected")


class Watch:
    """Console errors and uncaught exceptions of a page (CSP violations show up here)."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def unexpected(self) -> list[str]:
        # dropped chunk requests and the player's range requests are expected network noise
        return [e for e in self.errors if "Failed to load resource" not in e and "net::ERR" not in e]


def shot(page, name: str, full: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def new_page(browser, stack, *, ua: str | None = None):
    ctx = browser.new_context(base_url=stack.url, viewport=PHONE, device_scale_factor=1, is_mobile=True,
                              has_touch=True, accept_downloads=True, user_agent=ua)
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    page.on("dialog", lambda d: d.accept())  # confirm() of cancel buttons, beforeunload
    return ctx, page


def login(page, name: str, shot_name: str | None = None) -> None:
    page.goto("/ui/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(f"{name}-password-123")
    if shot_name:
        shot(page, shot_name)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ui$"))


def pick_and_start(page, video: Path) -> None:
    page.set_input_files("#file", str(video))
    expect(page.locator("#to-langs")).to_be_enabled()
    page.locator("#to-langs").click()
    expect(page.get_by_label("Spoken language in the video")).to_have_value("en")
    expect(page.get_by_label("Dub into")).to_have_value("es")


def small_targets(page) -> list:
    """Visible controls under 44×44 CSS px (inline text links aside)."""
    return page.evaluate("""() => [...document.querySelectorAll('button, a.btn, input, select, summary, nav a')]
        .filter(e => e.offsetParent !== null)
        .map(e => [e.id || e.textContent.trim().slice(0, 30), e.getBoundingClientRect().width,
                   e.getBoundingClientRect().height])
        .filter(([, w, h]) => w < 44 || h < 44)""")


def progress_bytes(page) -> int:
    return page.eval_on_selector("#upload-progress", "p => p.value")


def test_pages_need_a_session(stack, browser):
    ctx = browser.new_context(base_url=stack.url, viewport=PHONE)
    page = ctx.new_page()
    for path in ("/ui", "/ui/upload", "/ui/jobs/j" + "0" * 32, "/ui/settings"):
        page.goto(path)
        assert page.url == f"{stack.url}/ui/login?next={path}", page.url
    resp = page.goto("/ui/login?next=//evil.example/x")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.locator("#login-form").get_attribute("data-next") == "/ui"  # no open redirect
    # keyboard only: the user name field has the focus, Tab to the password, Enter submits
    expect(page.get_by_label("User name")).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type("not-her-password")
    page.keyboard.press("Enter")
    expect(page.locator("#login-error")).to_have_text("Error: wrong user name or password (HTTP 401)")
    shot(page, "ui-00-login-error")
    ctx.close()


def test_upload_through_a_network_drop_then_follow_the_job_to_done(stack, browser, big_video):
    ctx, page = new_page(browser, stack, ua=IPHONE_UA)
    watch = Watch(page)
    login(page, "alice", "ui-01-login")
    expect(page.locator("#jobs-empty")).to_be_visible()
    shot(page, "ui-02-dashboard-empty")
    assert page.evaluate("Object.keys(localStorage).filter(k => !k.startsWith('dub-upload:'))") == []

    page.get_by_role("link", name="Upload a video").first.click()
    page.wait_for_url(re.compile(r"/ui/upload$"))
    expect(page.locator("#ios-hint")).to_be_visible()
    expect(page.locator("#ios-hint")).to_contain_text("Keep this screen open")
    pick_and_start(page, big_video)
    shot(page, "ui-03-upload-languages")
    assert small_targets(page) == []

    gate = Gate(allow=3)
    page.route(CHUNKS, gate)
    page.get_by_role("button", name="Start upload").click()
    error = page.locator("#upload-error")
    expect(error).to_contain_text("Retrying in", timeout=20_000)
    expect(error).to_contain_text("No connection to the server")
    page.wait_for_function("() => document.getElementById('upload-error').textContent.includes('attempt 3')",
                           timeout=20_000)
    assert progress_bytes(page) == 3 * CHUNK  # the server's count: three chunks got through
    expect(page.locator("#progress-text")).to_contain_text("3 of 9 parts on the server")
    expect(page.locator("#upload-status")).to_have_text(re.compile("Connection problem"))
    shot(page, "ui-04-upload-network-down")
    page.unroute(CHUNKS, gate)  # the network is back: the next retry (≤ 4 s away) goes through

    page.wait_for_url(re.compile(r"/ui/jobs/j[0-9a-f]{32}$"), timeout=30_000)
    job_id = page.url.rsplit("/", 1)[1]
    assert gate.aborted >= 3
    assert [s["index"] for s in gate.seen[:3]] == [0, 1, 2] and all(s["index"] == 3 for s in gate.seen[3:])
    assert all(s["csrf"] and re.fullmatch(r"[0-9a-f]{64}", s["sha"]) for s in gate.seen)
    shot(page, "ui-05-job-started")

    export = page.locator('#timeline li[data-stage="dubbed_video"] [data-field="state"]')
    expect(export).to_have_text("Done", timeout=120_000)
    expect(page.locator("#job-state .badge")).to_have_text("Done", timeout=10_000)
    expect(page.locator("#log-status")).to_contain_text("The run has finished", timeout=20_000)
    assert page.locator("#log li").count() > 10
    expect(page.locator("#queue-wait")).to_have_text(re.compile(r"^\d+(\.\d)? (s|min)"))
    for stage in ("source_media", "transcript", "translation", "dubbed_speech", "dubbed_mix"):
        expect(page.locator(f'#timeline li[data-stage="{stage}"] [data-field="state"]')).to_have_text("Done")
    expect(page.locator("#cancel")).to_be_hidden()
    mkv = page.locator('#outputs a[href$=".mkv"]')
    expect(mkv).to_be_visible()
    player = page.locator("video#player")
    expect(player).to_be_attached()
    assert player.get_attribute("src").endswith(".mkv")
    shot(page, "ui-06-job-done")
    assert small_targets(page) == []
    shot(page, "ui-06-job-done-full", full=True)

    with page.expect_download() as dl:
        mkv.click()
    download = dl.value
    assert download.suggested_filename == "ui_talk.es.mkv"
    assert Path(download.path()).stat().st_size > 0

    page.get_by_role("link", name="My jobs").click()
    card = page.locator(f'.job-card[data-job-id="{job_id}"]')
    expect(card.locator('[data-field="state"]')).to_have_text("Done")
    expect(card.locator('[data-field="link"]')).to_have_text(big_video.name)
    expect(card.locator('[data-field="langs"]')).to_have_text("English → Spanish")
    shot(page, "ui-07-dashboard")
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('dub-upload:'))") == []

    # admin pages are for admins; the settings page is every user's (no ntfy server on this stack)
    assert page.goto("/ui/models").status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Admins only")
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Settings")
    expect(page.locator("#not-configured")).to_contain_text("Notifications are not set up on this server")
    expect(page.get_by_role("button", name="Send test notification")).to_be_disabled()
    assert watch.unexpected() == []

    # another user's job is a 404 page; the same for root is an admin's view
    bob_ctx, bob = new_page(browser, stack)
    login(bob, "bob")
    resp = bob.goto(f"/ui/jobs/{job_id}")
    assert resp.status == 404
    expect(bob.get_by_role("heading", level=1)).to_have_text("Job not found")
    shot(bob, "ui-08-other-users-job-404")
    assert bob.locator(f'.job-card[data-job-id="{job_id}"]').count() == 0
    bob.get_by_role("button", name="Log out").click()
    bob.wait_for_url(re.compile(r"/ui/login"))
    assert bob.goto("/ui").url.endswith("/ui/login?next=/ui")
    bob_ctx.close()

    root_ctx, root = new_page(browser, stack)
    login(root, "root")
    assert root.goto("/ui/settings").status == 200
    expect(root.get_by_role("heading", level=1)).to_have_text("Settings")
    expect(root.locator("#subscribe-topic")).to_have_count(0)  # no NTFY_URL on this stack
    assert root.goto("/ui/models").status == 200  # the page itself: tests/test_models_ui_browser.py
    expect(root.get_by_role("heading", level=1)).to_have_text("Models")
    expect(root.locator('tr[data-model-id="translation:apertium:eng-spa"] [data-field="ready"]')).to_have_text("Ready")
    shot(root, "ui-09-admin-models")
    # on a desktop-sized window, an admin sees alice's job (as in the API)
    root.set_viewport_size({"width": 1280, "height": 900})
    assert root.goto(f"/ui/jobs/{job_id}").status == 200
    expect(root.locator('#timeline li[data-stage="dubbed_video"] [data-field="state"]')).to_have_text("Done")
    expect(root.locator("#outputs li").first).to_contain_text(".mkv")
    shot(root, "ui-09-desktop-job-as-admin", full=True)
    root_ctx.close()
    ctx.close()


def test_reload_mid_upload_continues_the_same_upload(stack, browser, big_video):
    ctx, page = new_page(browser, stack)
    watch = Watch(page)
    login(page, "alice")
    page.goto("/ui/upload")
    # a refused upload shows the server's reason in words
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a video"}])
    page.locator("#to-langs").click()
    page.get_by_role("button", name="Start upload").click()
    expect(page.locator("#upload-error")).to_have_text(
        "Error: content type 'text/plain' is not video/* or audio/* (HTTP 415)")
    expect(page.locator("#upload-status")).to_have_text("The upload stopped.")
    expect(page.get_by_role("button", name="Resume")).to_be_hidden()
    shot(page, "ui-10-upload-refused")
    page.get_by_role("button", name="Choose another file").click()
    expect(page.get_by_role("heading", name="1. Choose a video")).to_be_focused()

    pick_and_start(page, big_video)
    page.get_by_label("Voice", exact=True).select_option("espeak")  # (French would be refused: no en→fr here)

    gate = Gate(allow=2)
    page.route(CHUNKS, gate)
    page.get_by_role("button", name="Start upload").click()
    expect(page.locator("#upload-error")).to_contain_text("Retrying in", timeout=20_000)
    assert progress_bytes(page) == 2 * CHUNK
    stored = page.evaluate("Object.entries(localStorage).filter(([k]) => k.startsWith('dub-upload:'))")
    assert len(stored) == 1
    key, record = stored[0][0], json.loads(stored[0][1])
    assert key == record["key"] and re.search(rf":{re.escape(big_video.name)}:{big_video.stat().st_size}:\d+$", key)
    upload_id = record["upload_id"]
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#upload-status")).to_contain_text("Paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    shot(page, "ui-11-upload-paused")
    page.unroute(CHUNKS, gate)

    # reload: the file input is empty again; the page lists the unfinished upload
    page.reload()
    # the generated video's size varies a little (random noise): 2.1 or 2.2 MB
    expect(page.locator("#pending-list")).to_contain_text(
        re.compile(rf"{re.escape(big_video.name)}: 524 KB of 2\.\d MB \(2\d%\) on the server"))
    shot(page, "ui-12-after-reload")
    calls: list[str] = []
    page.on("request", lambda r: "/api/uploads/" in r.url and calls.append(f"{r.method} {r.url}"))
    gate = Gate(allow=2)
    page.route(CHUNKS, gate)
    page.set_input_files("#file", str(big_video))  # the same file again: no new init, continue at chunk 2
    expect(page.locator("#file-info")).to_contain_text("already on the server")
    expect(page.locator("#upload-error")).to_contain_text("Retrying in", timeout=20_000)
    assert not any("/init" in c for c in calls), calls
    assert [s["index"] for s in gate.seen[:2]] == [2, 3]
    assert all(upload_id in c for c in calls if "chunk" in c)
    expect(page.get_by_label("Voice", exact=True)).to_have_value("espeak")  # the choices came back with the upload
    assert progress_bytes(page) == 4 * CHUNK
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#upload-status")).to_contain_text("Paused")
    page.unroute(CHUNKS, gate)
    page.get_by_role("button", name="Resume").click()
    page.wait_for_url(re.compile(r"/ui/jobs/j[0-9a-f]{32}$"), timeout=30_000)
    job_id = page.url.rsplit("/", 1)[1]
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.tokens['alice']}"}) as c:
        job = c.get(f"/api/jobs/{job_id}").json()
        assert job["upload_id"] == upload_id and job["options"]["tts_engine"] == "espeak"
        assert c.get(f"/api/uploads/{upload_id}").json()["state"] == "complete"
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('dub-upload:'))") == []

    # cancel it from the job page (POST with the CSRF header, after a confirm())
    cancel = page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_visible()
    cancel.click()
    expect(page.locator("#job-state .badge")).to_have_text("Cancelled", timeout=30_000)
    expect(page.locator("#job-status")).to_contain_text(re.compile("cancelled", re.I))
    expect(page.get_by_role("button", name="Retry")).to_be_visible()
    expect(cancel).to_be_hidden()
    shot(page, "ui-13-job-cancelled")
    assert watch.unexpected() == []
    ctx.close()


def test_javascript_sha256_fallback_matches_hashlib(browser):
    """Over plain http on a LAN address there is no crypto.subtle: upload.js hashes chunks itself."""
    import hashlib

    src = (Path(__file__).parent.parent / "upload_api/static/upload.js").read_text()
    end = src.index("  /* ---------------------------------------------------------------- stored uploads")
    body = src[src.index("  const K = new Uint32Array"):end]
    sizes = [0, 1, 55, 56, 63, 64, 65, 1000, 262_144 + 3]
    page = browser.new_page()
    got = page.evaluate("sizes => {" + body + """
        return sizes.map(n => {
          const d = new Uint8Array(n);
          for (let i = 0; i < n; i++) d[i] = (i * 31 + 7) & 255;
          return Array.from(sha256js(d), x => x.toString(16).padStart(2, "0")).join("");
        }); }""", sizes)
    page.close()
    assert got == [hashlib.sha256(bytes((i * 31 + 7) & 255 for i in range(n))).hexdigest() for n in sizes]
