"""A job as Dagster sees it: its runs, the state derived from the latest run, the stage timeline
(step stats + materialisation metadata across all runs, so retries and re-executions show as
attempts) and its log. Nothing here is stored: every answer is read from the instance."""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from typing import Iterable

import dagster as dg

from dubbing_assets import checks
from dubbing_assets.jobs import STAGE_LABELS, STAGES
from resources.jobstore import JobRecord
from resources.runs import CANCEL_REQUESTED_TAG, standing_runs

STATE_OF_RUN = {
    "QUEUED": "queued", "NOT_STARTED": "queued", "MANAGED": "queued", "STARTING": "queued",
    "STARTED": "running", "SUCCESS": "done", "FAILURE": "failed", "CANCELING": "cancelling",
    "CANCELED": "cancelled",
}
NEEDS_REVIEW = "needs_review"  # the run stopped at a blocking quality check: nothing was published
FINISHED = {"done", "failed", "cancelled", "expired", NEEDS_REVIEW}
SHOWN_METADATA = {
    "source_media": ("duration_s", "container", "video_codec", "audio_codec", "size_mb"),
    "extracted_audio": ("asr_wav_s", "extract_s"),
    "transcript": ("segments", "words", "mean_confidence", "real_time_factor", "model"),
    "translation": ("backend", "segments", "target_chars"),
    "dubbed_speech": ("engine", "segments", "tts_synthesized", "tts_reused", "sped_up", "truncated", "cut_s",
                      "held_s", "mean_speed", "max_speed"),
    "dubbed_mix": ("integrated_lufs", "true_peak_dbfs", "gain_db", "codec"),
    "dubbed_video": ("container", "size_mb", "duration_s", "audio_tracks", "subtitle_streams", "note"),
}


def runs_by_job(instance: dg.DagsterInstance, job_ids: list[str]) -> dict[str, list[dg.DagsterRun]]:
    """Every run of these jobs (newest first), in one query."""
    out: dict[str, list] = {j: [] for j in job_ids}
    if not job_ids:
        return out
    for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": list(job_ids)})):
        key = run.tags.get("dagster/partition")
        if key in out:
            out[key].append(run)
    return out


def job_state(job: JobRecord, runs: list[dg.DagsterRun], instance: dg.DagsterInstance | None = None) -> str:
    """The job's state from its latest run. With the instance, a run that a blocking quality check stopped is
    "needs_review" (without it, such a run reads as "failed")."""
    if job.expired_at is not None:  # the retention tombstone: its files and partition are gone
        return "expired"
    runs = standing_runs(runs)  # a reprocess that failed over a done job leaves it done
    if runs:
        if runs[0].is_complete_and_waiting_to_retry:
            return "queued"  # the run crashed and Dagster's run retries will launch it again
        state = STATE_OF_RUN.get(runs[0].status.value, runs[0].status.value.lower())
        if state == "failed" and CANCEL_REQUESTED_TAG in runs[0].tags:
            return "cancelling"  # its worker died under the cancel: cancelled_run_failed makes it CANCELED
        if state == "failed" and instance is not None and blocking_failures(instance, runs[0]):
            return NEEDS_REVIEW
        return state
    return "cancelled" if job.cancel_requested_at else "submitted"


