"""The FastAPI app: `uvicorn upload_api.app:app` (make run starts it on DUBBING_HOST:DUBBING_PORT)."""

from __future__ import annotations

import logging
import re
import secrets
import time
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from resources import logs
from resources.uploads import UploadError
from upload_api.dagster_ui import DagsterUiGate
from upload_api.routers import auth, jobs, runtime, segments, settings, tus, ui, uploads

log = logging.getLogger("dubbing.api")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_JSON_BYTES = 64 * 1024
OUTPUT_PATH = re.compile(r"^/api/jobs/[A-Za-z0-9]{1,64}/outputs/[^/]{1,255}$")


def database_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "the database is away" (not "the request is wrong"): answered 503."""
    import psycopg2
    import sqlalchemy.exc as sa_exc

    errors: list[type[Exception]] = [sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                                     sa_exc.TimeoutError, psycopg2.OperationalError, psycopg2.InterfaceError]
    try:
        from dagster_postgres.utils import DagsterPostgresException

        errors.append(DagsterPostgresException)
    except ImportError:
        pass
    return tuple(errors)


class RequestContext:
    """Pure ASGI middleware (no per-request task, unlike @app.middleware): the request id (given in
    X-Request-ID or made here) on the log context and the response, the size limits of JSON bodies,
    a 500 with the request id for anything unhandled, and one JSON log line per request with the ids
    its handler bound (request.state.log_ctx)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        rid = given if REQUEST_ID_RE.match(given) else secrets.token_hex(8)
        for var in logs.CONTEXT.values():
            var.set(None)
        logs.request_id.set(rid)
        started = time.perf_counter()
        path = scope["path"]
        status = {"code": 500, "sent": False}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        length = headers.get("content-length", "")
        is_body_route = path.endswith("/chunk") or path.startswith("/api/tus")
        refusal = None
        if not is_body_route and length.isdigit() and int(length) > MAX_JSON_BYTES:
            refusal = JSONResponse({"detail": f"request body over {MAX_JSON_BYTES} bytes"}, status_code=413)
        elif not is_body_route and "chunked" in headers.get("transfer-encoding", "").lower():
            # no length to check up front: the JSON routes would read an unbounded body
            refusal = JSONResponse({"detail": f"send a Content-Length header: JSON bodies are limited to "
                                              f"{MAX_JSON_BYTES} bytes"}, status_code=411)
        state = scope.setdefault("state", {})
        try:
            await (refusal or self.app)(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"path": path}})
            if status["sent"]:
                raise  # the answer has started: nothing better to send than a cut connection
            await JSONResponse({"detail": "internal error", "request_id": rid},
                               status_code=500)(scope, receive, send_with_id)
        logs.log(log, "request", method=scope["method"], path=path, status=status["code"],
                 ms=round((time.perf_counter() - started) * 1000, 1), **state.get("log_ctx", {}))


def create_app() -> FastAPI:
    logs.setup()
    app = FastAPI(title="Dubbing platform API", version="0.1.0",
                  description="Resumable uploads, dub jobs and their state (read from Dagster).")
    for router in (auth.router, uploads.router, tus.router, jobs.router, segments.router, runtime.router,
                   settings.router, ui.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=ui.STATIC), name="static")  # the web UI's scripts and CSS
    app.add_middleware(DagsterUiGate)  # /dagster: the Dagster UI, admins only

    app.add_middleware(RequestContext)  # outermost: request id, body limits, one log line

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        body = {"detail": exc.message}
        if exc.upload is not None:
            body["upload"] = exc.upload.status()
        logs.log(log, "refused", level=logging.INFO, status=exc.status, reason=exc.message)
        return JSONResponse(body, status_code=exc.status, headers={"Cache-Control": "no-store", **exc.headers})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    async def database_away(request: Request, exc: Exception):
        # Postgres restarting or unreachable: the client retries (uploads resume from the status)
        logs.log(log, "database unavailable", level=logging.WARNING, error=type(exc).__name__)
        return JSONResponse({"detail": "the database is unavailable right now; retry in a few seconds"},
                            status_code=503, headers={"Retry-After": "2", "Cache-Control": "no-store"})

    for exc_class in database_errors():
        app.add_exception_handler(exc_class, database_away)

    @app.exception_handler(ValueError)
    async def refused_text(request: Request, exc: ValueError):
        if "NUL (0x00)" not in str(exc):
            raise exc
        logs.log(log, "refused", status=422, reason="NUL character in a text field")
        return JSONResponse({"detail": "text fields must not contain NUL characters"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 401 and request.method == "GET" and OUTPUT_PATH.match(request.url.path) \
                and "text/html" in request.headers.get("accept", ""):
            # a download link opened in a browser without a session (e.g. from a push notification)
            return RedirectResponse(f"/ui/login?next={quote(request.url.path, safe='/')}", status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return app


app = create_app()
