"""Uploads stored on S3 (DUBBING_STORAGE=s3) against a real S3 server (SeaweedFS, scripts/s3_server.py)
and a live uvicorn: the chunk API and tus write an S3 multipart upload part by part; the upload survives
an API restart (S3's part list is the truth); S3 going away mid-upload answers 503 with Retry-After and
the upload resumes once it is back; DELETE and expiry abort the multipart upload. Last, a whole dub with
storage on S3 through the deployed stack."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
pytestmark = pytest.mark.slow

MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from s3_server import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def stack(s3, tmp_path_factory):
    """uvicorn on SQLite with storage on S3 (UPLOAD_CHUNK_BYTES 256 KiB: an S3 chunk is 5 MiB)."""
    from live import running_stack

    saved = dict(os.environ)
    try:
        with running_stack(tmp_path_factory.mktemp("s3stack"), env=s3.env) as st:
            os.environ.update(s3.env)  # the test's own UploadStore (expiry) reaches the same S3
            yield st
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> bytes:
    """60 s of 48 kHz stereo PCM: 11 MiB, three S3 parts (5, 5 and 1 MiB)."""
    path = tmp_path_factory.mktemp("media") / "tone.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-t", "60", "-i", "sine=f=440:r=48000", "-ac", "2",
                    str(path)], check=True)
    return path.read_bytes()


def parts_in_s3(s3, upload_id: str) -> dict[int, int]:
    key = f"uploads/{upload_id}/data"
    c = s3.client()
    found = [u for u in c.list_multipart_uploads(Bucket=s3.bucket, Prefix=key).get("Uploads", []) if u["Key"] == key]
    if not found:
        return {}
    parts = c.list_parts(Bucket=s3.bucket, Key=key, UploadId=found[0]["UploadId"]).get("Parts", [])
    return {p["PartNumber"]: p["Size"] for p in parts}


def multipart_uploads(s3, upload_id: str, prefix: str = "") -> list:
    return s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=f"{prefix}uploads/{upload_id}/").get(
        "Uploads", [])


def object_sha256(s3, upload_id: str) -> str:
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"uploads/{upload_id}/data")["Body"].read()
    return hashlib.sha256(body).hexdigest()


def init(c, data: bytes, name: str = "tone.wav", content_type: str = "audio/wav") -> dict:
    r = c.post("/api/uploads/init", json={"filename": name, "size_bytes": len(data), "content_type": content_type,
                                          "sha256": hashlib.sha256(data).hexdigest()})
    assert r.status_code == 201, r.text
    return r.json()


def put(c, upload_id: str, data: bytes, index: int, size: int) -> httpx.Response:
    piece = data[index * size:(index + 1) * size]
    return c.put(f"/api/uploads/{upload_id}/chunk", params={"index": index}, content=piece,
                 headers={"X-Chunk-SHA256": hashlib.sha256(piece).hexdigest()})


def tus_create(c, size: int, name: str = "tone.wav") -> str:
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in
                    (("filename", name), ("filetype", "audio/wav")))
    r = c.post("/api/tus/", headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": meta})
    assert r.status_code == 201, r.text
    return r.headers["location"]


def tus_patch(c, location: str, offset: int, piece: bytes) -> httpx.Response:
    return c.patch(location, headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}, content=piece)


def tus_offset(c, location: str) -> int:
    r = c.head(location, headers=TUS)
    assert r.status_code == 200, r.text
    return int(r.headers["upload-offset"])


def test_chunk_api_on_s3_parts_in_any_order_then_complete(stack, s3, wav):
    with stack.client("alice") as c:
        up = init(c, wav)
        upload_id, size = up["upload_id"], up["chunk_bytes"]
        assert size == 5 * MIB and up["total_chunks"] == 3  # a chunk is an S3 part: at least 5 MiB
        assert multipart_uploads(s3, upload_id)  # init began the multipart upload
        for index in (2, 0, 1):  # any order: chunk i is part i + 1
            r = put(c, upload_id, wav, index, size)
            assert r.status_code == 200, r.text
        assert parts_in_s3(s3, upload_id) == {1: 5 * MIB, 2: 5 * MIB, 3: len(wav) - 10 * MIB}
        assert put(c, upload_id, wav, 1, size).status_code == 200  # the same bytes again: a no-op
        other = bytearray(wav[size:2 * size])
        other[100] ^= 0xFF
        r = c.put(f"/api/uploads/{upload_id}/chunk", params={"index": 1}, content=bytes(other))
        assert r.status_code == 409 and "different content" in r.json()["detail"]  # told by the part's ETag
        assert not list((stack.root / "data" / "uploads" / upload_id).glob("chunk-*"))  # spool files gone
        r = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
        assert r.status_code == 200, r.text
        job = c.get(f"/api/jobs/{r.json()['job_id']}").json()
        assert job["state"] == "submitted"
    assert not multipart_uploads(s3, upload_id)  # completed
    assert object_sha256(s3, upload_id) == hashlib.sha256(wav).hexdigest()
    from resources.jobstore import JobStore

    assert JobStore().get_job(r.json()["job_id"]).input_path == f"s3://{s3.bucket}/uploads/{upload_id}/data"


def test_tus_on_s3_parts_cut_from_the_local_tail(stack, s3, wav):
    with stack.client("alice") as c:
        loc = tus_create(c, len(wav))
        upload_id = loc.rsplit("/", 1)[1]
        r = tus_patch(c, loc, 0, wav[:3 * MIB])  # under a part: all in the local tail
        assert r.status_code == 204 and int(r.headers["upload-offset"]) == 3 * MIB
        assert parts_in_s3(s3, upload_id) == {}
        r = tus_patch(c, loc, 3 * MIB, wav[3 * MIB:8 * MIB])  # crosses a part: part 1 goes up
        assert r.status_code == 204 and int(r.headers["upload-offset"]) == 8 * MIB
        assert parts_in_s3(s3, upload_id) == {1: 5 * MIB}
        digest = base64.b64encode(hashlib.sha1(wav[8 * MIB:]).digest()).decode()
        bad = bytearray(wav[8 * MIB:])
        bad[0] ^= 1
        r = c.patch(loc, content=bytes(bad), headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(8 * MIB),
                                                      "Upload-Checksum": f"sha1 {digest}"})
        assert r.status_code == 460  # dropped: nothing of it went to S3
        assert tus_offset(c, loc) == 8 * MIB and parts_in_s3(s3, upload_id) == {1: 5 * MIB}
        r = c.patch(loc, content=wav[8 * MIB:], headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(8 * MIB),
                                                         "Upload-Checksum": f"sha1 {digest}"})
        assert r.status_code == 204 and int(r.headers["upload-offset"]) == len(wav)
        assert parts_in_s3(s3, upload_id) == {1: 5 * MIB, 2: 5 * MIB, 3: len(wav) - 10 * MIB}
        r = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es",
                                                               "sha256": hashlib.sha256(wav).hexdigest()})
        assert r.status_code == 200, r.text
    assert object_sha256(s3, upload_id) == hashlib.sha256(wav).hexdigest()
    assert not list((stack.root / "data" / "uploads" / upload_id).glob("tail-*"))


def test_uploads_resume_after_an_api_restart_with_s3_as_the_truth(stack, s3, wav):
    with stack.client("alice") as c:
        up = init(c, wav)
        upload_id, size = up["upload_id"], up["chunk_bytes"]
        assert put(c, upload_id, wav, 0, size).status_code == 200
        loc = tus_create(c, len(wav))
        assert tus_patch(c, loc, 0, wav[:7 * MIB]).status_code == 204  # part 1 + a 2 MiB tail
    # part 2 reached S3 but the API died before recording it (stored here straight into S3)
    key = f"uploads/{upload_id}/data"
    mp = [u for u in multipart_uploads(s3, upload_id)][0]
    s3.client().upload_part(Bucket=s3.bucket, Key=key, UploadId=mp["UploadId"], PartNumber=2,
                            Body=wav[size:2 * size])
    stack.stop("api")
    tus_id = loc.rsplit("/", 1)[1]
    (tail,) = (stack.root / "data" / "uploads" / tus_id).glob("tail-*")
    with open(tail, "ab") as fh:
        fh.write(b"x" * 1000)  # a PATCH cut short by the crash: appended, never recorded
    stack.start_api()
    with stack.client("alice") as c:
        status = c.get(f"/api/uploads/{upload_id}").json()
        assert status["received"] == [True, True, False], status  # reconciled with ListParts
        assert status["received_bytes"] == 2 * size
        assert put(c, upload_id, wav, 2, size).status_code == 200
        r = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
        assert r.status_code == 200, r.text  # sha256 from init, read back from S3 after the restart
        assert tus_offset(c, loc) == 7 * MIB  # the tail on this machine's disk survived the restart
        assert tus_patch(c, loc, 7 * MIB, wav[7 * MIB:9 * MIB]).status_code == 204  # (its junk cut off)
        assert tail.stat().st_size == 4 * MIB
        for tail in (stack.root / "data" / "uploads" / tus_id).glob("tail-*"):
            tail.unlink()  # as a replica without this tail would see it: the offset falls back to the parts
        assert tus_offset(c, loc) == 5 * MIB
        r = tus_patch(c, loc, 9 * MIB, wav[9 * MIB:])
        assert r.status_code == 409  # the client resumes from HEAD instead
        assert tus_patch(c, loc, 5 * MIB, wav[5 * MIB:]).status_code == 204
        r = c.post(f"/api/uploads/{tus_id}/complete", json={"target_lang": "es",
                                                            "sha256": hashlib.sha256(wav).hexdigest()})
        assert r.status_code == 200, r.text
    assert object_sha256(s3, upload_id) == object_sha256(s3, tus_id) == hashlib.sha256(wav).hexdigest()


def test_s3_down_mid_upload_503_with_retry_after_then_resumes(stack, s3, wav):
    with stack.client("alice") as c:
        up = init(c, wav)
        upload_id, size = up["upload_id"], up["chunk_bytes"]
        assert put(c, upload_id, wav, 0, size).status_code == 200
        loc = tus_create(c, len(wav))
        assert tus_patch(c, loc, 0, wav[:3 * MIB]).status_code == 204
        s3.stop()
        try:
            r = put(c, upload_id, wav, 1, size)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) > 0 and "S3" in r.json()["detail"]
            assert r.json()["upload"]["received"] == [True, False, False]
            r = tus_patch(c, loc, 3 * MIB, wav[3 * MIB:5 * MIB])  # part 1 cannot go up: 503, back to the parts
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
            assert c.get(f"/api/uploads/{upload_id}").status_code == 200  # the status still answers
            r = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
            assert r.status_code in (409, 503)
            r = c.delete(f"/api/uploads/{upload_id}")
            assert r.status_code == 503  # not deleted half-way: the upload is still there afterwards
        finally:
            s3.start()
        assert c.get(f"/api/uploads/{upload_id}").json()["state"] == "receiving"
        for index in (1, 2):
            assert put(c, upload_id, wav, index, size).status_code == 200
        r = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
        assert r.status_code == 200, r.text
        offset = tus_offset(c, loc)
        assert offset == 0  # nothing reached S3 and the tail was dropped: resent
        assert tus_patch(c, loc, offset, wav[offset:]).status_code == 204
        tus_id = loc.rsplit("/", 1)[1]
        r = c.post(f"/api/uploads/{tus_id}/complete", json={"target_lang": "es",
                                                            "sha256": hashlib.sha256(wav).hexdigest()})
        assert r.status_code == 200, r.text
    assert object_sha256(s3, upload_id) == object_sha256(s3, tus_id) == hashlib.sha256(wav).hexdigest()


def test_delete_and_expiry_abort_the_multipart_upload(stack, s3, wav):
    import datetime as dt

    import sqlalchemy as sa

    from resources.uploads import UploadRow, UploadStore

    with stack.client("alice") as c:
        doomed, stale = init(c, wav), init(c, wav)
        for up in (doomed, stale):
            assert put(c, up["upload_id"], wav, 0, up["chunk_bytes"]).status_code == 200
            assert multipart_uploads(s3, up["upload_id"])
        assert c.delete(f"/api/uploads/{doomed['upload_id']}").status_code == 204
        assert not multipart_uploads(s3, doomed["upload_id"])
        loc = tus_create(c, len(wav))
        assert tus_patch(c, loc, 0, wav[:6 * MIB]).status_code == 204
        assert c.delete(loc, headers=TUS).status_code == 204
        tus_id = loc.rsplit("/", 1)[1]
        assert not multipart_uploads(s3, tus_id) and not (stack.root / "data" / "uploads" / tus_id).exists()
    store = UploadStore()
    with store.session() as s, s.begin():
        s.execute(sa.update(UploadRow).where(UploadRow.id == stale["upload_id"])
                  .values(expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)))
    endpoint = os.environ["DUBBING_S3_ENDPOINT_URL"]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        os.environ["DUBBING_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{closed.getsockname()[1]}"  # S3 away
        try:
            assert store.expire_abandoned() >= 1  # expired now; the abort waits for S3
        finally:
            os.environ["DUBBING_S3_ENDPOINT_URL"] = endpoint
    with store.session() as s:
        assert s.get(UploadRow, stale["upload_id"]).s3_upload_id is not None
    assert multipart_uploads(s3, stale["upload_id"])
    assert store.expire_abandoned() == 0  # the next sweep aborts it
    assert not multipart_uploads(s3, stale["upload_id"])
    with stack.client("alice") as c:
        assert c.get(f"/api/uploads/{stale['upload_id']}").json()["state"] == "expired"


def test_not_media_on_s3_is_refused_without_showing_the_presigned_url(stack, s3):
    junk = os.urandom(3000)
    with stack.client("alice") as c:
        up = init(c, junk, name="junk.mp4")
        assert put(c, up["upload_id"], junk, 0, up["chunk_bytes"]).status_code == 200
        r = c.post(f"/api/uploads/{up['upload_id']}/complete", json={"target_lang": "es"})
        assert r.status_code == 422 and "junk.mp4 is not a readable video or audio file" in r.json()["detail"]
        assert not any(s in r.text for s in ("http", "Signature", "AWSAccessKeyId", "X-Amz", "dubbing-test"))
        assert c.delete(f"/api/uploads/{up['upload_id']}").status_code == 204  # the assembled object goes too
    assert "Contents" not in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"uploads/{up['upload_id']}/")


def send_cut(url: str, token: str, upload_id: str, index: int, piece: bytes, cut_at: int) -> None:
    """A chunk PUT whose connection drops after `cut_at` bytes of the body (a phone losing signal)."""
    host, port = url.rsplit("/", 1)[1].split(":")
    head = (f"PUT /api/uploads/{upload_id}/chunk?index={index} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(piece)}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + piece[:cut_at])
    time.sleep(0.5)


def test_whole_dub_on_s3_through_the_deployed_stack(s3, espeak_video):
    """The deployed shape (code server, daemon, API on Postgres) with DUBBING_STORAGE=s3: the upload is
    cut off mid-chunk, the API restarts, the client resumes from the status; the sensor launches the run,
    the stages read the s3:// input and write to S3, and the MKV downloads through the API."""
    from e2e_harness import Deployment

    from conftest import _postgres_or_fail

    _postgres_or_fail().dispose()
    saved = dict(os.environ)  # the harness points this process's environment at its deployment
    data = espeak_video.read_bytes()
    try:
        with Deployment("s3_dub", env={**s3.env, "DUBBING_S3_PREFIX": "e2e/"}) as d:
            d.start("code_server", "daemon", "api")
            headers = {"Authorization": f"Bearer {d.tokens['alice']}"}
            with httpx.Client(base_url=d.url, headers=headers, timeout=60) as c:
                up = init(c, data, name=espeak_video.name, content_type="video/mp4")
                upload_id = up["upload_id"]
                assert multipart_uploads(s3, upload_id, "e2e/")  # under DUBBING_S3_PREFIX
                assert up["total_chunks"] == 1 and len(data) > 4096
                send_cut(d.url, d.tokens["alice"], upload_id, 0, data, len(data) // 2)
                assert c.get(f"/api/uploads/{upload_id}").json()["received"] == [False]
            d.restart("api")
            with httpx.Client(base_url=d.url, headers=headers, timeout=60) as c:
                status = c.get(f"/api/uploads/{upload_id}").json()
                assert status["next_missing"] == 0 and status["state"] == "receiving"
                assert put(c, upload_id, data, 0, up["chunk_bytes"]).status_code == 200
                r = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
                assert r.status_code == 200, r.text
                job_id = r.json()["job_id"]
                started, job = time.monotonic(), {}
                while time.monotonic() - started < 240:
                    job = c.get(f"/api/jobs/{job_id}").json()
                    if job["state"] in ("done", "failed", "cancelled"):
                        break
                    time.sleep(1)
                print(f"dub on S3 through the stack: {job['state']} after {time.monotonic() - started:.1f} s")
                assert job["state"] == "done", job
                name = f"{espeak_video.stem}.es.mkv"
                assert name in job["outputs"], job["outputs"]
                mkv = c.get(f"/api/jobs/{job_id}/outputs/{name}", follow_redirects=True)
                assert mkv.status_code == 200 and mkv.content[:4] == b"\x1a\x45\xdf\xa3"  # EBML: Matroska
            stored = s3.client().get_object(Bucket=s3.bucket, Key=f"e2e/jobs/{job_id}/outputs/{name}")["Body"].read()
            assert mkv.content == stored
            source = s3.client().get_object(Bucket=s3.bucket, Key=f"e2e/uploads/{upload_id}/data")["Body"].read()
            assert hashlib.sha256(source).digest() == hashlib.sha256(data).digest()
            assert not multipart_uploads(s3, upload_id, "e2e/")
    finally:
        os.environ.clear()
        os.environ.update(saved)
