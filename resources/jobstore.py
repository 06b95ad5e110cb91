"""The job store: job records (a job's inputs, keyed by its Dagster partition key).

SQLAlchemy 2 with Alembic migrations; SQLite by default, Postgres when DATABASE_URL is set.
It holds no stage status: a job's state is read from Dagster's run and event log.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
import sqlalchemy.orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from resources import settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


# How long a run launch keeps retention off its job (the run shows in Dagster within seconds), and after how
# long a retention claim counts as left behind by a pass that died (deleting one job's files takes seconds).
LAUNCH_LEASE = dt.timedelta(minutes=10)
RETENTION_LEASE = dt.timedelta(hours=1)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "dub_jobs"  # prefixed: Dagster has its own "jobs" table in a shared database
    __table_args__ = (sa.Index("ix_dub_jobs_owner_seq", "owner", "seq"),)  # the job list (migration 0005)

    # seq orders jobs for the upload sensor's cursor (monotonic, unlike clocks); id is the job id
    # and the Dagster partition key.
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    upload_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, index=True)
    owner: Mapped[str | None] = mapped_column(sa.String(128), nullable=True, index=True)
    input_path: Mapped[str] = mapped_column(sa.Text, nullable=False)
    filename: Mapped[str] = mapped_column(sa.String(512), nullable=False)
    source_lang: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    target_lang: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    voice: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    options: Mapped[str] = mapped_column(sa.Text, nullable=False, default="{}")
    # A cancel asked for before the sensor launched the run (an input to the sensor, not a status).
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # Bumped by every saved segment edit (a re-dub's run key carries it). Migration 0009.
    edit_revision: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    pinned: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    # Retention tombstones (not a run status): the intermediates and input were removed; everything was.
    artifacts_expired_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    expired_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    # Claims (migration 0011) that keep retention and a run launch apart: a launcher claims the job before it
    # queues or launches a run; retention claims it before it deletes the job's files (see claim_launch).
    launch_claimed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    retention_claimed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class RunRequestRow(Base):
    """A run asked for outside the upload sensor (a re-dub, an admin's reprocess): an input queue that the
    run request sensor walks by seq. `key` is the Dagster run key, unique: asking twice launches once."""

    __tablename__ = "dub_run_requests"

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(200), unique=True, nullable=False)
    job_id: Mapped[str] = mapped_column(sa.String(64), nullable=False, index=True)
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    stages: Mapped[str] = mapped_column(sa.Text, nullable=False)
    reason: Mapped[str] = mapped_column(sa.Text, nullable=False, default="", server_default="")
    requested_by: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    accept: Mapped[str] = mapped_column(sa.Text, nullable=False, default="[]", server_default="[]")


@dataclass(frozen=True)
class RunRequestRecord:
    seq: int
    key: str
    job_id: str
    kind: str
    stages: list[str]
    reason: str
    requested_by: str | None
    created_at: dt.datetime
    accept: tuple[str, ...] = ()  # quality checks a reviewer accepted ("publish anyway")

    @classmethod
    def from_row(cls, row: RunRequestRow) -> "RunRequestRecord":
        return cls(seq=row.seq, key=row.key, job_id=row.job_id, kind=row.kind, stages=json.loads(row.stages),
                   reason=row.reason, requested_by=row.requested_by, created_at=_utc(row.created_at),
                   accept=tuple(json.loads(row.accept or "[]")))


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite keeps no zone; we always store UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


TTS_ENGINES = ("auto", "espeak", "piper", "xtts")
TRANSLATORS = ("auto", "apertium", "argos", "libretranslate", "passthrough")
CONTAINERS = ("auto", "mkv", "mp4")
FITS = ("review", "extend_video", "cut")


@dataclass(frozen=True)
class JobOptions:
    """Per-job knobs, stored as JSON in the job record."""

    tts_engine: str = "auto"  # auto | espeak | piper | xtts
    translator: str = "auto"  # auto | apertium | argos | libretranslate | passthrough
    container: str = "auto"  # auto | mkv | mp4 (auto: MKV, or MP4 for a rotated picture; see output_container)
    max_speed: float = 1.35
    duck_db: float = -14.0
    target_lufs: float = -16.0
    # what happens to speech that does not fit even at max_speed (dubbing_assets/fit.py):
    # review (the job needs review) | extend_video (the picture is held) | cut (cut, with a warning)
    fit: str = "review"
    max_shift_s: float = 0.5  # how much earlier than its original start a segment may begin
    loudness_tolerance_lu: float = 1.0  # the loudness check: target_lufs +- this
    max_true_peak_db: float = -1.0  # the loudness check: true peak at most this (dBTP)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "JobOptions":
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown job option(s): {', '.join(sorted(unknown))}")
        for key in ("max_speed", "duck_db", "target_lufs", "max_shift_s", "loudness_tolerance_lu",
                    "max_true_peak_db"):
            if key in data:
                try:
                    data[key] = float(data[key])
                except (TypeError, ValueError):
                    raise ValueError(f"{key} must be a number, not {data[key]!r}") from None
        opts = cls(**data)
        if opts.tts_engine not in TTS_ENGINES:
            raise ValueError(f"tts_engine must be one of {', '.join(TTS_ENGINES)}, not {opts.tts_engine!r}")
        if opts.translator not in TRANSLATORS:
            raise ValueError(f"translator must be one of {', '.join(TRANSLATORS)}, not {opts.translator!r}")
        if opts.container not in CONTAINERS:
            raise ValueError(f"container must be auto, mkv or mp4, not {opts.container!r}")
        if not 1.0 <= float(opts.max_speed) <= 2.0:
            raise ValueError("max_speed must be between 1.0 and 2.0")
        if opts.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, not {opts.fit!r}")
        if not 0.0 <= float(opts.max_shift_s) <= 2.0:
            raise ValueError("max_shift_s must be between 0 and 2 seconds")
        if not 0.1 <= float(opts.loudness_tolerance_lu) <= 10.0:
            raise ValueError("loudness_tolerance_lu must be between 0.1 and 10")
        if not -10.0 <= float(opts.max_true_peak_db) <= 0.0:
            raise ValueError("max_true_peak_db must be between -10 and 0 dBTP")
        if not -40.0 <= float(opts.target_lufs) <= -5.0:
            raise ValueError("target_lufs must be between -40 and -5 LUFS")
        return opts

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class JobRecord:
    id: str
    created_at: dt.datetime
    input_path: str
    filename: str
    source_lang: str
    target_lang: str
    voice: str | None = None
    owner: str | None = None
    options: JobOptions = field(default_factory=JobOptions)
    upload_id: str | None = None
    seq: int = 0
    cancel_requested_at: dt.datetime | None = None
    edit_revision: int = 0
    pinned: bool = False
    artifacts_expired_at: dt.datetime | None = None
    expired_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: JobRow) -> "JobRecord":
        return cls(
            id=row.id,
            created_at=_utc(row.created_at),
            input_path=row.input_path,
            filename=row.filename,
            source_lang=row.source_lang,
            target_lang=row.target_lang,
            voice=row.voice,
            owner=row.owner,
            options=JobOptions.from_dict(json.loads(row.options or "{}")),
            upload_id=row.upload_id,
            seq=row.seq,
            cancel_requested_at=_utc(row.cancel_requested_at),
            edit_revision=row.edit_revision or 0,
            pinned=bool(row.pinned),
            artifacts_expired_at=_utc(row.artifacts_expired_at),
            expired_at=_utc(row.expired_at),
        )


def new_job_id() -> str:
    """A job id is also its Dagster partition key: 128 random bits, URL- and path-safe."""
    return "j" + secrets.token_hex(16)


_ENGINES: dict[str, sa.Engine] = {}  # by URL; a separate pool by "<purpose> <URL>"
_MIGRATED: set[str] = set()
_LOCK = threading.Lock()
# engines apart from the request pool, by purpose (Postgres only)
_POOLS = {
    # upload locks: a lock holds its connection while a chunk's body arrives (seconds on a phone), which
    # must not starve the other requests; a few kept open (a new connection costs ~5 ms), more on demand
    "locks": dict(pool_size=2, max_overflow=48, isolation_level="AUTOCOMMIT"),
}


def get_engine(url: str, purpose: str = "") -> sa.Engine:
    """The process's engine for a database URL (one per URL), or a separate pool for `purpose`."""
    url = settings.normalise_db_url(url)
    key = f"{purpose} {url}" if purpose else url
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(url, connect_args={"timeout": 30})
            else:
                engine = sa.create_engine(url, pool_pre_ping=True, **_POOLS.get(purpose, {}))
            _ENGINES[key] = engine
        return engine


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision (idempotent, once per process and URL)."""
    url = settings.normalise_db_url(url)
    if url in _MIGRATED:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = get_engine(url)
    command.upgrade(cfg, "head")
    _MIGRATED.add(url)


class JobStore(dg.ConfigurableResource):
    """Job records, read by the pipeline's assets and written by the CLI and the upload service."""

    database_url: str = ""

    def url(self) -> str:
        return settings.normalise_db_url(self.database_url) if self.database_url else settings.database_url()

    def engine(self) -> sa.Engine:
        url = self.url()
        migrate(url)
        return get_engine(url)

    def create_job(
        self,
        *,
        input_path: str,
        filename: str,
        source_lang: str,
        target_lang: str,
        voice: str | None = None,
        owner: str | None = None,
        options: JobOptions | dict | None = None,
        job_id: str | None = None,
        upload_id: str | None = None,
        session: sa.orm.Session | None = None,
    ) -> JobRecord:
        """Create a job record. Pass `session` to create it inside the caller's transaction."""
        if isinstance(options, dict) or options is None:
            options = JobOptions.from_dict(options)
        job_id = job_id or new_job_id()
        row = JobRow(
            id=job_id,
            created_at=dt.datetime.now(dt.timezone.utc),
            owner=owner,
            input_path=str(input_path),
            filename=filename,
            source_lang=source_lang,
            target_lang=target_lang,
            voice=voice,
            options=json.dumps(options.to_dict()),
            upload_id=upload_id,
        )
        if session is not None:
            session.add(row)
            session.flush()
            return JobRecord.from_row(row)
        with sa.orm.Session(self.engine()) as own, own.begin():
            own.add(row)
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        with sa.orm.Session(self.engine()) as session:
            row = session.scalar(sa.select(JobRow).where(JobRow.id == job_id))
            if row is None:
                raise KeyError(f"no job record for partition {job_id!r} in the job store")
            return JobRecord.from_row(row)

    def request_cancel(self, job_id: str) -> None:
        with sa.orm.Session(self.engine()) as session, session.begin():
            session.execute(sa.update(JobRow).where(JobRow.id == job_id, JobRow.cancel_requested_at.is_(None))
                            .values(cancel_requested_at=dt.datetime.now(dt.timezone.utc)))

    def jobs_after(self, seq: int, limit: int = 100, uploaded_only: bool = True) -> list[JobRecord]:
        """Jobs created after `seq`, oldest first (the upload sensor's cursor walk)."""
        stmt = sa.select(JobRow).where(JobRow.seq > seq).order_by(JobRow.seq).limit(limit)
        if uploaded_only:
            stmt = stmt.where(JobRow.upload_id.is_not(None))
        with sa.orm.Session(self.engine()) as session:
            return [JobRecord.from_row(r) for r in session.scalars(stmt)]

    def list_jobs(self, owner: str | None = None, limit: int = 100, offset: int = 0) -> list[JobRecord]:
        stmt = sa.select(JobRow).order_by(JobRow.seq.desc()).limit(limit).offset(offset)
        if owner is not None:
            stmt = stmt.where(JobRow.owner == owner)
        with sa.orm.Session(self.engine()) as session:
            return [JobRecord.from_row(r) for r in session.scalars(stmt)]

    # --- edits, pins, retention tombstones, run requests (issue 10) ---------------------------------

    def bump_revision(self, job_id: str, expected: int) -> int | None:
        """Count one more saved segment edit if the job is still at revision `expected` (compare and set, so two
        API processes saving at once cannot both win); the new revision, or None when another save came first."""
        with sa.orm.Session(self.engine()) as session, session.begin():
            done = session.execute(sa.update(JobRow).where(JobRow.id == job_id, JobRow.edit_revision == expected)
                                   .values(edit_revision=expected + 1))
            return expected + 1 if done.rowcount == 1 else None

    def set_pinned(self, job_id: str, pinned: bool) -> None:
        with sa.orm.Session(self.engine()) as session, session.begin():
            session.execute(sa.update(JobRow).where(JobRow.id == job_id).values(pinned=bool(pinned)))

    def claim_launch(self, job_id: str) -> bool:
        """A run of this job is about to be queued or launched (a re-dub, a retry, a publish, a reprocess): True,
        and retention keeps off the job for LAUNCH_LEASE, long enough for the run to show in Dagster, where
        retention sees it. False while retention is deleting the job's files, or once their tombstone is set:
        the run must not start. One atomic UPDATE, so it and claim_retention never both succeed."""
        now = dt.datetime.now(dt.timezone.utc)
        with sa.orm.Session(self.engine()) as session, session.begin():
            done = session.execute(sa.update(JobRow).where(
                JobRow.id == job_id, JobRow.artifacts_expired_at.is_(None), JobRow.expired_at.is_(None),
                sa.or_(JobRow.retention_claimed_at.is_(None), JobRow.retention_claimed_at < now - RETENTION_LEASE))
                .values(launch_claimed_at=now))
        return done.rowcount == 1

    def claim_retention(self, job_id: str) -> bool:
        """Retention is about to delete this job's files: True unless a run launch claimed it within LAUNCH_LEASE
        or another retention pass holds it (a claim older than RETENTION_LEASE is a pass that died: taken over).
        After a True, retention reads the job's runs again before deleting anything, and ends with
        release_retention."""
        now = dt.datetime.now(dt.timezone.utc)
        with sa.orm.Session(self.engine()) as session, session.begin():
            done = session.execute(sa.update(JobRow).where(
                JobRow.id == job_id,
                sa.or_(JobRow.launch_claimed_at.is_(None), JobRow.launch_claimed_at < now - LAUNCH_LEASE),
                sa.or_(JobRow.retention_claimed_at.is_(None), JobRow.retention_claimed_at < now - RETENTION_LEASE))
                .values(retention_claimed_at=now))
        return done.rowcount == 1

    def release_retention(self, job_id: str) -> None:
        with sa.orm.Session(self.engine()) as session, session.begin():
            session.execute(sa.update(JobRow).where(JobRow.id == job_id).values(retention_claimed_at=None))

    def mark_expired(self, job_id: str, *, artifacts: bool = False, everything: bool = False) -> None:
        """Set the retention tombstones (each only once: the first time is kept)."""
        now = dt.datetime.now(dt.timezone.utc)
        with sa.orm.Session(self.engine()) as session, session.begin():
            if artifacts or everything:
                session.execute(sa.update(JobRow).where(JobRow.id == job_id, JobRow.artifacts_expired_at.is_(None))
                                .values(artifacts_expired_at=now))
            if everything:
                session.execute(sa.update(JobRow).where(JobRow.id == job_id, JobRow.expired_at.is_(None))
                                .values(expired_at=now))

    def add_run_request(self, job_id: str, *, kind: str, stages: list[str], key: str, reason: str = "",
                        requested_by: str | None = None, accept: list[str] = ()) -> tuple[RunRequestRecord, bool]:
        """Queue a run for the run request sensor: (the request, True if new). The key is unique: asking again
        with the same key returns the first request and queues nothing."""
        def first() -> RunRequestRecord | None:
            with sa.orm.Session(self.engine()) as session:
                row = session.scalar(sa.select(RunRequestRow).where(RunRequestRow.key == key))
                return RunRequestRecord.from_row(row) if row is not None else None

        existing = first()
        if existing is not None:
            return existing, False
        row = RunRequestRow(key=key, job_id=job_id, kind=kind, stages=json.dumps(list(stages)), reason=reason[:2000],
                            requested_by=requested_by, created_at=dt.datetime.now(dt.timezone.utc),
                            accept=json.dumps(sorted(accept)))
        try:
            with sa.orm.Session(self.engine(), expire_on_commit=False) as session, session.begin():
                session.add(row)
        except sa.exc.IntegrityError:  # the same key, queued at the same moment by another process
            return first(), False
        return RunRequestRecord.from_row(row), True

    def run_requests_after(self, seq: int, limit: int = 100) -> list[RunRequestRecord]:
        stmt = sa.select(RunRequestRow).where(RunRequestRow.seq > seq).order_by(RunRequestRow.seq).limit(limit)
        with sa.orm.Session(self.engine()) as session:
            return [RunRequestRecord.from_row(r) for r in session.scalars(stmt)]

    def run_requests_of(self, job_id: str) -> list[RunRequestRecord]:
        stmt = sa.select(RunRequestRow).where(RunRequestRow.job_id == job_id).order_by(RunRequestRow.seq)
        with sa.orm.Session(self.engine()) as session:
            return [RunRequestRecord.from_row(r) for r in session.scalars(stmt)]
