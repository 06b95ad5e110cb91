"""The resumable upload API against a live uvicorn: chunked upload, resume after an interrupted
chunk, completion into a job, ownership."""

import hashlib
import socket

from live import upload_file


def test_upload_in_chunks_then_complete_creates_one_job(api, espeak_video):
    from resources.uploads import UploadStore

    with api.client("alice") as c:
        upload_id, job_id = upload_file(c, espeak_video)
        again = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es"})
        assert again.status_code == 200 and again.json() == {"job_id": job_id, "upload_id": upload_id,
                                                             "created": False}
        status = c.get(f"/api/uploads/{upload_id}")
        assert status.headers["cache-control"] == "no-store"
        body = status.json()
        assert body["state"] == "complete" and body["progress"] == 1.0 and body["job_id"] == job_id
        job = c.get(f"/api/jobs/{job_id}").json()
        assert job["state"] == "submitted" and job["filename"] == espeak_video.name
    stored = UploadStore().data_path(upload_id).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(espeak_video.read_bytes()).digest()
    with api.client("bob") as c:  # another user's upload and job do not exist for bob
        assert c.get(f"/api/uploads/{upload_id}").status_code == 404
        assert c.get(f"/api/jobs/{job_id}").status_code == 404
    with api.client("root") as c:  # admins see all
        assert c.get(f"/api/jobs/{job_id}").status_code == 200


def raw_put_cut(api, upload_id, index, piece, cut_at):
    """Send a chunk over a raw socket and drop the connection after `cut_at` bytes of the body."""
    head = (f"PUT /api/uploads/{upload_id}/chunk?index={index} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {api.tokens['alice']}\r\nContent-Length: {len(piece)}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall(head + piece[:cut_at])


def test_interrupted_chunk_resumes_from_server_status(api, espeak_video, monkeypatch):
    data = espeak_video.read_bytes() * 3  # a bigger file; chunk size is the server's
    with api.client("alice") as c:
        init = c.post("/api/uploads/init", json={"filename": "long.mp4", "size_bytes": len(data),
                                                  "content_type": "video/mp4"}).json()
        uid, size = init["upload_id"], init["chunk_bytes"]
        # the client drops the connection in the middle of the first chunk
        raw_put_cut(api, uid, 0, data[:size], cut_at=min(size, len(data)) // 2)
        import time

        for _ in range(50):
            st = c.get(f"/api/uploads/{uid}").json()
            if st["next_missing"] == 0:
                break
            time.sleep(0.1)
        assert st["received_bytes"] == 0 and st["next_missing"] == 0 and st["missing_count"] == init["total_chunks"]
        # resume from next_missing until done
        while (st := c.get(f"/api/uploads/{uid}").json())["next_missing"] is not None:
            i = st["next_missing"]
            r = c.put(f"/api/uploads/{uid}/chunk", params={"index": i}, content=data[i * size:(i + 1) * size])
            assert r.status_code == 200, r.text
        assert st["progress"] == 1.0
        # the file is the source: completion with the whole-file sha256 passes (not a media file -> 422
        # would say so; three concatenated MP4s still probe as the first one)
        r = c.post(f"/api/uploads/{uid}/complete",
                   json={"target_lang": "es", "sha256": hashlib.sha256(data).hexdigest()})
        assert r.status_code == 200, r.text
    from resources.uploads import UploadStore

    assert UploadStore().file_sha256(uid) == hashlib.sha256(data).hexdigest()


def test_running_sha256_only_for_bytes_written_in_order(tmp_path):
    """Completion uses the whole-file hash kept as bytes arrive only when it covers exactly the file;
    out-of-order or rewritten bytes fall back to reading the file."""
    import asyncio
    import os

    from resources.uploads import BodyWriter, UploadStore

    store = UploadStore(store=object(), root=tmp_path)  # no database needed for the hash bookkeeping
    path = tmp_path / ("a" * 32) / "data"
    path.parent.mkdir()
    path.write_bytes(b"\0" * 10)
    data = b"0123456789"

    async def write(offset, piece):
        h = store.running_hash("a" * 32, offset)
        writer = BodyWriter(os.open(path, os.O_WRONLY), offset, [h])
        try:
            await writer.add(piece)
            await writer.flush()
        finally:
            writer.close()
        store.keep_running_hash("a" * 32, offset, len(piece), h)

    asyncio.run(write(0, data[:4]))
    asyncio.run(write(4, data[4:]))
    assert store.file_sha256("a" * 32, 10) == hashlib.sha256(data).hexdigest()
    asyncio.run(write(0, b"ABCD"))  # bytes the hash covered written again: the hash is dropped
    assert store.running_hash("a" * 32, 4) is None
    assert store.file_sha256("a" * 32, 10) == hashlib.sha256(b"ABCD456789").hexdigest()  # read from disk
    store.drop_running_hash("a" * 32)
    assert store.running_hash("a" * 32, 4) is None  # out of order: nothing to feed
