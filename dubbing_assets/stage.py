"""What every stage asset shares: the job record of the partition, and turning engine errors into a
clear dg.Failure whose description names the problem (and the fix where there is one)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

from resources.asr import AsrError
from resources.disk import DiskSpaceError
from resources.media import MediaError
from resources.translate import TranslationError
from resources.tts import TtsError

STAGE_ERRORS = (MediaError, AsrError, TranslationError, TtsError, DiskSpaceError, ValueError, FileNotFoundError)
GROUP = "dubbing"
# Where a stage's plain function logs when it runs outside Dagster (the bench, scripts); inside a run
# the asset passes context.log instead.
STAGE_LOG = logging.getLogger("dubbing.stage")


@contextlib.contextmanager
def stage_errors(stage: str):
    """Re-raise engine errors as dg.Failure: bad input and missing engines are not worth a retry. Around the
    stage's work, an interrupt (a cancel) is never lost (`interrupts_kept`)."""
    try:
        with interrupts_kept():
            yield
    except STAGE_ERRORS as exc:
        raise dg.Failure(description=f"{stage}: {exc}", allow_retries=False) from None


_INTERRUPTED = threading.Event()  # set by the stage's SIGINT handler; what checkpoint() looks at


@contextlib.contextmanager
def interrupts_kept():
    """A cancel reaches a run worker as SIGINT, whose handler (Dagster's, during a step) raises
    DagsterExecutionInterruptedError wherever the main thread is. When that is inside code that swallows
    every exception (a finalizer run by the garbage collector, a C extension's callback: Python prints
    "Exception ignored in ..." and goes on), the cancel is lost and the run ends SUCCESS while CANCELING.
    Here the handler also remembers the interrupt; `checkpoint()` (called between a stage's segments) and
    the end of the stage's work raise it again. No database read: a cancel is seen as the signal it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def remember(signo, frame):
        _INTERRUPTED.set()
        if callable(previous):
            previous(signo, frame)  # Dagster's: raises the interrupt here
        else:
            raise KeyboardInterrupt

    _INTERRUPTED.clear()
    signal.signal(signal.SIGINT, remember)
    try:
        yield
    except BaseException:
        signal.signal(signal.SIGINT, previous)
        _INTERRUPTED.clear()
        raise
    signal.signal(signal.SIGINT, previous)
    if _INTERRUPTED.is_set():  # it arrived, and something swallowed what its handler raised
        _INTERRUPTED.clear()
        raise DagsterExecutionInterruptedError()


def checkpoint() -> None:
    """Raise a cancel that arrived during the stage but was swallowed on its way (interrupts_kept)."""
    if _INTERRUPTED.is_set() and threading.current_thread() is threading.main_thread():
        _INTERRUPTED.clear()
        raise DagsterExecutionInterruptedError()


ACCEPT_TAG = "dubbing/accept"  # a run's tag: the checks a reviewer accepted ("publish anyway"), comma-separated
ACCEPTED_BY_TAG = "dubbing/accepted_by"


def accepted_checks(context) -> frozenset[str]:
    """The checks this run's reviewer accepted: they report a failure as a warning, and the run goes on."""
    return frozenset(filter(None, (context.run.tags.get(ACCEPT_TAG) or "").split(",")))


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = round(time.perf_counter() - self.started, 3)


def log_progress(log, done: float, total: float, unit: str) -> None:
    """A progress line the CLI turns into a progress bar (and the run log shows as it is). `log` is
    context.log inside a run, or any logging.Logger. Also a checkpoint for a swallowed cancel."""
    checkpoint()
    log.info(f"progress {done:.0f}/{total:.0f} {unit}")
