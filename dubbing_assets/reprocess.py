"""Scheduled reprocessing: which finished jobs to run again, and from which stage.

One rule, evaluated by `reprocess_schedule` (every DUBBING_REPROCESS_CRON) and by an admin's
`POST /api/runtime/reprocess`:

- **transient**: the job's latest run failed with a transient error (storage or database unreachable, a
  connection or timeout, a run worker that died without a stage failure). Re-run from the failed stage on,
  at most DUBBING_REPROCESS_RETRY_BUDGET times per job (counted as the job's reprocess runs with a
  transient key, and such requests still queued). A `dg.Failure` (bad input, missing engine) and any error
  not known to be transient are never retried.
- **outdated**: the job's latest run succeeded, and the `version_tag` that transcript, translation or
  dubbed_speech recorded (resources/versions.py) differs from the one the current resources would record
  (e.g. an admin set ASR_MODEL to a better model). Re-run from the earliest outdated stage on. A job with
  user edits (edit_revision > 0) keeps its transcript and translation: it is re-run from dubbed_speech when
  the voice is outdated, else left alone.

Skipped: expired jobs, jobs without their partition, cancelled ones and ones not finished (queued,
running, waiting for Dagster's own run retry). Oldest problem first, at most DUBBING_REPROCESS_MAX_PER_TICK
picks per evaluation. Every pick has a deterministic key (`reprocess:transient:<failed run id>`,
`reprocess:outdated:<job>:<stage>:<sha1 of the current tag>`), used as the run key and tagged on the run
(`dubbing/request_key`); a key already carried by a run of the job, or queued in the job store, is never
picked again, whichever instigator (schedule, admin action through the run request sensor) used it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import dagster as dg
import sqlalchemy as sa
from dagster._core.execution.stats import StepEventStatus

from dubbing_assets.jobs import STAGES, dub_job
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.retries import TRANSIENT_ERRORS
from resources.asr import AsrError, AsrResource
from resources.jobstore import JobRecord, JobStore, RunRequestRecord, RunRequestRow
from resources.translate import TranslationError, TranslatorResource
from resources.tts import TtsError, TtsResource
from sensors.run_requests import REQUEST_KEY_TAG, request_run, stages_from
from sensors.upload_sensor import ensure_pools

RULES = ("all", "transient", "outdated")
KIND = "reprocess"  # the run's dubbing/origin and the job store request's kind
TRANSIENT_PREFIX = "reprocess:transient:"
OUTDATED_PREFIX = "reprocess:outdated:"
VERSIONED = ("transcript", "translation", "dubbed_speech")  # the stages whose engine/model the rule compares
PAGE = 500  # jobs read per query while walking the job store


def _env_int(name: str, default: int, low: int) -> int:
    try:
        return max(low, int(os.environ.get(name, "").strip() or default))
    except ValueError:
        return default


def max_per_tick() -> int:
    return _env_int("DUBBING_REPROCESS_MAX_PER_TICK", 10, 1)


def retry_budget() -> int:
    return _env_int("DUBBING_REPROCESS_RETRY_BUDGET", 3, 0)


def cron() -> str:
    return os.environ.get("DUBBING_REPROCESS_CRON", "").strip() or "*/15 * * * *"


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Failed:
    """How a failed run failed: transient (worth another run) or not, the stage to start again from."""

    transient: bool
    stage: str
    detail: str


@dataclass
class Pick:
    job_id: str
    rule: str  # "transient" or "outdated"
    stages: list[str]
    key: str
    reason: str
    since: float  # when the problem appeared (epoch s): the oldest is picked first
    job: JobRecord = field(repr=False, compare=False)

    def as_dict(self) -> dict:
        return {"job_id": self.job_id, "rule": self.rule, "reason": self.reason, "stages": list(self.stages),
                "key": self.key}

    def run_request(self) -> dg.RunRequest:
        """The same run the run request sensor launches for a queued request with this key."""
        record = RunRequestRecord(seq=0, key=self.key, job_id=self.job_id, kind=KIND, stages=list(self.stages),
                                  reason=self.reason, requested_by=None, created_at=dt.datetime.now(dt.timezone.utc))
        return request_run(self.job, record)


class Engines:
    """The current resources, and the version tag each versioned stage would record now for a job."""

    def __init__(self, asr: AsrResource, translator: TranslatorResource, tts: TtsResource):
        self.asr, self.translator, self.tts = asr, translator, tts
        self._cache: dict[tuple, str | None] = {}

    @classmethod
    def from_env(cls) -> Engines:
        """What dubbing_assets/resources.py feeds the stages, read the way the readiness checks read it (the
        API process has no Dagster resources)."""
        from resources.readiness import Config

        cfg = Config.from_env()
        return cls(AsrResource(model=cfg.asr_model, device=cfg.asr_device),
                   TranslatorResource(backend=cfg.translator, libretranslate_url=cfg.libretranslate_url),
                   TtsResource(engine=cfg.tts_engine, xtts_model_dir=cfg.xtts_model_dir, xtts_device=cfg.xtts_device))

    def current_tag(self, stage: str, job: JobRecord) -> str | None:
        """None when the stage could not run now (no backend, no voice): nothing to compare with."""
        if stage == "transcript":
            key: tuple = (stage,)
        elif stage == "translation":
            key = (stage, job.source_lang, job.target_lang, job.options.translator)
        else:
            key = (stage, job.target_lang, job.options.tts_engine, job.voice)
        if key not in self._cache:
            try:
                if stage == "transcript":
                    tag = self.asr.version_tag()
                elif stage == "translation":
                    tag = self.translator.version_tag(job.source_lang, job.target_lang, job.options.translator)
                else:
                    tag = self.tts.version_tag(job.target_lang, job.options.tts_engine, job.voice)
            except (AsrError, TranslationError, TtsError, ValueError, OSError):
                tag = None
            self._cache[key] = tag
        return self._cache[key]


# --- failures ------------------------------------------------------------------------------------

_CLASSIFIED: OrderedDict[str, Failed] = OrderedDict()  # run id -> classification (a finished run never changes)
_CLASSIFIED_MAX = 10_000


def _error_names(error) -> list[str]:
    """Class names of an error and its causes and contexts, outermost first."""
    names, queue = [], [error]
    while queue and len(names) < 50:
        err = queue.pop(0)
        if err is not None:
            names.append(err.cls_name)
            queue += [err.cause, err.context]
    return names


def _first_unfinished(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The first stage of the run's selection that did not succeed in it."""
    selected = run.asset_selection
    ordered = [s for s in STAGES if selected is None or dg.AssetKey(s) in selected] or STAGES
    done = {s.step_key for s in instance.get_run_step_stats(run.run_id) if s.status == StepEventStatus.SUCCESS}
    return next((s for s in ordered if s not in done), ordered[0])


