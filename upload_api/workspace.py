"""The Dagster workspace inside the API process (loaded lazily, once): what re-execution needs."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg

from resources import settings

_LOCK = threading.Lock()
_CONTEXT = None


def process_context(instance: dg.DagsterInstance):
    global _CONTEXT
    with _LOCK:
        if _CONTEXT is None:
            from dagster._core.workspace.context import WorkspaceProcessContext
            from dagster._core.workspace.load_target import WorkspaceFileTarget

            target = WorkspaceFileTarget(paths=[str(Path(settings.PROJECT_ROOT) / "workspace.yaml")])
            _CONTEXT = WorkspaceProcessContext(instance, target)
        return _CONTEXT


def reexecute(instance: dg.DagsterInstance, parent: dg.DagsterRun) -> str:
    """Submit a re-execution of `parent`: a failed run from its failed step (finished steps are not
    recomputed); a cancelled run from the start (cancelling removed its temp files)."""
    from dagster._core.execution.plan.resume_retry import ReexecutionStrategy

    request_context = process_context(instance).create_request_context()
    origin = parent.remote_job_origin
    location = request_context.get_code_location(origin.location_name)
    repo = location.get_repository(origin.repository_origin.repository_name)
    remote_job = repo.get_full_job(parent.job_name)
    run = instance.create_reexecuted_run(
        request_context=request_context, parent_run=parent, code_location=location, remote_job=remote_job,
        strategy=(ReexecutionStrategy.FROM_FAILURE if parent.status == dg.DagsterRunStatus.FAILURE
                  else ReexecutionStrategy.ALL_STEPS), use_parent_run_tags=True,
        extra_tags={"dubbing/origin": "retry"})
    instance.submit_run(run.run_id, request_context)
    return run.run_id
