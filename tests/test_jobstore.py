"""The job store (resources/jobstore.py) on SQLite and on PostgreSQL, where it shares a database
with Dagster's own storage."""

from __future__ import annotations

import datetime as dt
import re

import dagster as dg
import pytest
import sqlalchemy as sa

from resources import jobstore
from resources.jobstore import JobOptions, JobStore, new_job_id


def _head() -> str:
    from alembic.script import ScriptDirectory

    from resources.jobstore import MIGRATIONS_DIR

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


HEAD = _head()

JOB_ID_RE = re.compile(r"^j[0-9a-f]{32}$")


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path}/j.db"
    yield url
    engine = jobstore._ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()
    jobstore._MIGRATED.discard(url)


def _new(store: JobStore, **kw):
    args = dict(input_path="/uploads/talk.mp4", filename="talk.mp4", source_lang="en", target_lang="es")
    args.update(kw)
    return store.create_job(**args)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _versions(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("select version_num from dubbing_alembic_version"))]
    finally:
        engine.dispose()


def exercise_store(url: str) -> None:
    """create/get/list against one database."""
    store = JobStore(database_url=url)
    before = dt.datetime.now(dt.timezone.utc)
    a = _new(store, owner="alice", voice="espeak:es-419",
             options={"container": "mp4", "max_speed": 1.2, "tts_engine": "espeak"})
    b = _new(store, owner="bob", filename="other.mkv", input_path="/uploads/other.mkv", target_lang="fr")
    c = _new(store, owner="alice", options=JobOptions(duck_db=-10.0))

    assert JOB_ID_RE.match(a.id) and JOB_ID_RE.match(b.id) and JOB_ID_RE.match(c.id)
    assert len({a.id, b.id, c.id}) == 3

    got = store.get_job(a.id)
    assert got == a
    assert (got.input_path, got.filename, got.source_lang, got.target_lang) == (
        "/uploads/talk.mp4", "talk.mp4", "en", "es")
    assert got.owner == "alice" and got.voice == "espeak:es-419"
    assert got.options == JobOptions(container="mp4", max_speed=1.2, tts_engine="espeak")
    assert got.options.duck_db == -14.0  # defaults filled in
    assert store.get_job(b.id).owner == "bob" and store.get_job(b.id).voice is None
    assert store.get_job(b.id).options == JobOptions()
    assert store.get_job(c.id).options.duck_db == -10.0

    created = got.created_at
    if created.tzinfo is None:  # SQLite stores no zone; the value written is UTC
        created = created.replace(tzinfo=dt.timezone.utc)
    assert before - dt.timedelta(seconds=5) <= created <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)

    everything = store.list_jobs()
    assert [j.id for j in everything] == [c.id, b.id, a.id]  # newest first
    assert [j.id for j in store.list_jobs(owner="alice")] == [c.id, a.id]
    assert [j.id for j in store.list_jobs(owner="nobody")] == []
    assert [j.id for j in store.list_jobs(limit=2)] == [c.id, b.id]

    missing = new_job_id()
    with pytest.raises(KeyError) as err:
        store.get_job(missing)
    assert missing in str(err.value)

    # An explicit id is kept (the CLI and upload service may choose the partition key).
    chosen = new_job_id()
    assert _new(store, job_id=chosen).id == chosen
    with pytest.raises(sa.exc.IntegrityError):
        _new(store, job_id=chosen)
    assert len(store.list_jobs()) == 4


def check_migrations(url: str) -> None:
    jobstore.migrate(url)
    tables = _tables(url)
    assert {"dub_jobs", "dubbing_alembic_version"} <= tables
    assert _versions(url) == [HEAD]
    # Idempotent: forget the per-process memo and run the upgrade again against the same database.
    jobstore._MIGRATED.discard(jobstore.settings.normalise_db_url(url))
    jobstore.migrate(url)
    jobstore.migrate(url)
    assert _tables(url) == tables
    assert _versions(url) == [HEAD]
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        columns = {t: {c["name"] for c in inspector.get_columns(t)} for t in jobstore.Base.metadata.tables}
        indexes = {i["name"] for i in inspector.get_indexes("dub_jobs")}
    finally:
        engine.dispose()
    # the migrations build exactly the tables and columns the ORM models declare
    from resources import accounts, notify, uploads  # noqa: F401

    assert set(jobstore.Base.metadata.tables) == {"dub_jobs", "dub_users", "dub_tokens", "dub_sessions", "dub_uploads",
                                                  "dub_notify_settings", "dub_notify_outbox", "dub_login_failures",
                                                  "dub_rate_marks", "dub_run_requests"}
    for name, table in jobstore.Base.metadata.tables.items():
        assert columns[name] == {c.name for c in table.columns}, name
    assert {"seq", "id", "upload_id", "owner", "input_path", "source_lang", "target_lang"} <= columns["dub_jobs"]
    assert {"ix_dub_jobs_owner", "ix_dub_jobs_owner_seq", "ix_dub_jobs_created_at", "ix_dub_jobs_upload_id"} <= indexes


