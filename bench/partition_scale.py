#!/usr/bin/env python3
"""Benchmark 6 (issue 8): scale of partitions. 10,000 dub-job dynamic partitions and 10,000 job records
on Postgres (the deployed shape's API and database, scripts/e2e_harness.py `Deployment`), then:

  sensor tick   the upload sensor called directly (build_sensor_context on the Postgres instance) with
                a few completed uploads pending: the first tick (no cursor: it also sweeps abandoned
                uploads) and steady ticks (cursor just before the pending jobs)
  job list      GET /api/jobs on the real uvicorn API: the first page and a later page
  job view      GET /api/jobs/{id} and GET /api/jobs/{id}/timeline of a job deep in the list

p50/p95 over repeated requests. `--profile DIR` also profiles steady sensor ticks and each API route
in process (pyinstrument, the same app and database; the route's thread-pool work run inline so one
profiler sees it).

    .venv/bin/python bench/partition_scale.py [--partitions 10000] [--repeat 30] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "scripts")]
from api_load import seed_jobs  # noqa: E402
from e2e_harness import Deployment, check  # noqa: E402
from e2e_harness import percentile as pct  # noqa: E402

TARGETS = {"sensor_tick_s": 2.0, "list_ms": 100.0}
PENDING_UPLOADS = 5
BATCH = 1000


def say(message: str) -> None:
    print(f"partition_scale: {message}", file=sys.stderr, flush=True)


def summary(values: list[float], unit: str) -> dict:
    return {f"p50_{unit}": round(pct(values, 50), 3), f"p95_{unit}": round(pct(values, 95), 3),
            f"mean_{unit}": round(statistics.mean(values), 3), "n": len(values)}


def add_partitions(instance, ids: list[str]) -> float:
    started = time.perf_counter()
    for start in range(0, len(ids), BATCH):
        instance.add_dynamic_partitions("dub_jobs", ids[start:start + BATCH])
    return time.perf_counter() - started


def pending_uploads(d: Deployment, count: int) -> list:
    """Completed uploads the sensor has not handed to Dagster yet (job records with an upload id)."""
    from resources.jobstore import JobStore

    store = JobStore(database_url=d.db_url)
    return [store.create_job(input_path="/nonexistent", filename=f"pending{n}.mp4", source_lang="en",
                             target_lang="es", owner=d.users["alice"].id, upload_id=secrets.token_hex(16))
            for n in range(count)]


def sensor_ticks(d: Deployment, instance, pending: list, repeat: int, profile: Path | None = None) -> dict:
    import dagster as dg

    from resources.jobstore import JobStore
    from resources.storage import MediaStorage
    from sensors.upload_sensor import upload_sensor

    resources = {"job_store": JobStore(database_url=d.db_url), "storage": MediaStorage(root=d.env["DUBBING_DATA_DIR"])}

    def tick(cursor):
        started = time.perf_counter()
        result = upload_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
        elapsed = time.perf_counter() - started
        check([r.run_key for r in result.run_requests] == [j.id for j in pending],
              f"the tick asked for {len(result.run_requests)} run(s), not the {len(pending)} pending")
        return elapsed

    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
        for _ in range(5):
            tick(json.dumps({"seq": pending[0].seq - 1, "swept": time.time()}))
        profiler.stop()
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "sensor_tick.txt").write_text(profiler.output_text(unicode=False, color=False))
        say(f"profile of 5 steady sensor ticks: {profile / 'sensor_tick.txt'}")
    first = tick(None)  # no cursor: walks the job store from the start and sweeps abandoned uploads
    steady_cursor = json.dumps({"seq": pending[0].seq - 1, "swept": time.time()})
    steady = [tick(steady_cursor) for _ in range(repeat)]
    # a full batch: as many pending uploads as one tick takes (a burst of completions)
    from sensors.upload_sensor import MAX_JOBS_PER_TICK

    pending += pending_uploads(d, MAX_JOBS_PER_TICK - len(pending))
    full = [tick(steady_cursor) for _ in range(max(3, repeat // 3))]
    # the same with one membership query per job, as the sensor did before (the ratio is the finding)
    instance.get_existing_dynamic_partitions = lambda name, keys: {
        k for k in keys if instance.has_dynamic_partition(name, k)}
    try:
        per_key = [tick(steady_cursor) for _ in range(max(3, repeat // 3))]
    finally:
        del instance.get_existing_dynamic_partitions
    return {"first_tick_s": round(first, 3), "steady": summary(steady, "s"), "pending_uploads": PENDING_UPLOADS,
            "full_batch": {"pending_uploads": len(pending), **summary(full, "s")},
            "full_batch_one_query_per_job": summary(per_key, "s")}


def api_timings(d: Deployment, paths: dict[str, str], repeat: int) -> dict:
    out = {}
    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.tokens['alice']}"}, timeout=120) as c:
        for name, path in paths.items():
            r = c.get(path)  # warm-up (and a check)
            check(r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}")
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                r = c.get(path)
                times.append((time.perf_counter() - started) * 1000)
                check(r.status_code == 200, f"{path}: {r.status_code}")
            out[name] = {"path": path, **summary(times, "ms")}
            say(f"{name}: p50 {out[name]['p50_ms']:.1f} ms, p95 {out[name]['p95_ms']:.1f} ms")
    return out


def profile_routes(d: Deployment, paths: dict[str, str], folder: Path) -> dict[str, str]:
    """pyinstrument profiles of the routes, in this process against the same database."""
    import asyncio

    from pyinstrument import Profiler

    from upload_api import deps
    from upload_api.app import app
    from upload_api.routers import jobs

    async def inline(fn, *args, **kwargs):
        return fn(*args, **kwargs)

    jobs.run_in_threadpool = deps.run_in_threadpool = inline  # so the profiler (this thread) sees the work
    folder.mkdir(parents=True, exist_ok=True)
    written = {}

    async def call(path: str, times: int):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                     headers={"Authorization": f"Bearer {d.tokens['alice']}"}) as c:
            for _ in range(times):
                r = await c.get(path)
                check(r.status_code == 200, f"{path}: {r.status_code}")

    for name, path in paths.items():
        asyncio.run(call(path, 2))  # warm-up: connections, imports, the Dagster instance
        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
        asyncio.run(call(path, 5))
        profiler.stop()
        out = folder / f"{name.replace(' ', '_')}.txt"
        out.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        written[name] = str(out)
        say(f"profile of {name} (5 requests): {out}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=10_000, help="partitions and job records")
    parser.add_argument("--repeat", type=int, default=30, help="measured requests/ticks each")
    parser.add_argument("--profile", type=Path, help="write pyinstrument profiles of the API routes here")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="smoke size: 500 partitions, 5 repeats")
    args = parser.parse_args()
    if args.quick:
        args.partitions, args.repeat = 500, 5
    started = time.time()
    with Deployment("bench_partitions") as d:
        d.patience_s = 300
        d.start("api")
        t = time.perf_counter()
        ids = seed_jobs(d, args.partitions)
        seeded_s = time.perf_counter() - t
        with d.instance() as instance:
            added_s = add_partitions(instance, ids)
            check(len(instance.get_dynamic_partitions("dub_jobs")) == len(ids), "partitions missing")
            say(f"{len(ids)} job records in {seeded_s:.1f} s, {len(ids)} partitions in {added_s:.1f} s "
                f"(batches of {BATCH})")
            pending = pending_uploads(d, PENDING_UPLOADS)
            sensor = sensor_ticks(d, instance, pending, args.repeat, args.profile)
            say(f"sensor: first tick {sensor['first_tick_s']} s, steady p50 {sensor['steady']['p50_s']} s, "
                f"p95 {sensor['steady']['p95_s']} s; a full batch of {sensor['full_batch']['pending_uploads']}: "
                f"p50 {sensor['full_batch']['p50_s']} s, p95 {sensor['full_batch']['p95_s']} s (one query per job: "
                f"p50 {sensor['full_batch_one_query_per_job']['p50_s']} s)")
        deep = ids[len(ids) // 2]  # seeded oldest first: the middle of the list
        later = (len(ids) // 2 // 20) * 20
        paths = {"list first page": "/api/jobs?limit=20", "list later page": f"/api/jobs?limit=20&offset={later}",
                 "job view": f"/api/jobs/{deep}", "job timeline": f"/api/jobs/{deep}/timeline"}
        api = api_timings(d, paths, args.repeat)
        profiles = {}
        if args.profile:
            try:
                profiles = profile_routes(d, paths, args.profile)
            except Exception as exc:  # the figures above stand without the profiles
                profiles = {"error": f"{type(exc).__name__}: {exc}"}
                say(f"profiling failed: {profiles['error']}")
    sensor_ok = max(sensor["first_tick_s"], sensor["steady"]["p95_s"],
                    sensor["full_batch"]["p95_s"]) <= TARGETS["sensor_tick_s"]
    list_p95 = max(api["list first page"]["p95_ms"], api["list later page"]["p95_ms"])
    result = {
        "benchmark": "partition_scale", "partitions": len(ids), "job_records": len(ids) + PENDING_UPLOADS,
        "quick": args.quick, "repeat": args.repeat,
        "setup": {"seed_jobs_s": round(seeded_s, 2), "add_partitions_s": round(added_s, 2)},
        "sensor_tick": sensor, "api": api, "targets": TARGETS,
        "targets_met": sensor_ok and list_p95 <= TARGETS["list_ms"],
        "targets_detail": {"sensor_tick": sensor_ok, "list": list_p95 <= TARGETS["list_ms"]},
        "profiles": profiles, "wall_s": round(time.time() - started, 1),
    }
    say(f"targets met: {result['targets_met']} ({result['targets_detail']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({"sensor_tick": sensor, "api": {k: {m: v for m, v in r.items() if m.startswith("p")}
                                                     for k, r in api.items()}, "targets_met": result["targets_met"]}))


if __name__ == "__main__":
    main()
