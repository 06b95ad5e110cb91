"""API replicas behind a proxy (issue 9): two uvicorn processes on different ports share one Postgres
database and one data folder. What must hold across them:

The upload lock. The same chunks of one upload, with different bodies, race through both at once.
Each chunk must end up as exactly one of the two bodies, never a mix, with one 200 and one 409
("already received with different content"); the file completes with the sha256 of what was kept.
Without the cross-process lock both writers pass the "not received yet" check and interleave their
bytes.

The login limit: failed logins counted by either process add up. The test-notification limit (one per
user per 5 s) holds across them too."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
pytestmark = pytest.mark.slow

CHUNK = 256 * 1024  # UPLOAD_CHUNK_BYTES of the harness
CHUNKS = 6


def slow_body(data: bytes, pieces: int = 16, pause: float = 0.02):
    """The body in pieces with pauses, so two requests for one chunk overlap on the server."""
    step = len(data) // pieces
    for i in range(0, len(data), step):
        yield data[i:i + step]
        time.sleep(pause)


@pytest.fixture(scope="module")
def two_apis():
    from e2e_harness import BIN, Deployment, free_port

    from conftest import _postgres_or_fail
    from ntfy_fake import FakeNtfy

    _postgres_or_fail().dispose()
    saved = dict(os.environ)  # the harness points this process's environment at its deployment
    ntfy = FakeNtfy().start()
    try:
        yield from _deployment(Deployment, BIN, free_port, ntfy)
    finally:
        ntfy.stop()
        os.environ.clear()
        os.environ.update(saved)


def _deployment(Deployment, BIN, free_port, ntfy):
    with Deployment("upload_locks", env={"NTFY_URL": ntfy.url}) as d:
        d.ntfy = ntfy
        d.start("api")
        port = free_port()
        d._spawn("api2", [str(BIN / "uvicorn"), "upload_api.app:app", "--host", "127.0.0.1", "--port", str(port),
                          "--no-access-log"])
        d._wait(lambda: d._http_ok(f"http://127.0.0.1:{port}/api/health", (200, 503)), "api2", 120)
        yield d, [d.url, f"http://127.0.0.1:{port}"]


def test_the_same_chunks_through_two_api_processes_never_mix(two_apis):
    d, urls = two_apis
    headers = {"Authorization": f"Bearer {d.tokens['alice']}"}
    rng = __import__("random").Random(7)
    bodies = [[bytes(rng.getrandbits(8) for _ in range(64)) * (CHUNK // 64) for _ in range(CHUNKS)]
              for _ in range(2)]  # two different versions of every chunk
    with httpx.Client(base_url=urls[0], headers=headers, timeout=60) as c:
        r = c.post("/api/uploads/init", json={"filename": "race.bin", "size_bytes": CHUNK * CHUNKS,
                                              "content_type": "video/mp4"})
        assert r.status_code == 201, r.text
        upload_id = r.json()["upload_id"]
    statuses: dict[tuple[int, int], int] = {}

    def send(who: int, index: int):
        with httpx.Client(base_url=urls[who], headers=headers, timeout=120) as c:
            r = c.put(f"/api/uploads/{upload_id}/chunk", params={"index": index},
                      content=slow_body(bodies[who][index]),
                      headers={"Content-Type": "application/octet-stream", "Content-Length": str(CHUNK)})
            statuses[(who, index)] = r.status_code

    threads = [threading.Thread(target=send, args=(who, index)) for index in range(CHUNKS) for who in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(statuses) == 2 * CHUNKS, statuses
    stored = (d.root / "data" / "uploads" / upload_id / "data").read_bytes()
    kept = []
    for index in range(CHUNKS):
        pair = sorted(statuses[(who, index)] for who in (0, 1))
        assert pair == [200, 409], (index, pair)  # one writer won, the other was told it differs
        region = stored[index * CHUNK:(index + 1) * CHUNK]
        assert region in (bodies[0][index], bodies[1][index]), f"chunk {index} is a mix of both bodies"
        winner = 0 if region == bodies[0][index] else 1
        assert statuses[(winner, index)] == 200, (index, statuses)
        kept.append(region)
    with httpx.Client(base_url=urls[1], headers=headers, timeout=60) as c:
        status = c.get(f"/api/uploads/{upload_id}").json()
        assert status["received_bytes"] == CHUNK * CHUNKS and status["missing_count"] == 0, status
        assert c.delete(f"/api/uploads/{upload_id}").status_code == 204
    assert hashlib.sha256(b"".join(kept)).hexdigest() == hashlib.sha256(stored).hexdigest()


def test_a_lock_held_elsewhere_makes_a_writer_wait_then_409_with_the_reason(two_apis, monkeypatch):
    """The advisory lock itself: held by another connection (another API process), a writer waits up
    to UPLOAD_LOCK_WAIT_S and then gets a 409 naming the reason; released, it goes through."""
    d, _ = two_apis
    from resources.jobstore import JobStore
    from resources.uploads import CrossProcessLock, UploadError

    engine = JobStore(database_url=d.db_url).engine()
    upload_id = os.urandom(16).hex()
    holder = CrossProcessLock(engine, upload_id)
    holder.acquire()
    try:
        waiter = CrossProcessLock(engine, upload_id)
        started = time.monotonic()
        with pytest.raises(UploadError) as refused:
            waiter.acquire(wait_s=0.5)
        assert refused.value.status == 409 and "another request is writing this upload" in refused.value.message
        assert 0.5 <= time.monotonic() - started < 5
        other = CrossProcessLock(engine, os.urandom(16).hex())  # other uploads are not held up
        other.acquire(wait_s=0.1)
        other.release()
    finally:
        holder.release()
    waiter.acquire(wait_s=1)
    waiter.release()


def test_failed_logins_through_both_processes_add_up_to_the_limit(two_apis):
    d, urls = two_apis
    for n in range(5):  # LOGIN_MAX_FAILURES: 3 through one process, 2 through the other
        r = httpx.post(f"{urls[n % 2]}/api/auth/login", json={"username": "bob", "password": f"wrong-{n}"})
        assert r.status_code == 401, r.text
    for url in urls:
        r = httpx.post(f"{url}/api/auth/login", json={"username": "bob", "password": "bob-password-123"})
        assert r.status_code == 429 and "too many failed logins" in r.json()["detail"], r.text
        assert 0 < int(r.headers["retry-after"]) <= 301
    r = httpx.post(f"{urls[1]}/api/auth/login", json={"username": "alice", "password": "alice-password-123"})
    assert r.status_code == 200  # another user behind the same address is not locked out


def test_one_test_notification_per_five_seconds_through_both_processes(two_apis):
    d, urls = two_apis
    headers = {"Authorization": f"Bearer {d.tokens['alice']}"}
    r = httpx.post(f"{urls[0]}/api/settings/test-notification", headers=headers)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{urls[1]}/api/settings/test-notification", headers=headers)  # the other process
    assert r.status_code == 429 and "one test notification every 5 s" in r.json()["detail"], r.text
    assert 1 <= int(r.headers["retry-after"]) <= 6
    assert len(d.ntfy.messages) == 1
    bob = {"Authorization": f"Bearer {d.tokens['bob']}"}  # a limit per user, not for everyone
    assert httpx.post(f"{urls[1]}/api/settings/test-notification", headers=bob).status_code == 200


def test_take_turn_lets_exactly_one_of_many_concurrent_callers_through(two_apis):
    from concurrent.futures import ThreadPoolExecutor

    from resources.accounts import take_turn
    from resources.jobstore import JobStore

    store = JobStore(database_url=two_apis[0].db_url)
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda _: take_turn(store, "race", 60), range(16)))
    assert waits.count(0) == 1 and all(0 < w <= 61 for w in waits if w)
