"""Whole dub and orchestration overhead (issue 8, figures 1 and 2).

Generates an English talk (espeak-ng speech with pauses over a test-pattern video) and dubs it to
Spanish on the offline stack (faster-whisper tiny.en, apertium eng-spa, espeak-ng), three ways, each
in a fresh Python process so every side pays its own interpreter start, imports and model loads:

  dagster      the deployed shape minus the sensor and the queue: the run is created from the
               gRPC code server's job (as the sensor daemon does) and launched by the
               DefaultRunLauncher, which has the code server start `dagster api execute_run`;
               timed from run creation to RUN_SUCCESS seen in the run storage
  direct       the same seven stage functions (dubbing_assets/<asset>.py) called one after another
               in `python bench/whole_dub.py --direct JOB`, no Dagster run; timed from spawn to exit
  in_process   `dub_job.execute_in_process` in a fresh process (what `dubbing dub` does)

Figure 1: wall time, real-time factor (wall / media duration) and peak RSS of the Dagster run,
per-stage wall times from its step stats. Figure 2: dagster / direct wall time.

Usage: .venv/bin/python bench/whole_dub.py [--minutes 10] [--json OUT.json] [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech",
          "dubbed_mix", "dubbed_video"]
OPTIONS = {"tts_engine": "espeak", "translator": "apertium", "container": "mkv"}
RTF_TARGET = 0.15
OVERHEAD_TARGET = 1.15
PYTHON = sys.executable


def progress(msg: str) -> None:
    print(f"[whole_dub {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the direct side: runs in its own process -------------------------------------------------

def direct_dub(job_id: str) -> dict:
    """The seven stage functions in order, no Dagster run; wall times per stage and peak RSS."""
    started = time.perf_counter()
    from dubbing_assets.dubbed_mix import mix_job
    from dubbing_assets.dubbed_speech import speak_job
    from dubbing_assets.dubbed_video import export_job
    from dubbing_assets.extracted_audio import extract_audio
    from dubbing_assets.source_media import probe_source
    from dubbing_assets.transcript import transcribe_job
    from dubbing_assets.translation import translate_job
    from resources.asr import AsrResource
    from resources.jobstore import JobStore
    from resources.storage import MediaStorage
    from resources.translate import TranslatorResource
    from resources.tts import TtsResource

    storage = MediaStorage()
    job = JobStore().get_job(job_id)
    calls = {
        "source_media": lambda: probe_source(job, storage),
        "extracted_audio": lambda: extract_audio(job.id, storage),
        "transcript": lambda: transcribe_job(job, storage, AsrResource()),
        "translation": lambda: translate_job(job, storage, TranslatorResource()),
        "dubbed_speech": lambda: speak_job(job, storage, TtsResource()),
        "dubbed_mix": lambda: mix_job(job, storage),
        "dubbed_video": lambda: export_job(job, storage),
    }
    stages = {"imports": round(time.perf_counter() - started, 3)}
    for name in STAGES:
        t0 = time.perf_counter()
        calls[name]()
        stages[name] = round(time.perf_counter() - t0, 3)
    return {"stages": stages, "cpu_s": own_cpu_s(),
            "peak_rss_mb": maxrss_mb(resource.RUSAGE_SELF),
            "children_peak_rss_mb": maxrss_mb(resource.RUSAGE_CHILDREN)}


def in_process_dub(job_id: str) -> dict:
    """dub_job.execute_in_process on the DAGSTER_HOME instance, as `dubbing dub` runs it."""
    import dagster as dg

    from dubbing_assets.definitions import defs

    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("dub_job").execute_in_process(
            instance=instance, partition_key=job_id,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}})
        assert result.success
        stages = step_durations(instance, result.run_id)
    return {"stages": stages, "cpu_s": own_cpu_s(), "peak_rss_mb": maxrss_mb(resource.RUSAGE_SELF),
            "children_peak_rss_mb": maxrss_mb(resource.RUSAGE_CHILDREN)}


def maxrss_mb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # Linux: kilobytes


def step_durations(instance, run_id: str) -> dict[str, float]:
    return {s.step_key: round(s.end_time - s.start_time, 3) for s in instance.get_run_step_stats(run_id)
            if s.end_time and s.start_time}


def worker(kind: str, job_id: str) -> dict:
    """Run one side in a fresh process; returns its report plus the wall time from spawn to exit."""
    started = time.perf_counter()
    proc = subprocess.run([PYTHON, __file__, f"--{kind}", job_id], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**report, "wall_s": round(wall, 3)}


# ---- the Dagster side: a gRPC code server and the DefaultRunLauncher -----------------------------

INSTANCE_YAML = """\
# whole_dub bench: SQLite storage, runs launched at once (no queue, no daemon)
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: dagster._core.launcher
  class: DefaultRunLauncher
