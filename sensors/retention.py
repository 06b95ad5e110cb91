"""The retention sensor: jobs past their retention age lose their files and their dynamic partition; the job
record keeps a tombstone (resources/retention.py has the policy and the settings).

Per job, in this order, so that a tick that dies halfway is finished by the next one:
1. the files: work artifacts and scratch (and, at the output age, the outputs), and the uploaded input;
2. the tombstone in the job store: `artifacts_expired_at`, and at the output age `expired_at` (state "expired");
3. the job's `dub_jobs` partition, with a DeleteDynamicPartitionsRequest in the tick's result. With no
   intermediates and no input the partition cannot be run again; removing it keeps the live partition count
   bounded. The runs and their event logs stay, so the job's timeline is still readable.

Before step 1 the job is claimed in the job store (`claim_retention`) and its runs and queued requests are read
again: a re-dub, retry, publish or reprocess claims the job before it is queued or launched (`claim_launch`),
so retention never deletes the files of a run that starts between its first look and its deletion; whichever
claims first wins, the other waits (retention for the next tick, a launch answers 409).

A tick that failed after step 2 never saved its cursor: the next one finds the jobs tombstoned since the last
completed tick whose partition still exists and asks for their deletion again. A failed deletion (S3 away)
leaves the job untouched and the cursor before it.

Bounded per tick: at most MAX_JOBS_PER_TICK jobs expired and MAX_SCANNED_PER_TICK job records looked at, walked
by seq from the cursor and wrapping around, so jobs that are not due yet never starve the rest.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg

from dubbing_assets.partitions import dub_jobs
from resources import retention, s3
from resources.jobstore import JobStore
from resources.storage import MediaStorage, StorageUnavailable

MAX_JOBS_PER_TICK = 100
MAX_SCANNED_PER_TICK = 1000
BATCH = 100
MARGIN = dt.timedelta(minutes=5)  # tombstones set just before a tick's start are looked at again


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def build_retention_sensor(minimum_interval_seconds: int | None = None) -> dg.SensorDefinition:
    interval = minimum_interval_seconds or retention.interval_s()

    @dg.sensor(name="retention_sensor", minimum_interval_seconds=interval,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Deletes the intermediate artifacts, uploaded inputs and (later) outputs of jobs past "
                           "DUBBING_RETENTION_DAYS / DUBBING_OUTPUT_RETENTION_DAYS (0, the default: keep "
                           "forever), tombstones them and removes their dub_jobs partitions. Pinned jobs are kept.")
    def retention_sensor(context: dg.SensorEvaluationContext, job_store: JobStore, storage: MediaStorage):
        policy = retention.RetentionPolicy.from_env()
        cursor = json.loads(context.cursor) if context.cursor else {}
        started = _now()
        since = (dt.datetime.fromisoformat(cursor["checked"]) if cursor.get("checked")
                 else dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))
        instance = context.instance

        # the partitions of jobs tombstoned since the last completed tick (a tick that failed after its
        # tombstones did not get its partitions removed)
        to_delete = [j.id for j in retention.tombstoned_since(job_store, since, MAX_SCANNED_PER_TICK)]

        seq, scanned, expired, failed = int(cursor.get("seq", 0)), 0, {}, 0
        while policy.enabled and scanned < MAX_SCANNED_PER_TICK and len(expired) < MAX_JOBS_PER_TICK:
            now = _now()
            batch = retention.candidates(job_store, policy, now, seq, BATCH)
            scanned += len(batch)
            records = retention.run_records(instance, [j.id for j in batch])
            requested = retention.latest_requests(job_store, [j.id for j in batch])
            stop = False
            for job in batch:
                if len(expired) >= MAX_JOBS_PER_TICK:
                    stop = True
                    break
                action = retention.decide(job, retention.activity(job, records[job.id]), policy, now,
                                          requested.get(job.id))
                if action is not None and not job_store.claim_retention(job.id):
                    # a re-dub, retry, publish or reprocess is being launched for it right now
                    context.log.info(f"retention of job {job.id} put off: a run of it is being launched")
                    action = None
                if action is not None:
                    try:
                        # claimed: no run can be launched for it now; read everything again, since a run may have
                        # started (or the job been pinned) between the first look and the claim
                        job = job_store.get_job(job.id)
                        action = retention.decide(
                            job, retention.activity(job, retention.run_records(instance, [job.id])[job.id]), policy,
                            now, retention.latest_requests(job_store, [job.id]).get(job.id))
                        if action is not None:
                            retention.apply(job, action, job_store, storage)
                    except Exception as exc:
                        if isinstance(exc, StorageUnavailable) or s3.is_transient(exc):
                            # no use trying the others now; this job comes first on the next tick
                            context.log.warning(f"retention of job {job.id} stopped, storage unavailable: {exc}")
                            failed += 1
                            stop = True
                            break
                        # this job is tried again on the next walk past it
                        context.log.warning(f"retention of job {job.id} failed: {type(exc).__name__}: {exc}")
                        failed += 1
                        seq = job.seq
                        continue
                    finally:
                        job_store.release_retention(job.id)
                if action is not None:
                    expired[job.id] = action
                    to_delete.append(job.id)
                seq = job.seq
            if stop:
                break
            if len(batch) < BATCH:  # walked to the end: start from the first job next time
                seq = 0
                break

        to_delete = list(dict.fromkeys(to_delete))
        existing = instance.get_existing_dynamic_partitions(dub_jobs.name, to_delete) if to_delete else set()
        delete_keys = [k for k in to_delete if k in existing]
        cursor = {"seq": seq, "checked": (started - MARGIN).isoformat()}
        if expired or delete_keys:
            whole = sum(1 for a in expired.values() if a == retention.EVERYTHING)
            context.log.info(f"retention ({policy.describe()}): {len(expired)} job(s) past their age, {whole} of "
                             f"them expired whole; {len(delete_keys)} partition(s) removed"
                             + (f"; {failed} failed, tried again later" if failed else ""))
            return dg.SensorResult(dynamic_partitions_requests=[dub_jobs.build_delete_request(delete_keys)]
                                   if delete_keys else [], cursor=json.dumps(cursor))
        reason = ("retention is off (DUBBING_RETENTION_DAYS=0: keep forever)" if not policy.enabled
                  else f"no job past its retention age ({policy.describe()})")
        if failed:
            reason += f"; {failed} job(s) failed, tried again later"
        return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=json.dumps(cursor))

    return retention_sensor


retention_sensor = build_retention_sensor()
