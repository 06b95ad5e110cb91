"""The Celery app a run worker machine runs (`scripts/celery_worker.sh`, i.e.
`celery -A resources.celery_worker worker -Q dagster ...`).

It is built from the instance's own run launcher config (DAGSTER_HOME/dagster.yaml, the
deploy/celery profile), so the workers and the daemon that launches runs always agree on broker,
result backend, queue and Celery settings. Each task executes one Dagster run (or resumes one) in
the worker's pool process, against the same instance (shared Postgres + shared storage).

When a worker takes a run it reports an engine event in the run's log and tags the run with its
name (`dubbing/celery_worker`), so the run's log and the job timeline say where it ran and where a
resumed run continued.
"""

from __future__ import annotations

import dagster as dg
from celery.signals import task_prerun
from dagster._serdes import unpack_value
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

from resources.celery_runs import WORKER_TAG, DubbingCeleryRunLauncher


def _make_app():
    instance = dg.DagsterInstance.get()
    try:
        launcher = instance.run_launcher
        if not isinstance(launcher, DubbingCeleryRunLauncher):
            raise SystemExit(f"DAGSTER_HOME={instance.root_directory}: the run launcher is "
                             f"{type(launcher).__name__}, not DubbingCeleryRunLauncher; copy "
                             "deploy/celery/dagster.yaml there")
        return launcher.celery
    finally:
        instance.dispose()  # the pool processes open their own instance per task


app = _make_app()
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)


@task_prerun.connect
def _say_which_worker(sender=None, task_id=None, task=None, args=None, kwargs=None, **_):
    if task is None or task.name not in (execute_job.name, resume_job.name):
        return
    packed = (kwargs or {}).get("execute_job_args_packed") or (kwargs or {}).get("resume_job_args_packed")
    if not packed:
        return
    run_id = unpack_value(packed).run_id
    hostname = task.request.hostname
    verb = "resumes" if task.name == resume_job.name else "executes"
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            return
        instance.add_run_tags(run_id, {WORKER_TAG: hostname})
        instance.report_engine_event(f"Celery worker {hostname} {verb} the run (task {task_id}).", run)
