"""TTS of each translated segment, fitted into its original slot.

Fitting, per segment: speak at the voice's natural rate; if the speech is longer than its slot,
first borrow the silence that follows (up to the next segment's start, minus a small gap); only
if it still does not fit, speed it up (ffmpeg atempo, pitch kept) up to `max_speed`; if even that
is not enough, trim the tail with a short fade. A segment never overlaps the next one.

Segment cache: the raw speech of a segment is kept as `tts_cache/<key>.wav`, the key a hash of its text,
voice and engine version (`segment_key`). A re-dub after an edit synthesises only the segments whose text,
voice or engine changed and reuses the rest; the fitting (which depends on the neighbours' timing) is
redone for all, cheaply. Entries no segment uses any more are removed at the end of the stage.
"""


import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg
import numpy as np

from dubbing_assets.checks import NO_OVERLAP, no_overlap_check
from dubbing_assets.extracted_audio import MIX_RATE
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.stage import GROUP, STAGE_LOG, Timer, log_progress, stage_errors
from dubbing_assets.translation import translation
from resources import media
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage
from resources.tts import TtsResource, version_metadata

GAP_S = 0.05  # silence kept between one dubbed segment and the next
FADE_S = 0.03


@dataclass
class Placement:
    id: int
    start: float
    end: float
    natural_s: float
    speed: float
    placed_start: float
    placed_end: float
    borrowed_s: float
    truncated: bool
    text: str
    voice: str = ""
    cache_key: str = ""


def plan_slot(start: float, end: float, natural_s: float, next_start: float,
              max_speed: float) -> tuple[float, float, bool]:
    """(speed, placed duration, truncated) for speech of `natural_s` seconds in [start, end),
    allowed to run on to `next_start` - GAP_S."""
    available = next_start - GAP_S - start
    if available <= 0:  # the next segment starts within GAP_S of this one: no room to speak at all
        return 1.0, 0.0, natural_s > 0
    if natural_s <= available:
        return 1.0, natural_s, False
    speed = min(natural_s / available, max_speed)
    placed = natural_s / speed
    if placed > available + 1e-6:
        return speed, available, True
    return speed, placed, False


def reference_clip(storage: MediaStorage, job_id: str, segments: list[dict]) -> Path | None:
    """Up to 12 s of the original speaker (for voice-cloning engines), cut from the original audio."""
    if not segments:
        return None
    samples, rate = media.read_wav_mono(storage.fetch(job_id, "original.wav"))
    pieces, total = [], 0.0
    for seg in segments:
        piece = samples[int(seg["start"] * rate):int(seg["end"] * rate)]
        pieces.append(piece)
        total += len(piece) / rate
        if total >= 12:
            break
    return media.write_wav(storage.artifact(job_id, "speaker_ref.wav"), np.concatenate(pieces), rate)


CACHE_DIR = "tts_cache"


def segment_key(text: str, engine, voice_id: str) -> str:
    """The cache key of a segment's raw speech: what decides the sound (text, engine, its version, voice)."""
    blob = json.dumps([text, engine.name, engine.version, voice_id], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def engine_voice(engine) -> str:
    """The voice an engine speaks with, as an "engine:voice" id."""
    return f"{engine.name}:{getattr(engine, 'voice', None) or getattr(engine, 'voice_name', None) or 'speaker'}"


def place(track: np.ndarray, fitted: Path, seg: dict, raw: Path, natural: float, speed: float,
          placed_len: float, truncated: bool) -> Placement:
    """Add a fitted segment to the track at its start, cut to its placed length (faded out when
    truncated), never past the track's end."""
    samples, _ = media.read_wav_mono(fitted)
    n = min(len(samples), int(round(placed_len * MIX_RATE)))
    samples = samples[:n].copy()
    if truncated:
        fade = min(n, int(FADE_S * MIX_RATE))
        samples[n - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    at = int(round(seg["start"] * MIX_RATE))
    n = max(0, min(n, len(track) - at))
    track[at:at + n] += samples[:n]
    return Placement(
        id=seg["id"], start=seg["start"], end=seg["end"], natural_s=round(natural, 3),
        speed=round(speed, 4), placed_start=seg["start"],
        placed_end=round(seg["start"] + n / MIX_RATE, 3),
        borrowed_s=round(max(0.0, n / MIX_RATE - (seg["end"] - seg["start"])), 3),
        truncated=truncated, text=seg["text"], voice=seg.get("voice") or "", cache_key=raw.stem,
    )


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"python"}, deps=[translation],
          code_version="1", pool="tts", check_specs=[dg.AssetCheckSpec(NO_OVERLAP, asset="dubbed_speech",
                                                           description="no dubbed segment overlaps the next")],
          description="The translation spoken by the TTS engine, each segment fitted to its original slot.")
def dubbed_speech(context: dg.AssetExecutionContext, job_store: JobStore, storage: MediaStorage,
                  tts: TtsResource) -> dg.MaterializeResult:
    return speak_job(job_store.get_job(context.partition_key), storage, tts, log=context.log)


