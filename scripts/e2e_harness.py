"""The deployed shape, for the reliability gates (scripts/e2e_*.py): separate real processes as in
production — the upload API (uvicorn), a Dagster code server (gRPC), dagster-daemon and
dagster-webserver — on a PostgreSQL database of the gate's own (created here, dropped at the end),
with local file storage. Starts and stops them, waits for health, and prints their logs on failure.

    with Deployment("concurrency") as d:
        d.start()                       # code server, daemon, webserver, API
        alice = d.client("alice")
        job = alice.upload(video)["job_id"]
        alice.wait_job(job, {"done"})
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # resources/, and the test media generator

PG_ADMIN_URL = os.environ.get("DUBBING_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
FINISHED = {"done", "failed", "cancelled", "needs_review"}


class GateFailed(AssertionError):
    pass


def check(condition, message: str) -> None:
    if not condition:
        raise GateFailed(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, timeout: float, every: float = 0.5, message: str = ""):
    deadline = time.time() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.time() > deadline:
            raise GateFailed(message or f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_talk(folder: Path, sentences: int = 2, name: str = "talk.mp4") -> Path:
    """A short generated talk video (espeak-ng speech with pauses over an ffmpeg test pattern)."""
    import mediagen

    folder.mkdir(parents=True, exist_ok=True)
    # every sentence unique: the TTS stage's segment cache would speak a repeated one only once, and the gates
    # that cancel or kill a run "during a long stage" need the stages as long as the talk
    script = [s if i < len(mediagen.SCRIPT) else f"{s[:-1]}, part {i // len(mediagen.SCRIPT) + 1}."
              for i, s in enumerate((mediagen.SCRIPT * (1 + sentences // len(mediagen.SCRIPT)))[:sentences])]
    wav, _ = mediagen.speech_track(script, folder, voice="espeak", pause=0.8)
    return mediagen.make_video(wav, folder / name)


class Client:
    """The HTTP API as a client app uses it (Bearer token)."""

    def __init__(self, base_url: str, token: str, name: str):
        self.name = name
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def close(self):
        self.http.close()

    def request(self, method: str, url: str, retry_s: float = 0, **kw) -> httpx.Response:
        """One request; with retry_s, keeps retrying connection errors and 503 (honouring
        Retry-After) for that long, as the web UI and mobile clients do."""
        deadline = time.time() + retry_s
        while True:
            try:
                r = self.http.request(method, url, **kw)
                if r.status_code != 503 or time.time() > deadline:
                    return r
                wait = float(r.headers.get("Retry-After", "1"))
            except httpx.TransportError:
                if time.time() > deadline:
                    raise
                wait = 0.5
            time.sleep(min(wait, 2.0))

    def upload(self, path: Path, target_lang: str = "es", retry_s: float = 0, **complete) -> dict:
        data = path.read_bytes()
        r = self.request("POST", "/api/uploads/init", retry_s, json={
            "filename": path.name, "size_bytes": len(data), "content_type": "video/mp4",
            "sha256": hashlib.sha256(data).hexdigest()})
        check(r.status_code == 201, f"init: {r.status_code} {r.text}")
        upload_id = r.json()["upload_id"]
        self.send_missing(upload_id, data, retry_s=retry_s)
        return self.complete(upload_id, target_lang, retry_s=retry_s, **complete)

    def send_missing(self, upload_id: str, data: bytes, retry_s: float = 0) -> int:
        """Send the chunks the server says are missing (the server's status is the truth)."""
        status = self.request("GET", f"/api/uploads/{upload_id}", retry_s).json()
        size, sent = status["chunk_bytes"], 0
        for i, have in enumerate(status["received"]):
            if have:
                continue
            piece = data[i * size:(i + 1) * size]
            r = self.request("PUT", f"/api/uploads/{upload_id}/chunk", retry_s, params={"index": i}, content=piece,
                             headers={"X-Chunk-SHA256": hashlib.sha256(piece).hexdigest()})
            check(r.status_code == 200, f"chunk {i}: {r.status_code} {r.text}")
            sent += 1
        return sent

    def complete(self, upload_id: str, target_lang: str = "es", retry_s: float = 0, **complete) -> dict:
        r = self.request("POST", f"/api/uploads/{upload_id}/complete", retry_s,
                         json={"target_lang": target_lang, **complete})
        check(r.status_code == 200, f"complete: {r.status_code} {r.text}")
        return {"upload_id": upload_id, **r.json()}

    def job(self, job_id: str, retry_s: float = 0) -> dict:
        r = self.request("GET", f"/api/jobs/{job_id}", retry_s)
        check(r.status_code == 200, f"job {job_id}: {r.status_code} {r.text}")
        return r.json()

    def wait_job(self, job_id: str, states=FINISHED, timeout: float = 300, retry_s: float = 0) -> dict:
        last = {}

        def reached():
            nonlocal last
            last = self.job(job_id, retry_s)
            return last if last["state"] in states else None

        try:
            return wait_until(reached, timeout, every=1)
        except GateFailed:
            raise GateFailed(f"job {job_id} stayed {last.get('state')} (wanted {sorted(states)})") from None


class Deployment:
    def __init__(self, name: str, env: dict | None = None, dagster_yaml: str | Path | None = None):
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"e2e_{name}_"))
        self.db = f"dubbing_e2e_{name}_{secrets.token_hex(4)}"
        self.db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db}"
        self.ports = {"grpc": free_port(), "webserver": free_port(), "api": free_port()}
        self.procs: dict[str, subprocess.Popen] = {}
        self._spawn_times: dict[str, float] = {}
        self.tokens: dict[str, str] = {}
        self.users: dict = {}
        home = self.root / "dagster_home"
        home.mkdir()
        # the deployed (Postgres) instance; dagster_yaml (e.g. deploy/celery/dagster.yaml, the Celery
        # profile) or E2E_DAGSTER_YAML swaps in another one (e.g. to show that a gate fails when the
        # behaviour it guards is switched off)
        shutil.copy(dagster_yaml or os.environ.get("E2E_DAGSTER_YAML") or ROOT / "dagster.yaml",
                    home / "dagster.yaml")
        self.workspace = self.root / "workspace.yaml"
        self.workspace.write_text(
            "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
            f"      port: {self.ports['grpc']}\n      location_name: dubbing\n")
        self.env = {
            **os.environ, "DAGSTER_HOME": str(home), "DAGSTER_POSTGRES_URL": self.db_url,
            "DATABASE_URL": self.db_url, "DUBBING_DATA_DIR": str(self.root / "data"),
            "PATH": f"{BIN}:{os.environ['PATH']}", "UPLOAD_SENSOR_INTERVAL_S": "1",
            "NOTIFY_SENSOR_INTERVAL_S": "1", "NTFY_OUTBOX_INTERVAL_S": "1", "NTFY_RETRY_MAX_S": "2",
            "UPLOAD_CHUNK_BYTES": str(256 * 1024), "PYTHONPATH": str(ROOT),
        }
        self.env.update(env or {})
        self.started = time.time()
        # the least time a process gets to become healthy; benchmarks raise it: on a busy 2-core
        # machine an API's first health checks took 3-7 s each and 60 s ran out
        self.patience_s = 0.0

    # -- lifecycle

    def __enter__(self) -> "Deployment":
        import sqlalchemy as sa

        try:
            engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f'create database "{self.db}"'))
            engine.dispose()
        except Exception as exc:
            raise SystemExit(f"{self.name}: PostgreSQL is needed at {PG_ADMIN_URL.split('@')[-1]} "
                             f"({type(exc).__name__}); start it with: pg_ctlcluster --skip-systemctl-redirect "
                             f"$(ls /etc/postgresql) main start")
        for key in ("DAGSTER_HOME", "DATABASE_URL", "DUBBING_DATA_DIR", "DAGSTER_POSTGRES_URL"):
            os.environ[key] = self.env[key]
        from resources.accounts import Accounts
        from resources.jobstore import JobStore

        accounts = Accounts(JobStore(database_url=self.db_url))
        for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin")):
            user = accounts.add_user(name, f"{name}-password-123", role=role)
            self.users[name] = user
            self.tokens[name] = accounts.create_token(user, "e2e")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.dump_logs()
        self.stop_all()
        import sqlalchemy as sa

        from resources import jobstore

        for engine in jobstore._ENGINES.values():
            engine.dispose()
        try:
            engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f'drop database if exists "{self.db}" with (force)'))
            engine.dispose()
        except Exception as e:  # the server may be restarting in a DB gate that failed
            print(f"note: could not drop database {self.db}: {type(e).__name__}", file=sys.stderr)
        if exc is None:
            shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        self._spawn_times[name] = time.time()
        return proc

    def start(self, *names: str) -> None:
        for name in names or ("code_server", "daemon", "webserver", "api"):
            getattr(self, f"start_{name}")()

    def start_code_server(self) -> None:
        self._spawn("code_server", [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1",
                                    "-p", str(self.ports["grpc"]), "-m", "dubbing_assets.definitions",
                                    "--location-name", "dubbing"])
        self._wait(lambda: subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(self.ports["grpc"])],
            env=self.env, capture_output=True).returncode == 0, "code_server", 180)

    def start_daemon(self) -> None:
        self._spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)])
        self._wait(self._daemon_heartbeat_fresh, "daemon", 120)

    def _daemon_heartbeat_fresh(self) -> bool:
        import dagster as dg

        with dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"]) as instance:
            beats = instance.get_daemon_heartbeats()
        return bool(beats) and any(b.timestamp > time.time() - 20 and b.timestamp >= self._spawned_at("daemon")
                                   for b in beats.values())

    def _spawned_at(self, name: str) -> float:
        return self._spawn_times.get(name, 0)

    def start_webserver(self) -> None:
        self._spawn("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p",
                                  str(self.ports["webserver"]), "-w", str(self.workspace)])
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.ports['webserver']}/server_info"),
                   "webserver", 120)

    def start_api(self, workers: int = 1) -> None:
        """uvicorn; with workers > 1, that many API processes behind one port (the job store is
        migrated by then: __enter__ made the users)."""
        extra = ["--workers", str(workers)] if workers > 1 else []
        self._spawn("api", [str(BIN / "uvicorn"), "upload_api.app:app", "--host", "127.0.0.1", "--port",
                            str(self.ports["api"]), "--no-access-log", *extra])
        self._wait(lambda: self._http_ok(f"{self.url}/api/health", (200, 503)), "api", 60)

    def start_celery_worker(self, name: str = "celery_1", queues: str | None = None) -> None:
        """A Celery run worker (scripts/celery_worker.sh; the Celery profile only) named `name`; ready
        when it answers a ping over the broker."""
        self._spawn(name, [str(ROOT / "scripts" / "celery_worker.sh"), "-n", name,
                           *(["-Q", queues] if queues else [])])
        self._wait(lambda: self.celery_ping(name), name, 120)

    def celery_ping(self, name: str) -> bool:
        from celery import Celery

        app = Celery(broker=self.env["DUBBING_CELERY_BROKER"])
        try:
            return any(key.startswith(f"{name}@") for reply in app.control.ping(timeout=1) for key in reply)
        finally:
            app.close()

    @staticmethod
    def _http_ok(url: str, ok=(200,)) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code in ok
        except httpx.HTTPError:
            return False

    def _wait(self, ready, name: str, timeout: float) -> None:
        proc = self.procs[name]
        deadline = time.time() + max(timeout, self.patience_s)
        while time.time() < deadline:
            if proc.poll() is not None:
                raise GateFailed(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise GateFailed(f"{name} not ready in {timeout:.0f} s:\n{self.log_tail(name)}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, name: str) -> None:
        self.stop(name)
        getattr(self, f"start_{name}")()

    def stop_all(self) -> None:
        for name in ("api", "webserver", "daemon", "code_server", *self.procs):
            self.stop(name)

    # -- clients, state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def client(self, who: str) -> Client:
        return Client(self.url, self.tokens[who], who)

    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])

    def runs_of(self, job_id: str) -> list:
        import dagster as dg

        with self.instance() as instance:
            return list(reversed(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": job_id}))))

    def transient_retries(self, job_id: str) -> dict[str, int]:
        """Per stage, how many of the job's runs failed in it for a transient reason and were retried from it
        (the run's dubbing/transient_failure tag, set by dubbing_assets/retries.py): such a stage may have been
        materialised by the failed run before the failure (Dagster's event write that failed came after the
        materialisation's own) and again by the retry."""
        import dagster as dg

        counts: dict[str, int] = {}
        with self.instance() as instance:
            for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": job_id})):
                if run.status.value != "FAILURE" or not run.tags.get("dubbing/transient_failure"):
                    continue
                for stat in instance.get_run_step_stats(run.run_id):
                    if stat.status is not None and stat.status.value == "FAILURE":
                        counts[stat.step_key] = counts.get(stat.step_key, 0) + 1
        return counts

    def materialisations(self, job_id: str) -> dict[str, int]:
        """How many times each asset was materialised for the job's partition."""
        import dagster as dg

        counts: dict[str, int] = {}
        with self.instance() as instance:
            for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": job_id})):
                records = instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
                for record in records:
                    key = record.event_log_entry.dagster_event.asset_key.to_user_string()
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def descendants(self, name: str) -> list[tuple[int, str]]:
        """(pid, command line) of every process below one of ours."""
        root = self.procs[name].pid
        children: dict[int, list[int]] = {}
        cmd: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                cmd[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                found.append((child, cmd.get(child, "")))
                todo.append(child)
        return found

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def dump_logs(self) -> None:
        main = ("code_server", "daemon", "webserver", "api")
        for name in (*main, *sorted(set(self._spawn_times) - set(main))):  # + Celery workers
            print(f"----- {name} log (last lines; all in {self.root}) -----", file=sys.stderr)
            print(self.log_tail(name), file=sys.stderr)


def run_gate(name: str, body) -> None:
    """Run a gate: print its one-line summary (PASS/FAIL with figures) and exit 0/1."""
    started = time.time()
    try:
        summary = body()
    except Exception as exc:
        traceback.print_exc()
        print(f"{name}: FAIL after {time.time() - started:.0f} s: {exc}".splitlines()[0])
        sys.exit(1)
    print(f"{name}: PASS in {time.time() - started:.0f} s: {summary}")
