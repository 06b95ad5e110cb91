"""Jobs as the API shows them: the job record (inputs) plus what Dagster says (runs, state, stage
timeline, log). Cancel and retry go through Dagster too."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re

import dagster as dg
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.storage.tags import MAX_RETRIES_TAG
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from dubbing_assets.jobs import STAGES, stages_from
from resources import logs, s3, settings
from resources.accounts import User
from resources.jobstore import JobRecord
from resources.runs import CANCEL_REQUESTED_TAG, end_cancelled
from resources.storage import MediaStorage, Output, StorageUnavailable
from upload_api import dagster_view as dv
from upload_api.deps import bind, current_user, dagster_instance, job_store, storage

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
log = logs.logging.getLogger("dubbing.api.jobs")
STATES = ("submitted", "queued", "running", "done", "failed", "needs_review", "cancelling", "cancelled", "expired")


def owned_job(job_id: str, user: User) -> JobRecord:
    if not re.fullmatch(r"j[0-9a-f]{32}", job_id or ""):
        raise HTTPException(404, "job not found")
    try:
        job = job_store().get_job(job_id)
    except KeyError:
        raise HTTPException(404, "job not found") from None
    if job.owner != user.id and not user.is_admin:
        raise HTTPException(404, "job not found")
    return job


def _day(when) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def require_artifacts(job: JobRecord) -> None:
    """410 Gone once the retention policy removed the job's working files and input (segments, re-dub, retry
    need them)."""
    if job.expired_at is not None or job.artifacts_expired_at is not None:
        when = job.artifacts_expired_at or job.expired_at
        raise HTTPException(410, f"this job's working files and uploaded input were deleted on {_day(when)} by the "
                                 f"retention policy (DUBBING_RETENTION_DAYS); it can no longer be edited, re-dubbed "
                                 f"or retried. Pin a job to keep it.")


def claim_launch(job_id: str) -> None:
    """Claim the job for a run about to be queued or launched (re-dub, retry, publish): retention then keeps off
    its files until the run shows in Dagster. 410 when retention removed them since the request began, 409
    while it is removing them."""
    store = job_store()
    if store.claim_launch(job_id):
        return
    require_artifacts(store.get_job(job_id))
    raise HTTPException(409, "the retention policy is deleting this job's working files right now; it can no longer "
                             "be edited, re-dubbed, retried or published")


def require_outputs(job: JobRecord) -> None:
    """410 Gone once the retention policy removed the job's outputs (the job is expired)."""
    if job.expired_at is not None:
        raise HTTPException(410, f"this job's outputs were deleted on {_day(job.expired_at)} by the retention "
                                 f"policy (DUBBING_OUTPUT_RETENTION_DAYS); the job is expired. Pin a job to keep "
                                 f"its outputs.")


async def get_owned(request: Request, job_id: str, user: User) -> JobRecord:
    job = await run_in_threadpool(owned_job, job_id, user)
    bind(request, job_id=job.id, upload_id=job.upload_id)
    return job


def published(job_id: str) -> list[Output]:
    return storage_call(storage().outputs, job_id)


def outputs_of(job_id: str) -> list[str]:
    return [o.name for o in published(job_id)]


def storage_call(fn, *args):
    """A call to the file storage with its failures as answers, never a 500: S3 unreachable → 503 with
    Retry-After; S3 settings missing → 503 naming the variable; S3 refusing (no credentials, access denied)
    → 502 naming the error class or code. No message carries a secret."""
    try:
        return fn(*args)
    except StorageUnavailable as exc:
        logs.log(log, "storage unavailable", level=logging.WARNING, error=str(exc))
        raise HTTPException(503, "the file storage is unavailable right now; retry in a few seconds",
                            headers={"Retry-After": "5", "Cache-Control": "no-store"}) from None
    except s3.StorageConfigError as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "30", "Cache-Control": "no-store"}) from None
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError

        if not isinstance(exc, (BotoCoreError, ClientError)):
            raise
        what = s3.error_code(exc)
        logs.log(log, "storage failed", level=logging.WARNING, error=what or type(exc).__name__)
        raise HTTPException(502, f"the file storage failed ({what or type(exc).__name__})") from None


