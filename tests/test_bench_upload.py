"""Smoke test of the upload throughput benchmark (bench/upload_throughput.py --quick): it runs end to
end against a real uvicorn and reports sane, verified figures. No timing asserts: the machines are
shared."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_upload_throughput_quick(tmp_path):
    from conftest import _postgres_or_fail

    _postgres_or_fail().dispose()  # the benchmark's API runs on a Postgres database of its own
    out = tmp_path / "upload.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "upload_throughput.py"), "--quick", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=570)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["sizes_mib"] == [16, 64]
    for name in ("dd_MBps", "curl_put_MBps", "httpx_put_MBps"):
        assert res["baselines"][name] > 0
    for proto in ("chunk_api", "tus"):
        for key in ("16MiB", "64MiB"):
            run = res[proto][key]
            assert run["MBps"] > 0 and run["verified"] is True
            assert run["server_peak_rss_mb"] >= run["server_start_rss_mb"] > 20
            assert res["ratio_vs_curl"][proto][key] > 0
    assert res["chunk_api"]["64MiB"]["chunk_bytes"] == 8 * 1024 * 1024  # the production default
    assert isinstance(res["targets_met"], bool) and isinstance(res["rss_growth_mb"], (int, float))


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_upload_s3_quick(tmp_path):
    """bench/upload_s3.py --quick: the API on a real SeaweedFS S3 against boto3's own multipart upload."""
    from conftest import _postgres_or_fail

    _postgres_or_fail().dispose()
    out = tmp_path / "upload_s3.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "upload_s3.py"), "--quick", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["sizes_mib"] == [16] and res["boto3_MBps"]["16MiB"] > 0
    for proto in ("chunk_api", "tus"):
        run = res[proto]["16MiB"]
        assert run["MBps"] > 0 and run["verified"] is True and res["ratio_vs_boto3"][proto]["16MiB"] > 0
    assert res["chunk_api"]["16MiB"]["chunk_bytes"] == 8 * 1024 * 1024  # one chunk is one S3 part
