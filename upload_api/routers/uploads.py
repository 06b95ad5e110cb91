"""The resumable upload API: init, status, chunk, complete, delete. The upload store is shared with
the tus endpoints (routers/tus.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import weakref
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from resources import logs, media
from resources.accounts import User
from resources.uploads import SHA256_RE, WRITE_BLOCK, BodyWriter, UploadError, UploadView
from upload_api.deps import CleanStr, bind, current_user, uploads

router = APIRouter(prefix="/api/uploads", tags=["uploads"])
log = logs.logging.getLogger("dubbing.api.uploads")
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and part headers around a chunk

_locks: "weakref.WeakValueDictionary[str, asyncio.Lock]" = weakref.WeakValueDictionary()
_reconciled: set[str] = set()  # S3 uploads whose received chunks this process has checked with ListParts


@contextlib.asynccontextmanager
async def upload_lock(upload_id: str, wait_s: float | None = None):
    """One lock per upload: chunk writes, tus PATCHes, completion and deletion of an upload are
    serialised — within this process (an asyncio lock), then across API processes and machines
    sharing the database (a Postgres advisory lock; 409 if another holds it for UPLOAD_LOCK_WAIT_S)."""
    lock = _locks.get(upload_id)
    if lock is None:
        lock = asyncio.Lock()
        _locks[upload_id] = lock
    async with lock:
        shared = uploads().cross_process_lock(upload_id)
        await run_in_threadpool(shared.acquire, wait_s)
        try:
            yield
        finally:
            await run_in_threadpool(shared.release)


async def reconciled(request: Request, view: UploadView, user: User) -> UploadView:
    """An S3 upload's status as S3 has it: the first time this process reads it, the received chunks
    are checked against S3's part list (a process that died between storing a part and recording it,
    a part lost in S3). Skipped while a writer holds the upload (its state is live) or S3 is away (the
    recorded state is answered; the check comes on a later read)."""
    if not view.on_s3 or view.state != "receiving" or not view.s3_upload_id or view.id in _reconciled:
        return view
    lock = _locks.get(view.id)
    if lock is not None and lock.locked():
        return view
    try:
        async with upload_lock(view.id, wait_s=0):
            view = await get_upload(request, view.id, user)
            view = await run_in_threadpool(uploads().reconcile, view)
    except UploadError as exc:
        if exc.status in (409, 503):
            return view
        raise
    if len(_reconciled) > 100_000:
        _reconciled.clear()
    _reconciled.add(view.id)
    return view


class InitIn(BaseModel):
    filename: str = Field(max_length=1024)
    size_bytes: int = Field(strict=True)  # not true, 1.0 or "1000"
    content_type: CleanStr = Field(max_length=255)
    sha256: CleanStr | None = Field(default=None, max_length=64)


class CompleteIn(BaseModel):
    target_lang: CleanStr = Field(max_length=16)
    source_lang: CleanStr = Field(default="en", max_length=16)
    voice: CleanStr | None = Field(default=None, max_length=128)
    options: dict[str, Any] = Field(default_factory=dict)
    sha256: CleanStr | None = Field(default=None, max_length=64)


def no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


async def get_upload(request: Request, upload_id: str, user: User) -> UploadView:
    view = await run_in_threadpool(uploads().get, upload_id, user)
    bind(request, upload_id=view.id, job_id=view.job_id)
    return view


@router.post("/init", status_code=201)
async def init(body: InitIn, request: Request, response: Response, user: User = Depends(current_user)):
    view = await run_in_threadpool(
        lambda: uploads().init(user, filename=body.filename, size_bytes=body.size_bytes,
                               content_type=body.content_type, sha256=body.sha256))
    bind(request, upload_id=view.id)
    logs.log(log, "upload_init", size_bytes=view.size_bytes, chunks=view.total_chunks)
    no_store(response)
    return {"upload_id": view.id, "chunk_bytes": view.chunk_bytes, "max_upload_mb": uploads().max_upload_mb(),
            "total_chunks": view.total_chunks, "expires_at": view.expires_at.isoformat()}


@router.get("/{upload_id}")
async def status(upload_id: str, request: Request, response: Response, user: User = Depends(current_user)):
    view = await reconciled(request, await get_upload(request, upload_id, user), user)
    no_store(response)
    return view.status()


async def body_pieces(request: Request):
    """The chunk's bytes as they arrive: a raw body, or the first file of a multipart form."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)  # spooled to disk past 1 MiB
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise UploadError(400, "multipart body has no file part")
        while piece := await files[0].read(WRITE_BLOCK):
            yield piece
        return
    async for piece in request.stream():
        if piece:
            yield piece


