"""SRT and WebVTT from timed segments."""

from __future__ import annotations

from pathlib import Path

from resources.storage import atomic_write_text


def _ts(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def cues(segments: list[dict], text_key: str, start_key: str = "start", end_key: str = "end"):
    for seg in segments:
        text = " ".join(str(seg.get(text_key, "")).split())
        if text and seg[end_key] > seg[start_key]:
            yield seg[start_key], seg[end_key], text


def to_srt(segments: list[dict], text_key: str, **keys) -> str:
    blocks = [
        f"{i}\n{_ts(a, ',')} --> {_ts(b, ',')}\n{text}\n"
        for i, (a, b, text) in enumerate(cues(segments, text_key, **keys), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: list[dict], text_key: str, **keys) -> str:
    blocks = [f"{_ts(a, '.')} --> {_ts(b, '.')}\n{text}\n" for a, b, text in cues(segments, text_key, **keys)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def write_pair(base: Path, segments: list[dict], text_key: str, **keys) -> tuple[Path, Path]:
    srt, vtt = base.with_suffix(".srt"), base.with_suffix(".vtt")
    atomic_write_text(srt, to_srt(segments, text_key, **keys))
    atomic_write_text(vtt, to_vtt(segments, text_key, **keys))
    return srt, vtt
