"""The whole dub job on a real Dagster instance: SQLite (espeak-ng speech) and PostgreSQL (Piper
speech, job store on Postgres too). Media made by the tests; real ffmpeg, faster-whisper, apertium,
espeak-ng."""

import json
import subprocess

import dagster as dg
import pytest

import mediagen
from pipeline_helpers import check_results, materializations, run_dub, storage
from resources import media
from resources.translate import Apertium


def ffprobe_streams(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def assert_finished_dub(job, result, src, max_wer):
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    mats = materializations(result)
    assert set(mats) == {"source_media", "extracted_audio", "transcript", "translation", "dubbed_speech",
                         "dubbed_mix", "dubbed_video"}
    assert check_results(result) == {name: True for name in (
        "speech_speed", "speech_kept", "coverage", "no_overlap", "round_trip", "loudness", "output_streams", "sync")}
    st = storage()

    # transcript: close to the known script
    transcript = st.read_json(job.id, "transcript.json")
    hyp = " ".join(s["text"] for s in transcript["segments"])
    wer = mediagen.word_error_rate(" ".join(mediagen.SCRIPT), hyp)
    assert wer <= max_wer, (wer, hyp)
    for seg in transcript["segments"]:
        assert seg["words"] and 0 <= seg["start"] < seg["end"]
        assert 0 < seg["confidence"] <= 1

    # translation: apertium's Spanish for the recognised text, timing kept
    translation = st.read_json(job.id, "translation.json")
    assert translation["backend"] == "apertium"
    expected = Apertium().translate([s["text"] for s in transcript["segments"]], "en", "es")
    assert [s["text"] for s in translation["segments"]] == expected
    assert [(s["start"], s["end"]) for s in translation["segments"]] == \
           [(s["start"], s["end"]) for s in transcript["segments"]]
    spanish = " ".join(expected).lower()
    assert any(w in spanish.split() for w in ("el", "la", "en", "y", "de")), spanish

    # dubbed speech: no segment overlaps the next; speed within the cap
    speech = st.read_json(job.id, "speech.json")["segments"]
    assert len(speech) == len(translation["segments"])
    for a, b in zip(speech, speech[1:]):
        assert a["placed_end"] <= b["placed_start"], (a, b)
    # the measured speed-up: the natural speech's length over the placed speech's (resampling rounds it a little)
    assert all(0.99 <= s["speed"] <= 1.36 for s in speech), [s["speed"] for s in speech]

    # the export: one video, two audio tracks tagged spa/eng (dub first and default), subtitles
    out_dir = st.outputs_dir(job.id)
    mkv = out_dir / f"{src.stem}.es.mkv"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([
        mkv.name, f"{src.stem}.es.srt", f"{src.stem}.es.vtt", f"{src.stem}.en.srt", f"{src.stem}.en.vtt"])
    info = ffprobe_streams(mkv)
    kinds = [s["codec_type"] for s in info["streams"]]
    assert kinds.count("video") == 1
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert [a["tags"]["language"] for a in audio] == ["spa", "eng"]
    assert audio[0]["disposition"]["default"] == 1 and audio[1]["disposition"]["default"] == 0
    assert all(a["tags"].get("title") for a in audio)
    assert [a["codec_name"] for a in audio] == ["opus", "aac"]  # the dub mix; the original copied as is
    subs = [s for s in info["streams"] if s["codec_type"] == "subtitle"]
    assert [s["tags"]["language"] for s in subs] == ["spa", "eng"]
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert video["codec_name"] == "h264"  # copied, not re-encoded
    in_duration = float(ffprobe_streams(src)["format"]["duration"])
    out_duration = float(info["format"]["duration"])
    assert abs(out_duration - in_duration) / in_duration <= 0.01, (in_duration, out_duration)

    # the mix is loudness-normalised to -16 LUFS
    loud = media.measure_loudness(mkv)  # first audio stream = the dub mix
    assert abs(loud.integrated_lufs - (-16.0)) <= 1.0, loud
    assert mats["dubbed_mix"]["integrated_lufs"] == pytest.approx(-16.0, abs=1.0)

    srt = (out_dir / f"{src.stem}.es.srt").read_text()
    assert srt.startswith("1\n00:00:") and expected[0] in srt
    assert (out_dir / f"{src.stem}.es.vtt").read_text().startswith("WEBVTT")
    return mats


@pytest.mark.slow
def test_whole_job_on_sqlite_instance_with_espeak_speech(espeak_video, tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert instance.run_storage.__class__.__name__.startswith("Sqlite")
        job, result = run_dub(instance, espeak_video)
        mats = assert_finished_dub(job, result, espeak_video, max_wer=0.25)
        # the run is recorded on the instance, partition by partition
        assert instance.get_latest_materialization_event(
            dg.AssetKey("dubbed_video")).dagster_event.partition == job.id
    assert mats["dubbed_speech"]["engine"] == "espeak"
    assert mats["dubbed_video"]["duration_ratio"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
@pytest.mark.postgres
def test_whole_job_on_postgres_instance_with_piper_speech(piper_video, pg_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", pg_url)  # the job store on Postgres too
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": pg_url}}}) as instance:
        assert "Postgres" in type(instance.run_storage).__name__
        job, result = run_dub(instance, piper_video)
        assert_finished_dub(job, result, piper_video, max_wer=0.10)
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": job.id}))
        assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    import sqlalchemy as sa

    with sa.create_engine(pg_url).connect() as conn:
        assert conn.execute(sa.text("select count(*) from dub_jobs where id = :i"), {"i": job.id}).scalar() == 1


@pytest.mark.slow
def test_mp4_container_option(espeak_video, tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job, result = run_dub(instance, espeak_video, options={"container": "mp4"})
    assert result.success
    out = storage().outputs_dir(job.id) / "talk_espeak.es.mp4"
    info = ffprobe_streams(out)
    assert [s["codec_type"] for s in info["streams"]] == ["video", "audio", "audio", "subtitle", "subtitle"]
    assert [s["codec_name"] for s in info["streams"]] == ["h264", "aac", "aac", "mov_text", "mov_text"]
    assert [s["tags"]["language"] for s in info["streams"][1:]] == ["spa", "eng", "spa", "eng"]
    assert info["streams"][1]["disposition"]["default"] == 1


@pytest.mark.slow
def test_revoicing_in_the_same_language_keeps_both_subtitle_pairs(espeak_video, tmp_path):
    """English to English (translator passthrough, a new voice): the dubbed and the original subtitles used to
    get the same file name, so the export failed; the original's are now <stem>.en.original.srt/.vtt."""
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        job, result = run_dub(instance, espeak_video, target="en",
                              options={"translator": "passthrough", "tts_engine": "espeak"})
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    stem = espeak_video.stem
    names = sorted(o.name for o in storage().outputs(job.id))
    assert names == sorted([f"{stem}.en.mkv", f"{stem}.en.srt", f"{stem}.en.vtt", f"{stem}.en.original.srt",
                            f"{stem}.en.original.vtt"])
    assert check_results(result) == {name: True for name in (
        "speech_speed", "speech_kept", "coverage", "no_overlap", "round_trip", "loudness", "output_streams", "sync")}
    heard = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                 and e.event_specific_data.check_name == "round_trip")
    assert heard.metadata["skipped"].value is False and heard.metadata["wer"].value <= 0.35  # en: really heard
