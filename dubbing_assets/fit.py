"""Fitting dubbed speech into the original timing: a plan per segment, cutting only as a last resort.

For each segment, in order (each step only when the ones before are not enough):

1. its speech at the voice's natural rate, leading and trailing silence trimmed, from its original start;
2. the silence that follows it, up to the next segment's start (minus GAP_S);
3. its own pauses shortened to PAUSE_KEEP_S (the speech split at its pauses and joined closer);
4. spoken faster, up to the job's `max_speed`: first by the TTS engine's own rate (espeak-ng's words per
   minute, Piper's length scale: clearer than stretching audio afterwards), the rest with ffmpeg's atempo;
5. started earlier, into the free gap before it (at most `max_shift_s`; the shift is recorded, and the
   sync check holds the segment to its original start plus that shift);
6. what still does not fit is decided by the job's `fit`: `review` (the default: the overflow is cut with a
   short fade in the track so a "publish anyway" is sane, and the blocking `speech_kept` check fails naming
   each segment and the seconds), `cut` (the same cut, reported as a warning), or `extend_video` (nothing is
   cut: the picture is held after the segment for the overflow, so every later time moves by it; the
   export is longer than the source and both subtitle tracks follow the new timeline).

`plan_fits` is pure (numbers in, numbers out); `prepare_speech` is the audio side of steps 1 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from resources.jobstore import FITS  # review | extend_video | cut: the job option's values

__all__ = ["BEFORE", "FITS", "GAP_S", "FADE_S", "Policy", "SegmentPlan", "Timeline", "plan_fits", "measure_speech",
           "prepare_speech", "speech_bounds"]

GAP_S = 0.05  # silence kept between one dubbed segment and the next
FADE_S = 0.03  # fade-out of a cut segment
PAUSE_KEEP_S = 0.12  # a pause inside a segment's speech is shortened to this when room is short
PAUSE_MIN_S = 0.2  # silences shorter than this inside speech are not pauses (stops, breaths)
SILENCE_DBFS = -50.0  # a 10 ms frame below this is silence (TTS output is clean)


@dataclass(frozen=True)
class Policy:
    """What a plan may do. The defaults are a job's; the benchmark's "before" turns the new steps off."""

    max_speed: float = 1.35
    max_shift_s: float = 0.5
    fit: str = "review"
    compress_pauses: bool = True
    engine_rate: bool = True  # speak faster with the TTS engine's own rate before atempo


# The fit as it was before the quality gate (borrow the following silence, atempo, then cut): the
# benchmark's "before" (bench/quality.py).
BEFORE = Policy(max_shift_s=0.0, fit="cut", compress_pauses=False, engine_rate=False)


@dataclass
class SegmentPlan:
    id: int
    start: float  # original start and end (source timeline)
    end: float
    natural_s: float  # speech at the natural rate, trimmed
    pauses_s: float  # of which pause seconds that step 3 may remove
    speed: float = 1.0  # speed-up the speech gets (speech seconds / placed seconds), <= max_speed
    placed_start: float = 0.0  # on the export's timeline (the source's, plus earlier holds)
    placed_end: float = 0.0
    compressed_s: float = 0.0  # pause seconds removed (step 3)
    shift_s: float = 0.0  # placed_start minus the original start on the export's timeline (<= 0: earlier)
    borrowed_before_s: float = 0.0
    borrowed_after_s: float = 0.0
    cut_s: float = 0.0  # seconds of speech (as placed) that did not fit and were cut
    hold_s: float = 0.0  # picture held after this segment (extend_video)

    @property
    def placed_s(self) -> float:
        return self.placed_end - self.placed_start


@dataclass
class Timeline:
    """The export's timeline: the source's, with the picture held `seconds` at each source time `at`."""

    duration: float  # the source's
    holds: list[tuple[float, float]] = field(default_factory=list)  # (source time, seconds held)

    @property
    def extended(self) -> float:
        return self.duration + sum(d for _, d in self.holds)

    def to_export(self, t: float) -> float:
        """A source time on the export's timeline (a time at a hold point stays before the hold)."""
        return t + sum(d for at, d in self.holds if at < t - 1e-9)

    def pieces(self, rate: int) -> list[tuple[int, int, int | None]]:
        """The export's timeline in frames at `rate`: (export start, length, source start or None for a hold),
        in order, covering `extended` seconds."""
        out, src, at = [], 0, 0
        for hold_at, seconds in sorted(self.holds):
            until = int(round(hold_at * rate))
            if until > src:
                out.append((at, until - src, src))
                at += until - src
                src = until
            n = int(round(seconds * rate))
            if n > 0:
                out.append((at, n, None))
                at += n
        end = int(round(self.duration * rate))
        if end > src:
            out.append((at, end - src, src))
        return out

    def to_dict(self) -> dict:
        return {"duration_s": round(self.duration, 3), "extended_s": round(self.extended, 3),
                "holds": [{"at": round(a, 3), "seconds": round(d, 3)} for a, d in self.holds]}

    @classmethod
    def from_dict(cls, data: dict | None, duration: float) -> "Timeline":
        holds = [(float(h["at"]), float(h["seconds"])) for h in (data or {}).get("holds", [])]
        return cls(duration=duration, holds=holds)


