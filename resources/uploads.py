"""The upload store: resumable uploads (the chunk API and tus share it), in the job store's database
plus one preallocated file per upload under <data>/uploads/<id>/data.

Upload ids are 128 random bits (32 hex digits); anything else is simply not found. Files are named
by id only, so client file names never reach a path."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from resources import disk, readiness, settings
from resources.accounts import User, as_utc, utcnow
from resources.jobstore import Base, JobOptions, JobRecord, JobStore

ID_RE = re.compile(r"^[0-9a-f]{32}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
MEDIA_TYPES = ("video/", "audio/")
EXTRA_MEDIA_TYPES = {"application/x-matroska", "application/mp4", "application/ogg", "application/vnd.rn-realmedia"}
ACTIVE = ("receiving", "complete")
WRITE_BLOCK = 1024 * 1024  # a request body is gathered into blocks of this size, hashed and written
RUNNING_HASHES_MAX = 1024  # uploads whose whole-file sha256 is kept up to date as bytes arrive


class UploadError(Exception):
    """A refused request: HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str, upload: "UploadView | None" = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.upload = upload


class UploadRow(Base):
    __tablename__ = "dub_uploads"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(32), index=True, nullable=False)
    filename: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    content_type: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    chunk_bytes: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    total_chunks: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    received: Mapped[str] = mapped_column(sa.Text, nullable=False)  # one '0'/'1' per chunk
    received_bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    sha256: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False)  # receiving|complete|aborted|expired
    protocol: Mapped[str] = mapped_column(sa.String(8), nullable=False)  # chunks|tus
    meta: Mapped[str] = mapped_column(sa.Text, nullable=False, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False, index=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    job_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)


