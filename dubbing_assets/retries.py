"""A stage that failed for a transient reason is retried at once: its run is re-executed from the failed stage
by Dagster's run retries (the instance's `run_retries`, within the job's `dagster/max_retries`).

Run retries skip a run whose failure was a step failure (`retry_on_asset_or_op_failure: false` in
dagster.yaml): a stage that failed on its input (not a media file, no translator) fails the same way again,
and the owner should hear of it at once. But a stage also fails when the database or the object store goes
away under it (Dagster's own event write at the end of a step, an S3 read), and that one is worth running
again. This failure hook, in the run worker, looks at what the stage raised: when it is transient (the same
error classes the reprocessing rule calls transient), it sets the run's `dagster/retry_on_asset_or_op_failure`
tag before the run's failure is recorded, so Dagster's retry daemon re-executes it from failure. A dg.Failure
(bad input, a missing engine) and a blocking quality check are never transient. The owner's notification waits
for the retry (the notify sensor skips a failure that `dagster/will_retry`).
"""

from __future__ import annotations

import dagster as dg

# Error classes (anywhere in a step failure's error, cause or context chain) that mean "try again later".
TRANSIENT_ERRORS = frozenset({
    "StorageUnavailable", "OSError", "IOError", "ConnectionError", "ConnectionResetError", "ConnectionRefusedError",
    "ConnectionAbortedError", "BrokenPipeError", "TimeoutError", "socket.timeout",
    "OperationalError", "InterfaceError", "DisconnectionError",  # SQLAlchemy / DB-API: the database went away
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "HTTPClientError", "ResponseStreamingError", "ProxyConnectionError",  # botocore
    "DagsterExecutionInterruptedError",
})
RETRY_ON_STEP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"
TRANSIENT_TAG = "dubbing/transient_failure"


def transient_cause(exc: BaseException | None) -> str | None:
    """The first class name in the exception's chain (causes, contexts, a user-code error's original) that
    means "try again later", or None (a dg.Failure is never transient)."""
    seen, queue = set(), [exc]
    while queue:
        err = queue.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, (dg.Failure, KeyboardInterrupt)) or type(err).__name__ == "DagsterExecutionInterruptedError":
            return None  # bad input or a missing engine; or a cancel, which must never turn into a retry
        name = type(err).__name__
        if name in TRANSIENT_ERRORS:
            return name
        queue += [err.__cause__, err.__context__, getattr(err, "user_exception", None)]
    return None


@dg.failure_hook(name="retry_transient_failure")
def retry_transient_failure(context: dg.HookContext) -> None:
    cause = transient_cause(context.op_exception)
    if cause is None:
        return
    context.instance.add_run_tags(context.run_id, {RETRY_ON_STEP_FAILURE_TAG: "true", TRANSIENT_TAG: cause})
    context.log.warning(f"{context.op.name} failed for a transient reason ({cause}): the run will be retried "
                        "from this stage")
