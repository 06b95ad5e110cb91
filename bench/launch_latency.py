#!/usr/bin/env python3
"""Benchmark 4 (issue 8): launch latency. From the moment a client gets the answer to
`POST /api/uploads/{id}/complete` to the run's RUN_START event in Dagster's event log, on the deployed
shape (scripts/e2e_harness.py `Deployment`: gRPC code server, dagster-daemon and the uvicorn API as
separate processes on a Postgres database of their own), with the shipped sensor interval.

Each launch is measured with a free run slot: jobs are submitted one after another (a tiny generated
video), and each run is cancelled through the API as soon as it has started, and has ended, before the
next job is submitted. `--burst N` also submits N jobs at once and reports their latencies separately
(those include waiting for a slot behind `max_concurrent_runs`; every run is cancelled once started).

Breakdown per launch, from the run's record and event log:
  sensor   complete answered -> run created by the sensor tick (the run record's create time, QUEUED)
  enqueue  run created -> RUN_ENQUEUED (the sensor daemon submits the run it created to the queue)
  queue    RUN_ENQUEUED -> RUN_STARTING (dequeued by the run coordinator daemon, which then asks the
           code server to launch a run worker)
  worker   RUN_STARTING -> RUN_START, in two parts:
    spawn  RUN_STARTING -> "Started process for run" (the launch call; the code server spawns a fresh
           Python process that imports Dagster and opens the instance)
    load   -> RUN_START (the run worker imports the code location and builds the execution plan)

    .venv/bin/python bench/launch_latency.py [--jobs 20] [--burst 0] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from e2e_harness import FINISHED, Deployment, check, make_talk, wait_until  # noqa: E402
from e2e_harness import percentile as pct  # noqa: E402

TARGETS = {"p50_s": 8.0, "p95_s": 15.0}
PHASES = ("sensor", "enqueue", "queue", "worker")


def say(message: str) -> None:
    print(f"launch_latency: {message}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict:
    return {"p50_s": round(pct(values, 50), 2), "p95_s": round(pct(values, 95), 2),
            "mean_s": round(statistics.mean(values), 2), "max_s": round(max(values), 2)}


def run_of(instance, job_id: str):
    import dagster as dg

    records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": job_id}), limit=1)
    return records[0] if records else None


def started_at(instance, run_id: str) -> float | None:
    import dagster as dg

    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    return records[0].event_log_entry.timestamp if records else None


def breakdown(instance, job_id: str, answered: float) -> dict:
    """The launch of a job's run, split into its phases (seconds), from Dagster's records."""
    import dagster as dg

    record = run_of(instance, job_id)
    times = {}
    for rec in instance.get_records_for_run(record.dagster_run.run_id, of_type={
            dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.RUN_START,
            dg.DagsterEventType.ENGINE_EVENT}).records:
        event = rec.event_log_entry.dagster_event
        if event.event_type_value == "ENGINE_EVENT":
            if not (event.message or "").startswith("Started process for run"):
                continue
        times.setdefault(event.event_type_value, rec.event_log_entry.timestamp)
    created = record.create_timestamp.timestamp()
    enqueued = times.get("PIPELINE_ENQUEUED", created)
    starting, start = times["PIPELINE_STARTING"], times["PIPELINE_START"]
    retried = record.dagster_run.tags.get("dagster/retry_number") is not None
    if retried:  # the phases before the worker belong to the first run; all of the wait is in "queue"
        created = enqueued = answered
    return {"job_id": job_id, "run_id": record.dagster_run.run_id, "retried": retried, "total": start - answered,
            "sensor": created - answered, "enqueue": enqueued - created, "queue": starting - enqueued,
            "worker": start - starting, "spawn": times.get("ENGINE_EVENT", start) - starting,
            "load": start - times.get("ENGINE_EVENT", start)}


def tick_gaps(d: Deployment) -> dict:
    """Seconds between successive ticks of the upload sensor in the daemon (from the ticks table)."""
    import sqlalchemy as sa

    engine = sa.create_engine(d.db_url)
    with engine.connect() as conn:
        stamps = [row[0] for row in conn.execute(sa.text(
            "select timestamp from job_ticks where type = 'SENSOR' and tick_body like '%\"upload_sensor\"%' "
            "order by timestamp"))]
    engine.dispose()
    gaps = [b.timestamp() - a.timestamp() if hasattr(a, "timestamp") else b - a for a, b in zip(stamps, stamps[1:])]
    return summary(gaps) | {"ticks": len(stamps)} if gaps else {"ticks": len(stamps)}


def submit(client, video: Path) -> tuple[str, float]:
    """Upload the video; returns (job id, the time the client got the answer to complete)."""
    data = video.read_bytes()
    r = client.request("POST", "/api/uploads/init", json={"filename": video.name, "size_bytes": len(data),
                                                         "content_type": "video/mp4"})
    check(r.status_code == 201, f"init: {r.status_code} {r.text}")
    upload_id = r.json()["upload_id"]
    client.send_missing(upload_id, data)
    r = client.request("POST", f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
    answered = time.time()
    check(r.status_code == 200, f"complete: {r.status_code} {r.text}")
    return r.json()["job_id"], answered


def cancel_and_wait(client, job_id: str) -> None:
    r = client.request("POST", f"/api/jobs/{job_id}/cancel")
    check(r.status_code in (202, 409), f"cancel {job_id}: {r.status_code} {r.text}")
    client.wait_job(job_id, FINISHED, timeout=120)


def sequential(d: Deployment, instance, client, video: Path, jobs: int) -> list[dict]:
    out = []
    for n in range(jobs):
        job_id, answered = submit(client, video)
        # (the newest run of the job: if launching timed out under load, the run failed and Dagster's run
        # retries launched another; `retried` says so and the latency counts to the retry's RUN_START)
        run = wait_until(lambda: (r := run_of(instance, job_id)) and started_at(instance, r.dagster_run.run_id),
                         timeout=600, every=0.2, message=f"job {job_id}: no RUN_START within 600 s")
        check(run, "no run")
        row = breakdown(instance, job_id, answered)
        out.append(row)
        say(f"{n + 1}/{jobs}: {row['total']:.2f} s (" + ", ".join(f"{p} {row[p]:.2f}" for p in PHASES) + ")")
        cancel_and_wait(client, job_id)
    return out


def burst(d: Deployment, instance, client, video: Path, jobs: int) -> list[dict]:
    submitted = [submit(client, video) for _ in range(jobs)]
    say(f"burst: {jobs} jobs submitted in {submitted[-1][1] - submitted[0][1]:.1f} s")
    out, pending = [], dict(submitted)
    deadline = time.time() + 60 + 30 * jobs
    while pending and time.time() < deadline:
        for job_id in list(pending):
            record = run_of(instance, job_id)
            if record and started_at(instance, record.dagster_run.run_id):
                out.append(breakdown(instance, job_id, pending.pop(job_id)))
                client.request("POST", f"/api/jobs/{job_id}/cancel")  # frees the slot for the next
        time.sleep(0.2)
    check(not pending, f"burst: {len(pending)} job(s) never started")
    for job_id, _ in submitted:
        client.wait_job(job_id, FINISHED, timeout=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--burst", type=int, default=0, help="also submit this many jobs at once")
    parser.add_argument("--sensor-interval", type=int, default=None,
                        help="UPLOAD_SENSOR_INTERVAL_S for the daemon (default: the shipped default)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="smoke size: 3 jobs, no burst")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.burst = 3, 0
    started, load_before = time.time(), os.getloadavg()[0]
    with Deployment("bench_launch") as d:
        d.env.pop("UPLOAD_SENSOR_INTERVAL_S")  # the harness's 1 s; the bench measures the shipped default
        if args.sensor_interval:
            d.env["UPLOAD_SENSOR_INTERVAL_S"] = str(args.sensor_interval)
        d.patience_s = 300
        d.start("code_server", "daemon", "api")
        say(f"deployment up in {time.time() - started:.0f} s (code server, daemon, API on {d.db})")
        video = make_talk(d.root / "media", sentences=1)
        client = d.client("alice")
        with d.instance() as instance:
            rows = sequential(d, instance, client, video, args.jobs)
            burst_rows = burst(d, instance, client, video, args.burst) if args.burst else []
        client.close()
        gaps = tick_gaps(d)
    totals = [r["total"] for r in rows]
    result = {
        "benchmark": "launch_latency", "jobs": args.jobs, "quick": args.quick,
        "sensor_interval_s": args.sensor_interval or "default",
        "latency": summary(totals),
        "breakdown": {phase: summary([r[phase] for r in rows]) for phase in (*PHASES, "spawn", "load")},
        "upload_sensor_tick_gap": gaps, "loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "retried_launches": sum(r["retried"] for r in rows),
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        "targets": TARGETS,
    }
    result["targets_met"] = (result["latency"]["p50_s"] <= TARGETS["p50_s"]
                             and result["latency"]["p95_s"] <= TARGETS["p95_s"])
    if burst_rows:
        result["burst"] = {"jobs": args.burst, "latency": summary([r["total"] for r in burst_rows]),
                           "breakdown": {p: summary([r[p] for r in burst_rows]) for p in PHASES}}
    result["wall_s"] = round(time.time() - started, 1)
    say(f"p50 {result['latency']['p50_s']} s, p95 {result['latency']['p95_s']} s over {len(rows)} launches; "
        f"targets met: {result['targets_met']}")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(json.dumps({k: result[k] for k in ("latency", "breakdown", "targets_met")}))


if __name__ == "__main__":
    main()
