import dagster as dg

from dubbing_assets.partitions import dub_jobs
from dubbing_assets.stage import GROUP, Timer, stage_errors
from resources import media
from resources.disk import ensure_free_space
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"ffmpeg"}, code_version="1",
          description="The job's input, probed with ffprobe and fully decoded once: rejects empty, "
                      "non-media, truncated and silent-track-less files with a clear reason.")
def source_media(context: dg.AssetExecutionContext, job_store: JobStore,
                 storage: MediaStorage) -> dg.MaterializeResult:
    return probe_source(job_store.get_job(context.partition_key), storage)


def output_container(job: JobRecord, source: dict) -> str:
    """The export's container. `auto` (the default) is MKV (every codec, every track, text subtitles),
    except for a rotated picture (a phone's portrait video): ffmpeg 5.1's Matroska muxer cannot carry the
    rotation, so MKV would mean encoding the picture again, while MP4 keeps it bit for bit. An explicit
    `mkv` is honoured by turning the picture upright (media.copies_video)."""
    if job.options.container != "auto":
        return job.options.container
    return "mp4" if source.get("has_video") and source.get("rotation") else "mkv"


def probe_source(job: JobRecord, storage: MediaStorage) -> dg.MaterializeResult:
    """The stage as a plain function (the asset calls it; so can a script): probe and fully decode
    the job's input, write source.json."""
    with storage.scratch(job.id), stage_errors("source_media"), Timer() as t:
        # a run refused up front when the disk is low, not halfway through writing its artifacts
        ensure_free_space(0, storage.root_path(), action="this run")
        src = storage.input_file(job.id, job.input_path, job.filename)  # an s3:// input is fetched
        info = media.probe(src, job.filename)
        decoded = media.check_audio_decodes(src, info, job.filename)
    summary = {**info.summary(), "decoded_audio_s": round(decoded, 3), "path": job.input_path,
               "filename": job.filename, "source_lang": job.source_lang, "target_lang": job.target_lang}
    storage.write_json(job.id, "source.json", summary)
    return dg.MaterializeResult(metadata={
        "filename": job.filename,
        "duration_s": summary["duration_s"],
        "container": summary["container"],
        "has_video": summary["has_video"],
        "video_codec": summary.get("video_codec") or "none",
        "audio_codec": summary.get("audio_codec") or "none",
        "size_mb": round(info.size_bytes / 1e6, 2),
        "languages": f"{job.source_lang} -> {job.target_lang}",
        "probe_s": t.seconds,
        **media.version_metadata(),  # engine, engine_version, version_tag (resources/versions.py)
    })
