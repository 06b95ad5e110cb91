"""The fitting plan (dubbing_assets/fit.py) as pure numbers, and its audio side on real espeak-ng speech: each
step is taken only when the ones before are not enough, nothing overlaps, nothing is sped up past max_speed,
and what does not fit is cut (review, cut) or held (extend_video) — never lost silently."""

import itertools

import numpy as np
import pytest

import mediagen
from dubbing_assets.fit import GAP_S, Policy, Timeline, measure_speech, plan_fits, prepare_speech
from resources import media


def seg(i, start, end):
    return {"id": i, "start": start, "end": end}


def one(start, end, natural, pauses=0.0, next_start=None, policy=Policy(), duration=100.0, prev_end=None):
    """Plan one segment (optionally after one that ends at `prev_end`) and return its plan."""
    segs, lengths = [], []
    if prev_end is not None:
        segs.append(seg(0, 0.0, prev_end))
        lengths.append((prev_end, 0.0))
    segs.append(seg(1, start, end))
    lengths.append((natural, pauses))
    if next_start is not None:
        segs.append(seg(2, next_start, next_start + 1))
        lengths.append((0.5, 0.0))
    plans, _ = plan_fits(segs, lengths, duration, policy)
    return plans[1 if prev_end is not None else 0]


def test_speech_that_fits_is_placed_as_it_is():
    p = one(1.0, 3.0, 1.5, next_start=4.0)
    assert (p.speed, p.placed_start, p.placed_end, p.cut_s, p.shift_s) == (1.0, 1.0, 2.5, 0.0, 0.0)


def test_following_silence_is_borrowed_before_anything_else():
    p = one(1.0, 3.0, 2.8, pauses=0.5, next_start=4.0)
    assert p.speed == 1.0 and p.compressed_s == 0.0
    assert p.placed_end == pytest.approx(3.8) and p.borrowed_after_s == pytest.approx(0.8)


def test_pauses_are_shortened_before_speeding_up():
    room = 4.0 - GAP_S - 1.0
    p = one(1.0, 3.0, room + 0.3, pauses=0.5, next_start=4.0)
    assert p.speed == 1.0 and p.compressed_s == pytest.approx(0.3)
    p = one(1.0, 3.0, room + 0.8, pauses=0.5, next_start=4.0)  # pauses are not enough: then faster
    assert p.compressed_s == pytest.approx(0.5) and p.speed == pytest.approx((room + 0.3) / room)


def test_speed_up_only_as_much_as_needed_then_an_earlier_start():
    room = 4.0 - GAP_S - 1.0
    p = one(1.0, 3.0, room * 1.2, next_start=4.0, prev_end=0.2)
    assert p.speed == pytest.approx(1.2) and p.shift_s == 0.0
    p = one(1.0, 3.0, room * 1.35 + 0.2, next_start=4.0, prev_end=0.2)  # 1.35 is not enough: start earlier
    assert p.speed == pytest.approx(1.35) and p.cut_s == 0.0
    assert -0.5 <= p.shift_s < 0 and p.placed_end == pytest.approx(4.0 - GAP_S)
    assert p.borrowed_before_s == pytest.approx(-p.shift_s)
    p = one(1.0, 3.0, room * 1.35 + 0.2, next_start=4.0, prev_end=0.95)  # no free gap before: cannot shift
    assert p.shift_s == 0.0 and p.cut_s > 0


def test_what_does_not_fit_is_cut_under_review_and_cut_but_held_with_extend_video():
    room = 4.0 - GAP_S - 1.0
    natural = room * 1.35 + 1.35 * 1.0  # one second too long at max speed, no earlier start allowed
    for fit in ("review", "cut"):
        p = one(1.0, 3.0, natural, next_start=4.0, policy=Policy(fit=fit, max_shift_s=0.0))
        assert p.cut_s == pytest.approx(1.0) and p.placed_end == pytest.approx(4.0 - GAP_S) and p.hold_s == 0
    plans, timeline = plan_fits([seg(1, 1.0, 3.0), seg(2, 4.0, 5.0)], [(natural, 0.0), (0.5, 0.0)], 10.0,
                                Policy(fit="extend_video", max_shift_s=0.0))
    held, after = plans
    assert held.cut_s == 0 and held.hold_s == pytest.approx(1.0) and held.placed_end == pytest.approx(5.0 - GAP_S)
    assert timeline.holds == [(pytest.approx(4.0 - GAP_S), pytest.approx(1.0))]
    assert after.placed_start == pytest.approx(5.0)  # every later time moves by the hold
    assert timeline.extended == pytest.approx(11.0) and timeline.to_export(6.0) == pytest.approx(7.0)
    assert timeline.to_export(2.0) == pytest.approx(2.0)


