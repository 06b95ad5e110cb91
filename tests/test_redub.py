"""Edit and re-dub on a live stack (uvicorn + a real dagster-daemon): the segments API and its validation, a
re-dub launched by the run request sensor that materialises only dubbed_speech -> dubbed_mix -> dubbed_video,
re-synthesises only the edited segment (the segment cache) and exports an MKV whose Spanish subtitles carry
the edit."""

import subprocess
import time

import dagster as dg
import pytest

import mediagen
from live import running_stack, upload_file
from test_jobs_api import wait_state

pytestmark = pytest.mark.slow

SENTENCES = mediagen.SCRIPT[:4]
NEW_TEXT = "Hoy hablamos del mar y de los barcos."


@pytest.fixture(scope="module")
def talk(media_dir):
    wav, _ = mediagen.speech_track(SENTENCES, media_dir, voice="espeak")
    return mediagen.make_video(wav, media_dir / "redub_talk.mp4")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("redub"), daemon=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def done_job(stack, talk):
    with stack.client("alice") as c:
        _, job_id = upload_file(c, talk, "es")
        view = wait_state(c, job_id, {"done", "failed"})
    assert view["state"] == "done", view
    return job_id


def instance(stack) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(stack.env["DAGSTER_HOME"])


def materialized_assets(inst: dg.DagsterInstance, run_id: str) -> list[str]:
    recs = inst.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return [r.event_log_entry.dagster_event.asset_key.to_user_string() for r in recs]


def speech_metadata(inst: dg.DagsterInstance, run_id: str) -> dict:
    for rec in inst.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        event = rec.event_log_entry.dagster_event
        if event.asset_key.to_user_string() == "dubbed_speech":
            return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
    raise AssertionError(f"run {run_id} did not materialise dubbed_speech")


def subtitle_text(mkv: bytes, tmp_path, index: int = 0) -> str:
    path = tmp_path / "out.mkv"
    path.write_bytes(mkv)
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:s:{index}", "-f", "srt", "-"],
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_segments_read(stack, done_job):
    with stack.client("alice") as c:
        seg = c.get(f"/api/jobs/{done_job}/segments").json()
    assert seg["editable"] is True and seg["revision"] == 0
    assert len(seg["segments"]) >= 3, seg
    assert all(s["text"] and s["source_text"] and s["end"] > s["start"] for s in seg["segments"])
    assert "espeak:es" in seg["voices"] and seg["voice"].startswith("espeak:")
    assert seg["duration_s"] > seg["segments"][-1]["end"] - 0.5
    with stack.client("bob") as c:  # another user's job is not there at all
        assert c.get(f"/api/jobs/{done_job}/segments").status_code == 404
        assert c.put(f"/api/jobs/{done_job}/segments", json={"segments": [{"id": 0, "text": "x"}]}).status_code == 404
        assert c.post(f"/api/jobs/{done_job}/redub").status_code == 404


@pytest.mark.parametrize("body, status, words", [
    ({"segments": [{"id": 999, "text": "hola"}]}, 422, ["segment 999", "no such segment"]),
    ({"segments": [{"id": 0, "text": "a"}, {"id": 0, "text": "b"}]}, 422, ["more than once"]),
    ({"segments": [{"id": 0, "text": "x" * 1001}]}, 422, ["text", "1000"]),
    ({"segments": [{"id": 0, "text": "bad\x07bell"}]}, 422, ["control characters"]),
    ({"segments": [{"id": 0, "end": 1e9}]}, 422, ["end of the media"]),
    ({"segments": [{"id": 1, "start": 0.0}]}, 422, ["overlaps segment 0"]),
    ({"segments": [{"id": 0, "start": 0.5, "end": 0.55}]}, 422, ["at least 0.2 s"]),
    ({"segments": [{"id": 0, "voice": "espeak:xx-nowhere"}]}, 422, ["unknown voice"]),
    ({"segments": [{"id": 0, "colour": "red"}]}, 422, ["colour"]),
    ({"segments": []}, 422, ["segments"]),
    ({"revision": 7, "segments": [{"id": 0, "text": "hola"}]}, 409, ["reload"]),
])
def test_bad_edits_are_refused(stack, done_job, body, status, words):
    with stack.client("alice") as c:
        before = c.get(f"/api/jobs/{done_job}/segments").json()
        r = c.put(f"/api/jobs/{done_job}/segments", json=body)
        after = c.get(f"/api/jobs/{done_job}/segments").json()
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["detail"], r.json()
    assert after == before  # nothing was written


