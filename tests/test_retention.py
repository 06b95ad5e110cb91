"""Retention: the policy read from the environment; the retention sensor on a real Dagster instance with real
files on local storage (and on a real S3 server, SeaweedFS) removing work artifacts, uploaded inputs and outputs
by the two ages, tombstoning jobs and asking for their partitions' deletion, leaving pinned, recent and running
jobs alone, finishing a tick that died halfway, and doing nothing new on a second tick; the API on a live
uvicorn: pin/unpin, another user's pin 404, a bad body 422, and 410 Gone for an expired job's outputs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import sqlalchemy.orm
from dagster._core.storage.runs.schema import RunsTable
from dagster._core.test_utils import create_run_for_test

from resources import retention
from resources.accounts import Accounts
from resources.jobstore import JobRow, JobStore
from resources.storage import MediaStorage
from resources.uploads import UploadStore
from upload_api import dagster_view as dv

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.timezone.utc)
DAYS = dt.timedelta(days=1)
POLICY_ENV = ("DUBBING_RETENTION_DAYS", "DUBBING_OUTPUT_RETENTION_DAYS")


# --- the policy -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, artifacts, outputs, warned", [
    ({}, None, None, False),  # the default: keep everything forever
    ({"DUBBING_RETENTION_DAYS": "7"}, 7, 7, False),  # outputs default to the intermediates' age
    ({"DUBBING_RETENTION_DAYS": "7", "DUBBING_OUTPUT_RETENTION_DAYS": "30"}, 7, 30, False),
    ({"DUBBING_RETENTION_DAYS": "7", "DUBBING_OUTPUT_RETENTION_DAYS": "3"}, 7, 7, True),  # raised, with a warning
    ({"DUBBING_RETENTION_DAYS": "7", "DUBBING_OUTPUT_RETENTION_DAYS": "0"}, 7, None, False),  # outputs forever
    ({"DUBBING_OUTPUT_RETENTION_DAYS": "5"}, None, None, True),  # intermediates forever: outputs too
    ({"DUBBING_RETENTION_DAYS": "soon"}, None, None, False),  # not a number: the default
])
def test_policy_from_environment(monkeypatch, caplog, env, artifacts, outputs, warned):
    for name in POLICY_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="dubbing.retention"):
        policy = retention.RetentionPolicy.from_env()
    assert (policy.artifacts_days, policy.outputs_days) == (artifacts, outputs)
    assert policy.enabled == (artifacts is not None)
    assert any("DUBBING_OUTPUT_RETENTION_DAYS" in r.getMessage() for r in caplog.records) == warned


def test_interval_setting(monkeypatch):
    monkeypatch.delenv("DUBBING_RETENTION_INTERVAL_S", raising=False)
    assert retention.interval_s() == 3600
    monkeypatch.setenv("DUBBING_RETENTION_INTERVAL_S", "120")
    assert retention.interval_s() == 120
    from sensors.retention import build_retention_sensor

    sensor = build_retention_sensor()
    assert sensor.minimum_interval_seconds == 120
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_the_sensor_is_in_the_code_location():
    from dubbing_assets.definitions import defs

    sensor = defs.resolve_sensor_def("retention_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert {"job_store", "storage"} <= set(sensor.required_resource_keys)


# --- a world of jobs on a real instance ----------------------------------------------------------------


class World:
    """A job store, local (or S3) storage, the upload store and a Dagster instance, with helpers to make jobs
    of any age with real files."""

    def __init__(self, root: Path, instance: dg.DagsterInstance, database_url: str = ""):
        self.root = root
        self.instance = instance
        self.store = JobStore(database_url=database_url or f"sqlite:///{root}/jobs.db")
        self.storage = MediaStorage(root=str(root / "data"))
        self.uploads = UploadStore(self.store, root / "data" / "uploads")
        self.user = Accounts(self.store).add_user(f"u{secrets.token_hex(4)}", "user-password-123")

    def resources(self) -> dict:
        return {"job_store": self.store, "storage": self.storage}

    def uploaded_job(self, payload: bytes = b"\x00video bytes\x00" * 64):
        """A job made the way the API makes one: an upload received, then completed into a job."""
        view = self.uploads.init(self.user, filename="talk.mp4", size_bytes=len(payload), content_type="video/mp4")
        if view.on_s3:
            src = self.root / f"part-{view.id}"
            src.write_bytes(payload)
            self.uploads.put_part(view, 0, src, 0, len(payload))
            self.uploads.mark_chunk(view.id, 0)
            view = self.uploads.assemble(self.uploads.get(view.id, None))
        else:
            self.uploads.data_path(view.id).write_bytes(payload)
            view = self.uploads.mark_chunk(view.id, 0)
        return self.uploads.create_job(view, self.user, target_lang="es")

    def with_files(self, job, outputs: bool = True):
        """Stage artifacts (JSON and a WAV) and, for a finished dub, published outputs."""
        self.storage.write_json(job.id, "source.json", {"duration_s": 3.0})
        wav = self.storage.artifact(job.id, "asr.wav")
        wav.write_bytes(b"RIFF" + b"\x00" * 400)
        self.storage.save(job.id, "asr.wav")
        if outputs:
            built = []
            for name in ("talk.es.mkv", "talk.es.srt"):
                path = self.storage.artifact(job.id, name)
                path.write_bytes(b"output " + name.encode())
                built.append(path)
            self.storage.publish_outputs(job.id, built)
        self.instance.add_dynamic_partitions("dub_jobs", [job.id])
        return job

    def created(self, job, ago: dt.timedelta):
        with sa.orm.Session(self.store.engine()) as s, s.begin():
            s.execute(sa.update(JobRow).where(JobRow.id == job.id).values(created_at=NOW - ago))
        return self.store.get_job(job.id)

    def run(self, job, status: dg.DagsterRunStatus, ended_ago: dt.timedelta | None = None):
        run = create_run_for_test(self.instance, job_name="dub_job", status=status,
                                  tags={"dagster/partition": job.id, "dubbing/job_id": job.id})
        if ended_ago is not None:
            with self.instance.run_storage.connect() as conn:
                conn.execute(RunsTable.update().where(RunsTable.c.run_id == run.run_id)
                             .values(end_time=(NOW - ended_ago).timestamp()))
        return run

    def tick(self, cursor: str | None = None):
        from sensors.retention import retention_sensor

        ctx = dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=self.resources())
        return retention_sensor(ctx)

    def apply(self, result) -> list[str]:
        """What the daemon does with the tick's partition requests."""
        deleted = []
        for request in result.dynamic_partitions_requests:
            assert isinstance(request, dg.DeleteDynamicPartitionsRequest)
            assert request.partitions_def_name == "dub_jobs"
            for key in request.partition_keys:
                self.instance.delete_dynamic_partition("dub_jobs", key)
                deleted.append(key)
        return deleted

    def partitions(self) -> set[str]:
        return set(self.instance.get_dynamic_partitions("dub_jobs"))

    def work(self, job) -> Path:
        return self.storage.job_dir(job.id) / "work"

    def outputs(self, job) -> list[str]:
        return [o.name for o in self.storage.outputs(job.id)]

    def upload_state(self, job) -> str:
        return self.uploads.get(job.upload_id, None).state

    def state(self, job) -> str:
        job = self.store.get_job(job.id)
        return dv.job_state(job, dv.runs_by_job(self.instance, [job.id])[job.id])


