"""Retention policy: when a job's intermediate artifacts, uploaded input and outputs are deleted.

Settings (0 = keep forever; nothing is deleted unless the admin opts in):

    DUBBING_RETENTION_DAYS          stage artifacts (work/, scratch) and the uploaded input
    DUBBING_OUTPUT_RETENTION_DAYS   outputs; default DUBBING_RETENTION_DAYS; never shorter than it (a lower
                                    value is raised to it, with a warning); 0 = keep outputs forever
    DUBBING_RETENTION_INTERVAL_S    how often the retention sensor looks (default 3600)

A job's age is the time since its last run ended, or since it was created when it has no finished run (nor a
run request queued later). A job is only ever expired when it is finished: done, failed or cancelled (a job
cancelled before its run was launched counts as cancelled). A done job loses its intermediates and input at
the intermediate age (it keeps its outputs, and can no longer be re-dubbed or retried) and everything at the
output age (the tombstone `expired_at`: state "expired"). A failed or cancelled job offers no outputs: it
expires whole at the intermediate age. Pinned jobs never expire.

What the Dagster side does with a decision (files first, then tombstone, then the partition) is in
sensors/retention.py; `apply` below does the first two, which are the same for every caller.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Iterable

import dagster as dg

from resources import settings
from resources.jobstore import JobRecord, JobStore
from resources.runs import standing_runs
from resources.storage import MediaStorage

log = logging.getLogger("dubbing.retention")

DAY = dt.timedelta(days=1)
ARTIFACTS = "artifacts"  # intermediates + input removed; outputs kept
EVERYTHING = "everything"  # outputs too: the job is expired

# Dagster run statuses after which nothing more happens to a run (a crashed run waiting for its retry excluded)
FINISHED_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class RetentionPolicy:
    """Ages in days; None = keep forever."""

    artifacts_days: float | None
    outputs_days: float | None

    @classmethod
    def from_env(cls, warn: bool = True) -> "RetentionPolicy":
        artifacts = settings.number("DUBBING_RETENTION_DAYS", 0) or None
        raw_outputs = os.environ.get("DUBBING_OUTPUT_RETENTION_DAYS", "").strip()
        outputs = (settings.number("DUBBING_OUTPUT_RETENTION_DAYS", 0) or None) if raw_outputs else artifacts
        if outputs is not None and (artifacts is None or outputs < artifacts):
            # outputs outlive their intermediates: a job with outputs and no artifacts is fine, the reverse is not
            if warn:
                log.warning("DUBBING_OUTPUT_RETENTION_DAYS=%s is shorter than DUBBING_RETENTION_DAYS=%s; outputs "
                            "are kept as long as the intermediates (%s)", raw_outputs, artifacts or 0,
                            f"{artifacts} days" if artifacts else "forever")
            outputs = artifacts
        return cls(artifacts_days=artifacts, outputs_days=outputs)

    @property
    def enabled(self) -> bool:
        return self.artifacts_days is not None

    def artifacts_cutoff(self, now: dt.datetime) -> dt.datetime | None:
        """Jobs whose last activity is before this lose their intermediates (None: never)."""
        return None if self.artifacts_days is None else now - self.artifacts_days * DAY

    def outputs_cutoff(self, now: dt.datetime) -> dt.datetime | None:
        return None if self.outputs_days is None else now - self.outputs_days * DAY

    def describe(self) -> str:
        def days(value):
            return "forever" if value is None else f"{value:g} days"

        return f"intermediates and inputs {days(self.artifacts_days)}, outputs {days(self.outputs_days)}"


def interval_s() -> int:
    """DUBBING_RETENTION_INTERVAL_S: the retention sensor's minimum interval (default an hour)."""
    return max(1, int(settings.number("DUBBING_RETENTION_INTERVAL_S", 3600)))


@dataclass(frozen=True)
class Activity:
    """What Dagster (and the run request queue) says about a job, as far as retention cares."""

    busy: bool  # the latest run is queued, starting, running, cancelling or waiting for its retry
    state: str  # done | failed | cancelled | submitted (never ran) | busy
    last_end: dt.datetime | None  # when its last run ended


def activity(job: JobRecord, records: list) -> Activity:
    """From the job's Dagster run records (any order)."""
    if not records:
        return Activity(busy=False, state="cancelled" if job.cancel_requested_at else "submitted", last_end=None)
    records = sorted(records, key=lambda r: r.storage_id, reverse=True)  # newest first (ids, not clocks)
    latest = standing_runs([r.dagster_run for r in records])[0]  # a failed reprocess keeps a done job done
    status = latest.status.value
    if status not in FINISHED_RUN or latest.is_complete_and_waiting_to_retry:
        return Activity(busy=True, state="busy", last_end=None)
    ends = [r.end_time for r in records if r.end_time]
    last_end = dt.datetime.fromtimestamp(max(ends), dt.timezone.utc) if ends else None
    state = {"SUCCESS": "done", "FAILURE": "failed", "CANCELED": "cancelled"}[status]
    return Activity(busy=False, state=state, last_end=last_end)


