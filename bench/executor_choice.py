"""Which executor for dub_job? The same dub, in one run of this script, on one Dagster instance:

  in_process     the dub_job as shipped (all stages in the run's process)
  multiprocess   the same assets with Dagster's multiprocess executor (a process per step)

Prints wall time per variant and the ratio; also the per-step process start and model loads seen.
Usage: .venv/bin/python bench/executor_choice.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import mediagen  # noqa: E402


def multiprocess_dub_job():
    """The dub_job's assets under the multiprocess executor (module-level, so it is reconstructable)."""
    from dubbing_assets.definitions import defs
    from dubbing_assets.stage import GROUP

    job = dg.define_asset_job("dub_job_multiprocess", selection=dg.AssetSelection.groups(GROUP),
                              executor_def=dg.multiprocess_executor)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("dub_job_multiprocess")


def talk(workdir: Path, seconds: float) -> Path:
    sentences = []
    while len(sentences) * 4.2 < seconds:
        sentences += mediagen.SCRIPT
    wav, _ = mediagen.speech_track(sentences, workdir, voice="espeak")
    return mediagen.make_video(wav, workdir / "talk.mp4")


def step_durations(instance, run_id) -> dict[str, float]:
    return {s.step_key: round(s.end_time - s.start_time, 2) for s in instance.get_run_step_stats(run_id)
            if s.end_time and s.start_time}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated talk")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    import os

    work = Path(tempfile.mkdtemp(prefix="bench-exec-"))
    os.environ["DUBBING_DATA_DIR"] = str(work / "data")
    os.environ.pop("DATABASE_URL", None)
    from dubbing_assets.definitions import defs
    from dubbing_assets.partitions import dub_jobs
    from resources.jobstore import JobStore

    src = talk(work, args.seconds)
    duration = mediagen.wav_seconds(work / "speech_espeak.wav")
    store = JobStore()
    results: dict[str, list[float]] = {"in_process": [], "multiprocess": []}
    steps: dict[str, dict] = {}
    (work / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(work / "home")) as instance:
        for _ in range(args.repeat):
            for variant in ("in_process", "multiprocess"):
                job = store.create_job(input_path=str(src), filename=src.name, source_lang="en", target_lang="es")
                instance.add_dynamic_partitions(dub_jobs.name, [job.id])
                started = time.perf_counter()
                if variant == "in_process":
                    result = defs.resolve_job_def("dub_job").execute_in_process(
                        instance=instance, partition_key=job.id)
                    run_id = result.run_id
                else:
                    with dg.execute_job(dg.reconstructable(multiprocess_dub_job), instance=instance,
                                        tags={"dagster/partition": job.id}) as result:
                        assert result.success
                        run_id = result.run_id
                results[variant].append(time.perf_counter() - started)
                steps[variant] = step_durations(instance, run_id)
    inproc, multi = statistics.median(results["in_process"]), statistics.median(results["multiprocess"])
    print(f"media {duration:.1f} s, {args.repeat} runs each (median wall time)")
    print(f"  in_process   {inproc:6.2f} s   RTF {inproc / duration:.3f}")
    print(f"  multiprocess {multi:6.2f} s   RTF {multi / duration:.3f}")
    print(f"  ratio multiprocess / in_process = {multi / inproc:.2f}")
    for variant, st in steps.items():
        print(f"  steps ({variant}): " + ", ".join(f"{k} {v}s" for k, v in st.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
