"""The dub quality gate: every check fails on a dub made to fail it (real stages on real artifacts, each
tampered with in the one way that check exists to catch), a blocking failure publishes nothing and leaves the
job needing review, "publish anyway" accepts exactly the failed checks, and `fit` decides what happens to
speech that cannot fit (review, cut, extend_video), through the whole dub_job."""

import shutil

import dagster as dg
import numpy as np
import pytest

import mediagen
import mediashapes
from dubbing_assets import checks
from dubbing_assets.dubbed_mix import mix_job
from dubbing_assets.dubbed_speech import Placement, speak_job
from dubbing_assets.dubbed_video import export_job, output_stem
from dubbing_assets.fit import Policy, Timeline
from dubbing_assets.jobs import stages_from
from dubbing_assets.round_trip import round_trip_job
from dubbing_assets.stage import ACCEPT_TAG
from pipeline_helpers import materializations, run_dub, storage
from resources import media
from resources.asr import AsrResource
from resources.jobstore import JobStore
from resources.tts import TtsResource
from upload_api import dagster_view as dv

pytestmark = pytest.mark.slow
ALL = {"speech_speed", "speech_kept", "coverage", "no_overlap", "round_trip", "loudness", "output_streams", "sync"}


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("quality_inst"))) as inst:
        yield inst


@pytest.fixture(scope="module")
def base_job(instance, espeak_video):
    """An unhurried talk dubbed whole: every check passes (the starting point each test tampers with)."""
    job, result = run_dub(instance, espeak_video)
    assert result.success
    return job


def copy_job(base, **options):
    """A new job over the same input, with a copy of the base job's stage artifacts."""
    store = JobStore()
    job = store.create_job(input_path=base.input_path, filename=base.filename, source_lang=base.source_lang,
                           target_lang=base.target_lang, options={**base.options.to_dict(), **options})
    st = storage()
    shutil.copytree(st.job_dir(base.id) / "work", st.job_dir(job.id) / "work")
    return job


def results_of(result) -> dict[str, dg.AssetCheckResult]:
    return {r.check_name: r for r in result.check_results}