def decide(job: JobRecord, act: Activity, policy: RetentionPolicy, now: dt.datetime,
           last_request: dt.datetime | None = None) -> str | None:
    """ARTIFACTS, EVERYTHING or None (nothing to do now) for one job."""
    if job.pinned or job.expired_at is not None or not policy.enabled:
        return None
    if act.busy or act.state == "submitted":  # running, or not launched yet: never touched
        return None
    last = max(t for t in (job.created_at, act.last_end, last_request) if t is not None)
    if last >= policy.artifacts_cutoff(now):
        return None
    if act.state != "done":  # failed or cancelled: no outputs to keep
        return EVERYTHING
    out_cutoff = policy.outputs_cutoff(now)
    if out_cutoff is not None and last < out_cutoff:
        return EVERYTHING
    return None if job.artifacts_expired_at is not None else ARTIFACTS


def apply(job: JobRecord, action: str, store: JobStore, storage: MediaStorage) -> None:
    """Delete the files `action` covers, then set the tombstone (a crash in between: the next tick deletes
    again, which finds nothing, and sets it). The uploaded input goes through the upload store (local file or
    S3 object, and the upload row marked expired); a job without an upload (the CLI's) has the user's own file
    as its input, which is never deleted."""
    if action == EVERYTHING:
        storage.clear_job(job.id)
        remove_empty_job_dir(storage, job.id)
    else:
        storage.clear_work(job.id)
    if job.upload_id:
        from resources.uploads import UploadStore

        UploadStore(store, storage.root_path() / "uploads").expire_input(job.upload_id)
    store.mark_expired(job.id, artifacts=True, everything=action == EVERYTHING)


def remove_empty_job_dir(storage: MediaStorage, job_id: str) -> None:
    if storage.is_s3:
        return
    try:
        storage.job_dir(job_id).rmdir()  # only when empty: anything else there is not ours to remove
    except OSError:
        pass


def candidates(store: JobStore, policy: RetentionPolicy, now: dt.datetime, after_seq: int,
               limit: int) -> list[JobRecord]:
    """Jobs that may have something to expire, by seq after `after_seq`: not pinned, not expired, created
    before the intermediate cutoff (a job's last activity is never before its creation), and not yet through
    with what the policy allows."""
    import sqlalchemy as sa
    import sqlalchemy.orm

    from resources.jobstore import JobRow

    cutoff = policy.artifacts_cutoff(now)
    if cutoff is None:
        return []
    pending = JobRow.artifacts_expired_at.is_(None)
    out_cutoff = policy.outputs_cutoff(now)
    if out_cutoff is not None:
        pending = sa.or_(pending, JobRow.created_at < out_cutoff)
    stmt = (sa.select(JobRow).where(JobRow.seq > after_seq, JobRow.pinned.is_(False), JobRow.expired_at.is_(None),
                                    JobRow.created_at < cutoff, pending)
            .order_by(JobRow.seq).limit(limit))
    with sa.orm.Session(store.engine()) as session:
        return [JobRecord.from_row(r) for r in session.scalars(stmt)]


def tombstoned_since(store: JobStore, since: dt.datetime, limit: int) -> list[JobRecord]:
    """Jobs given a tombstone at or after `since` (their partitions should be gone)."""
    import sqlalchemy as sa
    import sqlalchemy.orm

    from resources.jobstore import JobRow

    stmt = (sa.select(JobRow).where(sa.or_(JobRow.artifacts_expired_at >= since, JobRow.expired_at >= since))
            .order_by(JobRow.seq).limit(limit))
    with sa.orm.Session(store.engine()) as session:
        return [JobRecord.from_row(r) for r in session.scalars(stmt)]


def latest_requests(store: JobStore, job_ids: Iterable[str]) -> dict[str, dt.datetime]:
    """When each job last had a run queued in the run request queue (a re-dub, a reprocess)."""
    import sqlalchemy as sa
    import sqlalchemy.orm

    from resources.jobstore import RunRequestRow, _utc

    ids = list(job_ids)
    if not ids:
        return {}
    stmt = (sa.select(RunRequestRow.job_id, sa.func.max(RunRequestRow.created_at))
            .where(RunRequestRow.job_id.in_(ids)).group_by(RunRequestRow.job_id))
    with sa.orm.Session(store.engine()) as session:
        return {job_id: _utc(when) for job_id, when in session.execute(stmt)}


def run_records(instance: dg.DagsterInstance, job_ids: list[str]) -> dict[str, list]:
    """Every run record of these jobs' partitions, in one query."""
    out: dict[str, list] = {j: [] for j in job_ids}
    if not job_ids:
        return out
    for rec in instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": list(job_ids)})):
        key = rec.dagster_run.tags.get("dagster/partition")
        if key in out:
            out[key].append(rec)
    return out

