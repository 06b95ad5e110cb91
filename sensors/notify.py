"""Notifications of finished, failed and cancelled dub jobs.

Run-status sensors (they run in the daemon, so they fire even when a run worker crashed) write each
notification once into the outbox, keyed by (run id, event), and try to deliver it at once; the
`notify_outbox` sensor delivers what is still pending (ntfy down, 5xx, 429) with jittered backoff."""

from __future__ import annotations

import json
import os

import dagster as dg

from dubbing_assets import checks
from dubbing_assets.jobs import STAGE_LABELS, dub_job
from resources.accounts import Accounts
from resources.jobstore import JobStore
from resources.notify import HELD, PENDING, SKIPPED, NotifyStore, NtfyResource, OutboxEntry, deliver_due
from resources.runs import CANCEL_REQUESTED_TAG, ORIGIN_TAG, standing_runs
from resources.storage import MediaStorage
from sensors.stalled_retries import retry_pending

SENSOR_INTERVAL_S = int(os.environ.get("NOTIFY_SENSOR_INTERVAL_S", "5"))
OUTBOX_INTERVAL_S = int(os.environ.get("NTFY_OUTBOX_INTERVAL_S", "10"))


def _failure_detail(instance: dg.DagsterInstance, run_id: str, held: OutboxEntry | None) -> dict:
    """The failing stage and its message: from the failure hook (`held`), else from the event log
    (a run whose worker died has no hook call)."""
    if held and held.detail.get("stage"):
        return held.detail
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        error = event.step_failure_data.error if event and event.step_failure_data else None
        return {"stage": event.step_key if event else None,
                "message": (error.message.strip().splitlines() or [""])[0][:1000] if error else ""}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records:
        return {"stage": None, "message": (record.event_log_entry.message or "")[:1000]}
    return {}


def notify_run(instance: dg.DagsterInstance, run: dg.DagsterRun, event: str, ntfy: NtfyResource,
               job_store: JobStore, storage: MediaStorage) -> str:
    """Write the notification for a run that ended (`event`: success | failure | cancel) into the
    outbox, once. Returns what was decided, for the sensor's log."""
    store = NotifyStore(job_store)
    existing = store.get(run.run_id, event)
    if existing is not None and existing.status != HELD:
        return f"already {existing.status}"
    job_id = run.tags.get("dagster/partition")

    def skip(reason: str) -> str:
        store.enqueue(run.run_id, event, job_id=job_id, user_id=None, topic=None, payload=None,
                      status=SKIPPED, reason=reason)
        return f"skipped: {reason}"

    if not job_id:
        return skip("the run has no job partition")
    if event == "failure":
        fresh = instance.get_run_by_id(run.run_id) or run
        if fresh.tags.get(CANCEL_REQUESTED_TAG):  # made CANCELED by cancelled_run_failed: notified as a cancel
            return skip("its owner had cancelled it; the cancel notification is sent")
        if retry_pending(instance, fresh):  # Dagster's retry, or stalled_retry_sensor's when Dagster's launch failed
            return skip("the run will be retried; its retry sends the notification")
        if fresh.tags.get(ORIGIN_TAG) == "reprocess":
            standing = standing_runs(instance.get_runs(  # newest first
                dg.RunsFilter(job_name=run.job_name, tags={"dagster/partition": job_id})))
            if standing and standing[0].run_id != run.run_id:
                return skip("a reprocess failed over a finished dub: the job keeps its outputs (see its runs)")
    try:
        job = job_store.get_job(job_id)
    except KeyError:
        return skip("no job record")
    if not job.owner:
        return skip("the job has no owner")
    owner = Accounts(job_store).get_user(job.owner)
    if owner is None:
        return skip("the job's owner no longer exists")
    settings = store.get_settings(job.owner)
    if not settings.wants(event):
        return skip("turned off in the owner's settings")
    if not ntfy.configured:
        return skip("ntfy is not configured (NTFY_URL is not set)")

    record = instance.get_run_record_by_id(run.run_id)
    run_seconds = None
    if record and record.start_time and record.end_time:
        run_seconds = record.end_time - record.start_time
    media_seconds = None
    try:
        media_seconds = float(storage.read_json(job.id, "source.json").get("duration_s"))
    except (FileNotFoundError, ValueError, TypeError, OSError):
        pass
    detail = _failure_detail(instance, run.run_id, existing) if event == "failure" else {}
    kind = event
    if event == "failure":
        stopped = checks.blocking_failures(checks.evaluations(instance, run.run_id))
        if stopped:  # not a failure: a quality check stopped the publish, and the owner has a decision to make
            kind = "review"
            detail = {"stage": stopped[0]["asset"],
                      "message": "; ".join(f"{f['name']}: {f['description']}" for f in stopped)}
    download = None
    if event == "success":
        download = next((p.name for p in storage.outputs(job.id) if p.suffix in (".mkv", ".mp4")), None)
    topic = ntfy.topic_for(owner.name, settings)
    payload = ntfy.job_message(
        kind, topic=topic, priority=settings.priority, job_id=job.id, filename=job.filename,
        source_lang=job.source_lang, target_lang=job.target_lang, media_seconds=media_seconds,
        run_seconds=run_seconds, stage_label=STAGE_LABELS.get(detail.get("stage") or "", detail.get("stage")),
        error=detail.get("message"), download=download, what=RUN_NAMES.get(run.tags.get("dubbing/origin", ""), "Dub"))
    wrote = store.enqueue(run.run_id, event, job_id=job.id, user_id=job.owner, topic=topic, payload=payload,
                          status=PENDING)
    return f"queued for {topic}" if wrote else "already queued"


