#!/usr/bin/env python3
"""Gate 4: cancelling jobs while RUNNING (during a long stage) and while QUEUED (behind the run
queue's limit). Each ends cancelled promptly; no run worker or child process is left behind; the job
folders hold no temp files or outputs; the owner gets exactly one cancel notification per job (from
a local server speaking ntfy's publish API). Then a fourth job's run worker is killed (kill -9) as the job is
cancelled: it still ends cancelled, is never retried, and notifies once as a cancel.

    .venv/bin/python scripts/e2e_cancel_midrun.py [--repeat N]

With --repeat N the gate runs N times, each on a fresh deployment, and reports the cancels that were lost
(a job that ended anything but cancelled after its cancel was answered 202) and the time from the cancel
request to the job showing cancelled (p50/p95 over every cancel of every round); it passes with 0 lost.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_harness import Deployment, GateFailed, check, make_talk, run_gate, wait_until  # noqa: E402

PROMPT_S = 15  # "promptly": from the cancel request to the job showing cancelled


def gate(rounds: list | None = None) -> str:
    """One round. With `rounds`, the round's cancel times and end states are appended to it and a lost cancel
    is counted there instead of failing the round."""
    from ntfy_fake import FakeNtfy

    ntfy = FakeNtfy(auth="Bearer tk_e2ecancelgate").start()
    try:
        with Deployment("cancel", env={"NTFY_URL": ntfy.url, "NTFY_AUTH": "tk_e2ecancelgate",
                                       "PUBLIC_BASE_URL": "https://dub.example.org"}) as d:
            d.start("code_server", "daemon", "api")
            alice = d.client("alice")
            video = make_talk(d.root / "long", sentences=40, name="long_talk.mp4")  # about 4 min of speech
            running = [alice.upload(video, "es")["job_id"] for _ in range(2)]  # fill the 2 run slots
            wait_until(lambda: all(alice.job(j)["state"] == "running" for j in running), 300,
                       message="the first two jobs did not start")
            queued = alice.upload(video, "es")["job_id"]
            wait_until(lambda: (runs := d.runs_of(queued)) and runs[0].status.value == "QUEUED", 60,
                       message="the third job's run was not queued behind the two running ones")
            times = {}
            # cancel the queued one first, then the running ones in the middle of a stage
            asked = time.time()
            check(alice.request("POST", f"/api/jobs/{queued}/cancel").status_code == 202, "cancel (queued) refused")
            alice.wait_job(queued, {"cancelled", "done", "failed"}, timeout=60)
            times[queued] = time.time() - asked
            stages, asked_at = {}, {}
            # each cancelled the moment it is seen in its transcription, the long stage (a 4-minute talk): both
            # jobs are watched together, since with the asr pool (one transcription at a time) they take turns,
            # and watching one after the other let the second reach its short last stages first (CI, 2026-11-26)
            pending, deadline = list(running), time.time() + 300
            while pending:
                check(time.time() < deadline, f"jobs never seen transcribing: {pending}")
                for job in list(pending):
                    view = alice.job(job)
                    check(view["state"] == "running", f"job {job} ended {view['state']} before it could be cancelled")
                    if view["current_stage"] != "transcript":
                        continue
                    stages[job] = view["current_stage"]
                    asked_at[job] = time.time()
                    check(alice.request("POST", f"/api/jobs/{job}/cancel").status_code == 202,
                          "cancel (running) refused")
                    pending.remove(job)
                time.sleep(0.2)
            for job in running:
                alice.wait_job(job, {"cancelled", "done", "failed"}, timeout=60)
                times[job] = time.time() - asked_at[job]
            states = {j: alice.job(j)["state"] for j in [*running, queued]}
            if rounds is not None:
                rounds.append({"times": dict(times), "states": states})
                if not all(s == "cancelled" for s in states.values()):
                    return f"lost cancels: {states}"
            check(all(s == "cancelled" for s in states.values()), f"jobs did not end cancelled: {states}")
            slow = {j: round(t, 1) for j, t in times.items() if t > PROMPT_S}
            check(not slow, f"cancels slower than {PROMPT_S} s: {slow}")

            # nothing left behind: run workers and their children, temp files, outputs
            def leftovers():
                return [cmd for pid, cmd in d.descendants("code_server")
                        if "spawn_main" in cmd or "ffmpeg" in cmd or "espeak" in cmd or "watch_orphans" in cmd]
            wait_until(lambda: not leftovers(), 30, message=f"processes left behind: {leftovers()}")
            from resources.storage import MediaStorage

            storage = MediaStorage(root=d.env["DUBBING_DATA_DIR"])
            def left():
                return [f"{j}/{sub} ({sorted(p.name for p in (storage.job_dir(j) / sub).iterdir())})"
                        for j in states for sub in ("work", "outputs") if (storage.job_dir(j) / sub).exists()]
            try:
                wait_until(lambda: not left(), 30)
            except GateFailed:
                raise GateFailed(f"folders of cancelled jobs not removed: {left()}") from None
            # one cancel notification per job, to the owner's topic
            wait_until(lambda: len(ntfy.to("dub-alice")) >= 3, 60, message="cancel notifications did not arrive")
            time.sleep(3)
            got = ntfy.to("dub-alice")
            per_job = {j: [m for m in got if m.click and m.click.endswith(j)] for j in states}
            check(all(len(m) == 1 for m in per_job.values()), f"notifications per job: "
                  f"{ {j: len(m) for j, m in per_job.items()} }")
            check(all(m[0].title == "Dub cancelled: long_talk.mp4" for m in per_job.values()),
                  f"titles: {[m[0].title for m in per_job.values()]}")

            # a cancel whose run worker is gone: the worker is killed (kill -9) the moment its job is seen
            # transcribing and the cancel follows at once. The run fails under the cancel (or had failed already,
            # its retry pending); the job must still end cancelled, never retried, with one cancel notification
            gone = alice.upload(video, "es")["job_id"]
            wait_until(lambda: alice.job(gone)["current_stage"] == "transcript", 300,
                       message="the fourth job was never seen transcribing")
            workers = [pid for pid, cmd in d.descendants("code_server") if "spawn_main" in cmd]
            check(len(workers) == 1, f"expected one run worker, found {workers}")
            os.kill(workers[0], signal.SIGKILL)
            asked = time.time()
            check(alice.request("POST", f"/api/jobs/{gone}/cancel").status_code == 202, "cancel (worker gone) refused")
            alice.wait_job(gone, {"cancelled", "done", "failed"}, timeout=120)
            gone_s = time.time() - asked
            gone_state, gone_runs = alice.job(gone)["state"], d.runs_of(gone)
            if rounds is not None:
                rounds[-1]["times"][gone] = gone_s
                rounds[-1]["states"][gone] = gone_state
            check(gone_state == "cancelled", f"a cancel whose worker was gone ended {gone_state}")
            time.sleep(12)  # Dagster's run retries would have launched a retry by now (daemon ticks every few s)
            gone_runs = d.runs_of(gone)
            check(len(gone_runs) == 1 and gone_runs[0].status.value == "CANCELED",
                  f"the job with its worker gone has runs {[r.status.value for r in gone_runs]}")
            wait_until(lambda: len([m for m in ntfy.to("dub-alice") if m.click and m.click.endswith(gone)]) >= 1,
                       60, message="no cancel notification for the job whose worker was gone")
            time.sleep(3)
            mine = [m.title for m in ntfy.to("dub-alice") if m.click and m.click.endswith(gone)]
            check(mine == ["Dub cancelled: long_talk.mp4"], f"notifications of the job whose worker was gone: {mine}")
            alice.close()
            return (f"1 queued + 2 running jobs (in {', '.join(stages.values())}) cancelled in "
                    f"{max(times.values()):.1f} s at most; no process or file left; 1 cancel notification each; "
                    f"a job whose run worker was killed as it was cancelled ended cancelled in {gone_s:.1f} s, "
                    f"not retried, 1 cancel notification")
    finally:
        ntfy.stop()


def repeated(n: int) -> str:
    rounds: list[dict] = []
    for i in range(n):
        started = time.time()
        try:
            said = gate(rounds)
        except GateFailed as exc:
            said = f"round failed: {exc}"
        print(f"round {i + 1}/{n} in {time.time() - started:.0f} s: {said}", flush=True)
    times = sorted(t for r in rounds for t in r["times"].values())
    lost = sum(1 for r in rounds for s in r["states"].values() if s != "cancelled")
    check(len(rounds) == n, f"only {len(rounds)} of {n} rounds got as far as their cancels")
    check(lost == 0, f"{lost} cancels lost in {n} rounds ({len(times)} cancels)")
    return (f"{n} rounds, {len(times)} cancels, 0 lost; cancel -> cancelled p50 {statistics.median(times):.1f} s, "
            f"p95 {times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]:.1f} s, max {times[-1]:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each on a fresh deployment")
    args = parser.parse_args()
    run_gate("e2e_cancel_midrun", gate if args.repeat == 1 else (lambda: repeated(args.repeat)))
