#!/usr/bin/env python3
"""Gate 3: a run worker killed with SIGKILL in the middle of a stage is retried from failure
(Dagster run retries, FROM_FAILURE) and the job finishes; the stages that had finished are not
recomputed (each asset of the job is materialised exactly once). Then the daemon and the code server
are restarted while runs are queued: none is lost, none runs twice.

    .venv/bin/python scripts/e2e_job_recovery.py [--queued 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_harness import Deployment, check, make_talk, run_gate, wait_until  # noqa: E402

STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech", "dubbed_mix",
          "dubbed_video"]


def run_workers(d: Deployment) -> list[int]:
    """Run worker processes: children the code server spawned to execute runs."""
    return [pid for pid, cmd in d.descendants("code_server")
            if "multiprocessing" in cmd and "resource_tracker" not in cmd and "spawn_main" in cmd
            and "dagster" not in cmd.split(" ")[0]]


def gate(queued: int) -> str:
    with Deployment("job_recovery") as d:
        d.start("code_server", "daemon", "api")
        alice = d.client("alice")
        long_video = make_talk(d.root / "long", sentences=12, name="long_talk.mp4")
        short_video = make_talk(d.root / "short", sentences=2)

        # 1. kill -9 the run worker mid-stage
        job = alice.upload(long_video, "es")["job_id"]
        before = set(run_workers(d))
        view = wait_until(lambda: (v := alice.job(job))["state"] == "running"
                          and v["current_stage"] in ("transcript", "translation", "dubbed_speech") and v,
                          300, every=0.2, message="the job never reached a middle stage")
        killed_in = view["current_stage"]
        done_before = {s for s, n in d.materialisations(job).items()}
        workers = [p for p in run_workers(d) if p not in before] or run_workers(d)
        check(len(workers) == 1, f"expected one run worker under the code server, found {workers}")
        os.kill(workers[0], signal.SIGKILL)
        killed_at = time.time()
        view = alice.wait_job(job, timeout=600)
        check(view["state"] == "done", f"the job ended {view['state']} after its run worker was killed")
        runs = d.runs_of(job)
        check(len(runs) == 2, f"expected the crashed run and one retry, found {len(runs)} runs")
        first, retry = runs
        check(first.status.value == "FAILURE" and retry.status.value == "SUCCESS",
              f"runs ended {first.status.value}, {retry.status.value}")
        check(retry.tags.get("dagster/parent_run_id") == first.run_id, "the retry is not a re-execution of the run")
        check(retry.tags.get("dagster/is_resume_retry") == "false" or "dagster/retry_number" in retry.tags,
              f"the second run is not an automatic retry: {retry.tags}")
        counts = d.materialisations(job)
        check(counts == {s: 1 for s in STAGES}, f"materialisations per stage (want 1 each): {counts}")
        recovered_s = (d.instance().get_run_record_by_id(retry.run_id).end_time or 0) - killed_at

        # 2. restart the daemon and the code server while runs are queued
        jobs = [alice.upload(short_video, "es")["job_id"] for _ in range(queued)]
        wait_until(lambda: all(d.runs_of(j) for j in jobs), 120, message="the sensor did not submit every job")
        d.stop("daemon")  # runs already launched keep going; the rest stay QUEUED
        wait_until(lambda: all(r.status.value in ("QUEUED", "SUCCESS", "FAILURE", "CANCELED")
                               for j in jobs for r in d.runs_of(j)), 300, message="launched runs did not finish")
        waiting = sum(1 for j in jobs for r in d.runs_of(j) if r.status.value == "QUEUED")
        check(waiting >= 1, "no run was left queued to test the restart with")
        d.restart("code_server")
        d.start("daemon")
        for j in jobs:
            v = alice.wait_job(j, timeout=600)
            check(v["state"] == "done", f"queued job {j} ended {v['state']}")
        per_job = {j: len(d.runs_of(j)) for j in jobs}
        check(all(n == 1 for n in per_job.values()), f"runs per queued job (want 1 each): {per_job}")
        counts_q = {j: d.materialisations(j) for j in jobs}
        twice = {j: c for j, c in counts_q.items() if c != {s: 1 for s in STAGES}}
        check(not twice, f"stages computed more than once: {twice}")
        alice.close()
        return (f"run worker killed in {killed_in} (done before: {len(done_before)} stages) -> retried from "
                f"failure, done {recovered_s:.0f} s after the kill, every stage materialised once; daemon + "
                f"code server restarted with {waiting} of {queued} runs queued: all done, 1 run each")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queued", type=int, default=4)
    args = parser.parse_args()
    run_gate("e2e_job_recovery", lambda: gate(args.queued))
