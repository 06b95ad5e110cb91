"""The dub's quality checks: Dagster asset checks evaluated inside the stage that produces what they check (no
extra step), each with its figures as metadata. The names are the contract (the API, the UI, the CLI and
notifications show them):

  dubbed_speech  speech_speed  every segment's speed-up <= the job's max_speed
                 speech_kept   no dubbed speech cut (fit review: blocking; fit cut: a warning)
                 coverage      every translated segment audible in its window
                 no_overlap    no dubbed segment runs into the next
                 round_trip    the dub transcribed again against its text (its own step: see round_trip.py)
  dubbed_mix     loudness      the dub track at target_lufs +- loudness_tolerance_lu, true peak <= max_true_peak_db
  dubbed_video   output_streams  the export has the streams it promises
                 sync          segments start where planned, the dub track covers the timeline, subtitles match

Every check but round_trip is blocking: a failure at ERROR severity stops the run before anything is
published, and the job needs review. A check a reviewer accepted (the run's `dubbing/accept` tag, set by
"publish anyway") reports a failure at WARN severity instead, so the run goes on.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np

NO_OVERLAP = "no_overlap"
OUTPUT_STREAMS = "output_streams"
SPEECH_SPEED = "speech_speed"
SPEECH_KEPT = "speech_kept"
COVERAGE = "coverage"
SYNC = "sync"
LOUDNESS = "loudness"
ROUND_TRIP = "round_trip"

AUDIBLE_DBFS = -45.0  # a placed segment whose RMS is below this is silent
SYNC_TOLERANCE_S = 0.15  # a segment's onset against where it was placed
TRACK_TOLERANCE_S = 0.05  # the dub track's length against the export's timeline
SPEED_SLACK = 0.01  # atempo and resampling round a speed-up by less than this

DESCRIPTIONS = {
    SPEECH_SPEED: "every dubbed segment's speed-up is within the job's max_speed",
    SPEECH_KEPT: "no dubbed speech is cut to fit its slot",
    COVERAGE: "every translated segment is audible in its window",
    NO_OVERLAP: "no dubbed segment overlaps the next",
    LOUDNESS: "the dub track is at the job's loudness target, true peak within the limit",
    OUTPUT_STREAMS: "the export has the streams it promises",
    SYNC: "each segment starts where it was placed, the dub track covers the timeline, the subtitles match",
}
ON_ASSET = {
    "dubbed_speech": [SPEECH_SPEED, SPEECH_KEPT, COVERAGE, NO_OVERLAP],
    "dubbed_mix": [LOUDNESS],
    "dubbed_video": [OUTPUT_STREAMS, SYNC],
}
BLOCKING = {name for names in ON_ASSET.values() for name in names}
ASSET_OF = {name: asset for asset, names in ON_ASSET.items() for name in names}


def evaluations(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """The asset check evaluations of one run, in order, as plain dicts (Dagster's event log is the source)."""
    out = []
    for rec in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        ev = rec.event_log_entry.dagster_event.event_specific_data
        out.append({
            "name": ev.check_name, "asset": ev.asset_key.to_user_string(), "passed": bool(ev.passed),
            "severity": ev.severity.value.lower(), "blocking": bool(ev.blocking), "run_id": run_id,
            "description": ev.description or "",
            "time": dt.datetime.fromtimestamp(rec.event_log_entry.timestamp, dt.timezone.utc).isoformat(),
            "metadata": {k: _json(v) for k, v in (ev.metadata or {}).items()},
        })
    return out


def blocking_failures(evaluated: list[dict]) -> list[dict]:
    """The evaluations that stop a run: failed, at ERROR severity, blocking."""
    return [e for e in evaluated if not e["passed"] and e["severity"] == "error" and e["blocking"]]


def _json(value) -> object:
    """A metadata value as JSON (lists and dicts kept, the rest as text)."""
    raw = getattr(value, "value", value)
    if isinstance(raw, (int, float, str, bool, list, dict)) or raw is None:
        return raw
    return str(raw)


def specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, description=DESCRIPTIONS[name], blocking=True)
            for name in ON_ASSET[asset]]


def result(name: str, passed: bool, metadata: dict, description: str, accepted: frozenset[str] = frozenset(),
           warn_only: bool = False) -> dg.AssetCheckResult:
    """A check's result: ERROR severity (blocking) when it fails, unless it only warns or a reviewer
    accepted it."""
    severity = dg.AssetCheckSeverity.ERROR
    if not passed and (warn_only or name in accepted):
        severity = dg.AssetCheckSeverity.WARN
        if name in accepted:
            metadata = {**metadata, "accepted": True}
            description = f"accepted by a reviewer: {description}"
    return dg.AssetCheckResult(check_name=name, passed=passed, severity=severity, metadata=metadata,
                               description=description[:1000])