# --- ids and options (no database) --------------------------------------------------------------


def test_job_ids_are_j_plus_32_hex_and_unique():
    ids = [new_job_id() for _ in range(2000)]
    assert all(JOB_ID_RE.match(i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)


def test_job_options_defaults_and_round_trip():
    opts = JobOptions.from_dict(None)
    assert opts == JobOptions()
    assert opts.to_dict() == {"tts_engine": "auto", "translator": "auto", "container": "auto",
                              "max_speed": 1.35, "duck_db": -14.0, "target_lufs": -16.0, "fit": "review",
                              "max_shift_s": 0.5, "loudness_tolerance_lu": 1.0, "max_true_peak_db": -1.0}
    custom = JobOptions.from_dict({"container": "mp4", "max_speed": 2.0, "target_lufs": -23.0})
    assert JobOptions.from_dict(custom.to_dict()) == custom
    assert JobOptions.from_dict({"max_speed": 1.0}).max_speed == 1.0


@pytest.mark.parametrize("data, words", [
    ({"speed": 1.2}, ["unknown job option", "speed"]),
    ({"colour": "red", "bogus": 1}, ["unknown job option", "bogus", "colour"]),
    ({"container": "avi"}, ["container", "auto, mkv or mp4", "'avi'"]),
    ({"max_speed": 2.5}, ["max_speed", "between 1.0 and 2.0"]),
    ({"max_speed": 0.9}, ["max_speed", "between 1.0 and 2.0"]),
    ({"fit": "stretch"}, ["fit", "review, extend_video, cut", "'stretch'"]),
    ({"max_shift_s": 3}, ["max_shift_s", "between 0 and 2"]),
    ({"target_lufs": 0}, ["target_lufs", "between -40 and -5"]),
    ({"max_true_peak_db": 1}, ["max_true_peak_db", "between -10 and 0"]),
])
def test_job_options_validation(data, words):
    with pytest.raises(ValueError) as err:
        JobOptions.from_dict(data)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_create_job_validates_options_before_writing(sqlite_url):
    store = JobStore(database_url=sqlite_url)
    with pytest.raises(ValueError, match="container"):
        _new(store, options={"container": "avi"})
    assert store.list_jobs() == []


# --- SQLite ------------------------------------------------------------------------------------


def test_sqlite_create_get_list(sqlite_url):
    exercise_store(sqlite_url)


def test_sqlite_migrations_are_idempotent(sqlite_url, tmp_path):
    assert not (tmp_path / "j.db").exists()
    check_migrations(sqlite_url)
    assert (tmp_path / "j.db").is_file()


def test_sqlite_records_survive_a_new_engine(sqlite_url):
    job = _new(JobStore(database_url=sqlite_url), owner="carol")
    jobstore._ENGINES.pop(sqlite_url).dispose()  # as a fresh process would see it
    jobstore._MIGRATED.discard(sqlite_url)
    assert JobStore(database_url=sqlite_url).get_job(job.id) == job


def test_default_url_is_sqlite_under_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DUBBING_DATA_DIR", str(tmp_path / "data"))
    assert JobStore().url() == f"sqlite:///{tmp_path / 'data' / 'jobs.db'}"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/dub")
    assert JobStore().url() == "postgresql+psycopg2://u:p@db:5432/dub"
    assert JobStore(database_url="postgres://h/x").url() == "postgresql+psycopg2://h/x"


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_create_get_list(pg_url):
    exercise_store(pg_url)


@pytest.mark.postgres
def test_postgres_migrations_are_idempotent(pg_url):
    check_migrations(pg_url)
    assert "alembic_version" not in _tables(pg_url)  # ours is dubbing_alembic_version


@pytest.mark.postgres
def test_postgres_job_store_shares_a_database_with_dagster(pg_url, tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path),
                              overrides={"storage": {"postgres": {"postgres_url": pg_url}}}) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        dagster_tables = _tables(pg_url)
        # The names we must not collide with.
        assert {"jobs", "alembic_version", "runs", "event_logs"} <= dagster_tables
        assert "dub_jobs" not in dagster_tables

        store = JobStore(database_url=pg_url)
        job = _new(store, owner="dave")
        instance.add_dynamic_partitions("dub_jobs", [job.id])

        assert store.get_job(job.id) == job
        assert [j.id for j in store.list_jobs()] == [job.id]
        assert instance.get_dynamic_partitions("dub_jobs") == [job.id]
        assert {"dub_jobs", "dubbing_alembic_version"} <= _tables(pg_url)
        assert _versions(pg_url) == [HEAD]

        engine = sa.create_engine(pg_url)
        try:
            with engine.connect() as conn:
                dagster_rev = conn.execute(sa.text("select version_num from alembic_version")).scalars().all()
                dagster_jobs = conn.execute(sa.text("select count(*) from jobs")).scalar()
        finally:
            engine.dispose()
        # Dagster's revision is untouched by our migration, and its jobs table holds none of ours.
        assert len(dagster_rev) == 1 and dagster_rev != [HEAD]
        assert dagster_jobs == 0

        # Dagster still works on the shared database after the job store migrated it.
        @dg.op
        def noop():
            return 1

        @dg.job
        def tiny():
            noop()

        result = tiny.execute_in_process(instance=instance, tags={"dubbing/job_id": job.id})
        assert result.success
        assert instance.get_run_by_id(result.run_id).tags["dubbing/job_id"] == job.id
        assert store.get_job(job.id) == job


