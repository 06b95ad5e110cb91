"""The code location: small Definitions merged at the top."""

import dagster as dg

from dubbing_assets import (
    dubbed_mix,
    dubbed_speech,
    dubbed_video,
    extracted_audio,
    round_trip,
    source_media,
    transcript,
    translation,
)
from dubbing_assets.jobs import dub_job
from dubbing_assets.reprocess import reprocess_schedule
from dubbing_assets.resources import build_defs
from sensors.notify import NOTIFY_SENSORS
from sensors.retention import retention_sensor
from sensors.run_requests import run_request_sensor
from sensors.run_status import cancelled_run_cleanup, cancelled_run_failed
from sensors.stalled_retries import stalled_retry_sensor
from sensors.upload_sensor import upload_sensor


def stage_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            source_media.source_media,
            extracted_audio.extracted_audio,
            transcript.transcript,
            translation.translation,
            dubbed_speech.dubbed_speech,
            dubbed_mix.dubbed_mix,
            dubbed_video.dubbed_video,
        ],
        asset_checks=[round_trip.round_trip],
        jobs=[dub_job],
        schedules=[reprocess_schedule],
        sensors=[upload_sensor, run_request_sensor, cancelled_run_cleanup, cancelled_run_failed, retention_sensor,
                 stalled_retry_sensor, *NOTIFY_SENSORS],
    )


# Only one Definitions object may live at module scope: the merged one.
defs = dg.Definitions.merge(stage_defs(), build_defs())
