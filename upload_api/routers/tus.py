"""tus 1.0 (https://tus.io/protocols/resumable-upload) under /api/tus/, over the same upload store as
the chunk API (routers/uploads.py): same rows, same preallocated data file, same per-upload lock.

Extensions: creation, creation-with-upload, termination, checksum (sha1, sha256), expiration.
Upload-Defer-Length and concatenation are not supported.

Metadata (Upload-Metadata, `key base64value` pairs): `filename` (required), `filetype` or
`content_type` (video/* or audio/*; guessed from the file name when absent), `sha256` (whole file,
checked at completion) and the job's `target_lang`, `source_lang`, `voice`. With `target_lang`, the
PATCH that reaches Upload-Length turns the upload into a dub job and answers its id in
`Dubbing-Job-Id`; without it the client completes with POST /api/uploads/{id}/complete."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import email.utils
import hashlib
import mimetypes
import os
import secrets
from typing import Callable

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from resources import logs, readiness
from resources.accounts import User
from resources.uploads import LANG_RE, BodyWriter, UploadError, UploadView
from upload_api.deps import bind, current_user, uploads
from upload_api.routers.uploads import complete_upload, get_upload, reconciled, upload_lock

log = logs.logging.getLogger("dubbing.api.tus")

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
CHECKSUMS: dict[str, Callable] = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
OFFSET_TYPE = "application/offset+octet-stream"
MAX_METADATA_BYTES = 4 * 1024
JOB_HEADER = "Dubbing-Job-Id"


class TusRoute(APIRoute):
    """Every tus response carries Tus-Resumable, errors included (UploadError, HTTPException from
    auth, validation): the app's own exception handlers build the response, this adds the header.
    Requests other than OPTIONS without `Tus-Resumable: 1.0.0` are refused with 412."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def tus_handler(request: Request) -> Response:
            given = request.headers.get("tus-resumable")
            if request.method != "OPTIONS" and given != TUS_VERSION:
                response = Response(
                    f"Tus-Resumable: {TUS_VERSION} is required (got {str(given)[:20]!r})\n",
                    status_code=412, media_type="text/plain", headers={"Tus-Version": TUS_VERSION})
            else:
                try:
                    response = await handler(request)
                except Exception as exc:
                    app_handler = _exception_handler(request, exc)
                    if app_handler is None:
                        raise
                    response = await app_handler(request, exc)
            response.headers["Tus-Resumable"] = TUS_VERSION
            return response

        return tus_handler


def _exception_handler(request: Request, exc: Exception):
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


router = APIRouter(prefix="/api/tus", tags=["tus"], route_class=TusRoute)


# helpers --------------------------------------------------------------------------------------
def http_date(when) -> str:
    return email.utils.format_datetime(when.astimezone(dt.timezone.utc), usegmt=True)


