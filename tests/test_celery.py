"""The Celery profile (deploy/celery/dagster.yaml): runs on Celery workers over Redis, and a run whose
worker is killed is resumed by run monitoring on the surviving worker.

Real processes: PostgreSQL (a database per test), Redis (scripts/redis_up.sh starts it), a code
server, the daemon, the upload API and two `scripts/celery_worker.sh` workers, each on a queue of
this test's own so parallel runs never take each other's tasks."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "deploy" / "celery" / "dagster.yaml"
sys.path.insert(0, str(ROOT / "scripts"))

pytestmark = pytest.mark.postgres
STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech", "dubbed_mix",
          "dubbed_video"]
REDIS_DB = os.environ.get("DUBBING_TEST_REDIS_DB", "7")


@pytest.fixture(scope="module")
def redis_up():
    subprocess.run([str(ROOT / "scripts" / "redis_up.sh")], check=True)
    if subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True).returncode != 0:
        pytest.fail("Redis is not reachable at 127.0.0.1:6379 (scripts/redis_up.sh could not start it)")


def celery_env(queue: str) -> dict:
    broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
    return {"DUBBING_CELERY_BROKER": broker, "DUBBING_CELERY_BACKEND": broker, "DUBBING_CELERY_QUEUE": queue}


def test_profile_loads_with_resume_enabled_and_the_deployed_policies(tmp_path, pg_url, monkeypatch, redis_up):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PROFILE.read_text())
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", pg_url)
    for key, value in celery_env("profile_test").items():
        monkeypatch.setenv(key, value)
    profile = yaml.safe_load(PROFILE.read_text())
    deployed = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    # the same storage, queue, sensor, concurrency and retry policies as the deployed dagster.yaml
    for section in ("storage", "run_coordinator", "sensors", "concurrency", "run_retries", "telemetry"):
        assert profile[section] == deployed[section], section
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        from resources.celery_runs import DubbingCeleryRunLauncher

        launcher = instance.run_launcher
        assert isinstance(launcher, DubbingCeleryRunLauncher)
        assert launcher.supports_resume_run and launcher.supports_check_run_worker_health
        assert launcher.broker == f"redis://127.0.0.1:6379/{REDIS_DB}" and launcher.default_queue == "profile_test"
        assert launcher.config_source["worker_disable_prefetch"] is True
        assert launcher.config_source["task_acks_late"] is False
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts >= 1
        assert instance.run_monitoring_settings["poll_interval_seconds"] <= 10
        assert "Postgres" in type(instance.run_storage).__name__
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
    finally:
        instance.dispose()


def test_a_run_tagged_with_a_queue_goes_to_that_queue(tmp_path, pg_url, monkeypatch, redis_up):
    """Routing by queue (e.g. gpu): the dagster-celery/queue run tag picks the broker queue; without
    it the profile's default queue. Checked on Redis itself (no worker takes them)."""
    import redis

    from resources.celery_runs import QUEUE_TAG

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PROFILE.read_text())
    tag = secrets.token_hex(4)
    default_q, gpu_q = f"default_{tag}", f"gpu_{tag}"
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", pg_url)
    for key, value in celery_env(default_q).items():
        monkeypatch.setenv(key, value)
    r = redis.Redis(host="127.0.0.1", db=int(REDIS_DB))
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        from dagster._core.code_pointer import ModuleCodePointer
        from dagster._core.launcher import LaunchRunContext
        from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
        from dagster._core.remote_origin import (
            GrpcServerCodeLocationOrigin,
            RemoteJobOrigin,
            RemoteRepositoryOrigin,
        )

        code = JobPythonOrigin("dub_job", RepositoryPythonOrigin(
            sys.executable, ModuleCodePointer("dubbing_assets.definitions", "defs", str(ROOT))))
        remote = RemoteJobOrigin(RemoteRepositoryOrigin(
            GrpcServerCodeLocationOrigin(host="127.0.0.1", port=1, location_name="dubbing"), "__repository__"),
            "dub_job")
        runs = {}
        for name, tags in (("plain", {}), ("gpu", {QUEUE_TAG: gpu_q})):
            run = instance.create_run_for_job(
                dg.GraphDefinition(name="dub_job", node_defs=[]).to_job(), tags=tags,
                job_code_origin=code, remote_job_origin=remote)
            instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
            runs[name] = instance.get_run_by_id(run.run_id)
        assert r.llen(default_q) == 1 and r.llen(gpu_q) == 1
        task_of = {name: run.tags["dagster-celery/task_id"] for name, run in runs.items()}
        assert task_of["gpu"].encode() in r.lindex(gpu_q, 0)
        assert task_of["plain"].encode() in r.lindex(default_q, 0)
        # a queued task is healthy (waiting for a worker), not "unknown" (which run monitoring resumes)
        health = instance.run_launcher.check_run_worker_health(runs["gpu"])
        assert health.status == dg._core.launcher.WorkerStatus.RUNNING, health
    finally:
        _drop_queue(default_q)
        _drop_queue(gpu_q)
        r.close()
        instance.dispose()