def _ids(items: list, limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


def no_overlap_check(placements, accepted: frozenset[str] = frozenset()) -> dg.AssetCheckResult:
    overlaps = [
        (a.id, b.id) for a, b in zip(placements, placements[1:]) if a.placed_end > b.placed_start + 1e-3
    ]
    desc = "no segment runs into the next" if not overlaps else \
        f"segments overlap: {_ids([f'{a}/{b}' for a, b in overlaps])}"
    return result(NO_OVERLAP, not overlaps, {"segments": len(placements), "overlapping_pairs": str(overlaps[:20])},
                  desc, accepted)


def rms_dbfs(samples: np.ndarray) -> float:
    if len(samples) == 0:
        return -120.0
    return float(20 * np.log10(max(1e-6, float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))))))


def speech_checks(placements, track: np.ndarray, rate: int, policy, timeline,
                  accepted: frozenset[str] = frozenset()) -> list[dg.AssetCheckResult]:
    """speech_speed, speech_kept, coverage and no_overlap of the placed segments, measured on the track."""
    speeds = [p.speed for p in placements]
    too_fast = [p.id for p in placements if p.speed > policy.max_speed + SPEED_SLACK]
    borrowed_before = round(sum(p.borrowed_before_s for p in placements), 2)
    borrowed_after = round(sum(p.borrowed_after_s for p in placements), 2)
    speed = result(SPEECH_SPEED, not too_fast, {
        "max_speed_allowed": policy.max_speed, "segments": len(placements),
        "sped_up": sum(1 for s in speeds if s > 1.005),
        "speed_p50": _percentile(speeds, 50), "speed_p95": _percentile(speeds, 95),
        "speed_max": round(max(speeds), 3) if speeds else 1.0,
        "engine_rate_segments": sum(1 for p in placements if p.engine_rate > 1.0),
        "borrowed_before_s": borrowed_before, "borrowed_after_s": borrowed_after,
        "borrowed_s": round(borrowed_before + borrowed_after, 2),
        "compressed_pauses_s": round(sum(p.compressed_s for p in placements), 2),
        "too_fast": dg.MetadataValue.json(too_fast[:100]),
    }, (f"{len(too_fast)} segment(s) sped up past {policy.max_speed}: {_ids(too_fast)}" if too_fast else
        f"p95 speed {_percentile(speeds, 95)}, max {round(max(speeds), 3) if speeds else 1.0} "
        f"(limit {policy.max_speed})"), accepted)

    cut = [(p.id, round(p.cut_s, 2)) for p in placements if p.cut_s > 0.005]
    cut_s = round(sum(c for _, c in cut), 2)
    held = [(p.id, round(p.hold_s, 2)) for p in placements if p.hold_s > 0]
    if not cut:
        kept_desc = (f"every word kept; the picture is held {round(sum(h for _, h in held), 2)} s after "
                     f"segment(s) {_ids([i for i, _ in held])}" if held else "every word kept")
    else:
        listed = ", ".join(f"{i} ({c} s)" for i, c in cut[:8]) + (f" and {len(cut) - 8} more" if len(cut) > 8 else "")
        kept_desc = (f"{len(cut)} segment(s) do not fit even at {policy.max_speed}x: {listed}; {cut_s} s of "
                     f"speech cut. Shorten their translation and re-dub, or set fit to extend_video")
    kept = result(SPEECH_KEPT, not cut, {
        "fit": policy.fit, "cut_segments": dg.MetadataValue.json([{"id": i, "cut_s": c} for i, c in cut][:200]),
        "cut_count": len(cut), "cut_s": cut_s,
        "held_segments": dg.MetadataValue.json([{"id": i, "hold_s": h} for i, h in held][:200]),
        "held_s": round(sum(h for _, h in held), 2), "timeline_s": round(timeline.extended, 3),
    }, kept_desc, accepted, warn_only=policy.fit == "cut")

    silent = []
    levels = []
    for p in placements:
        window = track[int(p.placed_start * rate):int(p.placed_end * rate)]
        level = rms_dbfs(window)
        levels.append(level)
        if p.placed_end - p.placed_start < 0.05 or level < AUDIBLE_DBFS:
            silent.append(p.id)
    coverage = result(COVERAGE, not silent, {
        "segments": len(placements), "silent_segments": dg.MetadataValue.json(silent[:100]),
        "audible_floor_dbfs": AUDIBLE_DBFS, "quietest_dbfs": round(min(levels), 1) if levels else None,
    }, (f"{len(silent)} segment(s) silent in their window: {_ids(silent)}" if silent else
        f"all {len(placements)} segments audible"), accepted)
    return [speed, kept, coverage, no_overlap_check(placements, accepted)]


