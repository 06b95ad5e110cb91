"""The upload store: resumable uploads (the chunk API and tus share it), in the job store's database
plus the bytes: one preallocated file per upload under <data>/uploads/<id>/data (DUBBING_STORAGE=local),
or an S3 multipart upload for the key uploads/<id>/data (DUBBING_STORAGE=s3, see `S3 uploads` below).

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

from resources import disk, logs, readiness, s3, settings
from resources.accounts import User, as_utc, utcnow
from resources.jobstore import Base, JobOptions, JobRecord, JobStore, get_engine

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

    def __init__(self, status: int, message: str, upload: "UploadView | None" = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.upload = upload
        self.headers = headers or {}


S3_RETRY_AFTER_S = 5


def s3_unavailable(action: str, upload: "UploadView | None" = None) -> UploadError:
    """S3 unreachable or overloaded: 503 + Retry-After. What was received so far is kept."""
    return UploadError(503, f"the S3 storage is unavailable right now ({action}); the upload is kept: retry in "
                            f"a few seconds and resume from its status", upload,
                       headers={"Retry-After": str(S3_RETRY_AFTER_S)})


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
    object_key: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)  # set: stored on S3
    s3_upload_id: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)  # the multipart upload
    tail_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)  # tus on S3: the local tail file


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
    object_key: str | None = None
    s3_upload_id: str | None = None
    tail_id: str | None = None

    @classmethod
    def from_row(cls, r: UploadRow) -> "UploadView":
        return cls(r.id, r.owner, r.filename, r.content_type, r.size_bytes, r.chunk_bytes, r.total_chunks,
                   r.received, r.received_bytes, r.sha256, r.state, r.protocol, json.loads(r.meta or "{}"),
                   as_utc(r.created_at), as_utc(r.expires_at), r.job_id, r.object_key, r.s3_upload_id, r.tail_id)

    @property
    def on_s3(self) -> bool:
        return self.object_key is not None

    @property
    def next_part_bytes(self) -> int:
        """S3: the length of the part after the received prefix (0 when every part is there)."""
        return min(self.chunk_bytes, self.size_bytes - self.parts_bytes)

    @property
    def parts_bytes(self) -> int:
        """S3: the bytes in the parts marked received, when they are a prefix (tus; the chunk API once
        every part is there)."""
        return min(leading_received(self.received) * self.chunk_bytes, self.size_bytes)

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


def _lock_engine(engine: sa.Engine) -> sa.Engine:
    """Connections for upload locks, apart from the request pool (resources/jobstore.py, "locks")."""
    return get_engine(engine.url.render_as_string(hide_password=False), "locks")


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

    def acquire(self, wait_s: float | None = None) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        import time

        if wait_s is None:
            wait_s = UploadStore.lock_wait_s()
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
    def s3_chunk_size(size_bytes: int) -> int:
        """On S3 a chunk is a part: at least S3's 5 MiB (all but the last part) and at most 10,000 parts;
        a multiple of the configured chunk size."""
        base = UploadStore.chunk_size()
        least = max(s3.MIN_PART, -(-size_bytes // s3.MAX_PARTS))
        return base * -(-least // base)

    @staticmethod
    def lock_wait_s() -> float:
        """How long a writer waits for another writer of the same upload before 409 (UPLOAD_LOCK_WAIT_S)."""
        return float(os.environ.get("UPLOAD_LOCK_WAIT_S", "120"))

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
        on_s3 = s3.backend() == "s3"
        chunk = self.s3_chunk_size(size_bytes) if on_s3 else self.chunk_size()
        self.root.mkdir(parents=True, exist_ok=True)
        try:  # on S3 this disk only holds a part in transit (a chunk being received, a tus tail)
            disk.ensure_free_space(min(size_bytes, 2 * chunk) if on_s3 else size_bytes, self.root,
                                   action="this upload")
        except disk.DiskSpaceError as exc:
            raise UploadError(507, exc.message) from None
        total = -(-size_bytes // chunk)
        now = utcnow()
        row = UploadRow(id=secrets.token_hex(16), owner=user.id, filename=filename,
                        content_type=content_type.split(";")[0].strip().lower(), size_bytes=size_bytes,
                        chunk_bytes=chunk, total_chunks=total, received="0" * total, received_bytes=0,
                        sha256=sha256, state="receiving", protocol=protocol, meta=json.dumps(meta or {}),
                        created_at=now, expires_at=now + self.ttl())
        if on_s3:
            try:
                row.object_key = s3.settings().key("uploads", row.id, "data")
            except s3.StorageConfigError as exc:  # names the variable to set, never a secret
                raise UploadError(503, f"the S3 storage is not configured: {exc}") from None
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
                if on_s3:  # the row commits only once the multipart upload exists
                    row.s3_upload_id = self._s3_call(
                        "starting the upload", None, "create_multipart_upload", Key=row.object_key,
                        ContentType=row.content_type)["UploadId"]
                else:
                    with open(path, "wb") as fh:
                        fh.truncate(size_bytes)  # sparse: chunks are written at their offsets
            except BaseException:
                self._remove_local(row.id)
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
                self._remove_data(row)  # on S3 when reachable; else the expiry sweep aborts it later
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

    def set_offset(self, upload_id: str, offset: int, tail_id: str | None = None) -> UploadView:
        """tus: bytes [0, offset) are on disk; chunks they cover count as received. On S3: bytes
        [0, offset) are in parts plus the local tail `tail_id`, whose chunk is not received yet."""
        with self.session() as s, s.begin():
            row = s.get(UploadRow, upload_id, with_for_update=True)
            if not row.received_bytes <= offset <= row.size_bytes:
                raise UploadError(409, f"offset {offset} is outside {row.received_bytes}..{row.size_bytes}")
            full = offset // row.chunk_bytes if offset < row.size_bytes else row.total_chunks
            row.received = "1" * full + row.received[full:]
            row.received_bytes = offset
            if row.object_key is not None:
                row.tail_id = tail_id
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

    def file_sha256(self, upload_id: str, size: int | None = None, view: "UploadView | None" = None) -> str:
        """The sha256 of the upload's file: from the running hash when it covers all `size` bytes,
        else read from disk (S3: the assembled object, streamed back)."""
        with self._hashes_lock:
            covered, running = self._hashes.get(upload_id, (0, None))
        if running is not None and size is not None and covered == size:
            return running.hexdigest()
        h = hashlib.sha256()
        if view is not None and view.on_s3:
            body = self._s3_call("reading the file back", view, "get_object", Key=view.object_key)["Body"]
            try:
                while block := body.read(4 * 1024 * 1024):
                    h.update(block)
            except Exception as exc:
                if s3.is_transient(exc):
                    raise s3_unavailable("reading the file back", view) from None
                raise
            return h.hexdigest()
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
        input_path = s3.settings().url(view.object_key) if view.on_s3 else str(self.data_path(view.id))
        with self.session() as s, s.begin():
            job = self.store.create_job(
                input_path=input_path, filename=view.filename, source_lang=source_lang,
                target_lang=target_lang, voice=voice, owner=user.id if user else view.owner, options=opts,
                upload_id=view.id, session=s)
            self.mark_complete(view.id, job, s)
        self.drop_running_hash(view.id)
        if view.on_s3:
            self._remove_local(view.id)  # spool and tail files: the upload lives in S3 now
        return job

    def delete(self, view: UploadView) -> None:
        with self.session() as s, s.begin():
            row = s.get(UploadRow, view.id, with_for_update=True)
            if row.state == "complete" and row.job_id:
                raise UploadError(409, "upload already became a job; cancel or delete the job instead", view)
            if row.object_key is not None:  # S3 first: unreachable, the upload stays as it was (503)
                self._remove_s3(row, strict=True)
            row.state = "aborted"
        self.drop_running_hash(view.id)
        self._remove_local(view.id)

    def expire_abandoned(self, now: dt.datetime | None = None, limit: int = 500) -> int:
        """Mark uploads past their expiry as expired and remove their partial data (on S3: abort the
        multipart upload; one that could not be aborted, S3 being away, is aborted by a later sweep)."""
        now = now or utcnow()
        with self.session() as s, s.begin():
            rows = s.scalars(sa.select(UploadRow).where(UploadRow.state == "receiving",
                                                        UploadRow.expires_at < now).limit(limit)).all()
            s3_ok = True  # S3 away: one failed abort is enough for this sweep; the next one retries
            for row in rows:
                row.state = "expired"
                if row.object_key is not None and s3_ok:
                    s3_ok = self._remove_s3(row)
                self._remove_local(row.id)
            if s3_ok:
                left = s.scalars(sa.select(UploadRow).where(UploadRow.state.in_(("expired", "aborted")),
                                                            UploadRow.s3_upload_id.is_not(None)).limit(limit)).all()
                for row in left:
                    if s3_ok and row not in rows:
                        s3_ok = self._remove_s3(row)
        return len(rows)

    def expire_input(self, upload_id: str) -> bool:
        """Retention: the bytes of a completed upload that became a job (the job's input) are deleted, the
        local file or the S3 object, and the upload is marked expired, so it no longer counts against its
        owner's quota. Idempotent. S3 unreachable or refusing: raises, and the row stays as it was (the next
        retention tick tries again). False when there is no such upload."""
        if not ID_RE.match(upload_id or ""):
            return False
        with self.session() as s, s.begin():
            row = s.get(UploadRow, upload_id, with_for_update=True)
            if row is None:
                return False
            if row.object_key is not None:
                cfg = s3.settings()
                if row.s3_upload_id:  # never assembled: abort the multipart upload
                    self._remove_s3(row, strict=True)
                else:
                    s3.client(cfg).delete_object(Bucket=cfg.bucket, Key=row.object_key)  # gone already: no error
            self._remove_local(row.id)
            row.state = "expired"
        self.drop_running_hash(upload_id)
        return True

    def _remove_data(self, row: UploadRow) -> None:
        """The bytes of an upload that is going away (the caller changes its state in the same session)."""
        if row.object_key is not None:
            self._remove_s3(row)
        self._remove_local(row.id)

    def _remove_local(self, upload_id: str) -> None:
        shutil.rmtree(self.root / upload_id, ignore_errors=True)

    def _remove_s3(self, row: UploadRow, strict: bool = False) -> bool:
        """Abort the row's multipart upload, or delete its assembled object; clears s3_upload_id. S3
        unreachable: False (strict: 503), and s3_upload_id stays set for a later sweep."""
        cfg = s3.settings()
        try:
            if row.s3_upload_id:
                try:
                    s3.client(cfg).abort_multipart_upload(Bucket=cfg.bucket, Key=row.object_key,
                                                          UploadId=row.s3_upload_id)
                except Exception as exc:
                    if s3.error_code(exc) != "NoSuchUpload":
                        raise
            elif row.state != "complete" or not row.job_id:
                s3.client(cfg).delete_object(Bucket=cfg.bucket, Key=row.object_key)  # assembled, no job
        except Exception as exc:
            logs.log(_log, "s3_remove_failed", level=logs.logging.WARNING, upload_id=row.id,
                     error=type(exc).__name__, code=s3.error_code(exc))
            if strict:
                if s3.is_transient(exc):
                    raise s3_unavailable("deleting the upload", UploadView.from_row(row)) from None
                raise UploadError(502, f"S3 refused to delete the upload ({s3.error_code(exc) or type(exc).__name__})",
                                  UploadView.from_row(row)) from None
            return False
        row.s3_upload_id = None
        return True


    # S3 uploads ----------------------------------------------------------------------------------
    # With DUBBING_STORAGE=s3 an upload's bytes go into an S3 multipart upload for uploads/<id>/data.
    # Chunk API: a chunk is a part (chunk i = part i + 1; chunk_bytes at least 5 MiB), spooled to local
    # disk while it arrives and checked, then uploaded, so chunks may come in any order. tus: PATCH bytes
    # go to a local tail file (<root>/<id>/tail-<tail_id>); each time it holds a whole part it becomes
    # the next part, and the last part goes up when the last byte arrives. The offset is the bytes in
    # parts plus the tail; a tail this process cannot vouch for (missing, another replica's, a length
    # that does not fit the row) is dropped and the offset falls back to the parts: the client resends.
    # The part list in S3 is the truth: the received bitmap is reconciled with ListParts when this process
    # first reads an upload's status and at completion.
    def _s3_call(self, action: str, view: "UploadView | None", method: str, **kw):
        try:
            cfg = s3.settings()
        except s3.StorageConfigError as exc:  # names the variable to set, never a secret
            raise UploadError(503, f"the S3 storage is not configured: {exc}", view) from None
        try:
            return getattr(s3.client(cfg), method)(Bucket=cfg.bucket, **kw)
        except Exception as exc:
            if s3.is_transient(exc):
                logs.log(_log, "s3_unavailable", level=logs.logging.WARNING, action=action,
                         error=type(exc).__name__)
                raise s3_unavailable(action, view) from None
            code = s3.error_code(exc)
            if code == "NoSuchUpload":
                raise UploadError(410, "the upload's S3 multipart upload is gone (aborted or expired in S3); "
                                       "start a new upload", view) from None
            if code:
                logs.log(_log, "s3_refused", level=logs.logging.WARNING, action=action, code=code)
                raise UploadError(502, f"S3 refused {action} ({code})", view) from None
            from botocore.exceptions import BotoCoreError

            if isinstance(exc, BotoCoreError):  # e.g. no credentials: the class names it, no secret
                logs.log(_log, "s3_failed", level=logs.logging.WARNING, action=action, error=type(exc).__name__)
                raise UploadError(502, f"S3 storage failed {action} ({type(exc).__name__})", view) from None
            raise

    def s3_parts(self, view: UploadView) -> dict[int, tuple[int, str]]:
        """The parts S3 holds for the upload: part number -> (size, ETag)."""
        parts: dict[int, tuple[int, str]] = {}
        marker = 0
        while True:
            page = self._s3_call("listing the parts", view, "list_parts", Key=view.object_key,
                                 UploadId=view.s3_upload_id, PartNumberMarker=marker, MaxParts=1000)
            for part in page.get("Parts", []):
                parts[part["PartNumber"]] = (part["Size"], part["ETag"])
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _received_from_parts(self, view: UploadView, parts: dict[int, tuple[int, str]]) -> str:
        ok = ["1" if parts.get(i + 1, (-1, ""))[0] == view.chunk_range(i)[1] else "0"
              for i in range(view.total_chunks)]
        received = "".join(ok)
        if view.protocol == "tus":  # tus parts are a prefix: a part past a gap is not counted
            full = leading_received(received)
            received = "1" * full + "0" * (view.total_chunks - full)
        return received

    def reconcile(self, view: UploadView, parts: dict[int, tuple[int, str]] | None = None) -> UploadView:
        """The received bitmap made to match S3's part list (the caller holds the upload's lock). A tus
        tail that no longer fits the parts is dropped with it."""
        if not view.on_s3 or view.state != "receiving" or not view.s3_upload_id:
            return view
        parts = self.s3_parts(view) if parts is None else parts
        received = self._received_from_parts(view, parts)
        with self.session() as s, s.begin():
            row = s.get(UploadRow, view.id, with_for_update=True)
            if row.received != received:
                logs.log(_log, "upload_reconciled", upload_id=view.id, before=row.received.count("1"),
                         after=received.count("1"))
            row.received = received
            if row.protocol == "tus":
                now = UploadView.from_row(row)
                if self.tus_offset(now) != now.received_bytes:
                    row.received_bytes, row.tail_id = now.parts_bytes, None
            else:
                row.received_bytes = sum(UploadView.from_row(row).chunk_range(i)[1]
                                         for i, c in enumerate(received) if c == "1")
            return UploadView.from_row(row)

    def part_etag(self, view: UploadView, index: int) -> str | None:
        return self.s3_parts(view).get(index + 1, (0, None))[1]

    def put_part(self, view: UploadView, index: int, path: Path, offset: int, length: int,
                 md5: bytes | None = None) -> str:
        """Upload bytes [offset, offset + length) of a local file as chunk `index` (part index + 1), with
        their MD5 for S3 to check (computed here when not given). Returns the ETag."""
        import base64

        with open(path, "rb") as fh:
            if md5 is None:
                h, left = hashlib.md5(), length
                fh.seek(offset)
                while left > 0 and (block := fh.read(min(left, 4 * 1024 * 1024))):
                    h.update(block)
                    left -= len(block)
                md5 = h.digest()
            fh.seek(offset)
            body = _Window(fh, length)
            return self._s3_call("storing a part", view, "upload_part", Key=view.object_key,
                                 UploadId=view.s3_upload_id, PartNumber=index + 1, Body=body,
                                 ContentLength=length, ContentMD5=base64.b64encode(md5).decode())["ETag"]

    def assemble(self, view: UploadView) -> UploadView:
        """Every part in S3 (checked with ListParts; missing ones are marked so and 409), then
        CompleteMultipartUpload. Idempotent: an upload already assembled is left as it is."""
        if not view.s3_upload_id:
            return view
        parts = self.s3_parts(view)
        view = self.reconcile(view, parts)
        if view.next_missing is not None:
            raise UploadError(409, f"{view.received.count('0')} chunk(s) missing in S3; first missing is "
                                   f"{view.next_missing}", view)
        self._s3_call("assembling the file", view, "complete_multipart_upload", Key=view.object_key,
                      UploadId=view.s3_upload_id,
                      MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n][1]}
                                                 for n in range(1, view.total_chunks + 1)]})
        with self.session() as s, s.begin():
            row = s.get(UploadRow, view.id, with_for_update=True)
            row.s3_upload_id = None  # the object exists now; no more parts
            return UploadView.from_row(row)

    def probe(self, view: UploadView):
        """ffprobe the received file (S3: through a short-lived presigned URL, never shown)."""
        from resources import media

        if not view.on_s3:
            return media.probe(self.data_path(view.id), view.filename)
        cfg = s3.settings()
        try:
            url = s3.client(cfg).generate_presigned_url(
                "get_object", Params={"Bucket": cfg.bucket, "Key": view.object_key}, ExpiresIn=900)
        except Exception as exc:
            if s3.is_transient(exc):
                raise s3_unavailable("probing the file", view) from None
            raise
        return media.probe_url(url, view.filename, view.size_bytes)

    # tus tail on local disk
    def tail_path(self, upload_id: str, tail_id: str) -> Path:
        return self.data_path(upload_id).parent / f"tail-{tail_id}"

    def tail_length(self, view: UploadView) -> int | None:
        """Bytes in this process's copy of the upload's tail; None when there is none here."""
        if not view.tail_id:
            return 0 if view.received_bytes == view.parts_bytes else None
        try:
            return self.tail_path(view.id, view.tail_id).stat().st_size
        except OSError:
            return None

    def tus_offset(self, view: UploadView) -> int:
        """The offset a tus client resumes from: the parts, plus the tail when this process holds it and
        it is less than the next part (a whole part still here means S3 failed to take it: resent)."""
        if not view.on_s3 or view.state != "receiving":
            return view.received_bytes
        tail = view.received_bytes - view.parts_bytes
        # the tail file only grows by appends after its length is recorded: bytes past `tail` are from a
        # PATCH that never finished (a crash), and a writer cuts them off before appending
        if tail == 0 or (0 < tail < view.next_part_bytes and (self.tail_length(view) or 0) >= tail):
            return view.received_bytes
        return view.parts_bytes

    def set_tus_s3(self, upload_id: str, parts: int, offset: int, tail_id: str | None) -> UploadView:
        """tus on S3: the first `parts` parts are in S3, bytes up to `offset` in them plus the tail."""
        with self.session() as s, s.begin():
            row = s.get(UploadRow, upload_id, with_for_update=True)
            row.received = "1" * parts + "0" * (row.total_chunks - parts)
            row.received_bytes, row.tail_id = offset, tail_id
            row.expires_at = utcnow() + self.ttl()  # an upload that makes progress stays alive
            return UploadView.from_row(row)

    def settle_tail(self, view: UploadView, tail_id: str, length: int) -> UploadView:
        """tus on S3: the tail file `tail_id` holds `length` bytes from the end of the parts. Whole parts
        of it go to S3 as the next parts; what is left becomes the tail (a new file when parts went up).
        The progress is recorded. S3 failing: the parts it took are recorded, the tail is dropped (the
        client resends from the parts) and the error (503) raised."""
        parts = leading_received(view.received)
        path, pos = self.tail_path(view.id, tail_id), 0
        try:
            while parts < view.total_chunks:
                need = view.chunk_range(parts)[1]
                if length - pos < need:
                    break
                self.put_part(view, parts, path, pos, need)
                parts, pos = parts + 1, pos + need
        except BaseException:
            done = min(parts * view.chunk_bytes, view.size_bytes)
            self.set_tus_s3(view.id, parts, done, None)
            path.unlink(missing_ok=True)
            raise
        done, rest, new_id = min(parts * view.chunk_bytes, view.size_bytes), length - pos, tail_id
        if pos and rest:
            new_id = secrets.token_hex(8)
            with open(path, "rb") as src, open(self.tail_path(view.id, new_id), "wb") as dst:
                src.seek(pos)
                dst.write(src.read(rest))  # less than a part
                dst.flush()
                os.fdatasync(dst.fileno())
        elif not rest:
            new_id = None
        view = self.set_tus_s3(view.id, parts, done + rest, new_id)
        if new_id != tail_id:
            path.unlink(missing_ok=True)
        return view

    def drop_tail(self, view: UploadView) -> UploadView:
        """The tail this process cannot vouch for is forgotten: the offset falls back to the parts."""
        with self.session() as s, s.begin():
            row = s.get(UploadRow, view.id, with_for_update=True)
            now = UploadView.from_row(row)
            logs.log(_log, "tus_tail_dropped", upload_id=view.id, offset=row.received_bytes,
                     parts_bytes=now.parts_bytes)
            row.received_bytes, row.tail_id = now.parts_bytes, None
            return UploadView.from_row(row)


def leading_received(received: str) -> int:
    """How many chunks from the first on are received, in a row ('1110100' -> 3)."""
    return len(received) - len(received.lstrip("1"))


class _Window:
    """A read-only window [start, start + length) of an open file, for boto3 (seekable, so its retries
    can rewind)."""

    def __init__(self, fh, length: int):
        self.fh, self.start, self.length = fh, fh.tell(), length

    def read(self, n: int = -1) -> bytes:
        left = self.start + self.length - self.fh.tell()
        if left <= 0:
            return b""
        return self.fh.read(left if n is None or n < 0 else min(n, left))

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: self.start, 1: self.fh.tell(), 2: self.start + self.length}[whence]
        self.fh.seek(base + pos)
        return self.tell()

    def tell(self) -> int:
        return self.fh.tell() - self.start

    def __len__(self) -> int:
        return self.length


_log = logs.logging.getLogger("dubbing.uploads")
