"""Health and runtime state."""

from __future__ import annotations

import time

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from upload_api.deps import dagster_instance, job_store

router = APIRouter(prefix="/api", tags=["runtime"])
HEARTBEAT_STALE_S = 60


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
