"""TTS of each translated segment, fitted into its original slot (dubbing_assets/fit.py: trimmed speech,
borrowed silence, shortened pauses, the engine's own faster rate then atempo up to `max_speed`, an earlier
start, and only then the job's `fit`: review, cut, or extend_video), placed on one track on the export's
timeline, with its quality checks evaluated here: speech_speed, speech_kept, coverage, no_overlap.

Segment cache: the raw speech of a segment is kept as `tts_cache/<key>.wav`, the key a hash of its text,
voice, engine version and speaking rate (`segment_key`). A re-dub after an edit synthesises only the segments
whose text, voice, engine or needed rate changed and reuses the rest; the fitting (which depends on the
neighbours' timing) is redone for all, cheaply. Entries no segment uses any more are removed at the end.
"""


import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg
import numpy as np

from dubbing_assets import checks
from dubbing_assets.extracted_audio import MIX_RATE
from dubbing_assets.fit import (
    FADE_S,
    Policy,
    SegmentPlan,
    measure_speech,
    plan_fits,
    prepare_speech,
    speech_bounds,
)
from dubbing_assets.partitions import dub_jobs
from dubbing_assets.stage import GROUP, STAGE_LOG, Timer, accepted_checks, log_progress, stage_errors
from dubbing_assets.translation import translation
from resources import media
from resources.jobstore import JobRecord, JobStore
from resources.storage import MediaStorage
from resources.tts import TtsResource, version_metadata

ENGINE_RATE_MIN = 1.03  # below this speed-up atempo alone is as clear and saves a synthesis
TAIL_PAD_S = 0.1  # silence after the speech through atempo, which drops its last partial window (~20 ms)


@dataclass
class Placement:
    id: int
    start: float
    end: float
    natural_s: float
    speed: float  # measured: the natural speech's length over the placed speech's
    placed_start: float
    placed_end: float
    borrowed_s: float
    truncated: bool  # cut (fit review or cut): cut_s seconds of its speech are missing
    text: str
    voice: str = ""
    cache_key: str = ""
    borrowed_before_s: float = 0.0
    borrowed_after_s: float = 0.0
    shift_s: float = 0.0
    compressed_s: float = 0.0
    cut_s: float = 0.0
    hold_s: float = 0.0
    engine_rate: float = 1.0
    tempo: float = 1.0


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


def segment_key(text: str, engine, voice_id: str, rate: float = 1.0) -> str:
    """The cache key of a segment's raw speech: what decides the sound (text, engine, its version, voice and,
    when the engine speaks faster, its rate)."""
    parts = [text, engine.name, engine.version, voice_id] + ([f"{rate:.2f}"] if abs(rate - 1.0) > 1e-9 else [])
    blob = json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def engine_voice(engine) -> str:
    """The voice an engine speaks with, as an "engine:voice" id."""
    return f"{engine.name}:{getattr(engine, 'voice', None) or getattr(engine, 'voice_name', None) or 'speaker'}"


