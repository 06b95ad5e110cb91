"""`make run`'s stack (scripts/run.sh): dagster-webserver + dagster-daemon on the embedded SQLite
instance. A dub run submitted through the webserver's GraphQL API is queued, launched by the
daemon, executed in its own run worker, and finishes; Ctrl-C stops every process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def stack(tmp_path):
    port, api_port = free_port(), free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "DUBBING_DATA_DIR": str(tmp_path / "data"),
           "DAGSTER_PORT": str(port), "DUBBING_PORT": str(api_port), "DUBBING_LOG_DIR": str(tmp_path / "logs"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("DATABASE_URL", None)
    out = open(tmp_path / "run.out", "w+")
    proc = subprocess.Popen([str(ROOT / "scripts" / "run.sh")], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and "is up" not in (tmp_path / "run.out").read_text():
        assert proc.poll() is None, (tmp_path / "run.out").read_text()
        time.sleep(0.5)
    text = (tmp_path / "run.out").read_text()
    assert f"Dagster UI:  http://127.0.0.1:{port}" in text, text
    assert f"API:         http://127.0.0.1:{api_port}" in text, text
    try:
        yield {"port": port, "api_port": api_port, "env": env, "proc": proc, "home": tmp_path / "home",
               "tmp": tmp_path, "out": text}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()


@pytest.mark.slow
def test_make_run_stack_runs_a_dub_through_the_daemon(stack, espeak_video, monkeypatch):
    from dagster_graphql import DagsterGraphQLClient

    from dubbing_assets.partitions import dub_jobs
    from resources.jobstore import JobStore
    from resources.storage import MediaStorage

    monkeypatch.setenv("DUBBING_DATA_DIR", stack["env"]["DUBBING_DATA_DIR"])
    job = JobStore().create_job(input_path=str(espeak_video), filename=espeak_video.name,
                                source_lang="en", target_lang="es")
    instance = dg.DagsterInstance.from_config(str(stack["home"]))
    instance.add_dynamic_partitions(dub_jobs.name, [job.id])
    client = DagsterGraphQLClient("127.0.0.1", port_number=stack["port"])
    run_id = client.submit_job_execution("dub_job", tags={"dagster/partition": job.id})
    deadline = time.time() + 300
    status = None
    while time.time() < deadline:
        status = client.get_run_status(run_id)
        if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            break
        time.sleep(2)
    logs = "\n".join(p.read_text()[-3000:] for p in (stack["tmp"] / "logs").glob("*.log"))
    assert status == dg.DagsterRunStatus.SUCCESS, logs
    run = instance.get_run_by_id(run_id)
    assert run.tags["dagster/partition"] == job.id
    assert (MediaStorage().outputs_dir(job.id) / "talk_espeak.es.mkv").stat().st_size > 0
    # the daemon picked it from the queue (QueuedRunCoordinator), not the webserver directly
    kinds = {r.event_log_entry.dagster_event.event_type_value
             for r in instance.get_records_for_run(run_id).records if r.event_log_entry.dagster_event}
    assert {"PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS"} <= kinds

    # the first admin was created with a random password, printed once, and it logs in
    import re

    import httpx

    found = re.search(r"Log in as: (\S+)\n\s+password \(shown once.*?\): (\S+)", stack["out"])
    assert found, stack["out"]
    api = f"http://127.0.0.1:{stack['api_port']}"
    login = httpx.post(f"{api}/api/auth/login", json={"username": found[1], "password": found[2]})
    assert login.status_code == 200 and login.json()["user"]["role"] == "admin"
    assert found[2] not in (stack["tmp"] / "logs" / "api.log").read_text()
    health = {}
    for _ in range(30):
        health = httpx.get(f"{api}/api/health").json()
        if health["dagster_daemon"]["ok"]:
            break
        time.sleep(1)
    assert health["status"] == "ok" and health["database"]["ok"] and health["dagster_daemon"]["ok"], health
    assert httpx.get(f"{api}/docs").status_code == 200

    # Ctrl-C stops the whole stack
    os.killpg(stack["proc"].pid, signal.SIGINT)
    stack["proc"].wait(timeout=60)
    deadline = time.time() + 30
    while (port_open(stack["port"]) or port_open(stack["api_port"])) and time.time() < deadline:
        time.sleep(0.5)
    assert not port_open(stack["port"]) and not port_open(stack["api_port"])


def test_run_refuses_a_busy_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "DAGSTER_PORT": str(free_port()), "DUBBING_PORT": str(port),
               "DAGSTER_HOME": str(tmp_path / "h"), "DUBBING_DATA_DIR": str(tmp_path / "d"),
               "DUBBING_LOG_DIR": str(tmp_path / "l")}
        proc = subprocess.run([str(ROOT / "scripts" / "run.sh")], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
    assert proc.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in proc.stderr and "DUBBING_PORT" in proc.stderr