def evaluations(result) -> dict[str, object]:
    return {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def failed_blocking(check: dg.AssetCheckResult) -> bool:
    return not check.passed and check.severity == dg.AssetCheckSeverity.ERROR


# --- each check fails on a dub made to fail it -------------------------------------------------------


def test_base_job_passes_every_check(base_job):
    st = storage()
    mats = speak_job(base_job, st, TtsResource(engine="espeak"))
    assert all(r.passed for r in mats.check_results), [(r.check_name, r.description) for r in mats.check_results]


def test_coverage_fails_when_a_translated_line_is_silent(base_job):
    job = copy_job(base_job)
    st = storage()
    translation = st.read_json(job.id, "translation.json")
    translation["segments"][1]["text"] = "…"  # something is there, but espeak-ng says nothing
    st.write_json(job.id, "translation.json", translation)
    got = results_of(speak_job(job, st, TtsResource(engine="espeak")))
    silent_id = translation["segments"][1]["id"]
    assert failed_blocking(got["coverage"]), got["coverage"]
    assert got["coverage"].metadata["silent_segments"].value == [silent_id]
    assert f"{silent_id}" in got["coverage"].description
    assert got["speech_kept"].passed and got["no_overlap"].passed


def test_speech_kept_names_what_does_not_fit_and_fit_decides(base_job):
    st = storage()
    words = "una frase muy larga que no cabe de ninguna manera en el tiempo que tenía el orador original " * 2
    outcome = {}
    for fit in ("review", "cut", "extend_video"):
        job = copy_job(base_job, fit=fit)
        translation = st.read_json(job.id, "translation.json")
        translation["segments"][0]["text"] = words.strip()
        st.write_json(job.id, "translation.json", translation)
        result = speak_job(job, st, TtsResource(engine="espeak"))
        outcome[fit] = (results_of(result)["speech_kept"], st.read_json(job.id, "speech.json"))
    kept, speech = outcome["review"]
    assert failed_blocking(kept)
    cut = kept.metadata["cut_segments"].value
    assert [c["id"] for c in cut] == [speech["segments"][0]["id"]] and cut[0]["cut_s"] > 1.0
    assert f"{cut[0]['cut_s']} s" in kept.description and "extend_video" in kept.description
    kept, _ = outcome["cut"]  # the same cut, reported as a warning: it does not block
    assert not kept.passed and kept.severity == dg.AssetCheckSeverity.WARN
    kept, speech = outcome["extend_video"]  # nothing cut: the picture is held instead
    assert kept.passed and kept.metadata["held_s"].value > 1.0 and kept.metadata["cut_count"].value == 0
    assert speech["timeline"]["extended_s"] == pytest.approx(speech["timeline"]["duration_s"]
                                                             + kept.metadata["held_s"].value, abs=0.02)


def test_speech_speed_and_no_overlap_fail_on_placements_that_break_them():
    rate = 48_000
    track = np.zeros(rate * 4, np.float32)
    track[rate // 2:3 * rate] = 0.1  # audible wherever the placements are
    placements = [Placement(id=0, start=0.5, end=1.5, natural_s=1.6, speed=1.6, placed_start=0.5, placed_end=1.5,
                            borrowed_s=0.0, truncated=False, text="a"),
                  Placement(id=1, start=1.4, end=2.5, natural_s=1.0, speed=1.0, placed_start=1.4, placed_end=2.5,
                            borrowed_s=0.0, truncated=False, text="b")]
    got = {r.check_name: r for r in checks.speech_checks(placements, track, rate, Policy(max_speed=1.35),
                                                         Timeline(duration=4.0))}
    assert failed_blocking(got["speech_speed"]) and got["speech_speed"].metadata["too_fast"].value == [0]
    assert failed_blocking(got["no_overlap"]) and "0/1" in got["no_overlap"].description
    assert got["coverage"].passed and got["speech_kept"].passed


def test_loudness_fails_when_the_target_cannot_be_met(base_job):
    job = copy_job(base_job, target_lufs=-5.0)  # speech at -5 LUFS with peaks under -1 dBTP: impossible
    got = results_of(mix_job(job, storage()))["loudness"]
    assert failed_blocking(got) and "below the -5.0 LUFS target" in got.description
    assert got.metadata["true_peak_dbtp"].value <= -1.0  # the peak limit held; the loudness gave way
    ok = results_of(mix_job(copy_job(base_job), storage()))["loudness"]
    assert ok.passed and abs(ok.metadata["error_lu"].value) <= 1.0


def test_output_streams_fails_on_an_export_without_its_tracks(espeak_video):
    streams = media.media_streams(espeak_video)  # the source: one audio track, no subtitles
    got = checks.output_streams_check(streams, expect_video=True, expect_dub=True, langs=("spa", "eng"))
    assert failed_blocking(got) and "audio languages" in got.description and "subtitle" in got.description


def test_sync_fails_on_a_dub_track_that_drifted_and_nothing_is_published(base_job):
    job = copy_job(base_job)
    st = storage()
    path = st.fetch(job.id, "dub_track.wav")
    track, rate = media.read_wav_mono(path)
    media.write_wav(path, np.concatenate([np.zeros(int(0.4 * rate), np.float32), track[:-int(0.4 * rate)]]), rate)
    result = export_job(job, st)
    sync = results_of(result)["sync"]
    assert failed_blocking(sync) and "start more than 150 ms" in sync.description
    assert sync.metadata["sync_error_p95_ms"].value >= 350
    assert not st.outputs_dir(job.id).exists() or not any(st.outputs_dir(job.id).iterdir())  # nothing published
    kept = sorted(p.name for p in (st.job_dir(job.id) / "work" / "export").iterdir())
    stem = f"{output_stem(job.filename)}.es"
    assert f"{stem}.mkv" in kept and f"{stem}.srt" in kept
    assert result.metadata["published"] is False or result.metadata["published"].value is False
    assert results_of(export_job(copy_job(base_job), st))["sync"].passed  # the untampered track is in sync


def test_round_trip_hears_the_dub_again_and_only_warns(base_job):
    asr = AsrResource()
    job = copy_job(base_job)
    skipped = round_trip_job(job, storage(), asr)  # en -> es: the bundled model hears English only
    assert skipped.passed and skipped.metadata["skipped"].value and "only transcribes English" in skipped.description
    store = JobStore()
    english = store.create_job(input_path=base_job.input_path, filename=base_job.filename, source_lang="en",
                               target_lang="en", options={"translator": "passthrough"})
    st = storage()
    shutil.copytree(st.job_dir(base_job.id) / "work", st.job_dir(english.id) / "work")
    translation = st.read_json(english.id, "translation.json")
    texts = list(mediagen.SCRIPT)
    for s, text in zip(translation["segments"], texts):
        s["text"] = text
    st.write_json(english.id, "translation.json", translation)
    speak_job(english, st, TtsResource(engine="espeak"))
    good = round_trip_job(english, st, asr)
    assert good.passed and good.metadata["wer"].value <= 0.35, good.metadata
    translation["segments"][0]["text"] = "qwrtp zxcvb mnbvc pfft grmbl xkcd"  # the dub says what no one can hear
    translation["segments"][2]["text"] = "vvvv hhhh jjjj kkkk llll"
    st.write_json(english.id, "translation.json", translation)
    speak_job(english, st, TtsResource(engine="espeak"))
    bad = round_trip_job(english, st, asr)
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.WARN and bad.metadata["wer"].value > 0.35


# --- the whole job: blocking, needs review, publish anyway, extend_video ------------------------------


def test_a_dub_that_does_not_fit_needs_review_and_is_published_when_accepted(instance, rushed_video):
    job, result = run_dub(instance, rushed_video)  # fit: review (the default)
    assert not result.success
    evaluated = evaluations(result)
    assert not evaluated["speech_kept"].passed and evaluated["speech_kept"].blocking
    assert {"loudness", "output_streams", "sync"}.isdisjoint(evaluated)  # the run stopped at dubbed_speech
    assert not storage().outputs(job.id)  # nothing published
    runs = dv.runs_by_job(instance, [job.id])[job.id]
    assert dv.job_state(job, runs, instance) == dv.NEEDS_REVIEW
    assert dv.job_state(job, runs) == "failed"  # without the event log it reads as a failure
    report = dv.quality(instance, runs)
    kept = next(c for c in report["checks"] if c["name"] == "speech_kept")
    assert kept["status"] == "failed" and kept["blocking"] and kept["metadata"]["cut_count"] >= 1
    assert report["summary"].startswith("needs review: speech_kept: ")
    timeline = dv.timeline(instance, job, runs)
    speech_stage = next(s for s in timeline["stages"] if s["stage"] == "dubbed_speech")
    assert speech_stage["state"] == "review" and "speech_kept" in speech_stage["error"]
    assert [r["check"] for r in timeline["review"]] == [f["name"] for f in dv.blocking_failures(instance, runs[0])]

    # publish anyway: the failed checks accepted, the stages from the stopped one run again
    accept = sorted(f["name"] for f in dv.blocking_failures(instance, runs[0]))
    publish = dg.AssetSelection.assets(*[dg.AssetKey(s) for s in stages_from("dubbed_speech")])
    again = run_dub_selection(instance, job, publish, {ACCEPT_TAG: ",".join(accept), "dubbing/origin": "publish"})
    assert again.success
    accepted = evaluations(again)["speech_kept"]
    assert not accepted.passed and accepted.severity == dg.AssetCheckSeverity.WARN
    assert accepted.metadata["accepted"].value is True
    assert storage().outputs(job.id)  # published
    runs = dv.runs_by_job(instance, [job.id])[job.id]
    assert dv.job_state(job, runs, instance) == "done"
    statuses = {c["name"]: c["status"] for c in dv.quality(instance, runs)["checks"]}
    assert statuses["speech_kept"] == "accepted" and statuses["sync"] == "passed"


def run_dub_selection(instance, job, selection, tags):
    from dubbing_assets.definitions import defs

    job_def = defs.resolve_job_def("dub_job")
    keys = [k for k in selection.resolve(defs.resolve_asset_graph())]
    return job_def.execute_in_process(instance=instance, partition_key=job.id, asset_selection=keys, tags=tags,
                                      raise_on_error=False)


def test_extend_video_keeps_every_word_and_the_picture_and_subtitles_follow(instance, rushed_video):
    job, result = run_dub(instance, rushed_video, options={"fit": "extend_video"})
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert all(evaluations(result)[name].passed for name in ALL), {
        n: e.description for n, e in evaluations(result).items() if not e.passed}
    speech = storage().read_json(job.id, "speech.json")
    timeline = Timeline.from_dict(speech["timeline"], speech["timeline"]["duration_s"])
    held = timeline.extended - timeline.duration
    assert held > 0.1 and all(p["cut_s"] == 0 for p in speech["segments"])
    stem = output_stem(rushed_video.name)
    export = storage().outputs_dir(job.id) / f"{stem}.es.mkv"
    out = mediashapes.probe(export)
    assert float(out["format"]["duration"]) == pytest.approx(timeline.extended, abs=0.1)
    video = next(s for s in out["streams"] if s["codec_type"] == "video")
    assert mediashapes.stream_seconds(video) == pytest.approx(timeline.extended, abs=0.15)
    # the dub subtitles sit on the placements; the original's moved by the holds before them
    cues = media.subtitle_cues(storage().outputs_dir(job.id) / f"{stem}.es.srt")
    assert [(round(a, 2), round(b, 2)) for a, b in cues] == [
        (round(p["placed_start"], 2), round(p["placed_end"], 2)) for p in speech["segments"]]
    transcript = storage().read_json(job.id, "transcript.json")["segments"]
    original = media.subtitle_cues(storage().outputs_dir(job.id) / f"{stem}.en.srt")
    assert [round(a, 2) for a, _ in original] == [round(timeline.to_export(s["start"]), 2) for s in transcript]
    # the picture after the first hold is the source's picture, later by the time held before it
    at, _ = timeline.holds[0]
    later = min(timeline.duration - 0.2, at + 0.5)
    shifted = later + sum(d for a, d in timeline.holds if a < later)
    diff = mediashapes.frame_difference(mediashapes.frame(rushed_video, later), mediashapes.frame(export, shifted))
    assert diff < 12, diff
    assert materializations(result)["dubbed_video"]["held_s"] == pytest.approx(held, abs=0.01)
