"""The Dagster UI at /dagster, for admins only.

The Dagster webserver's own ASGI app runs inside the API process (built lazily on the first admin
request, on the same instance and workspace), behind this service's login: an admin session cookie
(or an admin API token). Anyone else gets a redirect to the login page (browsers), 403 or 401;
websocket handshakes without an admin are refused. Nothing of Dagster is reachable unauthenticated
through this service."""

from __future__ import annotations

import threading
from http.cookies import SimpleCookie

from starlette.responses import JSONResponse, RedirectResponse

PREFIX = "/dagster"
_LOCK = threading.Lock()
_APP = None


def _dagster_app():
    global _APP
    with _LOCK:
        if _APP is None:
            from dagster_webserver.app import create_app_from_workspace_process_context

            from upload_api import workspace
            from upload_api.deps import dagster_instance

            _APP = create_app_from_workspace_process_context(
                workspace.process_context(dagster_instance()), path_prefix=PREFIX)
        return _APP


def _admin(scope) -> tuple[bool, bool]:
    """(is an admin, is someone logged in)."""
    from upload_api.deps import SESSION_COOKIE, accounts

    headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        user = accounts().user_for_token(auth[7:].strip())
        return (bool(user and user.is_admin), user is not None)
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:
        return False, False
    morsel = cookie.get(SESSION_COOKIE)
    found = accounts().session_user(morsel.value) if morsel else None
    return (bool(found and found[0].is_admin), found is not None)


class DagsterUiGate:
    """Pure ASGI middleware: /dagster/* goes to the Dagster app when an admin asks."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (path == PREFIX or path.startswith(PREFIX + "/")):
            return await self.app(scope, receive, send)
        from fastapi.concurrency import run_in_threadpool

        is_admin, logged_in = await run_in_threadpool(_admin, scope)
        if is_admin:
            app = await run_in_threadpool(_dagster_app)
            return await app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4403})
            return
        if logged_in:
            response = JSONResponse({"detail": "the Dagster UI is for admins only"}, status_code=403)
        elif "text/html" in dict((k.decode().lower(), v.decode()) for k, v in scope["headers"]).get("accept", ""):
            response = RedirectResponse(f"/ui/login?next={PREFIX}", status_code=303)
        else:
            response = JSONResponse({"detail": "authentication required: log in as an admin"}, status_code=401)
        await response(scope, receive, send)
