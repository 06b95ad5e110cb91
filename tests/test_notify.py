"""Notifications: the ntfy notifier, the outbox and its retries (against a local server speaking
ntfy's publish API), per-user settings through the API, and whole jobs on a live stack (uvicorn +
dagster-daemon) producing exactly one message per finished, failed and cancelled run."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import shutil
import time

import pytest

import mediagen
from live import running_stack, upload_file
from ntfy_fake import FakeNtfy
from resources import notify
from resources.jobstore import JobStore
from resources.logs import JsonFormatter
from resources.notify import FAILED, HELD, PENDING, SENT, SKIPPED, NotifyStore, NtfyResource, deliver_due

SECRET = "tk_" + secrets.token_hex(14)
BASE = "https://dub.example.org"


def message(topic="dub-alice", **kw):
    return NtfyResource(url="http://x", public_base_url=BASE).job_message(
        kw.pop("event", "success"), topic=topic, priority=kw.pop("priority", 3), job_id=kw.pop("job_id", "j1"),
        filename=kw.pop("filename", "talk.mp4"), source_lang="en", target_lang="es", **kw)


# ------------------------------------------------------------------------------- the notifier


def test_topics_are_checked_like_ntfy_does():
    assert notify.topic_problem("dub-alice_2") is None
    assert "1 to 64" in notify.topic_problem("bad topic")
    assert "1 to 64" in notify.topic_problem("x" * 65)
    assert "1 to 64" in notify.topic_problem("")
    assert "1 to 64" in notify.topic_problem("ünïcode")
    assert "reserved" in notify.topic_problem("settings")
    assert "reserved" in notify.topic_problem("V1")


def test_messages_have_title_click_actions_and_stay_within_ntfy_limits():
    ok = message(media_seconds=68.2, run_seconds=41, download="talk.es.mkv", job_id="j42")
    assert ok["title"] == "Dub ready: talk.mp4 → es"
    assert "en → es" in ok["message"] and "video 1:08" in ok["message"] and "took 0:41" in ok["message"]
    assert ok["click"] == f"{BASE}/ui/jobs/j42"
    assert [a["label"] for a in ok["actions"]] == ["Open job", "Download"]
    assert ok["actions"][1]["url"] == f"{BASE}/api/jobs/j42/outputs/talk.es.mkv"
    failed = message(event="failure", stage_label="TTS", error="espeak-ng crashed")
    assert failed["title"] == "Dub failed at TTS: talk.mp4" and "espeak-ng crashed" in failed["message"]
    assert message(event="failure")["title"] == "Dub failed: talk.mp4"
    assert message(event="cancel")["title"] == "Dub cancelled: talk.mp4"
    assert message(what="Re-dub")["title"] == "Re-dub ready: talk.mp4 → es"  # a re-dub after a segment edit
    huge = message(event="failure", stage_label="ASR", error="é" * 10_000, filename="ü" * 300 + ".mp4")
    assert len(huge["message"].encode()) <= 4096 and len(huge["title"]) <= 200
    bare = NtfyResource(url="http://x").job_message("success", topic="t", priority=3, job_id="j", filename="a",
                                                    source_lang="en", target_lang="es", download="a.mkv")
    assert "click" not in bare and "actions" not in bare  # no PUBLIC_BASE_URL: no deep link


def test_default_topics_never_collide_and_custom_topics_keep_the_prefix():
    n = NtfyResource(url="http://x")
    assert n.default_topic("alice") == "dub-alice"
    dotted, underscored = n.default_topic("a.b"), n.default_topic("a_b")
    assert dotted != underscored and notify.topic_problem(dotted) is None
    long_a, long_b = n.default_topic("x" * 63 + "a"), n.default_topic("x" * 63 + "b")
    assert long_a != long_b and len(long_a) <= 64 and notify.topic_problem(long_a) is None
    assert "start with 'dub-'" in n.custom_topic_problem("alice-phone")
    assert n.custom_topic_problem("dub-alice-phone") is None
    assert NtfyResource(url="http://x", topic_prefix="").custom_topic_problem("anything") is None
    assert NtfyResource(url="http://x", topic_prefix="d.b-").default_topic("al") == "d_b-al"
    assert NtfyResource(url="https://u:p@ntfy.example.com").auth_configured
    assert not NtfyResource(url="https://ntfy.example.com").auth_configured
    assert NtfyResource(url="http://10.0.0.5", public_url="https://ntfy.example.com/").server_label() \
        == "https://ntfy.example.com"


def test_auth_header_forms():
    assert NtfyResource(url="http://x", auth="tk_abc")._auth_header() == "Bearer tk_abc"
    assert NtfyResource(url="http://x", auth="Bearer tk_abc")._auth_header() == "Bearer tk_abc"
    basic = NtfyResource(url="http://x", auth="dubbing:pa:ss")._auth_header()
    assert basic == "Basic " + base64.b64encode(b"dubbing:pa:ss").decode()
    creds_in_url = NtfyResource(url="https://bot:pw@ntfy.example.com/")
    assert creds_in_url.server_label() == "https://ntfy.example.com"
    assert creds_in_url._auth_header() == "Basic " + base64.b64encode(b"bot:pw").decode()


@pytest.fixture
def fake():
    server = FakeNtfy(auth=f"Bearer {SECRET}").start()
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path):
    return NotifyStore(JobStore(database_url=f"sqlite:///{tmp_path / 'jobs.db'}"))


def fast(server: FakeNtfy, **kw) -> NtfyResource:
    return NtfyResource(url=server.url, auth=SECRET, public_base_url=BASE, retry_max_s=0.2, **kw)


class Captured(logging.Handler):
    """The notifier's log lines, formatted as they are written (JSON)."""

    def __init__(self):
        super().__init__()
        self.records, self.lines = [], []
        self.setFormatter(JsonFormatter())

    def emit(self, record):
        self.records.append(record)
        self.lines.append(self.format(record))

    @property
    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def caplog_json():
    handler = Captured()
    logger = logging.getLogger("dubbing.notify")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def drain(ntfy, store, until, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        deliver_due(ntfy, store)
        if until():
            return
        time.sleep(0.1)
    raise AssertionError(f"outbox did not settle: {store.entries()}")


def test_outbox_retries_5xx_and_429_then_delivers_once(fake, store, caplog_json):
    ntfy = fast(fake)
    fake.fail_next(2, 503)
    fake.fail_next(1, 429)
    assert store.enqueue("run1", "success", job_id="j1", user_id="u1", topic="dub-alice", payload=message())
    assert not store.enqueue("run1", "success", job_id="j1", user_id="u1", topic="dub-alice", payload=message())
    drain(ntfy, store, lambda: store.get("run1", "success").status == SENT)
    for _ in range(3):
        deliver_due(ntfy, store)
    entry = store.get("run1", "success")
    assert entry.attempts == 4 and entry.last_error is None
    assert len(fake.to("dub-alice")) == 1  # 3 refused attempts, then exactly one message
    got = fake.to("dub-alice")[0]
    assert got.authorization == f"Bearer {SECRET}" and got.title == "Dub ready: talk.mp4 → es"
    lines = [r for r in caplog_json.records if r.getMessage() == "ntfy send"]
    outcomes = [r.fields["outcome"] for r in lines]
    assert outcomes == ["retry", "retry", "retry", "sent"]
    assert all(r.fields["run_id"] == "run1" and r.fields["job_id"] == "j1" and r.fields["user_id"] == "u1"
               for r in lines)
    assert SECRET not in caplog_json.text


def test_outbox_gives_up_on_4xx_with_the_reason_and_never_leaks_the_secret(fake, store, caplog_json):
    wrong = NtfyResource(url=fake.url, auth="tk_wrong" + SECRET[8:], retry_max_s=0.2)
    store.enqueue("run2", "failure", job_id="j2", user_id="u1", topic="dub-alice", payload=message())
    deliver_due(wrong, store)
    entry = store.get("run2", "failure")
    assert entry.status == FAILED and "HTTP 403" in entry.last_error and "NTFY_AUTH" in entry.last_error
    assert not fake.messages
    assert SECRET[8:] not in caplog_json.text and SECRET[8:] not in entry.last_error
    deliver_due(wrong, store)  # a given-up message is not tried again
    assert store.get("run2", "failure").attempts == 1


def test_outbox_survives_the_server_being_down(fake, store):
    ntfy = fast(fake)
    fake.stop()
    for i in range(3):
        store.enqueue(f"run-down-{i}", "success", job_id=f"j{i}", user_id="u1", topic="dub-alice",
                      payload=message(job_id=f"j{i}"))
    deadline = time.time() + 10
    while time.time() < deadline and min(e.attempts for e in store.entries()) < 2:
        deliver_due(ntfy, store)
        time.sleep(0.1)
    assert all(e.status == PENDING and "no connection" in e.last_error for e in store.entries())
    fake.start()
    drain(ntfy, store, lambda: all(e.status == SENT for e in store.entries()))
    assert sorted(m.click for m in fake.to("dub-alice")) == [f"{BASE}/ui/jobs/j{i}" for i in range(3)]


def test_held_failure_detail_becomes_the_message_once(store):
    store.hold_detail("run3", "j3", {"stage": "dubbed_speech", "message": "boom"})
    assert store.get("run3", "failure").status == "held"
    assert store.claim_due() == []  # held rows are not sent
    assert store.enqueue("run3", "failure", job_id="j3", user_id="u1", topic="t", payload=message())
    assert store.get("run3", "failure").detail == {"stage": "dubbed_speech", "message": "boom"}
    assert not store.enqueue("run3", "failure", job_id="j3", user_id="u1", topic="t", payload=message())
    store.enqueue("run4", "cancel", job_id="j4", user_id=None, topic=None, payload=None, status=SKIPPED,
                  reason="off")
    assert [e.run_id for e in store.claim_due()] == ["run3"]
    assert store.claim_due() == []  # claimed: nobody else takes it while it is being sent


def test_outbox_on_postgres(pg_url, fake):
    store = NotifyStore(JobStore(database_url=pg_url))
    ntfy = fast(fake)
    store.hold_detail("pg-run", "j9", {"stage": "transcript", "message": "no audio"})
    assert store.enqueue("pg-run", "failure", job_id="j9", user_id="u9", topic="dub-pg", payload=message("dub-pg"))
    assert not store.enqueue("pg-run", "failure", job_id="j9", user_id="u9", topic="dub-pg", payload=message())
    fake.fail_next(1, 500)
    drain(ntfy, store, lambda: store.get("pg-run", "failure").status == SENT)
    assert len(fake.to("dub-pg")) == 1


# ------------------------------------------------------------------------------- the live stack


@pytest.fixture(scope="module")
def ntfy_server():
    server = FakeNtfy(auth=f"Bearer {SECRET}").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nstack(tmp_path_factory, ntfy_server):
    env = dict(NTFY_URL=ntfy_server.url, NTFY_AUTH=SECRET, PUBLIC_BASE_URL=BASE, NOTIFY_SENSOR_INTERVAL_S="1",
               NTFY_OUTBOX_INTERVAL_S="1", NTFY_RETRY_MAX_S="2")
    with running_stack(tmp_path_factory.mktemp("notify"), env, daemon=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    work = tmp_path_factory.mktemp("short")
    wav, _ = mediagen.speech_track(mediagen.SCRIPT[:2], work, voice="espeak", pause=0.8)
    return mediagen.make_video(wav, work / "short.mp4")


def wait_for(what, timeout=240, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what}")


def job_state(client, job_id):
    return client.get(f"/api/jobs/{job_id}").json()["state"]


def test_settings_api_validates_and_never_shows_the_secret(nstack):
    with nstack.client("alice") as a, nstack.client("bob") as b:
        got = a.get("/api/settings").json()
        assert got["notifications"] == {"enabled": True, "topic": None, "priority": 3, "on_success": True,
                                        "on_failure": True, "on_cancel": True, "effective_topic": "dub-alice",
                                        "default_topic": "dub-alice"}
        assert got["server"] == {"configured": True, "url": nstack.env["NTFY_URL"], "auth_configured": True,
                                 "deep_links": True}
        for bad, reason in (({"topic": "has space"}, "1 to 64"), ({"topic": "docs"}, "reserved"),
                            ({"topic": "x" * 65}, "1 to 64"), ({"priority": 0}, "priority"),
                            ({"priority": 6}, "priority"), ({"priority": "high"}, "priority"),
                            ({"enabled": "yes"}, "enabled"), ({"colour": "red"}, "colour"),
                            ({"enabled": None}, "enabled")):
            r = a.put("/api/settings", json={"notifications": bad})
            assert r.status_code == 422 and reason in r.json()["detail"], (bad, r.text)
        assert a.put("/api/settings", json={"priority": 4}).status_code == 422  # not under "notifications"
        r = a.put("/api/settings", json={"notifications": {"priority": 4, "topic": "dub-alice-phone"}})
        assert r.status_code == 200 and r.json()["notifications"]["effective_topic"] == "dub-alice-phone"
        r = a.put("/api/settings", json={"notifications": {"topic": "elsewhere"}})
        assert r.status_code == 422 and "start with 'dub-'" in r.json()["detail"]
        r = a.put("/api/settings", json={"notifications": {"topic": "dub-bob"}})  # bob's default topic
        assert r.status_code == 409 and "another user" in r.json()["detail"]
        assert b.put("/api/settings", json={"notifications": {"topic": "dub-alice-phone"}}).status_code == 409
        r = a.put("/api/settings", json={"notifications": {"topic": None}})
        assert r.json()["notifications"]["effective_topic"] == "dub-alice"
        assert r.json()["notifications"]["priority"] == 4  # untouched fields keep their value
        assert b.get("/api/settings").json()["notifications"]["priority"] == 3  # per user
        assert nstack.client().get("/api/settings").status_code == 401
        # a notification's download link opened in a browser without a session: to the login page
        r = nstack.client().get("/api/jobs/j123/outputs/talk.es.mkv", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/api/jobs/j123/outputs/talk.es.mkv"
        assert nstack.client().get("/api/jobs/j123/outputs/talk.es.mkv").status_code == 401
        for resp in (a.get("/api/settings"), r, a.get("/openapi.json")):
            assert SECRET not in resp.text and SECRET[3:] not in resp.text


def test_test_notification_reaches_the_users_topic(nstack, ntfy_server):
    with nstack.client("bob") as b:
        b.put("/api/settings", json={"notifications": {"topic": "dub-bob-test", "priority": 2}})
        r = b.post("/api/settings/test-notification")
        assert r.status_code == 200 and r.json() == {"delivered": True, "topic": "dub-bob-test"}, r.text
        got = ntfy_server.to("dub-bob-test")
        assert len(got) == 1 and got[0].priority == 2 and got[0].authorization == f"Bearer {SECRET}"
        assert b.post("/api/settings/test-notification").status_code == 429  # one per 5 s
        b.put("/api/settings", json={"notifications": {"topic": None, "priority": 3}})


def _upload_failing_job(stack, video, owner: str) -> str:
    """A job whose translation cannot run (no en->ja backend here), made directly in the job store as
    if its backend had been removed after the upload was accepted."""
    from resources.jobstore import JobStore

    store = JobStore()
    job_id = "j" + secrets.token_hex(16)
    folder = stack.root / "data" / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_id}.mp4"
    shutil.copy(video, path)
    store.create_job(input_path=str(path), filename="broken.mp4", source_lang="en", target_lang="ja",
                     owner=stack.users[owner].id, job_id=job_id, upload_id="u" + secrets.token_hex(8))
    return job_id


def test_finished_failed_and_cancelled_jobs_notify_their_owner_once(nstack, ntfy_server, short_video,
                                                                     tmp_path_factory):
    work = tmp_path_factory.mktemp("long")
    wav, _ = mediagen.speech_track(mediagen.SCRIPT * 8, work, voice="espeak")
    long_video = mediagen.make_video(wav, work / "long_talk.mp4")
    with nstack.client("alice") as a, nstack.client("bob") as b:
        assert a.put("/api/settings", json={"notifications": {"priority": 4}}).status_code == 200
        assert b.put("/api/settings", json={"notifications": {"enabled": False}}).status_code == 200
        _, done_job = upload_file(a, short_video, "es")
        _, quiet_job = upload_file(b, short_video, "es")
        failed_job = _upload_failing_job(nstack, short_video, "alice")
        _, cancel_job = upload_file(a, long_video, "es")
        # cancel in the long transcription (a cancel that reaches a run in its last seconds may lose the race)
        view = wait_for(lambda: (v := a.get(f"/api/jobs/{cancel_job}").json())["state"] != "queued"
                        and v["state"] != "submitted" and (v["current_stage"] == "transcript" or
                                                           v["state"] != "running") and v, every=0.2)
        assert view["state"] == "running" and view["current_stage"] == "transcript", view
        assert a.post(f"/api/jobs/{cancel_job}/cancel").status_code == 202, view
        for client, job in ((a, done_job), (b, quiet_job), (a, failed_job), (a, cancel_job)):
            wait_for(lambda: job_state(client, job) in ("done", "failed", "cancelled"))
        assert [job_state(a, done_job), job_state(b, quiet_job), job_state(a, failed_job),
                job_state(a, cancel_job)] == ["done", "done", "failed", "cancelled"]

    store = NotifyStore(JobStore())

    def settled():
        entries = [e for e in store.entries() if e.job_id in (done_job, quiet_job, failed_job, cancel_job)
                   and e.status != "held"]
        return len(entries) == 4 and all(e.status in (SENT, SKIPPED) for e in entries) and entries

    entries = {e.job_id: e for e in wait_for(settled, timeout=90)}
    assert entries[quiet_job].status == SKIPPED and "turned off" in entries[quiet_job].last_error
    time.sleep(4)  # a few more sensor ticks: still exactly one message each
    mine = ntfy_server.to("dub-alice")
    by_job = {}
    for m in mine:
        by_job.setdefault(m.click.rsplit("/", 1)[-1], []).append(m)
    assert {k: len(v) for k, v in by_job.items()} == {done_job: 1, failed_job: 1, cancel_job: 1}
    assert ntfy_server.to("dub-bob") == []  # bob turned notifications off
    ok, failed, cancelled = by_job[done_job][0], by_job[failed_job][0], by_job[cancel_job][0]
    assert ok.title == "Dub ready: short.mp4 → es" and ok.priority == 4 and "white_check_mark" in ok.tags
    assert ok.click == f"{BASE}/ui/jobs/{done_job}"
    assert ok.actions[1]["url"] == f"{BASE}/api/jobs/{done_job}/outputs/short.es.mkv"
    assert "en → es" in ok.message and "video 0:" in ok.message
    assert failed.title == "Dub failed at Translate: broken.mp4", failed.title
    assert "no translation backend for en→ja" in failed.message
    assert entries[failed_job].detail.get("stage") == "translation"  # kept by the failure hook
    assert cancelled.title == "Dub cancelled: long_talk.mp4"
    assert all(m.authorization == f"Bearer {SECRET}" for m in mine)

    # every send attempt is a JSON log line with the ids; the secret is in no log
    lines = [json.loads(line) for line in (nstack.root / "daemon.log").read_text().splitlines()
             if line.startswith("{") and '"ntfy send"' in line]
    sent = [ln for ln in lines if ln.get("outcome") == "sent"]
    assert {ln["job_id"] for ln in sent} >= {done_job, failed_job, cancel_job}
    assert all(ln["user_id"] == nstack.users["alice"].id and ln["run_id"] for ln in sent)
    for name in ("daemon", "api"):
        text = (nstack.root / f"{name}.log").read_text(errors="replace")
        assert SECRET not in text and SECRET[3:] not in text, name


def test_messages_wait_out_an_ntfy_outage_and_arrive_once(nstack, ntfy_server, short_video):
    ntfy_server.stop()
    try:
        with nstack.client("alice") as a:
            a.put("/api/settings", json={"notifications": {"topic": "dub-alice-outage"}})
            jobs = [upload_file(a, short_video, "es")[1] for _ in range(2)]
            for job in jobs:
                wait_for(lambda: job_state(a, job) in ("done", "failed", "cancelled"))
        store = NotifyStore(JobStore())
        waiting = wait_for(lambda: (es := [e for e in store.entries() if e.job_id in jobs])
                           and len(es) == 2 and all(e.attempts >= 2 for e in es) and es, timeout=60)
        assert all(e.status == PENDING and "no connection" in e.last_error for e in waiting)
    finally:
        ntfy_server.start()
    wait_for(lambda: all(e.status == SENT for e in store.entries() if e.job_id in jobs), timeout=60)
    time.sleep(3)
    got = ntfy_server.to("dub-alice-outage")
    assert sorted(m.click.rsplit("/", 1)[-1] for m in got) == sorted(jobs)  # each once, none lost
    with nstack.client("alice") as a:
        a.put("/api/settings", json={"notifications": {"topic": None}})


def test_reading_an_artifact_never_recreates_a_removed_work_folder(tmp_path):
    """The cancel notification reads source.json after the cleanup sensor removed work/ (found by the
    cancel gate: the read used to create the folder again)."""
    from resources.storage import MediaStorage

    storage = MediaStorage(root=str(tmp_path))
    storage.write_json("j1", "source.json", {"duration_s": 3})
    assert storage.read_json("j1", "source.json") == {"duration_s": 3}
    shutil.rmtree(storage.job_dir("j1") / "work")
    with pytest.raises(FileNotFoundError):
        storage.read_json("j1", "source.json")
    assert not (storage.job_dir("j1") / "work").exists()


# ------------------------------------------------------------------------------- catching up


def test_catch_up_writes_the_notification_a_run_status_sensor_missed(tmp_path):
    """When a run status sensor's evaluation for a run raises (the database restarting: gate 5 with 20 restarts
    lost one "Dub ready" so), Dagster moves past that run for good. notify_catch_up walks run ends itself: a
    run that ended without its notification gets it, once; a new cursor starts from now (no old runs)."""
    import dagster as dg

    from dubbing_assets.definitions import defs
    from resources.accounts import Accounts
    from resources.storage import MediaStorage
    from sensors.notify import notify_catch_up

    store = JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")
    owner = Accounts(store).add_user("alice", "alice-password-1")
    storage = MediaStorage(root=str(tmp_path / "data"))
    ntfy = NtfyResource(url="http://127.0.0.1:9", public_base_url=BASE)
    resources = {"ntfy": ntfy, "job_store": store, "storage": storage}

    def failed_run(instance) -> str:  # a real run of the job that fails: its input is not there
        job = store.create_job(input_path=str(tmp_path / "gone.mp4"), filename="gone.mp4", source_lang="en",
                               target_lang="es", owner=owner.id)
        instance.add_dynamic_partitions("dub_jobs", [job.id])
        result = defs.resolve_job_def("dub_job").execute_in_process(
            instance=instance, partition_key=job.id, raise_on_error=False, resources={"job_store": store})
        assert not result.success
        return result.run_id

    def tick(instance, cursor):
        return notify_catch_up(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

    with dg.instance_for_test() as instance:
        before = failed_run(instance)  # ended before the sensor existed: left alone
        started = tick(instance, None)
        # (the failure hook holds the failing stage's detail in the outbox; the run status sensor would send it)
        assert started.skip_reason and NotifyStore(store).get(before, "failure").status == HELD
        missed = failed_run(instance)  # its run status sensor evaluation failed: nothing sent
        assert NotifyStore(store).get(missed, "failure").status == HELD
        caught = tick(instance, started.cursor)
        entry = NotifyStore(store).get(missed, "failure")
        assert entry is not None and entry.status == PENDING and entry.topic == "dub-alice"
        assert entry.payload["title"] == "Dub failed at Probe: gone.mp4"
        again = tick(instance, caught.cursor)  # nothing new: no second message
        assert again.skip_reason and json.loads(again.cursor) == json.loads(caught.cursor)
        assert tick(instance, started.cursor).skip_reason  # the same run seen twice: still one entry
        assert NotifyStore(store).get(missed, "failure").id == entry.id
        assert NotifyStore(store).get(before, "failure").status == HELD
