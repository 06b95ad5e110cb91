"""Bad input against the live upload API: every refusal is a 4xx with a JSON `detail` naming the
problem (never a 5xx), secrets are never echoed, and nothing is written outside the uploads folder."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import re
import secrets
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from live import ROOT, Stack

CHUNK = 256 * 1024  # UPLOAD_CHUNK_BYTES of the test stack
ID_RE = re.compile(r"^[0-9a-f]{32}$")
# client file names used below: none of them may ever show up as a path on disk
CLIENT_NAMES = ("passwd", "evil-9d41.mp4", "shopping-list-9d41.mp4", "talk-9d41.mp4", "parts-9d41.bin",
                "session-9d41.mp4", "quota-9d41.mp4")
RESPONSES: list[tuple[str, str, int, str]] = []  # (method, url, status, body) of every response seen
SECRETS: set[str] = set()  # passwords and tokens sent: never in a response body or the server log


def _record(response: httpx.Response) -> None:
    response.read()
    RESPONSES.append((response.request.method, str(response.request.url), response.status_code, response.text))


def client(api, who: str | None = None, source: str | None = None, **kw) -> httpx.Client:
    """api.client(who) that records every response; `source`: the loopback address to send from."""
    if who:
        SECRETS.add(api.tokens[who])
    if source:
        kw["transport"] = httpx.HTTPTransport(local_address=source)
    return api.client(who, event_hooks={"response": [_record]}, **kw)


def refused(r: httpx.Response, status: int | None, *words: str) -> str:
    """A refusal: the status (any 4xx when None), a JSON body whose `detail` names the problem."""
    if status is None:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
    else:
        assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("content-type", "").startswith("application/json"), (r.headers, r.text)
    detail = r.json().get("detail")
    assert isinstance(detail, str) and detail.strip(), r.text
    for word in words:
        assert word.lower() in detail.lower(), (word, detail)
    return detail


def raw(api, method: str, target: str, headers: dict | None = None, body: bytes | None = None):
    """A request with the target exactly as given (httpx would normalise `..` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    RESPONSES.append((method, target, resp.status, data.decode("utf-8", "replace")))
    return resp.status, resp.getheader("content-type", ""), data


def init_body(**over) -> dict:
    body = {"filename": "evil-9d41.mp4", "size_bytes": 3 * CHUNK + 1000, "content_type": "video/mp4"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def new_upload(c: httpx.Client, data: bytes | None = None, name: str = "parts-9d41.bin", **over) -> dict:
    r = c.post("/api/uploads/init", json=init_body(filename=name, size_bytes=len(data) if data else 3 * CHUNK + 1000,
                                                   **over))
    assert r.status_code == 201, r.text
    return r.json()


def put(c: httpx.Client, uid: str, index: int, piece: bytes, **kw) -> httpx.Response:
    return c.put(f"/api/uploads/{uid}/chunk", params={"index": index}, content=piece, **kw)


def send_all(c: httpx.Client, uid: str, data: bytes) -> None:
    for i in range(0, -(-len(data) // CHUNK)):
        r = put(c, uid, i, data[i * CHUNK:(i + 1) * CHUNK])
        assert r.status_code == 200, r.text


def status(c: httpx.Client, uid: str) -> dict:
    r = c.get(f"/api/uploads/{uid}")
    assert r.status_code == 200, r.text
    return r.json()


def data_dir(api) -> Path:
    return Path(api.env["DUBBING_DATA_DIR"])


def json_bytes(obj) -> bytes:
    """JSON as a client may send it: \\u escapes, including lone surrogates."""
    return json.dumps(obj).encode()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> bytes:
    """A one-second MP4 with a sine tone: small (one chunk) and real media."""
    out = tmp_path_factory.mktemp("bad_input_media") / "tone.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", "-c:a", "aac", "-b:a", "32k", "-f", "mp4", str(out)],
                   check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def blob() -> bytes:
    return secrets.token_bytes(3 * CHUNK + 1000)  # four chunks, the last one 1000 bytes


@pytest.fixture(scope="module")
def extra(api):
    """Two more servers on the same data folder and job store: one with a tiny per-user quota, one
    that wants more free disk than any machine has."""
    stacks = {
        "quota": Stack(root=api.root, env={**api.env, "USER_QUOTA_GB": "0.0005"}),  # ~512 KiB
        "disk": Stack(root=api.root, env={**api.env, "MIN_FREE_GB": "100000"}),
    }
    errors = []

    def start(stack):
        try:
            stack.start_api()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stacks.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        yield stacks
    finally:
        for s in stacks.values():
            s.stop_all()


# --- auth ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["GET /api/me", "POST /api/uploads/init", "GET /api/uploads/" + "0" * 32,
                                    "PUT /api/uploads/" + "0" * 32 + "/chunk?index=0", "GET /api/jobs/x"])
def test_no_or_bad_credentials_are_401(api, target):
    method, path = target.split(" ")
    with client(api) as c:
        bodies = {"json": init_body()} if method == "POST" else {}
        r = c.request(method, path, **bodies)
        refused(r, 401, "Bearer")
        assert r.headers["www-authenticate"] == "Bearer"
        r = c.request(method, path, headers={"Authorization": "Basic x"}, **bodies)
        refused(r, 401, "Bearer <token>")
        for header in ("Bearer", "bearer", "Token dub_abc", "Basic YWxpY2U6YWxpY2UtcGFzc3dvcmQtMTIz"):
            refused(c.request(method, path, headers={"Authorization": header}, **bodies), 401, "Bearer")
        for token in ("dub_" + secrets.token_urlsafe(32), "not-a-token", "dub_" + "x" * 400,
                      api.tokens["alice"][:-2]):
            SECRETS.add(token)
            r = c.request(method, path, headers={"Authorization": f"Bearer {token}"}, **bodies)
            refused(r, 401, "invalid")
        refused(c.request(method, path, headers={"Authorization": b"Bearer dub_\xe9\xff"}, **bodies), 401, "invalid")
        for sid in (b"nonsense", b"x" * 500, b"\xe9\xff", b"a;b"):
            refused(c.request(method, path, headers={"Cookie": b"dub_session=" + sid}, **bodies), 401,
                    "authentication required")


def test_session_cookie_needs_csrf_token_on_unsafe_requests(api):
    password = "alice-password-123"
    SECRETS.add(password)
    with client(api, source="127.0.0.11") as c:
        r = c.post("/api/auth/login", json={"username": "alice", "password": password})
        assert r.status_code == 200, r.text
        csrf = r.json()["csrf_token"]
        sid = r.cookies["dub_session"]
        SECRETS.add(sid)
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert c.get("/api/me").json()["name"] == "alice"  # safe method: the cookie is enough
        refused(c.post("/api/uploads/init", json=init_body(filename="session-9d41.mp4")), 403, "X-CSRF-Token")
        refused(c.post("/api/uploads/init", json=init_body(filename="session-9d41.mp4"),
                       headers={"X-CSRF-Token": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")}), 403, "X-CSRF-Token")
        for wrong in ("", "x" * 5000, b"\xe9" * 8, b"\xff\xfe" * 4, "\u00e9".encode()):  # non-ASCII: not a 500
            refused(c.post("/api/uploads/init", json=init_body(filename="session-9d41.mp4"),
                           headers={"X-CSRF-Token": wrong}), 403, "X-CSRF-Token")
        r = c.post("/api/uploads/init", json=init_body(filename="session-9d41.mp4"), headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201, r.text
        uid = r.json()["upload_id"]
        refused(c.delete(f"/api/uploads/{uid}"), 403, "X-CSRF-Token")
        refused(c.put(f"/api/uploads/{uid}/chunk", params={"index": 3}, content=b"x" * 1000), 403, "X-CSRF-Token")
        assert c.get(f"/api/uploads/{uid}").json()["state"] == "receiving"
        assert c.delete(f"/api/uploads/{uid}", headers={"X-CSRF-Token": csrf}).status_code == 204
        refused(c.post("/api/auth/logout"), 403, "X-CSRF-Token")
        assert c.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        c.cookies.set("dub_session", sid)  # the old session id is dead now
        refused(c.get("/api/me"), 401, "authentication required")


def test_login_refusals(api):
    with client(api, source="127.0.0.12") as c:
        wrong = "alice-wrong-password-" + secrets.token_hex(4)
        SECRETS.add(wrong)
        refused(c.post("/api/auth/login", json={"username": "alice", "password": wrong}), 401,
                "wrong user name or password")
        same = refused(c.post("/api/auth/login", json={"username": "nobody-9d41", "password": wrong}), 401)
        assert same == "wrong user name or password"  # unknown users look the same
        refused(c.post("/api/auth/login", json={"username": "alice"}), 422, "password")
        refused(c.post("/api/auth/login", json={"password": wrong}), 422, "username")
        refused(c.post("/api/auth/login", json={"username": "", "password": wrong}), 422, "username")
        refused(c.post("/api/auth/login", json={"username": "alice", "password": "p" * 2000}), 422, "password")
        refused(c.post("/api/auth/login", json={"username": ["alice"], "password": wrong}), 422, "username")
        refused(c.post("/api/auth/login", content=b"username=alice&password=x",
                       headers={"Content-Type": "application/x-www-form-urlencoded"}), 422)
        refused(c.post("/api/auth/login", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
        # NUL: fine in SQLite, refused by Postgres in text columns (found by the schemathesis gate)
        refused(c.post("/api/auth/login", json={"username": "ali\u0000ce", "password": wrong}), 422, "username")
    with client(api, "alice") as c:
        refused(c.post("/api/tokens", json={"name": "phone\u0000"}), 422, "control characters")
        refused(c.post("/api/tokens", json={"name": "tab\there"}), 422, "control characters")
    with client(api, source="127.0.0.12") as c:
        # lone UTF-16 surrogates are valid JSON escapes but not text
        for body in ({"username": "\ud800alice", "password": wrong}, {"username": "alice", "password": "\udfff" * 12}):
            refused(c.post("/api/auth/login", content=json_bytes(body), headers={"Content-Type": "application/json"}),
                    None)


def test_login_rate_limit_per_user_and_address(api):
    from resources.accounts import Accounts

    name, password = f"ratelimit-{secrets.token_hex(3)}", "right-password-" + secrets.token_hex(6)
    Accounts().add_user(name, password)
    wrong = "wrong-password-" + secrets.token_hex(6)
    SECRETS.update({password, wrong})
    with client(api, source="127.0.0.21") as c:
        for _ in range(5):
            refused(c.post("/api/auth/login", json={"username": name, "password": wrong}), 401)
        r = c.post("/api/auth/login", json={"username": name, "password": wrong})
        refused(r, 429, "too many failed logins")
        assert 0 < int(r.headers["retry-after"]) <= 300
        r = c.post("/api/auth/login", json={"username": name, "password": password})  # even the right one
        refused(r, 429, "too many failed logins")
        # the address is not locked for other users yet: its limit is higher (shared proxies)
        good = {"username": "alice", "password": "alice-password-123"}
        assert c.post("/api/auth/login", json=good).status_code == 200
    with client(api, source="127.0.0.22") as c:  # the user is locked from other addresses too
        r = c.post("/api/auth/login", json={"username": name.upper(), "password": password})
        refused(r, 429, "try again in")
        assert int(r.headers["retry-after"]) > 0
    SECRETS.add("bob-password-123")
    with client(api, source="127.0.0.23") as c:  # other users on other addresses are not
        assert c.post("/api/auth/login", json={"username": "bob", "password": "bob-password-123"}).status_code == 200


def test_login_limit_per_address(api):
    from resources.accounts import Accounts

    SECRETS.add("carla-password-123")
    Accounts().add_user("carla", "carla-password-123")
    with client(api, source="127.0.0.31") as c:
        for i in range(20):  # 20 failures spread over many user names from one address
            refused(c.post("/api/auth/login", json={"username": f"nobody{i}", "password": "x" * 12}), 401)
        r = c.post("/api/auth/login", json={"username": "carla", "password": "carla-password-123"})
        refused(r, 429, "too many failed logins")
    with client(api, source="127.0.0.32") as c:  # carla herself is not locked elsewhere
        carla = {"username": "carla", "password": "carla-password-123"}
        assert c.post("/api/auth/login", json=carla).status_code == 200


def test_login_limiter_window_passes_and_is_shared_through_the_database(monkeypatch, tmp_path):
    from resources import accounts
    from resources.jobstore import JobStore

    now = [1_000_000.0]
    monkeypatch.setattr(accounts.time, "time", lambda: now[0])
    url = f"sqlite:///{tmp_path}/limits.db"
    limiter = accounts.LoginLimiter(JobStore(database_url=url), attempts=5, window_s=300)
    other_process = accounts.LoginLimiter(JobStore(database_url=url), attempts=5, window_s=300)
    for _ in range(3):
        limiter.fail("user:x", "ip:1")
    for _ in range(2):
        other_process.fail("user:x")
    assert other_process.retry_after("user:x") == 301  # five failures, wherever they were counted
    assert limiter.retry_after("user:x") == 301
    other_process.clear("user:x", "ip:1")  # a success clears the user name, not the address
    assert limiter.retry_after("user:x") == 0
    for _ in range(5):
        limiter.fail("user:x", "ip:1")
    assert limiter.retry_after("user:x") == 301
    now[0] += 299
    assert limiter.retry_after("user:x", "ip:1") == 2
    now[0] += 2
    assert limiter.retry_after("user:x", "ip:1") == 0  # the window passed: the right password works again
    limiter.fail("user:x")
    assert limiter.retry_after("user:x") == 0  # one new failure is not five


# --- ownership -----------------------------------------------------------------------------------

def test_other_users_uploads_and_jobs_do_not_exist(api, media, blob):
    with client(api, "alice") as alice, client(api, "bob") as bob, client(api, "root") as root:
        uid = new_upload(alice, blob)["upload_id"]
        assert put(alice, uid, 0, blob[:CHUNK]).status_code == 200
        before = status(alice, uid)
        refused(bob.get(f"/api/uploads/{uid}"), 404, "not found")
        for i in (0, 1):
            refused(put(bob, uid, i, blob[i * CHUNK:(i + 1) * CHUNK]), 404, "not found")
        refused(bob.post(f"/api/uploads/{uid}/complete", json={"target_lang": "es"}), 404, "not found")
        refused(bob.delete(f"/api/uploads/{uid}"), 404, "not found")
        after = status(alice, uid)
        assert after == before and after["state"] == "receiving" and after["received"] == [True, False, False, False]
        stored = (data_dir(api) / "uploads" / uid / "data").read_bytes()
        assert stored[:CHUNK] == blob[:CHUNK] and stored[CHUNK:2 * CHUNK] == bytes(CHUNK)
        assert root.get(f"/api/uploads/{uid}").json()["upload_id"] == uid  # admins see all

        mid = new_upload(alice, media, name="talk-9d41.mp4")["upload_id"]
        send_all(alice, mid, media)
        job_id = alice.post(f"/api/uploads/{mid}/complete", json={"target_lang": "es"}).json()["job_id"]
        refused(bob.get(f"/api/jobs/{job_id}"), 404, "job not found")
        refused(bob.get(f"/api/uploads/{mid}"), 404, "not found")
        refused(bob.post(f"/api/uploads/{mid}/complete", json={"target_lang": "es"}), 404)
        assert root.get(f"/api/jobs/{job_id}").status_code == 200
        assert root.get(f"/api/uploads/{mid}").status_code == 200
        assert alice.get(f"/api/jobs/{job_id}").json()["state"] == "submitted"
        for bad in ("nope", "../" + job_id, job_id.upper(), "x" * 3000, "%00"):
            refused(alice.get(f"/api/jobs/{bad}"), None)


# --- ids -----------------------------------------------------------------------------------------

BAD_IDS = ["..", "../", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
           "%00", "0" * 31 + "%00", "a" * 33, "a" * 5000, "A" * 32, "0" * 31 + "g", "%20" + "0" * 31, "*"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_upload_ids_are_not_found(api, bad):
    auth = {"Authorization": f"Bearer {api.tokens['alice']}"}
    for method, suffix, body in (("GET", "", None), ("DELETE", "", None), ("PUT", "/chunk?index=0", b"x" * 10),
                                 ("POST", "/complete", b'{"target_lang": "es"}')):
        headers = {**auth, "Content-Type": "application/json"} if method == "POST" else auth
        code, ctype, data = raw(api, method, f"/api/uploads/{bad}{suffix}", headers, body)
        if code == 307:  # "<id>/" is redirected to "<id>" (Starlette's redirect_slashes), which is not found
            assert not suffix and bad.endswith("/"), (method, bad)
            code, ctype, data = raw(api, method, f"/api/uploads/{bad.rstrip('/')}", headers, body)
        assert 400 <= code < 500, (method, bad, code, data)
        assert ctype.startswith("application/json") and json.loads(data)["detail"], (method, bad, data)
    assert not (data_dir(api).parent / "etc").exists() and not Path(data_dir(api), "etc").exists()


def test_an_existing_upload_id_in_uppercase_is_not_found(api):
    with client(api, "alice") as c:
        uid = new_upload(c)["upload_id"]
        refused(c.get(f"/api/uploads/{uid.upper()}"), 404, "not found")
        refused(put(c, uid.upper(), 0, b"x" * CHUNK), 404, "not found")
        assert c.delete(f"/api/uploads/{uid}").status_code == 204


# --- init ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("over, code, words", [
    ({"filename": "../evil-9d41.mp4"}, 422, ["path"]),
    ({"filename": "../../../../etc/passwd"}, 422, ["path"]),
    ({"filename": "dir/evil-9d41.mp4"}, 422, ["path"]),
    ({"filename": "/etc/passwd"}, 422, ["path"]),
    ({"filename": "..\\evil-9d41.mp4"}, 422, ["path"]),
    ({"filename": ".."}, 422, ["path"]),
    ({"filename": "evil\x00-9d41.mp4"}, 422, ["NUL"]),
    ({"filename": "evil\n-9d41.mp4"}, 422, ["control"]),
    ({"filename": ""}, 422, ["filename"]),
    ({"filename": "   "}, 422, ["filename"]),
    ({"filename": "a" * 252 + ".mp4"}, 422, ["255 bytes"]),
    ({"filename": "é" * 126 + ".mp4"}, 422, ["255 bytes"]),  # 256 bytes in 130 characters
    ({"filename": "a" * 5000}, 422, ["filename"]),
    ({"filename": 12}, 422, ["filename"]),
    ({"filename": None}, 422, ["filename"]),
    ({"size_bytes": 0}, 422, ["size_bytes"]),
    ({"size_bytes": -1}, 422, ["size_bytes"]),
    ({"size_bytes": 1.5}, 422, ["size_bytes"]),
    ({"size_bytes": "abc"}, 422, ["size_bytes"]),
    ({"size_bytes": "1000"}, 422, ["size_bytes"]),
    ({"size_bytes": True}, 422, ["size_bytes"]),
    ({"size_bytes": None}, 422, ["size_bytes"]),
    ({"size_bytes": 5 * 1024**3}, 413, ["MAX_UPLOAD_MB"]),
    ({"size_bytes": 10**40}, 413, ["MAX_UPLOAD_MB"]),
    ({"content_type": "text/plain"}, 415, ["text/plain"]),
    ({"content_type": "application/json"}, 415, ["application/json"]),
    ({"content_type": ""}, 415, ["video/"]),
    ({"content_type": "x" * 300}, 422, ["content_type"]),
    ({"content_type": "video/" + "x" * 200}, 422, ["content_type", "128"]),  # VARCHAR(128) on Postgres
    ({"sha256": "abc"}, 422, ["sha256"]),
    ({"sha256": "g" * 64}, 422, ["sha256"]),
    ({"sha256": "a" * 65}, 422, ["sha256"]),
    ({"filename": ...}, 422, ["filename", "required"]),
    ({"size_bytes": ...}, 422, ["size_bytes", "required"]),
    ({"content_type": ...}, 422, ["content_type", "required"]),
])
def test_init_refuses(api, over, code, words):
    with client(api, "alice") as c:
        refused(c.post("/api/uploads/init", content=json_bytes(init_body(**over)),
                       headers={"Content-Type": "application/json"}), code, *words)


def test_init_refuses_bodies_that_are_not_one_small_json_object(api):
    with client(api, "alice") as c:
        r = c.post("/api/uploads/init", json={}, headers={"X-Request-ID": "<script>alert(1)</script>"})
        detail = refused(r, 422)
        assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])  # not echoed: a fresh id
        for field in ("filename", "size_bytes", "content_type"):
            assert field in detail
        big = init_body(padding="x" * (70 * 1024))
        refused(c.post("/api/uploads/init", json=big), 413, "65536")

        def pieces():  # the same body without a Content-Length (chunked transfer encoding)
            data = json_bytes(big)
            for i in range(0, len(data), 8192):
                yield data[i:i + 8192]

        r = c.post("/api/uploads/init", content=pieces(), headers={"Content-Type": "application/json"})
        refused(r, 411, "Content-Length", "65536")  # no length to check up front: refused unread
        refused(c.post("/api/uploads/init", content=b"filename=a.mp4", headers={"Content-Type": "application/json"}),
                422, "JSON")
        refused(c.post("/api/uploads/init", content=b"hello", headers={"Content-Type": "text/plain"}), 422)
        refused(c.post("/api/uploads/init", content=b"", headers={"Content-Type": "application/json"}), 422)
        for body in (b"[]", b"null", b"42", b'"x"'):
            refused(c.post("/api/uploads/init", content=body, headers={"Content-Type": "application/json"}), 422)
        deep = c.post("/api/uploads/init", content=b"[" * 5000 + b"]" * 5000,
                      headers={"Content-Type": "application/json"})
        refused(deep, None)  # 400 "There was an error parsing the body" (json's recursion limit)
        # lone surrogates (valid JSON escapes, not text) in every string field
        for over in ({"filename": "\ud800evil.mp4"}, {"content_type": "video/\udc00"}, {"sha256": "\ud800" * 64},
                     {"content_type": "text/\ud800"}):
            refused(c.post("/api/uploads/init", content=json_bytes(init_body(**over)),
                           headers={"Content-Type": "application/json"}), None)


def test_user_quota_exceeded_is_413(api, extra):
    from resources.accounts import Accounts

    accounts = Accounts()
    user = accounts.add_user(f"quota-{secrets.token_hex(3)}", "quota-password-123")
    token = accounts.create_token(user, "tests")
    SECRETS.add(token)
    quota = extra["quota"]
    quota.tokens = {"q": token}
    with client(quota, "q") as c:
        first = c.post("/api/uploads/init", json=init_body(filename="quota-9d41.mp4", size_bytes=300_000))
        assert first.status_code == 201, first.text
        r = c.post("/api/uploads/init", json=init_body(filename="quota-9d41.mp4", size_bytes=300_000))
        refused(r, 413, "quota", "USER_QUOTA_GB")
        assert c.delete(f"/api/uploads/{first.json()['upload_id']}").status_code == 204  # frees the quota
        again = c.post("/api/uploads/init", json=init_body(filename="quota-9d41.mp4", size_bytes=300_000))
        assert again.status_code == 201, again.text
        assert c.delete(f"/api/uploads/{again.json()['upload_id']}").status_code == 204


def test_not_enough_free_disk_is_507(api, extra):
    disk = extra["disk"]
    disk.tokens = api.tokens
    with client(disk, "alice") as c:
        refused(c.post("/api/uploads/init", json=init_body(size_bytes=1000)), 507, "free disk", "MIN_FREE_GB")


# --- chunks --------------------------------------------------------------------------------------

def test_chunk_refusals(api, blob):
    with client(api, "alice") as c:
        up = new_upload(c, blob)
        uid, total = up["upload_id"], up["total_chunks"]
        assert total == 4
        refused(put(c, uid, -1, blob[:CHUNK]), 416, "out of range")
        refused(put(c, uid, total, blob[:CHUNK]), 416, "out of range")
        refused(put(c, uid, 10**30, blob[:CHUNK]), 416, "out of range")
        refused(c.put(f"/api/uploads/{uid}/chunk", content=blob[:CHUNK]), 422, "index")
        refused(c.put(f"/api/uploads/{uid}/chunk", params={"index": "one"}, content=blob[:CHUNK]), 422, "index")
        refused(c.put(f"/api/uploads/{uid}/chunk", params={"index": "1.5"}, content=blob[:CHUNK]), 422, "index")
        # Content-Length is not the chunk's length
        refused(put(c, uid, 0, blob[:100]), 400, str(CHUNK))
        refused(put(c, uid, 3, blob[:CHUNK]), 400, "1000")  # the last chunk is 1000 bytes
        refused(put(c, uid, 0, b""), 400, str(CHUNK))

        def stream(data: bytes):  # no Content-Length: the server counts
            for i in range(0, len(data), 64 * 1024):
                yield data[i:i + 64 * 1024]

        refused(put(c, uid, 0, stream(blob[:CHUNK - 5])), 400, str(CHUNK))
        refused(put(c, uid, 0, stream(blob[:CHUNK + 5])), 400, str(CHUNK))
        # checksums
        good = hashlib.sha256(blob[:CHUNK]).hexdigest()
        refused(put(c, uid, 0, blob[:CHUNK], headers={"X-Chunk-SHA256": "abc"}), 400, "X-Chunk-SHA256")
        refused(put(c, uid, 0, blob[:CHUNK], headers={"X-Chunk-SHA256": "z" * 64}), 400, "X-Chunk-SHA256")
        refused(put(c, uid, 0, blob[:CHUNK], headers={"X-Chunk-SHA256": hashlib.sha256(b"x").hexdigest()}),
                422, "checksum")
        st = status(c, uid)
        assert st["received"] == [False] * 4 and st["received_bytes"] == 0
        assert put(c, uid, 0, blob[:CHUNK], headers={"X-Chunk-SHA256": good.upper()}).status_code == 200
        # resending a received chunk: same bytes are fine, other bytes are a conflict
        r = put(c, uid, 0, blob[:CHUNK])
        assert r.status_code == 200 and r.json()["received_bytes"] == CHUNK
        other = bytes(CHUNK)
        detail = refused(put(c, uid, 0, other), 409, "different content")
        assert "chunk 0" in detail
        refused(put(c, uid, 0, blob[:CHUNK], headers={"X-Chunk-SHA256": hashlib.sha256(b"x").hexdigest()}),
                422, "checksum")
        refused(put(c, uid, 0, stream(blob[:CHUNK + 1])), 400, str(CHUNK))
        assert (data_dir(api) / "uploads" / uid / "data").read_bytes()[:CHUNK] == blob[:CHUNK]
        assert status(c, uid)["received"] == [True, False, False, False]
        assert c.delete(f"/api/uploads/{uid}").status_code == 204


def test_multipart_chunks(api, blob):
    with client(api, "alice") as c:
        uid = new_upload(c, blob)["upload_id"]
        for i in range(4):
            piece = blob[i * CHUNK:(i + 1) * CHUNK]
            r = c.put(f"/api/uploads/{uid}/chunk", params={"index": i},
                      files={"file": ("part", piece, "application/octet-stream")},
                      headers={"X-Chunk-SHA256": hashlib.sha256(piece).hexdigest()})
            assert r.status_code == 200, r.text
        assert status(c, uid)["next_missing"] is None
        assert (data_dir(api) / "uploads" / uid / "data").read_bytes() == blob
        uid2 = new_upload(c, blob)["upload_id"]
        url = f"/api/uploads/{uid2}/chunk"
        refused(c.put(url, params={"index": 0}, files={"file": ("part", blob[:100], "application/octet-stream")}),
                400, str(CHUNK))
        refused(c.put(url, params={"index": 0}, files={"field": (None, "not a file")}), 400, "no file part")
        refused(c.put(url, params={"index": 0}, files=[("a", ("a", b"1")), ("b", ("b", b"2"))]), 400)
        refused(c.put(url, params={"index": 0}, content=b"garbage",
                      headers={"Content-Type": "multipart/form-data"}), 400)
        refused(c.put(url, params={"index": 0}, content=b"garbage",
                      headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400)
        assert status(c, uid2)["received_bytes"] == 0
        for u in (uid, uid2):
            assert c.delete(f"/api/uploads/{u}").status_code == 204


# --- complete ------------------------------------------------------------------------------------

def test_complete_refusals_then_success(api, media, blob):
    with client(api, "alice") as c:
        # missing chunks
        uid = new_upload(c, blob)["upload_id"]
        assert put(c, uid, 0, blob[:CHUNK]).status_code == 200
        assert put(c, uid, 2, blob[2 * CHUNK:3 * CHUNK]).status_code == 200
        detail = refused(c.post(f"/api/uploads/{uid}/complete", json={"target_lang": "es"}), 409, "missing")
        assert "2 chunk(s) missing" in detail and "first missing is 1" in detail
        assert c.delete(f"/api/uploads/{uid}").status_code == 204

        # whole-file sha256 declared at init does not match what arrived
        up = new_upload(c, media, name="talk-9d41.mp4", sha256=hashlib.sha256(b"other").hexdigest())
        send_all(c, up["upload_id"], media)
        refused(c.post(f"/api/uploads/{up['upload_id']}/complete", json={"target_lang": "es"}), 422, "sha256")
        refused(c.post(f"/api/uploads/{up['upload_id']}/complete",
                       json={"target_lang": "es", "sha256": "x" * 64}), 422, "sha256")
        assert status(c, up["upload_id"])["state"] == "receiving"
        assert c.delete(f"/api/uploads/{up['upload_id']}").status_code == 204

        # bad completion bodies on a good upload; each leaves it receiving
        uid = new_upload(c, media, name="talk-9d41.mp4")["upload_id"]
        send_all(c, uid, media)
        url = f"/api/uploads/{uid}/complete"
        for body, code, words in (
            ({}, 422, ["target_lang", "required"]),
            ({"target_lang": "spanish!"}, 422, ["target_lang"]),
            ({"target_lang": "../etc"}, 422, ["target_lang"]),
            ({"target_lang": "e"}, 422, ["target_lang"]),
            ({"target_lang": "es" * 20}, 422, ["target_lang"]),
            ({"target_lang": 7}, 422, ["target_lang"]),
            ({"target_lang": "es", "source_lang": "EN GB"}, 422, ["source_lang"]),
            ({"target_lang": "es", "voice": "a\x00b"}, 422, ["voice"]),
            ({"target_lang": "es", "voice": "v" * 200}, 422, ["voice"]),
            ({"target_lang": "es", "options": {"bogus": 1}}, 422, ["unknown job option", "bogus"]),
            ({"target_lang": "es", "options": {"container": "avi"}}, 422, ["container"]),
            ({"target_lang": "es", "options": {"max_speed": "fast"}}, 422, ["max_speed"]),
            ({"target_lang": "es", "options": {"max_speed": 9}}, 422, ["max_speed"]),
            ({"target_lang": "es", "options": {"max_speed": None}}, 422, ["max_speed"]),
            ({"target_lang": "es", "options": {"duck_db": "nan"}}, 422, ["duck_db"]),
            ({"target_lang": "es", "options": {"target_lufs": "-inf"}}, 422, ["target_lufs"]),
            ({"target_lang": "es", "options": {"tts_engine": ["espeak"]}}, 422, ["tts_engine"]),
            ({"target_lang": "es", "options": []}, 422, ["options"]),
            ({"target_lang": "es", "sha256": "abc"}, 422, ["sha256"]),
            ({"target_lang": "es", "sha256": hashlib.sha256(b"x").hexdigest()}, 422, ["sha256"]),
            ({"target_lang": "es", "voice": "\ud800"}, None, []),
            ({"target_lang": "es", "options": {"\ud800": 1}}, None, []),
            ({"target_lang": "es", "options": {"tts_engine": "\ud800"}}, None, []),
        ):
            r = c.post(url, content=json_bytes(body), headers={"Content-Type": "application/json"})
            refused(r, code, *words)
            assert status(c, uid)["state"] == "receiving", body
        refused(c.post(url, json={"target_lang": "es", "pad": "x" * 70_000}), 413)

        r = c.post(url, json={"target_lang": "es-MX", "sha256": hashlib.sha256(media).hexdigest()})
        assert r.status_code == 200 and r.json()["created"] is True, r.text
        job_id = r.json()["job_id"]
        again = c.post(url, json={"target_lang": "es"})
        assert again.status_code == 200 and again.json() == {"job_id": job_id, "upload_id": uid, "created": False}
        job = c.get(f"/api/jobs/{job_id}")
        assert job.status_code == 200 and job.json()["target_lang"] == "es-MX"
        refused(put(c, uid, 0, media), 409, "already complete")
        refused(c.delete(f"/api/uploads/{uid}"), 409, "job")
        assert status(c, uid)["state"] == "complete"


def test_complete_of_a_file_that_is_not_media_is_422_and_keeps_the_upload(api):
    text = b"this is a shopping list, not a video\n" * 200
    with client(api, "alice") as c:
        uid = new_upload(c, text, name="shopping-list-9d41.mp4")["upload_id"]
        send_all(c, uid, text)
        detail = refused(c.post(f"/api/uploads/{uid}/complete", json={"target_lang": "es"}), 422,
                         "shopping-list-9d41.mp4", "not a readable video or audio file")
        assert str(api.root) not in detail and "/uploads/" not in detail and uid not in detail
        st = status(c, uid)
        assert st["state"] == "receiving" and st["job_id"] is None and st["next_missing"] is None
        refused(c.post(f"/api/uploads/{uid}/complete", json={"target_lang": "es"}), 422, "not a readable")
        assert c.delete(f"/api/uploads/{uid}").status_code == 204


# --- expiry and deletion -------------------------------------------------------------------------

def test_expired_upload_is_410(api, blob):
    from resources.accounts import utcnow
    from resources.uploads import UploadRow, UploadStore

    with client(api, "alice") as c:
        uid = new_upload(c, blob)["upload_id"]
        assert put(c, uid, 0, blob[:CHUNK]).status_code == 200
        folder = data_dir(api) / "uploads" / uid
        assert folder.is_dir()
        with UploadStore().session() as s, s.begin():
            s.get(UploadRow, uid).expires_at = utcnow() - dt.timedelta(minutes=1)
        st = status(c, uid)
        assert st["state"] == "expired"
        assert not folder.exists()
        refused(put(c, uid, 1, blob[CHUNK:2 * CHUNK]), 410, "expired")
        refused(c.post(f"/api/uploads/{uid}/complete", json={"target_lang": "es"}), 410, "expired")
        assert c.delete(f"/api/uploads/{uid}").status_code == 204
        assert status(c, uid)["state"] == "expired"
        assert not folder.exists()


def test_deleted_upload_is_410(api, blob):
    with client(api, "alice") as c:
        uid = new_upload(c, blob)["upload_id"]
        assert put(c, uid, 0, blob[:CHUNK]).status_code == 200
        folder = data_dir(api) / "uploads" / uid
        assert folder.is_dir()
        r = c.delete(f"/api/uploads/{uid}")
        assert r.status_code == 204 and r.content == b""
        assert not folder.exists()
        refused(put(c, uid, 1, blob[CHUNK:2 * CHUNK]), 410, "deleted")
        refused(put(c, uid, 0, blob[:CHUNK]), 410, "deleted")
        refused(c.post(f"/api/uploads/{uid}/complete", json={"target_lang": "es"}), 410, "deleted")
        assert c.delete(f"/api/uploads/{uid}").status_code == 204
        assert status(c, uid)["state"] == "aborted"
        assert not folder.exists()


# --- afterwards ----------------------------------------------------------------------------------

def test_zz_nothing_leaked_no_5xx_no_tracebacks(api):
    """Runs last (file order): over every response of this module and the whole server log."""
    server_errors = [(m, u, s, b[:200]) for m, u, s, b in RESPONSES if s >= 500 and s != 507]  # 507: asked for
    assert not server_errors, server_errors
    log = (api.root / "api.log").read_text(errors="replace")
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]
    secrets_seen = {s for s in SECRETS if len(s) >= 8}
    assert any(s.startswith("dub_") for s in secrets_seen) or not RESPONSES  # (alone: only the log and files)
    for m, u, s, body in RESPONSES:
        for secret in secrets_seen:
            assert secret not in body, (m, u, s)
    for secret in secrets_seen:
        assert secret not in log, "a secret reached the server log"

    # files: the job store, the uploads (named by id only), DAGSTER_HOME and logs; nothing else
    root = api.root
    allowed_top = {"data", "home", "api.log"}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        assert rel.parts[0] in allowed_top, rel
        assert not any(name in rel.parts for name in CLIENT_NAMES), rel
        assert "etc" not in rel.parts, rel
        if rel.parts[0] == "data" and len(rel.parts) > 1:
            if rel.parts[1] == "uploads":
                if len(rel.parts) > 2:
                    assert ID_RE.match(rel.parts[2]), rel
                if len(rel.parts) > 3:
                    assert rel.parts[3:] == ("data",), rel
            else:
                assert len(rel.parts) == 2 and re.fullmatch(r"jobs\.db(-wal|-shm|-journal)?", rel.parts[1]), rel
    for base in (ROOT, root.parent, Path(os.environ.get("TMPDIR", "/tmp"))):
        for name in CLIENT_NAMES[1:]:
            assert not (base / name).exists(), base / name
    assert not (ROOT / "etc").exists()


def test_an_unhandled_error_answers_500_with_the_request_id_and_logs_one_line(monkeypatch, tmp_path, capfd):
    """The request-context middleware (pure ASGI): a route that raises gets a JSON 500 naming the
    request id it echoes, and the request's log line says 500 with the ids the handler bound."""
    from fastapi import Request
    from fastapi.testclient import TestClient

    from upload_api.app import create_app
    from upload_api.deps import bind

    monkeypatch.setenv("DUBBING_DATA_DIR", str(tmp_path))
    app = create_app()

    async def boom(request):
        bind(request, job_id="j" + "0" * 32)
        raise RuntimeError("a bug")

    boom.__annotations__["request"] = Request  # a real class: this module's annotations are strings
    app.add_api_route("/boom", boom)

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom", headers={"X-Request-ID": "req-1.2_3"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "request_id": "req-1.2_3"}
    assert r.headers["x-request-id"] == "req-1.2_3"
    logged = [json.loads(ln) for ln in capfd.readouterr().err.splitlines() if ln.startswith("{")]
    lines = [ln for ln in logged if ln.get("event") == "request" and ln.get("path") == "/boom"]
    assert len(lines) == 1, logged
    assert lines[0]["status"] == 500 and lines[0]["job_id"] == "j" + "0" * 32 and lines[0]["request_id"] == "req-1.2_3"


def test_job_list_offsets_beyond_any_database_integer_are_refused(api):
    """The offset reaches the SQL query: one past what a database integer holds is a 422, never a 500."""
    with client(api, "alice") as c:
        refused(c.get("/api/jobs", params={"offset": 10**19}), 422, "offset")
        refused(c.get("/api/jobs", params={"offset": -1}), 422, "offset")
        r = c.get("/api/jobs", params={"offset": 10**9})
        assert r.status_code == 200 and r.json()["jobs"] == []
