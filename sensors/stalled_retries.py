"""Retries that Dagster promised and never launched.

Dagster's run retries are launched by the daemon's event log consumer. When that launch fails (the database
restarting under it), the daemon logs the error and stores its cursor past the run all the same: the run stays
FAILURE with `dagster/will_retry: true`, no retry ever comes, and its job reads "queued" for good. Found by
gate 5 with 20 restarts on stage starts and ends (2026-12-07).

When the launch raises where the daemon can still write, it records "Failed to retry run" on the run and
sets `dagster/will_retry: false`: the same transient blip then made the failure final (the second run of that
gate: its owner was told "Dub failed" for a job that only met a database restart).

This sensor launches such a retry itself: a failed dub run whose retry is pending (`retry_pending`: Dagster said
it would retry it and GRACE_S passed, or it tried and failed) and whose job has no later run, is run again from
the stage it failed in (the reprocessing rule's classification). The run key `retry:<failed run id>` makes it
once; the new run carries `dubbing/retry_of`. The failure notification waits for that retry (sensors/notify.py).
"""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
from dagster._core.storage.tags import WILL_RETRY_TAG

from dubbing_assets.jobs import dub_job, stages_from
from dubbing_assets.reprocess import classify
from resources.jobstore import JobStore
from resources.runs import CANCEL_REQUESTED_TAG
from sensors.upload_sensor import ensure_pools, run_tags

GRACE_S = 60  # Dagster launches its retry within seconds; a minute later it is not coming
LOOK_BACK = dt.timedelta(hours=6)
RETRY_OF_TAG = "dubbing/retry_of"
FAILED_TO_RETRY = "Failed to retry run"  # the engine event of dagster/_daemon/auto_run_reexecution


def retry_pending(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """A failed run that is to be run again: Dagster said it would retry it, or tried to and its launch failed.
    Never a run its owner cancelled."""
    if CANCEL_REQUESTED_TAG in run.tags:
        return False
    if run.tags.get(WILL_RETRY_TAG) == "true":
        return True
    return _failed_to_retry(instance, run)


def _failed_to_retry(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        event = record.event_log_entry.dagster_event
        if event is not None and (event.message or "").startswith(FAILED_TO_RETRY):
            return True
    return False


@dg.sensor(name="stalled_retry_sensor", job=dub_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Launches the retry of a failed dub run that Dagster's run retries promised "
                       "(dagster/will_retry) but never launched, from the stage it failed in, once.")
def stalled_retry_sensor(context: dg.SensorEvaluationContext, job_store: JobStore):
    instance = context.instance
    now = time.time()
    failed = instance.get_run_records(
        dg.RunsFilter(job_name=dub_job.name, statuses=[dg.DagsterRunStatus.FAILURE],
                      updated_after=dt.datetime.now(dt.timezone.utc) - LOOK_BACK), limit=200)
    requests = []
    for record in failed:
        run = record.dagster_run
        if record.end_time is None or not retry_pending(instance, run):
            continue
        if run.tags.get(WILL_RETRY_TAG) == "true" and now - record.end_time < GRACE_S:
            continue  # Dagster's retry may still be on its way (after a failed launch it is not)
        job_id = run.tags.get("dagster/partition")
        if not job_id:
            continue
        latest = instance.get_run_records(dg.RunsFilter(job_name=dub_job.name, tags={"dagster/partition": job_id}),
                                          limit=1)
        if latest and latest[0].dagster_run.run_id != run.run_id:
            continue  # Dagster's retry (or another run) came after all
        try:
            job = job_store.get_job(job_id)
        except KeyError:
            continue
        stage = classify(instance, run).stage
        context.log.warning(f"run {run.run_id} of job {job_id} was to be retried and was not: retrying it from "
                            f"{stage}")
        requests.append(dg.RunRequest(
            run_key=f"retry:{run.run_id}", partition_key=job_id,
            tags={**run_tags(job, "retry"), RETRY_OF_TAG: run.run_id,
                  "dubbing/reason": "Dagster's retry of the failed run was never launched"},
            asset_selection=[dg.AssetKey(s) for s in stages_from(stage)]))
    if not requests:
        return dg.SkipReason("no failed run waiting for a retry that never came")
    ensure_pools(instance)
    return dg.SensorResult(run_requests=requests)