RUN_NAMES = {"redub": "Re-dub", "reprocess": "Reprocessed dub", "publish": "Reviewed dub"}  # by dubbing/origin


def _notify_sensor(event: str, status: dg.DagsterRunStatus) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        run_status=status, monitored_jobs=[dub_job], name=f"notify_on_{event}",
        default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=SENSOR_INTERVAL_S,
        description=f"Push notification (ntfy) to the job's owner when a dub job's run ends in {status.value}.")
    def _sensor(context: dg.RunStatusSensorContext, ntfy: NtfyResource, job_store: JobStore,
                storage: MediaStorage):
        decided = notify_run(context.instance, context.dagster_run, event, ntfy, job_store, storage)
        context.log.info(f"run {context.dagster_run.run_id} ({event}): {decided}")
        for entry, delivery in deliver_due(ntfy, NotifyStore(job_store)):
            context.log.info(f"ntfy {entry.event} of run {entry.run_id}: {delivery.outcome} ({delivery.reason})")

    return _sensor


notify_on_success = _notify_sensor("success", dg.DagsterRunStatus.SUCCESS)
notify_on_failure = _notify_sensor("failure", dg.DagsterRunStatus.FAILURE)
notify_on_cancel = _notify_sensor("cancel", dg.DagsterRunStatus.CANCELED)


@dg.sensor(name="notify_outbox", minimum_interval_seconds=OUTBOX_INTERVAL_S,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Delivers notifications still pending in the outbox (ntfy was down, busy or "
                       "rate-limiting), with jittered exponential backoff.")
def notify_outbox(context: dg.SensorEvaluationContext, ntfy: NtfyResource, job_store: JobStore):
    store = NotifyStore(job_store)
    done = deliver_due(ntfy, store, limit=50)
    store.purge(older_than_days=30)
    sent = sum(1 for _, d in done if d.ok)
    return dg.SkipReason(f"{len(done)} attempt(s), {sent} delivered")


RUN_ENDS = {dg.DagsterEventType.RUN_SUCCESS: "success", dg.DagsterEventType.RUN_FAILURE: "failure",
            dg.DagsterEventType.RUN_CANCELED: "cancel"}


@dg.sensor(name="notify_catch_up", minimum_interval_seconds=OUTBOX_INTERVAL_S,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Writes the notification of any dub run that ended without one: when a run status "
                       "sensor's evaluation for a run fails (the database restarting under it), Dagster logs it "
                       "and moves past that run for good. This walks run ends with its own cursor, saved only "
                       "when the tick succeeded; notify_run writes each (run, event) once.")
def notify_catch_up(context: dg.SensorEvaluationContext, ntfy: NtfyResource, job_store: JobStore,
                    storage: MediaStorage):
    instance = context.instance
    if not context.cursor:  # a new deployment, or this sensor is new: from now on (older runs were handled)
        start = {}
        for event_type in RUN_ENDS:
            newest = instance.fetch_run_status_changes(event_type, limit=1).records
            start[event_type.value] = newest[0].storage_id if newest else 0
        return dg.SensorResult(skip_reason=dg.SkipReason("started: run ends from now on"), cursor=json.dumps(start))
    cursor = json.loads(context.cursor)
    caught = []
    for event_type, event in RUN_ENDS.items():
        records = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=cursor.get(event_type.value, 0),
                                            job_names=[dub_job.name]), limit=100, ascending=True).records
        for record in records:
            run = instance.get_run_by_id(record.run_id)
            if run is not None and notify_run(instance, run, event, ntfy, job_store, storage).startswith("queued"):
                caught.append(f"{event} of run {run.run_id}")
            cursor[event_type.value] = record.storage_id
    if caught:
        context.log.warning(f"notifications the run status sensors had missed: {', '.join(caught)}")
    return dg.SensorResult(skip_reason=None if caught else dg.SkipReason("no run end without its notification"),
                           cursor=json.dumps(cursor))


NOTIFY_SENSORS = [notify_on_success, notify_on_failure, notify_on_cancel, notify_outbox, notify_catch_up]
