"""Smoke runs of `make bench`'s driver and of the API-load benchmark (issue 8, figure 5) at small
sizes, so the scripts keep working; the figures themselves come from `make bench`, not from here
(no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_api_load_quick_run_reports_both_modes_for_both_routes(tmp_path):
    from conftest import _postgres_or_fail

    _postgres_or_fail().dispose()
    out = tmp_path / "api.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "api_load.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["jobs_in_store"] == 500 and figures["clients"] == 50
    for route in ("GET /api/jobs/{id}", "GET /api/jobs/{id} (finished run)", "GET /api/uploads/{id}"):
        modes = figures["results"][route]
        assert set(modes) == {"closed_loop", "paced_1s"}
        for r in modes.values():
            assert r["errors"] == 0, r
            assert r["requests"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] and r["rps"] > 0
    assert set(figures["targets_met"]) == {f"{route} {mode}" for route in figures["results"]
                                           for mode in ("closed_loop", "paced_1s")}


def test_run_all_refuses_an_unknown_benchmark_and_names_the_known_ones(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--only", "api_lod",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown benchmark(s): api_lod" in proc.stderr and "api_load" in proc.stderr


def test_run_all_summarises_a_run_and_reports_a_benchmark_that_fails(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import run_all

    fake = tmp_path / "fake_ok.py"
    fake.write_text("import json, sys\nopen(sys.argv[sys.argv.index('--json') + 1], 'w').write("
                    "json.dumps({'targets_met': {'a': True, 'b': False}}))\n")
    broken = tmp_path / "fake_broken.py"
    broken.write_text("raise SystemExit('cannot reach Postgres')\n")
    monkeypatch.setattr(run_all, "BENCHMARKS", [("ok", str(fake), "figure", "target"),
                                                ("broken", str(broken), "figure", "target")])
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--out", str(tmp_path / "out")])
    assert run_all.main() == 1
    (run,) = (tmp_path / "out").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["benchmarks"]["ok"]["ok"] and not summary["benchmarks"]["broken"]["ok"]
    assert "cannot reach Postgres" in "\n".join(summary["benchmarks"]["broken"]["log_tail"])
    table = (run / "summary.md").read_text()
    assert "| ok | figure | target | NOT met |" in table and "| broken | figure | target | failed to run |" in table