def place(track: np.ndarray, fitted: Path, plan: SegmentPlan, natural_trimmed: float) -> tuple[int, float]:
    """Add a fitted segment to the track at its planned start, cut to its planned length (faded out when
    cut), never past the track's end. Returns (samples placed, measured speed: the natural speech's length
    over the fitted speech's, before any cut)."""
    samples, _ = media.read_wav_mono(fitted)
    samples = samples[:speech_bounds(samples, MIX_RATE)[1]]  # the tail padding (TAIL_PAD_S) off again
    fitted_s = len(samples) / MIX_RATE
    n = min(len(samples), int(round(plan.placed_s * MIX_RATE)))
    samples = samples[:n].copy()
    if plan.cut_s > 0:
        fade = min(n, int(FADE_S * MIX_RATE))
        samples[n - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    at = int(round(plan.placed_start * MIX_RATE))
    n = max(0, min(n, len(track) - at))
    track[at:at + n] += samples[:n]
    return n, (natural_trimmed / fitted_s if fitted_s > 0 else 1.0)


@dg.asset(partitions_def=dub_jobs, group_name=GROUP, kinds={"python"}, deps=[translation],
          code_version="2", pool="tts", check_specs=checks.specs("dubbed_speech"),
          description="The translation spoken by the TTS engine, each segment fitted to its original slot.")
def dubbed_speech(context: dg.AssetExecutionContext, job_store: JobStore, storage: MediaStorage,
                  tts: TtsResource) -> dg.MaterializeResult:
    return speak_job(job_store.get_job(context.partition_key), storage, tts, log=context.log,
                     accepted=accepted_checks(context))


def policy_of(job: JobRecord) -> Policy:
    opts = job.options
    return Policy(max_speed=float(opts.max_speed), max_shift_s=float(opts.max_shift_s), fit=opts.fit)


def speak_job(job: JobRecord, storage: MediaStorage, tts: TtsResource, log: logging.Logger = STAGE_LOG,
              accepted: frozenset[str] = frozenset(), policy: Policy | None = None) -> dg.MaterializeResult:
    """The stage as a plain function: every translated segment spoken (or taken from the segment cache),
    fitted, placed on one track; its checks evaluated. `accepted` names checks a reviewer accepted (they
    report a failure as a warning); `policy` overrides the job's fitting options (the benchmark's "before")."""
    policy = policy or policy_of(job)
    segments = [s for s in storage.read_json(job.id, "translation.json")["segments"] if s["text"].strip()]
    duration = storage.read_json(job.id, "source.json")["duration_s"]
    previous = _previous_keys(storage, job.id)
    used: set[str] = set()
    synthesized_ids: set[int] = set()
    placements: list[Placement] = []
    with storage.scratch(job.id), stage_errors("dubbed_speech"), Timer() as t:
        seg_dir = storage.artifact(job.id, "segments")  # prepared and fitted per-segment WAVs: scratch
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

        def speech(seg: dict, rate: float = 1.0) -> tuple[Path, str]:
            """The segment's raw speech at `rate` (from the cache, or synthesised and cached)."""
            seg_engine = engine_for(seg.get("voice") or None)
            key = segment_key(seg["text"], seg_engine, engine_voice(seg_engine), rate)
            name = f"{CACHE_DIR}/{key}.wav"
            raw = _cached(storage, job.id, name) if key in previous or _local_hit(storage, job.id, name) else None
            if raw is None:
                raw = seg_engine.synthesize(seg["text"], storage.artifact(job.id, name), speed=rate)
                storage.save(job.id, name)
                previous.add(key)
                synthesized_ids.add(seg["id"])
            used.add(key)
            return raw, key

        engine = engine_for(None)  # the job's voice: what the metadata reports
        natural: list[tuple[np.ndarray, int, Path, str]] = []
        for i, seg in enumerate(segments):
            raw, key = speech(seg)
            samples, rate = media.read_wav_mono(raw)
            natural.append((samples, rate, raw, key))
            log_progress(log, i + 1, len(segments), "segments")
        lengths = [measure_speech(samples, rate) for samples, rate, _, _ in natural]
        plans, timeline = plan_fits(segments, lengths, duration, policy)

        jobs = []  # (prepared wav, fitted wav, tempo) for one ffmpeg process
        chosen = []  # per segment: (engine rate, cache key, natural trimmed seconds)
        for seg, plan, (samples, rate, raw, key), (length, _) in zip(segments, plans, natural, lengths, strict=True):
            engine_rate = 1.0
            target = plan.placed_s + plan.cut_s  # the speech's length at its planned speed, before any cut
            if policy.engine_rate and plan.speed >= ENGINE_RATE_MIN:  # step 4: the engine's own faster rate first
                wanted = round(plan.speed, 2)
                fast_raw, fast_key = speech(seg, wanted)
                fast, fast_rate = media.read_wav_mono(fast_raw)
                fast_length, _ = measure_speech(fast, fast_rate)
                achieved = length / fast_length if fast_length > 0 else 0.0
                if 1.0 < achieved <= policy.max_speed:  # it helped, and did not overshoot the cap
                    samples, rate, key, engine_rate = fast, fast_rate, fast_key, achieved
            trimmed = prepare_speech(samples, rate, 0.0)
            remove = min(plan.compressed_s, max(0.0, len(trimmed) / rate - target)) if plan.compressed_s else 0.0
            prepared = prepare_speech(samples, rate, remove) if remove > 0 else trimmed
            prepared_s = len(prepared) / rate
            tempo = max(1.0, prepared_s / target) if target > 0 else 1.0
            padded = np.concatenate([prepared, np.zeros(int(TAIL_PAD_S * rate), dtype=np.float32)])
            src = media.write_wav(seg_dir / f"{seg['id']:05d}.prep.wav", padded, rate)
            jobs.append((src, seg_dir / f"{seg['id']:05d}.wav", tempo))
            chosen.append((engine_rate, key, tempo))
        # one ffmpeg process for all the retiming (a process per segment cost more than the work)
        fitted = media.retime_wavs(jobs, rate=MIX_RATE)
        track = np.zeros(int(round(timeline.extended * MIX_RATE)), dtype=np.float32)
        for seg, plan, wav, (engine_rate, key, tempo), (length, _) in zip(segments, plans, fitted, chosen, lengths,
                                                                         strict=True):
            n, speed = place(track, wav, plan, length - plan.compressed_s)
            placements.append(Placement(
                id=seg["id"], start=seg["start"], end=seg["end"], natural_s=round(length, 3),
                speed=round(speed, 4), placed_start=round(plan.placed_start, 3),
                placed_end=round(plan.placed_start + n / MIX_RATE, 3),
                borrowed_s=round(plan.borrowed_before_s + plan.borrowed_after_s, 3), truncated=plan.cut_s > 0,
                text=seg["text"], voice=seg.get("voice") or "", cache_key=key,
                borrowed_before_s=round(plan.borrowed_before_s, 3), borrowed_after_s=round(plan.borrowed_after_s, 3),
                shift_s=round(plan.shift_s, 3), compressed_s=round(plan.compressed_s, 3), cut_s=round(plan.cut_s, 3),
                hold_s=round(plan.hold_s, 3), engine_rate=round(engine_rate, 3), tempo=round(tempo, 4)))
        media.write_wav(storage.artifact(job.id, "dub_track.wav"), track, MIX_RATE)
        storage.save(job.id, "dub_track.wav")
        results = checks.speech_checks(placements, track, MIX_RATE, policy, timeline, accepted)
    stale = sorted(previous - used)
    storage.remove_artifacts(job.id, [f"{CACHE_DIR}/{k}.wav" for k in stale])
    storage.write_json(job.id, "speech.json", {
        "engine": engine.name, "engine_version": engine.version,
        "voice": getattr(engine, "voice", None) or getattr(engine, "voice_name", None),
        "no_speech": not placements, "segments": [asdict(p) for p in placements],
        "cache_keys": sorted(used), "fit": policy.fit, "max_speed": policy.max_speed,
        "timeline": timeline.to_dict(),
    })
    synthesized = len(synthesized_ids)
    reused = len(placements) - synthesized
    if placements:
        log.info(f"segment cache: {synthesized} synthesised, {reused} reused, {len(stale)} stale removed")
    for result in results:
        if not result.passed:
            log.warning(f"check {result.check_name}: {result.description}")
    speeds = [p.speed for p in placements] or [1.0]
    return dg.MaterializeResult(
        metadata={
            **version_metadata(engine),  # engine, engine_version, model (the voice), version_tag (reprocess)
            "segments": len(placements),
            "tts_synthesized": synthesized,
            "tts_reused": reused,
            "sped_up": sum(1 for s in speeds if s > 1.005),
            "truncated": sum(1 for p in placements if p.truncated),
            "cut_s": round(sum(p.cut_s for p in placements), 2),
            "held_s": round(sum(p.hold_s for p in placements), 2),
            "fit": policy.fit,
            "mean_speed": round(float(np.mean(speeds)), 3),
            "max_speed": round(max(speeds), 3),
            "borrowed_s": round(sum(p.borrowed_s for p in placements), 2),
            "speech_s": round(sum(p.placed_end - p.placed_start for p in placements), 2),
            "timeline_s": round(timeline.extended, 3),
            "tts_s": t.seconds,
            "speed_ratios": dg.MetadataValue.json([p.speed for p in placements][:500]),
        },
        check_results=results,
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
