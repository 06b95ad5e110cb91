"""The reliability gates (scripts/e2e_*.py), bounded, on every `make test`: each gate is a script that
starts the deployed shape (uvicorn, gRPC code server, dagster-daemon, dagster-webserver) on a
Postgres database of its own and prints a one-line summary with its figures. `make gates` runs the
full-size versions (the nightly CI job)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.gates]

GATES = {
    "e2e_concurrency_two_users": ["--jobs-per-user", "2"],
    "e2e_upload_resume": ["--uploads", "20"],
    "e2e_job_recovery": ["--queued", "3"],
    "e2e_cancel_midrun": [],
    "e2e_db_reconnect": ["--restarts", "2"],  # make gates: 20
    "e2e_smoke_web": [],
    "e2e_schemathesis": ["--max-examples", "15"],
}


def run(name: str, args: list[str], timeout: int = 1500) -> str:
    from conftest import _postgres_or_fail

    _postgres_or_fail().dispose()  # under CI=true a missing Postgres fails here, as everywhere
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{name}: ")]
    if proc.returncode != 0 or not summary or "PASS" not in summary[-1]:
        noise = ('{"ts"', "\x1b[")
        useful = [ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith(noise)]
        pytest.fail(f"{name} exit {proc.returncode}:\n" + "\n".join(useful[-80:]))
    print(summary[-1])
    return summary[-1]


@pytest.mark.parametrize("name", [g for g in GATES if g != "e2e_db_reconnect"])
def test_gate(name):
    run(name, GATES[name])


def test_gate_db_reconnect():
    """Stops and starts the local PostgreSQL cluster: needs pg_ctlcluster and the right to use it.
    Where Postgres is a service container (GitHub Actions), set DUBBING_GATES_NO_PG_RESTART=1 to leave
    this one gate out explicitly; it is never left out silently."""
    if not Path("/etc/postgresql").is_dir() or os.geteuid() != 0:
        if os.environ.get("DUBBING_GATES_NO_PG_RESTART") == "1":
            pytest.skip("DUBBING_GATES_NO_PG_RESTART=1: no local cluster to restart here")
        pytest.fail("e2e_db_reconnect needs a local PostgreSQL cluster it may stop and start (pg_ctlcluster, as "
                    "root); set DUBBING_GATES_NO_PG_RESTART=1 where Postgres is a service container")
    run("e2e_db_reconnect", GATES["e2e_db_reconnect"])
