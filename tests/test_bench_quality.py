"""Smoke test of bench/quality.py (figure 9): the --quick run finishes on all five talks and three fits, and
what is behaviour is asserted (extend_video cuts nothing, review names every cut, the old fit cuts the rushed
talk silently where the new one reports it); the timings and ratios are figures for docs/benchmarks.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quality_bench_quick_json(tmp_path):
    out = tmp_path / "quality.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["talks"]) == {"normal", "fast", "long", "dialogue", "music"}
    fast = res["talks"]["fast"]
    assert fast["words_per_minute"] > 200
    assert fast["before"]["cut_segments"] > 0 and fast["review"]["cut_segments"] > 0
    assert "speech_kept" in fast["review"]["failed_checks"]
    assert fast["extend_video"]["cut_words"] == 0 and fast["extend_video"]["held_s"] > 0
    assert res["talks"]["normal"]["review"]["failed_checks"] == []
    met = res["targets_met"]
    assert met["fast_extend_video_cuts_no_words"] and met["review_names_every_cut_segment"]
