"""Smoke test of bench/whole_dub.py: the --quick run finishes and its JSON is sane (no timing asserts:
the machines are shared, and the figures themselves live in docs/benchmarks.md)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["source_media", "extracted_audio", "transcript", "translation", "dubbed_speech",
          "dubbed_mix", "dubbed_video"]


@pytest.mark.slow
def test_whole_dub_quick_json(tmp_path):
    out = tmp_path / "whole_dub.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "whole_dub.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1/1: dagster" in proc.stderr  # a progress line per phase
    res = json.loads(out.read_text())
    assert 20 < res["media_s"] < 45
    for key in ("dagster_wall_s", "direct_wall_s", "peak_rss_mb", "dagster_cpu_s", "direct_cpu_s"):
        assert res[key] > 0, key
    for key in ("rtf", "overhead_ratio", "cpu_ratio"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert set(res["stages"]) == set(STAGES)
    assert all(v is not None and v > 0 for v in res["stages"].values()), res["stages"]
    assert set(STAGES) <= set(res["direct_stages"])
    assert set(res["targets_met"]) == {"rtf", "overhead_ratio"}
    assert all(isinstance(v, bool) for v in res["targets_met"].values())