@pytest.fixture
def policy_env(monkeypatch):
    monkeypatch.setenv("DUBBING_RETENTION_DAYS", "7")
    monkeypatch.setenv("DUBBING_OUTPUT_RETENTION_DAYS", "30")


@pytest.fixture
def world(tmp_path, policy_env):
    with dg.instance_for_test() as instance:
        yield World(tmp_path, instance)


def test_retention_removes_files_and_partitions_by_age_and_keeps_pinned_recent_and_running(world, tmp_path):
    W, S = world, dg.DagsterRunStatus
    old_done = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
    W.run(old_done, S.SUCCESS, 40 * DAYS)
    mid_done = W.with_files(W.created(W.uploaded_job(), 20 * DAYS))  # past 7 days, not past 30
    W.run(mid_done, S.SUCCESS, 10 * DAYS)
    redubbed = W.with_files(W.created(W.uploaded_job(), 20 * DAYS))  # old, but its last run ended 2 days ago
    W.run(redubbed, S.SUCCESS, 20 * DAYS)
    W.run(redubbed, S.SUCCESS, 2 * DAYS)
    old_failed = W.with_files(W.created(W.uploaded_job(), 10 * DAYS), outputs=False)
    W.run(old_failed, S.FAILURE, 10 * DAYS)
    pinned = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
    W.run(pinned, S.SUCCESS, 40 * DAYS)
    W.store.set_pinned(pinned.id, True)
    running = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))  # an old job re-running right now
    W.run(running, S.SUCCESS, 40 * DAYS)
    W.run(running, S.STARTED)
    queued = W.with_files(W.created(W.uploaded_job(), 40 * DAYS), outputs=False)
    W.run(queued, S.NOT_STARTED)  # a run about to be launched (dv's state: queued)
    recent = W.with_files(W.uploaded_job())
    W.run(recent, S.SUCCESS, dt.timedelta(hours=1))
    cancelled_early = W.with_files(W.created(W.uploaded_job(), 9 * DAYS), outputs=False)  # cancelled before launch
    W.store.request_cancel(cancelled_early.id)
    never_ran = W.with_files(W.created(W.uploaded_job(), 9 * DAYS), outputs=False)  # not launched yet: left alone
    cli_input = tmp_path / "my own talk.mp4"  # the CLI's job: its input is the user's file, never deleted
    cli_input.write_bytes(b"mine")
    cli = W.with_files(W.created(W.store.create_job(input_path=str(cli_input), filename=cli_input.name,
                                                    source_lang="en", target_lang="es"), 40 * DAYS))
    W.run(cli, S.SUCCESS, 40 * DAYS)

    everything = [old_done, old_failed, cancelled_early, cli]
    artifacts_only = [mid_done]
    untouched = [redubbed, pinned, running, queued, recent, never_ran]
    for job in everything + artifacts_only + untouched:
        assert (W.work(job) / "asr.wav").exists() and (W.work(job) / "source.json").exists()
    assert W.state(old_done) == "done"

    first = W.tick()
    deleted = W.apply(first)
    gone = {j.id for j in everything + artifacts_only}
    assert set(deleted) == gone and len(deleted) == len(gone)
    assert W.partitions() == {j.id for j in untouched}

    for job in everything:
        assert not W.work(job).exists() and W.outputs(job) == [], job
        rec = W.store.get_job(job.id)
        assert rec.expired_at is not None and rec.artifacts_expired_at is not None
        assert W.state(job) == "expired"
        if job.upload_id:
            assert not W.uploads.data_path(job.upload_id).exists()
            assert W.upload_state(job) == "expired"  # no longer counted against the owner's quota
    assert not W.storage.job_dir(old_done.id).exists()  # nothing left of it on disk
    assert cli_input.read_bytes() == b"mine"

    rec = W.store.get_job(mid_done.id)
    assert not W.work(mid_done).exists() and not W.uploads.data_path(mid_done.upload_id).exists()
    assert W.outputs(mid_done) == ["talk.es.mkv", "talk.es.srt"]  # kept until the output age
    assert rec.artifacts_expired_at is not None and rec.expired_at is None
    assert W.state(mid_done) == "done"

    for job in untouched:
        rec = W.store.get_job(job.id)
        assert (W.work(job) / "asr.wav").exists(), job
        assert W.uploads.data_path(job.upload_id).exists() and W.upload_state(job) == "complete"
        assert rec.artifacts_expired_at is None and rec.expired_at is None
    for job in (redubbed, pinned, running, recent):
        assert W.outputs(job) == ["talk.es.mkv", "talk.es.srt"]

    # the runs and their event logs stay: the expired job's history is still there
    assert len(dv.runs_by_job(W.instance, [old_done.id])[old_done.id]) == 1

    # a second tick finds nothing new to do
    second = W.tick(first.cursor)
    assert not second.dynamic_partitions_requests and second.skip_reason
    assert W.partitions() == {j.id for j in untouched}
    assert W.outputs(mid_done) == ["talk.es.mkv", "talk.es.srt"]
    assert json.loads(second.cursor)["seq"] == 0  # walked to the end and starts over

    # time passes: the half-expired job reaches the output age and expires whole (its partition is gone already)
    W.created(mid_done, 41 * DAYS)
    with W.instance.run_storage.connect() as conn:
        conn.execute(RunsTable.update().where(RunsTable.c.run_id.in_(
            [r.run_id for r in dv.runs_by_job(W.instance, [mid_done.id])[mid_done.id]]))
            .values(end_time=(NOW - 31 * DAYS).timestamp()))
    third = W.tick(second.cursor)
    assert W.apply(third) == []
    assert W.outputs(mid_done) == [] and W.state(mid_done) == "expired"
    assert W.store.get_job(mid_done.id).expired_at is not None

    # unpinned, the old pinned job goes too
    W.store.set_pinned(pinned.id, False)
    fourth = W.tick(third.cursor)
    assert W.apply(fourth) == [pinned.id]
    assert W.outputs(pinned) == [] and not W.work(pinned).exists() and W.state(pinned) == "expired"


