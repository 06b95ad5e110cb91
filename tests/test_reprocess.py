"""Scheduled reprocessing (dubbing_assets/reprocess.py): the schedule on a real Dagster instance with jobs in
every state it must tell apart, real stage failures (a dg.Failure from a missing input, StorageUnavailable from
an S3 endpoint nobody listens on) and real stage metadata (source_media → translation run in process); and the
admin action, POST /api/runtime/reprocess, on a live API."""

from __future__ import annotations

import socket

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

import mediagen
from dubbing_assets import reprocess
from dubbing_assets.definitions import defs
from dubbing_assets.reprocess import Engines, reprocess_schedule, short_hash
from resources import media
from resources.asr import AsrResource
from resources.jobstore import JobStore
from resources.storage import MediaStorage
from resources.translate import TranslatorResource
from resources.tts import TtsResource
from sensors.run_requests import REQUEST_KEY_TAG, stages_from

OLD_ASR = "faster-whisper=0.9.0;model=bundled:tiny.en@0.0.1"
OLD_TTS = "espeak=1.48;model=es"
ENGINES = dict(asr=AsrResource(), translator=TranslatorResource(), tts=TtsResource())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: connections are refused


@pytest.fixture
def store(tmp_path):
    return JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def new_job(store, instance, tmp_path, **kw):
    job = store.create_job(input_path=kw.pop("input_path", str(tmp_path / "missing.mp4")), filename="talk.mp4",
                           source_lang="en", target_lang="es", **kw)
    instance.add_dynamic_partitions("dub_jobs", [job.id])
    return job


def run_of(instance, job, status, **tags):
    return create_run_for_test(instance, job_name="dub_job", status=status,
                               tags={"dagster/partition": job.id, "dubbing/job_id": job.id,
                                     "dubbing/origin": "upload", **tags})


def materialize(instance, job, stage, tag):
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=stage, partition=job.id, metadata={"version_tag": tag, "engine": tag.split("=")[0]}))


def edit(store, job):
    """What saving a segment edit does to the job record."""
    assert store.bump_revision(job.id, store.get_job(job.id).edit_revision) is not None


def current(stage, job):
    return Engines(**ENGINES).current_tag(stage, job)


def done_job(store, instance, tmp_path, asr=None, tts=None, **kw):
    """A job whose only run succeeded, with recorded version tags (the current ones unless given)."""
    job = new_job(store, instance, tmp_path, **kw)
    run_of(instance, job, dg.DagsterRunStatus.SUCCESS)
    materialize(instance, job, "transcript", asr or current("transcript", job))
    materialize(instance, job, "translation", current("translation", job))
    materialize(instance, job, "dubbed_speech", tts or current("dubbed_speech", job))
    return job


def execute(instance, store, job, storage=None, tags=None):
    """The real dub_job for the job's partition, in process."""
    resources = {"job_store": store, **({"storage": storage} if storage else {})}
    result = defs.resolve_job_def("dub_job").execute_in_process(
        instance=instance, partition_key=job.id, raise_on_error=False, resources=resources, tags=tags or {})
    assert not result.success
    return result.run_id


