"""What every stage asset shares: the job record of the partition, and turning engine errors into a
clear dg.Failure whose description names the problem (and the fix where there is one)."""

from __future__ import annotations

import contextlib
import time

import dagster as dg

from resources.asr import AsrError
from resources.disk import DiskSpaceError
from resources.media import MediaError
from resources.translate import TranslationError
from resources.tts import TtsError

STAGE_ERRORS = (MediaError, AsrError, TranslationError, TtsError, DiskSpaceError, ValueError, FileNotFoundError)
GROUP = "dubbing"


@contextlib.contextmanager
def stage_errors(stage: str):
    """Re-raise engine errors as dg.Failure: bad input and missing engines are not worth a retry."""
    try:
        yield
    except STAGE_ERRORS as exc:
        raise dg.Failure(description=f"{stage}: {exc}", allow_retries=False) from None


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = round(time.perf_counter() - self.started, 3)


def log_progress(context: dg.AssetExecutionContext, done: float, total: float, unit: str) -> None:
    """A progress line the CLI turns into a progress bar (and the run log shows as it is)."""
    context.log.info(f"progress {done:.0f}/{total:.0f} {unit}")