def test_a_tick_that_died_after_its_tombstones_is_finished_by_the_next(world):
    W = world
    jobs = []
    for _ in range(2):
        job = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
        W.run(job, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)
        jobs.append(job)
    before = W.tick(None)
    W.apply(before)  # a completed tick: its cursor was saved
    job = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
    W.run(job, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)

    died = W.tick(before.cursor)  # files deleted and tombstones set, then the daemon died: no partition
    assert [list(r.partition_keys) for r in died.dynamic_partitions_requests] == [[job.id]]
    assert W.store.get_job(job.id).expired_at is not None and job.id in W.partitions()

    again = W.tick(before.cursor)  # the cursor was not saved: the same tick runs again
    assert W.apply(again) == [job.id]
    assert job.id not in W.partitions()
    assert not W.work(job).exists() and W.outputs(job) == []
    assert not W.tick(again.cursor).dynamic_partitions_requests


def test_a_failed_deletion_sets_no_tombstone_and_a_later_tick_finishes_the_job(world, monkeypatch):
    W = world
    job = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
    W.run(job, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)

    def broken(self, upload_id):
        raise OSError("disk said no")

    monkeypatch.setattr(UploadStore, "expire_input", broken)
    result = W.tick()
    assert not result.dynamic_partitions_requests and "1 job(s) failed" in result.skip_reason.skip_message
    rec = W.store.get_job(job.id)
    assert rec.expired_at is None and rec.artifacts_expired_at is None and job.id in W.partitions()
    monkeypatch.undo()
    monkeypatch.setenv("DUBBING_RETENTION_DAYS", "7")
    monkeypatch.setenv("DUBBING_OUTPUT_RETENTION_DAYS", "30")
    result = W.tick(result.cursor)  # the next walk past it finishes the job
    assert W.apply(result) == [job.id]
    assert W.store.get_job(job.id).expired_at is not None and not W.uploads.data_path(job.upload_id).exists()


