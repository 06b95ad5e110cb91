"""A guard in Dagster's code server (the process that starts run workers with the default run launcher) against
a deadlock found by the cancel gate: cancelling a run whose worker was killed (kill -9, the OOM killer) wedged
the code server for good.

Why: each run worker waits on a multiprocessing Event (its termination event) in a thread. `Event.set()` wakes
every process waiting on it and then waits until each one has acknowledged the wake-up; a killed worker never
acknowledges, so `set()` never returns. Dagster's CancelExecution calls it while holding the server's execution
lock, which starting runs and the server's cleanup of dead workers need too: no run could start any more, and
the cancel request timed out after 60 s. Dagster only notices a dead worker on its cleanup tick, so a cancel
arriving within that tick of the death (a worker killed as its owner cancels) hits it.

The guard answers such a cancel with "not cancelled" when the worker process is no longer alive, without
touching its event. The run stays CANCELING until the server's cleanup reports it failed; the cancel tags make
that failure a cancellation (sensors/run_status.py). The deadlock and the guard: tests/test_cancel_worker_gone.py.
"""

from __future__ import annotations

from dagster._grpc.__generated__ import dagster_api_pb2
from dagster._grpc.server import DagsterApiServer
from dagster._grpc.types import CancelExecutionRequest, CancelExecutionResult
from dagster_shared.serdes import deserialize_value, serialize_value

_ORIGINAL = DagsterApiServer.CancelExecution


def _cancel_execution(self, request, context):
    run_id = deserialize_value(request.serialized_cancel_execution_request, CancelExecutionRequest).run_id
    with self._execution_lock:
        entry = self._executions.get(run_id)
        dead = entry is not None and not entry[0].is_alive()
    if dead:
        return dagster_api_pb2.CancelExecutionReply(serialized_cancel_execution_result=serialize_value(
            CancelExecutionResult(success=False, message="the run worker is gone", serializable_error_info=None)))
    return _ORIGINAL(self, request, context)


def guard_cancel_of_dead_workers() -> None:
    """Install the guard (idempotent); the code location's definitions call it when the code server loads them."""
    DagsterApiServer.CancelExecution = _cancel_execution
