"""The resumable upload API: init, status, chunk, complete, delete. The upload store is shared with
the tus endpoints (routers/tus.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import weakref
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from resources import logs, media
from resources.accounts import User
from resources.uploads import SHA256_RE, BodyWriter, UploadError, UploadView
from upload_api.deps import CleanStr, bind, current_user, uploads

router = APIRouter(prefix="/api/uploads", tags=["uploads"])
log = logs.logging.getLogger("dubbing.api.uploads")
WRITE_BLOCK = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and part headers around a chunk

_locks: "weakref.WeakValueDictionary[str, asyncio.Lock]" = weakref.WeakValueDictionary()


@contextlib.asynccontextmanager
async def upload_lock(upload_id: str):
    """One lock per upload: chunk writes, tus PATCHes, completion and deletion of an upload are
    serialised — within this process (an asyncio lock), then across API processes and machines
    sharing the database (a Postgres advisory lock; 409 if another holds it for UPLOAD_LOCK_WAIT_S)."""
    lock = _locks.get(upload_id)
    if lock is None:
        lock = asyncio.Lock()
        _locks[upload_id] = lock
    async with lock:
        shared = uploads().cross_process_lock(upload_id)
        await run_in_threadpool(shared.acquire)
        try:
            yield
        finally:
            await run_in_threadpool(shared.release)


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
    view = await get_upload(request, upload_id, user)
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
        already = view.received[index] == "1"
        digest = hashlib.sha256() if (want_sha or already) else None
        running = None if already else uploads().running_hash(view.id, offset)
        fd = None if already else os.open(uploads().data_path(view.id), os.O_WRONLY)
        writer = BodyWriter(fd, offset, [digest, running])
        try:
            async for piece in body_pieces(request):
                if writer.received + len(piece) > length:
                    raise UploadError(400, f"chunk {index} is longer than its {length} bytes", view)
                await writer.add(piece)
            await writer.flush()
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
        if view.next_missing is not None:
            raise UploadError(409, f"{view.received.count('0')} chunk(s) missing; first missing is "
                                   f"{view.next_missing}", view)
        want = (sha256 or view.sha256 or "").lower() or None
        if want:
            if not SHA256_RE.match(want):
                raise UploadError(422, "sha256 must be 64 hex digits", view)
            got = await run_in_threadpool(uploads().file_sha256, view.id, view.size_bytes)
            if got != want:
                raise UploadError(422, "the file's sha256 does not match; re-send it or delete the upload", view)
        try:
            await run_in_threadpool(media.probe, uploads().data_path(view.id), view.filename)
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
