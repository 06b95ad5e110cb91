"""The resources every stage uses, fed from the environment (dg.EnvVar where a variable is set)."""

import dagster as dg

from resources.asr import BUNDLED, AsrResource
from resources.jobstore import JobStore
from resources.notify import NtfyResource, env_float
from resources.settings import env_or
from resources.storage import MediaStorage
from resources.translate import TranslatorResource
from resources.tts import TtsResource


def build_defs() -> dg.Definitions:
    return dg.Definitions(resources={
        "job_store": JobStore(database_url=env_or("DATABASE_URL", "")),
        # local folder or S3 (DUBBING_STORAGE; the S3 settings are read from DUBBING_S3_* and AWS_*)
        "storage": MediaStorage(root=env_or("DUBBING_DATA_DIR", ""), backend=env_or("DUBBING_STORAGE", "")),
        "asr": AsrResource(model=env_or("ASR_MODEL", BUNDLED), device=env_or("ASR_DEVICE", "cpu")),
        "translator": TranslatorResource(
            backend=env_or("TRANSLATOR", "auto"),
            libretranslate_url=env_or("LIBRETRANSLATE_URL", ""),
            libretranslate_api_key=env_or("LIBRETRANSLATE_API_KEY", ""),
        ),
        "ntfy": NtfyResource(
            url=env_or("NTFY_URL", ""),
            auth=env_or("NTFY_AUTH", ""),  # a secret: dg.EnvVar keeps it out of the Dagster UI
            topic_prefix=env_or("NTFY_TOPIC_PREFIX", "dub-"),
            public_base_url=env_or("PUBLIC_BASE_URL", ""),
            retry_max_s=env_float("NTFY_RETRY_MAX_S", 300),
            give_up_after_h=env_float("NTFY_GIVE_UP_AFTER_H", 24),
        ),
        "tts": TtsResource(engine=env_or("TTS_ENGINE", "auto"), xtts_model_dir=env_or("XTTS_MODEL_DIR", ""),
                           xtts_device=env_or("XTTS_DEVICE", "cpu")),
    })