def runs_and_state(job: JobRecord) -> tuple[object, list, str]:
    """(the Dagster instance, the job's runs newest first, its state), as the actions read them."""
    instance = dagster_instance()
    runs = dv.runs_by_job(instance, [job.id])[job.id]
    return instance, runs, dv.job_state(job, runs, instance)


def job_view(job: JobRecord, runs: list | None = None, detail: bool = True) -> dict:
    instance = dagster_instance()
    runs = dv.runs_by_job(instance, [job.id])[job.id] if runs is None else runs
    latest = runs[0] if runs else None
    state = dv.job_state(job, runs, instance)
    view = {
        "job_id": job.id,
        "filename": job.filename,
        "source_lang": job.source_lang,
        "target_lang": job.target_lang,
        "created_at": job.created_at.isoformat(),
        "owner": job.owner,
        "state": state,
        "current_stage": dv.current_stage(instance, latest),
        "run_id": latest.run_id if latest else None,
        "last_log_line": dv.last_line(instance, latest),
        "outputs": outputs_of(job.id) if state == "done" else [],
    }
    if state == dv.NEEDS_REVIEW:  # what stopped it, for the list's mark and the job page
        view["review"] = [{"check": f["name"], "stage": f["asset"], "description": f["description"]}
                          for f in dv.blocking_failures(instance, latest)]
    if detail:
        view.update({"voice": job.voice, "options": job.options.to_dict(), "upload_id": job.upload_id,
                     "runs": [{"run_id": r.run_id, "status": r.status.value} for r in runs]})
        view.update({"pinned": job.pinned, **{k: (getattr(job, k).isoformat() if getattr(job, k) else None)
                                              for k in ("artifacts_expired_at", "expired_at")}})
    return view


@router.get("")
async def list_jobs(user: User = Depends(current_user), state: str | None = Query(None),
                    owner: str | None = Query(None, max_length=32), limit: int = Query(20, ge=1, le=100),
                    offset: int = Query(0, ge=0, le=1_000_000_000)):
    """My jobs (admins: everyone's, or one user's with `owner`), newest first; filter by state."""
    if state is not None and state not in STATES:
        raise HTTPException(422, f"state must be one of {', '.join(STATES)}")
    who = (owner if user.is_admin else user.id) if owner or not user.is_admin else None

    def page():
        instance = dagster_instance()
        if state is None:  # one page of records and their runs: two queries whatever the offset
            batch = job_store().list_jobs(owner=who, limit=limit, offset=offset)
            runs = dv.runs_by_job(instance, [j.id for j in batch])
            return [job_view(job, runs[job.id], detail=False) for job in batch]
        # the state lives in Dagster: read records in batches and keep the jobs in that state
        out, skip, batch_offset = [], offset, 0
        while len(out) < limit:
            batch = job_store().list_jobs(owner=who, limit=100, offset=batch_offset)
            if not batch:
                break
            batch_offset += len(batch)
            runs = dv.runs_by_job(instance, [j.id for j in batch])
            for job in batch:
                if state is not None and dv.job_state(job, runs[job.id], instance) != state:
                    continue
                if skip:
                    skip -= 1
                    continue
                out.append(job_view(job, runs[job.id], detail=False))
                if len(out) == limit:
                    break
        return out

    items = await run_in_threadpool(page)
    return {"jobs": items, "limit": limit, "offset": offset}


@router.get("/{job_id}")
async def get_job(job_id: str, request: Request, user: User = Depends(current_user)):
    def read():  # one trip to the thread pool: this is the route phones poll
        job = owned_job(job_id, user)
        return job, job_view(job)

    job, view = await run_in_threadpool(read)
    bind(request, job_id=job.id, upload_id=job.upload_id)
    return view


@router.get("/{job_id}/timeline")
async def timeline(job_id: str, request: Request, user: User = Depends(current_user)):
    job = await get_owned(request, job_id, user)

    def build():
        instance = dagster_instance()
        return dv.timeline(instance, job, dv.runs_by_job(instance, [job.id])[job.id])

    return await run_in_threadpool(build)