async def receive_chunk(request: Request, writer: BodyWriter, view: UploadView, index: int, length: int) -> None:
    """The request body of chunk `index` through `writer`; refused (400) the moment it runs past `length`."""
    async for piece in body_pieces(request):
        if writer.received + len(piece) > length:
            raise UploadError(400, f"chunk {index} is longer than its {length} bytes", view)
        await writer.add(piece)
    await writer.flush()


@router.put("/{upload_id}/chunk")
async def put_chunk(upload_id: str, index: int, request: Request, response: Response,
                    user: User = Depends(current_user)):
    view = await get_upload(request, upload_id, user)
    uploads().require_receiving(view)
    if view.protocol != "chunks":
        raise UploadError(409, "this upload is a tus upload: continue it with PATCH /api/tus/{id}", view)
    if not 0 <= index < view.total_chunks:
        raise UploadError(416, f"chunk index {index} is out of range 0..{view.total_chunks - 1}", view)
    want_sha = request.headers.get("x-chunk-sha256")
    if want_sha is not None and not SHA256_RE.match(want_sha.lower()):
        raise UploadError(400, "X-Chunk-SHA256 must be 64 hex digits", view)
    offset, length = view.chunk_range(index)
    declared = request.headers.get("content-length")
    multipart = request.headers.get("content-type", "").startswith("multipart/")
    if declared is not None and declared.isdigit():
        if not multipart and int(declared) != length:
            raise UploadError(400, f"chunk {index} must be {length} bytes, not {declared}", view)
        if multipart and int(declared) > length + MULTIPART_OVERHEAD:
            raise UploadError(413, f"multipart body of {declared} bytes is too big for chunk {index} "
                                   f"({length} bytes)", view)
    elif multipart:
        raise UploadError(411, "a multipart chunk needs a Content-Length header", view)
    async with upload_lock(view.id):
        view = await get_upload(request, upload_id, user)
        uploads().require_receiving(view)
        if view.on_s3:
            try:
                view, already = await put_chunk_s3(request, view, index, want_sha, offset, length)
            except _ChunkInterrupted:
                return Response(status_code=400)
            logs.log(log, "chunk_received", index=index, bytes=length, repeated=already,
                     received_bytes=view.received_bytes, storage="s3")
            no_store(response)
            return view.status()
        already = view.received[index] == "1"
        digest = hashlib.sha256() if (want_sha or already) else None
        running = None if already else uploads().running_hash(view.id, offset)
        fd = None if already else os.open(uploads().data_path(view.id), os.O_WRONLY)
        writer = BodyWriter(fd, offset, [digest, running])
        try:
            await receive_chunk(request, writer, view, index, length)
            if writer.written != length:
                raise UploadError(400, f"chunk {index} must be {length} bytes; got {writer.written}", view)
            got = digest.hexdigest() if digest else None
            if want_sha and got != want_sha.lower():
                raise UploadError(422, f"chunk {index} checksum mismatch: X-Chunk-SHA256 does not match the body", view)
            if already:
                stored = await run_in_threadpool(uploads().region_sha256, view.id, offset, length)
                if stored != got:
                    raise UploadError(409, f"chunk {index} was already received with different content", view)
            else:
                await run_in_threadpool(os.fdatasync, fd)
        except ClientDisconnect:
            logs.log(log, "chunk_interrupted", level=logs.logging.WARNING, index=index, bytes=writer.received)
            return Response(status_code=400)
        finally:
            writer.close()
        if not already:
            view = await run_in_threadpool(uploads().mark_chunk, view.id, index)
            uploads().keep_running_hash(view.id, offset, length, running)
    logs.log(log, "chunk_received", index=index, bytes=length, repeated=already,
             received_bytes=view.received_bytes)
    no_store(response)
    return view.status()


class _ChunkInterrupted(Exception):
    pass


