"""The upload sensor: one partition and exactly one run per completed upload.

Unit: the sensor function on a test instance with build_sensor_context. End to end: a live API and a
real dagster-daemon process; two users upload at the same time; each job gets exactly one run, which
succeeds, also after the daemon restarts."""

import concurrent.futures
import datetime as dt
import json
import time

import dagster as dg
import pytest

from live import upload_file
from resources.jobstore import JobStore
from resources.storage import MediaStorage


def sensor_fn():
    from sensors.upload_sensor import upload_sensor

    return upload_sensor


def tick(instance, cursor, tmp_path):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
        "job_store": JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db"),
        "storage": MediaStorage(root=str(tmp_path / "data"))})
    return sensor_fn()(ctx)


def test_sensor_requests_each_uploaded_job_once(tmp_path):
    store = JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")
    cli_job = store.create_job(input_path="/x.mp4", filename="x.mp4", source_lang="en", target_lang="es")
    jobs = [store.create_job(input_path=f"/u{i}", filename=f"v{i}.mp4", source_lang="en", target_lang="es",
                             owner=f"user{i}", upload_id=f"{i:032x}") for i in range(3)]
    with dg.instance_for_test() as instance:
        result = tick(instance, None, tmp_path)
        keys = [r.run_key for r in result.run_requests]
        assert keys == [j.id for j in jobs]  # the CLI's job (no upload) is not the sensor's
        assert cli_job.id not in keys
        assert [r.partition_key for r in result.run_requests] == keys
        req = result.run_requests[0]
        assert req.tags["dubbing/user_id"] == "user0" and req.tags["dubbing/job_id"] == jobs[0].id
        assert req.tags["dubbing/target_lang"] == "es"
        add = result.dynamic_partitions_requests[0]
        assert add.partitions_def_name == "dub_jobs" and list(add.partition_keys) == keys
        cursor = result.cursor
        assert json.loads(cursor)["seq"] == jobs[-1].seq

        # the next tick with the cursor has nothing to do
        again = tick(instance, cursor, tmp_path)
        assert not again.run_requests and again.skip_reason

        # a new job is picked up alone; an already-added partition is not added twice
        instance.add_dynamic_partitions("dub_jobs", keys)
        late = store.create_job(input_path="/u9", filename="late.mp4", source_lang="en", target_lang="fr",
                                owner="user9", upload_id="9" * 32)
        third = tick(instance, again.cursor, tmp_path)
        assert [r.run_key for r in third.run_requests] == [late.id]
        assert list(third.dynamic_partitions_requests[0].partition_keys) == [late.id]

        # a replayed (old) cursor asks for the same run keys: the daemon dedupes them by run_key
        instance.add_dynamic_partitions("dub_jobs", [late.id])  # what the daemon did with `third`
        replay = tick(instance, cursor, tmp_path)
        assert [r.run_key for r in replay.run_requests] == [late.id]
        assert not replay.dynamic_partitions_requests  # all partitions exist already


def test_sensor_loop_expires_abandoned_uploads(tmp_path):
    from resources.accounts import Accounts
    from resources.uploads import UploadRow, UploadStore

    store = JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")
    user = Accounts(store).add_user("carol", "carol-password-1")
    uploads = UploadStore(store, tmp_path / "data" / "uploads")
    stale = uploads.init(user, filename="a.mp4", size_bytes=1000, content_type="video/mp4")
    fresh = uploads.init(user, filename="b.mp4", size_bytes=1000, content_type="video/mp4")
    with uploads.session() as s, s.begin():
        s.get(UploadRow, stale.id).expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    assert uploads.data_path(stale.id).exists()
    with dg.instance_for_test() as instance:
        tick(instance, None, tmp_path)
    assert not uploads.data_path(stale.id).exists() and uploads.data_path(fresh.id).exists()
    assert uploads.get(stale.id, user).state == "expired" and uploads.get(fresh.id, user).state == "receiving"


def upload_and_complete(api, who, path, target):
    with api.client(who) as c:
        return upload_file(c, path, target)[1]


def runs_for(instance, job_id):
    return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": job_id}))


