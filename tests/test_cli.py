"""`dubbing dub` end to end, as a user runs it: a real process, the embedded instance."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "dubbing"


def run_cli(args, tmp_path, **env):
    environ = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "DUBBING_DATA_DIR": str(tmp_path / "data"),
               **env}
    environ.pop("DATABASE_URL", None)
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=environ, timeout=600)


@pytest.mark.slow
def test_dub_a_generated_file_end_to_end(espeak_video, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["dub", str(espeak_video), "--to", "es", "--from", "en", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [Path(line) for line in proc.stdout.split()]
    assert sorted(p.name for p in printed) == sorted(
        ["talk_espeak.es.mkv", "talk_espeak.es.srt", "talk_espeak.es.vtt", "talk_espeak.en.srt",
         "talk_espeak.en.vtt"])
    assert all(p.parent == out and p.stat().st_size > 0 for p in printed)
    # a progress bar per stage, in pipeline order
    for i, stage in enumerate(["source_media", "extracted_audio", "transcript", "translation",
                               "dubbed_speech", "dubbed_mix", "dubbed_video"], start=1):
        assert f"[{i}/7] {stage}" in proc.stderr
    assert "5/5" in proc.stderr  # the TTS bar counts segments
    # the run went through the instance in DAGSTER_HOME, and the UI would show it
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].job_name == "dub_job" and runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].tags["dubbing/origin"] == "cli"
    assert (tmp_path / "home" / "dagster.yaml").exists()


@pytest.mark.slow
def test_a_dub_that_needs_review_exits_3_and_says_why_and_where(rushed_video, tmp_path):
    proc = run_cli(["dub", str(rushed_video), "--to", "es"], tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dubbing: ")]
    assert lines[0].startswith("dubbing: needs review: speech_kept: ") and "do not fit" in lines[0], lines
    assert lines[-1].startswith("dubbing: not published; the unpublished dub is kept in ")
    kept = lines[-1].split("kept in ")[1].split(" (job ")[0]
    assert Path(kept).name == "dub_track.wav" and Path(kept).stat().st_size > 0
    assert "--fit extend_video" in lines[-1] and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # no outputs to print: nothing was published
    out = tmp_path / "held"
    proc = run_cli(["dub", str(rushed_video), "--to", "es", "--fit", "extend_video", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(Path(p).suffix for p in proc.stdout.split()) == [".mkv", ".srt", ".srt", ".vtt", ".vtt"]


def test_dub_failure_exits_non_zero_with_one_line_reason(tmp_path):
    bad = tmp_path / "holiday.mp4"
    bad.write_text("not a video")
    proc = run_cli(["dub", str(bad), "--to", "es"], tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dubbing: source_media: holiday.mp4 is not a readable video or audio file"), last
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_dub_rejects_missing_file_and_bad_language(tmp_path):
    proc = run_cli(["dub", str(tmp_path / "nope.mp4"), "--to", "es"], tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip() == f"dubbing: input file not found: {tmp_path / 'nope.mp4'}"
    real = tmp_path / "x.mp4"
    real.write_bytes(b"x")
    proc = run_cli(["dub", str(real), "--to", "Spanish!"], tmp_path)
    assert proc.returncode == 1 and "is not a language code" in proc.stderr


def test_user_add_and_token_create_work_against_the_running_service(api):
    env = {**api.env}
    add = subprocess.run([str(BIN), "user", "add", "Dave", "--password-stdin"], input="dave-password-123\n",
                         capture_output=True, text=True, env=env, timeout=120)
    assert add.returncode == 0, add.stderr
    assert "added user dave" in add.stdout
    assert "dave-password-123" not in add.stdout + add.stderr
    tok = subprocess.run([str(BIN), "token", "create", "dave"], capture_output=True, text=True, env=env, timeout=120)
    assert tok.returncode == 0, tok.stderr
    token = tok.stdout.strip().splitlines()[-1]
    assert token.startswith("dub_") and " " not in token
    assert token not in tok.stderr  # the audit line names the event, never the token
    import httpx

    me = httpx.get(f"{api.url}/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["name"] == "dave" and me.json()["role"] == "user"
    login = httpx.post(f"{api.url}/api/auth/login", json={"username": "dave", "password": "dave-password-123"})
    assert login.status_code == 200

    again = subprocess.run([str(BIN), "user", "add", "dave", "--password-stdin"], input="another-password-1\n",
                           capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 1 and again.stderr.strip() == "dubbing: user dave already exists"
    short = subprocess.run([str(BIN), "user", "add", "erin", "--admin", "--password-stdin"], input="short\n",
                           capture_output=True, text=True, env=env, timeout=120)
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    nobody = subprocess.run([str(BIN), "token", "create", "zed"], capture_output=True, text=True, env=env, timeout=120)
    assert nobody.returncode == 1 and "dubbing user add zed" in nobody.stderr