def test_a_run_launched_between_the_look_and_the_deletion_keeps_its_files(world, monkeypatch):
    """Retention looks at a batch of jobs, then deletes; a run of an old job can start in between. Both ways it
    can happen: the launcher claimed the job (every route, the run request sensor and the reprocess schedule
    do), or a run shows in Dagster without a claim of its own (e.g. a claim whose lease ran out). Either way
    the files stay, and the job is expired on a later tick once its runs are old."""
    W = world
    claimed, unclaimed, plain = [], [], []
    for bucket in (claimed, unclaimed, plain):
        job = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
        W.run(job, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)
        bucket.append(job)
    original = JobStore.claim_retention
    launched = []

    def launch_first(store, job_id):  # a launch lands between retention's first look and its claim
        if job_id == claimed[0].id:
            assert store.claim_launch(job_id)
            launched.append(W.run(claimed[0], dg.DagsterRunStatus.NOT_STARTED))
        elif job_id == unclaimed[0].id:
            launched.append(W.run(unclaimed[0], dg.DagsterRunStatus.STARTED))
        return original(store, job_id)

    monkeypatch.setattr(JobStore, "claim_retention", launch_first)
    result = W.tick()
    assert W.apply(result) == [plain[0].id]
    assert not W.work(plain[0]).exists()
    for job in (claimed[0], unclaimed[0]):
        assert (W.work(job) / "asr.wav").exists() and W.outputs(job) == ["talk.es.mkv", "talk.es.srt"], job
        assert W.uploads.data_path(job.upload_id).exists()
        rec = W.store.get_job(job.id)
        assert rec.artifacts_expired_at is None and rec.expired_at is None
        with sa.orm.Session(W.store.engine()) as s:  # the claim was released
            assert s.scalar(sa.select(JobRow.retention_claimed_at).where(JobRow.id == job.id)) is None
        assert job.id in W.partitions()
    assert len(launched) == 2

    # the runs end and grow old: a later tick expires both
    monkeypatch.setattr(JobStore, "claim_retention", original)
    with W.instance.run_storage.connect() as conn:
        conn.execute(RunsTable.update().where(RunsTable.c.run_id.in_([r.run_id for r in launched]))
                     .values(status="SUCCESS", end_time=(NOW - 40 * DAYS).timestamp()))
    with sa.orm.Session(W.store.engine()) as s, s.begin():  # and the launch's lease ran out long ago
        s.execute(sa.update(JobRow).where(JobRow.id == claimed[0].id).values(launch_claimed_at=NOW - DAYS))
    assert sorted(W.apply(W.tick(result.cursor))) == sorted([claimed[0].id, unclaimed[0].id])
    assert W.state(claimed[0]) == "expired" and W.state(unclaimed[0]) == "expired"


