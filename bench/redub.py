"""Edit and re-dub (issue 10): what a re-dub after a one-segment edit costs against the whole dub, and
what the segment cache saves.

Generates an English talk of unique sentences (espeak-ng speech with pauses over a test-pattern video),
dubs it to Spanish on the offline stack (faster-whisper tiny.en, apertium eng-spa, espeak-ng) with
`dub_job.execute_in_process` on a temporary Dagster instance, then, on the same job:

  redub_cached     one segment's translation edited, then the re-dub run (dubbed_speech -> dubbed_mix ->
                   dubbed_video): the other segments come from the segment cache
  redub_uncached   another segment edited, the cache folder removed first: every segment synthesised again
                   (what a re-dub would cost without the cache)

Reported: wall time of each run (run start to end, from the run records), the TTS stage's own time and
its synthesised/reused counts, and the ratios redub_cached / whole dub and redub_cached / redub_uncached.

With `--tts piper` the talk is re-voiced in English by Piper (translator passthrough, target en): a neural
voice, where synthesis is a larger share of the stage than with espeak-ng.

Usage: .venv/bin/python bench/redub.py [--minutes 3] [--tts espeak|piper] [--json OUT.json] [--quick]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

REDUB = ["dubbed_speech", "dubbed_mix", "dubbed_video"]
ENGINES = {  # --tts: (job options, target language, the two edits)
    "espeak": ({"tts_engine": "espeak", "translator": "apertium", "container": "mkv"}, "es",
               ["Hoy hablamos del mar y de los barcos del puerto.",
                "Los niños juegan en la playa después de la escuela."]),
    "piper": ({"tts_engine": "piper", "translator": "passthrough", "container": "mkv"}, "en",
              ["Today we talk about the sea and the boats in the harbour.",
               "The children play on the beach after school."]),
}


def progress(msg: str) -> None:
    print(f"[redub {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_talk(workdir: Path, seconds: float) -> tuple[Path, float]:
    """A talk of unique sentences (the cache would otherwise reuse repeated ones within the first dub)."""
    import mediagen

    sentences, i = [], 0
    while len(sentences) * 4.6 < seconds:
        base = mediagen.SCRIPT[i % len(mediagen.SCRIPT)]
        sentences.append(f"{base[:-1]}, part {i + 1}.")  # one sentence: a "Part N." of its own would repeat
        i += 1
    wav, _ = mediagen.speech_track(sentences, workdir, voice="espeak")
    return mediagen.make_video(wav, workdir / "talk.mp4"), mediagen.wav_seconds(wav)


def run_figures(instance, result) -> dict:
    import dagster as dg

    record = instance.get_run_record_by_id(result.run_id)
    stats = {s.step_key: round(s.end_time - s.start_time, 3) for s in instance.get_run_step_stats(result.run_id)
             if s.start_time and s.end_time}
    speech = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key == dg.AssetKey("dubbed_speech"):
            speech = {k: v.value for k, v in mat.metadata.items()
                      if k in ("segments", "tts_synthesized", "tts_reused", "tts_s")}
    return {"wall_s": round(record.end_time - record.start_time, 3), "steps_s": stats, "dubbed_speech": speech,
            "assets": sorted(e.step_materialization_data.materialization.asset_key.to_user_string()
                             for e in result.get_asset_materialization_events())}


def edit(storage, job_id: str, index: int, text: str) -> None:
    translation = storage.read_json(job_id, "translation.json")
    seg = translation["segments"][index]
    seg["text"], seg["edited"] = text, True
    storage.write_json(job_id, "translation.json", translation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the generated talk")
    parser.add_argument("--json", type=Path, help="write the results dict here")
    parser.add_argument("--tts", choices=sorted(ENGINES), default="espeak", help="TTS engine of the dub")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 30 s talk")
    args = parser.parse_args()
    seconds = 30.0 if args.quick else args.minutes * 60

    with tempfile.TemporaryDirectory(prefix="bench-redub-") as tmp:
        root = Path(tmp)
        os.environ["DUBBING_DATA_DIR"] = str(root / "data")
        os.environ["DAGSTER_HOME"] = str(root / "home")
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("DUBBING_STORAGE", None)
        (root / "home").mkdir()
        import dagster as dg

        from dubbing_assets.definitions import defs
        from dubbing_assets.partitions import dub_jobs
        from resources.jobstore import JobStore
        from resources.storage import MediaStorage

        progress(f"generating a {seconds:.0f} s talk")
        src, duration = make_talk(root, seconds)
        options, target, edits = ENGINES[args.tts]
        job = JobStore().create_job(input_path=str(src), filename=src.name, source_lang="en", target_lang=target,
                                    options=options)
        storage = MediaStorage()
        job_def = defs.resolve_job_def("dub_job")
        out = {"media_s": round(duration, 1), "tts": args.tts, "target_lang": target}
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(dub_jobs.name, [job.id])

            def run(name: str, selection: list[str] | None) -> None:
                progress(f"{name} ...")
                kwargs = {"asset_selection": [dg.AssetKey(s) for s in selection]} if selection else {}
                result = job_def.execute_in_process(instance=instance, partition_key=job.id, **kwargs)
                out[name] = run_figures(instance, result)
                progress(f"{name}: {out[name]['wall_s']} s, speech {out[name]['dubbed_speech']}")

            run("whole_dub", None)
            edit(storage, job.id, 1, edits[0])
            run("redub_cached", REDUB)
            edit(storage, job.id, 2, edits[1])
            shutil.rmtree(storage.job_dir(job.id) / "work" / "tts_cache")
            run("redub_uncached", REDUB)
        out["ratio_redub_to_whole"] = round(out["redub_cached"]["wall_s"] / out["whole_dub"]["wall_s"], 3)
        out["ratio_cached_to_uncached"] = round(out["redub_cached"]["wall_s"] / out["redub_uncached"]["wall_s"], 3)
        out["ratio_tts_cached_to_uncached"] = round(
            out["redub_cached"]["steps_s"]["dubbed_speech"] / out["redub_uncached"]["steps_s"]["dubbed_speech"], 3)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
