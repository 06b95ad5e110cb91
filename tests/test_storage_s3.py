"""MediaStorage's S3 backend on a real S3 server (SeaweedFS `weed mini` from scripts/s3_server.py, one per
module): artifacts, JSON, outputs, the key prefix, scratch clean-up; a whole dub with DUBBING_STORAGE=s3
and an s3:// input; its outputs downloaded through the live API (range requests, presigned redirects, another
user's 404, and 503 + Retry-After while S3 is down)."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from pipeline_helpers import materializations  # imports the Definitions before any test changes the env
from resources import s3
from resources.storage import MediaStorage, Output, StorageUnavailable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

JOB = "j" + "a" * 32


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    from s3_server import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server):
    """This process on the S3 backend under a fresh key prefix; the environment is put back afterwards."""
    saved = dict(os.environ)
    os.environ.update(s3_server.env)
    os.environ["DUBBING_S3_PREFIX"] = f"unit-{secrets.token_hex(4)}/"
    try:
        yield s3_server
    finally:
        os.environ.clear()
        os.environ.update(saved)


def keys(server, prefix: str) -> list[str]:
    found = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix).get("Contents", [])
    return sorted(obj["Key"] for obj in found)


def test_json_round_trip_and_missing_artifact(s3_env, tmp_path):
    storage = MediaStorage(root=str(tmp_path))
    prefix = os.environ["DUBBING_S3_PREFIX"]
    assert storage.is_s3
    data = {"text": "años, niños — ok", "n": [1, 2.5, None]}
    where = storage.write_json(JOB, "translation.json", data)
    assert where == f"s3://{s3_env.bucket}/{prefix}jobs/{JOB}/work/translation.json"
    assert storage.read_json(JOB, "translation.json") == data
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=f"{prefix}jobs/{JOB}/work/translation.json")
    assert "años" in body["Body"].read().decode("utf-8")  # UTF-8, not \u escapes
    with pytest.raises(FileNotFoundError) as err:
        storage.read_json(JOB, "speech.json")
    assert "speech.json" in str(err.value) and JOB in str(err.value) and "upstream" in str(err.value)
    with pytest.raises(FileNotFoundError, match="asr.wav.*upstream"):
        storage.fetch(JOB, "asr.wav")
    assert not (tmp_path / "jobs").exists()  # nothing of the job is kept locally


def test_artifacts_saved_fetched_and_scratch_removed(s3_env, tmp_path):
    storage = MediaStorage(root=str(tmp_path))
    prefix = os.environ["DUBBING_S3_PREFIX"]
    scratch = tmp_path / "scratch" / JOB
    with storage.scratch(JOB):
        path = storage.artifact(JOB, "asr.wav")
        assert path.parent == scratch
        path.write_bytes(b"RIFF" + bytes(range(256)) * 40)
        storage.save(JOB, "asr.wav")
        (storage.artifact(JOB, "segments") / "00001.wav").parent.mkdir()  # scratch only, never saved
    assert not scratch.exists()
    assert keys(s3_env, prefix) == [f"{prefix}jobs/{JOB}/work/asr.wav"]
    with storage.scratch(JOB):
        fetched = storage.fetch(JOB, "asr.wav")  # downloaded again into scratch
        assert fetched.read_bytes() == b"RIFF" + bytes(range(256)) * 40
        assert [p.name for p in scratch.iterdir()] == ["asr.wav"]  # no partial download left
    with pytest.raises(RuntimeError), storage.scratch(JOB):  # a failing stage cleans up too
        storage.artifact(JOB, "mix_raw.wav").write_bytes(b"x")
        raise RuntimeError("stage failed")
    assert not scratch.exists()


def test_outputs_published_listed_read_and_cleared(s3_env, tmp_path):
    storage = MediaStorage(root=str(tmp_path))
    prefix = os.environ["DUBBING_S3_PREFIX"]
    with storage.scratch(JOB):
        build = storage.artifact(JOB, "export")
        build.mkdir()
        names = ["talk.es.mkv", "talk.es.srt", "talk.es.vtt"]
        for name in names:
            (build / name).write_bytes(name.encode() * 100)
        published = storage.publish_outputs(JOB, [build / n for n in names])
        assert not any((build / n).exists() for n in names)  # moved into the bucket
    assert published == [Output(n, len(n) * 100) for n in names]
    assert storage.outputs(JOB) == published
    assert keys(s3_env, prefix) == [f"{prefix}jobs/{JOB}/outputs/{n}" for n in names]
    assert storage.output_location(JOB, "talk.es.mkv") == f"s3://{s3_env.bucket}/{prefix}jobs/{JOB}/outputs/talk.es.mkv"
    assert b"".join(storage.read_output(JOB, "talk.es.mkv", 100, 200)) == (b"talk.es.mkv" * 100)[100:200]
    assert storage.copy_output(JOB, "talk.es.srt", tmp_path / "copy.srt").read_bytes() == b"talk.es.srt" * 100
    got = httpx.get(storage.presign(JOB, "talk.es.vtt"))
    assert got.status_code == 200 and got.content == b"talk.es.vtt" * 100
    assert 'filename="talk.es.vtt"' in got.headers["content-disposition"]

    # the prefix is respected: another prefix in the same bucket sees none of it
    os.environ["DUBBING_S3_PREFIX"] = "elsewhere/"
    assert storage.outputs(JOB) == []
    os.environ["DUBBING_S3_PREFIX"] = prefix

    storage.write_json(JOB, "mix.json", {"no_speech": True})
    storage.clear_outputs(JOB)
    assert storage.outputs(JOB) == [] and keys(s3_env, prefix) == [f"{prefix}jobs/{JOB}/work/mix.json"]
    storage.clear_job(JOB)
    assert keys(s3_env, prefix) == []
    assert not (tmp_path / "scratch" / JOB).exists()


def test_s3_input_fetched_into_scratch(s3_env, tmp_path):
    storage = MediaStorage(root=str(tmp_path))
    cfg = s3.settings()
    key = cfg.key("uploads", "u" + "1" * 31, "data")
    s3_env.client().put_object(Bucket=cfg.bucket, Key=key, Body=b"media bytes")
    with storage.scratch(JOB):
        local = storage.input_file(JOB, cfg.url(key), "holiday.MP4")
        assert local == tmp_path / "scratch" / JOB / "input.mp4" and local.read_bytes() == b"media bytes"
    assert not local.exists()
    assert storage.input_file(JOB, "/srv/in/file.mp4") == Path("/srv/in/file.mp4")  # a local input as it is
    with pytest.raises(FileNotFoundError, match="input s3://.*missing"):
        storage.input_file(JOB, cfg.url(cfg.key("uploads", "gone", "data")), "x.mp4")
    with pytest.raises(ValueError, match="not in bucket"):
        storage.input_file(JOB, "s3://another-bucket/uploads/x/data", "x.mp4")


def test_unreachable_s3_is_storage_unavailable_without_secrets(s3_env, tmp_path):
    from s3_server import SECRET_KEY, _free_ports

    os.environ["DUBBING_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{_free_ports(1)[0]}"  # nothing listens there
    storage = MediaStorage(root=str(tmp_path))
    started = time.monotonic()
    for call in (lambda: storage.outputs(JOB), lambda: storage.read_json(JOB, "source.json"),
                 lambda: storage.write_json(JOB, "x.json", {})):
        with pytest.raises(StorageUnavailable) as err:
            call()
        assert "unavailable" in str(err.value) and SECRET_KEY not in str(err.value)
    assert time.monotonic() - started < 30  # fails in seconds, never hangs


def test_api_answers_storage_failures_without_a_500(s3_env, tmp_path):
    """What the API makes of storage failures (upload_api.routers.jobs.storage_call): settings missing → 503
    naming the variable; S3 refusing (here: no credentials at all) → 502 naming the error class."""
    from fastapi import HTTPException
    from s3_server import SECRET_KEY

    from upload_api.routers.jobs import storage_call

    storage = MediaStorage(root=str(tmp_path))
    del os.environ["DUBBING_S3_BUCKET"]
    with pytest.raises(HTTPException) as err:
        storage_call(storage.outputs, JOB)
    assert err.value.status_code == 503 and "DUBBING_S3_BUCKET" in err.value.detail
    os.environ["DUBBING_S3_BUCKET"] = s3_env.bucket
    os.environ["DUBBING_S3_REGION"] = "eu-west-9"  # other settings: a client of its own, made without keys
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(name)
    os.environ.update({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                       "AWS_EC2_METADATA_DISABLED": "true"})
    with pytest.raises(HTTPException) as err:
        storage_call(storage.outputs, JOB)
    assert err.value.status_code == 502 and "NoCredentialsError" in err.value.detail
    assert SECRET_KEY not in err.value.detail


def test_web_player_may_follow_presigned_redirects(s3_env):
    """With presigned downloads the <video> follows a redirect to S3: the page's CSP media-src allows that
    origin (and only with presigned downloads on)."""
    from upload_api.routers import ui

    assert ui.media_src() == "'self'"
    os.environ["DUBBING_S3_PRESIGN_DOWNLOADS"] = "true"
    assert ui.media_src() == f"'self' {s3_env.endpoint}"
    os.environ["DUBBING_STORAGE"] = "local"
    assert ui.media_src() == "'self'"


# --- a whole dub on S3, downloaded through the API ---------------------------------------------------


@pytest.fixture(scope="module")
def s3_dub(s3_server, espeak_video, tmp_path_factory):
    """The API (uvicorn) on DUBBING_STORAGE=s3 and a dub of the generated talk whose input is an s3:// object,
    run in this process on the API's Dagster instance."""
    from dubbing_assets.definitions import defs
    from dubbing_assets.partitions import dub_jobs
    from live import running_stack
    from resources.jobstore import JobStore

    env = {**s3_server.env, "DUBBING_S3_PREFIX": "dub/"}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with running_stack(tmp_path_factory.mktemp("s3api"), env=env) as stack:
            cfg = s3.settings()
            key = cfg.key("uploads", "u" + secrets.token_hex(16), "data")
            s3_server.client().upload_file(str(espeak_video), cfg.bucket, key)
            job = JobStore().create_job(input_path=cfg.url(key), filename=espeak_video.name, source_lang="en",
                                        target_lang="es", owner=stack.users["alice"].id)
            with dg.DagsterInstance.get() as instance:
                instance.add_dynamic_partitions(dub_jobs.name, [job.id])
                started = time.monotonic()
                result = defs.resolve_job_def("dub_job").execute_in_process(
                    instance=instance, partition_key=job.id, raise_on_error=False)
                print(f"whole dub on S3: {time.monotonic() - started:.1f} s")
            yield stack, job, result
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_whole_dub_on_s3(s3_dub, s3_server, espeak_video):
    stack, job, result = s3_dub
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    mats = materializations(result)
    assert set(mats) == {"source_media", "extracted_audio", "transcript", "translation", "dubbed_speech",
                         "dubbed_mix", "dubbed_video"}
    stem = espeak_video.stem
    outputs = sorted([f"{stem}.es.mkv", f"{stem}.es.srt", f"{stem}.es.vtt", f"{stem}.en.srt", f"{stem}.en.vtt"])
    assert mats["dubbed_video"]["outputs_dir"] == f"s3://{s3_server.bucket}/dub/jobs/{job.id}/outputs"
    work = [k.split("/work/", 1)[-1] for k in keys(s3_server, f"dub/jobs/{job.id}/work/")]
    cache = [k for k in work if k.startswith("tts_cache/")]  # the segment cache: one raw WAV per spoken segment
    assert len(cache) == mats["dubbed_speech"]["tts_synthesized"] == mats["dubbed_speech"]["segments"] > 0
    work = [k for k in work if k not in cache]
    assert sorted(work) == sorted(["source.json", "asr.wav", "original.wav", "transcript.json", "translation.json",
                                   "dub_track.wav", "speech.json", "mix.opus", "mix.json"]), work
    assert keys(s3_server, f"dub/jobs/{job.id}/outputs/") == [f"dub/jobs/{job.id}/outputs/{n}" for n in outputs]
    data = Path(stack.env["DUBBING_DATA_DIR"])
    assert not (data / "jobs").exists()  # nothing of the job kept locally ...
    leftovers = list((data / "scratch").rglob("*")) if (data / "scratch").exists() else []
    assert leftovers == []  # ... and every stage's scratch removed

    name = f"{stem}.es.mkv"
    with stack.client("alice") as c, stack.client("bob") as b:
        assert c.get(f"/api/jobs/{job.id}").json()["outputs"] == outputs
        full = c.get(f"/api/jobs/{job.id}/outputs/{name}")
        stored = s3_server.client().get_object(Bucket=s3_server.bucket, Key=f"dub/jobs/{job.id}/outputs/{name}")
        assert full.status_code == 200 and full.content == stored["Body"].read()
        assert full.headers["content-type"] == "video/x-matroska"
        assert full.headers["accept-ranges"] == "bytes" and f'filename="{name}"' in full.headers["content-disposition"]
        size = len(full.content)
        part = c.get(f"/api/jobs/{job.id}/outputs/{name}", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == full.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        tail = c.get(f"/api/jobs/{job.id}/outputs/{name}", headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == full.content[-50:]
        past = c.get(f"/api/jobs/{job.id}/outputs/{name}", headers={"Range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        assert c.get(f"/api/jobs/{job.id}/outputs/{name}", headers={"Range": "items=1-2"}).status_code == 400
        srt = c.get(f"/api/jobs/{job.id}/outputs/{stem}.es.srt")
        assert srt.status_code == 200 and srt.text.startswith("1\n00:00:")
        assert c.get(f"/api/jobs/{job.id}/outputs/..%2Fwork%2Fsource.json").status_code == 404
        assert c.get(f"/api/jobs/{job.id}/outputs/nothing.mkv").status_code == 404
        assert b.get(f"/api/jobs/{job.id}/outputs/{name}").status_code == 404  # another user's job
    with stack.client("root") as admin:
        assert admin.get("/api/runtime/state").json()["storage"]["files"] == "s3"


@pytest.mark.slow
def test_redub_on_s3_reuses_the_segment_cache(s3_dub, s3_server):
    """A re-dub on S3 after one segment's text changed: only that segment is synthesised, the rest come from
    the cache objects, the stale cache object is deleted and no scratch is left behind."""
    from dubbing_assets.definitions import defs

    stack, job, _ = s3_dub
    st = MediaStorage()
    translation = st.read_json(job.id, "translation.json")
    translation["segments"][0]["text"] = "Buenas tardes a todos."
    st.write_json(job.id, "translation.json", translation)
    before = keys(s3_server, f"dub/jobs/{job.id}/work/tts_cache/")
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("dub_job").execute_in_process(
            instance=instance, partition_key=job.id, raise_on_error=False,
            asset_selection=[dg.AssetKey(s) for s in ("dubbed_speech", "dubbed_mix", "dubbed_video")])
    assert result.success
    mats = materializations(result)
    assert set(mats) == {"dubbed_speech", "dubbed_mix", "dubbed_video"}
    n = mats["dubbed_speech"]["segments"]
    assert (mats["dubbed_speech"]["tts_synthesized"], mats["dubbed_speech"]["tts_reused"]) == (1, n - 1)
    after = keys(s3_server, f"dub/jobs/{job.id}/work/tts_cache/")
    assert len(after) == len(before) == n and len(set(after) - set(before)) == 1
    assert "Buenas tardes a todos." in st.read_json(job.id, "speech.json")["segments"][0]["text"]
    data = Path(stack.env["DUBBING_DATA_DIR"])
    assert not list((data / "scratch").rglob("*.wav")) if (data / "scratch").exists() else True


@pytest.mark.slow
def test_presigned_download_redirect(s3_dub, s3_server, espeak_video):
    from s3_server import SECRET_KEY

    stack, job, result = s3_dub
    assert result.success
    name = f"{espeak_video.stem}.es.mkv"
    stack.stop("api")
    stack.env["DUBBING_S3_PRESIGN_DOWNLOADS"] = "true"
    try:
        stack.start_api()
        with stack.client("alice") as c, stack.client("bob") as b:
            r = c.get(f"/api/jobs/{job.id}/outputs/{name}")
            assert r.status_code == 307 and r.headers["location"].startswith(s3_server.endpoint)
            assert SECRET_KEY not in r.headers["location"] and SECRET_KEY not in r.text
            direct = httpx.get(r.headers["location"])
            assert direct.status_code == 200 and f'filename="{name}"' in direct.headers["content-disposition"]
            ranged = httpx.get(r.headers["location"], headers={"Range": "bytes=100-199"})
            assert ranged.status_code == 206 and ranged.content == direct.content[100:200]
            sub = c.get(f"/api/jobs/{job.id}/outputs/{espeak_video.stem}.es.vtt")  # subtitles stay same-origin
            assert sub.status_code == 200 and sub.text.startswith("WEBVTT")
            assert b.get(f"/api/jobs/{job.id}/outputs/{name}").status_code == 404  # no URL for another user
    finally:
        stack.stop("api")
        stack.env.pop("DUBBING_S3_PRESIGN_DOWNLOADS")
        stack.start_api()


@pytest.mark.slow
def test_download_while_s3_is_down_is_503(s3_dub, s3_server, espeak_video):
    stack, job, result = s3_dub
    assert result.success
    name = f"{espeak_video.stem}.es.mkv"
    s3_server.kill()
    try:
        with stack.client("alice") as c:
            r = c.get(f"/api/jobs/{job.id}/outputs/{name}", headers={"Range": "bytes=0-99"})
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
            assert "unavailable" in r.json()["detail"] and s3_server.endpoint not in r.text
            view = c.get(f"/api/jobs/{job.id}")
            assert view.status_code == 503 and view.headers["retry-after"], view.text
    finally:
        s3_server.start()
    # back when S3 is (a restarted SeaweedFS may answer a few requests with 503 while its volume comes up:
    # those must reach the client as 503 too, never as a 500)
    statuses = []
    with stack.client("alice") as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not statuses or statuses[-1] != 206):
            statuses.append(c.get(f"/api/jobs/{job.id}/outputs/{name}", headers={"Range": "bytes=0-99"}).status_code)
            if statuses[-1] != 206:
                time.sleep(0.5)
    assert statuses[-1] == 206 and set(statuses) <= {503, 206}, statuses
