"""The upload sensor: each completed upload's job gets its dynamic partition and exactly one run.

Exactly once: the cursor is the job store's monotonic `seq` of the last job handed to Dagster, and
each RunRequest's run_key is the job id, so a second tick, a daemon restart or a replayed cursor
never launches a job twice (Dagster skips run keys it has already launched for this sensor)."""

from __future__ import annotations

import json
import os
import time

import dagster as dg

from dubbing_assets.jobs import dub_job
from dubbing_assets.partitions import dub_jobs
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage

MAX_JOBS_PER_TICK = 50
SWEEP_EVERY_S = 300  # abandoned uploads are expired by this sensor's loop
POOLS = ("asr", "tts")  # the stages' Dagster pools (transcript, dubbed_speech)
_pools_ready: set[str] = set()


def ensure_pools(instance: dg.DagsterInstance) -> None:
    """Give every pool its row (at the instance's default limit) before the first run needs it. Left to
    the runs, the first two steps of one pool starting at the same moment both insert the row and one
    run fails (UniqueViolation on concurrency_limits, seen in the gates and the Celery test). A pool
    that already has a row (e.g. raised with `dagster instance concurrency set tts 4`) is left alone."""
    if _pools_ready >= set(POOLS):
        return
    storage = instance.event_log_storage
    existing = storage.get_concurrency_keys()
    for pool in POOLS:
        if pool not in existing:
            storage.initialize_concurrency_limit_to_default(pool)
        _pools_ready.add(pool)


def run_tags(job: JobRecord, origin: str) -> dict[str, str]:
    """The tags of every run of a job, whoever launches it; `origin` says why the run exists (upload, redub,
    reprocess; retries get "retry"), and the timeline names the run after it."""
    tags = {
        "dubbing/job_id": job.id,
        "dubbing/user_id": job.owner or "",
        "dubbing/upload_id": job.upload_id or "",
        "dubbing/source_lang": job.source_lang,
        "dubbing/target_lang": job.target_lang,
        "dubbing/origin": origin,
    }
    queue = os.environ.get("DUBBING_RUN_QUEUE", "").strip()
    if queue:  # the Celery profile: runs go to this Celery queue, e.g. "gpu" (deploy/celery/README.md)
        tags["dagster-celery/queue"] = queue
    return tags


def run_request(job: JobRecord) -> dg.RunRequest:
    return dg.RunRequest(run_key=job.id, partition_key=job.id, tags=run_tags(job, "upload"))


def build_upload_sensor(minimum_interval_seconds: int | None = None) -> dg.SensorDefinition:
    # The daemon evaluates sensors in a loop of at least 5 s. A minimum interval equal to that loop made
    # every other loop skip the tick by a hair (ticks 5 or 10 s apart); below it, every loop ticks.
    interval = minimum_interval_seconds or int(os.environ.get("UPLOAD_SENSOR_INTERVAL_S", "1"))

    @dg.sensor(name="upload_sensor", job=dub_job, minimum_interval_seconds=interval,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Adds the partition and launches one dub_job run per completed upload.")
    def upload_sensor(context: dg.SensorEvaluationContext, job_store: JobStore, storage: MediaStorage):
        cursor = json.loads(context.cursor) if context.cursor else {"seq": 0, "swept": 0}
        if time.time() - cursor.get("swept", 0) > SWEEP_EVERY_S:
            from resources.uploads import UploadStore

            expired = UploadStore(job_store, storage.root_path() / "uploads").expire_abandoned()
            if expired:
                context.log.info(f"expired {expired} abandoned upload(s)")
            cursor["swept"] = time.time()
        jobs = job_store.jobs_after(cursor["seq"], limit=MAX_JOBS_PER_TICK)
        if not jobs:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new completed uploads"),
                                   cursor=json.dumps(cursor))
        cursor["seq"] = jobs[-1].seq
        jobs = [j for j in jobs if j.cancel_requested_at is None]  # cancelled before launch
        # one membership query for the whole batch (not one round trip per job: with Postgres each is a
        # new connection, about 90 ms under load, so 50 jobs took seconds; bench/partition_scale.py)
        existing = context.instance.get_existing_dynamic_partitions(dub_jobs.name, [j.id for j in jobs])
        if jobs:
            ensure_pools(context.instance)
        new_keys = [j.id for j in jobs if j.id not in existing]
        return dg.SensorResult(
            run_requests=[run_request(j) for j in jobs],
            dynamic_partitions_requests=[dub_jobs.build_add_request(new_keys)] if new_keys else [],
            cursor=json.dumps(cursor),
        )

    return upload_sensor


upload_sensor = build_upload_sensor()
