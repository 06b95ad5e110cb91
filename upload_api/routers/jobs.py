"""Jobs as the API shows them: the job record (inputs) plus what Dagster says (runs, status)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from resources.accounts import User
from resources.jobstore import JobRecord
from upload_api.deps import bind, current_user, dagster_instance, job_store, storage

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

STATE_OF_RUN = {
    "QUEUED": "queued", "NOT_STARTED": "queued", "MANAGED": "queued", "STARTING": "queued",
    "STARTED": "running", "SUCCESS": "done", "FAILURE": "failed", "CANCELING": "cancelling",
    "CANCELED": "cancelled",
}


def owned_job(job_id: str, user: User) -> JobRecord:
    try:
        job = job_store().get_job(job_id)
    except KeyError:
        raise HTTPException(404, "job not found") from None
    if job.owner != user.id and not user.is_admin:
        raise HTTPException(404, "job not found")
    return job


def job_runs(job_id: str) -> list:
    """The job's Dagster runs, newest first (read from the instance, never copied)."""
    import dagster as dg

    return dagster_instance().get_runs(filters=dg.RunsFilter(tags={"dagster/partition": job_id}))


def job_view(job: JobRecord) -> dict:
    runs = job_runs(job.id)
    latest = runs[0] if runs else None
    state = STATE_OF_RUN.get(latest.status.value, latest.status.value.lower()) if latest else "submitted"
    outputs = []
    if state == "done":
        out = storage().outputs_dir(job.id)
        if out.is_dir():
            outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    return {
        "job_id": job.id,
        "filename": job.filename,
        "source_lang": job.source_lang,
        "target_lang": job.target_lang,
        "voice": job.voice,
        "options": job.options.to_dict(),
        "created_at": job.created_at.isoformat(),
        "upload_id": job.upload_id,
        "state": state,
        "run_id": latest.run_id if latest else None,
        "runs": [{"run_id": r.run_id, "status": r.status.value} for r in runs],
        "outputs": outputs,
    }


@router.get("/{job_id}")
async def get_job(job_id: str, request: Request, user: User = Depends(current_user)):
    job = await run_in_threadpool(owned_job, job_id, user)
    bind(request, job_id=job.id, upload_id=job.upload_id)
    return await run_in_threadpool(job_view, job)
