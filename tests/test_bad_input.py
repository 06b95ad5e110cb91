"""Inputs that are not dubbable fail at source_media with a message naming the problem, and nothing
is written to the outputs. A file without speech still finishes, with the original audio only."""

import json
import subprocess

import dagster as dg
import pytest

import mediagen
from pipeline_helpers import failure_description, materializations, run_dub, storage


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("inst"))) as inst:
        yield inst


def make_zero(tmp_path, _video=None):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    return p


def make_text(tmp_path, _video=None):
    p = tmp_path / "notes.mp4"
    p.write_text("this is a shopping list, not a video\n" * 50)
    return p


def make_truncated(tmp_path, espeak_video):
    p = tmp_path / "cut.mp4"
    data = espeak_video.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def make_truncated_mkv(tmp_path, espeak_video):
    full = tmp_path / "full.mkv"
    mediagen.ffmpeg("-i", str(espeak_video), "-c", "copy", str(full))
    p = tmp_path / "cut.mkv"
    data = full.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.6)])
    return p


def make_no_audio(tmp_path, _video=None):
    return mediagen.make_video_without_audio(tmp_path / "mute.mp4")


@pytest.mark.parametrize("maker, expected", [
    (make_zero, "is empty (0 bytes)"),
    (make_text, "is not a readable video or audio file"),
    (make_truncated, "is not a readable video or audio file"),  # MP4 cut in half: no moov atom
    (make_truncated_mkv, "truncated"),  # MKV cut: headers readable, audio ends early
    (make_no_audio, "has no audio stream"),
])
def test_rejected_input_fails_clearly_and_writes_no_outputs(instance, tmp_path, espeak_video, maker, expected):
    src = maker(tmp_path, espeak_video)
    job, result = run_dub(instance, src)
    assert not result.success
    message = failure_description(result)
    assert message.startswith("source_media: ") and expected in message, message
    assert src.name in message
    assert str(src.parent) not in message  # no server paths in messages
    failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed == ["source_media"]
    assert not materializations(result)
    assert not storage().outputs_dir(job.id).exists()


def test_no_speech_finishes_with_original_audio_only(instance, tmp_path):
    src = mediagen.make_silent_audio_video(tmp_path / "tone.mp4", seconds=6)
    job, result = run_dub(instance, src)
    assert result.success
    mats = materializations(result)
    assert mats["transcript"]["segments"] == 0 and mats["transcript"]["no_speech"] is True
    assert mats["dubbed_video"]["no_speech"] is True
    assert "original audio only" in mats["dubbed_video"]["note"]
    out = storage().outputs_dir(job.id)
    assert [p.name for p in out.iterdir()] == ["tone.es.mkv"]
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out / "tone.es.mkv")],
        capture_output=True, text=True, check=True).stdout)
    kinds = [s["codec_type"] for s in info["streams"]]
    assert kinds == ["video", "audio"]
    assert info["streams"][1]["tags"]["language"] == "eng"
