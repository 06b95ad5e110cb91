import dagster as dg

from dubbing_assets.partitions import dub_jobs
from dubbing_assets.stage import GROUP, Timer, stage_errors
from dubbing_assets.transcript import transcript
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage
from resources.translate import TranslatorResource, version_metadata


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"python"}, deps=[transcript],
          code_version="1",
          description="Segment texts translated to the target language; timing kept from the transcript.")
def translation(context: dg.AssetExecutionContext, job_store: JobStore, storage: MediaStorage,
                translator: TranslatorResource) -> dg.MaterializeResult:
    return translate_job(job_store.get_job(context.partition_key), storage, translator)


def translate_job(job: JobRecord, storage: MediaStorage, translator: TranslatorResource) -> dg.MaterializeResult:
    """The stage as a plain function: the transcript's segments translated, to translation.json."""
    segments = storage.read_json(job.id, "transcript.json")["segments"]
    with stage_errors("translation"), Timer() as t:
        backend = translator.choose(job.source_lang, job.target_lang, job.options.translator)
        texts = backend.translate([s["text"] for s in segments], job.source_lang, job.target_lang)
    out = [
        {"id": s["id"], "start": s["start"], "end": s["end"], "source_text": s["text"], "text": text}
        for s, text in zip(segments, texts, strict=True)
    ]
    storage.write_json(job.id, "translation.json", {
        "source_lang": job.source_lang, "target_lang": job.target_lang, "backend": backend.name,
        "segments": out,
    })
    return dg.MaterializeResult(metadata={
        "backend": backend.name,
        "languages": f"{job.source_lang} -> {job.target_lang}",
        "segments": len(out),
        "source_chars": sum(len(s["source_text"]) for s in out),
        "target_chars": sum(len(s["text"]) for s in out),
        "translate_s": t.seconds,
        **version_metadata(backend, job.source_lang, job.target_lang),  # engine, engine_version, model, version_tag
        "preview": dg.MetadataValue.text(" ".join(s["text"] for s in out)[:500]),
    })