telemetry:
  enabled: false
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_code_server(port: int, log: Path) -> subprocess.Popen:
    """`dagster api grpc` for the code location, as dagster-daemon/webserver start it; waits until it
    answers a ping."""
    from dagster._grpc.client import DagsterGrpcClient

    profile = os.environ.get("WHOLE_DUB_PYSPY")  # a file: py-spy samples the server and run workers
    spy = [str(Path(PYTHON).parent / "py-spy"), "record", "-s", "-r", "50", "-f", "raw", "-o", profile,
           "--"] if profile else []
    proc = subprocess.Popen(
        [*spy, str(Path(PYTHON).parent / "dagster"), "api", "grpc", "-m", "dubbing_assets.definitions",
         "-h", "127.0.0.1", "-p", str(port), "--location-name", "dubbing"],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"code server exited: {log.read_text()[-2000:]}")
        try:
            client.ping("x")
            return proc
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("code server did not answer within 120 s")


class WorkerWatcher:
    """Samples the run worker, every descendant of `root_pid` whose command line holds `marker`
    (the code server starts each run worker as a multiprocessing "spawn" child): its peak RSS
    (VmHWM, the kernel's high-water mark) and its CPU time with its waited-for children (ffmpeg,
    espeak-ng), as last seen 0.1 s or less before it exited."""

    def __init__(self, root_pid: int, marker: str = "spawn_main"):
        self.root_pid, self.marker = root_pid, marker
        self.peak_kb: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self):
        while not self.stop.is_set():
            for pid in descendants(self.root_pid):
                if self.marker in cmdline(pid):
                    self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), vm_hwm_kb(pid))
                    self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu_seconds(pid))
            self.stop.wait(0.1)

    def peak_mb(self) -> float:
        return round(max(self.peak_kb.values(), default=0) / 1024, 1)

    def cpu_s(self) -> float:
        return round(sum(self.cpu.values()), 2)


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of a live process, in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU time of this process and its waited-for children (ffmpeg, espeak-ng)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2)


def descendants(root: int) -> list[int]:
    """Every live descendant of `root`, from /proc (no psutil in the venv)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def dagster_dub(instance, workspace, job_id: str, code_server_pid: int) -> dict:
    """Create the run as the sensor daemon does, launch it, wait for the worker to finish."""
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    started = time.perf_counter()
    ctx = workspace.create_request_context()
    location = ctx.get_code_location("dubbing")
    repo = next(iter(location.get_repositories().values()))
    remote_job = repo.get_full_job("dub_job")
    plan = location.get_execution_plan(remote_job, {}, step_keys_to_execute=None, known_state=None,
                                       instance=instance)
    run = instance.create_run(
        job_name="dub_job", run_id=make_new_run_id(), run_config={}, resolved_op_selection=None,
        step_keys_to_execute=None, status=DagsterRunStatus.NOT_STARTED, op_selection=None,
        root_run_id=None, parent_run_id=None,
        tags={**(remote_job.run_tags or {}), "dagster/partition": job_id, "dubbing/job_id": job_id},
        job_snapshot=remote_job.job_snapshot, execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot, remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(), asset_selection=None, asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )
    created = time.perf_counter()
    with WorkerWatcher(code_server_pid) as watch:
        instance.submit_run(run.run_id, ctx)
        while True:
            status = instance.get_run_by_id(run.run_id).status
            if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                break
            time.sleep(0.05)
    wall = time.perf_counter() - started
    if status != DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"dagster run {run.run_id} ended {status}")
    stages = step_durations(instance, run.run_id)
    return {"wall_s": round(wall, 3), "create_run_s": round(created - started, 3), "stages": stages,
            "peak_rss_mb": watch.peak_mb(), "cpu_s": watch.cpu_s(), "run_id": run.run_id,
            **run_phases(instance, run.run_id)}


def run_phases(instance, run_id: str) -> dict:
    """Where the run's time went outside the steps: launch to RUN_START (worker process start and
    imports), and RUN_START to the first step, from the run's event timestamps."""
    from dagster import DagsterEventType as E

    records = instance.get_records_for_run(run_id, limit=10_000).records
    times = {}
    for rec in records:
        event = rec.event_log_entry.dagster_event
        if event is not None:
            times.setdefault(event.event_type, rec.event_log_entry.timestamp)
    stats = instance.get_run_step_stats(run_id)
    first_step = min(s.start_time for s in stats)
    last_step = max(s.end_time for s in stats)
    out = {"events": len(records)}
    if E.RUN_START in times and E.RUN_STARTING in times:
        out["launch_to_run_start_s"] = round(times[E.RUN_START] - times[E.RUN_STARTING], 3)
    if E.RUN_START in times:
        out["run_start_to_first_step_s"] = round(first_step - times[E.RUN_START], 3)
    if E.RUN_SUCCESS in times:
        out["last_step_to_run_success_s"] = round(times[E.RUN_SUCCESS] - last_step, 3)
    out["steps_total_s"] = round(sum(s.end_time - s.start_time for s in stats), 3)
    return out