def classify(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Failed:
    """From the failed run's STEP_FAILURE events: a dg.Failure (user_failure_data) is permanent; an error
    whose class (or cause's) is in TRANSIENT_ERRORS is transient; anything else is not retried. A run that
    failed without any step failure (its worker died, it could not start) is transient."""
    found = _CLASSIFIED.get(run.run_id)
    if found is not None:
        return found
    failures = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    events = [r.event_log_entry.dagster_event for r in failures]
    events = [e for e in events if e is not None and e.step_key in STAGES]
    if not events:
        result = Failed(True, _first_unfinished(instance, run), "the run failed without a stage failure")
    else:
        event = min(events, key=lambda e: STAGES.index(e.step_key))
        data = event.step_failure_data
        names = _error_names(data.error) if data and data.error else []
        transient = [n for n in names if n in TRANSIENT_ERRORS]
        if data is not None and data.user_failure_data is not None:
            result = Failed(False, event.step_key, "dg.Failure: not worth a retry")
        elif transient:
            result = Failed(True, event.step_key, transient[0])
        else:
            result = Failed(False, event.step_key, "error not known to be transient: " + ", ".join(names[:5]))
    _CLASSIFIED[run.run_id] = result
    while len(_CLASSIFIED) > _CLASSIFIED_MAX:
        _CLASSIFIED.popitem(last=False)
    return result


# --- the rule ------------------------------------------------------------------------------------

def _latest_materializations(instance: dg.DagsterInstance, stage: str, job_ids: list[str]) -> dict[str, tuple]:
    """{job id: (version tag or None, timestamp)} of the latest materialisation of `stage` per partition, in
    batched queries (newest first, so the first record seen per partition is its latest)."""
    out: dict[str, tuple] = {}
    if not job_ids:
        return out
    cursor = None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(stage), asset_partitions=list(job_ids)),
            limit=max(100, 2 * len(job_ids)), cursor=cursor)
        for record in result.records:
            mat = record.asset_materialization
            if mat is None or mat.partition in out:
                continue
            value = mat.metadata.get("version_tag")
            out[mat.partition] = (getattr(value, "value", value), record.timestamp)
        if not result.has_more or len(out) == len(job_ids):
            return out
        cursor = result.cursor


