"""The in-process executor, plus resume: when run monitoring resumes a run whose worker died (the
Celery profile, deploy/celery), the stages that already finished in that run are kept and only the
rest run again.

Dagster's own in-process executor ignores `resume_from_failure` (only the step-delegating executors
honour it): measured on the Celery profile, a run resumed after its worker was killed in
`transcript` ran `source_media` and `extracted_audio` again and materialised them twice. Here a
resumed run reads its own event log (which steps succeeded, which outputs they stored) and executes
the subset plan of the steps that did not finish, loading the finished steps' outputs from the
same run. Every other execution (first runs, retries from failure, which are new runs) is exactly
`dg.in_process_executor`.
"""

from __future__ import annotations

import functools
import os

import dagster as dg
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG, _core_in_process_executor_creation
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.outputs import StepOutputHandle
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.executor.in_process import InProcessExecutor


def finished_in_run(instance: dg.DagsterInstance, run_id: str) -> tuple[set[str], set[StepOutputHandle]]:
    """Steps that succeeded in this run, and the outputs they stored."""
    succeeded, outputs = set(), set()
    for record in instance.get_records_for_run(
            run_id, of_type={dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_OUTPUT}).records:
        event = record.event_log_entry.dagster_event
        if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            succeeded.add(event.step_key)
        else:
            outputs.add(event.step_output_data.step_output_handle)
    return succeeded, {o for o in outputs if o.step_key in succeeded}


def _remaining_plan(plan: ExecutionPlan, job_context, succeeded: set[str],
                    outputs: set[StepOutputHandle]) -> ExecutionPlan:
    remaining = [k for k in plan.step_keys_to_execute if k not in succeeded]
    subset = plan.build_subset_plan(remaining, job_context.job_def, job_context.resolved_run_config)
    known = subset.known_state._replace(ready_outputs=set(subset.known_state.ready_outputs) | outputs)
    return ExecutionPlan(subset.step_dict, subset.executable_map, subset.resolvable_map,
                         subset.step_handles_to_execute, known, subset.artifacts_persisted,
                         executor_name=subset.executor_name, repository_load_data=subset.repository_load_data)


def _resumed_iterator(job_context, execution_plan, instance_concurrency_context=None, *, succeeded, outputs):
    plan = _remaining_plan(execution_plan, job_context, succeeded, outputs)
    with InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as concurrency:
        yield from inner_plan_execution_iterator(job_context, plan, concurrency)


class ResumableInProcessExecutor(InProcessExecutor):
    def execute(self, plan_context, execution_plan):
        if not plan_context.resume_from_failure:
            yield from super().execute(plan_context, execution_plan)
            return
        succeeded, outputs = finished_in_run(plan_context.instance, plan_context.run_id)
        remaining = [k for k in execution_plan.step_keys_to_execute if k not in succeeded]
        yield DagsterEvent.engine_event(
            plan_context,
            f"Resuming in process (pid: {os.getpid()}): keeping {len(succeeded)} finished step(s) "
            f"({', '.join(sorted(succeeded)) or 'none'}), executing {', '.join(remaining) or 'none'}",
            event_specific_data=EngineEventData.in_process(os.getpid(), remaining),
        )
        if not remaining:
            return
        yield from iter(ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=functools.partial(_resumed_iterator, succeeded=succeeded, outputs=outputs),
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job, retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan, run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run, instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error, output_capture=plan_context.output_capture,
                step_dependency_config=self.step_dependency_config),
        ))


@dg.executor(name="in_process", config_schema=IN_PROC_CONFIG)
def resumable_in_process_executor(init_context) -> ResumableInProcessExecutor:
    """`dg.in_process_executor` that keeps a resumed run's finished steps (see the module doc)."""
    base = _core_in_process_executor_creation(init_context.executor_config)
    return ResumableInProcessExecutor(retries=base.retries, step_dependency_config=base.step_dependency_config)