def speak_job(job: JobRecord, storage: MediaStorage, tts: TtsResource,
              log: logging.Logger = STAGE_LOG) -> dg.MaterializeResult:
    """The stage as a plain function: every translated segment spoken (or taken from the segment cache),
    fitted, placed on one track."""
    segments = [s for s in storage.read_json(job.id, "translation.json")["segments"] if s["text"].strip()]
    duration = storage.read_json(job.id, "source.json")["duration_s"]
    previous = _previous_keys(storage, job.id)
    placements: list[Placement] = []
    synthesized = 0
    with storage.scratch(job.id), stage_errors("dubbed_speech"), Timer() as t:
        seg_dir = storage.artifact(job.id, "segments")  # fitted per-segment WAVs: scratch, never saved
        seg_dir.mkdir(exist_ok=True)
        storage.artifact(job.id, CACHE_DIR).mkdir(exist_ok=True)
        engines: dict[str | None, object] = {}
        speaker = None

        def engine_for(voice: str | None):
            nonlocal speaker
            if voice not in engines:
                engine = tts.engine_for(job.target_lang, job.options.tts_engine, voice or job.voice, speaker_wav=None)
                if engine.name == "xtts":
                    speaker = speaker or reference_clip(storage, job.id, segments)
                    engine = tts.engine_for(job.target_lang, "xtts", voice or job.voice, speaker_wav=speaker)
                engines[voice] = engine
            return engines[voice]

        engine = engine_for(None)  # the job's voice: what the metadata reports
        plans = []  # (segment, raw wav, natural s, speed, placed s, truncated), spoken one by one
        for i, seg in enumerate(segments):
            next_start = segments[i + 1]["start"] if i + 1 < len(segments) else duration + GAP_S
            seg_engine = engine_for(seg.get("voice") or None)
            key = segment_key(seg["text"], seg_engine, engine_voice(seg_engine))
            name = f"{CACHE_DIR}/{key}.wav"
            raw = _cached(storage, job.id, name) if key in previous or _local_hit(storage, job.id, name) else None
            if raw is None:
                raw = seg_engine.synthesize(seg["text"], storage.artifact(job.id, name))
                storage.save(job.id, name)
                previous.add(key)
                synthesized += 1
            natural = media.wav_duration(raw)
            plans.append((seg, raw, natural, *plan_slot(seg["start"], seg["end"], natural, next_start,
                                                        job.options.max_speed)))
            log_progress(log, i + 1, len(segments), "segments")
        # one ffmpeg process for all the retiming (a process per segment cost more than the work)
        fitted = media.retime_wavs([(raw, seg_dir / f"{seg['id']:05d}.wav", speed)
                                    for seg, raw, _, speed, _, _ in plans], rate=MIX_RATE)
        track = np.zeros(int(round(duration * MIX_RATE)), dtype=np.float32)
        for plan, wav in zip(plans, fitted, strict=True):
            placements.append(place(track, wav, *plan))
        media.write_wav(storage.artifact(job.id, "dub_track.wav"), track, MIX_RATE)
        storage.save(job.id, "dub_track.wav")
    used = {p.cache_key for p in placements}
    stale = sorted(previous - used)
    storage.remove_artifacts(job.id, [f"{CACHE_DIR}/{k}.wav" for k in stale])
    storage.write_json(job.id, "speech.json", {
        "engine": engine.name, "engine_version": engine.version,
        "voice": getattr(engine, "voice", None) or getattr(engine, "voice_name", None),
        "no_speech": not placements, "segments": [asdict(p) for p in placements],
        "cache_keys": sorted(used),
    })
    reused = len(placements) - synthesized
    if placements:
        log.info(f"segment cache: {synthesized} synthesised, {reused} reused, {len(stale)} stale removed")
    speeds = [p.speed for p in placements] or [1.0]
    return dg.MaterializeResult(
        metadata={
            **version_metadata(engine),  # engine, engine_version, model (the voice), version_tag (reprocess)
            "segments": len(placements),
            "tts_synthesized": synthesized,
            "tts_reused": reused,
            "sped_up": sum(1 for s in speeds if s > 1.0),
            "truncated": sum(1 for p in placements if p.truncated),
            "mean_speed": round(float(np.mean(speeds)), 3),
            "max_speed": round(max(speeds), 3),
            "borrowed_s": round(sum(p.borrowed_s for p in placements), 2),
            "speech_s": round(sum(p.placed_end - p.placed_start for p in placements), 2),
            "tts_s": t.seconds,
            "speed_ratios": dg.MetadataValue.json([p.speed for p in placements][:500]),
        },
        check_results=[no_overlap_check(placements)],
    )


def _previous_keys(storage: MediaStorage, job_id: str) -> set[str]:
    """The cache keys the last materialisation used (what may be in the cache)."""
    try:
        return set(storage.read_json(job_id, "speech.json").get("cache_keys", []))
    except FileNotFoundError:
        return set()


def _local_hit(storage: MediaStorage, job_id: str, name: str) -> bool:
    """A cache entry written earlier in this stage (two segments with the same text and voice)."""
    return storage.artifact(job_id, name).exists()


def _cached(storage: MediaStorage, job_id: str, name: str) -> Path | None:
    """A cached raw segment as a local file, or None when it is gone (e.g. removed by hand)."""
    try:
        path = storage.fetch(job_id, name)
    except FileNotFoundError:
        return None
    try:
        media.wav_duration(path)  # a damaged entry is synthesised again
    except Exception:
        path.unlink(missing_ok=True)
        return None
    return path
