"""Hooks on the dub job's stage ops."""

from __future__ import annotations

import dagster as dg

from resources.notify import NotifyStore


@dg.failure_hook(name="notify_failure_detail", required_resource_keys={"job_store"})
def notify_failure_detail(context: dg.HookContext) -> None:
    """Keep the failing stage and its message for the run's failure notification. The hook runs in
    the run worker while the run is still going; whether a message is sent is decided by the
    run-status sensor when the run has ended (a cancelled or retried run sends none for this)."""
    exc = context.op_exception
    if isinstance(exc, dg.Failure) and exc.description:
        message = exc.description
    else:
        message = f"{type(exc).__name__}: {exc}" if exc is not None else ""
    stage = context.op.name
    if message.startswith(f"{stage}: "):
        message = message[len(stage) + 2:]
    run = context.instance.get_run_by_id(context.run_id)
    job_id = run.tags.get("dagster/partition") if run else None
    NotifyStore(context.resources.job_store).hold_detail(
        context.run_id, job_id, {"stage": stage, "message": message[:1000]})
    context.log.info(f"kept the failure of {stage} for the owner's notification")
