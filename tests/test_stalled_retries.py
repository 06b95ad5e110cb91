"""stalled_retry_sensor on a real Dagster instance with the deployed run retry settings: a failed run that
Dagster said it would retry (dagster/will_retry, computed by Dagster when the failure was reported) and whose
retry never came is run again from the stage it failed in, once; a recent failure, a run whose retry came, a
final failure and a cancelled run are left alone."""

from __future__ import annotations

import time

import dagster as dg
import pytest
from dagster._core.storage.runs.schema import RunsTable
from dagster._core.test_utils import create_run_for_test

from resources.jobstore import JobStore
from resources.runs import CANCEL_REQUESTED_TAG
from sensors.stalled_retries import RETRY_OF_TAG, retry_pending, stalled_retry_sensor


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={
        "run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False},
    }) as inst:
        yield inst


@pytest.fixture
def store(tmp_path):
    return JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")


def failed(instance, store, ended_s_ago: float, **tags):
    """A job whose run crashed (no stage failure: its worker died), reported failed as Dagster does."""
    job = store.create_job(input_path="/x.mp4", filename="talk.mp4", source_lang="en", target_lang="es")
    instance.add_dynamic_partitions("dub_jobs", [job.id])
    run = create_run_for_test(instance, job_name="dub_job", status=dg.DagsterRunStatus.STARTED,
                              tags={"dagster/partition": job.id, "dubbing/origin": "upload", **tags})
    instance.report_run_failed(run)
    with instance.run_storage.connect() as conn:
        conn.execute(RunsTable.update().where(RunsTable.c.run_id == run.run_id)
                     .values(end_time=time.time() - ended_s_ago))
    return job, instance.get_run_by_id(run.run_id)


def tick(instance, store):
    result = stalled_retry_sensor(dg.build_sensor_context(instance=instance, resources={"job_store": store}))
    return [] if isinstance(result, dg.SkipReason) else list(result.run_requests)


def test_a_promised_retry_that_never_came_is_launched_once(instance, store):
    stalled, run = failed(instance, store, ended_s_ago=120)
    assert run.tags["dagster/will_retry"] == "true"
    recent, _ = failed(instance, store, ended_s_ago=5)  # Dagster's retry may still be on its way
    retried, _ = failed(instance, store, ended_s_ago=120)
    create_run_for_test(instance, job_name="dub_job", status=dg.DagsterRunStatus.STARTED,
                        tags={"dagster/partition": retried.id})  # its retry came
    final, _ = failed(instance, store, ended_s_ago=120, **{"dagster/max_retries": "0"})  # no retries left
    cancelled, _ = failed(instance, store, ended_s_ago=120, **{CANCEL_REQUESTED_TAG: "now"})

    requests = tick(instance, store)
    assert [(r.partition_key, r.run_key) for r in requests] == [(stalled.id, f"retry:{run.run_id}")]
    request = requests[0]
    assert request.tags[RETRY_OF_TAG] == run.run_id and request.tags["dubbing/origin"] == "retry"
    assert [k.to_user_string() for k in request.asset_selection][0] == "source_media"  # from where it stopped
    for job in (recent, retried, final, cancelled):
        assert job.id not in {r.partition_key for r in requests}

    # launched (what the daemon does with the request): nothing more to do for that job
    create_run_for_test(instance, job_name="dub_job", status=dg.DagsterRunStatus.STARTED,
                        tags={**request.tags, "dagster/partition": stalled.id, "dagster/run_key": request.run_key})
    assert stalled.id not in {r.partition_key for r in tick(instance, store)}


def test_a_retry_whose_launch_failed_is_launched_and_the_failure_not_announced(instance, store, tmp_path):
    """The daemon's retry launch raised (the database restarting): it recorded "Failed to retry run" and set
    dagster/will_retry false, which made a transient failure final. The sensor retries it at once and the
    owner is not told "Dub failed" for it; a run that was never to be retried is still announced."""
    from resources.accounts import Accounts
    from resources.notify import NtfyResource
    from resources.storage import MediaStorage
    from sensors.notify import notify_run

    job, run = failed(instance, store, ended_s_ago=2)
    instance.report_engine_event("Failed to retry run", run)  # what the daemon writes, then the tag
    instance.add_run_tags(run.run_id, {"dagster/will_retry": "false"})
    run = instance.get_run_by_id(run.run_id)
    assert retry_pending(instance, run)
    assert [r.run_key for r in tick(instance, store)] == [f"retry:{run.run_id}"]  # no grace: it is not coming

    owner = Accounts(store).add_user("alice", "alice-password-1")
    store_job = store.create_job(input_path="/y.mp4", filename="y.mp4", source_lang="en", target_lang="es",
                                 owner=owner.id)
    storage, ntfy = MediaStorage(root=str(tmp_path / "data")), NtfyResource(url="http://127.0.0.1:9")
    pending = create_run_for_test(instance, job_name="dub_job", status=dg.DagsterRunStatus.STARTED,
                                  tags={"dagster/partition": store_job.id})
    instance.report_run_failed(pending)
    instance.report_engine_event("Failed to retry run", pending)
    instance.add_run_tags(pending.run_id, {"dagster/will_retry": "false"})
    assert notify_run(instance, instance.get_run_by_id(pending.run_id), "failure", ntfy, store, storage) == \
        "skipped: the run will be retried; its retry sends the notification"
    final = create_run_for_test(instance, job_name="dub_job", status=dg.DagsterRunStatus.STARTED,
                                tags={"dagster/partition": store_job.id, "dagster/max_retries": "0"})
    instance.report_run_failed(final)
    assert not retry_pending(instance, instance.get_run_by_id(final.run_id))
    assert "will be retried" not in notify_run(instance, instance.get_run_by_id(final.run_id), "failure", ntfy,
                                               store, storage)