def test_edit_one_segment_and_redub(stack, done_job, tmp_path):
    inst = instance(stack)
    first_run = inst.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": done_job}))[0]
    with stack.client("alice") as c:
        seg = c.get(f"/api/jobs/{done_job}/segments").json()
        n = len(seg["segments"])
        target = seg["segments"][1]
        assert NEW_TEXT not in subtitle_text(c.get(f"/api/jobs/{done_job}/outputs/{mkv_name(c, done_job)}").content,
                                             tmp_path)
        r = c.put(f"/api/jobs/{done_job}/segments", json={"revision": 0, "segments": [{"id": target["id"],
                                                                                     "text": NEW_TEXT}]})
        assert r.status_code == 200, r.text
        saved = r.json()
        assert saved["revision"] == 1
        edited = [s for s in saved["segments"] if s["edited"]]
        assert [(s["id"], s["text"]) for s in edited] == [(target["id"], NEW_TEXT)]
        # saving the same text again changes nothing, and keeps the revision
        again = c.put(f"/api/jobs/{done_job}/segments", json={"segments": [{"id": target["id"], "text": NEW_TEXT}]})
        assert again.status_code == 200 and again.json()["revision"] == 1

        r = c.post(f"/api/jobs/{done_job}/redub")
        assert r.status_code == 202, r.text
        assert r.json() == {"job_id": done_job, "request_key": f"redub:{done_job}:1", "revision": 1, "queued": True}
        twice = c.post(f"/api/jobs/{done_job}/redub").json()
        assert twice["queued"] is False and twice["request_key"] == r.json()["request_key"]

        deadline = time.time() + 240
        runs = []
        while time.time() < deadline:
            runs = inst.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": done_job}))
            if len(runs) == 2 and runs[0].is_finished:
                break
            if len(runs) == 2:  # while the re-dub runs, no second one is queued
                busy = c.post(f"/api/jobs/{done_job}/redub")
                assert busy.status_code == 409 or not busy.json()["queued"], busy.text
            time.sleep(1)
        assert len(runs) == 2 and runs[0].status == dg.DagsterRunStatus.SUCCESS, runs
        redub = runs[0]
        assert redub.tags["dubbing/origin"] == "redub" and redub.tags["dubbing/request_key"] == f"redub:{done_job}:1"

        # only the downstream assets, and only the edited segment spoken again
        assert materialized_assets(inst, redub.run_id) == ["dubbed_speech", "dubbed_mix", "dubbed_video"]
        meta = speech_metadata(inst, redub.run_id)
        assert (meta["tts_synthesized"], meta["tts_reused"], meta["segments"]) == (1, n - 1, n), meta
        assert speech_metadata(inst, first_run.run_id)["tts_synthesized"] == n
        transcript = inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("transcript"), asset_partitions=[done_job]), limit=10).records
        assert [r.run_id for r in transcript] == [first_run.run_id]

        # the timeline shows the re-dub as its own run with its own stages
        tl = c.get(f"/api/jobs/{done_job}/timeline").json()
        assert [r["kind"] for r in tl["runs"]] == ["run", "redub"]
        assert [s["stage"] for s in tl["runs"][1]["stages"]] == ["dubbed_speech", "dubbed_mix", "dubbed_video"]
        assert all(s["state"] == "done" for s in tl["runs"][1]["stages"])
        # a re-dub is a new version of its stages, not another attempt of them
        assert all(s["attempts"] == 1 for s in tl["stages"]), tl["stages"]
        assert {s["stage"]: s["run_id"] for s in tl["stages"]}["dubbed_speech"] == redub.run_id
        assert tl["state"] == "done"

        # the new export carries the edit: the Spanish subtitle stream (the first) has the new text
        view = c.get(f"/api/jobs/{done_job}").json()
        assert view["state"] == "done"
        srt = subtitle_text(c.get(f"/api/jobs/{done_job}/outputs/{mkv_name(c, done_job)}").content, tmp_path)
        assert NEW_TEXT in srt, srt
        vtt = next(o for o in view["outputs"] if o.endswith(".es.vtt"))
        assert NEW_TEXT in c.get(f"/api/jobs/{done_job}/outputs/{vtt}").text
        # the source-language subtitles are untouched
        assert NEW_TEXT not in subtitle_text(c.get(f"/api/jobs/{done_job}/outputs/{mkv_name(c, done_job)}").content,
                                             tmp_path, index=1)