def plan_fits(segments: list[dict], lengths: list[tuple[float, float]], duration: float,
              policy: Policy) -> tuple[list[SegmentPlan], Timeline]:
    """Plans for `segments` ({id, start, end}, in time order) whose speech lasts `lengths` ((natural seconds,
    removable pause seconds) each), in media of `duration` seconds. Placements never overlap."""
    plans: list[SegmentPlan] = []
    timeline = Timeline(duration=duration)
    held = 0.0  # seconds of picture held so far: the export's timeline runs this far ahead of the source's
    prev_end = -GAP_S
    for i, (seg, (natural, pauses)) in enumerate(zip(segments, lengths, strict=True)):
        next_start = segments[i + 1]["start"] if i + 1 < len(segments) else duration + GAP_S
        p = SegmentPlan(id=seg["id"], start=seg["start"], end=seg["end"], natural_s=natural, pauses_s=pauses)
        start = seg["start"] + held
        window_end = max(start, next_start - GAP_S + held)  # where this segment must have finished
        earliest = min(start, max(prev_end + GAP_S, start - policy.max_shift_s))
        room = window_end - start
        length = natural
        if length > room and policy.compress_pauses and pauses > 0:  # step 3
            p.compressed_s = min(pauses, length - room)
            length -= p.compressed_s
        if length <= room:  # steps 1-3
            placed_start, placed = start, length
        elif room > 0 and length / room <= policy.max_speed:  # step 4
            p.speed = length / room
            placed_start, placed = start, room
        elif window_end - earliest > 0 and length / (window_end - earliest) <= policy.max_speed:  # step 5
            p.speed = policy.max_speed
            placed = length / p.speed
            placed_start = window_end - placed
        else:  # step 6
            p.speed = policy.max_speed
            full = length / p.speed
            placed_start = earliest
            overflow = full - (window_end - earliest)
            if policy.fit == "extend_video":
                placed = full
                p.hold_s = overflow
                hold_at = min(duration, next_start - GAP_S) if i + 1 < len(segments) else duration
                timeline.holds.append((hold_at, overflow))
                held += overflow
            else:
                placed = window_end - earliest
                p.cut_s = overflow
        p.placed_start, p.placed_end = placed_start, placed_start + max(0.0, placed)
        p.shift_s = min(0.0, placed_start - start)
        p.borrowed_before_s = max(0.0, start - placed_start)
        p.borrowed_after_s = max(0.0, p.placed_end - (seg["end"] + held - p.hold_s))
        plans.append(p)
        prev_end = p.placed_end
    return plans, timeline


# --- the audio side -------------------------------------------------------------------------------


def _silent_frames(samples: np.ndarray, rate: int) -> np.ndarray:
    """Per 10 ms frame: True where the frame is silence."""
    frame = max(1, rate // 100)
    n = len(samples) // frame
    if n == 0:
        return np.zeros(0, dtype=bool)
    energy = np.sqrt(np.mean(samples[:n * frame].reshape(n, frame) ** 2, axis=1))
    return energy < 10 ** (SILENCE_DBFS / 20)


def speech_bounds(samples: np.ndarray, rate: int) -> tuple[int, int]:
    """First and last sample of speech (0, 0 when the whole file is silence)."""
    silent = _silent_frames(samples, rate)
    voiced = np.flatnonzero(~silent)
    if len(voiced) == 0:
        return 0, 0
    frame = max(1, rate // 100)
    return int(voiced[0] * frame), min(len(samples), int((voiced[-1] + 1) * frame))


def pauses(samples: np.ndarray, rate: int) -> list[tuple[int, int]]:
    """(start, end) samples of the pauses inside speech: silent runs of at least PAUSE_MIN_S between voiced frames."""
    silent = _silent_frames(samples, rate)
    frame = max(1, rate // 100)
    out, run_start = [], None
    voiced_seen = False
    for i, s in enumerate(silent):
        if s and run_start is None and voiced_seen:
            run_start = i
        elif not s:
            if run_start is not None and (i - run_start) * frame >= PAUSE_MIN_S * rate:
                out.append((run_start * frame, i * frame))
            run_start = None
            voiced_seen = True
    return out


def measure_speech(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """(natural seconds with leading and trailing silence trimmed, pause seconds that can be removed)."""
    first, last = speech_bounds(samples, rate)
    removable = sum(max(0, (b - a) - int(PAUSE_KEEP_S * rate)) for a, b in pauses(samples, rate))
    return (last - first) / rate, removable / rate


def prepare_speech(samples: np.ndarray, rate: int, remove_s: float) -> np.ndarray:
    """The speech trimmed of leading and trailing silence, with up to `remove_s` seconds taken out of its
    pauses (the longest pauses shortened first, none below PAUSE_KEEP_S)."""
    first, last = speech_bounds(samples, rate)
    if last <= first:
        return samples[:0]
    body = samples[first:last]
    todo = int(round(remove_s * rate))
    if todo <= 0:
        return body
    keep = int(PAUSE_KEEP_S * rate)
    found = sorted(pauses(body, rate), key=lambda ab: ab[1] - ab[0], reverse=True)
    cuts: list[tuple[int, int]] = []  # (start, length) of the samples to drop, from the middle of each pause
    for a, b in found:
        if todo <= 0:
            break
        take = min(todo, (b - a) - keep)
        if take > 0:
            cuts.append((a + ((b - a) - take) // 2, take))
            todo -= take
    keep_mask = np.ones(len(body), dtype=bool)
    for at, n in cuts:
        keep_mask[at:at + n] = False
    return body[keep_mask]