def fail_transiently(instance, store, job, monkeypatch, tags=None):
    """A real StorageUnavailable in source_media: the job's input lives in an S3 nobody answers."""
    with monkeypatch.context() as m:
        m.setenv("DUBBING_S3_BUCKET", "media")
        m.setenv("DUBBING_S3_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
        m.setenv("DUBBING_S3_PATH_STYLE", "true")
        m.setenv("AWS_ACCESS_KEY_ID", "test")
        m.setenv("AWS_SECRET_ACCESS_KEY", "test")
        return execute(instance, store, job, storage=MediaStorage(backend="s3"), tags=tags)


def tick(instance, store, **engines):
    ctx = dg.build_schedule_context(instance=instance, resources={"job_store": store, **{**ENGINES, **engines}})
    result = reprocess_schedule(ctx)
    if isinstance(result, dg.SkipReason):
        return []
    return list(result)


def launched(instance, requests, status=dg.DagsterRunStatus.STARTED):
    """What the daemon does with the schedule's requests: a run per request, with the request's tags."""
    for req in requests:
        create_run_for_test(instance, job_name="dub_job", status=status,
                            tags={**req.tags, "dagster/partition": req.partition_key, "dagster/run_key": req.run_key},
                            asset_selection=frozenset(req.asset_selection))


def summary(requests):
    return [(r.partition_key, [k.to_user_string() for k in r.asset_selection], r.run_key) for r in requests]


def test_schedule_picks_exactly_the_jobs_the_rule_names_once(store, instance, tmp_path, monkeypatch):
    # A transient failure first (the oldest problem): a real StorageUnavailable in source_media.
    transient = new_job(store, instance, tmp_path, input_path="s3://media/uploads/u1/data")
    transient_run = fail_transiently(instance, store, transient, monkeypatch)
    # A run worker that died: the run failed without any stage failure (transient, from its first stage).
    dead = new_job(store, instance, tmp_path)
    dead_run = run_of(instance, dead, dg.DagsterRunStatus.FAILURE).run_id
    # A permanent failure: a real dg.Failure (the input file is missing).
    permanent = new_job(store, instance, tmp_path)
    execute(instance, store, permanent)
    # A transient failure whose retry budget (3) is spent: three earlier reprocess runs, the last one failing.
    spent = new_job(store, instance, tmp_path, input_path="s3://media/uploads/u2/data")
    for i in range(2):
        run_of(instance, spent, dg.DagsterRunStatus.FAILURE, **{"dubbing/origin": "reprocess",
                                                               REQUEST_KEY_TAG: f"reprocess:transient:old{i}"})
    fail_transiently(instance, store, spent, monkeypatch, tags={"dubbing/origin": "reprocess",
                                                                REQUEST_KEY_TAG: "reprocess:transient:old2"})
    # Done with an older ASR model.
    old_asr = done_job(store, instance, tmp_path, asr=OLD_ASR)
    # Done with an older voice and older ASR, but the user edited the segments: re-voiced only.
    edited = done_job(store, instance, tmp_path, asr=OLD_ASR, tts=OLD_TTS)
    edit(store, edited)
    # Edited, only ASR outdated: left alone (its transcript and translation are the user's now).
    edited_asr = done_job(store, instance, tmp_path, asr=OLD_ASR)
    edit(store, edited_asr)
    # Done with the current versions.
    fine = done_job(store, instance, tmp_path)
    # Cancelled, running, queued: not finished or not wanted.
    cancelled = new_job(store, instance, tmp_path)
    run_of(instance, cancelled, dg.DagsterRunStatus.CANCELED)
    running = new_job(store, instance, tmp_path)
    run_of(instance, running, dg.DagsterRunStatus.SUCCESS)
    run_of(instance, running, dg.DagsterRunStatus.STARTED)
    materialize(instance, running, "transcript", OLD_ASR)
    never_ran = new_job(store, instance, tmp_path)
    # Expired (the retention tombstone), and one whose partition is gone: both outdated, both skipped.
    expired = done_job(store, instance, tmp_path, asr=OLD_ASR)
    store.mark_expired(expired.id, everything=True)
    gone = done_job(store, instance, tmp_path, asr=OLD_ASR)
    instance.delete_dynamic_partition("dub_jobs", gone.id)
    # A transient failure the admin action already queued (its key is in the job store): not picked again.
    queued = new_job(store, instance, tmp_path)
    queued_run = run_of(instance, queued, dg.DagsterRunStatus.FAILURE).run_id
    store.add_run_request(queued.id, kind="reprocess", stages=stages_from("source_media"),
                          key=f"reprocess:transient:{queued_run}")

    requests = tick(instance, store)
    asr_key = short_hash(current("transcript", old_asr))
    tts_key = short_hash(current("dubbed_speech", edited))
    assert summary(requests) == [
        (transient.id, stages_from("source_media"), f"reprocess:transient:{transient_run}"),
        (dead.id, stages_from("source_media"), f"reprocess:transient:{dead_run}"),
        (old_asr.id, stages_from("transcript"), f"reprocess:outdated:{old_asr.id}:transcript:{asr_key}"),
        (edited.id, stages_from("dubbed_speech"), f"reprocess:outdated:{edited.id}:dubbed_speech:{tts_key}"),
    ]
    for req in requests:
        assert req.tags["dubbing/origin"] == "reprocess"
        assert req.tags[REQUEST_KEY_TAG] == req.run_key
        assert req.tags["dubbing/job_id"] == req.partition_key
        assert req.tags["dubbing/reason"].startswith(req.run_key.split(":")[1])
    assert "StorageUnavailable" in requests[0].tags["dubbing/reason"]
    assert OLD_ASR in requests[2].tags["dubbing/reason"]
    skipped = {permanent.id, spent.id, edited_asr.id, fine.id, cancelled.id, running.id, never_ran.id, expired.id,
               gone.id, queued.id}
    assert not skipped & {r.partition_key for r in requests}

    # The daemon launches them; the next tick asks for none of them again, even once they have ended (the
    # outdated ones succeeding without changing anything, as a bad engine would: the key stops a loop).
    launched(instance, requests[:2])
    launched(instance, requests[2:], status=dg.DagsterRunStatus.SUCCESS)
    assert tick(instance, store) == []

    # A better ASR model installed: the done job with current versions is outdated now; the edited one keeps
    # its transcript; the one already re-run for the older model is outdated again (a new key: a new model).
    small = tmp_path / "whisper-small"
    small.mkdir()
    (small / "model.bin").write_bytes(b"\0" * 1000)
    better = AsrResource(model=str(small))
    new_key = short_hash(better.version_tag())
    assert summary(tick(instance, store, asr=better)) == [
        (old_asr.id, stages_from("transcript"), f"reprocess:outdated:{old_asr.id}:transcript:{new_key}"),
        (fine.id, stages_from("transcript"), f"reprocess:outdated:{fine.id}:transcript:{new_key}"),
    ]


def test_bounded_per_tick_oldest_first_and_the_retry_budget(store, instance, tmp_path, monkeypatch):
    monkeypatch.setenv("DUBBING_REPROCESS_MAX_PER_TICK", "2")
    monkeypatch.setenv("DUBBING_REPROCESS_RETRY_BUDGET", "1")
    jobs = [done_job(store, instance, tmp_path, asr=OLD_ASR) for _ in range(3)]
    failing = new_job(store, instance, tmp_path, input_path="s3://media/uploads/u3/data")
    fail_transiently(instance, store, failing, monkeypatch)

    first = tick(instance, store)
    assert [r.partition_key for r in first] == [jobs[0].id, jobs[1].id]  # oldest problems first, two per tick
    launched(instance, first, status=dg.DagsterRunStatus.SUCCESS)
    second = tick(instance, store)
    assert [r.partition_key for r in second] == [jobs[2].id, failing.id]
    launched(instance, second[:1], status=dg.DagsterRunStatus.SUCCESS)
    # the transient re-run fails transiently again (a real StorageUnavailable): the budget of one is spent
    fail_transiently(instance, store, failing, monkeypatch, tags=dict(second[1].tags))
    assert tick(instance, store) == []
    monkeypatch.setenv("DUBBING_REPROCESS_RETRY_BUDGET", "2")
    third = tick(instance, store)
    assert [r.partition_key for r in third] == [failing.id]
    assert third[0].run_key != second[1].run_key  # a new failed run, a new key


def test_classification_of_real_failures(store, instance, tmp_path, monkeypatch):
    permanent = new_job(store, instance, tmp_path)
    transient = new_job(store, instance, tmp_path, input_path="s3://media/uploads/u4/data")
    runs = {
        "permanent": execute(instance, store, permanent),
        "transient": fail_transiently(instance, store, transient, monkeypatch),
        "dead": run_of(instance, new_job(store, instance, tmp_path), dg.DagsterRunStatus.FAILURE).run_id,
    }
    how = {name: reprocess.classify(instance, instance.get_run_by_id(run_id)) for name, run_id in runs.items()}
    assert (how["permanent"].transient, how["permanent"].stage) == (False, "source_media")
    assert (how["transient"].transient, how["transient"].stage) == (True, "source_media")
    assert how["transient"].detail == "StorageUnavailable"
    assert (how["dead"].transient, how["dead"].stage) == (True, "source_media")


def test_a_reprocess_that_fails_for_good_leaves_the_done_job_done_with_its_outputs(store, instance, tmp_path,
                                                                                   monkeypatch):
    """A done job is reprocessed (an outdated model) and the reprocess fails for good (here its input is gone: a
    real dg.Failure in source_media). The job stays done with its earlier outputs, the failed reprocess is among
    its runs, the owner is not told "Dub failed", retention treats it as done (outputs kept to the output age),
    and the rule does not pick the same reprocess again. A failure of any other run still fails the job."""
    from resources.accounts import Accounts
    from resources.notify import NtfyResource
    from resources.retention import activity
    from sensors.notify import notify_run
    from upload_api import dagster_view as dv

    owner = Accounts(store).add_user("carol", "carol-password-1")
    storage = MediaStorage(root=str(tmp_path / "data"))
    job = done_job(store, instance, tmp_path, asr=OLD_ASR, owner=owner.id)
    built = storage.artifact(job.id, "talk.es.mkv")
    built.write_bytes(b"the good dub")
    storage.publish_outputs(job.id, [built])
    picks = tick(instance, store)
    assert [(r.partition_key, r.tags["dubbing/origin"]) for r in picks] == [(job.id, "reprocess")]
    failed_id = execute(instance, store, job, storage=storage, tags=picks[0].tags)  # the daemon runs it: it fails

    runs = dv.runs_by_job(instance, [job.id])[job.id]
    assert [(r.status, r.tags["dubbing/origin"]) for r in runs] == [
        (dg.DagsterRunStatus.FAILURE, "reprocess"), (dg.DagsterRunStatus.SUCCESS, "upload")]
    assert runs[0].run_id == failed_id
    job = store.get_job(job.id)
    assert dv.job_state(job, runs, instance) == "done"
    assert [o.name for o in storage.outputs(job.id)] == ["talk.es.mkv"]
    assert (storage.outputs_dir(job.id) / "talk.es.mkv").read_bytes() == b"the good dub"
    decided = notify_run(instance, runs[0], "failure", NtfyResource(url="http://127.0.0.1:9"), store, storage)
    assert decided.startswith("skipped: a reprocess failed over a finished dub"), decided
    assert activity(job, instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": job.id}))).state == "done"
    assert tick(instance, store) == []  # its key is spent: not picked again

    # the rule is about a reprocess over a done job only: the same failure of a first run fails the job
    other = new_job(store, instance, tmp_path, owner=owner.id)
    execute(instance, store, other, storage=storage, tags={"dubbing/origin": "upload"})
    other_runs = dv.runs_by_job(instance, [other.id])[other.id]
    assert dv.job_state(other, other_runs, instance) == "failed"
    assert not notify_run(instance, other_runs[0], "failure", NtfyResource(url="http://127.0.0.1:9"), store,
                          storage).startswith("skipped: a reprocess")
    # and a reprocess that fails over a job that had failed leaves it failed
    run_of(instance, other, dg.DagsterRunStatus.FAILURE, **{"dubbing/origin": "reprocess"})
    assert dv.job_state(other, dv.runs_by_job(instance, [other.id])[other.id], instance) == "failed"


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    work = tmp_path_factory.mktemp("reprocess_media")
    wav, _ = mediagen.speech_track(mediagen.SCRIPT[:2], work, voice="espeak")
    return mediagen.make_video(wav, work / "short.mp4")


def test_stages_record_engine_and_version_and_a_current_job_is_left_alone(store, instance, tmp_path,
                                                                           short_video, monkeypatch):
    """source_media → translation for real: each records engine, engine_version, model (where there is one)
    and the version tag the rule compares, equal to the current one."""
    monkeypatch.setenv("DATABASE_URL", store.database_url)  # the code location's own job store resource
    job = new_job(store, instance, tmp_path, input_path=str(short_video))
    selection = ["source_media", "extracted_audio", "transcript", "translation"]
    result = defs.resolve_job_def("dub_job").execute_in_process(
        instance=instance, partition_key=job.id, asset_selection=[dg.AssetKey(s) for s in selection])
    assert result.success
    meta = {}
    for stage in selection:
        record = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(stage), asset_partitions=[job.id]), limit=1).records[0]
        meta[stage] = {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}
    for stage in ("source_media", "extracted_audio"):
        assert meta[stage]["engine"] == "ffmpeg"
        assert meta[stage]["engine_version"] == media.ffmpeg_version() != "unknown"
        assert meta[stage]["version_tag"] == media.version_tag() == f"ffmpeg={media.ffmpeg_version()}"
    assert meta["transcript"]["engine"] == "faster-whisper"
    import faster_whisper

    assert meta["transcript"]["engine_version"] == faster_whisper.__version__
    assert meta["transcript"]["model"] == "bundled:tiny.en"
    assert meta["transcript"]["version_tag"] == AsrResource().version_tag()
    assert meta["translation"]["engine"] == meta["translation"]["backend"] == "apertium"
    assert meta["translation"]["model"].startswith("eng-spa@")
    assert meta["translation"]["engine_version"] not in ("", "unknown")
    assert meta["translation"]["version_tag"] == TranslatorResource().version_tag("en", "es")
    # its latest run succeeded with the current versions: nothing to do
    assert tick(instance, store) == []
    # the admin installs another ASR model: the job is outdated from its transcript on
    other = AsrResource(model="Systran/faster-whisper-small")
    assert summary(tick(instance, store, asr=other)) == [
        (job.id, stages_from("transcript"),
         f"reprocess:outdated:{job.id}:transcript:{short_hash(other.version_tag())}")]


