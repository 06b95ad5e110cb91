"""What a job's Dagster runs mean, on the lowest floor because every floor reads it: the tag naming what started
a run, and which of a job's runs decide its state."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.tags import WILL_RETRY_TAG

ORIGIN_TAG = "dubbing/origin"  # what started a run: upload, cli, redub, reprocess, publish
# Set on a run when its owner cancels it (with dagster/max_retries 0): a run that then ends FAILURE, because its
# worker died or was gone, is a cancelled run, never retried (sensors/run_status.py makes it CANCELED).
CANCEL_REQUESTED_TAG = "dubbing/cancel_requested"
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def standing_runs(runs: list[dg.DagsterRun]) -> list[dg.DagsterRun]:
    """The runs (newest first) that decide a job's state. A reprocess (the schedule's or an admin's) that ended
    failed or cancelled over a job whose dub was done before it does not undo that dub: the outputs are still
    the job's, so the job stays done with them. Such runs are left out here; they are still among the job's
    runs (timeline, Dagster UI)."""
    i = 0
    while (i < len(runs) and runs[i].tags.get(ORIGIN_TAG) == "reprocess" and runs[i].status in _ENDED_BADLY
           and not runs[i].is_complete_and_waiting_to_retry):
        i += 1
    return runs[i:] if i and i < len(runs) and runs[i].status == dg.DagsterRunStatus.SUCCESS else runs


def end_cancelled(instance: dg.DagsterInstance, run: dg.DagsterRun, message: str) -> None:
    """A run its owner cancelled that ended FAILURE (its worker died, or had already): made CANCELED, and Dagster's
    run retries told not to retry it. Used by the cancel route and the cancelled_run_failed sensor."""
    instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
    instance.report_run_canceled(run, message=message)