def test_launch_and_retention_claims_exclude_each_other(world):
    W = world
    job = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
    assert W.store.claim_retention(job.id)
    assert not W.store.claim_retention(job.id)  # one retention pass at a time
    assert not W.store.claim_launch(job.id)  # retention is deleting its files: no run may start
    W.store.release_retention(job.id)
    assert W.store.claim_launch(job.id)
    assert not W.store.claim_retention(job.id)  # a run is being launched: retention keeps off for the lease
    assert W.store.claim_launch(job.id)  # launches do not exclude each other
    with sa.orm.Session(W.store.engine()) as s, s.begin():  # the lease ran out; a claim left by a pass that died
        s.execute(sa.update(JobRow).where(JobRow.id == job.id).values(
            launch_claimed_at=NOW - 11 * dt.timedelta(minutes=1), retention_claimed_at=NOW - 2 * dt.timedelta(hours=1)))
    assert W.store.claim_retention(job.id)
    W.store.release_retention(job.id)
    W.store.mark_expired(job.id, artifacts=True)
    assert not W.store.claim_launch(job.id)  # its files are gone: nothing to run


def test_bounded_per_tick(world, monkeypatch):
    import sensors.retention as sr

    W = world
    jobs = []
    for _ in range(5):
        job = W.with_files(W.created(W.uploaded_job(), 40 * DAYS), outputs=False)
        W.run(job, dg.DagsterRunStatus.FAILURE, 40 * DAYS)
        jobs.append(job)
    monkeypatch.setattr(sr, "MAX_JOBS_PER_TICK", 2)
    seen, cursor = [], None
    for expected in (2, 2, 1):
        result = W.tick(cursor)
        got = W.apply(result)
        assert len(got) == expected
        seen += got
        cursor = result.cursor
    assert seen == [j.id for j in jobs]  # oldest first, each once
    assert W.tick(cursor).skip_reason