def test_token_lookup_finds_the_user_and_writes_last_use_at_most_once_a_minute(sqlite_url):
    from resources.accounts import Accounts, TokenRow

    accounts = Accounts(JobStore(database_url=sqlite_url))
    alice = accounts.add_user("alice", "alice-password-123")
    token = accounts.create_token(alice, "phone")
    assert accounts.user_for_token(token) == alice
    assert accounts.user_for_token(token + "x") is None
    assert accounts.user_for_token("not-a-token") is None
    with accounts.session() as s:
        first = s.scalar(sa.select(TokenRow.last_used_at))
    assert first is not None
    accounts.user_for_token(token)
    with accounts.session() as s:
        assert s.scalar(sa.select(TokenRow.last_used_at)) == first  # within the minute: not rewritten
        s.execute(sa.update(TokenRow).values(last_used_at=first - dt.timedelta(minutes=5),
                                             revoked_at=None))
        s.commit()
    accounts.user_for_token(token)
    with accounts.session() as s:
        assert s.scalar(sa.select(TokenRow.last_used_at)) > first - dt.timedelta(minutes=1)
        s.execute(sa.update(TokenRow).values(revoked_at=dt.datetime.now(dt.timezone.utc)))
        s.commit()
    assert accounts.user_for_token(token) is None  # a revoked token stops working at once


@pytest.mark.postgres
def test_postgres_fresh_database_migrated_by_several_processes_at_once(pg_url):
    """API replicas (or uvicorn workers) starting together on an empty database each run the migrations:
    they must take turns, not race to create the same tables."""
    import subprocess
    import sys

    code = ("import sys; from resources.jobstore import JobStore; "
            "JobStore(database_url=sys.argv[1]).engine(); print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=jobstore.settings.PROJECT_ROOT) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    failed = [err[-800:] for p, (out, err) in zip(procs, results) if p.returncode != 0]
    assert not failed, failed
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select version_num from dubbing_alembic_version")).scalar_one() == HEAD
    engine.dispose()


@pytest.mark.postgres
def test_postgres_edit_revision_and_run_requests_are_race_free(pg_url):
    """Two API processes saving a job's segments at once both read revision N: the compare-and-set lets one of
    them have N+1 and tells the other (409). Many callers queueing the same run request key queue it once."""
    import concurrent.futures

    store = JobStore(database_url=pg_url)
    job = store.create_job(input_path="/x.mp4", filename="x.mp4", source_lang="en", target_lang="es")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bumps = list(pool.map(lambda _: store.bump_revision(job.id, 0), range(8)))
        queued = list(pool.map(lambda _: store.add_run_request(job.id, kind="redub", stages=["dubbed_speech"],
                                                               key=f"redub:{job.id}:1")[1], range(8)))
    assert sorted(bumps, key=str) == [1] + [None] * 7
    assert store.get_job(job.id).edit_revision == 1
    assert queued.count(True) == 1 and len(store.run_requests_of(job.id)) == 1
