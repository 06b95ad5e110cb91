"""Smoke test of bench/rotation.py (figure 8): the --quick run finishes and both exports show the source's
picture upright (behaviour, asserted); the timings are figures for docs/benchmarks.md, never asserted."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_rotation_bench_quick_json(tmp_path):
    out = tmp_path / "rotation.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "rotation.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["rotation"] == 90
    assert res["upright"]["mp4"] < 12 and res["upright"]["mkv"] < 12, res["upright"]
    for side in ("copy_mp4", "upright_mkv"):
        assert res[side]["wall_s"] > 0
    assert res["ratio_wall"] > 0 and res["reencode_rtf"] > 0
