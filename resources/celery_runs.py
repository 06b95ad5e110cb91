"""Runs on Celery workers (the deploy/celery/dagster.yaml profile).

`dagster_celery.CeleryRunLauncher` (0.29.27) puts each run on a broker queue as a Celery task; a
worker process (`scripts/celery_worker.sh`, app `resources.celery_worker`) executes it. This subclass
fixes two things measured here:

- **Resume was broken**: the stock `resume_run` calls the `resume_job` task with the keyword
  `execute_job_args_packed`, but the task's parameter is `resume_job_args_packed`, so Celery raises
  `TypeError: _resume_job() got an unexpected keyword argument` in the daemon and nothing resumes.
- **A dead worker looked alive**: the health check reads the task state from the result backend.
  A worker killed with SIGKILL (or a machine that died) never writes another state, so its task
  stays STARTED forever and run monitoring never noticed. Here a STARTED task's worker (the
  hostname Celery stored with the state) must also answer a broadcast ping; when it has not
  answered for `worker_lost_after_seconds`, the run worker is reported FAILED and run monitoring
  resumes the run on another worker (finished steps are kept, the interrupted step runs again).
  The run's pool slots (held by the dead worker) are freed before it is resumed.
  And a task still waiting in the queue (PENDING, e.g. a resumed run waiting for a free worker) is
  healthy, not UNKNOWN: the stock check calls it UNKNOWN, which run monitoring resumes again on
  every poll while it waits, and then fails the run (read in run_monitoring.py).
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, ResumeRunContext, WorkerStatus
from dagster._grpc.types import ResumeRunArgs
from dagster._serdes import pack_value
from dagster_celery.config import TASK_RESUME_JOB_NAME
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG, DAGSTER_CELERY_TASK_ID_TAG
from dagster_celery.tasks import create_resume_job_task

# The run tag that picks a Celery queue (dagster_celery.tags): e.g. "gpu" for ASR/TTS on GPU machines.
QUEUE_TAG = DAGSTER_CELERY_QUEUE_TAG
WORKER_TAG = "dubbing/celery_worker"  # the worker that took the run last (set by the worker)


class DubbingCeleryRunLauncher(CeleryRunLauncher):
    def __init__(self, default_queue: str, worker_lost_after_seconds: float = 15,
                 ping_timeout_seconds: float = 3, **kwargs: Any):
        super().__init__(default_queue=default_queue, **kwargs)
        self.worker_lost_after_seconds = float(worker_lost_after_seconds)
        self.ping_timeout_seconds = float(ping_timeout_seconds)
        self._silent_since: dict[str, float] = {}  # task id -> first failed ping (daemon memory)

    @classmethod
    def config_type(cls):
        return {
            **super().config_type(),
            "worker_lost_after_seconds": dg.Field(
                float, is_required=False, default_value=15.0,
                description="A STARTED run's worker that has not answered a ping for this long is "
                            "reported FAILED (run monitoring then resumes the run elsewhere)."),
            "ping_timeout_seconds": dg.Field(float, is_required=False, default_value=3.0,
                                             description="How long one ping waits for the worker."),
        }

    def resume_run(self, context: ResumeRunContext) -> None:
        run = context.dagster_run
        # the dead worker still holds the run's pool slots (e.g. "asr", limit 1): they are only freed
        # when a run ends, and this one goes on, so other runs' transcripts waited for it while the
        # resumed run waited in the queue for a worker busy with one of them (measured: a deadlock)
        self._instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        args = ResumeRunArgs(job_origin=dg._check.not_none(run.job_code_origin), run_id=run.run_id,
                             instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True)
        task = create_resume_job_task(self.celery)
        signature = task.si(resume_job_args_packed=pack_value(args))  # the task's own parameter name
        self._launch_celery_task_run(run=run, task_signature=signature, routing_key=TASK_RESUME_JOB_NAME)

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if not task_id:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has no Celery task")
        result = self.celery.AsyncResult(task_id)
        state = result.state
        if state == "SUCCESS":
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        if state == "FAILURE":
            return CheckRunHealthResult(WorkerStatus.FAILED, f"Celery task failed: {result.info!r}"[:500])
        if state in ("PENDING", "RECEIVED", "RETRY"):
            # waiting in the broker queue for a free worker (Celery cannot tell a queued task from an
            # unknown one; run monitoring's start timeout covers runs that never start at all)
            queue = run.tags.get(QUEUE_TAG, self.default_queue)
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"task {state.lower()} in queue {queue}")
        if state != "STARTED":
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"Unknown task status: {state}")
        info = result.info if isinstance(result.info, dict) else {}
        hostname = info.get("hostname")
        if not hostname:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if self._answers(hostname):
            self._silent_since.pop(task_id, None)
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        since = self._silent_since.setdefault(task_id, time.time())
        silent_s = time.time() - since
        if silent_s < self.worker_lost_after_seconds:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker {hostname} silent for {silent_s:.0f} s")
        self._silent_since.pop(task_id, None)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"Celery worker {hostname} (pid {info.get('pid')}) stopped answering pings "
            f"({silent_s:.0f} s); its task {task_id} will never finish")

    def _answers(self, hostname: str) -> bool:
        try:
            replies = self.celery.control.ping(destination=[hostname], timeout=self.ping_timeout_seconds)
        except Exception:  # the broker is unreachable: we cannot tell, so do not call the worker dead
            return True
        return any(hostname in reply for reply in replies or [])
