"""Smoke test of benchmarks 4 and 6 (issue 8): bench/launch_latency.py and bench/partition_scale.py at
their --quick size, side by side in subprocesses, on the deployed shape over Postgres. Checks that
each writes a sane results dict; no timing is asserted (the figures are in docs/benchmarks.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def start(script: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / script), "--quick", "--json", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, out: Path, timeout: float) -> dict:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    if proc.returncode != 0 or not out.exists():
        noise = ('{"ts"', "\x1b[")
        useful = [ln for ln in (stdout + stderr).splitlines() if not ln.startswith(noise)]
        pytest.fail(f"{proc.args[1]} exit {proc.returncode}:\n" + "\n".join(useful[-60:]))
    return json.loads(out.read_text())


def test_launch_latency_and_partition_scale_quick(tmp_path):
    from conftest import _postgres_or_fail

    _postgres_or_fail().dispose()
    launch_out, scale_out = tmp_path / "launch.json", tmp_path / "scale.json"
    launch, scale = start("launch_latency.py", launch_out), start("partition_scale.py", scale_out)
    try:
        scale_result = finish(scale, scale_out, timeout=600)
        launch_result = finish(launch, launch_out, timeout=600)
    finally:
        for proc in (scale, launch):
            if proc.poll() is None:  # SIGINT: the harness stops its processes and drops its database
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()

    assert launch_result["benchmark"] == "launch_latency" and launch_result["jobs"] == 3
    assert len(launch_result["runs"]) == 3
    assert len({r["run_id"] for r in launch_result["runs"]}) == 3  # one run per job
    for run in launch_result["runs"]:
        parts = sum(run[p] for p in ("sensor", "enqueue", "queue", "worker"))
        assert 0 < run["total"] < 600 and abs(parts - run["total"]) < 0.01
        assert run["worker"] > 0 and run["queue"] >= 0
    assert 0 < launch_result["latency"]["p50_s"] <= launch_result["latency"]["p95_s"]
    assert isinstance(launch_result["targets_met"], bool)

    assert scale_result["benchmark"] == "partition_scale" and scale_result["partitions"] == 500
    sensor = scale_result["sensor_tick"]
    assert sensor["first_tick_s"] > 0 and sensor["steady"]["n"] == 5 and sensor["full_batch"]["pending_uploads"] == 50
    for name in ("list first page", "list later page", "job view", "job timeline"):
        route = scale_result["api"][name]
        assert 0 < route["p50_ms"] <= route["p95_ms"] and route["n"] == 5
    assert isinstance(scale_result["targets_met"], bool)
