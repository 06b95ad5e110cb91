#!/usr/bin/env python3
"""Gate 5: PostgreSQL goes away (stopped, then started again with pg_ctlcluster) while uploads are in
flight and runs are executing. While it is away the API answers 503 with Retry-After, never 500;
clients resume; afterwards every upload completes and every job finishes, nothing lost or duplicated
(one job per upload, one successful run per job, each stage materialised once, or twice where its run failed
in it for a transient reason and was retried from it: dubbing_assets/retries.py).

Then, with --restarts N, PostgreSQL is restarted N more times, each the moment a running job's stage starts
or ends (a STEP_START or STEP_SUCCESS event appears in the event log), with jobs uploaded as others finish:
every job must end done with one successful run, its stages materialised once (but for a transient retry),
and its owner told "Dub ready" exactly once, never "Dub failed" (a local server speaking ntfy's publish API).

Needs to run as a user allowed to stop and start the local cluster (root here; CI runs it as root). The
cluster is the one DUBBING_TEST_PG_URL names (default 127.0.0.1:5432): its port picks it in pg_lsclusters.

    .venv/bin/python scripts/e2e_db_reconnect.py [--down-s 3] [--restarts 20]
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
from e2e_harness import PG_ADMIN_URL, Deployment, GateFailed, check, make_talk, run_gate, wait_until  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech", "dubbed_mix",
          "dubbed_video"]


def _port() -> int:
    return make_url(PG_ADMIN_URL).port or 5432


def _cluster_of_port(port: int) -> tuple[str, str]:
    """(version, name) of the local cluster listening on `port` (pg_lsclusters)."""
    rows = subprocess.run(["pg_lsclusters", "-h"], check=True, capture_output=True, text=True).stdout.splitlines()
    for row in rows:
        version, name, row_port = row.split()[:3]
        if int(row_port) == port:
            return version, name
    raise GateFailed(f"no local PostgreSQL cluster listens on port {port} (pg_lsclusters)")


def cluster(action: str) -> None:
    version, name = _cluster_of_port(_port())
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action], check=True,
                   capture_output=True)


def pg_up() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(_port())]).returncode == 0


def land_restarts(d: Deployment, alice, video: Path, n: int, down_s: float) -> tuple[list[str], dict]:
    """Restart PostgreSQL n times, each the moment a stage of a running job starts or ends; keep two jobs running
    (a new upload whenever fewer are). Returns the jobs uploaded here and what each restart landed on."""
    import psycopg2

    dsn = make_url(d.db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    jobs: list[str] = []
    landed: collections.Counter = collections.Counter()
    conn, last_id = None, None
    deadline = time.time() + 180 + 60 * n
    while sum(landed.values()) < n:
        check(time.time() < deadline, f"only {sum(landed.values())} of {n} restarts landed: {dict(landed)}")
        active = [j for j in jobs if alice.job(j, retry_s=60)["state"] not in ("done", "failed", "cancelled")]
        if len(active) < 2:
            jobs.append(alice.upload(video, "es", retry_s=60)["job_id"])
        try:
            if conn is None:
                conn = psycopg2.connect(dsn)
                conn.autocommit = True
            with conn.cursor() as cur:
                if last_id is None:
                    cur.execute("select coalesce(max(id), 0) from event_logs")
                    last_id = cur.fetchone()[0]
                cur.execute("select id, dagster_event_type, step_key from event_logs where id > %s and "
                            "dagster_event_type in ('STEP_START', 'STEP_SUCCESS') order by id", (last_id,))
                rows = cur.fetchall()
        except psycopg2.Error:
            conn = None
            time.sleep(0.2)
            continue
        if not rows:
            time.sleep(0.05)
            continue
        last_id = rows[-1][0]
        conn.close()
        conn = None
        cluster("stop")  # at once: the stage has just started, or the next one is starting
        time.sleep(down_s)
        cluster("start")
        wait_until(pg_up, 60, message="PostgreSQL did not come back")
        landed[f"{rows[-1][1]} {rows[-1][2]}"] += 1
    return jobs, landed


def gate(down_s: float, restarts: int = 0) -> str:
    check(Path("/etc/postgresql").is_dir(), "this gate needs a local PostgreSQL cluster (pg_ctlcluster)")
    from ntfy_fake import FakeNtfy

    ntfy = FakeNtfy(auth="Bearer tk_e2edbgate").start()
    try:
        return _gate(down_s, restarts, ntfy)
    finally:
        ntfy.stop()


def _gate(down_s: float, restarts: int, ntfy) -> str:
    with Deployment("db_reconnect", env={"UPLOAD_CHUNK_BYTES": str(32 * 1024), "NTFY_URL": ntfy.url,
                                         "NTFY_AUTH": "tk_e2edbgate",
                                         "PUBLIC_BASE_URL": "https://dub.example.org"}) as d:
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

        check(len(results) == 3, f"uploads completed: {len(results)} of 3")
        landed: dict = {}
        extra: list[str] = []
        if restarts:
            extra, landed = land_restarts(d, alice, video, restarts, min(down_s, 1.0))
        jobs = {**{j: alice for j in [*running, *extra]}, **{r["job_id"]: bob for r in results.values()}}
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
        # each owner told once per job that it is ready, never that it failed
        owner = {j: ("dub-alice" if c is alice else "dub-bob") for j, c in jobs.items()}
        wait_until(lambda: all(any(m.click and m.click.endswith(j) for m in ntfy.to(owner[j])) for j in jobs), 90,
                   message="a job's notification did not arrive")
        time.sleep(5)
        told = {j: [m.title.split(":")[0] for m in ntfy.to(owner[j]) if m.click and m.click.endswith(j)] for j in jobs}
        check(all(t == ["Dub ready"] for t in told.values()), f"notifications per job: {told}")
        alice.close()
        bob.close()
        if restarts:
            return (f"{sum(landed.values())} PostgreSQL restarts, each on a stage start or end of a running job "
                    f"({', '.join(f'{k} x{v}' for k, v in sorted(landed.items()))}), after one {outage:.1f} s outage "
                    f"with 3 uploads in flight ({seen[503]} x 503, 0 x 500): all {len(jobs)} jobs done, 1 successful "
                    f"run each ({retried} after a run retry, {transient} transient stage failures retried), stages "
                    f"materialised once (+1 where retried), 1 'Dub ready' per job, no 'Dub failed'")
        return (f"Postgres away {outage:.1f} s with 2 runs executing and 3 uploads in flight: API answered "
                f"{seen[503]} x 503 (Retry-After), 0 x 500; all 3 uploads completed, all {len(jobs)} jobs done "
                f"({retried} after a run retry, {transient} of them for a transient stage failure), 1 successful run "
                f"and 1 materialisation per stage each (+1 where a transient failure was retried)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--restarts", type=int, default=0,
                        help="then restart PostgreSQL this many times, each on a stage start or end of a running job")
    args = parser.parse_args()
    try:
        run_gate("e2e_db_reconnect", lambda: gate(args.down_s, args.restarts))
    finally:
        if not pg_up():
            cluster("start")
