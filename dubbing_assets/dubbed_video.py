"""The export: MKV (or MP4) with the video copied, the dubbed track first and default, the
original track second, source and target subtitles; sidecar SRT/VTT next to it. Outputs are
built in the work folder and published together only when all of them are complete."""


import logging
import re
from pathlib import Path

import dagster as dg

from dubbing_assets.checks import OUTPUT_STREAMS, output_streams_check
from dubbing_assets.dubbed_mix import dubbed_mix
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.source_media import output_container
from dubbing_assets.stage import GROUP, STAGE_LOG, Timer, stage_errors
from resources import media, subtitles
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage


def output_stem(filename: str) -> str:
    stem = Path(filename).stem
    stem = re.sub(r"[^-_.A-Za-z0-9]+", "_", stem).strip("._") or "video"
    return stem[:80]


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"ffmpeg"}, deps=[dubbed_mix],
          code_version="1",
          check_specs=[dg.AssetCheckSpec(OUTPUT_STREAMS, asset="dubbed_video",
                                         description="the export has the streams it promises")],
          description="Finished file with dubbed + original audio tracks and subtitles, plus sidecars.")
def dubbed_video(context: dg.AssetExecutionContext, job_store: JobStore,
                 storage: MediaStorage) -> dg.MaterializeResult:
    return export_job(job_store.get_job(context.partition_key), storage, log=context.log)


def export_job(job: JobRecord, storage: MediaStorage, log: logging.Logger = STAGE_LOG) -> dg.MaterializeResult:
    """The stage as a plain function: build the export and sidecars, then publish them together."""
    src_info = storage.read_json(job.id, "source.json")
    mix = storage.read_json(job.id, "mix.json")
    speech = storage.read_json(job.id, "speech.json")
    transcript = storage.read_json(job.id, "transcript.json")
    container = output_container(job, src_info)
    stem = f"{output_stem(job.filename)}.{job.target_lang}"
    no_speech = bool(mix["no_speech"])
    files: list[Path] = []
    subs: list[media.Track] = []
    with storage.scratch(job.id), stage_errors("dubbed_video"), Timer() as t:
        build = storage.artifact(job.id, "export")
        build.mkdir(exist_ok=True)
        for old in build.iterdir():
            old.unlink()
        if not no_speech:
            tgt_srt, tgt_vtt = subtitles.write_pair(
                build / f"{stem}.srt", speech["segments"], "text", start_key="placed_start",
                end_key="placed_end")
            src_stem = f"{output_stem(job.filename)}.{job.source_lang}"
            if src_stem == stem:  # re-voiced in its own language: the original's subtitles must not overwrite
                src_stem += ".original"
            src_srt, src_vtt = subtitles.write_pair(build / f"{src_stem}.srt", transcript["segments"], "text")
            files += [tgt_srt, tgt_vtt, src_srt, src_vtt]
            subs = [
                media.Track(tgt_srt, job.target_lang, media.language_name(job.target_lang)),
                media.Track(src_srt, job.source_lang, media.language_name(job.source_lang)),
            ]
        dub = None if no_speech else media.Track(
            storage.fetch(job.id, mix["file"]), job.target_lang,
            f"{media.language_name(job.target_lang)} (dubbed)")
        source = storage.input_file(job.id, src_info["path"], src_info.get("filename", ""))
        video = media.mux(
            source, build / f"{stem}.{container}", has_video=src_info["has_video"],
            source_lang=job.source_lang, original_codec=src_info.get("audio_codec") or "",
            video_codec=src_info.get("video_codec"), dub=dub, subtitles=subs, container=container,
            rotation=int(src_info.get("rotation") or 0),
        )
        streams = media.media_streams(video)
        out_duration = float(media.probe(video).duration)
        check = output_streams_check(
            streams, expect_video=src_info["has_video"], expect_dub=not no_speech,
            langs=(media.iso639_2(job.target_lang), media.iso639_2(job.source_lang)),
        )
        published = storage.publish_outputs(job.id, [video, *files])
    if no_speech:
        log.warning("no speech was found: the export carries the original audio only")
    return dg.MaterializeResult(
        metadata={
            "output": dg.MetadataValue.path(storage.output_location(job.id, published[0].name)),
            "files": dg.MetadataValue.json([p.name for p in published]),
            "outputs_dir": storage.output_location(job.id),
            "container": container,
            "size_mb": round(published[0].size / 1e6, 2),
            "duration_s": round(out_duration, 3),
            "duration_ratio": round(out_duration / src_info["duration_s"], 4),
            "audio_tracks": sum(1 for s in streams if s.get("codec_type") == "audio"),
            "subtitle_streams": sum(1 for s in streams if s.get("codec_type") == "subtitle"),
            "no_speech": no_speech,
            "note": "no speech found: original audio only" if no_speech else "dubbed",
            "export_s": t.seconds,
            **media.version_metadata(),
        },
        check_results=[check],
    )