@dataclass(frozen=True)
class UploadView:
    id: str
    owner: str
    filename: str
    content_type: str
    size_bytes: int
    chunk_bytes: int
    total_chunks: int
    received: str
    received_bytes: int
    sha256: str | None
    state: str
    protocol: str
    meta: dict
    created_at: dt.datetime
    expires_at: dt.datetime
    job_id: str | None

    @classmethod
    def from_row(cls, r: UploadRow) -> "UploadView":
        return cls(r.id, r.owner, r.filename, r.content_type, r.size_bytes, r.chunk_bytes, r.total_chunks,
                   r.received, r.received_bytes, r.sha256, r.state, r.protocol, json.loads(r.meta or "{}"),
                   as_utc(r.created_at), as_utc(r.expires_at), r.job_id)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index`."""
        offset = index * self.chunk_bytes
        return offset, min(self.chunk_bytes, self.size_bytes - offset)

    @property
    def next_missing(self) -> int | None:
        i = self.received.find("0")
        return None if i < 0 else i

    def status(self) -> dict:
        return {
            "upload_id": self.id,
            "filename": self.filename,
            "state": self.state,
            "protocol": self.protocol,
            "received_bytes": self.received_bytes,
            "total_bytes": self.size_bytes,
            "progress": round(self.received_bytes / self.size_bytes, 6) if self.size_bytes else 0.0,
            "chunk_bytes": self.chunk_bytes,
            "total_chunks": self.total_chunks,
            "received": [c == "1" for c in self.received],
            "next_missing": self.next_missing,
            "missing_count": self.received.count("0"),
            "expires_at": self.expires_at.isoformat(),
            "job_id": self.job_id,
        }


def clean_filename(name: str) -> str:
    """The client's file name, checked: it is shown and used for output names, never as a path."""
    if not isinstance(name, str) or not name.strip():
        raise UploadError(422, "filename is required")
    name = name.strip()
    if len(name.encode()) > 255:
        raise UploadError(422, "filename is longer than 255 bytes")
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise UploadError(422, "filename contains NUL or control characters")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".."):
        raise UploadError(422, "filename must be a plain file name, not a path")
    return name


def is_media_type(content_type: str) -> bool:
    ct = (content_type or "").split(";")[0].strip().lower()
    return ct.startswith(MEDIA_TYPES) or ct in EXTRA_MEDIA_TYPES


def write_all(fd: int, data, offset: int) -> None:
    """pwrite until every byte is written (a regular file may take fewer bytes than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class BodyWriter:
    """A request body written into an upload's file at `offset` as it arrives, and fed to `hashers`.

    Pieces (as small as the socket delivers them) are gathered into blocks of WRITE_BLOCK bytes; each
    block is hashed and written by a worker thread while the event loop receives the next one (hashlib
    and pwrite release the GIL, so on two cores they overlap with the receiving). One block in flight
    at a time: the server holds about two blocks of a body whatever its size, and blocks land in order.
    The file descriptor is closed by `close()` (after the block in flight, even when the request was
    cancelled)."""

    def __init__(self, fd: int | None, offset: int, hashers: list):
        self.fd = fd
        self.offset = offset
        self.hashers = [h for h in hashers if h is not None]
        self.written = 0  # bytes handed to the writer (all of them are on disk after flush())
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future | None = None

    def _write(self, block: bytes, at: int) -> None:
        for h in self.hashers:
            h.update(block)
        if self.fd is not None:
            write_all(self.fd, block, at)

    async def _submit(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if not self._buffered:
            return
        block = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces, self._buffered = [], 0
        at = self.offset + self.written
        self.written += len(block)
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._write, block, at)

    async def add(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._buffered += len(piece)
        if self._buffered >= WRITE_BLOCK:
            await self._submit()

    async def flush(self) -> None:
        """Every byte added so far is hashed and written (not yet synced)."""
        await self._submit()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    @property
    def received(self) -> int:
        return self.written + self._buffered

    def close(self) -> None:
        pending, fd = self._pending, self.fd
        self.fd = None
        if fd is None:
            return
        if pending is None:
            os.close(fd)
            return

        def after_write(future: asyncio.Future) -> None:  # never close under a write in flight
            if not future.cancelled():
                future.exception()  # the request already failed; this one is not worth a warning
            os.close(fd)

        pending.add_done_callback(after_write)


LOCK_WAIT_S = float(os.environ.get("UPLOAD_LOCK_WAIT_S", "120"))
_LOCK_ENGINES: dict[str, sa.Engine] = {}
_LOCK_ENGINES_LOCK = threading.Lock()


def _lock_engine(engine: sa.Engine) -> sa.Engine:
    """Connections for upload locks, apart from the request pool: a lock holds its connection while a
    chunk's body arrives (seconds on a phone), which must not starve the other requests."""
    url = engine.url.render_as_string(hide_password=False)
    with _LOCK_ENGINES_LOCK:
        if url not in _LOCK_ENGINES:
            # a few kept open (a new Postgres connection costs ~5 ms per chunk), more on demand
            _LOCK_ENGINES[url] = sa.create_engine(url, pool_size=2, max_overflow=48, pool_pre_ping=True,
                                                  isolation_level="AUTOCOMMIT")
        return _LOCK_ENGINES[url]


def lock_key(upload_id: str) -> int:
    """The upload's Postgres advisory lock key: 64 bits of a hash, namespaced to uploads."""
    return int.from_bytes(hashlib.sha256(b"dub-upload:" + upload_id.encode()).digest()[:8], "big", signed=True)


class CrossProcessLock:
    """An upload's lock across API processes and machines: a Postgres session advisory lock on a
    connection of its own, held while the request writes (chunk, tus PATCH, completion, deletion).
    Postgres drops it when the connection ends, so a crashed API process never leaves an upload
    locked. On SQLite (the embedded, one-process deployment) there is nothing to take: the
    in-process lock is the whole story."""

    def __init__(self, engine: sa.Engine, upload_id: str):
        self.engine, self.key, self.conn = engine, lock_key(upload_id), None

    def acquire(self, wait_s: float = LOCK_WAIT_S) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        import time

        conn = _lock_engine(self.engine).connect()
        deadline, pause = time.monotonic() + wait_s, 0.01
        try:
            while not conn.execute(sa.select(sa.func.pg_try_advisory_lock(self.key))).scalar():
                if time.monotonic() > deadline:
                    raise UploadError(409, "another request is writing this upload right now; retry in a "
                                           "few seconds")
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def release(self) -> None:
        if self.conn is None:
            return
        try:
            if not self.conn.execute(sa.select(sa.func.pg_advisory_unlock(self.key))).scalar():
                self.conn.invalidate()  # not ours any more: never hand this session back to the pool
        except sa.exc.DBAPIError:
            self.conn.invalidate()  # the connection is gone, and the lock with it
        finally:
            self.conn.close()
            self.conn = None


class UploadStore:
    def __init__(self, store: JobStore | None = None, root: Path | None = None):
        self.store = store or JobStore()
        self.root = Path(root) if root else settings.data_dir() / "uploads"
        # upload id -> (bytes covered, sha256 of bytes [0, covered)): the whole-file hash kept up to date
        # while an upload's bytes arrive in order, so completion does not read the file again
        self._hashes: "collections.OrderedDict[str, tuple[int, object]]" = collections.OrderedDict()
        self._hashes_lock = threading.Lock()

    def cross_process_lock(self, upload_id: str) -> CrossProcessLock:
        return CrossProcessLock(self.store.engine(), upload_id)

    # settings ----------------------------------------------------------------------------------
    @staticmethod
    def max_upload_mb() -> int:
        return int(os.environ.get("MAX_UPLOAD_MB", "4096"))

    @staticmethod
    def chunk_size() -> int:
        return int(os.environ.get("UPLOAD_CHUNK_BYTES", str(8 * 1024 * 1024)))

    @staticmethod
    def ttl() -> dt.timedelta:
        return dt.timedelta(hours=float(os.environ.get("UPLOAD_TTL_HOURS", "24")))

    @staticmethod
    def quota_bytes() -> int:
        return int(float(os.environ.get("USER_QUOTA_GB", "50")) * 1024**3)

    def session(self) -> Session:
        return Session(self.store.engine(), expire_on_commit=False)

    def data_path(self, upload_id: str) -> Path:
        if not ID_RE.match(upload_id):
            raise UploadError(404, "upload not found")
        return self.root / upload_id / "data"

    # lifecycle ---------------------------------------------------------------------------------
    def init(self, user: User, *, filename: str, size_bytes, content_type: str, sha256: str | None = None,
             protocol: str = "chunks", meta: dict | None = None) -> UploadView:
        filename = clean_filename(filename)
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
            raise UploadError(422, "size_bytes must be a whole number of bytes")
        if size_bytes <= 0:
            raise UploadError(422, "size_bytes must be more than 0")
        limit = self.max_upload_mb() * 1024 * 1024
        if size_bytes > limit:
            raise UploadError(413, f"file is {size_bytes} bytes; the limit is {self.max_upload_mb()} MB "
                                   "(MAX_UPLOAD_MB)")
        if not is_media_type(content_type):
            raise UploadError(415, f"content type {str(content_type)[:80]!r} is not video/* or audio/*")
        if len(content_type.split(";")[0].strip()) > 128:  # the column is VARCHAR(128): Postgres would refuse it
            raise UploadError(422, "content_type is longer than 128 characters")
        if sha256 is not None:
            sha256 = str(sha256).lower()
            if not SHA256_RE.match(sha256):
                raise UploadError(422, "sha256 must be 64 hex digits")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            disk.ensure_free_space(size_bytes, self.root, action="this upload")
        except disk.DiskSpaceError as exc:
            raise UploadError(507, exc.message) from None
        chunk = self.chunk_size()
        total = -(-size_bytes // chunk)
        now = utcnow()
        row = UploadRow(id=secrets.token_hex(16), owner=user.id, filename=filename,
                        content_type=content_type.split(";")[0].strip().lower(), size_bytes=size_bytes,
                        chunk_bytes=chunk, total_chunks=total, received="0" * total, received_bytes=0,
                        sha256=sha256, state="receiving", protocol=protocol, meta=json.dumps(meta or {}),
                        created_at=now, expires_at=now + self.ttl())
        with self.session() as s, s.begin():
            used = s.scalar(sa.select(sa.func.coalesce(sa.func.sum(UploadRow.size_bytes), 0))
                            .where(UploadRow.owner == user.id, UploadRow.state.in_(ACTIVE))) or 0
            if used + size_bytes > self.quota_bytes():
                raise UploadError(413, f"upload quota exceeded: {used // 1024**2} MB used of "
                                       f"{self.quota_bytes() // 1024**2} MB (USER_QUOTA_GB); delete old uploads")
            s.add(row)
            s.flush()
            path = self.data_path(row.id)
            path.parent.mkdir(parents=True)
            try:
                with open(path, "wb") as fh:
                    fh.truncate(size_bytes)  # sparse: chunks are written at their offsets
            except OSError:
                self._remove_data(row.id)
                raise
        return UploadView.from_row(row)

    def get(self, upload_id: str, user: User | None) -> UploadView:
        """The upload, if `user` owns it (admins: any); else 404. Expired uploads are swept here too."""
        if not isinstance(upload_id, str) or not ID_RE.match(upload_id):
            raise UploadError(404, "upload not found")
        with self.session() as s, s.begin():
            row = s.get(UploadRow, upload_id)
            if row is None or (user is not None and row.owner != user.id and not user.is_admin):
                raise UploadError(404, "upload not found")
            if row.state == "receiving" and as_utc(row.expires_at) < utcnow():
                row.state = "expired"
                self._remove_data(row.id)
            return UploadView.from_row(row)

    def require_receiving(self, view: UploadView) -> None:
        if view.state == "complete":
            raise UploadError(409, "upload is already complete", view)
        if view.state == "expired":
            raise UploadError(410, "upload expired; start a new one", view)
        if view.state == "aborted":
            raise UploadError(410, "upload was deleted", view)

    def mark_chunk(self, upload_id: str, index: int) -> UploadView:
        with self.session() as s, s.begin():
            row = s.get(UploadRow, upload_id, with_for_update=True)
            if row.received[index] != "1":
                row.received = row.received[:index] + "1" + row.received[index + 1:]
                row.received_bytes += UploadView.from_row(row).chunk_range(index)[1]
            row.expires_at = utcnow() + self.ttl()  # an upload that makes progress stays alive
            return UploadView.from_row(row)

    def set_offset(self, upload_id: str, offset: int) -> UploadView:
        """tus: bytes [0, offset) are on disk; chunks they cover count as received."""
        with self.session() as s, s.begin():
            row = s.get(UploadRow, upload_id, with_for_update=True)
            if not row.received_bytes <= offset <= row.size_bytes:
                raise UploadError(409, f"offset {offset} is outside {row.received_bytes}..{row.size_bytes}")
            full = offset // row.chunk_bytes if offset < row.size_bytes else row.total_chunks
            row.received = "1" * full + row.received[full:]
            row.received_bytes = offset
            row.expires_at = utcnow() + self.ttl()  # an upload that makes progress stays alive
            return UploadView.from_row(row)

    def mark_complete(self, upload_id: str, job: JobRecord | None, session: Session) -> None:
        row = session.get(UploadRow, upload_id, with_for_update=True)
        row.state = "complete"
        row.completed_at = utcnow()
        row.job_id = job.id if job else None

    # the running whole-file sha256 (this process's; any other case falls back to reading the file)
    def running_hash(self, upload_id: str, offset: int):
        """A copy of the upload's running sha256 when it covers exactly [0, offset), to be fed the bytes
        written at `offset`; else None. Bytes about to be written again below what the hash covers make
        it worthless: it is dropped."""
        with self._hashes_lock:
            covered, h = self._hashes.get(upload_id, (0, None))
            if h is None and offset == 0:
                return hashlib.sha256()
            if h is not None and covered == offset:
                return h.copy()
            if h is not None and offset < covered:
                del self._hashes[upload_id]
            return None

    def keep_running_hash(self, upload_id: str, offset: int, length: int, h) -> None:
        """Bytes [offset, offset + length) are on disk, recorded, and were fed to `h` (from
        running_hash(upload_id, offset)): it now covers [0, offset + length)."""
        if h is None:
            return
        with self._hashes_lock:
            covered, _ = self._hashes.get(upload_id, (0, None))
            if covered != offset:
                return
            self._hashes[upload_id] = (offset + length, h)
            self._hashes.move_to_end(upload_id)
            while len(self._hashes) > RUNNING_HASHES_MAX:
                self._hashes.popitem(last=False)

    def drop_running_hash(self, upload_id: str) -> None:
        with self._hashes_lock:
            self._hashes.pop(upload_id, None)

    def file_sha256(self, upload_id: str, size: int | None = None) -> str:
        """The sha256 of the upload's file: from the running hash when it covers all `size` bytes,
        else read from disk."""
        with self._hashes_lock:
            covered, running = self._hashes.get(upload_id, (0, None))
        if running is not None and size is not None and covered == size:
            return running.hexdigest()
        h = hashlib.sha256()
        with open(self.data_path(upload_id), "rb") as fh:
            while block := fh.read(4 * 1024 * 1024):
                h.update(block)
        return h.hexdigest()

    def region_sha256(self, upload_id: str, offset: int, length: int) -> str:
        h = hashlib.sha256()
        with open(self.data_path(upload_id), "rb") as fh:
            fh.seek(offset)
            left = length
            while left > 0 and (block := fh.read(min(left, 4 * 1024 * 1024))):
                h.update(block)
                left -= len(block)
        return h.hexdigest()

    def create_job(self, view: UploadView, user: User, *, target_lang: str, source_lang: str = "en",
                   voice: str | None = None, options: dict | None = None) -> JobRecord:
        """Turn a complete upload into a dub job (one transaction: job row + upload state)."""
        for field, value in (("target_lang", target_lang), ("source_lang", source_lang)):
            if not isinstance(value, str) or not LANG_RE.match(value):
                raise UploadError(422, f"{field} {str(value)[:20]!r} is not a language code like 'es' or 'pt-BR'")
        if voice is not None and (not isinstance(voice, str) or len(voice) > 128 or "\x00" in voice):
            raise UploadError(422, "voice must be a short name like 'espeak:es'")
        try:
            opts = JobOptions.from_dict(options)
        except (ValueError, TypeError) as exc:
            # the message may quote a key as sent: lone surrogates (JSON \ud800) would break the response
            raise UploadError(422, f"options: {str(exc).encode('utf-8', 'backslashreplace').decode()}") from None
        for key in ("max_speed", "duck_db", "target_lufs"):  # NaN/inf pass float() and break the job's JSON
            if not math.isfinite(getattr(opts, key)):
                raise UploadError(422, f"options: {key} must be a finite number")
        reason = readiness.job_unready_reason(source_lang, target_lang, voice, opts)
        if reason:  # refused now, not halfway through the run
            raise UploadError(422, reason, view)
        try:
            disk.ensure_free_space(0, self.root, action="a new job")
        except disk.DiskSpaceError as exc:
            raise UploadError(507, f"{exc.message}. The upload is kept: complete it again then", view) from None
        with self.session() as s, s.begin():
            job = self.store.create_job(
                input_path=str(self.data_path(view.id)), filename=view.filename, source_lang=source_lang,
                target_lang=target_lang, voice=voice, owner=user.id if user else view.owner, options=opts,
                upload_id=view.id, session=s)
            self.mark_complete(view.id, job, s)
        self.drop_running_hash(view.id)
        return job

    def delete(self, view: UploadView) -> None:
        with self.session() as s, s.begin():
            row = s.get(UploadRow, view.id, with_for_update=True)
            if row.state == "complete" and row.job_id:
                raise UploadError(409, "upload already became a job; cancel or delete the job instead", view)
            row.state = "aborted"
        self.drop_running_hash(view.id)
        self._remove_data(view.id)

    def expire_abandoned(self, now: dt.datetime | None = None, limit: int = 500) -> int:
        """Mark uploads past their expiry as expired and remove their partial data."""
        now = now or utcnow()
        with self.session() as s, s.begin():
            rows = s.scalars(sa.select(UploadRow).where(UploadRow.state == "receiving",
                                                        UploadRow.expires_at < now).limit(limit)).all()
            for row in rows:
                row.state = "expired"
        for row in rows:
            self._remove_data(row.id)
        return len(rows)

    def _remove_data(self, upload_id: str) -> None:
        shutil.rmtree(self.root / upload_id, ignore_errors=True)