def loudness_check(integrated: float, true_peak: float, target: float, tolerance: float, max_peak: float,
                   accepted: frozenset[str] = frozenset()) -> dg.AssetCheckResult:
    off = round(integrated - target, 2)
    problems = []
    if abs(off) > tolerance:
        problems.append(f"integrated {integrated} LUFS is {abs(off)} LU {'above' if off > 0 else 'below'} the "
                        f"{target} LUFS target (tolerance {tolerance} LU)")
    if true_peak > max_peak:
        problems.append(f"true peak {true_peak} dBTP is above {max_peak} dBTP")
    return result(LOUDNESS, not problems, {
        "integrated_lufs": integrated, "target_lufs": target, "error_lu": off, "tolerance_lu": tolerance,
        "true_peak_dbtp": true_peak, "max_true_peak_dbtp": max_peak,
    }, "; ".join(problems) or f"{integrated} LUFS (target {target}), true peak {true_peak} dBTP", accepted)


def output_streams_check(streams: list[dict], *, expect_video: bool, expect_dub: bool,
                         langs: tuple[str, str], accepted: frozenset[str] = frozenset()) -> dg.AssetCheckResult:
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
    return result(OUTPUT_STREAMS, not problems,
                  {"video": len(video), "audio": len(audio), "subtitles": len(subs),
                   "problems": "; ".join(problems) or "none"},
                  "; ".join(problems) or "video, dub, original and subtitles as promised", accepted)


def onset(track: np.ndarray, rate: int, start: float, end: float, search_s: float = 0.3,
          after: float = 0.0) -> float | None:
    """Where speech really begins near `start` in the dub track (10 ms frames above the audible floor),
    searched from `search_s` before it (but not before `after`, where the previous segment ends) to `end`;
    None when the window is silent."""
    a = max(0, int(max(after, start - search_s) * rate))
    b = min(len(track), int(end * rate))
    frame = max(1, rate // 100)
    n = (b - a) // frame
    if n <= 0:
        return None
    energy = np.sqrt(np.mean(track[a:a + n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(energy >= 10 ** (AUDIBLE_DBFS / 20))
    return None if len(loud) == 0 else (a + int(loud[0]) * frame) / rate


def sync_check(placements: list[dict], timeline, track: np.ndarray, rate: int, dub_length: float | None,
               cues: list[tuple[float, float]], accepted: frozenset[str] = frozenset()) -> dg.AssetCheckResult:
    """Each segment's onset in the dub track against its original start on the export's timeline plus its
    recorded shift; the exported dub track's length against the timeline; the dub subtitles' cues against
    the placements."""
    errors, late = [], []
    previous_end = 0.0
    for p in placements:
        expected = timeline.to_export(p["start"]) + p.get("shift_s", 0.0)
        found = onset(track, rate, expected, p["placed_end"], after=previous_end)
        previous_end = p["placed_end"]
        error = abs(found - expected) if found is not None else float("inf")
        errors.append(error)
        if error > SYNC_TOLERANCE_S:
            late.append(p["id"])
    finite = [e for e in errors if e != float("inf")]
    problems = []
    if late:
        problems.append(f"{len(late)} segment(s) start more than {int(SYNC_TOLERANCE_S * 1000)} ms from their "
                        f"place: {_ids(late)}")
    length_error = None if dub_length is None else round(dub_length - timeline.extended, 3)
    if length_error is None or abs(length_error) > TRACK_TOLERANCE_S:
        problems.append("the dub track's length is unknown" if length_error is None else
                        f"the dub track lasts {dub_length:.3f} s for a {timeline.extended:.3f} s timeline")
    mismatched = [p["id"] for p, cue in zip(placements, cues)
                  if abs(cue[0] - p["placed_start"]) > 0.011 or abs(cue[1] - p["placed_end"]) > 0.011]
    if len(cues) != len(placements):
        problems.append(f"{len(cues)} subtitle cues for {len(placements)} segments")
    elif mismatched:
        problems.append(f"subtitle cues off their segments: {_ids(mismatched)}")
    return result(SYNC, not problems, {
        "segments": len(placements),
        "sync_error_p50_ms": round(1000 * _percentile(finite, 50)) if finite else None,
        "sync_error_p95_ms": round(1000 * _percentile(finite, 95)) if finite else None,
        "sync_error_max_ms": round(1000 * max(finite)) if finite else None,
        "out_of_sync": dg.MetadataValue.json(late[:100]),
        "dub_track_s": dub_length, "timeline_s": round(timeline.extended, 3),
        "track_length_error_ms": None if length_error is None else round(1000 * length_error),
        "subtitle_cues": len(cues), "subtitle_mismatches": len(mismatched),
    }, "; ".join(problems) or (f"onsets within {round(1000 * max(finite)) if finite else 0} ms, track "
                               f"{dub_length:.3f} s for a {timeline.extended:.3f} s timeline, subtitles match"),
        accepted)
