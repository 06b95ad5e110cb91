"""The code location: small Definitions merged at the top."""

import dagster as dg

from dubbing_assets import (
    dubbed_mix,
    dubbed_speech,
    dubbed_video,
    extracted_audio,
    source_media,
    transcript,
    translation,
)
from dubbing_assets.jobs import dub_job
from dubbing_assets.resources import build_defs

stage_defs = dg.Definitions(
    assets=[
        source_media.source_media,
        extracted_audio.extracted_audio,
        transcript.transcript,
        translation.translation,
        dubbed_speech.dubbed_speech,
        dubbed_mix.dubbed_mix,
        dubbed_video.dubbed_video,
    ],
    jobs=[dub_job],
)

defs = dg.Definitions.merge(stage_defs, build_defs())
