import logging

import dagster as dg

from dubbing_assets.extracted_audio import extracted_audio
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.stage import GROUP, STAGE_LOG, Timer, checkpoint, stage_errors
from resources.asr import AsrResource
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"python"}, deps=[extracted_audio],
          code_version="1", pool="asr",
          description="faster-whisper segments with word timestamps and VAD on the original timeline.")
def transcript(context: dg.AssetExecutionContext, job_store: JobStore, storage: MediaStorage,
               asr: AsrResource) -> dg.MaterializeResult:
    return transcribe_job(job_store.get_job(context.partition_key), storage, asr, log=context.log)


def transcribe_job(job: JobRecord, storage: MediaStorage, asr: AsrResource,
                   log: logging.Logger = STAGE_LOG) -> dg.MaterializeResult:
    """The stage as a plain function: faster-whisper over asr.wav, written to transcript.json."""
    with storage.scratch(job.id), stage_errors("transcript"), Timer() as t:
        segments, info = asr.transcribe(storage.fetch(job.id, "asr.wav"), job.source_lang,
                                        on_segment=lambda end, total: checkpoint())  # no log write: no DB
    words = sum(len(s.words) for s in segments)
    data = {"language": job.source_lang, "info": info, "no_speech": not segments,
            "segments": [s.to_dict() for s in segments]}
    storage.write_json(job.id, "transcript.json", data)
    if not segments:
        log.warning("no speech found: the export will carry the original audio only")
    duration = info["audio_duration_s"] or 1.0
    confidence = sum(s.confidence for s in segments) / len(segments) if segments else 0.0
    return dg.MaterializeResult(metadata={
        "segments": len(segments),
        "words": words,
        "no_speech": not segments,
        "mean_confidence": round(confidence, 3),
        **asr.version_metadata(),  # engine, engine_version, model, version_tag (resources/versions.py)
        "model": info["model"],
        "model_load_s": info["model_load_s"],
        "transcribe_s": info["transcribe_s"],
        "real_time_factor": round(t.seconds / duration, 3),
        "preview": dg.MetadataValue.text(" ".join(s.text for s in segments)[:500]),
    })
