"""Push notifications through a (private, self-hosted) ntfy server: the one notifier of the platform.

- `NtfyResource` knows the server (NTFY_URL, NTFY_AUTH, topic prefix, PUBLIC_BASE_URL for deep links)
  and publishes one message with ntfy's JSON publish API, classifying the answer.
- `NotifyStore` keeps, in the job store's database, each user's notification settings and the
  outbox: one row per (run id, event), written once by the run-status sensors and delivered from
  there with jittered exponential backoff, so an ntfy outage delays messages but loses none and
  never sends one twice.

NTFY_AUTH is a secret: it goes into the Authorization header and nowhere else (not into reasons,
log lines, API answers or pages)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import sqlalchemy as sa
import sqlalchemy.orm
from sqlalchemy.orm import Mapped, mapped_column

from resources import logs
from resources.accounts import as_utc, utcnow
from resources.jobstore import Base, JobStore

log = logging.getLogger("dubbing.notify")

TOPIC_RE = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
# ntfy's DefaultDisallowedTopics (paths of its own web app and API)
RESERVED_TOPICS = {"docs", "static", "file", "app", "metrics", "account", "settings", "signup", "login", "v1"}
MESSAGE_LIMIT = 4096  # bytes: ntfy's message body limit
TITLE_LIMIT = 200
# outbox row states (of a notification's delivery, not of a job)
HELD, PENDING, SENDING, SENT, SKIPPED, FAILED = "held", "pending", "sending", "sent", "skipped", "failed"
CLAIM_SECONDS = 120


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return float(default)
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds/hours, not {raw!r}") from None


def topic_problem(topic: str) -> str | None:
    """Why `topic` cannot be an ntfy topic, or None."""
    if not TOPIC_RE.match(topic or ""):
        return "topic must be 1 to 64 characters, each a letter, digit, '-' or '_'"
    if topic.lower() in RESERVED_TOPICS:
        return f"topic {topic!r} is reserved by ntfy; choose another name"
    return None


def truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "…"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---------------------------------------------------------------------------------------- tables


class NotifySettingsRow(Base):
    __tablename__ = "dub_notify_settings"

    user_id: Mapped[str] = mapped_column(sa.ForeignKey("dub_users.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    topic: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    priority: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=3)
    on_success: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    on_failure: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    on_cancel: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class OutboxRow(Base):
    __tablename__ = "dub_notify_outbox"
    __table_args__ = (sa.UniqueConstraint("run_id", "event", name="uq_dub_notify_outbox_run_event"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    event: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    job_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True, index=True)
    user_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    topic: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, index=True)
    detail: Mapped[str] = mapped_column(sa.Text, nullable=False, default="{}")  # failing stage + message
    payload: Mapped[str | None] = mapped_column(sa.Text, nullable=True)  # the ntfy JSON message
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    sent_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class NotifySettings:
    enabled: bool = True
    topic: str | None = None  # None: the default topic (prefix + user name)
    priority: int = 3
    on_success: bool = True
    on_failure: bool = True
    on_cancel: bool = True

    def wants(self, event: str) -> bool:
        return self.enabled and bool(getattr(self, f"on_{event}"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    run_id: str
    event: str
    job_id: str | None
    user_id: str | None
    topic: str | None
    status: str
    detail: dict
    payload: dict | None
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime
    sent_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: OutboxRow) -> "OutboxEntry":
        return cls(id=row.id, run_id=row.run_id, event=row.event, job_id=row.job_id, user_id=row.user_id,
                   topic=row.topic, status=row.status, detail=json.loads(row.detail or "{}"),
                   payload=json.loads(row.payload) if row.payload else None, attempts=row.attempts,
                   last_error=row.last_error, next_attempt_at=as_utc(row.next_attempt_at),
                   created_at=as_utc(row.created_at), sent_at=as_utc(row.sent_at))


# ---------------------------------------------------------------------------------------- server


@dataclass(frozen=True)
class Delivery:
    outcome: str  # "sent" | "retry" (connection error, 5xx, 429) | "rejected" (other 4xx)
    status: int | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.outcome == "sent"


class NtfyResource(dg.ConfigurableResource):
    """The ntfy server the platform publishes to (one account with write access to the topics)."""

    url: str = ""  # NTFY_URL, e.g. https://ntfy.example.com
    auth: str = ""  # NTFY_AUTH: "tk_..." / "Bearer tk_..." access token, or "user:password"
    topic_prefix: str = "dub-"  # NTFY_TOPIC_PREFIX: a user's default topic is prefix + user name
    public_base_url: str = ""  # PUBLIC_BASE_URL: where users open the web UI (deep links)
    public_url: str = ""  # NTFY_PUBLIC_URL: the server's address for phones, when NTFY_URL is internal
    timeout_s: float = 10.0
    retry_max_s: float = 300.0  # NTFY_RETRY_MAX_S: the longest wait between two attempts
    give_up_after_h: float = 24.0  # NTFY_GIVE_UP_AFTER_H: stop retrying a message this old

    @classmethod
    def from_env(cls) -> "NtfyResource":
        """The same settings the Dagster definitions read (for processes outside Dagster: the API)."""
        env = os.environ
        return cls(url=env.get("NTFY_URL", ""), auth=env.get("NTFY_AUTH", ""),
                   topic_prefix=env.get("NTFY_TOPIC_PREFIX", "dub-"),
                   public_base_url=env.get("PUBLIC_BASE_URL", ""), public_url=env.get("NTFY_PUBLIC_URL", ""),
                   retry_max_s=env_float("NTFY_RETRY_MAX_S", 300),
                   give_up_after_h=env_float("NTFY_GIVE_UP_AFTER_H", 24))

    # -- settings shown to users (never the secret)

    @property
    def configured(self) -> bool:
        return bool(self.url.strip())

    def _split_url(self) -> tuple[str, str | None]:
        """(server URL without credentials, credentials found in the URL or None)."""
        parts = urlsplit(self.url.strip())
        creds = None
        netloc = parts.netloc
        if "@" in netloc:
            creds, _, netloc = netloc.rpartition("@")
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return base, creds

    def server_label(self) -> str:
        """The server's address as users subscribe to it (never with credentials)."""
        if not self.configured:
            return ""
        if self.public_url.strip():
            parts = urlsplit(self.public_url.strip())
            return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))
        return self._split_url()[0]

    @property
    def auth_configured(self) -> bool:
        return self._auth_header() is not None

    def prefix(self) -> str:
        return re.sub(r"[^-_A-Za-z0-9]", "_", self.topic_prefix or "")[:40]

    def default_topic(self, user_name: str) -> str:
        """prefix + user name. User names may hold '.', which topics may not: such names (and names
        too long for a topic) get a short digest of the name, so two users never share a topic."""
        name = user_name or "user"
        topic = self.prefix() + name
        if TOPIC_RE.match(topic):
            return topic
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        cleaned = re.sub(r"[^-_A-Za-z0-9]", "_", name)
        return (self.prefix() + cleaned)[: 64 - 9] + "-" + digest

    def custom_topic_problem(self, topic: str) -> str | None:
        """Why a user may not choose `topic`: ntfy's rules, and it must start with the prefix (the
        platform's ntfy account is granted write access to prefix* topics only)."""
        problem = topic_problem(topic)
        if problem:
            return problem
        if self.prefix() and not topic.startswith(self.prefix()):
            return f"topic must start with {self.prefix()!r} (the platform can publish only to those topics)"
        return None

    def topic_for(self, user_name: str, settings: NotifySettings) -> str:
        return settings.topic or self.default_topic(user_name)

    def job_link(self, job_id: str) -> str | None:
        base = self.public_base_url.strip().rstrip("/")
        return f"{base}/ui/jobs/{job_id}" if base else None

    def download_link(self, job_id: str, name: str) -> str | None:
        base = self.public_base_url.strip().rstrip("/")
        return f"{base}/api/jobs/{job_id}/outputs/{name}" if base else None

    def _auth_header(self) -> str | None:
        secret = self.auth.strip()
        if not secret:
            creds = self._split_url()[1]
            secret = creds or ""
        if not secret:
            return None
        if secret.lower().startswith(("bearer ", "basic ")):
            return secret
        if secret.startswith("tk_") or ":" not in secret:
            return f"Bearer {secret}"
        return "Basic " + base64.b64encode(secret.encode()).decode()

    # -- publishing

    def publish(self, message: dict[str, Any]) -> Delivery:
        """Publish one message (ntfy JSON: topic, title, message, priority, tags, click, actions)."""
        if not self.configured:
            return Delivery("rejected", None, "ntfy is not configured: set NTFY_URL")
        base, _ = self._split_url()
        headers = {"Content-Type": "application/json"}
        auth = self._auth_header()
        if auth:
            headers["Authorization"] = auth
        import httpx  # here, not at import: every run worker imports this module (httpx costs ~0.5 s)

        try:
            resp = httpx.post(base + "/", content=json.dumps(message).encode(), headers=headers,
                              timeout=self.timeout_s)
        except httpx.TimeoutException:
            return Delivery("retry", None, "the ntfy server did not answer in time")
        except httpx.HTTPError as exc:
            return Delivery("retry", None, f"no connection to the ntfy server ({type(exc).__name__})")
        if 200 <= resp.status_code < 300:
            return Delivery("sent", resp.status_code, "delivered")
        said = ""
        try:
            said = str(resp.json().get("error", ""))[:200]
        except (ValueError, AttributeError):
            pass
        reason = f"the ntfy server answered HTTP {resp.status_code}" + (f" ({said})" if said else "")
        if resp.status_code in (401, 403):
            reason += ": check NTFY_AUTH (the platform's ntfy account needs write access to the topic)"
        elif resp.status_code == 413:
            reason += ": the message is too large"
        if resp.status_code == 429 or resp.status_code >= 500:
            return Delivery("retry", resp.status_code, reason)
        return Delivery("rejected", resp.status_code, reason)

    def backoff_s(self, attempts: int) -> float:
        """Seconds until the next attempt after `attempts` failed ones: exponential, jittered."""
        base = min(self.retry_max_s, 2.0 * (2 ** min(30, max(0, attempts - 1))))
        return min(self.retry_max_s, max(0.5, base * random.uniform(0.5, 1.5)))

    # -- messages

    def job_message(self, event: str, *, topic: str, priority: int, job_id: str, filename: str,
                    source_lang: str, target_lang: str, media_seconds: float | None = None,
                    run_seconds: float | None = None, stage_label: str | None = None,
                    error: str | None = None, download: str | None = None, what: str = "Dub") -> dict[str, Any]:
        """The ntfy message for a finished, failed, needs-review or cancelled dub job; `what` names the run
        ("Dub", or "Re-dub" after a segment edit, "Reprocessed dub"); for "review", `error` is "<check>: <reason>"."""
        langs = f"{source_lang} → {target_lang}"
        facts = [langs]
        if media_seconds is not None:
            facts.append(f"video {clock(media_seconds)}")
        if run_seconds is not None:
            facts.append(f"took {clock(run_seconds)}")
        short = filename if len(filename) <= 120 else filename[:117] + "…"
        if event == "success":
            title = f"{what} ready: {short} → {target_lang}"
            body = f"{filename}\n" + " · ".join(facts)
            tags = ["white_check_mark", "clapper"]
        elif event == "failure":
            title = f"{what} failed at {stage_label}: {short}" if stage_label else f"{what} failed: {short}"
            body = f"{filename}\n" + " · ".join(facts) + (f"\n{error}" if error else "")
            tags = ["x", "clapper"]
        elif event == "review":  # a blocking quality check stopped it: nothing was published
            title = f"{what} needs review: {error}" if error else f"{what} needs review: {short}"
            body = (f"{filename}\n" + " · ".join(facts)
                    + "\nNot published: open the job to publish it anyway, or fix lines and re-dub.")
            tags = ["warning", "clapper"]
        elif event == "cancel":
            title = f"{what} cancelled: {short}"
            body = f"{filename}\n" + " · ".join(facts)
            tags = ["no_entry_sign", "clapper"]
        else:
            raise ValueError(f"unknown event {event!r}")
        message: dict[str, Any] = {
            "topic": topic,
            "title": truncate_utf8(title, TITLE_LIMIT),
            "message": truncate_utf8(body, MESSAGE_LIMIT),
            "priority": int(priority),
            "tags": tags,
        }
        click = self.job_link(job_id)
        if click:
            message["click"] = click
            actions = [{"action": "view", "label": "Open job", "url": click, "clear": False}]
            link = self.download_link(job_id, download) if (event == "success" and download) else None
            if link:
                actions.append({"action": "view", "label": "Download", "url": link, "clear": False})
            message["actions"] = actions
        return message

    def test_message(self, topic: str, priority: int, user_name: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "topic": topic, "title": "Test notification from the dubbing platform",
            "message": f"Notifications for {user_name} work: finished, failed and cancelled dubs arrive here.",
            "priority": int(priority), "tags": ["bell"],
        }
        base = self.public_base_url.strip().rstrip("/")
        if base:
            message["click"] = f"{base}/ui/settings"
        return message