def _events(inst, run_id: str, kind) -> list:
    return inst.get_records_for_run(run_id, of_type=kind).records


def _steps(inst, run_id: str, kind) -> list[str]:
    return [r.event_log_entry.step_key for r in _events(inst, run_id, kind)]


def _messages(inst, run_id: str) -> list[str]:
    events = _events(inst, run_id, dg.DagsterEventType.ENGINE_EVENT)
    return [r.event_log_entry.dagster_event.message or "" for r in events]


def test_a_killed_worker_s_run_resumes_on_the_other_worker(redis_up, monkeypatch, request):
    from e2e_harness import Deployment, check, make_talk, wait_until

    from resources.celery_runs import WORKER_TAG

    queue = f"dub_{secrets.token_hex(4)}"
    request.addfinalizer(lambda: _drop_queue(queue))
    for key, value in celery_env(queue).items():  # this process opens the instance too
        monkeypatch.setenv(key, value)
    for key in ("DAGSTER_HOME", "DATABASE_URL", "DUBBING_DATA_DIR", "DAGSTER_POSTGRES_URL"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # the harness repoints them: restored after
    started = time.time()
    with Deployment("celery", env=celery_env(queue), dagster_yaml=PROFILE) as d:
        d.start("code_server")
        d.start_celery_worker("w1")
        d.start_celery_worker("w2")
        with d.instance() as inst:
            # Dagster creates a pool's row on first use; two runs reaching "asr" for the first time at
            # once in two processes raced (UniqueViolation on concurrency_limits, the run failed): a
            # deployment does this once, as here (deploy/celery/README.md)
            from dubbing_assets.definitions import defs

            for pool in {defs.resolve_assets_def(s).op.pool for s in STAGES} - {None}:  # asr, tts
                inst.event_log_storage.initialize_concurrency_limit_to_default(pool)
        d.start("daemon", "api")
        alice = d.client("alice")
        long_video = make_talk(d.root / "long", sentences=8, name="long_talk.mp4")
        short_video = make_talk(d.root / "short", sentences=2)
        victim_job = alice.upload(long_video, "es")["job_id"]
        jobs = [victim_job] + [alice.upload(short_video, "es")["job_id"] for _ in range(3)]

        with d.instance() as inst:
            # 1. the long job's run is in the middle of a stage on some worker: kill that worker (-9, the
            #    whole process group: the worker and its pool process, as when a machine dies)
            def mid_stage():
                runs = d_runs(inst, victim_job)
                if not runs or runs[0].status.value != "STARTED" or WORKER_TAG not in runs[0].tags:
                    return None
                starts = set(_steps(inst, runs[0].run_id, dg.DagsterEventType.STEP_START))
                done = set(_steps(inst, runs[0].run_id, dg.DagsterEventType.STEP_SUCCESS))
                running = [s for s in ("transcript", "translation", "dubbed_speech") if s in starts - done]
                return (runs[0], running[0]) if running else None

            run, stage = wait_until(mid_stage, 240, every=0.2, message="the long job never reached a middle stage")
            victim = run.tags[WORKER_TAG].split("@")[0]
            survivor = {"w1": "w2", "w2": "w1"}[victim]
            os.killpg(d.procs[victim].pid, signal.SIGKILL)
            d.procs.pop(victim).wait()
            killed_at = time.time()

            # 2. every job finishes, one run each; the victim's run was resumed on the survivor
            for job in jobs:
                view = alice.wait_job(job, timeout=300)
                check(view["state"] == "done", f"job {job} ended {view['state']}")
            runs = {job: d_runs(inst, job) for job in jobs}
            assert {job: [r.status.value for r in rs] for job, rs in runs.items()} == \
                {job: ["SUCCESS"] for job in jobs}, "each job: exactly one run, and it succeeded"
            messages = _messages(inst, run.run_id)
            resumed = [r for r in _events(inst, run.run_id, dg.DagsterEventType.ENGINE_EVENT)
                       if r.event_log_entry.dagster_event.message == "Launching a new run worker to resume run"]
            assert len(resumed) == 1, messages
            resumed_at = resumed[0].event_log_entry.timestamp
            took = [m for m in messages if m.startswith("Celery worker ")]
            assert took[0].startswith(f"Celery worker {victim}@") and " executes " in took[0], took
            assert took[-1].startswith(f"Celery worker {survivor}@") and " resumes " in took[-1], took
            # the jobs were spread over both workers
            by_worker = {}
            for job in jobs:
                for m in _messages(inst, runs[job][0].run_id):
                    if m.startswith("Celery worker ") and " executes " in m:
                        by_worker.setdefault(m.split()[2].split("@")[0], []).append(job)
            assert set(by_worker) == {"w1", "w2"}, by_worker
            # no stage materialised twice: finished stages were kept, the interrupted one ran again once
            for job in jobs:
                assert d.materialisations(job) == {s: 1 for s in STAGES}, job
            step_starts = _steps(inst, run.run_id, dg.DagsterEventType.STEP_START)
            assert step_starts.count(stage) == 2 and all(step_starts.count(s) == 1 for s in STAGES if s != stage), \
                step_starts
            record = inst.get_run_record_by_id(run.run_id)
            end, run_s = record.end_time, record.end_time - record.start_time

        # 3. the job's timeline shows the resume
        timeline = alice.request("GET", f"/api/jobs/{victim_job}/timeline").json()
        assert len(timeline["runs"]) == 1 and timeline["runs"][0]["status"] == "SUCCESS"
        (entry,) = timeline["runs"][0]["resumed"]
        assert "stopped answering" in entry["reason"] and entry["time"]
        others = [alice.request("GET", f"/api/jobs/{j}/timeline").json()["runs"][0]["resumed"] for j in jobs[1:]]
        assert others == [[], [], []]
        alice.close()
        print(f"\ncelery: killed {victim} in {stage}; resume launched {resumed_at - killed_at:.1f} s after "
              f"the kill, run done {end - killed_at:.1f} s after it ({run_s:.0f} s in all); whole test "
              f"{time.time() - started:.0f} s")


def _drop_queue(queue: str) -> None:
    """The test's queue and its bindings (task states expire by themselves: result_expires)."""
    import redis

    r = redis.Redis(host="127.0.0.1", db=int(REDIS_DB))
    r.delete(queue, *r.keys(f"_kombu.binding*.{queue}"))
    r.close()


def d_runs(inst, job_id: str) -> list:
    return list(reversed(inst.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": job_id}))))


RESUME_JOB = '''
import os, signal
import dagster as dg
from dubbing_assets.executor import resumable_in_process_executor

parts = dg.DynamicPartitionsDefinition(name="p")

@dg.asset(partitions_def=parts)
def a():
    return 1

@dg.asset(partitions_def=parts)
def b(a):
    if os.path.exists(os.environ["KILL_MARKER"]):  # the first run worker dies here, as if killed
        os.remove(os.environ["KILL_MARKER"])
        os.kill(os.getpid(), signal.SIGKILL)
    return a + 1

@dg.asset(partitions_def=parts)
def c(b):
    return b + 1

job = dg.define_asset_job("j", selection=[a, b, c], executor_def=resumable_in_process_executor)
defs = dg.Definitions(assets=[a, b, c], jobs=[job])
'''


def test_a_resumed_run_keeps_the_steps_it_had_finished(tmp_path, monkeypatch):
    """dubbing_assets/executor.py: the run worker dies in step b (SIGKILL, a real process); resuming
    the run (what the Celery worker's resume task does) runs b and c, not a again, and c gets b's
    output. dg.in_process_executor would run a, b and c again."""
    from dagster._cli.api import _resume_run_command_body
    from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

    (tmp_path / "resume_job.py").write_text(RESUME_JOB)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    marker = tmp_path / "kill"
    marker.touch()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("KILL_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    import resume_job

    recon = ReconstructableJob(ReconstructableRepository.for_module(
        "resume_job", "defs", working_directory=str(tmp_path)), "j")
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("p", ["k"])
        run = instance.create_run_for_job(resume_job.defs.resolve_job_def("j"), tags={"dagster/partition": "k"},
                                          job_code_origin=recon.get_python_origin())
        code = ("import dagster as dg; from dagster._cli.api import _execute_run_command_body as run; "
                f"run({run.run_id!r}, dg.DagsterInstance.get(), lambda e: None, True)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
        first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        assert first.returncode == -signal.SIGKILL
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        _resume_run_command_body(run.run_id, instance, lambda e: None, True)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS
        starts = _steps(instance, run.run_id, dg.DagsterEventType.STEP_START)
        made = _steps(instance, run.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert starts == ["a", "b", "b", "c"] and made == ["a", "b", "c"]
        assert any("keeping 1 finished step(s) (a), executing b, c" in m for m in _messages(instance, run.run_id))


def test_the_upload_sensor_routes_runs_to_the_queue_in_dubbing_run_queue(monkeypatch):
    import datetime as dt

    from resources.jobstore import JobRecord
    from sensors.upload_sensor import run_request

    job = JobRecord(id="j1", created_at=dt.datetime.now(dt.timezone.utc), input_path="in.mp4", filename="in.mp4",
                    source_lang="en", target_lang="es", owner="alice", upload_id="u1", seq=1)
    monkeypatch.delenv("DUBBING_RUN_QUEUE", raising=False)
    assert "dagster-celery/queue" not in run_request(job).tags
    monkeypatch.setenv("DUBBING_RUN_QUEUE", "gpu")
    assert run_request(job).tags["dagster-celery/queue"] == "gpu"