@router.get("/{job_id}/logs/tail")
async def logs_tail(job_id: str, request: Request, n: int = Query(50, ge=1, le=1000),
                    user: User = Depends(current_user)):
    job = await get_owned(request, job_id, user)

    def read():
        instance = dagster_instance()
        runs = dv.runs_by_job(instance, [job.id])[job.id]
        return {"run_id": runs[0].run_id if runs else None,
                "lines": dv.tail(instance, runs[0].run_id, n) if runs else []}

    return await run_in_threadpool(read)


@router.get("/{job_id}/logs/stream")
async def logs_stream(job_id: str, request: Request, user: User = Depends(current_user)):
    """Server-Sent Events: one `log` event per line of the latest run (id = event storage id,
    resumable with Last-Event-ID), an `end` event when the run has finished, then the stream closes."""
    job = await get_owned(request, job_id, user)
    last = request.headers.get("last-event-id", "")
    after = int(last) if last.isdigit() else None

    async def events():
        nonlocal after
        instance = dagster_instance()
        idle = 0
        while True:
            runs = await run_in_threadpool(lambda: dv.runs_by_job(instance, [job.id])[job.id])
            if runs:
                run_id = runs[0].run_id
                cursor = None if after is None else _cursor_after(after)
                conn = await run_in_threadpool(dv.records, instance, run_id, None, cursor, 200)
                for rec in conn.records:
                    line = dv.log_line(rec)
                    after = rec.storage_id
                    yield f"id: {rec.storage_id}\nevent: log\ndata: {json.dumps(line)}\n\n"
                state = dv.job_state(job, runs, instance)
                if state in dv.FINISHED and not conn.has_more:
                    yield f"event: end\ndata: {json.dumps({'state': state, 'run_id': run_id})}\n\n"
                    return
                if conn.has_more:
                    continue
            elif job.cancel_requested_at:
                yield f"event: end\ndata: {json.dumps({'state': 'cancelled', 'run_id': None})}\n\n"
                return
            if await request.is_disconnected():
                return
            idle += 1
            if idle % 15 == 0:
                yield ": keep-alive\n\n"
            await asyncio.sleep(1.0)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _cursor_after(storage_id: int) -> str:
    from dagster._core.storage.event_log.base import EventLogCursor

    return EventLogCursor.from_storage_id(storage_id).to_string()


def cancel_run(instance, run) -> None:
    """Cancel a job's run so that the cancel holds whatever its worker does. The run is first tagged as cancelled
    by its owner, with no run retries left: should it end FAILURE (its worker died, or was gone already), the
    cancelled_run_failed sensor makes it CANCELED and Dagster never retries it. A run that had already failed
    and was waiting for its retry is cancelled here. When the code server cannot be reached, the run stays
    CANCELING and run monitoring ends it CANCELED after cancel_timeout_seconds."""
    instance.add_run_tags(run.run_id, {CANCEL_REQUESTED_TAG: dt.datetime.now(dt.timezone.utc).isoformat(),
                                       MAX_RETRIES_TAG: "0"})
    try:
        instance.run_coordinator.cancel_run(run.run_id)
    except DagsterUserCodeUnreachableError as exc:  # the run is CANCELING already; run monitoring ends it
        logs.log(log, "cancel_code_server_unreachable", logging.WARNING, run_id=run.run_id, error=str(exc)[:300],
                 then="the run stays cancelling; run monitoring ends it cancelled")
    fresh = instance.get_run_by_id(run.run_id)
    if fresh is not None and fresh.status == dg.DagsterRunStatus.FAILURE:  # failed before the cancel, retry pending
        end_cancelled(instance, fresh, "Cancelled by its owner after its run worker had ended; not retried.")


