"""Media tools: ffprobe/ffmpeg through ffmpeg-python over Debian's ffmpeg.

Every failure raises MediaError carrying the tail of ffmpeg's stderr, never a bare exit code.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from resources import versions

# ISO 639-1 -> ISO 639-2/B codes used for stream language tags (and apertium mode names).
ISO639_2 = {
    "en": "eng", "es": "spa", "fr": "fre", "de": "ger", "it": "ita", "pt": "por", "ca": "cat",
    "nl": "dut", "ru": "rus", "zh": "chi", "ja": "jpn", "ko": "kor", "ar": "ara", "hi": "hin",
    "pl": "pol", "sv": "swe", "tr": "tur", "uk": "ukr", "gl": "glg", "eu": "baq", "oc": "oci",
}
LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
    "pt": "Portuguese", "ca": "Catalan", "nl": "Dutch", "ru": "Russian", "zh": "Chinese",
    "ja": "Japanese", "ko": "Korean", "ar": "Arabic", "hi": "Hindi", "pl": "Polish",
    "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "gl": "Galician", "eu": "Basque",
    "oc": "Occitan",
}


def iso639_2(lang: str) -> str:
    return ISO639_2.get(lang.split("-")[0].lower(), "und")


def language_name(lang: str) -> str:
    return LANGUAGE_NAMES.get(lang.split("-")[0].lower(), lang)


class MediaError(RuntimeError):
    """An ffmpeg/ffprobe failure or an input that is not usable media."""


_FOLDERS = re.compile(r"(?:/[^/\s'\":]+)+/(?=[^/\s'\":]+)")


def stderr_tail(stderr: bytes | str | None, lines: int = 6, paths: list[str] = ()) -> str:
    """The last lines of ffmpeg's stderr, joined on one line, with folders stripped from `paths`
    (the command's files, which may hold spaces) and from any other absolute path: messages reach
    users; server paths do not."""
    if not stderr:
        return "(no output from ffmpeg)"
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    for path in sorted((p for p in paths if p.startswith("/")), key=len, reverse=True):
        text = text.replace(path, Path(path).name)
    text = _FOLDERS.sub("", text)
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def ffmpeg_version() -> str:
    """The installed ffmpeg's version (`ffmpeg -version`'s number, e.g. 5.1.6-0+deb12u1), once per process."""
    return versions.tool_version(("ffmpeg", "-version"), 2) or versions.UNKNOWN


def version_tag() -> str:
    """The current version tag of the ffmpeg stages (resources/versions.py)."""
    return versions.tag("ffmpeg", ffmpeg_version())


def version_metadata() -> dict[str, str]:
    """engine, engine_version and version_tag of the ffmpeg stages, for their metadata."""
    return versions.version_metadata("ffmpeg", ffmpeg_version())


def require_tools() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise MediaError(f"{tool} is not installed; install Debian's ffmpeg (make setup does it)")


def run(stream, what: str) -> bytes:
    """Run an ffmpeg-python stream graph; raise MediaError with stderr's tail on failure.
    Returns stderr (ffmpeg's reports, e.g. ebur128's summary)."""
    args = ffmpeg.compile(stream, overwrite_output=True)
    args[1:1] = ["-hide_banner", "-nostdin"]  # before the inputs, where ffmpeg reads them
    try:
        proc = subprocess.run(args, capture_output=True)
    except FileNotFoundError:
        require_tools()
        raise
    if proc.returncode != 0:
        raise MediaError(f"{what} failed: {stderr_tail(proc.stderr, paths=args)}")
    return proc.stderr


def stream_duration(stream: dict | None) -> float | None:
    """A stream's own length as its container declares it: `duration` (MP4, MOV, AVI, MPEG-TS) or the
    DURATION tag (Matroska, WebM); None when it declares none."""
    if not stream:
        return None
    try:
        if float(stream.get("duration") or 0) > 0:
            return float(stream["duration"])
    except ValueError:
        pass
    tags = {k.lower(): v for k, v in (stream.get("tags") or {}).items()}
    m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", str(tags.get("duration", "")).strip())
    if m:
        seconds = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        return seconds if seconds > 0 else None
    return None


def rotation(stream: dict | None) -> int:
    """The display rotation of a video stream in degrees, 0, 90, 180 or 270 (a phone's portrait video
    is stored landscape with a display matrix saying how to turn it; older files use a `rotate` tag)."""
    if not stream:
        return 0
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    try:
        return int(round(float((stream.get("tags") or {}).get("rotate", 0)))) % 360
    except ValueError:
        return 0


def display_size(stream: dict | None) -> tuple[int, int] | None:
    """(width, height) as the picture is shown: the coded size turned by the display rotation."""
    if not stream or not stream.get("width"):
        return None
    w, h = int(stream["width"]), int(stream["height"])
    return (h, w) if rotation(stream) in (90, 270) else (w, h)


@dataclass(frozen=True)
class ProbeResult:
    duration: float
    format_name: str
    size_bytes: int
    video: dict | None
    audio: dict | None
    audio_streams: int
    raw: dict

    @property
    def audio_duration(self) -> float | None:
        """The first audio stream's own declared length (None when the container declares none)."""
        return stream_duration(self.audio)

    @property
    def video_duration(self) -> float | None:
        return stream_duration(self.video)

    def summary(self) -> dict:
        out = {
            "duration_s": round(self.duration, 3),
            "container": self.format_name,
            "size_bytes": self.size_bytes,
            "audio_streams": self.audio_streams,
            "has_video": self.video is not None,
        }
        if self.audio_duration:
            out["audio_duration_s"] = round(self.audio_duration, 3)
        if self.video:
            out["video_codec"] = self.video.get("codec_name")
            out["width"] = self.video.get("width")
            out["height"] = self.video.get("height")
            out["rotation"] = rotation(self.video)
            if self.video_duration:
                out["video_duration_s"] = round(self.video_duration, 3)
        if self.audio:
            out["audio_codec"] = self.audio.get("codec_name")
            out["sample_rate"] = int(self.audio.get("sample_rate") or 0)
            out["channels"] = self.audio.get("channels")
        return out


