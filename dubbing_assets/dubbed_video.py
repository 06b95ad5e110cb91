"""The export: MKV (or MP4) with the video copied, the dubbed track first and default, the
original track second, source and target subtitles; sidecar SRT/VTT next to it. Outputs are
built in the work folder, checked (output_streams, sync), and published together only when all of
them are complete and no blocking check failed; otherwise they stay in work/export/ for review."""


import logging
import re
import wave
from pathlib import Path

import dagster as dg
import numpy as np

from dubbing_assets import checks
from dubbing_assets.dubbed_mix import TimelineReader, dubbed_mix
from dubbing_assets.fit import Timeline
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.source_media import output_container
from dubbing_assets.stage import GROUP, STAGE_LOG, Timer, accepted_checks, stage_errors
from resources import media, subtitles
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage, Output


def output_stem(filename: str) -> str:
    stem = Path(filename).stem
    stem = re.sub(r"[^-_.A-Za-z0-9]+", "_", stem).strip("._") or "video"
    return stem[:80]


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"ffmpeg"}, deps=[dubbed_mix],
          code_version="2", check_specs=checks.specs("dubbed_video"),
          description="Finished file with dubbed + original audio tracks and subtitles, plus sidecars; "
                      "published only when its checks pass.")
def dubbed_video(context: dg.AssetExecutionContext, job_store: JobStore,
                 storage: MediaStorage) -> dg.MaterializeResult:
    return export_job(job_store.get_job(context.partition_key), storage, log=context.log,
                      accepted=accepted_checks(context))


def frames_per_second(video: dict | None) -> str:
    """The source picture's frame rate as ffmpeg writes it ("30000/1001"): its average (a variable-rate
    phone video's real rate), else its base rate, else 30."""
    for key in ("avg_frame_rate", "r_frame_rate"):
        value = str((video or {}).get(key) or "")
        num, _, den = value.partition("/")
        if num.isdigit() and int(num) > 0 and (not den or (den.isdigit() and int(den) > 0)):
            return value
    return "30"