# ---------------------------------------------------------------------------------------- store


class NotifyStore:
    """Per-user notification settings and the outbox, in the job store's database."""

    def __init__(self, job_store: JobStore | None = None):
        self.job_store = job_store or JobStore()

    def _session(self) -> sa.orm.Session:
        return sa.orm.Session(self.job_store.engine())

    # -- settings

    def get_settings(self, user_id: str) -> NotifySettings:
        with self._session() as session:
            row = session.get(NotifySettingsRow, user_id)
            if row is None:
                return NotifySettings()
            return NotifySettings(enabled=row.enabled, topic=row.topic, priority=row.priority,
                                  on_success=row.on_success, on_failure=row.on_failure, on_cancel=row.on_cancel)

    def put_settings(self, user_id: str, **changes: Any) -> NotifySettings:
        """Change some settings (validated by the caller; topic "" or None means the default)."""
        known = set(NotifySettings.__dataclass_fields__)
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if changes.get("topic"):
            problem = topic_problem(changes["topic"])
            if problem:
                raise ValueError(problem)
        if "priority" in changes and not 1 <= int(changes["priority"]) <= 5:
            raise ValueError("priority must be between 1 and 5")
        with self._session() as session, session.begin():
            row = session.get(NotifySettingsRow, user_id)
            if row is None:
                row = NotifySettingsRow(user_id=user_id, **NotifySettings().to_dict(), updated_at=utcnow())
                session.add(row)
            for key, value in changes.items():
                setattr(row, key, (value or None) if key == "topic" else value)
            row.updated_at = utcnow()
        return self.get_settings(user_id)

    def topic_taken(self, topic: str, user_id: str, ntfy: NtfyResource) -> bool:
        """Whether `topic` is another user's chosen or default topic (a topic has one owner: nobody
        may read, or push into, another user's feed)."""
        from resources.accounts import UserRow

        with self._session() as session:
            chosen = session.scalar(sa.select(NotifySettingsRow.user_id).where(
                NotifySettingsRow.topic == topic, NotifySettingsRow.user_id != user_id))
            if chosen is not None:
                return True
            settings = {row.user_id: row.topic for row in session.scalars(sa.select(NotifySettingsRow))}
            for uid, name in session.execute(sa.select(UserRow.id, UserRow.name).where(UserRow.id != user_id)):
                if not settings.get(uid) and ntfy.default_topic(name) == topic:
                    return True
        return False

    # -- outbox

    def hold_detail(self, run_id: str, job_id: str | None, detail: dict) -> None:
        """Keep a failing stage's message for the run's failure notification (from the failure hook,
        before the run has ended: the run-status sensor decides whether a message is sent)."""
        with self._session() as session, session.begin():
            row = session.scalar(sa.select(OutboxRow).where(OutboxRow.run_id == run_id,
                                                            OutboxRow.event == "failure"))
            if row is None:
                session.add(OutboxRow(run_id=run_id, event="failure", job_id=job_id, status=HELD,
                                      detail=json.dumps(detail), created_at=utcnow()))
            elif row.status == HELD:
                row.detail = json.dumps(detail)

    def get(self, run_id: str, event: str) -> OutboxEntry | None:
        with self._session() as session:
            row = session.scalar(sa.select(OutboxRow).where(OutboxRow.run_id == run_id, OutboxRow.event == event))
            return OutboxEntry.from_row(row) if row else None

    def enqueue(self, run_id: str, event: str, *, job_id: str | None, user_id: str | None, topic: str | None,
                payload: dict | None, status: str = PENDING, reason: str | None = None) -> bool:
        """Write the notification of (run, event) once: True when this call wrote it, False when it
        was already there (a sensor tick seen twice never makes a second message)."""
        now = utcnow()
        values = dict(job_id=job_id, user_id=user_id, topic=topic, status=status,
                      payload=json.dumps(payload) if payload is not None else None,
                      next_attempt_at=now if status == PENDING else None, last_error=reason)
        try:
            with self._session() as session, session.begin():
                row = session.scalar(sa.select(OutboxRow).where(OutboxRow.run_id == run_id,
                                                                OutboxRow.event == event).with_for_update())
                if row is None:
                    session.add(OutboxRow(run_id=run_id, event=event, created_at=now, attempts=0, detail="{}",
                                          **values))
                    return True
                if row.status != HELD:
                    return False
                for key, value in values.items():
                    setattr(row, key, value)
                return True
        except sa.exc.IntegrityError:  # another writer inserted the same (run, event) first
            return False

    def claim_due(self, limit: int = 20) -> list[OutboxEntry]:
        """Pending messages whose time has come, each claimed for this caller (a claim that was not
        released in CLAIM_SECONDS, e.g. by a process that died, can be taken again)."""
        now = utcnow()
        due = sa.or_(
            sa.and_(OutboxRow.status == PENDING, OutboxRow.next_attempt_at <= now),
            sa.and_(OutboxRow.status == SENDING, OutboxRow.claimed_until < now),
        )
        claimed: list[OutboxEntry] = []
        with self._session() as session:
            ids = list(session.scalars(sa.select(OutboxRow.id).where(due).order_by(OutboxRow.id).limit(limit)))
        for row_id in ids:
            with self._session() as session, session.begin():
                result = session.execute(
                    sa.update(OutboxRow).where(OutboxRow.id == row_id, due)
                    .values(status=SENDING, claimed_until=now + dt.timedelta(seconds=CLAIM_SECONDS)))
                if result.rowcount == 1:
                    claimed.append(OutboxEntry.from_row(session.get(OutboxRow, row_id)))
        return claimed

    def record(self, entry_id: int, *, status: str, attempts: int, error: str | None,
               next_attempt_at: dt.datetime | None = None) -> None:
        with self._session() as session, session.begin():
            session.execute(sa.update(OutboxRow).where(OutboxRow.id == entry_id).values(
                status=status, attempts=attempts, last_error=error, next_attempt_at=next_attempt_at,
                claimed_until=None, sent_at=utcnow() if status == SENT else None))

    def entries(self, job_id: str | None = None, user_id: str | None = None) -> list[OutboxEntry]:
        stmt = sa.select(OutboxRow).order_by(OutboxRow.id)
        if job_id is not None:
            stmt = stmt.where(OutboxRow.job_id == job_id)
        if user_id is not None:
            stmt = stmt.where(OutboxRow.user_id == user_id)
        with self._session() as session:
            return [OutboxEntry.from_row(r) for r in session.scalars(stmt)]

    def purge(self, older_than_days: float = 30) -> int:
        cutoff = utcnow() - dt.timedelta(days=older_than_days)
        with self._session() as session, session.begin():
            result = session.execute(sa.delete(OutboxRow).where(
                OutboxRow.status.in_([SENT, SKIPPED, FAILED, HELD]), OutboxRow.created_at < cutoff))
            return result.rowcount or 0


