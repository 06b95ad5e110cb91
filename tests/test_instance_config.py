"""The instance configs load and say what the docs promise: dagster.yaml (deployed, PostgreSQL) and
the embedded SQLite config that `dubbing init` writes."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def assert_policies(instance: dg.DagsterInstance):
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_retries_retry_on_asset_or_op_failure is False
    settings = instance.get_concurrency_config()
    assert settings.run_queue_config.max_concurrent_runs == 2
    assert settings.pool_config.default_pool_limit == 1
    # slots of a run whose worker was killed mid-step are freed once it has ended (else its retry waits forever)
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 10
    # a cancelled run whose worker or code server is gone is ended CANCELED by run monitoring a minute later
    assert instance.run_monitoring_cancel_timeout_seconds == 60


@pytest.mark.postgres
def test_deployed_dagster_yaml_runs_on_postgres(tmp_path, pg_url, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", pg_url)
    assert yaml.safe_load((ROOT / "dagster.yaml").read_text())["storage"]["postgres"]["postgres_url"] == \
        {"env": "DAGSTER_POSTGRES_URL"}
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert "Postgres" in type(instance.run_storage).__name__
        assert "Postgres" in type(instance.event_log_storage).__name__
        assert_policies(instance)
        instance.add_dynamic_partitions("dub_jobs", ["jtest"])
        assert instance.get_dynamic_partitions("dub_jobs") == ["jtest"]
    finally:
        instance.dispose()


def test_embedded_config_is_sqlite_with_the_same_policies(tmp_path, monkeypatch):
    from resources import settings

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = settings.ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == (ROOT / "resources" / "dagster_embedded.yaml").read_text()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert "Sqlite" in type(instance.run_storage).__name__
        assert_policies(instance)
    finally:
        instance.dispose()
    # an existing config is never overwritten
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    settings.ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
