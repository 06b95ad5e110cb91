"""A cancel holds when the run's worker is gone: on a real Dagster instance (the deployed run retry and run
monitoring settings, the default run launcher), a run cancelled while its worker died, and a run that had
already failed and was waiting for Dagster's retry when its owner cancelled it. Both end CANCELED, are never
retried, and notify as a cancel, not as a failure. (scripts/e2e_cancel_midrun.py kills a real run worker.)"""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from resources.jobstore import JobStore
from resources.notify import NtfyResource
from resources.runs import CANCEL_REQUESTED_TAG
from resources.storage import MediaStorage
from sensors.notify import notify_run
from sensors.run_status import cancelled_run_failed
from upload_api import dagster_view as dv
from upload_api.routers.jobs import cancel_run

WILL_RETRY = "dagster/will_retry"


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={
        "run_launcher": {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"},
        "run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False},
        "run_monitoring": {"enabled": True, "cancel_timeout_seconds": 60},
    }) as inst:
        yield inst


@pytest.fixture
def world(tmp_path, instance):
    store = JobStore(database_url=f"sqlite:///{tmp_path}/jobs.db")
    job = store.create_job(input_path=str(tmp_path / "talk.mp4"), filename="talk.mp4", source_lang="en",
                           target_lang="es")
    instance.add_dynamic_partitions("dub_jobs", [job.id])
    return store, job, MediaStorage(root=str(tmp_path / "data"))


def a_run(instance, job, status, **tags):
    return create_run_for_test(instance, job_name="dub_job", status=status,
                               tags={"dagster/partition": job.id, "dubbing/origin": "upload",
                                     "dagster/max_retries": "2", **tags})


def sensor_tick(instance, run):
    event = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records[-1]
    ctx = dg.build_run_status_sensor_context(sensor_name="cancelled_run_failed", dagster_instance=instance,
                                             dagster_run=instance.get_run_by_id(run.run_id),
                                             dagster_event=event.event_log_entry.dagster_event)
    cancelled_run_failed(ctx)


def test_a_run_whose_worker_dies_under_the_cancel_ends_cancelled_and_is_not_retried(instance, world):
    store, job, storage = world
    run = a_run(instance, job, dg.DagsterRunStatus.STARTED)
    cancel_run(instance, run)  # no worker answers: the run is CANCELING, tagged as cancelled with no retries left
    run = instance.get_run_by_id(run.run_id)
    assert run.status == dg.DagsterRunStatus.CANCELING and run.tags[CANCEL_REQUESTED_TAG]
    instance.report_run_failed(run)  # what the code server reports when it finds its worker dead
    run = instance.get_run_by_id(run.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags[WILL_RETRY] == "false"  # Dagster's run retries leave it alone
    assert dv.job_state(job, [run], instance) == "cancelling"
    assert notify_run(instance, run, "failure", NtfyResource(url="http://127.0.0.1:9"), store, storage) == \
        "skipped: its owner had cancelled it; the cancel notification is sent"
    sensor_tick(instance, run)
    run = instance.get_run_by_id(run.run_id)
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert dv.job_state(job, [run], instance) == "cancelled"


def test_a_failed_run_waiting_for_its_retry_is_cancelled_by_its_owner(instance, world):
    store, job, storage = world
    run = a_run(instance, job, dg.DagsterRunStatus.STARTED)
    instance.report_run_failed(run)  # its worker was killed; Dagster will retry it
    run = instance.get_run_by_id(run.run_id)
    assert run.tags[WILL_RETRY] == "true" and dv.job_state(job, [run], instance) == "queued"
    cancel_run(instance, run)
    run = instance.get_run_by_id(run.run_id)
    assert run.status == dg.DagsterRunStatus.CANCELED and run.tags[WILL_RETRY] == "false"
    assert dv.job_state(job, [run], instance) == "cancelled"


def test_a_failure_without_a_cancel_is_left_to_the_retries(instance, world):
    store, job, storage = world
    run = a_run(instance, job, dg.DagsterRunStatus.STARTED)
    instance.report_run_failed(run)
    sensor_tick(instance, run)
    run = instance.get_run_by_id(run.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE and run.tags[WILL_RETRY] == "true"
