#!/usr/bin/env python3
"""Benchmark 5 (issue 8): the API under load. GET /api/jobs/{id} and GET /api/uploads/{id} from 50
concurrent clients (asyncio + httpx), with 10,000 jobs in the store (and one job with a real finished
run, whose view reads the run's step stats and log too), on the deployed shape's API
(uvicorn, one worker) over a Postgres database of its own. Reports p50/p99 latency, requests per
second and errors.

    .venv/bin/python bench/api_load.py [--jobs 10000] [--clients 50] [--requests 4000] [--interval 1]
                                       [--json OUT.json] [--quick]

Two modes per route: a closed loop (each client sends its next request as soon as the last is
answered: the server's saturation throughput, where latency is queueing) and a paced load (each
client polls every --interval seconds, as phones on a job page do; the web UI polls every 3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from e2e_harness import Deployment  # noqa: E402
from e2e_harness import percentile as pct  # noqa: E402


def seed_jobs(d: Deployment, count: int) -> list[str]:
    """`count` job records for alice, written in bulk (as if uploaded over months)."""
    import sqlalchemy as sa

    from resources.jobstore import JobRow, JobStore, new_job_id

    store = JobStore(database_url=d.db_url)
    now = dt.datetime.now(dt.timezone.utc)
    ids = [new_job_id() for _ in range(count)]
    rows = [dict(id=i, upload_id=None, created_at=now, owner=d.users["alice"].id, input_path="/nonexistent",
                 filename=f"talk{n}.mp4", source_lang="en", target_lang="es", voice=None, options="{}")
            for n, i in enumerate(ids)]
    with store.engine().begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(sa.insert(JobRow), rows[start:start + 1000])
    return ids


def finished_job(d: Deployment) -> str:
    """One real dub (a 2-sentence talk, run in this process on the deployment's instance) for alice,
    so one measured route is a job with a finished run: its view also reads the run's step stats
    and last log lines, as a phone polling its job sees."""

    from e2e_harness import make_talk

    from dubbing_assets.definitions import defs
    from dubbing_assets.partitions import dub_jobs
    from resources.jobstore import JobStore

    video = make_talk(d.root / "media")
    job = JobStore(database_url=d.db_url).create_job(input_path=str(video), filename=video.name, source_lang="en",
                                                     target_lang="es", owner=d.users["alice"].id)
    with d.instance() as instance:
        instance.add_dynamic_partitions(dub_jobs.name, [job.id])
        result = defs.resolve_job_def("dub_job").execute_in_process(instance=instance, partition_key=job.id)
        assert result.success, "the dub for the finished-job route failed"
    return job.id


async def load(url: str, token: str, paths: list[str], clients: int, total: int,
               interval: float = 0.0) -> tuple[list[float], collections.Counter]:
    """`clients` concurrent clients share `total` requests. interval 0: each sends its next request as
    soon as the last is answered (a closed loop: the server's saturation). interval > 0: each client
    starts a request every `interval` seconds (phones polling a job page), late ones at once."""
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()  # what went wrong: a status code or an exception name
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(paths[i % len(paths)])
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=30) as client:
        async def worker(n: int):
            next_at = time.perf_counter() + interval * n / clients  # spread the clients' phases
            while True:
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += interval
                try:
                    path = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                try:
                    r = await client.get(path)
                    if r.status_code != 200:
                        errors[str(r.status_code)] += 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(worker(n) for n in range(clients)))
    return latencies, errors


def measure(d: Deployment, paths: list[str], clients: int, total: int, interval: float) -> dict:
    asyncio.run(load(d.url, d.tokens["alice"], paths, clients, min(total, 200)))  # warm-up
    started = time.perf_counter()
    lat, errors = asyncio.run(load(d.url, d.tokens["alice"], paths, clients, total, interval))
    wall = time.perf_counter() - started
    return {"requests": len(lat), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "p50_ms": round(pct(lat, 50), 1),
            "p99_ms": round(pct(lat, 99), 1), "mean_ms": round(statistics.mean(lat), 1),
            "rps": round(len(lat) / wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=4000, help="per route, closed loop")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="paced mode: each client polls every INTERVAL s (the web UI polls every 3 s)")
    parser.add_argument("--paced-seconds", type=float, default=30.0, help="length of the paced run")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes (shipped: 1; more is possible on Postgres, where upload "
                             "locks and login limits live in the database)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="smoke size: 500 jobs, 300 requests, 5 s paced")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.requests, args.paced_seconds = 500, 300, 5.0
    results: dict = {}
    with Deployment("bench_api_load") as d:
        print(f"starting the API (uvicorn, {args.workers} worker(s)) on a Postgres database of its own ...",
              file=sys.stderr)
        d.start_api(workers=args.workers)
        t = time.perf_counter()
        ids = seed_jobs(d, args.jobs)
        print(f"seeded {len(ids)} jobs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        alice = d.client("alice")
        uploads = []
        for n in range(20):
            r = alice.request("POST", "/api/uploads/init", json={"filename": f"u{n}.mp4", "size_bytes": 10_000_000,
                                                                 "content_type": "video/mp4"})
            uploads.append(r.json()["upload_id"])
        alice.close()
        sample = random.Random(1).sample(ids, min(500, len(ids)))
        print("dubbing one short talk for the finished-job route ...", file=sys.stderr)
        done = finished_job(d)
        paced_total = int(args.clients * args.paced_seconds / args.interval)
        for name, paths in (("GET /api/jobs/{id}", [f"/api/jobs/{j}" for j in sample]),
                            ("GET /api/jobs/{id} (finished run)", [f"/api/jobs/{done}"]),
                            ("GET /api/uploads/{id}", [f"/api/uploads/{u}" for u in uploads])):
            results[name] = {}
            for mode, total, interval in (("closed_loop", args.requests, 0.0),
                                          (f"paced_{args.interval:g}s", paced_total, args.interval)):
                print(f"{name} {mode}: {total} requests from {args.clients} clients ...", file=sys.stderr)
                results[name][mode] = measure(d, paths, args.clients, total, interval)
                print(f"  {json.dumps(results[name][mode])}", file=sys.stderr)
    met = {f"{name} {mode}": r["p99_ms"] <= 50 and r["errors"] == 0
           for name, modes in results.items() for mode, r in modes.items()}
    out = {"jobs_in_store": args.jobs, "clients": args.clients, "api_workers": args.workers,
           "paced_interval_s": args.interval, "results": results, "target": "p99 <= 50 ms, 0 errors",
           "targets_met": met}
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