def test_tts_version_tag_matches_what_an_engine_records():
    tts = TtsResource()
    for lang, requested, voice in (("es", "auto", None), ("en", "espeak", None), ("en", "auto", None),
                                   ("en", "auto", "piper:en_US-joe-medium")):
        from resources.tts import version_metadata

        engine = tts.engine_for(lang, requested, voice)
        recorded = version_metadata(engine)
        assert recorded["version_tag"] == tts.version_tag(lang, requested, voice)
        assert recorded["engine"] == engine.name and recorded["engine_version"] == engine.version
    assert tts.version_tag("es").startswith("espeak=") and ";model=es" in tts.version_tag("es")


# --- the admin action ------------------------------------------------------------------------------

def test_admin_reprocess_action(api):
    import os

    assert os.environ["DAGSTER_HOME"] == api.env["DAGSTER_HOME"]  # the stack's instance and job store
    store = JobStore()
    instance = dg.DagsterInstance.from_config(api.env["DAGSTER_HOME"])
    try:
        job = store.create_job(input_path="/nowhere.mp4", filename="talk.mp4", source_lang="en", target_lang="es",
                               owner=api.users["alice"].id)
        instance.add_dynamic_partitions("dub_jobs", [job.id])
        run_of(instance, job, dg.DagsterRunStatus.SUCCESS)
        materialize(instance, job, "transcript", OLD_ASR)
        key = f"reprocess:outdated:{job.id}:transcript:{short_hash(AsrResource().version_tag())}"
        with api.client("alice") as alice:
            assert alice.post("/api/runtime/reprocess", json={"dry_run": True}).status_code == 403
        with api.client("root") as root:
            for bad in ({"rule": "everything"}, {"limit": 0}, {"limit": 101}, {"dry_run": "maybe"},
                        {"limit": "ten"}):
                assert root.post("/api/runtime/reprocess", json=bad).status_code == 422, bad
            dry = root.post("/api/runtime/reprocess", json={"rule": "outdated", "dry_run": True, "limit": 5})
            assert dry.status_code == 200, dry.text
            ours = [p for p in dry.json()["picked"] if p["job_id"] == job.id]
            assert dry.json()["dry_run"] is True
            assert ours == [{"job_id": job.id, "rule": "outdated", "reason": ours[0]["reason"],
                             "stages": stages_from("transcript"), "key": key, "queued": False}]
            assert OLD_ASR in ours[0]["reason"]
            assert store.run_requests_of(job.id) == []
            # transient only: this job is not a failure
            only = root.post("/api/runtime/reprocess", json={"rule": "transient", "dry_run": True})
            assert job.id not in {p["job_id"] for p in only.json()["picked"]}
            real = root.post("/api/runtime/reprocess", json={"rule": "all", "dry_run": False, "limit": 100})
            assert real.status_code == 200, real.text
            assert [p for p in real.json()["picked"] if p["job_id"] == job.id][0]["queued"] is True
            queued = store.run_requests_of(job.id)
            assert [(r.kind, r.key, r.stages, r.requested_by) for r in queued] == [
                ("reprocess", key, stages_from("transcript"), api.users["root"].id)]
            # asked again: the request is queued already, so nothing is picked or queued twice
            again = root.post("/api/runtime/reprocess", json={"dry_run": False})
            assert job.id not in {p["job_id"] for p in again.json()["picked"]}
            assert len(store.run_requests_of(job.id)) == 1
        assert "reprocess_requested" in api.log("api")  # the audit line
        # the run request sensor launches it with the key; the schedule then never picks that key again
        from sensors.run_requests import run_request_sensor

        ctx = dg.build_sensor_context(instance=instance, resources={"job_store": store})
        sensor_result = run_request_sensor(ctx)
        request = [r for r in sensor_result.run_requests if r.partition_key == job.id][0]
        assert request.run_key == key and request.tags[REQUEST_KEY_TAG] == key
        launched(instance, [request], status=dg.DagsterRunStatus.SUCCESS)
        assert job.id not in {r.partition_key for r in tick(instance, store)}
    finally:
        instance.dispose()