def test_retention_with_the_job_store_on_postgres(pg_url, tmp_path, policy_env):
    with dg.instance_for_test() as instance:
        W = World(tmp_path, instance, database_url=pg_url)
        old = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
        W.run(old, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)
        mid = W.with_files(W.created(W.uploaded_job(), 20 * DAYS))
        W.run(mid, dg.DagsterRunStatus.SUCCESS, 10 * DAYS)
        pinned = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
        W.run(pinned, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)
        W.store.set_pinned(pinned.id, True)
        recent = W.with_files(W.uploaded_job())
        W.run(recent, dg.DagsterRunStatus.SUCCESS, dt.timedelta(minutes=5))
        first = W.tick()
        assert sorted(W.apply(first)) == sorted([old.id, mid.id])
        assert W.state(old) == "expired" and W.outputs(old) == [] and not W.work(old).exists()
        assert W.outputs(mid) and not W.work(mid).exists() and W.store.get_job(mid.id).expired_at is None
        for job in (pinned, recent):
            assert (W.work(job) / "asr.wav").exists() and W.outputs(job) and W.upload_state(job) == "complete"
        assert W.partitions() == {pinned.id, recent.id}
        again = W.tick(first.cursor)
        assert not again.dynamic_partitions_requests and again.skip_reason


def test_retention_off_by_default_deletes_nothing(tmp_path, monkeypatch):
    for name in POLICY_ENV:
        monkeypatch.delenv(name, raising=False)
    with dg.instance_for_test() as instance:
        W = World(tmp_path, instance)
        job = W.with_files(W.created(W.uploaded_job(), 3650 * DAYS))
        W.run(job, dg.DagsterRunStatus.SUCCESS, 3650 * DAYS)
        result = W.tick()
        assert "retention is off" in result.skip_reason.skip_message
        assert not result.dynamic_partitions_requests
        assert (W.work(job) / "asr.wav").exists() and W.outputs(job) and job.id in W.partitions()
        assert W.uploads.data_path(job.upload_id).exists()


# --- S3 ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "scripts"))
    from s3_server import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def test_retention_on_s3_removes_work_output_and_input_objects(s3_server, tmp_path, monkeypatch, policy_env):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    prefix = f"retention-{secrets.token_hex(4)}/"
    monkeypatch.setenv("DUBBING_S3_PREFIX", prefix)

    def keys(sub: str = "") -> list[str]:
        listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix + sub)
        return sorted(obj["Key"][len(prefix):] for obj in listed.get("Contents", []))

    with dg.instance_for_test() as instance:
        W = World(tmp_path, instance)
        assert W.storage.is_s3
        old = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
        W.run(old, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)
        mid = W.with_files(W.created(W.uploaded_job(), 20 * DAYS))
        W.run(mid, dg.DagsterRunStatus.SUCCESS, 10 * DAYS)
        kept = W.with_files(W.created(W.uploaded_job(), 40 * DAYS))
        W.run(kept, dg.DagsterRunStatus.SUCCESS, 40 * DAYS)
        W.store.set_pinned(kept.id, True)
        assert W.store.get_job(old.id).input_path.startswith("s3://")
        for job in (old, mid, kept):
            assert f"uploads/{job.upload_id}/data" in keys("uploads/")
            assert keys(f"jobs/{job.id}/") == [f"jobs/{job.id}/{name}" for name in (
                "outputs/talk.es.mkv", "outputs/talk.es.srt", "work/asr.wav", "work/source.json")]

        result = W.tick()
        assert sorted(W.apply(result)) == sorted([old.id, mid.id])
        assert keys(f"jobs/{old.id}/") == [] and f"uploads/{old.upload_id}/data" not in keys("uploads/")
        assert keys(f"jobs/{mid.id}/") == [f"jobs/{mid.id}/outputs/talk.es.mkv", f"jobs/{mid.id}/outputs/talk.es.srt"]
        assert f"uploads/{mid.upload_id}/data" not in keys("uploads/")
        assert len(keys(f"jobs/{kept.id}/")) == 4 and f"uploads/{kept.upload_id}/data" in keys("uploads/")
        assert W.upload_state(old) == "expired" and W.upload_state(kept) == "complete"
        assert W.state(old) == "expired" and W.state(mid) == "done"
        assert not (W.storage.root_path() / "scratch" / old.id).exists()