@pytest.mark.slow
def test_daemon_launches_exactly_one_run_per_upload_for_two_users(api, espeak_video):
    api.start_daemon()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(upload_and_complete, api, who, espeak_video, "es")
                       for who in ("alice", "bob", "alice", "bob")]
            job_ids = [f.result() for f in futures]
        assert len(set(job_ids)) == 4
        owners = {j: w for j, w in zip(job_ids, ["alice", "bob", "alice", "bob"])}
        instance = dg.DagsterInstance.from_config(api.env["DAGSTER_HOME"])
        deadline = time.time() + 600
        while time.time() < deadline:
            runs = {j: runs_for(instance, j) for j in job_ids}
            if all(r and r[0].is_finished for r in runs.values()):
                break
            time.sleep(2)
        assert all(len(r) == 1 for r in runs.values()), (runs, api.log("daemon"))
        assert all(r[0].status == dg.DagsterRunStatus.SUCCESS for r in runs.values()), api.log("daemon")
        for job_id, (run,) in runs.items():
            assert run.tags["dagster/run_key"] == job_id
            assert run.tags["dubbing/user_id"] == api.users[owners[job_id]].id

        # a daemon restart does not launch anything again
        api.stop("daemon")
        api.start_daemon()
        time.sleep(12)
        assert all(len(runs_for(instance, j)) == 1 for j in job_ids)

        # each owner sees their finished job, with outputs; the other user does not
        with api.client("alice") as a, api.client("bob") as b:
            for job_id, who in owners.items():
                mine, other = (a, b) if who == "alice" else (b, a)
                view = mine.get(f"/api/jobs/{job_id}").json()
                assert view["state"] == "done" and view["run_id"] == runs[job_id][0].run_id
                assert f"{espeak_video.stem}.es.mkv" in view["outputs"]
                assert other.get(f"/api/jobs/{job_id}").status_code == 404
    finally:
        api.stop("daemon")


def test_sensor_gives_the_pools_their_rows_before_the_first_run(tmp_path, monkeypatch):
    """Two runs' first steps of one pool starting together both inserted its row and one run failed; the
    sensor creates the rows first, and leaves a raised limit alone."""
    from sensors import upload_sensor as module

    monkeypatch.setattr(module, "_pools_ready", set())
    store = JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        assert not tick(instance, None, tmp_path).run_requests  # no job: nothing touched
        assert instance.event_log_storage.get_concurrency_keys() == set()
        instance.event_log_storage.set_concurrency_slots("tts", 4)  # an admin raised it
        store.create_job(input_path="/u", filename="v.mp4", source_lang="en", target_lang="es", owner="u",
                         upload_id="1" * 32)
        assert len(tick(instance, None, tmp_path).run_requests) == 1
        limits = {k: instance.event_log_storage.get_concurrency_info(k).slot_count for k in module.POOLS}
        assert limits == {"asr": 1, "tts": 4}


def test_the_sensors_pools_are_the_stages_pools():
    from dubbing_assets.definitions import defs
    from sensors.upload_sensor import POOLS

    pools = {defs.resolve_assets_def(k).op.pool for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert pools - {None} == set(POOLS)


def test_run_request_sensor_launches_each_queued_request_once(tmp_path, monkeypatch):
    """Re-dub and reprocess requests queued in the job store: one RunRequest each, with the request key as run
    key, the request's stages as the asset selection and the job's tags; a request for an expired job or one
    without a partition is dropped; asking twice with the same key queues one request."""
    from sensors import upload_sensor as module
    from sensors.run_requests import REDUB_STAGES, run_request_sensor, stages_from

    monkeypatch.setattr(module, "_pools_ready", set())
    store = JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")
    jobs = [store.create_job(input_path=f"/u{i}", filename=f"v{i}.mp4", source_lang="en", target_lang="es",
                             owner=f"user{i}", upload_id=f"{i:032x}") for i in range(4)]
    first, again = (store.add_run_request(jobs[0].id, kind="redub", stages=REDUB_STAGES, key="redub:a:1",
                                          reason="segment edits", requested_by="user0") for _ in range(2))
    assert first[1] is True and again[1] is False and again[0].seq == first[0].seq
    store.add_run_request(jobs[1].id, kind="reprocess", stages=stages_from("transcript"), key="reprocess:b")
    store.add_run_request(jobs[2].id, kind="redub", stages=REDUB_STAGES, key="redub:c:1")  # expired below
    store.add_run_request(jobs[3].id, kind="redub", stages=REDUB_STAGES, key="redub:d:1")  # no partition
    store.mark_expired(jobs[2].id, artifacts=True)

    def tick(instance, cursor):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"job_store": store})
        return run_request_sensor(ctx)

    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        instance.add_dynamic_partitions("dub_jobs", [j.id for j in jobs[:3]])
        result = tick(instance, None)
        assert [r.run_key for r in result.run_requests] == ["redub:a:1", "reprocess:b"]
        redub, reprocess = result.run_requests
        assert redub.partition_key == jobs[0].id
        assert [k.to_user_string() for k in redub.asset_selection] == ["dubbed_speech", "dubbed_mix", "dubbed_video"]
        assert [k.to_user_string() for k in reprocess.asset_selection] == [
            "transcript", "translation", "dubbed_speech", "dubbed_mix", "dubbed_video"]
        assert redub.tags["dubbing/origin"] == "redub" and redub.tags["dubbing/request_key"] == "redub:a:1"
        assert redub.tags["dubbing/user_id"] == "user0" and redub.tags["dubbing/reason"] == "segment edits"
        assert reprocess.tags["dubbing/origin"] == "reprocess"
        assert set(instance.event_log_storage.get_concurrency_keys()) >= {"asr", "tts"}
        later = tick(instance, result.cursor)
        assert not later.run_requests and later.skip_reason
