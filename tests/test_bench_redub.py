"""Smoke test of bench/redub.py: the --quick run finishes and its JSON is sane (no timing asserts: the figures
live in docs/benchmarks.md). The counts are behaviour, so they are asserted: the cached re-dub synthesises one
segment, the uncached one all of them, and neither materialises anything upstream of the speech."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_redub_bench_quick_json(tmp_path):
    out = tmp_path / "redub.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "redub.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "redub_cached ..." in proc.stderr  # a progress line per phase
    res = json.loads(out.read_text())
    n = res["whole_dub"]["dubbed_speech"]["segments"]
    assert n >= 5 and res["whole_dub"]["dubbed_speech"]["tts_synthesized"] == n
    assert len(res["whole_dub"]["assets"]) == 7
    for name, synthesized in (("redub_cached", 1), ("redub_uncached", n)):
        run = res[name]
        assert run["assets"] == ["dubbed_mix", "dubbed_speech", "dubbed_video"], run
        assert (run["dubbed_speech"]["tts_synthesized"], run["dubbed_speech"]["tts_reused"]) == (synthesized,
                                                                                              n - synthesized)
    for key in ("ratio_redub_to_whole", "ratio_cached_to_uncached", "ratio_tts_cached_to_uncached"):
        assert math.isfinite(res[key]) and res[key] > 0, key