def export_job(job: JobRecord, storage: MediaStorage, log: logging.Logger = STAGE_LOG,
               accepted: frozenset[str] = frozenset()) -> dg.MaterializeResult:
    """The stage as a plain function: build the export and sidecars in the work folder, check them, and
    publish them together only when no blocking check failed (else they stay in work/export/)."""
    src_info = storage.read_json(job.id, "source.json")
    mix = storage.read_json(job.id, "mix.json")
    speech = storage.read_json(job.id, "speech.json")
    transcript = storage.read_json(job.id, "transcript.json")
    container = output_container(job, src_info)
    stem = f"{output_stem(job.filename)}.{job.target_lang}"
    no_speech = bool(mix["no_speech"])
    timeline = Timeline.from_dict(speech.get("timeline"), src_info["duration_s"])
    files: list[Path] = []
    subs: list[media.Track] = []
    with storage.scratch(job.id), stage_errors("dubbed_video"), Timer() as t:
        build = storage.artifact(job.id, "export")
        build.mkdir(exist_ok=True)
        for old in build.iterdir():
            old.unlink()
        original = None
        if not no_speech:
            tgt_srt, tgt_vtt = subtitles.write_pair(
                build / f"{stem}.srt", speech["segments"], "text", start_key="placed_start",
                end_key="placed_end")
            src_stem = f"{output_stem(job.filename)}.{job.source_lang}"
            if src_stem == stem:  # re-voiced in its own language: the original's subtitles must not overwrite
                src_stem += ".original"
            source_segments = [{**s, "start": timeline.to_export(s["start"]), "end": timeline.to_export(s["end"])}
                               for s in transcript["segments"]]
            src_srt, src_vtt = subtitles.write_pair(build / f"{src_stem}.srt", source_segments, "text")
            files += [tgt_srt, tgt_vtt, src_srt, src_vtt]
            subs = [
                media.Track(tgt_srt, job.target_lang, media.language_name(job.target_lang)),
                media.Track(src_srt, job.source_lang, media.language_name(job.source_lang)),
            ]
            if timeline.holds:  # the original sound on the longer timeline, silent where the picture is held
                original = build / "original_timeline.wav"
                write_on_timeline(storage.fetch(job.id, "original.wav"), original, timeline)
        dub = None if no_speech else media.Track(
            storage.fetch(job.id, mix["file"]), job.target_lang,
            f"{media.language_name(job.target_lang)} (dubbed)")
        source = storage.input_file(job.id, src_info["path"], src_info.get("filename", ""))
        info = media.probe(source, job.filename) if src_info["has_video"] and timeline.holds else None
        video = media.mux(
            source, build / f"{stem}.{container}", has_video=src_info["has_video"],
            source_lang=job.source_lang, original_codec=src_info.get("audio_codec") or "",
            video_codec=src_info.get("video_codec"), dub=dub, subtitles=subs, container=container,
            rotation=int(src_info.get("rotation") or 0), holds=timeline.holds, duration=timeline.duration,
            fps=frames_per_second(info.video if info else None), original=original,
        )
        if original is not None:
            original.unlink()
        streams = media.media_streams(video)
        out_duration = float(media.probe(video).duration)
        results = [checks.output_streams_check(
            streams, expect_video=src_info["has_video"], expect_dub=not no_speech,
            langs=(media.iso639_2(job.target_lang), media.iso639_2(job.source_lang)), accepted=accepted)]
        results.append(sync_of(storage, job.id, speech, timeline, video, files, no_speech, accepted))
        blocked = [r.check_name for r in results if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR]
        if blocked:  # kept for review in work/export/, never published
            for f in [video, *files]:
                storage.save(job.id, f"export/{f.name}")
            published = [storage_output(f) for f in [video, *files]]
        else:
            published = storage.publish_outputs(job.id, [video, *files])
    if no_speech:
        log.warning("no speech was found: the export carries the original audio only")
    for r in results:
        if not r.passed:
            log.warning(f"check {r.check_name}: {r.description}")
    folder = storage.artifact_location(job.id, "export") if blocked else storage.output_location(job.id)
    location = (storage.output_location(job.id, published[0].name) if not blocked
                else f"{folder} (not published: {', '.join(blocked)} failed)")
    return dg.MaterializeResult(
        metadata={
            "output": dg.MetadataValue.path(location),
            "files": dg.MetadataValue.json([p.name for p in published]),
            "outputs_dir": folder,
            "published": not blocked,
            "container": container,
            "size_mb": round(published[0].size / 1e6, 2),
            "duration_s": round(out_duration, 3),
            "duration_ratio": round(out_duration / src_info["duration_s"], 4),
            "held_s": round(timeline.extended - timeline.duration, 3),
            "audio_tracks": sum(1 for s in streams if s.get("codec_type") == "audio"),
            "subtitle_streams": sum(1 for s in streams if s.get("codec_type") == "subtitle"),
            "no_speech": no_speech,
            "note": "no speech found: original audio only" if no_speech else "dubbed",
            "export_s": t.seconds,
            **media.version_metadata(),
        },
        check_results=results,
    )


def storage_output(path: Path) -> Output:
    return Output(path.name, path.stat().st_size)


def write_on_timeline(original: Path, out: Path, timeline: Timeline) -> Path:
    """The original WAV moved onto the export's timeline (silence where the picture is held), block by block."""
    with wave.open(str(original), "rb") as o, wave.open(str(out), "wb") as w:
        w.setnchannels(o.getnchannels())
        w.setsampwidth(2)
        w.setframerate(o.getframerate())
        reader = TimelineReader(o, timeline)
        total = int(round(timeline.extended * o.getframerate()))
        block = o.getframerate() * 10
        for at in range(0, total, block):
            samples = reader.read(min(block, total - at))
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out


def sync_of(storage: MediaStorage, job_id: str, speech: dict, timeline: Timeline, video: Path, files: list[Path],
            no_speech: bool, accepted: frozenset[str]) -> dg.AssetCheckResult:
    """The sync check on what was built: onsets measured in the dub track, the exported dub stream decoded to
    its end, the dub subtitles read back by ffprobe from the sidecar and from the export."""
    if no_speech:
        return checks.result(checks.SYNC, True, {"no_speech": True}, "no speech: nothing to hold in sync")
    track, rate = media.read_wav_mono(storage.fetch(job_id, "dub_track.wav"))
    placed = [p for p in speech["segments"] if p["placed_end"] > p["placed_start"]]
    sidecar = next(f for f in files if f.suffix == ".srt")
    cues = media.subtitle_cues(sidecar)
    muxed = media.subtitle_cues(video, 0)
    shifts = {round(m[0] - c[0], 2) for m, c in zip(muxed, cues)}
    if len(muxed) != len(cues) or len(shifts) > 1:  # the export's stream must be the sidecar, moved as a whole
        cues = muxed
    return checks.sync_check(placed, timeline, track, rate, media.decoded_seconds(video, "a:0"), cues, accepted)