async def put_chunk_s3(request: Request, view: UploadView, index: int, want_sha: str | None, offset: int,
                       length: int) -> tuple[UploadView, bool]:
    """A chunk of an S3 upload (the caller holds the lock): spooled to local disk while it arrives,
    checked (length, X-Chunk-SHA256), then uploaded as part index + 1 with its MD5. A chunk received
    before is compared with its part's ETag (the part's MD5): the same bytes are a no-op, others 409."""
    store = uploads()
    if not view.s3_upload_id:
        raise UploadError(409, "the upload was already assembled in S3; delete it and start a new one", view)
    already = view.received[index] == "1"
    digest = hashlib.sha256() if want_sha else None
    md5 = hashlib.md5()
    running = None if already else store.running_hash(view.id, offset)
    spool = store.data_path(view.id).parent / f"chunk-{index}-{secrets.token_hex(4)}"
    spool.parent.mkdir(parents=True, exist_ok=True)
    writer = BodyWriter(os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 0, [digest, md5, running])
    try:
        try:
            await receive_chunk(request, writer, view, index, length)
        except ClientDisconnect:
            logs.log(log, "chunk_interrupted", level=logs.logging.WARNING, index=index, bytes=writer.received)
            raise _ChunkInterrupted() from None
        finally:
            writer.close()
        if writer.written != length:
            raise UploadError(400, f"chunk {index} must be {length} bytes; got {writer.written}", view)
        if want_sha and digest.hexdigest() != want_sha.lower():
            raise UploadError(422, f"chunk {index} checksum mismatch: X-Chunk-SHA256 does not match the body", view)
        if already:
            etag = (await run_in_threadpool(store.part_etag, view, index) or "").strip('"').lower()
            if etag == md5.hexdigest():
                return view, True
            if re.fullmatch(r"[0-9a-f]{32}", etag):  # an MD5 ETag: the part holds other bytes
                raise UploadError(409, f"chunk {index} was already received with different content", view)
            # no part in S3 after all (or an ETag that is not an MD5): the part is stored again
        await run_in_threadpool(store.put_part, view, index, spool, 0, length, md5.digest())
    finally:
        spool.unlink(missing_ok=True)
    view = await run_in_threadpool(store.mark_chunk, view.id, index)
    if not already:
        store.keep_running_hash(view.id, offset, length, running)
    return view, False


@router.post("/{upload_id}/complete")
async def complete(upload_id: str, body: CompleteIn, request: Request, user: User = Depends(current_user)):
    return await complete_upload(request, upload_id, user, target_lang=body.target_lang,
                                 source_lang=body.source_lang, voice=body.voice, options=body.options,
                                 sha256=body.sha256)


async def complete_upload(request: Request, upload_id: str, user: User, *, target_lang: str,
                          source_lang: str = "en", voice: str | None = None, options: dict | None = None,
                          sha256: str | None = None) -> dict:
    """Turn a fully received upload into a dub job (POST /complete, and tus when the last PATCH lands
    with target_lang in its metadata). Takes the upload's lock; idempotent once the job exists."""
    view = await get_upload(request, upload_id, user)
    async with upload_lock(view.id):
        view = await get_upload(request, upload_id, user)
        if view.state == "complete" and view.job_id:
            return {"job_id": view.job_id, "upload_id": view.id, "created": False}
        uploads().require_receiving(view)
        if view.on_s3:  # every part checked against S3's list, then the object assembled
            if view.protocol == "tus" and view.received_bytes != view.size_bytes:
                raise UploadError(409, f"{view.size_bytes - view.received_bytes} bytes missing", view)
            view = await run_in_threadpool(uploads().assemble, view)
        if view.next_missing is not None:
            raise UploadError(409, f"{view.received.count('0')} chunk(s) missing; first missing is "
                                   f"{view.next_missing}", view)
        want = (sha256 or view.sha256 or "").lower() or None
        if want:
            if not SHA256_RE.match(want):
                raise UploadError(422, "sha256 must be 64 hex digits", view)
            got = await run_in_threadpool(uploads().file_sha256, view.id, view.size_bytes, view)
            if got != want:
                raise UploadError(422, "the file's sha256 does not match; re-send it or delete the upload", view)
        try:
            await run_in_threadpool(uploads().probe, view)
        except media.MediaError as exc:
            raise UploadError(422, str(exc), view) from None
        job = await run_in_threadpool(
            lambda: uploads().create_job(view, user, target_lang=target_lang, source_lang=source_lang,
                                         voice=voice, options=options if options is not None else {}))
    bind(request, job_id=job.id)
    logs.audit("upload_complete", size_bytes=view.size_bytes)
    logs.audit("job_created", source_lang=job.source_lang, target_lang=job.target_lang)
    return {"job_id": job.id, "upload_id": view.id, "created": True}


@router.delete("/{upload_id}", status_code=204)
async def delete(upload_id: str, request: Request, user: User = Depends(current_user)):
    view = await get_upload(request, upload_id, user)
    async with upload_lock(view.id):
        view = await get_upload(request, upload_id, user)
        if view.state in ("aborted", "expired"):
            return Response(status_code=204)
        await run_in_threadpool(uploads().delete, view)
    logs.log(log, "upload_deleted")
    return Response(status_code=204)