# --- the API on a live uvicorn -----------------------------------------------------------------------------


def test_api_pin_and_410_for_expired_outputs(api, espeak_video, monkeypatch, policy_env):
    from live import upload_file

    env = api.env
    with api.client("alice") as alice, api.client("bob") as bob, api.client("root") as root:
        _, job_id = upload_file(alice, espeak_video, "es")
        _, other_id = upload_file(alice, espeak_video, "es")
        _, failed_id = upload_file(alice, espeak_video, "es")
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    W = World.__new__(World)  # the stack's own stores and instance
    W.root, W.instance = Path(env["DUBBING_DATA_DIR"]), instance
    W.store = JobStore(database_url=f"sqlite:///{env['DUBBING_DATA_DIR']}/jobs.db")
    W.storage = MediaStorage(root=env["DUBBING_DATA_DIR"])
    W.uploads = UploadStore(W.store, W.root / "uploads")
    job, other = W.store.get_job(job_id), W.store.get_job(other_id)
    for j in (job, other):
        W.with_files(j)
        W.run(j, dg.DagsterRunStatus.SUCCESS, dt.timedelta(minutes=1))
    W.with_files(W.store.get_job(failed_id), outputs=False)
    W.run(W.store.get_job(failed_id), dg.DagsterRunStatus.FAILURE, dt.timedelta(minutes=1))

    with api.client("alice") as alice, api.client("bob") as bob, api.client("root") as root:
        view = alice.get(f"/api/jobs/{job_id}").json()
        assert view["state"] == "done" and view["pinned"] is False
        assert view["artifacts_expired_at"] is None and view["expired_at"] is None
        assert alice.get(f"/api/jobs/{job_id}/outputs/talk.es.mkv").content == b"output talk.es.mkv"

        # pin / unpin: the owner, an admin; another user sees no such job; bad bodies are 422
        r = alice.put(f"/api/jobs/{job_id}/pin", json={"pinned": True})
        assert r.status_code == 200 and r.json() == {"job_id": job_id, "pinned": True}
        assert alice.get(f"/api/jobs/{job_id}").json()["pinned"] is True and W.store.get_job(job_id).pinned
        assert bob.put(f"/api/jobs/{job_id}/pin", json={"pinned": False}).status_code == 404
        assert W.store.get_job(job_id).pinned
        for bad in ({}, {"pinned": "yes"}, {"pinned": 1}, {"pinned": None}, {"pinned": True, "extra": 1}):
            assert alice.put(f"/api/jobs/{job_id}/pin", json=bad).status_code == 422, bad
        assert alice.put(f"/api/jobs/{job_id}/pin", content=b"not json",
                         headers={"content-type": "application/json"}).status_code == 422
        assert root.put(f"/api/jobs/{job_id}/pin", json={"pinned": False}).json()["pinned"] is False
        assert not W.store.get_job(job_id).pinned
        assert alice.put(f"/api/jobs/{other_id}/pin", json={"pinned": True}).status_code == 200

        # both jobs are old now; the retention sensor expires the unpinned one only
        for j in (job, other):
            W.created(j, 40 * DAYS)
            with instance.run_storage.connect() as conn:
                conn.execute(RunsTable.update().where(RunsTable.c.run_id.in_(
                    [r.run_id for r in dv.runs_by_job(instance, [j.id])[j.id]]))
                    .values(end_time=(NOW - 40 * DAYS).timestamp()))
        # while retention deletes a job's files, a retry of it is refused with the reason (nothing launched)
        assert W.store.claim_retention(failed_id)
        r = alice.post(f"/api/jobs/{failed_id}/retry")
        assert r.status_code == 409 and "retention" in r.json()["detail"], r.text
        assert len(dv.runs_by_job(instance, [failed_id])[failed_id]) == 1
        W.store.release_retention(failed_id)
        W.apply(W.tick())
        assert W.store.get_job(job_id).expired_at is not None and W.store.get_job(other_id).expired_at is None

        r = alice.get(f"/api/jobs/{job_id}/outputs/talk.es.mkv")
        assert r.status_code == 410, r.text
        detail = r.json()["detail"]
        assert "retention" in detail and "deleted" in detail
        assert W.store.get_job(job_id).expired_at.strftime("%Y-%m-%d") in detail
        assert bob.get(f"/api/jobs/{job_id}/outputs/talk.es.mkv").status_code == 404  # ownership first
        view = alice.get(f"/api/jobs/{job_id}").json()
        assert view["state"] == "expired" and view["outputs"] == []
        assert view["expired_at"] and view["artifacts_expired_at"]
        assert dt.datetime.fromisoformat(view["expired_at"]) > NOW - dt.timedelta(minutes=5)
        assert alice.post(f"/api/jobs/{job_id}/retry").status_code == 410
        assert alice.get(f"/api/jobs/{job_id}/segments").status_code == 410
        assert alice.put(f"/api/jobs/{job_id}/pin", json={"pinned": True}).status_code == 410  # nothing to keep
        assert any(j["job_id"] == job_id and j["state"] == "expired"
                   for j in alice.get("/api/jobs", params={"state": "expired"}).json()["jobs"])

        # the pinned job is untouched and still downloads
        assert alice.get(f"/api/jobs/{other_id}/outputs/talk.es.mkv").content == b"output talk.es.mkv"
        assert alice.get(f"/api/jobs/{other_id}").json()["pinned"] is True
    audit = [json.loads(line) for line in (api.root / "api.log").read_text().splitlines() if line.startswith("{")]
    pins = [(a.get("event"), a.get("job_id")) for a in audit if a.get("event") in ("job_pinned", "job_unpinned")]
    assert pins == [("job_pinned", job_id), ("job_unpinned", job_id), ("job_pinned", other_id)], pins


def test_require_artifacts_helper():
    from fastapi import HTTPException

    from resources.jobstore import JobRecord
    from upload_api.routers.jobs import require_artifacts, require_outputs

    base = dict(id="j" + "0" * 32, created_at=NOW, input_path="/x", filename="x.mp4", source_lang="en",
                target_lang="es")
    require_artifacts(JobRecord(**base))
    require_outputs(JobRecord(**base))
    half = JobRecord(**base, artifacts_expired_at=NOW)
    with pytest.raises(HTTPException) as exc:
        require_artifacts(half)
    assert exc.value.status_code == 410 and "retention" in exc.value.detail
    require_outputs(half)  # outputs are still there
    with pytest.raises(HTTPException) as exc:
        require_outputs(JobRecord(**base, artifacts_expired_at=NOW, expired_at=NOW))
    assert exc.value.status_code == 410 and NOW.strftime("%Y-%m-%d") in exc.value.detail

