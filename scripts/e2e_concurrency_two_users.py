#!/usr/bin/env python3
"""Gate 1: two users upload and submit at the same time (several jobs each) on the deployed shape.
Every job finishes, with exactly one run; neither user can see or touch the other's jobs, uploads or
outputs (each such request answers 404).

    .venv/bin/python scripts/e2e_concurrency_two_users.py [--jobs-per-user 3]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_harness import Deployment, check, make_talk, run_gate  # noqa: E402


def gate(jobs_per_user: int) -> str:
    with Deployment("concurrency") as d:
        d.start()
        video = make_talk(d.root / "media")
        clients = {who: d.client(who) for who in ("alice", "bob")}

        def submit(who: str) -> list[dict]:
            return [clients[who].upload(video, "es") for _ in range(jobs_per_user)]

        with ThreadPoolExecutor(2) as pool:
            made = dict(zip(clients, pool.map(submit, clients)))
        views = {}
        for who, uploads in made.items():
            for up in uploads:
                views[up["job_id"]] = clients[who].wait_job(up["job_id"], timeout=600)
        bad = {j: v["state"] for j, v in views.items() if v["state"] != "done"}
        check(not bad, f"jobs not done: {bad}")
        runs = {j: len(d.runs_of(j)) for j in views}
        check(all(n == 1 for n in runs.values()), f"jobs with other than one run: {runs}")

        refused = 0
        for who, other in (("alice", "bob"), ("bob", "alice")):
            c = clients[who]
            listed = {j["job_id"] for j in c.request("GET", "/api/jobs?limit=100").json()["jobs"]}
            check(listed == {u["job_id"] for u in made[who]}, f"{who}'s job list is not exactly their jobs")
            for up in made[other]:
                job_id, upload_id = up["job_id"], up["upload_id"]
                output = views[job_id]["outputs"][0]
                for method, url, kw in (
                    ("GET", f"/api/jobs/{job_id}", {}),
                    ("GET", f"/api/jobs/{job_id}/timeline", {}),
                    ("GET", f"/api/jobs/{job_id}/logs/tail", {}),
                    ("GET", f"/api/jobs/{job_id}/outputs/{output}", {}),
                    ("POST", f"/api/jobs/{job_id}/cancel", {}),
                    ("POST", f"/api/jobs/{job_id}/retry", {}),
                    ("GET", f"/api/uploads/{upload_id}", {}),
                    ("PUT", f"/api/uploads/{upload_id}/chunk?index=0", {"content": b"x"}),
                    ("POST", f"/api/uploads/{upload_id}/complete", {"json": {"target_lang": "es"}}),
                    ("DELETE", f"/api/uploads/{upload_id}", {}),
                ):
                    r = c.request(method, url, **kw)
                    check(r.status_code == 404, f"{who} {method} {url} -> {r.status_code} (want 404)")
                    refused += 1
        # the owners still have everything
        for who, uploads in made.items():
            for up in uploads:
                view = clients[who].job(up["job_id"])
                check(view["state"] == "done" and view["outputs"], f"{who} lost job {up['job_id']}")
                video_out = next(n for n in view["outputs"] if n.endswith(".mkv"))
                r = clients[who].request("GET", f"/api/jobs/{up['job_id']}/outputs/{video_out}")
                check(r.status_code == 200 and len(r.content) > 1000, f"{who} cannot download their output")
        for c in clients.values():
            c.close()
        return (f"{len(views)} jobs ({jobs_per_user} per user) done with 1 run each; "
                f"{refused} cross-user requests all 404")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs-per-user", type=int, default=3)
    args = parser.parse_args()
    run_gate("e2e_concurrency_two_users", lambda: gate(args.jobs_per_user))