def mkv_name(c, job_id: str) -> str:
    return next(o for o in c.get(f"/api/jobs/{job_id}").json()["outputs"] if o.endswith(".mkv"))


# --- the segment cache, in process ----------------------------------------------------------------------


def test_segment_cache_keys_on_text_voice_and_engine_version(tmp_path, monkeypatch):
    """speak_job on a hand-made translation: the first pass speaks every segment; a per-segment voice change
    re-synthesises that segment only; a new engine version (an upgraded espeak-ng) re-synthesises all."""
    from dubbing_assets.dubbed_speech import speak_job
    from pipeline_helpers import storage
    from resources import tts as tts_mod
    from resources.jobstore import JobStore

    st = storage()
    job = JobStore().create_job(input_path=str(tmp_path / "none.mp4"), filename="none.mp4", source_lang="en",
                                target_lang="es")
    texts = ["Hola a todos.", "El tiempo en las montañas.", "Gracias por mirar."]
    st.write_json(job.id, "source.json", {"duration_s": 12.0})
    st.write_json(job.id, "translation.json", {"segments": [
        {"id": i, "start": 4.0 * i, "end": 4.0 * i + 3.0, "source_text": t, "text": t} for i, t in enumerate(texts)]})
    engine = tts_mod.TtsResource(engine="espeak")

    def speak():
        meta = speak_job(job, st, engine).metadata
        return meta["tts_synthesized"], meta["tts_reused"]

    assert speak() == (3, 0)
    assert speak() == (0, 3)
    translation = st.read_json(job.id, "translation.json")
    translation["segments"][2]["voice"] = "espeak:es-419"
    st.write_json(job.id, "translation.json", translation)
    assert speak() == (1, 2)
    speech = st.read_json(job.id, "speech.json")
    assert [s["voice"] for s in speech["segments"]] == ["", "", "espeak:es-419"]
    cache = st.job_dir(job.id) / "work" / "tts_cache"
    assert sorted(p.stem for p in cache.iterdir()) == sorted(speech["cache_keys"])  # the stale entry is gone

    real = tts_mod.Espeak._version()
    monkeypatch.setattr(tts_mod.Espeak, "_version", staticmethod(lambda: real + "-upgraded"))
    assert speak() == (3, 0)
    monkeypatch.undo()
    # a damaged cache entry is spoken again rather than failing the stage
    next(cache.iterdir()).write_bytes(b"not a wav")
    assert speak()[0] >= 1


def test_reprocess_rule_reads_what_the_real_stages_recorded(stack, done_job, monkeypatch):
    """After the re-dub (the job now has edits), the reprocess rule compares the version tags the real stages
    recorded with the current engines: nothing to do while they match; an upgraded espeak-ng makes the job
    outdated from dubbed_speech on (never from the transcript: that would throw the user's edits away)."""
    from dubbing_assets import reprocess
    from resources import tts as tts_mod
    from resources.jobstore import JobStore

    inst = instance(stack)
    store = JobStore()
    assert store.get_job(done_job).edit_revision >= 1
    picks = [p for p in reprocess.pick(inst, store, reprocess.Engines.from_env(), rule="outdated")
             if p.job_id == done_job]
    assert picks == []
    real = tts_mod.Espeak._version()
    monkeypatch.setattr(tts_mod.Espeak, "_version", staticmethod(lambda: real + ".1"))
    picks = [p for p in reprocess.pick(inst, store, reprocess.Engines.from_env(), rule="outdated")
             if p.job_id == done_job]
    assert [(p.rule, p.stages) for p in picks] == [("outdated", ["dubbed_speech", "dubbed_mix", "dubbed_video"])]
    assert picks[0].key.startswith(f"reprocess:outdated:{done_job}:dubbed_speech:")