def _queued_keys(job_store: JobStore, job_ids: list[str]) -> dict[str, set[str]]:
    """Reprocess keys already queued in the job store, per job (one query per PAGE jobs)."""
    out: dict[str, set[str]] = {}
    with sa.orm.Session(job_store.engine()) as session:
        for i in range(0, len(job_ids), PAGE):
            rows = session.execute(sa.select(RunRequestRow.job_id, RunRequestRow.key).where(
                RunRequestRow.job_id.in_(job_ids[i:i + PAGE]), RunRequestRow.key.like("reprocess:%")))
            for job_id, key in rows:
                out.setdefault(job_id, set()).add(key)
    return out


def _outdated(job: JobRecord, engines: Engines, recorded: dict[str, tuple]) -> tuple[str, str, str, float] | None:
    """(stage to start from, key, reason, since) when the job's versioned stages are outdated."""
    stale = []
    for stage in VERSIONED:
        tag, timestamp = recorded.get(stage, (None, None))
        if not tag:  # never made, or made before stages recorded their versions: nothing to compare
            continue
        current = engines.current_tag(stage, job)
        if current and current != tag:
            stale.append((stage, tag, current, timestamp))
    if job.edit_revision > 0:  # re-running transcript or translation would throw the user's edits away
        stale = [s for s in stale if s[0] == "dubbed_speech"]
    if not stale:
        return None
    stage, old, new, since = stale[0]
    key = f"{OUTDATED_PREFIX}{job.id}:{stage}:{short_hash(new)}"
    return stage, key, f"outdated: {stage} was made with {old}; now {new}", since


def _run_keys(records) -> set[str]:
    """The request keys (and run keys) the job's runs carry."""
    tags = [r.dagster_run.tags for r in records]
    return {k for t in tags for k in (t.get(REQUEST_KEY_TAG), t.get("dagster/run_key")) if k}


def _cancelled_during(job: JobRecord, record) -> bool:
    asked = job.cancel_requested_at
    return asked is not None and asked.timestamp() >= (record.start_time or record.create_timestamp.timestamp())