def probe(path: Path, name: str | None = None) -> ProbeResult:
    """ffprobe a file and insist it is usable media: not empty, readable, with an audio stream.
    Messages call the file `name` (default: its file name)."""
    path = Path(path)
    name = name or path.name
    if not path.exists():
        raise MediaError(f"input file not found: {name}")
    size = path.stat().st_size
    if size == 0:
        raise MediaError(f"input file {name} is empty (0 bytes)")
    try:
        info = ffmpeg.probe(str(path), v="error")
    except ffmpeg.Error as exc:
        tail = stderr_tail(exc.stderr, 3).replace(str(path), name).replace(path.name + ":", name + ":")
        raise MediaError(f"{name} is not a readable video or audio file: {tail}") from None
    return _usable(info, name, size)


def probe_url(url: str, name: str, size: int) -> ProbeResult:
    """probe() for media behind a URL (a presigned S3 URL): ffprobe reads only what it needs, with range
    requests. The URL (it holds a signature) never appears in a message."""
    if size == 0:
        raise MediaError(f"input file {name} is empty (0 bytes)")
    try:
        info = ffmpeg.probe(url, v="error", rw_timeout=30_000_000)
    except ffmpeg.Error as exc:
        tail = re.sub(r"\w+://\S+", name, stderr_tail(exc.stderr, 3))
        raise MediaError(f"{name} is not a readable video or audio file: {tail}") from None
    return _usable(info, name, size)


