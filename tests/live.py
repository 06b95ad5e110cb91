"""Real processes for API tests: uvicorn on 127.0.0.1 (and, when asked, dagster-daemon) on their
own data folder, job store and DAGSTER_HOME."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    root: Path
    env: dict
    port: int = 0
    procs: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, who: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def start_api(self) -> None:
        self.port = self.port or free_port()
        log = open(self.root / "api.log", "ab")
        self.procs["api"] = subprocess.Popen(
            [str(BIN / "uvicorn"), "upload_api.app:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-access-log"], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            assert self.procs["api"].poll() is None, self.log("api")
            time.sleep(0.2)
        raise AssertionError("uvicorn did not start: " + self.log("api"))

    def start_daemon(self) -> None:
        log = open(self.root / "daemon.log", "ab")
        self.procs["daemon"] = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")], cwd=ROOT, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, name: str, sig=signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def make_stack(root: Path) -> Stack:
    """Environment, migrated job store, users alice/bob (user) and root (admin) with API tokens."""
    env = {**os.environ, "DUBBING_DATA_DIR": str(root / "data"), "DAGSTER_HOME": str(root / "home"),
           "PATH": f"{BIN}:{os.environ['PATH']}", "UPLOAD_SENSOR_INTERVAL_S": "1",
           "UPLOAD_CHUNK_BYTES": str(256 * 1024)}
    env.pop("DATABASE_URL", None)
    stack = Stack(root=root, env=env)
    os.environ["DUBBING_DATA_DIR"] = env["DUBBING_DATA_DIR"]
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    from resources import settings
    from resources.accounts import Accounts

    settings.ensure_dagster_home()
    accounts = Accounts()
    for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin")):
        user = accounts.add_user(name, f"{name}-password-123", role=role)
        stack.users[name] = user
        stack.tokens[name] = accounts.create_token(user, "tests")
    return stack


@contextlib.contextmanager
def running_stack(root: Path, env: dict | None = None, daemon: bool = False):
    """make_stack + uvicorn (and dagster-daemon), stopped afterwards; the test process's
    DUBBING_DATA_DIR / DAGSTER_HOME (set by make_stack) are put back."""
    saved = {k: os.environ.get(k) for k in ("DUBBING_DATA_DIR", "DAGSTER_HOME")}
    stack = make_stack(root)
    stack.env.update(env or {})
    try:
        stack.start_api()
        if daemon:
            stack.start_daemon()
        yield stack
    finally:
        stack.stop_all()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload_file(client: httpx.Client, path: Path, target_lang: str = "es", **complete) -> tuple[str, str]:
    """Upload a file through the chunk API (with chunk and whole-file checksums) and complete it:
    (upload_id, job_id)."""
    import hashlib

    data = path.read_bytes()
    r = client.post("/api/uploads/init", json={"filename": path.name, "size_bytes": len(data),
                                              "content_type": "video/mp4",
                                              "sha256": hashlib.sha256(data).hexdigest()})
    assert r.status_code == 201, r.text
    init = r.json()
    size = init["chunk_bytes"]
    for i in range(init["total_chunks"]):
        piece = data[i * size:(i + 1) * size]
        r = client.put(f"/api/uploads/{init['upload_id']}/chunk", params={"index": i}, content=piece,
                       headers={"X-Chunk-SHA256": hashlib.sha256(piece).hexdigest()})
        assert r.status_code == 200, r.text
    r = client.post(f"/api/uploads/{init['upload_id']}/complete", json={"target_lang": target_lang, **complete})
    assert r.status_code == 200, r.text
    return init["upload_id"], r.json()["job_id"]
