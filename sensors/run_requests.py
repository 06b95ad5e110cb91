"""The run request sensor: runs asked for outside the upload sensor (a re-dub after a segment edit, an
admin's "reprocess now") are queued in the job store (`dub_run_requests`) and launched here, one run per
request. Exactly once, as for uploads: the cursor is the queue's seq and each request's key is its run key.

A request names the stages (assets) to materialise for the job's partition: a re-dub is dubbed_speech ->
dubbed_mix -> dubbed_video; a reprocess starts at the first stage that must be redone."""

from __future__ import annotations

import json

import dagster as dg

from dubbing_assets.jobs import REDUB_STAGES, STAGES, dub_job, stages_from
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.stage import ACCEPT_TAG, ACCEPTED_BY_TAG
from resources.jobstore import JobStore, RunRequestRecord
from sensors.upload_sensor import ensure_pools, run_tags

MAX_PER_TICK = 50
REQUEST_KEY_TAG = "dubbing/request_key"
__all__ = ["REDUB_STAGES", "stages_from", "run_request_sensor", "request_run", "REQUEST_KEY_TAG"]


def request_run(job, request: RunRequestRecord) -> dg.RunRequest:
    tags = {**run_tags(job, request.kind), REQUEST_KEY_TAG: request.key}
    if request.reason:
        tags["dubbing/reason"] = request.reason[:200]
    if request.accept:  # "publish anyway": these checks report their failures as warnings in this run
        tags[ACCEPT_TAG] = ",".join(request.accept)
        tags[ACCEPTED_BY_TAG] = request.requested_by or ""
    return dg.RunRequest(run_key=request.key, partition_key=job.id, tags=tags,
                         asset_selection=[dg.AssetKey(s) for s in request.stages])


@dg.sensor(name="run_request_sensor", job=dub_job, minimum_interval_seconds=1,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Launches the runs queued outside the upload sensor: re-dubs after a segment edit and an "
                       "admin's reprocess requests (one run per request key).")
def run_request_sensor(context: dg.SensorEvaluationContext, job_store: JobStore):
    cursor = json.loads(context.cursor) if context.cursor else {"seq": 0}
    requests = job_store.run_requests_after(cursor["seq"], limit=MAX_PER_TICK)
    if not requests:
        return dg.SensorResult(skip_reason=dg.SkipReason("no queued run requests"), cursor=json.dumps(cursor))
    cursor["seq"] = requests[-1].seq
    existing = context.instance.get_existing_dynamic_partitions(dub_jobs.name, [r.job_id for r in requests])
    runs = []
    for request in requests:
        try:
            job = job_store.get_job(request.job_id)
        except KeyError:
            context.log.warning(f"request {request.key}: no job {request.job_id}; not launched")
            continue
        if job.expired_at is not None or job.artifacts_expired_at is not None or job.id not in existing:
            context.log.warning(f"request {request.key}: job {job.id} has expired or has no partition; not launched")
            continue
        if any(s not in STAGES for s in request.stages):
            context.log.warning(f"request {request.key}: unknown stage in {request.stages}; not launched")
            continue
        if not job_store.claim_launch(job.id):  # the route claimed it when queueing; renewed for the launch
            context.log.warning(f"request {request.key}: retention is deleting job {job.id}'s files; not launched")
            continue
        runs.append(request_run(job, request))
    if runs:
        ensure_pools(context.instance)
    return dg.SensorResult(run_requests=runs, cursor=json.dumps(cursor))
