import dagster as dg

from dubbing_assets.stage import GROUP

# In-process executor: all stages of a run share one process, so each engine's model is loaded
# once per run (and the run pays no per-step process start). See docs/architecture.md.
dub_job = dg.define_asset_job(
    "dub_job",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    description="Dub one job (one dynamic partition): source -> audio -> transcript -> translation "
                "-> dubbed speech -> mix -> export.",
    tags={"dagster/max_retries": 2, "dagster/retry_strategy": "FROM_FAILURE"},
)

STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech",
          "dubbed_mix", "dubbed_video"]