def blocking_failures(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[dict]:
    """The blocking checks that failed at ERROR severity in this run (what stopped it), [] when none did.
    Read once per process for a finished run."""
    return _finished_or_read(run, "blocking_failures",
                             lambda: checks.blocking_failures(checks.evaluations(instance, run.run_id)))


def quality(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> dict:
    """The latest evaluation of every quality check across the job's runs (newest run first), and a summary."""
    latest: dict[str, dict] = {}
    for run in standing_runs(runs):  # the published dub's checks, not those of a reprocess that failed over it
        for e in checks.evaluations(instance, run.run_id):
            if e["name"] not in latest:
                latest[e["name"]] = e
            else:  # within one run the later evaluation wins; across runs the newer run was seen first
                if latest[e["name"]]["run_id"] == run.run_id:
                    latest[e["name"]] = e
    order = {name: i for i, name in enumerate(CHECK_ORDER)}
    for e in latest.values():
        e["status"] = ("skipped" if e["metadata"].get("skipped") else "accepted" if e["metadata"].get("accepted")
                       else "passed" if e["passed"] else "warning" if e["severity"] == "warn" else "failed")
    failed = [e for e in latest.values() if e["status"] == "failed"]
    for name in CHECK_ORDER:  # a check its run never reached (an earlier one stopped it, or it is still going)
        if name not in latest and latest:
            latest[name] = {"name": name, "asset": checks.ASSET_OF.get(name, "dubbed_speech"), "passed": None,
                            "severity": None, "blocking": name in checks.BLOCKING, "run_id": None, "metadata": {},
                            "time": None, "status": "not_run",
                            "description": "not run: an earlier check stopped the run" if failed else "not run yet"}
    found = sorted(latest.values(), key=lambda e: order.get(e["name"], len(order)))
    if not found:
        summary = "no quality checks yet"
    elif failed:
        summary = "needs review: " + "; ".join(f"{e['name']}: {e['description']}" for e in failed)
    else:
        passed = sum(1 for e in found if e["status"] in ("passed", "skipped"))
        found_run = [e for e in found if e["status"] != "not_run"]
        notes = [f"{e['name']} {e['status']}" for e in found if e["status"] in ("warning", "accepted")]
        summary = f"{passed} of {len(found_run)} checks passed" + (f" ({', '.join(notes)})" if notes else "")
    return {"checks": found, "summary": summary}


# the order the checks are shown in: pipeline order
CHECK_ORDER = ["speech_speed", "speech_kept", "coverage", "no_overlap", "round_trip", "loudness", "output_streams",
               "sync"]


def _ts(value: float | None) -> str | None:
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat() if value else None


def _metadata_value(value) -> object:
    raw = getattr(value, "value", value)
    if isinstance(raw, (int, float, str, bool)) or raw is None:
        return raw
    return str(raw)


def records(instance: dg.DagsterInstance, run_id: str, of_type=None, cursor: str | None = None,
            limit: int | None = None, ascending: bool = True):
    return instance.get_records_for_run(run_id, cursor=cursor, of_type=of_type, limit=limit,
                                        ascending=ascending)


def log_line(record) -> dict:
    entry = record.event_log_entry
    event = entry.dagster_event
    message = entry.user_message or (event.message if event else "") or ""
    if event and event.event_type_value == "STEP_FAILURE" and event.step_failure_data:
        data = event.step_failure_data
        message = (data.user_failure_data.description if data.user_failure_data and data.user_failure_data.description
                   else (data.error.message.strip().splitlines()[-1] if data.error else message))
    return {
        "id": record.storage_id,
        "time": _ts(entry.timestamp),
        "level": _level(entry.level),
        "stage": entry.step_key,
        "event": event.event_type_value.replace("PIPELINE_", "RUN_") if event else "LOG",
        "message": message.strip()[:2000],
    }


def _level(level) -> str:
    import logging

    return logging.getLevelName(level).lower() if isinstance(level, int) else str(level).lower()


def tail(instance: dg.DagsterInstance, run_id: str, n: int) -> list[dict]:
    conn = records(instance, run_id, limit=n, ascending=False)
    return [log_line(r) for r in reversed(conn.records)]


def last_line(instance: dg.DagsterInstance, run: dg.DagsterRun | None) -> str | None:
    if run is None:
        return None
    return _finished_or_read(run, "last_line", lambda: _last_line(instance, run))


def _last_line(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    lines = tail(instance, run.run_id, 20)
    meaningful = [ln for ln in lines if ln["message"] and ln["event"] not in ("LOGS_CAPTURED", "ENGINE_EVENT")]
    return (meaningful or lines or [{"message": None}])[-1]["message"]


def timeline(instance: dg.DagsterInstance, job: JobRecord, runs: list[dg.DagsterRun]) -> dict:
    """Stages in pipeline order with state, start, end, duration, attempts and metadata; queue wait."""
    oldest_first = list(reversed(runs))
    stages = {key: {"stage": key, "label": STAGE_LABELS[key], "state": "pending", "start": None, "end": None,
                    "duration_s": None, "attempts": 0, "run_id": None, "metadata": {}, "error": None}
              for key in STAGES}
    first_start = None
    per_run: dict[str, list[dict]] = {}
    for run in oldest_first:
        own = per_run.setdefault(run.run_id, [])
        fresh = run_kind(run) in ("redub", "reprocess", "publish")  # a new version of its stages, not a retry
        for stat in instance.get_run_step_stats(run.run_id):
            stage = stages.get(stat.step_key)
            if stage is None:
                continue
            stage["attempts"] = (0 if fresh else stage["attempts"]) + max(1, stat.attempts or 1)
            stage["run_id"] = run.run_id
            stage["start"], stage["end"] = _ts(stat.start_time), _ts(stat.end_time)
            both = stat.start_time and stat.end_time
            stage["duration_s"] = round(stat.end_time - stat.start_time, 3) if both else None
            status = stat.status.value if stat.status else "IN_PROGRESS"
            stage["state"] = {"SUCCESS": "done", "FAILURE": "failed", "SKIPPED": "skipped",
                              "IN_PROGRESS": "running"}.get(status, status.lower())
            stage["error"] = None
            own.append({"stage": stat.step_key, "label": STAGE_LABELS[stat.step_key], "state": stage["state"],
                        "duration_s": stage["duration_s"]})
        for rec in records(instance, run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
            event = rec.event_log_entry.dagster_event
            stage = stages.get(event.step_key)
            if stage is None:
                continue
            metadata = event.step_materialization_data.materialization.metadata
            stage["metadata"] = {k: _metadata_value(metadata[k]) for k in SHOWN_METADATA[event.step_key]
                                 if k in metadata}
        for rec in records(instance, run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
            line = log_line(rec)
            if line["stage"] in stages:
                stages[line["stage"]]["error"] = line["message"]
        if first_start is None:
            start = records(instance, run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
            if start:
                first_start = start[0].event_log_entry.timestamp
    latest = runs[0] if runs else None
    state = job_state(job, runs, instance)
    if state == "cancelled":
        for stage in stages.values():
            if stage["state"] in ("pending", "running"):
                stage["state"] = "skipped" if stage["state"] == "pending" else "cancelled"
    review = blocking_failures(instance, latest) if state == NEEDS_REVIEW else []
    for failure in review:  # the stage that made its output but whose check stopped the run
        stage = stages.get(failure["asset"])
        if stage is not None:
            stage["state"] = "review"
            stage["error"] = "; ".join(f"{f['name']}: {f['description']}" for f in review
                                       if f["asset"] == failure["asset"])
    created = job.created_at.timestamp()
    queue = {"stage": "queued", "label": "Queued", "start": _ts(created), "end": _ts(first_start),
             "duration_s": round(first_start - created, 3) if first_start else None,
             "state": "done" if first_start else ("cancelled" if state == "cancelled" else "running")}
    return {
        "job_id": job.id,
        "state": state,
        "queue": queue,
        "stages": [stages[k] for k in STAGES],
        "runs": [{"run_id": r.run_id, "status": r.status.value, "kind": run_kind(r),
                  "reason": r.tags.get("dubbing/reason"), "stages": per_run.get(r.run_id, []),
                  "resumed": _resumes(instance, r.run_id)} for r in oldest_first],
        "run_wall_s": _run_wall(instance, oldest_first),
        "review": [{"check": f["name"], "stage": f["asset"], "description": f["description"]} for f in review],
        "last_log_line": last_line(instance, latest),
    }


def run_kind(run: dg.DagsterRun) -> str:
    """What a run of a job is: its first "run", a "retry" (re-execution), a "redub" after a segment edit, or a
    scheduled or admin "reprocess"."""
    if run.parent_run_id:
        return "retry"
    origin = run.tags.get("dubbing/origin", "")
    return origin if origin in ("redub", "reprocess", "publish") else "run"


RESUME_MESSAGE = "Launching a new run worker to resume run"  # dagster._daemon.monitoring.run_monitoring


def _resumes(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """When run monitoring resumed this run on a new run worker (its worker had died: the Celery
    profile), and why; empty for runs that were never resumed."""
    out, reason = [], None
    for rec in records(instance, run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        message = rec.event_log_entry.dagster_event.message or ""
        if message.startswith("Detected run worker status"):
            reason = message.split(". Resuming run")[0][len("Detected run worker status "):]
        elif message == RESUME_MESSAGE:
            out.append({"time": _ts(rec.event_log_entry.timestamp), "reason": reason})
    return out


def _run_wall(instance, runs: Iterable) -> float | None:
    """Wall time of all the job's runs together (one query for their records)."""
    run_ids = [run.run_id for run in runs]
    if not run_ids:
        return None
    total = sum(rec.end_time - rec.start_time
                for rec in instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
                if rec.start_time and rec.end_time)
    return round(total, 3) if total else None


def current_stage(instance: dg.DagsterInstance, run: dg.DagsterRun | None) -> str | None:
    if run is None:
        return None
    return _finished_or_read(run, "current_stage", lambda: _current_stage(instance, run))


def _current_stage(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    current = None
    for stat in instance.get_run_step_stats(run.run_id):
        if stat.step_key in STAGE_LABELS:
            if stat.status is None or stat.status.value == "IN_PROGRESS" or stat.status.value == "FAILURE":
                return stat.step_key
            current = stat.step_key
    return current


# What a finished run's events say never changes (a retry or re-run is a new run), so the job view
# of a finished job, which phones poll, reads them once per process, not on every request: the view
# of a job with a finished run cost ~25 ms (step stats and the last 20 events) against ~6 ms without.
_FINISHED_CACHE: "OrderedDict[tuple[str, str], str | None]" = OrderedDict()
_FINISHED_CACHE_MAX = 8192
_FINISHED_LOCK = threading.Lock()


def _finished_or_read(run: dg.DagsterRun, what: str, read):
    if not run.is_finished:
        return read()
    key = (run.run_id, what)
    with _FINISHED_LOCK:
        if key in _FINISHED_CACHE:
            _FINISHED_CACHE.move_to_end(key)
            return _FINISHED_CACHE[key]
    value = read()
    with _FINISHED_LOCK:
        _FINISHED_CACHE[key] = value
        while len(_FINISHED_CACHE) > _FINISHED_CACHE_MAX:
            _FINISHED_CACHE.popitem(last=False)
    return value