def _usable(info: dict, name: str, size: int) -> ProbeResult:
    streams = info.get("streams", [])
    video = next(
        (s for s in streams if s.get("codec_type") == "video"
         and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    fmt = info.get("format", {})
    duration = float(fmt.get("duration") or 0.0)
    if not audios:
        kind = "video" if video else "file"
        raise MediaError(f"{name}: the {kind} has no audio stream, so there is no speech to dub")
    if duration <= 0:
        duration = float(audios[0].get("duration") or 0.0)
    if duration <= 0:
        raise MediaError(f"{name}: media duration is unknown or zero")
    return ProbeResult(
        duration=duration,
        format_name=fmt.get("format_name", "?"),
        size_bytes=size,
        video=video,
        audio=audios[0],
        audio_streams=len(audios),
        raw=info,
    )


def check_audio_decodes(path: Path, info: ProbeResult, name: str | None = None) -> float:
    """Decode the first audio stream completely; a truncated or corrupt file fails here rather than
    halfway through the pipeline. Returns the decoded duration in seconds.

    The decoded audio is held against the audio stream's own declared length, not the container's: a
    video whose sound ends before its picture (a silent outro) is whole. Where the container declares
    no length for the audio, a short decode is truncation only if the file's packets, demuxed to the
    end, also stop short of the container's duration (a cut-off download stops every stream)."""
    name = name or Path(path).name
    err = run(
        ffmpeg.input(str(path))["a:0"].output("-", format="null").global_args("-v", "error", "-stats"),
        f"decoding the audio of {name}",
    )
    text = err.decode("utf-8", "replace")
    problems = _stats_problems(text)
    decoded = _last_stats_time(text)
    if problems:
        raise MediaError(f"{name} is truncated or corrupt: {' | '.join(problems[-3:])}")
    if decoded is None:
        return info.audio_duration or info.duration
    declared = info.audio_duration
    expected = declared or info.duration
    if expected > 2 and decoded < 0.9 * expected:
        if declared:
            raise MediaError(f"{name} is truncated: audio decodes to {decoded:.1f} s of {declared:.1f} s")
        reach = content_end(path, name)
        if reach is not None and reach < 0.9 * info.duration:
            raise MediaError(
                f"{name} is truncated: its streams end at {reach:.1f} s of the {info.duration:.1f} s it declares")
    return decoded


def content_end(path: Path, name: str | None = None) -> float | None:
    """How far the file's packets really reach, in seconds: every stream demuxed to the end without
    decoding (about a second for a gigabyte). A file cut off mid-download stops short of its header's
    duration here, whatever its streams declare."""
    err = run(ffmpeg.input(str(path)).output("-", format="null", map="0", c="copy")
              .global_args("-v", "error", "-stats"), f"reading {name or Path(path).name} to its end")
    text = err.decode("utf-8", "replace")
    if _stats_problems(text):
        return 0.0 if _last_stats_time(text) is None else _last_stats_time(text)
    return _last_stats_time(text)


def _stats_problems(stats: str) -> list[str]:
    """The error lines of an ffmpeg run with `-v error -stats` (the progress lines left out), without
    ffmpeg's `[matroska,webm @ 0x55...]` prefixes: they reach users."""
    return [re.sub(r"\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", ln).strip() for ln in stats.replace("\r", "\n").splitlines()
            if ln.strip() and not ln.lstrip().startswith("size=") and "time=" not in ln]


def _last_stats_time(stats: str) -> float | None:
    found = re.findall(r"time=\s*(\d+):(\d+):(\d+(?:\.\d+)?)", stats)
    if not found:
        return None
    h, m, s = found[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def extract_wav(src: Path, dest: Path, *, rate: int, channels: int) -> Path:
    """The first audio stream as PCM WAV on the file's own timeline: sound that starts after the picture
    (an MPEG-TS or an edited MP4 whose audio begins late) is preceded by that much silence, so a time in
    the WAV is the same time in the video (aresample's first_pts=0)."""
    run(
        ffmpeg.input(str(src))["a:0"].filter("aresample", first_pts=0).output(
            str(dest), acodec="pcm_s16le", ac=channels, ar=rate
        ),
        f"extracting audio to {dest.name}",
    )
    return dest


def _retimed(src: Path, dest: Path, tempo: float, rate: int):
    """The ffmpeg-python output of `src` resampled to `rate` mono, sped up by `tempo`."""
    stream = ffmpeg.input(str(src)).audio
    if abs(tempo - 1.0) > 1e-3:
        remaining = tempo
        while remaining > 2.0:  # atempo takes 0.5..2 per instance
            stream = stream.filter("atempo", 2.0)
            remaining /= 2.0
        stream = stream.filter("atempo", f"{remaining:.5f}")
    return stream.output(str(dest), acodec="pcm_s16le", ac=1, ar=rate)


def retime_wav(src: Path, dest: Path, *, tempo: float, rate: int) -> Path:
    """Resample to `rate` mono and speed up by `tempo` (atempo keeps pitch)."""
    run(_retimed(src, dest, tempo, rate), f"retiming {Path(src).name}")
    return dest


RETIME_BATCH = 64  # inputs per ffmpeg process (each holds its files open)


def retime_wavs(items: list[tuple[Path, Path, float]], *, rate: int) -> list[Path]:
    """retime_wav for many (src, dest, tempo) at once: one ffmpeg process per RETIME_BATCH files,
    each file through the same filters as retime_wav (the outputs are identical). Starting ffmpeg
    costs about 0.15 s of CPU, more than retiming one spoken segment.

    The same file at the same tempo (a sentence said twice, its speech taken from the segment cache)
    is retimed once and copied: ffmpeg-python merges identical graph nodes, and one filter node with
    two outputs does not compile ("a split filter is probably required")."""
    first: dict[tuple[str, str], Path] = {}
    unique: list[tuple[Path, Path, float]] = []
    copies: list[tuple[Path, Path]] = []
    for src, dest, tempo in items:
        key = (str(Path(src).resolve()), f"{tempo:.5f}")  # atempo's own precision (_retimed)
        if key in first:
            copies.append((first[key], dest))
        else:
            first[key] = dest
            unique.append((src, dest, tempo))
    for i in range(0, len(unique), RETIME_BATCH):
        chunk = unique[i:i + RETIME_BATCH]
        outputs = [_retimed(src, dest, tempo, rate) for src, dest, tempo in chunk]
        names = f"{Path(chunk[0][0]).name}" + (f" .. {Path(chunk[-1][0]).name}" if len(chunk) > 1 else "")
        run(ffmpeg.merge_outputs(*outputs), f"retiming {names}")
    for done, dest in copies:
        shutil.copyfile(done, dest)
    return [dest for _, dest, _ in items]


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def read_wav_mono(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as float32 samples in [-1, 1] (mono: channels averaged)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise MediaError(f"{Path(path).name}: expected 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        ch = w.getnchannels()
        rate = w.getframerate()
    if ch > 1:
        data = data.reshape(-1, ch).mean(axis=1)
    return data, rate


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write float samples ([-1, 1], shape (n,) or (n, ch)) as 16-bit PCM."""
    arr = np.asarray(samples, dtype=np.float32)
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    pcm = (np.clip(arr, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float
    lra: float
    true_peak_dbfs: float


def measure_loudness(path: Path, true_peak: bool = True) -> Loudness:
    """EBU R128 integrated loudness, loudness range and (when asked: it costs 4x oversampling)
    true peak, measured by ffmpeg's ebur128."""
    err = run(
        ffmpeg.input(str(path)).audio.filter("ebur128", peak="true" if true_peak else "none",
                                             framelog="verbose")
        .output("-", format="null"),
        f"measuring loudness of {Path(path).name}",
    ).decode("utf-8", "replace")
    summary = err[err.rfind("Summary:"):] if "Summary:" in err else err

    def grab(pattern: str, default: float) -> float:
        m = re.search(pattern, summary)
        return float(m.group(1)) if m else default

    return Loudness(
        integrated_lufs=grab(r"I:\s+(-?[\d.]+|-inf) LUFS", -70.0) if "I:" in summary else -70.0,
        lra=grab(r"LRA:\s+(-?[\d.]+) LU", 0.0),
        true_peak_dbfs=grab(r"Peak:\s+(-?[\d.]+|-inf) dBFS", -70.0),
    )


# The mix's codec per container: Opus in MKV (about 3.5x faster to encode than ffmpeg's AAC here, and
# better at the same bitrate); AAC in MP4, where players expect it.
MIX_CODECS = {"mkv": ("libopus", "128k", ".opus"), "mp4": ("aac", "192k", ".m4a")}


def encode_audio(src: Path, dest: Path, *, gain_db: float, codec: str = "aac",
                 bitrate: str = "192k", limit_db: float = -1.0) -> Path:
    """Apply a gain, a peak limiter at `limit_db`, and encode."""
    limit = 10 ** (limit_db / 20.0)
    stream = (
        ffmpeg.input(str(src)).audio
        .filter("volume", f"{gain_db:.2f}dB")
        .filter("alimiter", limit=f"{limit:.4f}", level="disabled", attack=5, release=50)
    )
    run(stream.output(str(dest), acodec=codec, audio_bitrate=bitrate), f"encoding {Path(dest).name}")
    return dest


def media_streams(path: Path) -> list[dict]:
    try:
        return ffmpeg.probe(str(path), v="error").get("streams", [])
    except ffmpeg.Error as exc:
        raise MediaError(f"probing {Path(path).name} failed: {stderr_tail(exc.stderr, paths=[str(path)])}") from None


def subtitle_cues(path: Path, index: int = 0) -> list[tuple[float, float]]:
    """(start, end) of each cue of the `index`th subtitle stream, as ffprobe reads the packets (the times a
    player shows them), relative to the file's start. MP4's mov_text fills the gaps between cues with empty
    samples (two bytes: a zero text length); those are not cues."""
    try:
        info = ffmpeg.probe(str(path), v="error", select_streams=f"s:{index}",
                            show_entries="packet=pts_time,duration_time,size:format=start_time")
    except ffmpeg.Error as exc:
        raise MediaError(f"reading the subtitles of {Path(path).name} failed: "
                         f"{stderr_tail(exc.stderr, paths=[str(path)])}") from None
    origin = float((info.get("format") or {}).get("start_time") or 0.0)
    out = []
    for packet in info.get("packets", []):
        if int(packet.get("size") or 0) <= 2:
            continue
        start = float(packet.get("pts_time") or 0.0) - origin
        out.append((round(start, 3), round(start + float(packet.get("duration_time") or 0.0), 3)))
    return out


def decoded_seconds(path: Path, stream: str = "a:0") -> float | None:
    """How long a stream really plays: decoded to the end (encoder delay and padding removed, as a player
    does). None when there is no such stream."""
    if not any(s.get("codec_type") == {"a": "audio", "v": "video", "s": "subtitle"}[stream[0]]
               for s in media_streams(path)):
        return None
    if stream[0] != "a":
        err = run(ffmpeg.input(str(path))[stream].output("-", format="null").global_args("-v", "error", "-stats"),
                  f"decoding {Path(path).name}").decode("utf-8", "replace")
        return _last_stats_time(err)
    # audio: count the decoded samples (timestamps would carry the muxer's shift and the encoder's delay)
    rate = 8000
    args = ffmpeg.compile(ffmpeg.input(str(path))[stream].output("-", format="s16le", ac=1, ar=rate)
                          .global_args("-v", "error", "-nostdin"))
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        total = 0
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
        stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise MediaError(f"decoding {Path(path).name} failed: {stderr_tail(stderr, paths=args)}")
    return total / 2 / rate


MP4_AUDIO_CODECS = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}
MP4_VIDEO_CODECS = {"h264", "hevc", "av1", "vp9", "mpeg4"}


@dataclass(frozen=True)
class Track:
    path: Path
    lang: str  # ISO 639-1
    title: str


# A picture that must be encoded again (turned upright for Matroska, or a codec MP4 cannot hold): H.264
# at a quality close to the source's, fast enough for a small machine (docs/benchmarks.md, figure 8).
REENCODE_VIDEO = {"c:v": "libx264", "preset:v": "veryfast", "crf:v": "18", "pix_fmt": "yuv420p"}


def copies_video(container: str, video_codec: str | None, rotation: int = 0) -> bool:
    """Whether the export copies the picture as it is. Matroska takes every codec, but ffmpeg 5.1's
    Matroska muxer drops a display rotation, so a rotated picture is turned upright (encoded again);
    MP4 keeps the rotation, but holds only MP4_VIDEO_CODECS."""
    if container == "mkv":
        return rotation == 0
    return (video_codec or "") in MP4_VIDEO_CODECS


def held_picture(video, holds: list[tuple[float, float]], duration: float, fps: str):
    """The picture with each (source time, seconds) hold frozen in: frames after a hold move later by its
    length (setpts), the gap is filled with the frame before it (fps duplicates), and a hold at the end
    clones the last frame (tpad)."""
    inner = [(at, d) for at, d in holds if at < duration - 0.02]
    end = sum(d for at, d in holds if at >= duration - 0.02)
    if inner:
        shift = "+".join(f"{d:.4f}*gte(T,{at:.4f})" for at, d in inner)
        video = video.filter("setpts", f"PTS-STARTPTS+({shift})/TB")
    if end > 0:
        video = video.filter("tpad", stop_mode="clone", stop_duration=f"{end:.4f}")
    return video.filter("fps", fps=fps)


def mux(source: Path, out: Path, *, has_video: bool, source_lang: str, original_codec: str,
        video_codec: str | None, dub: Track | None, subtitles: list[Track], container: str = "mkv",
        rotation: int = 0, holds: list[tuple[float, float]] = (), duration: float = 0.0, fps: str = "30",
        original: Path | None = None) -> Path:
    """The export: video stream copied (or turned upright, see copies_video); the dubbed track first and
    default, the original track second; subtitle streams; ISO 639-2 language tags and titles on every stream.

    With `holds` (fit extend_video) the picture is held at those source times (held_picture, encoded again)
    and `original` is the original sound already on that longer timeline (encoded instead of copied)."""
    src = ffmpeg.input(str(source))
    streams, opts = [], {}
    index = 0
    if has_video:
        if holds:  # encoded again (autorotate turns a rotated picture upright on the way)
            streams.append(held_picture(src["v:0"], list(holds), duration, fps))
            opts.update(REENCODE_VIDEO)
        elif copies_video(container, video_codec, rotation):
            streams.append(src["v:0"])
            opts["c:v"] = "copy"
            if container == "mp4" and video_codec == "hevc":
                opts["tag:v"] = "hvc1"  # the tag Apple's players need to play HEVC from MP4
        else:
            streams.append(src["v:0"])
            opts.update(REENCODE_VIDEO)  # ffmpeg's autorotate turns the decoded picture upright
        opts["metadata:s:v:0"] = f"language={iso639_2(source_lang)}"
        opts[f"metadata:s:{index}"] = "title=Video"
        index += 1
    audio_i = 0
    if dub is not None:
        streams.append(ffmpeg.input(str(dub.path))["a:0"])
        opts[f"c:a:{audio_i}"] = "copy"
        opts[f"metadata:s:a:{audio_i}"] = f"language={iso639_2(dub.lang)}"
        opts[f"metadata:s:{index}"] = f"title={dub.title}"
        opts[f"disposition:a:{audio_i}"] = "default"
        audio_i += 1
        index += 1
    if original is not None:
        streams.append(ffmpeg.input(str(original))["a:0"])
        codec, bitrate, _ = MIX_CODECS[container]
        opts[f"c:a:{audio_i}"] = codec
        opts[f"b:a:{audio_i}"] = bitrate
    else:
        streams.append(src["a:0"])
        keep = container == "mkv" or original_codec in MP4_AUDIO_CODECS
        opts[f"c:a:{audio_i}"] = "copy" if keep else "aac"
    opts[f"metadata:s:a:{audio_i}"] = f"language={iso639_2(source_lang)}"
    opts[f"metadata:s:{index}"] = f"title={language_name(source_lang)} (original)"
    opts[f"disposition:a:{audio_i}"] = "default" if dub is None else "0"
    index += 1
    for sub_i, sub in enumerate(subtitles):
        streams.append(ffmpeg.input(str(sub.path))["s:0"])
        opts[f"metadata:s:s:{sub_i}"] = f"language={iso639_2(sub.lang)}"
        opts[f"metadata:s:{index}"] = f"title={sub.title}"
        opts[f"disposition:s:{sub_i}"] = "0"
        index += 1
    if subtitles:
        opts["c:s"] = "srt" if container == "mkv" else "mov_text"
    if container == "mp4":
        opts["movflags"] = "+faststart"
    run(ffmpeg.output(*streams, str(out), **opts), f"writing {Path(out).name}")
    return out
