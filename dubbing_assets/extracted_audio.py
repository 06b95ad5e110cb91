import dagster as dg

from dubbing_assets.partitions import dub_jobs
from dubbing_assets.source_media import source_media
from dubbing_assets.stage import GROUP, Timer, stage_errors
from resources import media
from resources.storage import MediaStorage

ASR_RATE = 16_000
MIX_RATE = 48_000


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"ffmpeg"}, deps=[source_media],
          code_version="1",
          description="16 kHz mono WAV for ASR, and the original audio at 48 kHz stereo for the mix.")
def extracted_audio(context: dg.AssetExecutionContext, storage: MediaStorage) -> dg.MaterializeResult:
    return extract_audio(context.partition_key, storage)


def extract_audio(job_id: str, storage: MediaStorage) -> dg.MaterializeResult:
    """The stage as a plain function: the ASR WAV and the 48 kHz original from the job's source."""
    source = storage.read_json(job_id, "source.json")
    with storage.scratch(job_id), stage_errors("extracted_audio"), Timer() as t:
        src = storage.input_file(job_id, source["path"], source.get("filename", ""))
        asr = media.extract_wav(src, storage.artifact(job_id, "asr.wav"), rate=ASR_RATE, channels=1)
        orig = media.extract_wav(src, storage.artifact(job_id, "original.wav"), rate=MIX_RATE, channels=2)
        storage.save(job_id, "asr.wav")
        storage.save(job_id, "original.wav")
        asr_s, orig_s = media.wav_duration(asr), media.wav_duration(orig)
    return dg.MaterializeResult(metadata={
        "asr_wav_s": round(asr_s, 3),
        "original_wav_s": round(orig_s, 3),
        "asr_rate_hz": ASR_RATE,
        "mix_rate_hz": MIX_RATE,
        "extract_s": t.seconds,
        **media.version_metadata(),
    })
