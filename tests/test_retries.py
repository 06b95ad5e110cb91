"""A stage that fails for a transient reason (the database or the object store away) is retried at once by
Dagster's run retries, from that stage; one that fails on its input, a blocking check and a cancel are not.
On a real instance with the deployed run_retries settings (retry_on_asset_or_op_failure: false)."""

import dagster as dg
import pytest
import sqlalchemy as sa

from dubbing_assets.retries import RETRY_ON_STEP_FAILURE_TAG, retry_transient_failure, transient_cause
from resources.storage import StorageUnavailable

WILL_RETRY = "dagster/will_retry"


def failing(exc: BaseException) -> dg.JobDefinition:
    @dg.op
    def stage():
        raise exc

    @dg.job(hooks={retry_transient_failure}, tags={"dagster/max_retries": 2, "dagster/retry_strategy": "FROM_FAILURE"})
    def dub():
        stage()

    return dub


def db_gone() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT INTO event_logs ...", {}, Exception("server closed the connection"))


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={
            "run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}}) as inst:
        yield inst


@pytest.mark.parametrize("exc, retried", [
    (db_gone(), True),  # what Dagster's own event write raised when Postgres restarted under a step (CI)
    (StorageUnavailable("S3 at 127.0.0.1:9 is unreachable"), True),
    (ConnectionResetError("reset by peer"), True),
    (dg.Failure(description="source_media: notes.mp4 is not a readable video", allow_retries=False), False),
    (ValueError("a bug"), False),
])
def test_only_transient_stage_failures_are_retried(instance, exc, retried):
    result = failing(exc).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags.get(WILL_RETRY) == str(retried).lower(), run.tags
    assert (run.tags.get(RETRY_ON_STEP_FAILURE_TAG) == "true") is retried


def test_what_counts_as_transient():
    try:
        try:
            raise db_gone()
        except sa.exc.OperationalError as inner:
            raise RuntimeError("while writing the materialization") from inner
    except RuntimeError as outer:
        assert transient_cause(outer) == "OperationalError"  # anywhere in the chain
    assert transient_cause(KeyboardInterrupt()) is None  # a cancel is never retried
    from dagster._core.errors import DagsterAssetCheckFailedError, DagsterExecutionInterruptedError

    assert transient_cause(DagsterExecutionInterruptedError()) is None
    assert transient_cause(DagsterAssetCheckFailedError("1 blocking asset check failed")) is None
    assert transient_cause(None) is None
