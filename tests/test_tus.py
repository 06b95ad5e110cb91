"""tus 1.0 under /api/tus/ against a live uvicorn, over the same upload store as the chunk API:
capabilities, creation (+ with upload), PATCH in pieces with pauses and an interrupted PATCH that is
resumed from HEAD, completion into a job, checksums, refusals, ownership, termination."""

import base64
import email.utils
import hashlib
import socket
import time

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def metadata(**pairs) -> str:
    return ",".join(f"{k} {b64(v)}" for k, v in pairs.items())


def create(c, size: int, body: bytes | None = None, headers: dict | None = None, **meta):
    h = {**TUS, "Upload-Length": str(size), "Upload-Metadata": metadata(**meta), **(headers or {})}
    if body is not None:
        h["Content-Type"] = OCTETS
    return c.post("/api/tus/", headers=h, content=body)


def patch(c, location: str, offset: int, piece: bytes, **headers):
    h = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return c.patch(location, headers=h, content=piece)


def head(c, location: str):
    return c.head(location, headers=TUS)


def offset_of(c, location: str) -> int:
    r = head(c, location)
    assert r.status_code == 200, r.status_code
    return int(r.headers["upload-offset"])


def sha1_header(piece: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(piece).digest()).decode()


def raw_patch_cut(api, location: str, offset: int, piece: bytes, cut_at: int) -> None:
    """PATCH over a raw socket: send `cut_at` bytes of the body, let the server read them, then drop
    the connection before the rest."""
    head_ = (f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api.tokens['alice']}\r\n"
             f"Tus-Resumable: 1.0.0\r\nContent-Type: {OCTETS}\r\nUpload-Offset: {offset}\r\n"
             f"Content-Length: {len(piece)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall(head_ + piece[:cut_at])
        time.sleep(0.5)


