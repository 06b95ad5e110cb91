"""Asset checks evaluated inside the stage that produces the asset (no extra step per check)."""

from __future__ import annotations

import dagster as dg

NO_OVERLAP = "no_overlap"
OUTPUT_STREAMS = "output_streams"


def no_overlap_check(placements) -> dg.AssetCheckResult:
    overlaps = [
        (a.id, b.id) for a, b in zip(placements, placements[1:]) if a.placed_end > b.placed_start + 1e-3
    ]
    return dg.AssetCheckResult(
        check_name=NO_OVERLAP, passed=not overlaps,
        metadata={"segments": len(placements), "overlapping_pairs": str(overlaps[:20])},
    )


def output_streams_check(streams: list[dict], *, expect_video: bool, expect_dub: bool,
                         langs: tuple[str, str]) -> dg.AssetCheckResult:
    """The export has the streams it promises: the video (when the source had one), the dubbed
    track first and default (when there was speech), the original track, subtitle streams."""
    video = [s for s in streams if s.get("codec_type") == "video"]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    subs = [s for s in streams if s.get("codec_type") == "subtitle"]
    audio_langs = [(s.get("tags") or {}).get("language") for s in audio]
    problems = []
    if expect_video and len(video) != 1:
        problems.append(f"{len(video)} video streams")
    if expect_dub:
        if audio_langs != list(langs):
            problems.append(f"audio languages {audio_langs}, expected {list(langs)}")
        if not audio or not (audio[0].get("disposition") or {}).get("default"):
            problems.append("dubbed track is not the default")
        if len(subs) < 2:
            problems.append(f"{len(subs)} subtitle streams")
    elif len(audio) != 1:
        problems.append(f"{len(audio)} audio streams for a job without speech")
    return dg.AssetCheckResult(
        check_name=OUTPUT_STREAMS, passed=not problems,
        metadata={"video": len(video), "audio": len(audio), "subtitles": len(subs),
                  "problems": "; ".join(problems) or "none"},
    )