def deliver_due(ntfy: NtfyResource, store: NotifyStore, limit: int = 20) -> list[tuple[OutboxEntry, Delivery]]:
    """Send the pending messages whose time has come; each attempt is logged and recorded."""
    logs.setup()
    done = []
    for entry in store.claim_due(limit):
        attempts = entry.attempts + 1
        delivery = ntfy.publish(entry.payload or {})
        status, next_at, error = SENT, None, None
        if delivery.outcome == "retry":
            age_h = (utcnow() - entry.created_at).total_seconds() / 3600
            if age_h >= ntfy.give_up_after_h:
                status, error = FAILED, f"gave up after {attempts} attempts: {delivery.reason}"
            else:
                status, error = PENDING, delivery.reason
                next_at = utcnow() + dt.timedelta(seconds=ntfy.backoff_s(attempts))
        elif delivery.outcome == "rejected":
            status, error = FAILED, delivery.reason
        store.record(entry.id, status=status, attempts=attempts, error=error, next_attempt_at=next_at)
        logs.log(log, "ntfy send", level=logging.INFO if delivery.ok else logging.WARNING,
                 outcome=delivery.outcome, status=delivery.status, reason=delivery.reason, attempt=attempts,
                 user_id=entry.user_id, job_id=entry.job_id, run_id=entry.run_id, kind=entry.event,
                 topic=entry.topic, request_id=logs.request_id.get(),
                 next_attempt_in_s=round((next_at - utcnow()).total_seconds(), 1) if next_at else None)
        done.append((entry, delivery))
    return done
