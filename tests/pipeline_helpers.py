"""Run the dub job for a file on a given Dagster instance and read back what it did."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dubbing_assets.definitions import defs
from dubbing_assets.partitions import dub_jobs
from resources.jobstore import JobStore
from resources.storage import MediaStorage


def run_dub(instance: dg.DagsterInstance, src: Path, *, target: str = "es", source: str = "en",
            options: dict | None = None, voice: str | None = None):
    store = JobStore()  # DATABASE_URL, or the SQLite job store under DUBBING_DATA_DIR
    job = store.create_job(input_path=str(src), filename=src.name, source_lang=source, target_lang=target,
                           voice=voice, options=options)
    instance.add_dynamic_partitions(dub_jobs.name, [job.id])
    job_def = defs.resolve_job_def("dub_job")
    result = job_def.execute_in_process(instance=instance, partition_key=job.id, raise_on_error=False)
    return job, result


def materializations(result) -> dict[str, dict]:
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def check_results(result) -> dict[str, bool]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def failure_description(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            return (data.user_failure_data.description if data.user_failure_data else data.error.message)
    raise AssertionError("the run did not fail")


def storage() -> MediaStorage:
    return MediaStorage()
