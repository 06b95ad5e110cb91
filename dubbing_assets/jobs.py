import dagster as dg

from dubbing_assets.code_server import guard_cancel_of_dead_workers
from dubbing_assets.executor import resumable_in_process_executor
from dubbing_assets.retries import retry_transient_failure
from dubbing_assets.stage import GROUP
from sensors.hooks import notify_failure_detail

# In-process executor: all stages of a run share one process, so each engine's model is loaded
# once per run (and the run pays no per-step process start). See docs/architecture.md. It is
# dg.in_process_executor, except that a run resumed after its worker died (the Celery profile) keeps
# the stages it had finished (dubbing_assets/executor.py).
dub_job = dg.define_asset_job(
    "dub_job",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=resumable_in_process_executor,
    description="Dub one job (one dynamic partition): source -> audio -> transcript -> translation "
                "-> dubbed speech -> mix -> export.",
    tags={"dagster/max_retries": 2, "dagster/retry_strategy": "FROM_FAILURE"},
    hooks={notify_failure_detail, retry_transient_failure},
)

# The code server that loads this job starts its run workers: cancelling one that was killed must not wedge it
# (dubbing_assets/code_server.py).
guard_cancel_of_dead_workers()

STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech",
          "dubbed_mix", "dubbed_video"]
REDUB_STAGES = ["dubbed_speech", "dubbed_mix", "dubbed_video"]  # a re-dub after a segment edit


def stages_from(first: str) -> list[str]:
    """`first` and every stage after it, in pipeline order."""
    return STAGES[STAGES.index(first):]


# Short names people see (web UI, notifications)
STAGE_LABELS = {
    "source_media": "Probe", "extracted_audio": "Extract audio", "transcript": "ASR",
    "translation": "Translate", "dubbed_speech": "TTS", "dubbed_mix": "Mix", "dubbed_video": "Export",
}
