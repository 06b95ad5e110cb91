"""The web UI: server-rendered pages (Jinja2, autoescaped) under /ui, with small vanilla scripts from
/static that talk to the JSON API (session cookie + X-CSRF-Token). No inline scripts: every page
is served with a Content-Security-Policy of script-src 'self'; data reaches the scripts through
data- attributes and the CSRF token through a meta tag rendered from the server-side session.

Pages need the session cookie (API tokens are for scripts, not for pages); without one they redirect
to /ui/login?next=<the page>."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse

from resources.accounts import User
from upload_api import dagster_view as dv
from upload_api.deps import SESSION_COOKIE, accounts, bind, dagster_instance, job_store, notify_store
from upload_api.deps import storage as deps_storage
from upload_api.routers import jobs as jobs_api
from upload_api.routers import settings as settings_api

router = APIRouter(include_in_schema=False, tags=["ui"])

HERE = Path(__file__).resolve().parent.parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def media_src() -> str:
    """'self', and the S3 server when the player's downloads redirect to presigned URLs."""
    if not jobs_api.presign_downloads():
        return "'self'"
    return f"'self' {deps_storage().presign_origin()}"


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       f"media-src {media_src()}; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
UI_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # pages carry the CSRF token
}
LANGUAGES = [
    ("en", "English"), ("es", "Spanish"), ("fr", "French"), ("de", "German"), ("it", "Italian"),
    ("pt", "Portuguese"), ("nl", "Dutch"), ("ca", "Catalan"), ("pl", "Polish"), ("ru", "Russian"),
    ("uk", "Ukrainian"), ("tr", "Turkish"), ("ar", "Arabic"), ("hi", "Hindi"), ("zh", "Chinese"),
    ("ja", "Japanese"), ("ko", "Korean"),
]
VOICES = [
    ("auto", "Automatic (best voice installed)"),
    ("espeak", "espeak-ng (fast, robotic, every language)"),
    ("piper", "Piper (natural; where a voice is installed)"),
    ("xtts", "XTTS-v2 (clones the speaker; when installed)"),
]
FINISHED = sorted(dv.FINISHED)

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)


def _static_version() -> str:
    """A digest of the static files, appended to their URLs so a new release is never mixed with
    cached scripts."""
    h = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:10]


_env.globals["static_version"] = _static_version()
STATE_TEXT = {
    "submitted": "Waiting to start", "queued": "Queued", "running": "Running", "done": "Done",
    "failed": "Failed", "cancelling": "Cancelling", "cancelled": "Cancelled", "pending": "Pending",
    "skipped": "Skipped", "expired": "Expired", "needs_review": "Needs review", "review": "Needs review",
}
LANG_NAMES = dict(LANGUAGES)


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def metadata_text(metadata: dict | None) -> str:
    return " · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in (metadata or {}).items())


# JSON for data- attributes: autoescaping turns it into attribute-safe text, the browser turns it back
_env.globals.update(stage_labels=dv.STAGE_LABELS, stage_labels_json=json.dumps(dv.STAGE_LABELS),
                    state_text=STATE_TEXT, state_text_json=json.dumps(STATE_TEXT),
                    lang_names=LANG_NAMES, lang_names_json=json.dumps(LANG_NAMES), run_states=dv.STATE_OF_RUN)
_env.filters["dur"] = duration_text
_env.filters["meta"] = metadata_text


def render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    context.setdefault("user", getattr(request.state, "ui_user", None))
    context.setdefault("csrf", getattr(request.state, "ui_csrf", ""))
    context["path"] = request.url.path
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=UI_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=UI_HEADERS)


