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


# --- the code server's cancel of a dead worker (dubbing_assets/code_server.py) ---------------------------

def _killed_waiter(ctx):
    """A process waiting on a multiprocessing Event, as a run worker's termination thread does, killed -9."""
    import os
    import signal
    import time

    event = ctx.Event()
    proc = ctx.Process(target=event.wait)  # a target the spawned child can import
    proc.start()
    time.sleep(1.5)  # it is waiting now
    assert proc.is_alive()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    return event, proc


def test_setting_the_event_of_a_killed_waiter_never_returns():
    """The deadlock itself: Event.set() waits for every waiter to acknowledge; a killed one never does."""
    import multiprocessing
    import threading

    event, _ = _killed_waiter(multiprocessing.get_context("spawn"))
    setter = threading.Thread(target=event.set, daemon=True)
    setter.start()
    setter.join(3)
    assert setter.is_alive()


def test_the_guard_answers_a_cancel_of_a_dead_worker_without_touching_its_event():
    import multiprocessing
    import threading
    import time

    from dagster._grpc.__generated__ import dagster_api_pb2
    from dagster._grpc.server import DagsterApiServer
    from dagster._grpc.types import CancelExecutionRequest, CancelExecutionResult
    from dagster_shared.serdes import deserialize_value, serialize_value

    import dubbing_assets.jobs  # noqa: F401  (installs the guard, as loading the code location does)

    ctx = multiprocessing.get_context("spawn")
    event, proc = _killed_waiter(ctx)
    server = DagsterApiServer.__new__(DagsterApiServer)  # only the parts CancelExecution uses
    server._execution_lock = threading.Lock()
    server._executions = {"r1": (proc, None)}
    server._termination_events = {"r1": event}
    server._termination_times = {}
    request = dagster_api_pb2.CancelExecutionRequest(
        serialized_cancel_execution_request=serialize_value(CancelExecutionRequest(run_id="r1")))
    replies = []
    call = threading.Thread(target=lambda: replies.append(DagsterApiServer.CancelExecution(server, request, None)),
                            daemon=True)
    call.start()
    call.join(5)
    assert not call.is_alive(), "the cancel of a dead worker's run hangs (and holds the server's execution lock)"
    result = deserialize_value(replies[0].serialized_cancel_execution_result, CancelExecutionResult)
    assert result.success is False and result.message == "the run worker is gone"
    assert server._execution_lock.acquire(timeout=1)  # the server's lock is free: runs can still start
    server._execution_lock.release()

    live_event = ctx.Event()  # a live worker is cancelled as before
    live = ctx.Process(target=live_event.wait)
    live.start()
    try:
        time.sleep(1.0)
        server._executions["r2"] = (live, None)
        server._termination_events["r2"] = live_event
        reply = DagsterApiServer.CancelExecution(server, dagster_api_pb2.CancelExecutionRequest(
            serialized_cancel_execution_request=serialize_value(CancelExecutionRequest(run_id="r2"))), None)
        assert deserialize_value(reply.serialized_cancel_execution_result, CancelExecutionResult).success
        live.join(5)
        assert live.exitcode == 0  # it woke up and ended
    finally:
        live.kill()
