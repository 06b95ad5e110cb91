"""Files shaped like what phones, cameras, screen recorders and video editors really produce, made on the
spot with ffmpeg from a short spoken track (mediagen): containers, codecs, rotations, frame timing, start
times, edit lists, channel layouts and stream lengths. Nothing here is committed as a binary."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mediagen
from mediagen import ffmpeg, wav_seconds

VIDEO = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
HEVC = ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error",
        "-tag:v", "hvc1"]


def pattern(seconds: float, size: str = "320x240", fps: int = 15) -> list[str]:
    """A test-pattern picture input of `seconds` (`-t` before the lavfi input, or it never ends)."""
    return ["-f", "lavfi", "-t", f"{seconds:.3f}", "-i", f"testsrc=size={size}:rate={fps}"]


def with_picture(speech: Path, out: Path, vcodec: list[str], acodec: list[str], *, size: str = "320x240",
                 fps: int = 15, seconds: float | None = None, extra: list[str] = ()) -> Path:
    seconds = seconds or wav_seconds(speech)
    ffmpeg(*pattern(seconds, size, fps), "-i", str(speech), "-map", "0:v", "-map", "1:a", *vcodec, *acodec,
           *extra, str(out))
    return out


def rotated(speech: Path, out: Path, degrees: int, vcodec: list[str] = VIDEO) -> Path:
    """A phone's portrait video: the picture stored landscape with a display rotation (ffmpeg 5.1 sets it
    with the `rotate` tag on a stream copy)."""
    plain = out.with_name(out.stem + ".plain" + out.suffix)
    with_picture(speech, plain, vcodec, ["-c:a", "aac"], size="320x180", fps=30)
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(out))
    plain.unlink()
    return out


def vfr(speech: Path, out: Path) -> Path:
    """Variable frame rate, as phones record in low light: frames dropped unevenly, timestamps kept."""
    ffmpeg(*pattern(wav_seconds(speech), fps=30), "-i", str(speech), "-map", "0:v", "-map", "1:a",
           "-vf", r"select='lt(mod(n\,7)\,3)+between(n\,40\,70)'", "-fps_mode", "vfr", *VIDEO,
           "-c:a", "aac", str(out))
    return out


def edit_list(speech: Path, out: Path) -> Path:
    """An MP4 cut in an editor without re-encoding: the cut lands between keyframes, so the MP4 keeps an
    edit list that hides the frames before it."""
    full = out.with_name(out.stem + ".full.mp4")
    with_picture(speech, full, VIDEO + ["-g", "30"], ["-c:a", "aac"])
    ffmpeg("-ss", "0.4", "-i", str(full), "-c", "copy", str(out))
    full.unlink()
    return out


def two_audio(speech: Path, out: Path) -> Path:
    """Two audio tracks (the speech, then a commentary or music track): the first is dubbed."""
    seconds = wav_seconds(speech)
    ffmpeg(*pattern(seconds), "-i", str(speech), "-f", "lavfi", "-t", f"{seconds:.3f}", "-i",
           "sine=frequency=440:sample_rate=48000", "-map", "0:v", "-map", "1:a", "-map", "2:a", *VIDEO,
           "-c:a", "aac", str(out))
    return out


def surround(speech: Path, out: Path) -> Path:
    """5.1 sound with the dialogue in the centre channel, as films carry it."""
    return with_picture(speech, out, VIDEO, ["-c:a", "aac", "-af", "pan=5.1|FC=c0|LFE=0.1*c0", "-ar", "48000"])


def audio_only(speech: Path, out: Path, acodec: list[str]) -> Path:
    ffmpeg("-i", str(speech), *acodec, str(out))
    return out


def longer_audio(speech: Path, out: Path) -> Path:
    """The sound goes on after the picture ends (a slideshow with a longer voice-over)."""
    return with_picture(speech, out, VIDEO, ["-c:a", "aac"], seconds=max(1.0, wav_seconds(speech) - 3.0))


def shorter_audio(speech: Path, out: Path) -> Path:
    """The sound ends before the picture (a silent outro): audio about 6 s shorter than the video."""
    return with_picture(speech, out, VIDEO, ["-c:a", "aac"], seconds=wav_seconds(speech) + 6.0)


def late_audio(speech: Path, out: Path) -> Path:
    """The sound starts 1.5 s after the picture (a camera that starts audio late, an edited timeline)."""
    seconds = wav_seconds(speech) + 1.5
    ffmpeg(*pattern(seconds), "-itsoffset", "1.5", "-i", str(speech), "-map", "0:v", "-map", "1:a", *VIDEO,
           "-c:a", "aac", str(out))
    return out


def transport_stream(speech: Path, out: Path) -> Path:
    """A broadcast or camcorder MPEG-TS: H.264 with AC-3 sound and a start time of an hour."""
    return with_picture(speech, out, VIDEO, ["-c:a", "ac3", "-ar", "48000"], extra=["-output_ts_offset", "3600"])


def no_speech(_speech: Path, out: Path) -> Path:
    """Music without speech: a chord under a test pattern."""
    ffmpeg(*pattern(5.0), "-f", "lavfi", "-t", "5", "-i",
           "aevalsrc=0.1*sin(2*PI*262*t)+0.1*sin(2*PI*330*t)+0.1*sin(2*PI*392*t):s=44100",
           *VIDEO, "-c:a", "aac", str(out))
    return out


def cut_off(speech: Path, out: Path) -> Path:
    """A download that stopped at 60 %: Matroska headers readable, the rest missing."""
    full = out.with_name("full.mkv")
    with_picture(speech, full, VIDEO, ["-c:a", "libopus"], seconds=wav_seconds(speech))
    data = full.read_bytes()
    out.write_bytes(data[: int(len(data) * 0.6)])
    full.unlink()
    return out


def not_media(_speech: Path, out: Path) -> Path:
    out.write_text("these are meeting notes, not a video\n" * 40)
    return out


def no_audio(speech: Path, out: Path) -> Path:
    ffmpeg(*pattern(wav_seconds(speech)), *VIDEO, str(out))
    return out


@dataclass
class Shape:
    """One realistic input: how to make it from a spoken track, and what its dub must look like."""

    name: str
    filename: str
    make: Callable[[Path, Path], Path]
    speech: str = "talk"  # which spoken track (see SPEECH)
    video: bool = True
    rotation: int = 0
    speech_expected: bool = True
    options: dict = field(default_factory=dict)
    container: str = "mkv"  # what the export is expected to be
    refused: str | None = None  # the reason a refused input names


# Spoken tracks the shapes are made from: sentences, pause between them, espeak-ng's words per minute.
SPEECH = {
    "talk": (["Good morning and welcome to our weekly news program.",
              "Today we talk about the weather in the mountains."], 0.8, 150),
    # a refrain said three times at a brisk pace: the segment cache hands the same speech to three slots
    "refrain": (["Here is the forecast for tomorrow.", "We will now look at the results of the survey.",
                 "Here is the forecast for tomorrow.", "We will now look at the results of the survey.",
                 "Here is the forecast for tomorrow."], 0.2, 210),
    "short": (["Hello everybody."], 0.2, 160),
}


def speech_wav(kind: str, workdir: Path) -> Path:
    sentences, pause, wpm = SPEECH[kind]
    folder = workdir / kind
    folder.mkdir(exist_ok=True)
    wav, _ = mediagen.speech_track(sentences, folder, lead=0.5, pause=pause, tail=0.5, wpm=wpm)
    return wav


def long_silence_wav(workdir: Path) -> Path:
    """Speech, 15 s of room tone, speech again (an interview with a long pause)."""
    folder = workdir / "silence"
    folder.mkdir(exist_ok=True)
    wav, _ = mediagen.speech_track(["Good morning and welcome to our weekly news program.",
                                    "Thank you for watching and see you next week."], folder, lead=0.5,
                                   pause=15.0, tail=0.5)
    return wav


def _one_second(speech: Path, out: Path) -> Path:
    ffmpeg(*pattern(1.0), "-i", str(speech), "-map", "0:v", "-map", "1:a", "-t", "1", *VIDEO, "-c:a", "aac",
           str(out))
    return out


def _vp(codec: str, audio: list[str]) -> Callable[[Path, Path], Path]:
    return lambda s, o: with_picture(s, o, ["-c:v", codec, "-b:v", "300k", "-deadline", "realtime",
                                            "-cpu-used", "8"], audio)


SHAPES = [
    Shape("phone_hevc_mov_rot90", "IMG_0421.MOV", lambda s, o: rotated(s, o, 90, HEVC), rotation=90,
          container="mp4"),
    Shape("phone_h264_mp4_rot90", "VID_20261201_101500.mp4", lambda s, o: rotated(s, o, 90), rotation=90,
          container="mp4"),
    Shape("phone_rot90_to_mkv", "portrait.mp4", lambda s, o: rotated(s, o, 90), rotation=90,
          options={"container": "mkv"}),
    Shape("upside_down_rot180", "upside_down.mp4", lambda s, o: rotated(s, o, 180), rotation=180,
          container="mp4"),
    Shape("phone_rot270", "rot270.mp4", lambda s, o: rotated(s, o, 270), rotation=270, container="mp4"),
    Shape("phone_vfr_mp4", "lowlight_vfr.mp4", vfr),
    Shape("mkv_h264_flac", "edit_export.mkv", lambda s, o: with_picture(s, o, VIDEO, ["-c:a", "flac"])),
    Shape("webm_vp8_vorbis", "screen.webm", _vp("libvpx", ["-c:a", "libvorbis"])),
    Shape("webm_vp9_opus", "browser_rec.webm", _vp("libvpx-vp9", ["-c:a", "libopus"])),
    Shape("avi_mpeg4_mp3", "old_camera.avi",
          lambda s, o: with_picture(s, o, ["-c:v", "mpeg4", "-q:v", "5"], ["-c:a", "libmp3lame", "-q:a", "5"])),
    Shape("ts_h264_ac3_start_3600", "broadcast.ts", transport_stream),
    Shape("mov_camera_pcm", "camera.mov", lambda s, o: with_picture(s, o, VIDEO, ["-c:a", "pcm_s16le", "-ar",
                                                                                 "48000", "-ac", "2"])),
    Shape("mp4_edit_list", "trimmed_in_editor.mp4", edit_list),
    Shape("mp4_late_audio", "late_sound.mp4", late_audio),
    Shape("mkv_two_audio_tracks", "two_tracks.mkv", two_audio),
    Shape("mp4_surround_5_1", "film_5.1.mp4", surround),
    Shape("mp4_1080p60", "gameplay_1080p60.mp4",
          lambda s, o: with_picture(s, o, VIDEO, ["-c:a", "aac"], size="1920x1080", fps=60)),
    Shape("audio_longer_than_picture", "slides_voiceover.mp4", longer_audio),
    Shape("audio_shorter_than_picture", "silent_outro.mp4", shorter_audio),
    Shape("one_second_clip", "hello.mp4", _one_second, speech="short"),
    Shape("repeated_sentences", "refrain.mp4",
          lambda s, o: with_picture(s, o, VIDEO, ["-c:a", "aac"]), speech="refrain"),
    Shape("long_silence_in_the_middle", "long_pause.mp4",
          lambda s, o: with_picture(s, o, VIDEO, ["-c:a", "aac"]), speech="silence"),
    Shape("unicode_and_spaces_name", "Entrevista café – día 1.mp4",
          lambda s, o: with_picture(s, o, VIDEO, ["-c:a", "aac"])),
    Shape("music_without_speech", "music.mp4", no_speech, speech_expected=False),
    Shape("wav_8khz_mono", "phone_call.wav", lambda s, o: audio_only(s, o, ["-ar", "8000", "-ac", "1"]),
          video=False),
    Shape("m4a_aac", "voice_memo.m4a", lambda s, o: audio_only(s, o, ["-c:a", "aac"]), video=False),
    Shape("mp3", "podcast.mp3", lambda s, o: audio_only(s, o, ["-c:a", "libmp3lame", "-q:a", "4"]), video=False),
    Shape("flac", "recording.flac", lambda s, o: audio_only(s, o, ["-c:a", "flac"]), video=False),
    Shape("refused_no_audio", "screen_capture.mp4", no_audio, refused="has no audio stream"),
    Shape("refused_cut_off", "download.mkv", cut_off, refused="truncated"),
    Shape("refused_not_media", "notes.mp4", not_media, refused="is not a readable video or audio file"),
]


def make(shape: Shape, workdir: Path, speech_cache: dict[str, Path]) -> Path:
    if shape.speech not in speech_cache:
        speech_cache[shape.speech] = (long_silence_wav(workdir) if shape.speech == "silence"
                                      else speech_wav(shape.speech, workdir))
    folder = workdir / shape.name
    folder.mkdir(exist_ok=True)
    return shape.make(speech_cache[shape.speech], folder / shape.filename)


def probe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def stream_seconds(stream: dict) -> float:
    """A stream's length as ffprobe reports it: `duration`, or Matroska's DURATION tag; 0 when neither."""
    if float(stream.get("duration") or 0) > 0:
        return float(stream["duration"])
    tag = next((v for k, v in (stream.get("tags") or {}).items() if k.upper() == "DURATION"), "")
    h, m, sec = (tag.split(":") + ["", "", ""])[:3] if tag.count(":") == 2 else ("0", "0", "0")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def rotation(stream: dict) -> int:
    """Display rotation in degrees (0/90/180/270) from ffprobe's display matrix side data."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(side["rotation"]) % 360
    return 0


def shown_size(stream: dict) -> tuple[int, int]:
    """Width and height as a player shows the picture (rotation applied)."""
    w, h = int(stream["width"]), int(stream["height"])
    return (h, w) if rotation(stream) in (90, 270) else (w, h)


def frame(path: Path, at: float, size: int = 16) -> bytes:
    """One picture at `at` seconds, as ffmpeg shows it (display rotation applied), shrunk to size x size
    grey levels: enough to tell an upright picture from a sideways one. Decoded from the start (an MPEG-TS
    has no index to seek in)."""
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ss", f"{at:.3f}", "-frames:v", "1", "-vf",
                           f"scale={size}:{size}", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                          capture_output=True, check=True).stdout


def frame_difference(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two grey frames of the same size, 0..255."""
    assert len(a) == len(b) and a, (len(a), len(b))
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)
