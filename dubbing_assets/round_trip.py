"""The round_trip check: the dub track transcribed again by the platform's own speech recognition, and its word
error rate against the translated text the dub was meant to say. Its own step in the `asr` pool (one Whisper
at a time), a warning only (never blocking): a recogniser's errors are not the dub's. Where no recogniser for
the target language is ready (the bundled tiny.en is English-only), the check reports that it was skipped, and
why."""

import dagster as dg
import jiwer

from dubbing_assets import checks
from dubbing_assets.dubbed_speech import dubbed_speech
from dubbing_assets.extracted_audio import ASR_RATE
from dubbing_assets.stage import Timer, stage_errors
from resources import media
from resources.asr import AsrResource
from resources.jobstore import JobRecord, JobStore
from resources.readiness import asr_language_reason
from resources.storage import MediaStorage

MAX_WER = 0.35  # above this the dub is unlikely to say what its text says


@dg.asset_check(asset=dubbed_speech, name=checks.ROUND_TRIP, blocking=False, pool="asr",
                description="the dub track transcribed again: word error rate against its translated text "
                            "(skipped where no recogniser for the target language is ready)")
def round_trip(context: dg.AssetCheckExecutionContext, job_store: JobStore, storage: MediaStorage,
               asr: AsrResource) -> dg.AssetCheckResult:
    job = job_store.get_job(context.run.tags.get("dagster/partition") or "")
    return round_trip_job(job, storage, asr)


def normalise(text: str) -> str:
    return " ".join(jiwer.RemovePunctuation()(text.lower()).split())


def round_trip_job(job: JobRecord, storage: MediaStorage, asr: AsrResource) -> dg.AssetCheckResult:
    speech = storage.read_json(job.id, "speech.json")
    if speech.get("no_speech") or not speech.get("segments"):
        return dg.AssetCheckResult(check_name=checks.ROUND_TRIP, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"skipped": True, "reason": "no speech"}, description="skipped: no speech")
    reason = asr_language_reason(job.target_lang)
    if reason:
        return dg.AssetCheckResult(check_name=checks.ROUND_TRIP, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"skipped": True, "reason": reason}, description=f"skipped: {reason}")
    with storage.scratch(job.id), stage_errors("round_trip"), Timer() as t:
        wav = media.extract_wav(storage.fetch(job.id, "dub_track.wav"), storage.artifact(job.id, "dub_asr.wav"),
                                rate=ASR_RATE, channels=1)
        heard, _ = asr.transcribe(wav, job.target_lang)
        wav.unlink(missing_ok=True)
    reference = normalise(" ".join(s["text"] for s in speech["segments"]))
    hypothesis = normalise(" ".join(s.text for s in heard))
    wer = jiwer.wer(reference, hypothesis) if reference else 0.0
    return dg.AssetCheckResult(
        check_name=checks.ROUND_TRIP, passed=wer <= MAX_WER, severity=dg.AssetCheckSeverity.WARN,
        metadata={"skipped": False, "wer": round(wer, 4), "max_wer": MAX_WER, "reference_words": len(reference.split()),
                  "heard_words": len(hypothesis.split()), "language": job.target_lang, "round_trip_s": t.seconds},
        description=f"word error rate {wer:.1%} of the dub heard again (limit {MAX_WER:.0%})")
