#!/usr/bin/env python3
"""Gate 5: PostgreSQL goes away (stopped, then started again with pg_ctlcluster) while uploads are in
flight and runs are executing. While it is away the API answers 503 with Retry-After, never 500;
clients resume; afterwards every upload completes and every job finishes, nothing lost or duplicated
(one job per upload, one successful run per job, each stage materialised once, or twice where its run failed
in it for a transient reason and was retried from it: dubbing_assets/retries.py).

Needs to run as a user allowed to stop and start the local cluster (root here; CI runs it as root).

    .venv/bin/python scripts/e2e_db_reconnect.py [--down-s 3]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_harness import Deployment, check, make_talk, run_gate, wait_until  # noqa: E402

STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech", "dubbed_mix",
          "dubbed_video"]


def cluster(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True,
                   capture_output=True)


def pg_up() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]).returncode == 0


def gate(down_s: float) -> str:
    check(Path("/etc/postgresql").is_dir(), "this gate needs a local PostgreSQL cluster (pg_ctlcluster)")
    with Deployment("db_reconnect", env={"UPLOAD_CHUNK_BYTES": str(32 * 1024)}) as d:
        d.start("code_server", "daemon", "api")
        video = make_talk(d.root / "media", sentences=3)
        alice, bob = d.client("alice"), d.client("bob")
        running = [alice.upload(video, "es")["job_id"] for _ in range(2)]
        wait_until(lambda: any(alice.job(j)["state"] == "running" for j in running), 300,
                   message="no run started")

        # uploads in flight during the outage (each client retries 503 and lost connections)
        results: dict[int, dict] = {}
        errors: list[str] = []

        def upload_slowly(n: int):
            try:
                c = d.client("bob")
                data = video.read_bytes()
                r = c.request("POST", "/api/uploads/init", retry_s=120, json={
                    "filename": f"inflight{n}.mp4", "size_bytes": len(data), "content_type": "video/mp4"})
                check(r.status_code == 201, f"init {n}: {r.status_code} {r.text}")
                upload_id = r.json()["upload_id"]
                status = c.request("GET", f"/api/uploads/{upload_id}", retry_s=120).json()
                size = status["chunk_bytes"]
                for i in range(status["total_chunks"]):
                    piece = data[i * size:(i + 1) * size]
                    r = c.request("PUT", f"/api/uploads/{upload_id}/chunk", retry_s=120, params={"index": i},
                                  content=piece)
                    check(r.status_code == 200, f"upload {n} chunk {i}: {r.status_code} {r.text}")
                    time.sleep(0.3)
                c.send_missing(upload_id, data, retry_s=120)
                results[n] = c.complete(upload_id, "es", retry_s=120)
                c.close()
            except Exception as exc:  # reported by the main thread
                errors.append(f"upload {n}: {exc}")

        # watch what the API answers while the database is away
        seen: collections.Counter = collections.Counter()
        retry_after_ok = [True]
        stop_probe = threading.Event()

        def probe(url: str):
            # one thread per route: a route whose Dagster storage retries its connection for a few
            # seconds must not hide what the other routes answer meanwhile
            c = d.client("alice")
            while not stop_probe.is_set():
                try:
                    r = c.http.get(url)
                    seen[r.status_code] += 1
                    if r.status_code == 503 and not r.headers.get("Retry-After"):
                        retry_after_ok[0] = False
                except Exception as exc:
                    seen[type(exc).__name__] += 1
                time.sleep(0.05)
            c.close()

        threads = [threading.Thread(target=upload_slowly, args=(n,)) for n in range(3)]
        probers = [threading.Thread(target=probe, args=(url,))
                   for url in ("/api/jobs", f"/api/jobs/{running[0]}", "/api/settings")]
        for t in [*threads, *probers]:
            t.start()
        time.sleep(1.5)
        outage_started = time.time()
        cluster("stop")
        time.sleep(down_s)
        cluster("start")
        wait_until(pg_up, 60, message="PostgreSQL did not come back")
        outage = time.time() - outage_started
        time.sleep(3)
        stop_probe.set()
        for t in threads:
            t.join(300)
        for t in probers:
            t.join(30)
        check(not errors, "; ".join(errors))
        check(seen[500] == 0, f"the API answered 500 while the database was away: {dict(seen)}")
        check(seen[503] > 0, f"no 503 seen while the database was away: {dict(seen)}")
        check(retry_after_ok[0], "a 503 came without Retry-After")

        jobs = {**{j: alice for j in running}, **{r["job_id"]: bob for r in results.values()}}
        check(len(results) == 3, f"uploads completed: {len(results)} of 3")
        for job, client in jobs.items():
            view = client.wait_job(job, timeout=600, retry_s=60)
            check(view["state"] == "done", f"job {job} ended {view['state']}")
        per_job = {j: [r.status.value for r in d.runs_of(j)] for j in jobs}
        check(all(s.count("SUCCESS") == 1 for s in per_job.values()), f"runs per job: {per_job}")
        # each stage once; a stage whose run failed in it for a transient reason (the database went away under
        # Dagster's own event write) and was retried from it may count that retry too
        def wrong(j: str) -> dict | None:
            counts, retried_in = d.materialisations(j), d.transient_retries(j)
            ok = all(1 <= counts.get(s, 0) <= 1 + retried_in.get(s, 0) for s in STAGES) and set(counts) == set(STAGES)
            return None if ok else {"materialised": counts, "transient retries": retried_in}
        twice = {j: w for j in jobs if (w := wrong(j))}
        check(not twice, f"stages not materialised exactly once (but for a transient retry): {twice}")
        transient = sum(sum(d.transient_retries(j).values()) for j in jobs)
        from resources.jobstore import JobStore

        store = JobStore(database_url=d.db_url)
        upload_ids = [r["upload_id"] for r in results.values()]
        made = [j for j in store.list_jobs(limit=1000) if j.upload_id in upload_ids]
        check(len(made) == 3, f"jobs made from the 3 in-flight uploads: {len(made)}")
        retried = sum(1 for s in per_job.values() if len(s) > 1)
        alice.close()
        bob.close()
        return (f"Postgres away {outage:.1f} s with 2 runs executing and 3 uploads in flight: API answered "
                f"{seen[503]} x 503 (Retry-After), 0 x 500; all 3 uploads completed, all {len(jobs)} jobs done "
                f"({retried} after a run retry, {transient} of them for a transient stage failure), 1 successful run "
                f"and 1 materialisation per stage each (+1 where a transient failure was retried)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down-s", type=float, default=3.0)
    args = parser.parse_args()
    try:
        run_gate("e2e_db_reconnect", lambda: gate(args.down_s))
    finally:
        if not pg_up():
            cluster("start")
