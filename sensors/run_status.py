"""Run-status sensors of dub_job (they run in the daemon, so they fire even when a run worker died)."""

from __future__ import annotations

import dagster as dg

from dubbing_assets.jobs import dub_job
from resources.runs import CANCEL_REQUESTED_TAG, end_cancelled
from resources.storage import MediaStorage


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.CANCELED, monitored_jobs=[dub_job],
                      default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=5,
                      name="cancelled_run_cleanup",
                      description="A cancelled job's temp files and any outputs are removed: nothing "
                                  "partial is ever offered as finished.")
def cancelled_run_cleanup(context: dg.RunStatusSensorContext, storage: MediaStorage):
    run = context.dagster_run
    job_id = run.tags.get("dagster/partition")
    if not job_id:
        return
    if run.tags.get("dubbing/origin") in ("redub", "reprocess", "publish"):
        # a partial run over a finished job: the earlier stages' artifacts are the job's (a re-dub keeps the
        # edited transcript and translation); only the scratch of the cancelled stage goes
        storage.clear_scratch(job_id)
        context.log.info(f"cancelled {run.tags.get('dubbing/origin')} run of job {job_id}: artifacts kept")
        return
    storage.clear_job(job_id)
    context.log.info(f"removed temp files and outputs of cancelled job {job_id}")


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.FAILURE, monitored_jobs=[dub_job],
                      default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=5,
                      name="cancelled_run_failed",
                      description="A run its owner cancelled that then ended FAILURE (its run worker died or was "
                                  "already gone, so nothing could stop it cleanly) is a cancelled run: made "
                                  "CANCELED, never retried; the cancel cleanup and notification follow.")
def cancelled_run_failed(context: dg.RunStatusSensorContext):
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    if CANCEL_REQUESTED_TAG not in run.tags or run.status != dg.DagsterRunStatus.FAILURE:
        return
    end_cancelled(context.instance, run, "Cancelled by its owner; its run worker ended before it could stop (the "
                                         "run had failed): not retried.")
    context.log.info(f"run {run.run_id} failed after its cancel: marked cancelled")