def pick(instance: dg.DagsterInstance, job_store: JobStore, engines: Engines, *, rule: str = "all",
         limit: int | None = None) -> list[Pick]:
    """The jobs to re-run now, oldest problem first, at most `limit` (default DUBBING_REPROCESS_MAX_PER_TICK)."""
    from upload_api.dagster_view import job_state

    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}")
    limit = max_per_tick() if limit is None else limit
    budget = retry_budget()
    failed: list[tuple[float, JobRecord, dg.DagsterRun]] = []  # classified lazily, oldest first
    picks: list[Pick] = []
    seq = 0
    while True:
        page = job_store.jobs_after(seq, limit=PAGE, uploaded_only=False)
        if not page:
            break
        seq = page[-1].seq
        jobs = [j for j in page if j.expired_at is None and j.artifacts_expired_at is None]
        existing = instance.get_existing_dynamic_partitions(dub_jobs.name, [j.id for j in jobs]) if jobs else set()
        jobs = [j for j in jobs if j.id in existing]
        if not jobs:
            if len(page) < PAGE:
                break
            continue
        records = instance.get_run_records(filters=dg.RunsFilter(
            job_name=dub_job.name, tags={"dagster/partition": [j.id for j in jobs]}))
        runs: dict[str, list] = {j.id: [] for j in jobs}
        for rec in sorted(records, key=lambda r: r.create_timestamp, reverse=True):  # newest first
            runs.setdefault(rec.dagster_run.tags.get("dagster/partition"), []).append(rec)
        queued = _queued_keys(job_store, [j.id for j in jobs])
        done = []
        for job in jobs:
            recs = runs[job.id]
            used = queued.get(job.id, set()) | _run_keys(recs)
            state = job_state(job, [r.dagster_run for r in recs])
            if state == "done" and rule in ("all", "outdated"):
                done.append((job, used))
            elif state == "failed" and rule in ("all", "transient"):
                latest = recs[0]
                if _cancelled_during(job, latest):
                    continue  # the user asked to cancel it while it ran
                if len({k for k in used if k.startswith(TRANSIENT_PREFIX)}) >= budget:
                    continue  # the retry budget is spent
                if f"{TRANSIENT_PREFIX}{latest.dagster_run.run_id}" in used:
                    continue
                since = latest.end_time or max(latest.update_timestamp, latest.create_timestamp).timestamp()
                failed.append((since, job, latest.dagster_run))
        if done:
            ids = [j.id for j, _ in done]
            recorded = {stage: _latest_materializations(instance, stage, ids) for stage in VERSIONED}
            for job, used in done:
                found = _outdated(job, engines, {s: recorded[s][job.id] for s in VERSIONED if job.id in recorded[s]})
                if found and found[1] not in used:
                    stage, key, reason, since = found
                    picks.append(Pick(job.id, "outdated", stages_from(stage), key, reason, since, job))
        if len(page) < PAGE:
            break
    # Oldest problem first; failures are classified (a query each, cached per run) only as far as needed.
    picks.sort(key=lambda p: p.since)
    failed.sort(key=lambda f: f[0])
    out: list[Pick] = []
    while len(out) < limit and (picks or failed):
        if failed and (not picks or failed[0][0] <= picks[0].since):
            since, job, run = failed.pop(0)
            how = classify(instance, run)
            if not how.transient:
                continue
            if job.edit_revision > 0 and STAGES.index(how.stage) < STAGES.index("dubbed_speech"):
                continue  # re-running transcript or translation would throw the user's edits away
            out.append(Pick(job.id, "transient", stages_from(how.stage), f"{TRANSIENT_PREFIX}{run.run_id}",
                            f"transient: {how.stage} failed ({how.detail}) in run {run.run_id}", since, job))
        else:
            out.append(picks.pop(0))
    return out


@dg.schedule(name="reprocess_schedule", cron_schedule=cron(), job=dub_job,
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Re-runs jobs whose latest run failed with a transient error (within a retry budget) or "
                         "that were made with an older engine, model or voice than the current one; bounded per "
                         "tick, one run per key (dubbing_assets/reprocess.py).")
def reprocess_schedule(context: dg.ScheduleEvaluationContext, job_store: JobStore, asr: AsrResource,
                       translator: TranslatorResource, tts: TtsResource):
    picks = pick(context.instance, job_store, Engines(asr, translator, tts), limit=max_per_tick())
    claimed = []
    for p in picks:  # claimed, so retention keeps off the job until its run shows in Dagster
        if job_store.claim_launch(p.job_id):
            claimed.append(p)
        else:
            context.log.info(f"reprocess {p.job_id}: not launched, retention is deleting its files")
    picks = claimed
    if not picks:
        return dg.SkipReason("nothing to reprocess")
    ensure_pools(context.instance)
    for p in picks:
        context.log.info(f"reprocess {p.job_id} from {p.stages[0]}: {p.reason} ({p.key})")
    return [p.run_request() for p in picks]