@router.post("/{job_id}/cancel", status_code=202)
async def cancel(job_id: str, request: Request, user: User = Depends(current_user)):
    job = await get_owned(request, job_id, user)

    def do_cancel():
        instance, runs, state = runs_and_state(job)
        if state in dv.FINISHED:
            raise HTTPException(409, f"the job has already finished ({state}); nothing to cancel")
        if state == "cancelling":
            return {"job_id": job.id, "state": "cancelling"}
        job_store().request_cancel(job.id)  # keeps the sensor from launching it if it has no run yet
        if not runs:  # the sensor may be launching it right now: give it a moment, then cancel that run
            import time

            for _ in range(6):
                time.sleep(0.5)
                runs = dv.runs_by_job(instance, [job.id])[job.id]
                if runs:
                    break
            if not runs:
                return {"job_id": job.id, "state": "cancelled"}
        cancelled = {runs[0].run_id}
        cancel_run(instance, runs[0])
        for _ in range(2):  # a retry that Dagster launched for a run failing just as it was cancelled: that too
            newer = dv.runs_by_job(instance, [job.id])[job.id]
            if not newer or newer[0].run_id in cancelled or newer[0].is_finished:
                break
            cancelled.add(newer[0].run_id)
            cancel_run(instance, newer[0])
        return {"job_id": job.id, "state": dv.job_state(job, dv.runs_by_job(instance, [job.id])[job.id], instance)}

    result = await run_in_threadpool(do_cancel)
    logs.audit("job_cancel_requested", state=result["state"])
    return result


@router.post("/{job_id}/retry", status_code=202)
async def retry(job_id: str, request: Request, user: User = Depends(current_user)):
    """Re-run a failed job from its failed stage (Dagster re-execution FROM_FAILURE), or a cancelled
    one from the start."""
    job = await get_owned(request, job_id, user)
    require_artifacts(job)
    from upload_api import workspace

    def do_retry():
        instance, runs, state = runs_and_state(job)
        if not runs or state not in ("failed", "cancelled"):
            raise HTTPException(409, f"only failed or cancelled jobs can be retried; this one is {state}")
        claim_launch(job.id)
        return workspace.reexecute(instance, runs[0])

    run_id = await run_in_threadpool(do_retry)
    logs.audit("job_retry", run_id=run_id)
    return {"job_id": job.id, "run_id": run_id}


class PinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pinned: StrictBool


@router.put("/{job_id}/pin")
async def pin(job_id: str, body: PinIn, request: Request, user: User = Depends(current_user)):
    """Pin a job (the owner or an admin): a pinned job is never expired by the retention policy. Unpin with
    `{"pinned": false}`. An expired job has nothing left to keep: pinning it is 410."""
    job = await get_owned(request, job_id, user)
    if body.pinned:
        require_outputs(job)
    await run_in_threadpool(job_store().set_pinned, job.id, body.pinned)
    logs.audit("job_pinned" if body.pinned else "job_unpinned", pinned=body.pinned, was_pinned=job.pinned)
    return {"job_id": job.id, "pinned": body.pinned}


@router.get("/{job_id}/quality")
async def quality(job_id: str, request: Request, user: User = Depends(current_user)):
    """The job's quality evidence (the owner or an admin): the latest evaluation of every quality check, read
    from Dagster's asset check evaluations across the job's runs, each with its figures, and a summary.
    `status` is passed, failed (a blocking check: the job needs review), warning, accepted (published anyway)
    or skipped (e.g. round_trip without a recogniser for the target language)."""
    job = await get_owned(request, job_id, user)

    def read():
        instance, runs, state = runs_and_state(job)
        return {"job_id": job.id, "state": state, **dv.quality(instance, runs)}

    return await run_in_threadpool(read)


@router.post("/{job_id}/publish", status_code=202)
async def publish(job_id: str, request: Request, user: User = Depends(current_user)):
    """Publish a job that needs review anyway (the owner or an admin; audited): the checks that stopped it are
    accepted, and its stages run again from the stopped one with those checks reporting as warnings, so the
    outputs are published. Asking again for the same review queues nothing new. 409 unless the job needs
    review; to fix lines instead, edit the segments and re-dub."""
    job = await get_owned(request, job_id, user)
    require_artifacts(job)

    def queue():
        instance, runs, state = runs_and_state(job)
        if state != dv.NEEDS_REVIEW:
            raise HTTPException(409, f"only a job that needs review can be published anyway; this one is {state}")
        failures = dv.blocking_failures(instance, runs[0])
        accept = sorted({f["name"] for f in failures})
        first = min((f["asset"] for f in failures), key=STAGES.index)
        key = f"publish:{job.id}:{runs[0].run_id}"
        claim_launch(job.id)
        request_, queued = job_store().add_run_request(
            job.id, kind="publish", stages=stages_from(first), key=key, requested_by=user.id, accept=accept,
            reason=f"published after review by {user.name}: {', '.join(accept)} accepted")
        return {"job_id": job.id, "request_key": request_.key, "accepted": accept, "stages": request_.stages,
                "queued": queued}

    result = await run_in_threadpool(queue)
    logs.audit("job_publish_requested", request_key=result["request_key"], accepted=result["accepted"],
               queued=result["queued"])
    return result