def test_options_lists_capabilities_without_auth(api):
    from resources.uploads import UploadStore

    with api.client() as c:
        r = c.options("/api/tus/")
    assert r.status_code == 204
    assert r.headers["tus-resumable"] == "1.0.0" and r.headers["tus-version"] == "1.0.0"
    assert set(r.headers["tus-extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "checksum", "expiration"}
    assert int(r.headers["tus-max-size"]) == UploadStore.max_upload_mb() * 1024 * 1024
    assert set(r.headers["tus-checksum-algorithm"].split(",")) == {"sha1", "sha256"}


def test_upload_in_pieces_with_pause_and_cut_resumes_into_a_job(api, espeak_video):
    from resources.uploads import UploadStore

    data = espeak_video.read_bytes()
    size = len(data)
    assert size > 200_000, size
    with api.client("alice") as c:
        r = create(c, size, filename=espeak_video.name, filetype="video/mp4", target_lang="es",
                   source_lang="en", sha256=hashlib.sha256(data).hexdigest())
        assert r.status_code == 201, r.text
        assert r.headers["tus-resumable"] == "1.0.0"
        loc = r.headers["location"]
        assert loc.startswith("/api/tus/") and len(loc.rsplit("/", 1)[1]) == 32
        expires = email.utils.parsedate_to_datetime(r.headers["upload-expires"])
        assert expires.tzinfo is not None and expires.timestamp() > time.time()

        r = head(c, loc)
        assert r.status_code == 200
        assert r.headers["upload-offset"] == "0" and r.headers["upload-length"] == str(size)
        assert r.headers["cache-control"] == "no-store" and r.headers["tus-resumable"] == "1.0.0"
        echoed = dict(p.split(" ") for p in r.headers["upload-metadata"].split(","))
        assert base64.b64decode(echoed["filename"]).decode() == espeak_video.name
        assert "upload-expires" in r.headers

        # two pieces with a pause between them (the second checksummed), HEAD after each
        first, second = 70_000, 50_000
        r = patch(c, loc, 0, data[:first])
        assert r.status_code == 204, r.text
        assert r.headers["upload-offset"] == str(first) and "upload-expires" in r.headers
        assert offset_of(c, loc) == first
        time.sleep(0.3)
        piece = data[first:first + second]
        r = patch(c, loc, first, piece, Upload_Checksum=sha1_header(piece))
        assert r.status_code == 204, r.text
        assert offset_of(c, loc) == first + second

        # a PATCH cut off mid-body: the bytes that arrived are kept, HEAD says how many
        at = first + second
        cut = 40_000
        raw_patch_cut(api, loc, at, data[at:at + 100_000], cut_at=cut)
        deadline = time.time() + 10
        while (kept := offset_of(c, loc)) != at + cut and time.time() < deadline:
            time.sleep(0.1)
        assert kept == at + cut, (kept, at + cut)
        # resume from HEAD's offset in 64 KiB pieces; the last one makes the job
        off = offset_of(c, loc)
        job_id = None
        while off < size:
            r = patch(c, loc, off, data[off:off + 65536])
            assert r.status_code == 204, r.text
            off = int(r.headers["upload-offset"])
            job_id = r.headers.get("dubbing-job-id")
        assert off == size and job_id, r.headers
        job = c.get(f"/api/jobs/{job_id}")
        assert job.status_code == 200, job.text
        assert job.json()["state"] == "submitted" and job.json()["filename"] == espeak_video.name
        assert job.json()["upload_id"] == loc.rsplit("/", 1)[1]

        r = head(c, loc)  # a finished upload still answers HEAD, and names its job
        assert r.status_code == 200 and r.headers["upload-offset"] == str(size)
        assert r.headers["dubbing-job-id"] == job_id
        r = patch(c, loc, size, b"")
        assert r.status_code == 409 and r.headers["tus-resumable"] == "1.0.0"
        status = c.get(f"/api/uploads/{loc.rsplit('/', 1)[1]}").json()
        assert status["protocol"] == "tus" and status["state"] == "complete" and status["job_id"] == job_id
    stored = UploadStore().data_path(loc.rsplit("/", 1)[1]).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()


def test_patch_refusals_ownership_and_completion_via_chunk_api(api, espeak_video):
    data = espeak_video.read_bytes()
    size = len(data)
    with api.client("alice") as c:
        r = create(c, size, filename="talk.mp4", filetype="video/mp4")  # no target_lang
        assert r.status_code == 201, r.text
        loc = r.headers["location"]
        upload_id = loc.rsplit("/", 1)[1]
        assert patch(c, loc, 0, data[:1000]).status_code == 204

        piece = data[1000:5000]
        r = patch(c, loc, 1000, piece, Upload_Checksum=sha1_header(piece[:-1]))
        assert r.status_code == 460 and r.headers["tus-resumable"] == "1.0.0", r.text
        assert offset_of(c, loc) == 1000
        r = patch(c, loc, 1000, piece, Upload_Checksum="md5 " + base64.b64encode(b"x" * 16).decode())
        assert r.status_code == 400 and "not supported" in r.json()["detail"]
        assert patch(c, loc, 999, piece).status_code == 409
        assert patch(c, loc, 2000, piece).status_code == 409
        r = patch(c, loc, 1000, piece, Content_Type="application/octet-stream")
        assert r.status_code == 415 and r.headers["tus-resumable"] == "1.0.0"
        r = c.patch(loc, headers={"Content-Type": OCTETS, "Upload-Offset": "1000"}, content=piece)
        assert r.status_code == 412 and r.headers["tus-version"] == "1.0.0"
        assert r.headers["tus-resumable"] == "1.0.0"
        assert c.head(loc).status_code == 412
        r = patch(c, loc, 1000, data[1000:] + b"extra")  # longer than Upload-Length (Content-Length)
        assert r.status_code == 400 and "Upload-Length" in r.json()["detail"]
        assert offset_of(c, loc) == 1000
        r = patch(c, loc, 1000, iter([data[1000:], b"extra"]))  # the same, chunked: no Content-Length
        assert r.status_code == 400 and "Upload-Length" in r.json()["detail"]
        assert offset_of(c, loc) == 1000
        assert head(c, "/api/tus/" + "0" * 32).status_code == 404
        assert head(c, "/api/tus/not-an-id").status_code == 404
        # X-HTTP-Method-Override (core protocol) reaches the same handlers
        r = c.post(loc, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
        assert r.status_code == 200 and r.headers["upload-offset"] == "1000"
        # the two protocols do not continue each other's uploads
        assert c.put(f"/api/uploads/{upload_id}/chunk", params={"index": 0}, content=b"x").status_code == 409
        chunked = c.post("/api/uploads/init", json={"filename": "c.mp4", "size_bytes": 1000,
                                                    "content_type": "video/mp4"}).json()["upload_id"]
        assert head(c, f"/api/tus/{chunked}").status_code == 409
        assert patch(c, f"/api/tus/{chunked}", 0, b"x" * 10).status_code == 409

    with api.client("bob") as c:  # alice's upload does not exist for bob
        r = head(c, loc)
        assert r.status_code == 404 and r.headers["tus-resumable"] == "1.0.0"
        assert patch(c, loc, 1000, piece).status_code == 404
        assert c.delete(loc, headers=TUS).status_code == 404
    with api.client() as c:  # no credentials
        r = head(c, loc)
        assert r.status_code == 401 and r.headers["tus-resumable"] == "1.0.0"
    with api.client("root") as c:  # admins see all
        assert offset_of(c, loc) == 1000

    with api.client("alice") as c:
        # not at the end yet: the chunk API's completion refuses
        assert c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "fr"}).status_code == 409
        r = patch(c, loc, 1000, data[1000:])
        assert r.status_code == 204 and r.headers["upload-offset"] == str(size)
        assert "dubbing-job-id" not in r.headers  # no target_lang in the metadata
        r = c.post(f"/api/uploads/{upload_id}/complete", json={"target_lang": "es-MX"})
        assert r.status_code == 200 and r.json()["created"] is True, r.text
        job = c.get(f"/api/jobs/{r.json()['job_id']}").json()
        assert job["target_lang"] == "es-MX" and job["filename"] == "talk.mp4"
        assert head(c, loc).headers["dubbing-job-id"] == r.json()["job_id"]


def test_creation_with_upload_then_patch_with_sha256_checksum(api, espeak_video):
    data = espeak_video.read_bytes()
    size, half = len(data), len(data) // 2
    with api.client("alice") as c:
        r = create(c, size, body=data[:half], filename="with-body.mp4", filetype="video/mp4",
                   target_lang="es-MX", voice="espeak:es-419")
        assert r.status_code == 201, r.text
        assert r.headers["upload-offset"] == str(half) and "dubbing-job-id" not in r.headers
        loc = r.headers["location"]
        assert offset_of(c, loc) == half
        rest = data[half:]
        digest = base64.b64encode(hashlib.sha256(rest).digest()).decode()
        r = patch(c, loc, half, rest, Upload_Checksum=f"sha256 {digest}")
        assert r.status_code == 204, r.text
        job_id = r.headers["dubbing-job-id"]
        job = c.get(f"/api/jobs/{job_id}")
        assert job.status_code == 200 and job.json()["filename"] == "with-body.mp4"
        assert job.json()["target_lang"] == "es-MX" and job.json()["source_lang"] == "en"
        from resources.jobstore import JobStore

        assert JobStore().get_job(job_id).voice == "espeak:es-419"

        # a creation body that fails its checksum: 460, and no half-made upload is left behind
        r = create(c, size, body=data[:1000], headers={"Upload-Checksum": sha1_header(data[:999])},
                   filename="bad-sum.mp4", filetype="video/mp4")
        assert r.status_code == 460 and "location" not in r.headers, r.text
        gone = c.get(f"/api/uploads/{r.json()['upload']['upload_id']}").json()
        assert gone["state"] == "aborted"

        # the whole file in the creation request: the upload becomes a job at once
        r = create(c, size, body=data, filename="one-shot.mp4", filetype="video/mp4", target_lang="es")
        assert r.status_code == 201, r.text
        assert r.headers["upload-offset"] == str(size) and r.headers["dubbing-job-id"]
        assert c.get(f"/api/jobs/{r.headers['dubbing-job-id']}").status_code == 200


def test_creation_refusals(api):
    from resources.uploads import UploadStore

    limit = UploadStore.max_upload_mb() * 1024 * 1024
    with api.client("alice") as c:
        r = create(c, limit + 1, filename="huge.mp4", filetype="video/mp4")
        assert r.status_code == 413 and r.headers["tus-resumable"] == "1.0.0"
        r = create(c, 1000, filename="notes.txt", filetype="text/plain")
        assert r.status_code == 415 and "video/*" in r.json()["detail"]
        r = c.post("/api/tus/", headers={**TUS, "Upload-Metadata": metadata(filename="a.mp4")})
        assert r.status_code == 400 and "Upload-Length" in r.json()["detail"]
        r = c.post("/api/tus/", headers={**TUS, "Upload-Defer-Length": "1",
                                         "Upload-Metadata": metadata(filename="a.mp4")})
        assert r.status_code == 400 and "Upload-Defer-Length" in r.json()["detail"]
        r = create(c, 1000, headers={"Upload-Metadata": "filename not*base64!"})
        assert r.status_code == 400 and "base64" in r.json()["detail"]
        r = create(c, 1000, filetype="video/mp4")
        assert r.status_code == 400 and "filename" in r.json()["detail"]
        r = create(c, 1000, filename="a.mp4", filetype="video/mp4", note="x" * 5000)
        assert r.status_code in (400, 413) and "Upload-Metadata" in r.json()["detail"]
        r = create(c, 1000, filename="a.mp4", filetype="video/mp4", target_lang="Spanish!")
        assert r.status_code == 422 and "target_lang" in r.json()["detail"]
        r = c.post("/api/tus/", headers={"Upload-Length": "1000", "Upload-Metadata": metadata(filename="a.mp4")})
        assert r.status_code == 412
        # the media type may be left out: it is taken from the file name
        r = create(c, 1000, filename="clip.mkv")
        assert r.status_code == 201, r.text
        assert c.delete(r.headers["location"], headers=TUS).status_code == 204


def test_termination_then_gone(api, espeak_video):
    from resources.uploads import UploadStore

    data = espeak_video.read_bytes()
    with api.client("alice") as c:
        r = create(c, len(data), filename="bye.mp4", filetype="video/mp4", target_lang="es")
        loc = r.headers["location"]
        upload_id = loc.rsplit("/", 1)[1]
        assert patch(c, loc, 0, data[:5000]).status_code == 204
        assert UploadStore().data_path(upload_id).exists()
        r = c.delete(loc, headers=TUS)
        assert r.status_code == 204 and r.headers["tus-resumable"] == "1.0.0"
        assert not UploadStore().data_path(upload_id).exists()
        r = head(c, loc)
        assert r.status_code in (404, 410) and "upload-offset" not in r.headers
        assert patch(c, loc, 5000, data[5000:6000]).status_code in (404, 410)
        assert c.delete(loc, headers=TUS).status_code in (404, 410)


def test_not_media_at_the_end_is_refused_and_the_upload_kept(api):
    junk = b"this is not a video " * 600
    with api.client("alice") as c:
        r = create(c, len(junk), filename="fake.mp4", filetype="video/mp4", target_lang="es")
        loc = r.headers["location"]
        r = patch(c, loc, 0, junk)
        assert r.status_code == 422 and r.headers["tus-resumable"] == "1.0.0", r.text
        assert "fake.mp4" in r.json()["detail"] and r.json()["upload"]["state"] == "receiving"
        assert offset_of(c, loc) == len(junk)
        assert c.delete(loc, headers=TUS).status_code == 204


def test_expired_upload_is_gone(api):
    import datetime as dt

    from resources.uploads import UploadRow, UploadStore

    with api.client("alice") as c:
        r = create(c, 5000, filename="late.mp4", filetype="video/mp4")
        loc = r.headers["location"]
        assert patch(c, loc, 0, b"\0" * 100).status_code == 204
        store = UploadStore()
        with store.session() as s, s.begin():  # the API's database: make_stack points this process at it
            row = s.get(UploadRow, loc.rsplit("/", 1)[1])
            row.expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        r = head(c, loc)
        assert r.status_code == 410 and "upload-offset" not in r.headers
        r = patch(c, loc, 100, b"\0" * 100)
        assert r.status_code == 410 and "expired" in r.json()["detail"]
        assert not store.data_path(loc.rsplit("/", 1)[1]).exists()
