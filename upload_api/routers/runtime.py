"""Health, runtime state, the run queue and model readiness (docs/upload-api.md, Runtime)."""

from __future__ import annotations

import platform
import time
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from resources import disk, logs, readiness, versions
from resources.accounts import User
from resources.jobstore import JobOptions
from resources.tts import shown
from resources.uploads import LANG_RE
from upload_api.deps import current_user, dagster_instance, job_store, require_admin, storage

router = APIRouter(prefix="/api", tags=["runtime"])
HEARTBEAT_STALE_S = 60
NO_STORE = {"Cache-Control": "no-store"}


def _database() -> dict:
    try:
        with job_store().engine().connect() as conn:
            conn.execute(sa.text("select 1"))
        return {"ok": True, "kind": job_store().engine().dialect.name}
    except Exception as exc:  # the reason, never the URL (it may hold a password)
        return {"ok": False, "kind": None, "error": type(exc).__name__}


def _daemon() -> dict:
    try:
        beats = dagster_instance().get_daemon_heartbeats()
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    if not beats:
        return {"ok": False, "heartbeat_age_s": None, "error": "no dagster-daemon heartbeat yet"}
    age = time.time() - max(b.timestamp for b in beats.values())
    return {"ok": age < HEARTBEAT_STALE_S, "heartbeat_age_s": round(age, 1), "daemons": sorted(beats)}


@router.get("/health")
async def health():
    database = await run_in_threadpool(_database)
    daemon = await run_in_threadpool(_daemon)
    body = {"status": "ok" if database["ok"] and daemon["ok"] else "degraded", "database": database,
            "dagster_daemon": daemon}
    return JSONResponse(body, status_code=200 if database["ok"] else 503)


# --- runtime state, queue and model readiness (admins) ---------------------------------------------

def _versions() -> dict:
    return {
        "python": platform.python_version(),
        **{dist: versions.package_version(dist)
           for dist in ("dagster", "dagster-webserver", "dagster-postgres", "fastapi", "uvicorn", "sqlalchemy",
                        "faster-whisper", "ctranslate2", "piper-tts", "argostranslate", "coqui-tts")},
        "ffmpeg": versions.tool_version(("ffmpeg", "-version"), 2),
        "espeak-ng": versions.tool_version(("espeak-ng", "--version"), 3),
    }


def _storage_kind(obj) -> str:
    name = type(obj).__name__.lower()
    for kind in ("sqlite", "postgres", "mysql"):
        if kind in name:
            return kind
    return type(obj).__name__


def _instance_state() -> dict:
    try:
        instance = dagster_instance()
    except Exception as exc:  # the reason, never the config (it may hold a URL with a password)
        return {"ok": False, "error": type(exc).__name__}
    coordinator = instance.run_coordinator
    out = {"ok": True, "storage": _storage_kind(instance.run_storage),
           "event_storage": _storage_kind(instance.event_log_storage),
           "run_coordinator": type(coordinator).__name__, "run_launcher": type(instance.run_launcher).__name__}
    try:
        queue_config = instance.get_concurrency_config().run_queue_config
        out["max_concurrent_runs"] = queue_config.max_concurrent_runs if queue_config else None
    except Exception:
        out["max_concurrent_runs"] = None
    return out


def _state() -> dict:
    from resources import settings
    from resources.models import model_manager

    return {
        "versions": _versions(),
        "disk": disk.disk_status(),
        "storage": {"files": storage().kind(), "job_store": _database().get("kind"), "dagster": _instance_state()},
        "dagster_daemon": _daemon(),
        "model_cache": model_manager().stats(),  # this API process; each run loads its own
        "flags": {"downloads_allowed": settings.downloads_allowed(), "egress_allowed": settings.egress_allowed()},
    }


ACTIVE_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def _queue() -> dict:
    import dagster as dg

    instance = dagster_instance()
    statuses = [dg.DagsterRunStatus(s) for s in ACTIVE_STATUSES]
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=statuses), limit=1000)
    now = time.time()

    def created(r) -> float:
        return r.create_timestamp.timestamp()

    def priority(r) -> int:
        try:
            return int(r.dagster_run.tags.get("dagster/priority", "0"))
        except ValueError:
            return 0

    def row(r) -> dict:
        run = r.dagster_run
        return {"run_id": run.run_id, "job_name": run.job_name, "status": run.status.value,
                "job_id": run.tags.get("dubbing/job_id") or run.tags.get("dagster/partition"),
                "user_id": run.tags.get("dubbing/user_id") or None, "created_at": r.create_timestamp.isoformat(),
                "age_s": round(now - created(r), 1)}

    waiting = sorted((r for r in records if r.dagster_run.status.value in ("QUEUED", "NOT_STARTED")),
                     key=lambda r: (-priority(r), created(r)))  # the order the queue daemon dequeues in
    running = sorted((r for r in records if r.dagster_run.status.value not in ("QUEUED", "NOT_STARTED")),
                     key=lambda r: r.start_time or created(r))
    queued = [{**row(r), "position": i} for i, r in enumerate(waiting, start=1)]
    active = []
    for r in running:
        item = row(r)
        item["running_s"] = round(now - r.start_time, 1) if r.start_time else None
        active.append(item)
    return {"queued": queued, "running": active, "counts": {"queued": len(queued), "running": len(active)},
            "max_concurrent_runs": _instance_state().get("max_concurrent_runs")}