def safe_next(value: str | None) -> str:
    """Where to go after login: a path on this site only (no //host, no scheme, no backslashes)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value \
            or any(ord(c) < 0x20 for c in value):
        return "/ui"
    return value[:512]


async def page_user(request: Request) -> User | None:
    """The user of the session cookie (and the session's CSRF token, kept on request.state for the
    meta tag); None without a live session."""
    sid = request.cookies.get(SESSION_COOKIE)
    found = await run_in_threadpool(accounts().session_user, sid) if sid else None
    if found is None:
        return None
    user, csrf = found
    request.state.ui_user, request.state.ui_csrf = user, csrf
    bind(request, user_id=user.id)
    return user


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(f"/ui/login?next={quote(target, safe='/')}")


@router.get("/")
async def root():
    return redirect("/ui")


@router.get("/ui/login")
async def login_page(request: Request, next: str | None = None):
    target = safe_next(next)
    if await page_user(request) is not None:
        return redirect(target)
    return render(request, "login.html", next_url=target, title="Log in")


@router.get("/ui")
async def dashboard(request: Request):
    user = await page_user(request)
    if user is None:
        return login_redirect(request)

    def my_jobs():
        instance = dagster_instance()
        batch = job_store().list_jobs(owner=user.id, limit=30)
        runs = dv.runs_by_job(instance, [j.id for j in batch])
        return [jobs_api.job_view(j, runs[j.id], detail=False) for j in batch]

    items = await run_in_threadpool(my_jobs)
    return render(request, "dashboard.html", jobs=items, title="My jobs", finished=FINISHED)


@router.get("/ui/upload")
async def upload_page(request: Request):
    user = await page_user(request)
    if user is None:
        return login_redirect(request)
    return render(request, "upload.html", title="Upload a video", languages=LANGUAGES, voices=VOICES)


@router.get("/ui/jobs/{job_id}")
async def job_page(request: Request, job_id: str):
    user = await page_user(request)
    if user is None:
        return login_redirect(request)
    try:
        job = await jobs_api.get_owned(request, job_id, user)  # another user's job: 404, as in the API
    except HTTPException:
        return render(request, "error.html", status=404, title="Job not found",
                      message="There is no job with this id among your jobs.")

    def build():
        instance = dagster_instance()
        runs = dv.runs_by_job(instance, [job.id])[job.id]
        return jobs_api.job_view(job, runs), dv.timeline(instance, job, runs)

    view, tl = await run_in_threadpool(build)
    outputs = view["outputs"] = sorted(view["outputs"], key=lambda n: (not n.endswith((".mkv", ".mp4")), n))
    players = [n for n in outputs if n.endswith(".mp4")] + [n for n in outputs if n.endswith(".mkv")]
    tracks = []
    for name in (n for n in outputs if n.endswith(".vtt")):
        code = name[:-4].rsplit(".", 1)[-1]
        tracks.append({"name": name, "lang": code, "label": LANG_NAMES.get(code, code)})
    return render(request, "job.html", title=view["filename"], job=view, timeline=tl, finished=FINISHED,
                  player=players[0] if players else None, tracks=tracks)


async def admin_page(request: Request, name: str, title: str):
    user = await page_user(request)
    if user is None:
        return login_redirect(request)
    if not user.is_admin:
        return render(request, "error.html", status=403, title="Admins only",
                      message="This page is for administrators.")
    return render(request, name, title=title)


PRIORITIES = [  # ntfy's priority names and what the ntfy app does with them
    (1, "min", "no sound, folded away"), (2, "low", "no sound or vibration"),
    (3, "default", "short vibration and sound"), (4, "high", "long vibration, pop-over"),
    (5, "max", "urgent: long vibration bursts"),
]


@router.get("/ui/settings")
async def settings_page(request: Request):
    """Every user's own settings (push notifications), filled from the same view as GET /api/settings."""
    user = await page_user(request)
    if user is None:
        return login_redirect(request)
    current = await run_in_threadpool(notify_store().get_settings, user.id)
    return render(request, "settings.html", title="Settings", view=settings_api.settings_view(user, current),
                  priorities=PRIORITIES)


MODEL_GROUPS = [("asr", "Speech recognition"), ("translation", "Translation"), ("tts", "Voices")]


@router.get("/ui/models")
async def models_page(request: Request):
    """Admins: every engine and model, ready or not and why (the report of GET /api/runtime/models),
    with prewarm buttons and the Reprocessing panel (models.js)."""
    from resources import readiness

    user = await page_user(request)
    if user is None or not user.is_admin:
        return await admin_page(request, "models.html", "Models")  # the login redirect or the 403 page
    report = await run_in_threadpool(readiness.report)
    groups = [(kind, label, [m for m in report["models"] if m["kind"] == kind]) for kind, label in MODEL_GROUPS]
    return render(request, "models.html", title="Models", report=report, groups=groups,
                  reprocess=await run_in_threadpool(reprocess_settings))


def reprocess_settings() -> dict:
    """What the Reprocessing panel of /ui/models says about reprocess_schedule (dubbing_assets/reprocess.py)."""
    import re

    from dubbing_assets import reprocess

    cron = reprocess.cron()
    every = re.fullmatch(r"\*(?:/(\d+))? \* \* \* \*", cron)
    if every:
        n = int(every.group(1) or 1)
        text = "every minute" if n == 1 else f"every {n} minutes"
    else:
        text = "on the schedule"
    return {"cron": cron, "cron_text": text, "retry_budget": reprocess.retry_budget(),
            "max_per_tick": reprocess.max_per_tick()}
