"""Dub quality (issue 18): what the fitting and the quality checks report on a corpus of generated talks, with
the fit as it was ("before": borrow the following silence, atempo up to 1.35x, then cut) and as it is now, in
one run.

The corpus (English espeak-ng speech over a quiet tone, under a 320x240 test pattern), each dubbed to Spanish:

  normal        an unhurried talk, about 1 s between sentences
  fast          a rushed talk (espeak-ng at 300 words a minute, 0.1 s between sentences)
  long          long sentences, 0.15 s between them
  dialogue      two voices (espeak-ng en-us+m3 / en-us+f4) taking short turns, 0.2 s gaps
  music         the normal talk over a music bed (a chord at -20 dBFS)

Each talk is transcribed and translated once (the stage functions the assets call); then the speech, mix and
export stages run on a copy of that job for each way of fitting:

  before         the old fit (dubbing_assets.fit.BEFORE): borrow after, atempo, cut
  review         the new fit, fit=review (the default): what does not fit is cut and the job needs review
  extend_video   the new fit, fit=extend_video: nothing is cut, the picture is held

Per talk and fit: words per minute of the source, segments, % sped up, p95 and max speed, segments and
seconds cut (and the words in them, pro rata), seconds held, sync error p95 (onsets measured in the dub
track), loudness error (LU) and true peak, coverage (silent segments), and which checks failed.

Targets (the issue's): on the fast talk, 0 words cut with extend_video; with review every segment that
cannot fit is named by speech_kept, none cut silently; sync error p95 <= 150 ms and loudness within 1 LU on
every talk.

Usage: .venv/bin/python bench/quality.py [--seconds 60] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SENTENCES = [
    "Good morning and welcome to our weekly news program.",
    "Today we talk about the weather in the mountains.",
    "The children play in the park after school.",
    "My sister works in a large hospital near the river.",
    "The city council approved a new budget for public transport.",
    "Farmers in the valley expect a good harvest this autumn.",
    "A new museum of modern art opens its doors next month.",
    "Scientists have found a rare bird in the northern forest.",
    "The football team won the final match on Sunday evening.",
    "Thank you for watching and see you next week.",
]
LONG = [
    "The committee that was formed last year to study the effects of the new regulations on small businesses in "
    "the region has finally published its report after many months of careful work.",
    "According to the authors the changes have made it harder for young people to find their first job because "
    "many employers are now waiting to see how the economy develops before they hire anyone.",
    "At the same time the number of people who work from home at least two days a week has grown faster than "
    "anybody expected when the first measures were announced at the beginning of the crisis.",
]
TALKS = {  # name: (sentences, pause s, words per minute, voices, music bed)
    "normal": (SENTENCES, 1.0, 150, ["en-us"], False),
    "fast": (SENTENCES, 0.1, 300, ["en-us"], False),
    "long": (LONG, 0.15, 175, ["en-us"], False),
    "dialogue": (SENTENCES, 0.2, 175, ["en-us+m3", "en-us+f4"], False),
    "music": (SENTENCES, 1.0, 150, ["en-us"], True),
}
FITS = ("before", "review", "extend_video")


def progress(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_talk(name: str, folder: Path, seconds: float) -> tuple[Path, int]:
    """The talk as a video, and its word count."""
    import mediagen

    sentences, pause, wpm, voices, music = TALKS[name]
    rate = mediagen.RATE
    parts, words, t, i = [np.zeros(rate // 2, np.float32)], 0, 0.5, 0
    while t < seconds:
        text = sentences[i % len(sentences)]
        audio = mediagen.speak_espeak(text, folder / f"s{i}.wav", wpm=wpm, voice=voices[i % len(voices)])
        parts += [audio, np.zeros(int(pause * rate), np.float32)]
        words += len(text.split())
        t += len(audio) / rate + pause
        i += 1
    parts.append(np.zeros(rate // 2, np.float32))
    speech = np.concatenate(parts)
    n = np.arange(len(speech)) / rate
    bed = 10 ** (-32 / 20) * np.sin(2 * np.pi * 220 * n)
    if music:
        bed = 10 ** (-20 / 20) / 3 * sum(np.sin(2 * np.pi * f * n) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * n))
                                         for f in (262, 330, 392))
    import wave

    wav = folder / "talk.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(speech + bed.astype(np.float32), -1, 1) * 32767).astype("<i2").tobytes())
    return mediagen.make_video(wav, folder / f"{name}.mp4"), words


def figures(storage, job, speech_result, mix_result, export_result) -> dict:
    checks = {r.check_name: r for r in [*speech_result.check_results, *mix_result.check_results,
                                        *export_result.check_results]}
    speech = storage.read_json(job.id, "speech.json")
    segs = speech["segments"]
    speeds = [s["speed"] for s in segs] or [1.0]
    cut = [s for s in segs if s["cut_s"] > 0.005]

    def words_cut(s: dict) -> float:
        return len(s["text"].split()) * s["cut_s"] / max(1e-6, s["cut_s"] + s["placed_end"] - s["placed_start"])

    named = {c["id"] for c in checks["speech_kept"].metadata["cut_segments"].value}
    meta = {k: getattr(v, "value", v) for k, v in checks["sync"].metadata.items()}
    loud = {k: getattr(v, "value", v) for k, v in checks["loudness"].metadata.items()}
    silent = checks["coverage"].metadata["silent_segments"].value
    return {
        "segments": len(segs),
        "sped_up_pct": round(100 * sum(1 for s in speeds if s > 1.005) / max(1, len(segs)), 1),
        "speed_p95": round(float(np.percentile(speeds, 95)), 3),
        "speed_max": round(max(speeds), 3),
        "engine_rate_segments": sum(1 for s in segs if s.get("engine_rate", 1.0) > 1.0),
        "shifted_segments": sum(1 for s in segs if s.get("shift_s", 0.0) < -0.005),
        "compressed_pauses_s": round(sum(s.get("compressed_s", 0.0) for s in segs), 2),
        "cut_segments": len(cut),
        "cut_s": round(sum(s["cut_s"] for s in cut), 2),
        "cut_words": round(sum(words_cut(s) for s in cut), 1),
        "cut_named_by_speech_kept": named == {s["id"] for s in cut},
        "held_s": round(sum(s.get("hold_s", 0.0) for s in segs), 2),
        "sync_error_p95_ms": meta.get("sync_error_p95_ms"),
        "loudness_error_lu": loud.get("error_lu"),
        "true_peak_dbtp": loud.get("true_peak_dbtp"),
        "silent_segments": len(silent),
        "failed_checks": sorted(n for n, r in checks.items() if not r.passed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each generated talk")
    parser.add_argument("--json", type=Path, help="write the results dict here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 s talks")
    args = parser.parse_args()
    seconds = 20.0 if args.quick else args.seconds

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        root = Path(tmp)
        os.environ["DUBBING_DATA_DIR"] = str(root / "data")
        os.environ["DAGSTER_HOME"] = str(root / "home")
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("DUBBING_STORAGE", None)
        from dubbing_assets.dubbed_mix import mix_job
        from dubbing_assets.dubbed_speech import policy_of, speak_job
        from dubbing_assets.dubbed_video import export_job
        from dubbing_assets.extracted_audio import extract_audio
        from dubbing_assets.fit import BEFORE
        from dubbing_assets.source_media import probe_source
        from dubbing_assets.transcript import transcribe_job
        from dubbing_assets.translation import translate_job
        from resources.asr import AsrResource
        from resources.jobstore import JobStore
        from resources.storage import MediaStorage
        from resources.translate import TranslatorResource
        from resources.tts import TtsResource

        store, storage = JobStore(), MediaStorage()
        asr, translator, tts = AsrResource(), TranslatorResource(), TtsResource(engine="espeak")
        out: dict = {"seconds": seconds, "talks": {}}
        for name in TALKS:
            folder = root / name
            folder.mkdir()
            src, words = make_talk(name, folder, seconds)
            base = store.create_job(input_path=str(src), filename=src.name, source_lang="en", target_lang="es",
                                    options={"tts_engine": "espeak", "translator": "apertium"})
            t0 = time.perf_counter()
            probe_source(base, storage)
            extract_audio(base.id, storage)
            transcribe_job(base, storage, asr)
            translate_job(base, storage, translator)
            duration = storage.read_json(base.id, "source.json")["duration_s"]
            talk = {"media_s": round(duration, 1), "words": words,
                    "words_per_minute": round(words / (duration / 60), 1),
                    "asr_and_translation_s": round(time.perf_counter() - t0, 2)}
            for fit in FITS:
                job = store.create_job(input_path=str(src), filename=src.name, source_lang="en", target_lang="es",
                                       options={"tts_engine": "espeak", "translator": "apertium",
                                                "fit": "cut" if fit == "before" else fit})
                shutil.copytree(storage.job_dir(base.id) / "work", storage.job_dir(job.id) / "work")
                policy = BEFORE if fit == "before" else policy_of(job)
                t1 = time.perf_counter()
                speech = speak_job(job, storage, tts, policy=policy)
                mix = mix_job(job, storage)
                export = export_job(job, storage)
                talk[fit] = {**figures(storage, job, speech, mix, export),
                             "stages_s": round(time.perf_counter() - t1, 2)}
                progress(f"{name} {fit}: {talk[fit]}")
            out["talks"][name] = talk
    fast = out["talks"]["fast"]
    everywhere = [t[f] for t in out["talks"].values() for f in ("review", "extend_video")]
    out["targets_met"] = {
        "fast_extend_video_cuts_no_words": fast["extend_video"]["cut_words"] == 0,
        "review_names_every_cut_segment": all(t["review"]["cut_named_by_speech_kept"] for t in out["talks"].values()),
        "sync_p95_within_150_ms": all((f["sync_error_p95_ms"] or 0) <= 150 for f in everywhere),
        "loudness_within_1_lu": all(abs(f["loudness_error_lu"] or 0) <= 1.0 for f in everywhere),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