def test_a_hold_after_the_last_segment_extends_the_end():
    plans, timeline = plan_fits([seg(1, 8.0, 9.5)], [(4.0, 0.0)], 10.0, Policy(fit="extend_video", max_shift_s=0))
    assert plans[0].hold_s == pytest.approx(4.0 / 1.35 - 2.0) and timeline.holds[0][0] == pytest.approx(10.0)
    frames = timeline.pieces(100)
    assert frames[0] == (0, 1000, 0) and frames[1][2] is None and sum(n for _, n, _ in frames) == \
        pytest.approx(timeline.extended * 100, abs=1)


def test_plan_invariants_over_a_grid():
    bad = []
    for fit, max_speed, shift in itertools.product(("review", "cut", "extend_video"), (1.0, 1.35, 2.0), (0.0, 0.5)):
        policy = Policy(max_speed=max_speed, max_shift_s=shift, fit=fit)
        for gaps, lengths in itertools.product(((0.0, 0.01, 0.3), (1.0, 0.05, 2.0)),
                                               ((0.0, 1.0, 4.0), (0.3, 2.5, 0.04), (5.0, 5.0, 5.0))):
            segs, t = [], 0.5
            for i, gap in enumerate(gaps):
                segs.append(seg(i, t, t + 1.0))
                t += 1.0 + gap
            plans, timeline = plan_fits(segs, [(n, n / 5) for n in lengths], t + 0.5, policy)
            for a, b in zip(plans, plans[1:]):
                if a.placed_end > b.placed_start + 1e-9:
                    bad.append(("overlap", fit, gaps, lengths))
            for p, n in zip(plans, lengths):
                if not (1.0 <= p.speed <= max_speed + 1e-9):
                    bad.append(("speed", fit, p))
                kept = p.placed_s + p.cut_s  # placed length plus what was cut, at the plan's speed
                if abs(kept * p.speed - (n - p.compressed_s)) > 1e-6 and p.placed_s > 0:
                    bad.append(("length", fit, p, n))
                if fit == "extend_video" and p.cut_s > 1e-9:
                    bad.append(("cut under extend_video", p))
                if p.shift_s < -shift - 1e-9:
                    bad.append(("shift", p))
            if fit != "extend_video" and timeline.holds:
                bad.append(("hold without extend_video", fit))
    assert not bad, f"{len(bad)} violations, e.g. {bad[:4]}"


def test_speech_is_trimmed_and_its_pauses_shortened_on_real_speech(tmp_path):
    wav = tmp_path / "two.wav"
    mediagen.speak_espeak("The weather is fine today. Tomorrow it will rain in the mountains.", wav)
    samples, rate = media.read_wav_mono(wav)
    padded = np.concatenate([np.zeros(rate // 2, np.float32), samples, np.zeros(rate // 2, np.float32)])
    natural, pauses = measure_speech(padded, rate)
    assert natural < len(padded) / rate - 0.9  # the half seconds of silence around it are not speech
    assert pauses > 0.1  # espeak-ng pauses at the full stop
    trimmed = prepare_speech(padded, rate, 0.0)
    assert len(trimmed) / rate == pytest.approx(natural, abs=0.011)
    shorter = prepare_speech(padded, rate, pauses)
    assert len(shorter) / rate == pytest.approx(natural - pauses, abs=0.02)
    assert measure_speech(shorter, rate)[1] == pytest.approx(0.0, abs=0.02)  # no removable pause left
    assert float(np.sqrt(np.mean(shorter ** 2))) > float(np.sqrt(np.mean(trimmed ** 2)))  # only silence went


def test_timeline_round_trip():
    t = Timeline(duration=10.0, holds=[(4.0, 1.0), (8.0, 0.5)])
    assert Timeline.from_dict(t.to_dict(), 10.0).holds == t.holds
    assert [t.to_export(x) for x in (0.0, 4.0, 4.5, 8.5)] == [0.0, 4.0, 5.5, 10.0]
