#!/usr/bin/env python3
"""Gate 6: the web flow through the HTTP API, as the pages do it: log in (session cookie + CSRF
token), open the pages, upload two videos through the chunk API, watch one job's live log over
Server-Sent Events to the end, cancel the other mid-run, download the finished output, log out.

    .venv/bin/python scripts/e2e_smoke_web.py
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_harness import Deployment, check, make_talk, run_gate, wait_until  # noqa: E402


def gate() -> str:
    with Deployment("smoke_web") as d:
        d.start("code_server", "daemon", "api")
        short = make_talk(d.root / "short", sentences=2)
        long = make_talk(d.root / "long", sentences=12, name="long_talk.mp4")
        web = httpx.Client(base_url=d.url, timeout=60, follow_redirects=False)
        r = web.get("/ui")
        check(r.status_code == 303 and r.headers["location"].startswith("/ui/login"), "/ui without a session")
        check(web.get("/ui/login").status_code == 200, "login page")
        r = web.post("/api/auth/login", json={"username": "alice", "password": "alice-password-123"})
        check(r.status_code == 200, f"login: {r.status_code} {r.text}")
        page = web.get("/ui/upload")
        check(page.status_code == 200, "upload page")
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)
        check(csrf == r.json()["csrf_token"], "the page's CSRF token is the session's")
        unsafe = {"X-CSRF-Token": csrf}
        check(web.post("/api/uploads/init", json={"filename": "x.mp4", "size_bytes": 10}).status_code == 403,
              "an unsafe request without the CSRF token was not refused")

        def upload(path: Path) -> str:
            data = path.read_bytes()
            r = web.post("/api/uploads/init", headers=unsafe, json={
                "filename": path.name, "size_bytes": len(data), "content_type": "video/mp4",
                "sha256": hashlib.sha256(data).hexdigest()})
            check(r.status_code == 201, f"init: {r.text}")
            init = r.json()
            size = init["chunk_bytes"]
            for i in range(init["total_chunks"]):
                piece = data[i * size:(i + 1) * size]
                r = web.put(f"/api/uploads/{init['upload_id']}/chunk", params={"index": i}, content=piece,
                            headers={**unsafe, "X-Chunk-SHA256": hashlib.sha256(piece).hexdigest()})
                check(r.status_code == 200, f"chunk {i}: {r.text}")
            r = web.post(f"/api/uploads/{init['upload_id']}/complete", headers=unsafe, json={"target_lang": "es"})
            check(r.status_code == 200, f"complete: {r.text}")
            return r.json()["job_id"]

        finish, cancel = upload(short), upload(long)
        dash = web.get("/ui")
        check(dash.status_code == 200 and finish in dash.text and cancel in dash.text,
              "the dashboard does not list both jobs")
        # cancel the long one mid-run, as the job page's button does
        wait_until(lambda: web.get(f"/api/jobs/{cancel}").json()["state"] == "running", 300, every=0.3,
                   message="the long job did not start")
        r = web.post(f"/api/jobs/{cancel}/cancel", headers=unsafe)
        check(r.status_code == 202, f"cancel: {r.status_code} {r.text}")
        # follow the short job's live log to its end, as the job page's EventSource does
        events, last = 0, None
        with web.stream("GET", f"/api/jobs/{finish}/logs/stream", timeout=600) as resp:
            check(resp.headers["content-type"].startswith("text/event-stream"), "log stream type")
            kind = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events += 1
                    if kind == "end":
                        last = json.loads(line[6:])
        check(last and last["state"] == "done", f"the live log ended with {last}")
        view = web.get(f"/api/jobs/{finish}").json()
        video = next(n for n in view["outputs"] if n.endswith(".mkv"))
        r = web.get(f"/api/jobs/{finish}/outputs/{video}", headers={"Range": "bytes=0-1023"})
        check(r.status_code == 206 and len(r.content) == 1024, f"range download: {r.status_code}")
        check(web.get(f"/ui/jobs/{finish}").status_code == 200, "job page")
        cancelled = wait_until(lambda: (v := web.get(f"/api/jobs/{cancel}").json())["state"] in
                               ("cancelled", "done", "failed") and v, 60)
        check(cancelled["state"] == "cancelled", f"the cancelled job ended {cancelled['state']}")
        check(web.post("/api/auth/logout", headers=unsafe).status_code == 200, "logout")
        check(web.get("/api/jobs").status_code == 401, "the session still works after logout")
        web.close()
        return f"login, 2 uploads, {events} live log events to 'done', 1 job cancelled mid-run, download, logout"


if __name__ == "__main__":
    run_gate("e2e_smoke_web", gate)
