"""What every stage asset shares: the job record of the partition, and turning engine errors into a
clear dg.Failure whose description names the problem (and the fix where there is one)."""

from __future__ import annotations

import contextlib
import logging
import time

import dagster as dg

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
    """Re-raise engine errors as dg.Failure: bad input and missing engines are not worth a retry."""
    try:
        yield
    except STAGE_ERRORS as exc:
        raise dg.Failure(description=f"{stage}: {exc}", allow_retries=False) from None


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
    context.log inside a run, or any logging.Logger."""
    log.info(f"progress {done:.0f}/{total:.0f} {unit}")