def parse_metadata(raw: str | None) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64value` (value may be absent); values must be UTF-8
    text here, since every key this server reads is text."""
    if raw is None or not raw.strip():
        return {}
    if len(raw) > MAX_METADATA_BYTES:  # header values arrive as latin-1: one char per byte
        raise UploadError(400, f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    out: dict[str, str] = {}
    for pair in raw.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0]:
            raise UploadError(400, f"Upload-Metadata pair {pair.strip()[:40]!r} is not 'key base64value'")
        key = parts[0]
        if key in out:
            raise UploadError(400, f"Upload-Metadata key {key[:40]!r} appears twice")
        value = parts[1] if len(parts) == 2 else ""
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise UploadError(400, f"Upload-Metadata value of {key[:40]!r} is not base64 of UTF-8 text") from None
    return out


def parse_count(request: Request, name: str, required: bool = True) -> int | None:
    value = request.headers.get(name)
    if value is None:
        if required:
            raise UploadError(400, f"{name} header is required")
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 19:
        raise UploadError(400, f"{name} must be a non-negative whole number of bytes")
    return int(value)


def parse_checksum(request: Request):
    """Upload-Checksum `<algorithm> <base64 digest>` -> (algorithm, hasher, expected digest) or None."""
    raw = request.headers.get("upload-checksum")
    if raw is None:
        return None
    algo, _, b64 = raw.strip().partition(" ")
    algo = algo.lower()
    if algo not in CHECKSUMS:
        raise UploadError(400, f"checksum algorithm {algo[:20]!r} is not supported; use one of "
                               f"{', '.join(CHECKSUMS)} (Tus-Checksum-Algorithm)")
    hasher = CHECKSUMS[algo]()
    try:
        want = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, "Upload-Checksum digest is not base64") from None
    if len(want) != hasher.digest_size:
        raise UploadError(400, f"Upload-Checksum is not a {algo} digest ({hasher.digest_size} bytes)")
    return algo, hasher, want


def upload_headers(view: UploadView, response: Response, offset: bool = True) -> None:
    response.headers["Cache-Control"] = "no-store"
    if offset:
        response.headers["Upload-Offset"] = str(view.received_bytes)
    if view.state == "receiving":
        response.headers["Upload-Expires"] = http_date(view.expires_at)


def require_tus(view: UploadView) -> None:
    if view.protocol != "tus":
        raise UploadError(409, "this upload was started with the chunk API: continue it with "
                               "PUT /api/uploads/{id}/chunk", view)


def require_alive(view: UploadView) -> None:
    """Terminated or expired uploads are gone (410) for HEAD and DELETE; completed ones stay."""
    if view.state in ("aborted", "expired"):
        uploads().require_receiving(view)


def room_left(request: Request, view, offset: int) -> int:
    """The bytes left before Upload-Length; a body declared longer is refused before it is read."""
    room = view.size_bytes - offset
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > room:
        raise UploadError(400, f"body of {int(declared)} bytes goes past Upload-Length "
                               f"({view.size_bytes}; {room} bytes left at offset {offset})", view)
    return room


async def write_body(request: Request, view: UploadView, offset: int) -> tuple[UploadView, int, bool]:
    """Stream the request body into the upload's file at `offset` (caller holds the upload lock and
    has checked the offset). Returns the view after the new offset is recorded, the bytes kept and
    whether the client went away. A client that goes away mid-body keeps what was received and synced
    (tus lets the server keep a partial PATCH), unless the body was checksummed: an unverifiable piece
    is dropped. A body that runs past Upload-Length or fails its checksum moves the offset not at all."""
    if view.on_s3:
        return await write_body_s3(request, view, offset)
    checksum = parse_checksum(request)
    room = room_left(request, view, offset)
    interrupted = False
    running = uploads().running_hash(view.id, offset)
    fd = os.open(uploads().data_path(view.id), os.O_WRONLY)
    writer = BodyWriter(fd, offset, [checksum[1] if checksum else None, running])
    try:
        try:
            async for piece in request.stream():
                if not piece:
                    continue
                if writer.received + len(piece) > room:
                    raise UploadError(400, f"body goes past Upload-Length ({view.size_bytes} bytes); "
                                           "nothing of it was kept", view)
                await writer.add(piece)
        except ClientDisconnect:
            interrupted = True
        await writer.flush()
        written = writer.written
        if checksum and not interrupted and checksum[1].digest() != checksum[2]:
            raise UploadError(460, f"Upload-Checksum mismatch: the body's {checksum[0]} differs; "
                                   "the piece was dropped", view)
        if checksum and interrupted:
            logs.log(log, "tus_patch_interrupted", level=logs.logging.WARNING, offset=offset, bytes=written,
                     kept=0, reason="checksummed piece cut off")
            return view, 0, True
        if written:
            await run_in_threadpool(os.fdatasync, fd)
    finally:
        writer.close()
    if written:
        view = await run_in_threadpool(uploads().set_offset, view.id, offset + written)
        uploads().keep_running_hash(view.id, offset, written, running)
    if interrupted:
        logs.log(log, "tus_patch_interrupted", level=logs.logging.WARNING, offset=offset, bytes=written,
                 kept=written, upload_offset=view.received_bytes)
    return view, written, interrupted


async def write_body_s3(request: Request, view: UploadView, offset: int) -> tuple[UploadView, int, bool]:
    """write_body() for an upload on S3 (resources/uploads.py, S3 uploads): the body is appended to the
    local tail file; each time the tail holds the next whole part, it goes to S3 (a checksummed body
    first in full, once its checksum is right). The same outcomes as write_body(); S3 failing answers
    503 with the offset at the parts it holds."""
    store = uploads()
    checksum = parse_checksum(request)
    room = room_left(request, view, offset)
    running = store.running_hash(view.id, offset)
    hashers = [checksum[1] if checksum else None, running]
    tail_id = view.tail_id or secrets.token_hex(8)
    start = offset - view.parts_bytes  # bytes already in the tail file

    def open_tail(tail_id: str, length: int) -> int:
        path = store.tail_path(view.id, tail_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(fd, length)  # a tail that was checked to be `length` long, or a new one
        return fd

    writer = BodyWriter(await run_in_threadpool(open_tail, tail_id, start), start, hashers)
    total, interrupted = 0, False

    async def settle(reopen: bool = True) -> None:
        """The tail file is complete on disk: whole parts of it go to S3, the rest is the new tail."""
        nonlocal view, writer, tail_id, start
        await writer.flush()
        await run_in_threadpool(os.fdatasync, writer.fd)
        length = start + writer.written
        writer.close()
        writer = BodyWriter(None, 0, [])
        view = await run_in_threadpool(store.settle_tail, view, tail_id, length)
        if not reopen or view.received_bytes == view.size_bytes:
            return
        tail_id = view.tail_id or secrets.token_hex(8)
        start = view.received_bytes - view.parts_bytes
        writer = BodyWriter(await run_in_threadpool(open_tail, tail_id, start), start, hashers)

    try:
        try:
            async for piece in request.stream():
                if not piece:
                    continue
                if total + len(piece) > room:
                    raise UploadError(400, f"body goes past Upload-Length ({view.size_bytes} bytes); "
                                           "nothing of it was kept", view)
                while piece:
                    # unchecked bodies go to S3 part by part, so the tail stays under a part
                    cut = len(piece) if checksum else min(len(piece), view.next_part_bytes - start - writer.received)
                    await writer.add(piece[:cut])
                    total, piece = total + cut, piece[cut:]
                    if not checksum and start + writer.received == view.next_part_bytes:
                        await settle()
        except ClientDisconnect:
            interrupted = True
        await writer.flush()
        if checksum and (interrupted or checksum[1].digest() != checksum[2]):
            await run_in_threadpool(os.ftruncate, writer.fd, start)  # the piece is dropped
            if interrupted:
                logs.log(log, "tus_patch_interrupted", level=logs.logging.WARNING, offset=offset, bytes=total,
                         kept=0, reason="checksummed piece cut off")
                return view, 0, True
            raise UploadError(460, f"Upload-Checksum mismatch: the body's {checksum[0]} differs; "
                                   "the piece was dropped", view)
        if writer.written:
            await settle(reopen=False)
    finally:
        writer.close()
    store.keep_running_hash(view.id, offset, total, running)
    if interrupted:
        logs.log(log, "tus_patch_interrupted", level=logs.logging.WARNING, offset=offset, bytes=total,
                 kept=total, upload_offset=view.received_bytes)
    return view, total, interrupted


def interrupted_response(view: UploadView) -> Response:
    """Nobody reads it (the client is gone); what matters is the recorded offset."""
    response = Response(status_code=400)
    upload_headers(view, response)
    return response


async def finish_if_done(request: Request, view: UploadView, user: User, response: Response) -> None:
    """At Upload-Length, with target_lang in the metadata: the upload becomes a job (shared with
    POST /api/uploads/{id}/complete)."""
    meta = view.meta or {}
    if view.received_bytes != view.size_bytes or not meta.get("target_lang"):
        return
    done = await complete_upload(request, view.id, user, target_lang=meta["target_lang"],
                                 source_lang=meta.get("source_lang") or "en", voice=meta.get("voice") or None,
                                 options={})
    response.headers[JOB_HEADER] = done["job_id"]


def capabilities(response: Response) -> Response:
    response.headers["Tus-Version"] = TUS_VERSION
    response.headers["Tus-Extension"] = EXTENSIONS
    response.headers["Tus-Max-Size"] = str(uploads().max_upload_mb() * 1024 * 1024)
    response.headers["Tus-Checksum-Algorithm"] = ",".join(CHECKSUMS)
    return response


# endpoints ------------------------------------------------------------------------------------
@router.options("/", status_code=204)
@router.options("", status_code=204, include_in_schema=False)
@router.options("/{upload_id}", status_code=204, include_in_schema=False)
async def options() -> Response:
    """Server capabilities (no authentication: clients and CORS preflights ask before logging in)."""
    return capabilities(Response(status_code=204))


@router.post("/", status_code=201)
@router.post("", status_code=201, include_in_schema=False)
async def create(request: Request, user: User = Depends(current_user)) -> Response:
    if request.headers.get("upload-defer-length") is not None:
        raise UploadError(400, "Upload-Defer-Length is not supported: send Upload-Length")
    size = parse_count(request, "Upload-Length")
    raw_meta = request.headers.get("upload-metadata")
    meta = parse_metadata(raw_meta)
    filename = meta.get("filename")
    if not filename:
        raise UploadError(400, "Upload-Metadata must include 'filename'")
    content_type = meta.get("filetype") or meta.get("content_type") or mimetypes.guess_type(filename)[0] or ""
    for key in ("target_lang", "source_lang"):
        if meta.get(key) and not LANG_RE.match(meta[key]):
            raise UploadError(422, f"{key} {meta[key][:20]!r} is not a language code like 'es' or 'pt-BR'")
    voice = meta.get("voice")
    if voice is not None and len(voice) > 128:
        raise UploadError(422, "voice must be a short name like 'espeak:es'")
    if meta.get("target_lang"):  # a job that could not run is refused before any byte is sent
        reason = await run_in_threadpool(readiness.job_unready_reason, meta.get("source_lang") or "en",
                                         meta["target_lang"], voice or None, {})
        if reason:
            raise UploadError(422, reason)
    with_body = request.headers.get("content-type", "").split(";")[0].strip().lower() == OFFSET_TYPE
    declared = request.headers.get("content-length", "0").strip()
    if not with_body and declared not in ("", "0"):
        raise UploadError(415, f"a creation request with a body must have Content-Type: {OFFSET_TYPE}")
    if with_body and declared.isdigit() and int(declared) > size:
        raise UploadError(400, f"body of {declared} bytes is longer than Upload-Length ({size})")
    job_meta = {k: meta[k] for k in ("target_lang", "source_lang", "voice") if meta.get(k)}
    if raw_meta and raw_meta.strip():
        job_meta["tus_metadata"] = raw_meta.strip()
    view = await run_in_threadpool(
        lambda: uploads().init(user, filename=filename, size_bytes=size, content_type=content_type,
                               sha256=meta.get("sha256") or None, protocol="tus", meta=job_meta))
    bind(request, upload_id=view.id)
    logs.log(log, "tus_create", size_bytes=view.size_bytes, with_body=with_body,
             target_lang=job_meta.get("target_lang"))
    response = Response(status_code=201)
    response.headers["Location"] = f"{request.scope.get('root_path', '')}/api/tus/{view.id}"
    if with_body:
        async with upload_lock(view.id):
            try:
                view, written, interrupted = await write_body(request, view, 0)
            except UploadError:
                await run_in_threadpool(uploads().delete, view)  # refused body: no orphan upload
                raise
        if interrupted:
            return interrupted_response(view)
        logs.log(log, "tus_patch", offset=0, bytes=written, upload_offset=view.received_bytes)
        await finish_if_done(request, view, user, response)
        upload_headers(view, response)
    else:
        upload_headers(view, response, offset=False)
    return response


@router.head("/{upload_id}")
async def head(upload_id: str, request: Request, user: User = Depends(current_user)) -> Response:
    view = await get_upload(request, upload_id, user)
    require_alive(view)
    require_tus(view)
    if view.on_s3:  # the parts S3 holds, plus the tail when this process holds it
        view = await reconciled(request, view, user)
        view = dataclasses.replace(view, received_bytes=uploads().tus_offset(view))
    response = Response(status_code=200)
    upload_headers(view, response)
    response.headers["Upload-Length"] = str(view.size_bytes)
    if (view.meta or {}).get("tus_metadata"):
        response.headers["Upload-Metadata"] = view.meta["tus_metadata"]
    if view.job_id:
        response.headers[JOB_HEADER] = view.job_id
    return response


@router.patch("/{upload_id}", status_code=204)
async def patch(upload_id: str, request: Request, user: User = Depends(current_user)) -> Response:
    view = await get_upload(request, upload_id, user)
    uploads().require_receiving(view)
    require_tus(view)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != OFFSET_TYPE:
        raise UploadError(415, f"PATCH needs Content-Type: {OFFSET_TYPE}", view)
    offset = parse_count(request, "Upload-Offset")
    parse_checksum(request)  # refuse a bad header before reading the body
    async with upload_lock(view.id):
        view = await get_upload(request, upload_id, user)
        uploads().require_receiving(view)
        if view.on_s3 and uploads().tus_offset(view) != view.received_bytes:
            view = await run_in_threadpool(uploads().drop_tail, view)  # not here: the client resends it
        if offset != view.received_bytes:
            raise UploadError(409, f"Upload-Offset {offset} does not match the upload's offset "
                                   f"{view.received_bytes}; HEAD the upload and resume from there", view)
        before = offset
        view, written, interrupted = await write_body(request, view, offset)
        if interrupted:
            return interrupted_response(view)
    logs.log(log, "tus_patch", offset=before, bytes=written, upload_offset=view.received_bytes)
    response = Response(status_code=204)
    await finish_if_done(request, view, user, response)
    upload_headers(view, response)
    return response


@router.post("/{upload_id}", include_in_schema=False)
async def method_override(upload_id: str, request: Request, user: User = Depends(current_user)) -> Response:
    """Core protocol: X-HTTP-Method-Override for clients behind proxies that only pass GET/POST."""
    method = request.headers.get("x-http-method-override", "").upper()
    if method == "PATCH":
        return await patch(upload_id, request, user)
    if method == "DELETE":
        return await terminate(upload_id, request, user)
    if method == "HEAD":
        return await head(upload_id, request, user)
    raise UploadError(405, "POST to an upload needs X-HTTP-Method-Override: PATCH, DELETE or HEAD")


@router.delete("/{upload_id}", status_code=204)
async def terminate(upload_id: str, request: Request, user: User = Depends(current_user)) -> Response:
    view = await get_upload(request, upload_id, user)
    async with upload_lock(view.id):
        view = await get_upload(request, upload_id, user)
        require_alive(view)
        await run_in_threadpool(uploads().delete, view)
    logs.log(log, "tus_terminate")
    return Response(status_code=204)
