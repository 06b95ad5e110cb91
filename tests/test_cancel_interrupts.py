"""A cancel reaches the run worker as SIGINT, and Dagster's handler raises DagsterExecutionInterruptedError
wherever the main thread is. Code that swallows every exception (a finalizer the garbage collector runs, a
library's `except BaseException`) used to lose it: the run went on to SUCCESS while CANCELING. Each case
here sends a real SIGINT inside Dagster's own interrupt handlers (as a run worker has them during a step),
lets library-like code swallow it, and checks that the stage raises the interrupt all the same: at its next
checkpoint, or at the end of its work."""

import gc
import os
import signal
import time

import pytest
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._utils.interrupts import capture_interrupts, raise_interrupts_as

from dubbing_assets.stage import STAGE_LOG, log_progress, stage_errors
from resources.asr import AsrResource


def interrupt_swallowed_by_except() -> None:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler raises in here
    except BaseException:  # noqa: BLE001 - the library's habit under test
        pass


class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # raised in a finalizer: "Exception ignored in ...", and gone


def interrupt_swallowed_by_a_finalizer() -> None:
    a, b = Finalised(), Finalised()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    del a, b
    gc.collect()


def in_a_step(body):
    """Run `body` as a step's user code runs in a run worker: Dagster's handlers around it."""
    with capture_interrupts(), raise_interrupts_as(DagsterExecutionInterruptedError):
        body()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallow under test
@pytest.mark.parametrize("swallow", [interrupt_swallowed_by_except, interrupt_swallowed_by_a_finalizer])
def test_a_swallowed_cancel_is_raised_at_the_end_of_the_stage(swallow):
    went_on = []

    def stage():
        with stage_errors("transcript"):
            swallow()
            went_on.append(True)  # the library swallowed it: the stage's work carries on to its end

    with pytest.raises(DagsterExecutionInterruptedError):
        in_a_step(stage)
    assert went_on == [True]


def test_a_swallowed_cancel_is_raised_at_the_next_checkpoint():
    reached = []

    def stage():
        with stage_errors("dubbed_speech"):
            interrupt_swallowed_by_except()
            log_progress(STAGE_LOG, 1, 40, "segments")  # a checkpoint between segments
            reached.append("segment 2")

    with pytest.raises(DagsterExecutionInterruptedError):
        in_a_step(stage)
    assert reached == []


def test_a_cancel_that_is_not_swallowed_still_stops_the_stage_at_once():
    reached = []

    def stage():
        with stage_errors("dubbed_mix"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
            reached.append(True)

    with pytest.raises(DagsterExecutionInterruptedError):
        in_a_step(stage)
    assert reached == []


def test_no_cancel_no_interrupt():
    in_a_step(lambda: stage_errors("translation").__enter__())  # nothing raised when nothing was sent


def test_the_transcription_calls_back_after_each_segment(tmp_path):
    import mediagen
    from resources import media

    wav = tmp_path / "two.wav"
    mediagen.speak_espeak("Good morning. Today we talk about the weather in the mountains.", wav)
    asr_wav = media.extract_wav(wav, tmp_path / "asr.wav", rate=16_000, channels=1)
    seen = []
    segments, _ = AsrResource().transcribe(asr_wav, "en", on_segment=lambda end, total: seen.append((end, total)))
    assert segments and len(seen) >= 1 and all(0 < end <= total + 0.5 for end, total in seen)
