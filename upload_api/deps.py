"""Shared objects of the service (one per process) and the auth dependencies."""

from __future__ import annotations

import functools
import threading
from typing import Annotated

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator

from resources import logs
from resources.accounts import Accounts, User, csrf_matches
from resources.jobstore import JobStore
from resources.notify import NotifyStore, NtfyResource
from resources.storage import MediaStorage
from resources.uploads import UploadStore

SESSION_COOKIE = "dub_session"


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain NUL or other control characters")
    return value


# A request text field that is stored or looked up in the database (Postgres refuses NUL in text)
CleanStr = Annotated[str, AfterValidator(_no_control_chars)]
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@functools.cache
def job_store() -> JobStore:
    return JobStore()


@functools.cache
def accounts() -> Accounts:
    return Accounts(job_store())


@functools.cache
def uploads() -> UploadStore:
    return UploadStore(job_store())


@functools.cache
def notify_store() -> NotifyStore:
    return NotifyStore(job_store())


@functools.cache
def ntfy() -> NtfyResource:
    """The ntfy server settings from the environment (the same variables the daemon reads)."""
    return NtfyResource.from_env()


@functools.cache
def storage() -> MediaStorage:
    return MediaStorage()


_INSTANCE_LOCK = threading.Lock()
DAGSTER_STATEMENT_TIMEOUT_MS = 15_000  # as dagster-webserver: a query stuck longer answers 503
DAGSTER_POOL_MAX_OVERFLOW = 10  # connections per Dagster storage beyond the one kept open


def dagster_instance():
    """The Dagster instance of DAGSTER_HOME (the same dagster.yaml the daemon uses). Created once,
    under a lock: two first requests at once (health polls while the instance takes seconds to open)
    must not both create the SQLite storages, which stamps their Alembic version table twice."""
    with _INSTANCE_LOCK:
        return _dagster_instance()


@functools.cache
def _dagster_instance():
    import dagster as dg

    from resources import settings

    settings.ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    # dagster-postgres opens a new connection for every query (NullPool) unless told it is a
    # long-lived server, as dagster-webserver does: then it keeps a pool and a statement timeout.
    # Measured (bench/api_load.py): a job view went from ~17 ms to ~2 ms of Dagster storage time.
    instance.optimize_for_webserver(statement_timeout=DAGSTER_STATEMENT_TIMEOUT_MS, pool_recycle=3600,
                                    max_overflow=DAGSTER_POOL_MAX_OVERFLOW)
    return instance


def bind(request: Request, **fields: str | None) -> None:
    """Attach ids to this request's log lines: the handler's own lines (contextvars) and the access
    line the middleware writes (request.state)."""
    ctx = getattr(request.state, "log_ctx", None)
    if ctx is None:
        ctx = request.state.log_ctx = {}
    for key, value in fields.items():
        logs.CONTEXT[key].set(value)
        if value is not None:
            ctx[key] = value


async def current_user(request: Request) -> User:
    """Bearer token (phones, scripts) or session cookie + X-CSRF-Token on unsafe methods (web UI)."""
    user = await run_in_threadpool(_authenticate, request)
    bind(request, user_id=user.id)
    request.state.user = user
    return user


async def require_admin(request: Request) -> User:
    user = await current_user(request)
    if not user.is_admin:
        raise HTTPException(403, "admins only")
    return user


def _authenticate(request: Request) -> User:
    header = request.headers.get("authorization")
    user: User | None = None
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "Authorization header must be 'Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        user = accounts().user_for_token(token.strip())
        if user is None:
            raise HTTPException(401, "invalid or revoked API token", headers={"WWW-Authenticate": "Bearer"})
    else:
        sid = request.cookies.get(SESSION_COOKIE)
        found = accounts().session_user(sid) if sid else None
        if found is None:
            raise HTTPException(401, "authentication required: send 'Authorization: Bearer <token>' or log in",
                                headers={"WWW-Authenticate": "Bearer"})
        user, csrf = found
        if request.method not in SAFE_METHODS and not csrf_matches(csrf, request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header for this session")
    return user