PRESIGNED = (".mkv", ".mp4")  # subtitles stay on this origin: a <track> must be same-origin
MEDIA_TYPES = {".mkv": "video/x-matroska", ".mp4": "video/mp4", ".srt": "application/x-subrip", ".vtt": "text/vtt"}


@router.get("/{job_id}/outputs/{name}")
async def download(job_id: str, name: str, request: Request, user: User = Depends(current_user)):
    """A finished output (MKV/MP4/SRT/VTT), with HTTP range requests for seeking. Local storage: the file;
    S3: streamed from the bucket with the same range semantics, or (DUBBING_S3_PRESIGN_DOWNLOADS=true) a 307
    redirect to a presigned URL — always after the ownership check."""
    job = await get_owned(request, job_id, user)
    require_outputs(job)
    # Only the state and the outputs listing: players send many range requests while seeking.
    state = await run_in_threadpool(lambda: dv.job_state(job, dv.runs_by_job(dagster_instance(), [job.id])[job.id],
                                                         dagster_instance()))
    if state != "done":
        raise HTTPException(409, f"the job is {state}: outputs are offered when it is done")
    output = next((o for o in await run_in_threadpool(published, job.id) if o.name == name), None)
    if output is None:
        raise HTTPException(404, "no such output")
    media_type = MEDIA_TYPES.get(output.suffix, "application/octet-stream")
    st = storage()
    if not st.is_s3:
        return FileResponse(st.outputs_dir(job.id) / name, media_type=media_type, filename=name)
    if output.suffix in PRESIGNED and presign_downloads():
        expires = int(settings.number("DUBBING_S3_PRESIGN_EXPIRES_S", 3600)) or 3600
        url = storage_call(st.presign, job.id, name, expires)
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    return await stream_output(request, st, job.id, output, media_type)


def presign_downloads() -> bool:
    """DUBBING_S3_PRESIGN_DOWNLOADS=true with S3 storage: media downloads redirect to presigned URLs."""
    return settings.flag("DUBBING_S3_PRESIGN_DOWNLOADS") and storage().is_s3


async def stream_output(request: Request, st: MediaStorage, job_id: str, output: Output,
                        media_type: str) -> Response:
    """An output streamed from S3 with the range semantics of the local FileResponse: one satisfiable range
    → 206 + Content-Range; a start past the end → 416 + `Content-Range: bytes */size`; a malformed header →
    400; no Range (or an If-Range, which is not checked here, or several ranges) → 200 and the whole file."""
    headers = {"accept-ranges": "bytes", "content-disposition": f'attachment; filename="{output.name}"'}
    start, end, status = 0, output.size, 200
    given = request.headers.get("range")
    if given is not None and request.headers.get("if-range") is None:
        try:
            ranges = FileResponse._parse_range_header(given, output.size)
        except MalformedRangeHeader as exc:
            return PlainTextResponse(exc.content, status_code=400)
        except RangeNotSatisfiable as exc:
            return PlainTextResponse("", status_code=416, headers={"Content-Range": f"bytes */{exc.max_size}"})
        if len(ranges) == 1:
            (start, end), status = ranges[0], 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{output.size}"
    headers["content-length"] = str(end - start)
    try:
        body = await run_in_threadpool(storage_call, st.read_output, job_id, output.name, start,
                                       end if status == 206 else None)
    except FileNotFoundError:
        raise HTTPException(404, "no such output") from None
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)
