"""Phone shapes through the way phones send them: a rotated HEVC MOV over tus (in two pieces with a pause)
and a variable-frame-rate MP4 over the chunk API, each dubbed by the daemon's sensor-launched run on a live
stack and checked at the download: upright picture, dub and original tracks, subtitles, full length."""

import hashlib
import time

import pytest

import mediashapes
from live import upload_file
from test_jobs_api import wait_state
from test_tus import create, patch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(api):
    api.start_daemon()
    yield api
    api.stop("daemon")


@pytest.fixture(scope="module")
def phone_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phone")
    cache: dict = {}
    shapes = {s.name: s for s in mediashapes.SHAPES}
    return {name: (shapes[name], mediashapes.make(shapes[name], folder, cache))
            for name in ("phone_hevc_mov_rot90", "phone_vfr_mp4")}


def wait_done(client, job_id: str) -> dict:
    view = wait_state(client, job_id, {"done", "failed", "cancelled", "needs_review"})
    assert view["state"] == "done", view
    return view


def tus_upload(client, path, target_lang: str = "es") -> str:
    """tus creation, then two PATCHes with a pause between them; the last one names the job."""
    data = path.read_bytes()
    r = create(client, len(data), filename=path.name, filetype="video/quicktime", target_lang=target_lang,
               source_lang="en", sha256=hashlib.sha256(data).hexdigest())
    assert r.status_code == 201, r.text
    location, half = r.headers["location"], len(data) // 2
    assert patch(client, location, 0, data[:half]).status_code == 204
    time.sleep(0.5)
    r = patch(client, location, half, data[half:])
    assert r.status_code == 204, r.text
    return r.headers["dubbing-job-id"]


def check_download(client, job_id: str, view: dict, shape, src, tmp_path) -> None:
    export = next(n for n in view["outputs"] if n.endswith((".mkv", ".mp4")))
    assert export.endswith("." + shape.container), view["outputs"]
    r = client.get(f"/api/jobs/{job_id}/outputs/{export}")
    assert r.status_code == 200, r.text
    got = tmp_path / export
    got.write_bytes(r.content)
    source, out = mediashapes.probe(src), mediashapes.probe(got)
    vin = next(s for s in source["streams"] if s["codec_type"] == "video")
    vout = next(s for s in out["streams"] if s["codec_type"] == "video")
    assert mediashapes.rotation(vin) == shape.rotation
    assert mediashapes.shown_size(vout) == mediashapes.shown_size(vin)
    at = float(source["format"]["duration"]) / 2
    assert mediashapes.frame_difference(mediashapes.frame(src, at), mediashapes.frame(got, at)) < 12
    audio = [s for s in out["streams"] if s["codec_type"] == "audio"]
    assert [(a.get("tags") or {}).get("language") for a in audio] == ["spa", "eng"]
    assert sum(1 for s in out["streams"] if s["codec_type"] == "subtitle") == 2
    longest = max(mediashapes.stream_seconds(s) for s in source["streams"] if s["codec_type"] in ("audio", "video"))
    assert float(out["format"]["duration"]) >= longest - 0.5
    assert mediashapes.stream_seconds(audio[0]) >= longest - 0.5  # the dub runs the whole length
    for sidecar in (n for n in view["outputs"] if n.endswith((".srt", ".vtt"))):
        assert client.get(f"/api/jobs/{job_id}/outputs/{sidecar}").status_code == 200


def test_rotated_hevc_mov_over_tus_downloads_upright(stack, phone_files, tmp_path):
    shape, src = phone_files["phone_hevc_mov_rot90"]
    with stack.client("alice") as c:
        job_id = tus_upload(c, src)
        view = wait_done(c, job_id)
        check_download(c, job_id, view, shape, src, tmp_path)


def test_vfr_mp4_over_the_chunk_api_downloads_whole(stack, phone_files, tmp_path):
    shape, src = phone_files["phone_vfr_mp4"]
    info = mediashapes.probe(src)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert video["r_frame_rate"] != video["avg_frame_rate"], video  # really variable frame rate
    with stack.client("alice") as c:
        _, job_id = upload_file(c, src, "es")
        view = wait_done(c, job_id)
        check_download(c, job_id, view, shape, src, tmp_path)