# ---- the talk and the driver ----------------------------------------------------------------------

def make_talk(workdir: Path, seconds: float) -> tuple[Path, float]:
    """An English talk of about `seconds` (espeak-ng sentences with pauses over a quiet tone) over a
    test-pattern H.264 video; returns the file and its duration."""
    import mediagen

    sentences = []
    while len(sentences) * 4.2 < seconds:
        sentences += mediagen.SCRIPT
    wav, _ = mediagen.speech_track(sentences[:max(1, int(seconds / 4.2))], workdir, voice="espeak")
    return mediagen.make_video(wav, workdir / "talk.mp4"), mediagen.wav_seconds(wav)


def new_job(instance, src: Path) -> str:
    from dubbing_assets.partitions import dub_jobs
    from resources.jobstore import JobStore

    job = JobStore().create_job(input_path=str(src), filename=src.name, source_lang="en", target_lang="es",
                                options=OPTIONS)
    instance.add_dynamic_partitions(dub_jobs.name, [job.id])
    return job.id


def median_report(reports: list[dict]) -> dict:
    """The report whose wall time is the median (its stages stay consistent with its wall time)."""
    ordered = sorted(reports, key=lambda r: r["wall_s"])
    return ordered[(len(ordered) - 1) // 2]


def measure(args, work: Path) -> dict:
    import dagster as dg
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import GrpcServerTarget

    progress(f"generating a {args.seconds:.0f} s talk (espeak-ng + test pattern)")
    src, media_s = make_talk(work, args.seconds)
    port = free_port()
    progress("starting the gRPC code server (not timed: long-lived in the deployed shape)")
    server = start_code_server(port, work / "code_server.log")
    runs: dict[str, list[dict]] = {"dagster": [], "direct": [], "in_process": []}
    sides = ["direct", "dagster"] + ([] if args.quick else ["in_process"])
    try:
        with dg.DagsterInstance.get() as instance, WorkspaceProcessContext(
                instance, GrpcServerTarget(host="127.0.0.1", port=port, socket=None,
                                           location_name="dubbing")) as workspace:
            for i in range(args.repeat):
                for side in sides:
                    progress(f"round {i + 1}/{args.repeat}: {side} dub of {media_s:.0f} s")
                    job_id = new_job(instance, src)
                    if side == "dagster":
                        report = dagster_dub(instance, workspace, job_id, server.pid)
                    else:
                        report = worker(side.replace("_", "-"), job_id)
                    runs[side].append(report)
                    progress(f"  {side}: {report['wall_s']:.1f} s (RTF {report['wall_s'] / media_s:.3f})")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return summarize(media_s, {k: v for k, v in runs.items() if v}, args)


def summarize(media_s: float, runs: dict[str, list[dict]], args) -> dict:
    dag, direct = median_report(runs["dagster"]), median_report(runs["direct"])
    dagster_wall = statistics.median(r["wall_s"] for r in runs["dagster"])
    direct_wall = statistics.median(r["wall_s"] for r in runs["direct"])
    rtf = dagster_wall / media_s
    ratio = dagster_wall / direct_wall
    out = {
        "media_s": round(media_s, 3),
        "repeat": args.repeat,
        "dagster_wall_s": round(dagster_wall, 3),
        "direct_wall_s": round(direct_wall, 3),
        "rtf": round(rtf, 4),
        "direct_rtf": round(direct_wall / media_s, 4),
        "overhead_ratio": round(ratio, 4),
        "dagster_cpu_s": statistics.median(r["cpu_s"] for r in runs["dagster"]),
        "direct_cpu_s": statistics.median(r["cpu_s"] for r in runs["direct"]),
        "peak_rss_mb": dag["peak_rss_mb"],
        "direct_peak_rss_mb": direct["peak_rss_mb"],
        "stages": {k: dag["stages"].get(k) for k in STAGES},
        "direct_stages": direct["stages"],
        "dagster_phases": {k: dag[k] for k in dag if k.endswith("_s") and k not in ("wall_s", "peak_rss_mb")},
        "targets": {"rtf": RTF_TARGET, "overhead_ratio": OVERHEAD_TARGET},
        "targets_met": {"rtf": rtf <= RTF_TARGET, "overhead_ratio": ratio <= OVERHEAD_TARGET},
        "all_walls_s": {k: [r["wall_s"] for r in v] for k, v in runs.items()},
    }
    out["cpu_ratio"] = round(out["dagster_cpu_s"] / max(out["direct_cpu_s"], 1e-9), 4)
    if "in_process" in runs:
        inproc = statistics.median(r["wall_s"] for r in runs["in_process"])
        out["in_process_wall_s"] = round(inproc, 3)
        out["in_process_ratio"] = round(inproc / direct_wall, 4)
        out["in_process_stages"] = median_report(runs["in_process"])["stages"]
        out["in_process_cpu_s"] = statistics.median(r["cpu_s"] for r in runs["in_process"])
    return out


def print_table(res: dict) -> None:
    media = res["media_s"]
    print(f"media {media:.1f} s, median of {res['repeat']} run(s) per side")
    print(f"  {'side':<12}{'wall s':>9}{'RTF':>8}{'/direct':>9}")
    lines = [("dagster", res["dagster_wall_s"]), ("direct", res["direct_wall_s"])]
    if "in_process_wall_s" in res:
        lines.append(("in_process", res["in_process_wall_s"]))
    for name, wall in lines:
        print(f"  {name:<12}{wall:9.2f}{wall / media:8.3f}{wall / res['direct_wall_s']:9.3f}")
    print(f"  CPU s (with ffmpeg/espeak children): dagster worker {res['dagster_cpu_s']}, direct "
          f"{res['direct_cpu_s']}, ratio {res['cpu_ratio']}")
    print(f"  peak RSS: run worker {res['peak_rss_mb']} MB, direct process {res['direct_peak_rss_mb']} MB")
    print("  stages (dagster step stats / direct): " + ", ".join(
        f"{k} {res['stages'][k]}/{res['direct_stages'].get(k)}" for k in STAGES))
    print(f"  dagster phases: {res['dagster_phases']}")
    print(f"  targets met: {res['targets_met']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the generated talk")
    parser.add_argument("--quick", action="store_true", help="a ~30 s talk, no in-process line (smoke run)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side (median reported)")
    parser.add_argument("--json", help="write the results dict to this file")
    parser.add_argument("--direct", metavar="JOB", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct or args.in_process:  # a worker: one side, its report on stdout
        print(json.dumps(direct_dub(args.direct) if args.direct else in_process_dub(args.in_process)))
        return 0
    args.seconds = 30.0 if args.quick else args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="bench-whole-dub-") as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        (work / "home" / "dagster.yaml").write_text(INSTANCE_YAML)
        os.environ.update(DAGSTER_HOME=str(work / "home"), DUBBING_DATA_DIR=str(work / "data"))
        for var in ("DATABASE_URL", "TTS_ENGINE", "TRANSLATOR", "ASR_MODEL", "DAGSTER_POSTGRES_URL"):
            os.environ.pop(var, None)
        res = measure(args, work)
    assert all(math.isfinite(v) for v in (res["rtf"], res["overhead_ratio"]))
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