class PrewarmIn(BaseModel):
    models: list[Annotated[str, Field(max_length=200)]] = Field(min_length=1, max_length=20)


class ReprocessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Literal["all", "transient", "outdated"] = "all"
    dry_run: StrictBool = False
    limit: StrictInt = Field(10, ge=1, le=100)


def _reprocess(body: ReprocessIn, user: User) -> dict:
    """The reprocessing rule (dubbing_assets/reprocess.py) now; each pick queued for the run request sensor
    under its key, unless this is a dry run."""
    from dubbing_assets import reprocess

    store = job_store()
    picks = reprocess.pick(dagster_instance(), store, reprocess.Engines.from_env(), rule=body.rule, limit=body.limit)
    picked = []
    for p in picks:
        queued = False
        if not body.dry_run and not store.claim_launch(p.job_id):
            # retention is deleting this job's files right now: nothing to reprocess
            picked.append({**p.as_dict(), "queued": False, "skipped": "its files are being deleted by retention"})
            continue
        if not body.dry_run:
            _, queued = store.add_run_request(p.job_id, kind=reprocess.KIND, stages=p.stages, key=p.key,
                                              reason=p.reason, requested_by=user.id)
        picked.append({**p.as_dict(), "queued": queued})
    return {"dry_run": body.dry_run, "rule": body.rule, "picked": picked}


@router.post("/runtime/reprocess")
async def runtime_reprocess(body: ReprocessIn, user: User = Depends(require_admin)):
    """Evaluate the reprocessing rule now (the one reprocess_schedule runs) and, unless `dry_run`, queue a
    run for each pick (launched by the run request sensor, one run per key). Admins."""
    result = await run_in_threadpool(_reprocess, body, user)
    logs.audit("reprocess_requested", rule=body.rule, dry_run=body.dry_run, limit=body.limit,
               picked=len(result["picked"]), queued=sum(1 for p in result["picked"] if p["queued"]),
               keys=",".join(p["key"] for p in result["picked"])[:2000])
    return JSONResponse(result, headers=NO_STORE)


@router.get("/runtime/state")
async def runtime_state(user: User = Depends(require_admin)):
    """Versions, disk, storage kinds, daemon heartbeat age and this process's model cache (admins)."""
    return JSONResponse(await run_in_threadpool(_state), headers=NO_STORE)


@router.get("/runtime/queue")
async def runtime_queue(user: User = Depends(require_admin)):
    """Queued runs in dequeue order with their position and age, and the running ones (admins)."""
    return JSONResponse(await run_in_threadpool(_queue), headers=NO_STORE)


@router.get("/runtime/models")
async def runtime_models(user: User = Depends(require_admin)):
    """Every engine and model: installed, enabled, ready and why not. Loads, downloads and connects
    to nothing (admins)."""
    return JSONResponse(await run_in_threadpool(readiness.report), headers=NO_STORE)


@router.post("/runtime/models/prewarm")
async def runtime_prewarm(body: PrewarmIn, user: User = Depends(require_admin)):
    """Load ready models into this process's cache; 409 naming the reason when one is not ready."""
    try:
        results = await run_in_threadpool(readiness.prewarm, body.models)
    except readiness.UnknownModel as exc:
        raise HTTPException(404, str(exc)) from None
    except readiness.NotReady as exc:
        raise HTTPException(409, str(exc)) from None
    from resources.models import model_manager

    logs.audit("models_prewarmed", models=",".join(r["id"] for r in results))
    return JSONResponse({"results": results, "cache": model_manager().stats()}, headers=NO_STORE)


@router.get("/runtime/check")
async def runtime_check(target_lang: str = Query(max_length=16), source_lang: str = Query("en", max_length=16),
                        voice: str | None = Query(None, max_length=128), tts_engine: str = Query("auto", max_length=16),
                        translator: str = Query("auto", max_length=16), user: User = Depends(current_user)):
    """Could a job with these choices run now? 200 `{ready: true}`, 422 naming the reason (the check
    job creation makes), or 507 when the disk is below MIN_FREE_GB. The upload wizard asks before it
    uploads. Any user."""
    for name, value in (("target_lang", target_lang), ("source_lang", source_lang)):
        if not LANG_RE.match(value):
            raise HTTPException(422, f"{name} {shown(value, 20)!r} is not a language code like 'es' or 'pt-BR'")
    options = {"tts_engine": tts_engine, "translator": translator}
    try:
        JobOptions.from_dict(options)
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, f"options: {shown(str(exc), 200)}") from None
    reason = await run_in_threadpool(readiness.job_unready_reason, source_lang, target_lang, voice or None, options)
    if reason:
        raise HTTPException(422, reason)
    low = await run_in_threadpool(disk.low_space_reason, 0, None, "a new job")
    if low:
        raise HTTPException(507, low)
    return JSONResponse({"ready": True, "source_lang": source_lang, "target_lang": target_lang}, headers=NO_STORE)
