import os
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import mediagen  # noqa: E402

PG_ADMIN_URL = os.environ.get("DUBBING_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """Every test process writes to its own data folder, job store and DAGSTER_HOME."""
    root = tmp_path_factory.mktemp("dubbing")
    saved = {k: os.environ.get(k) for k in ("DUBBING_DATA_DIR", "DAGSTER_HOME", "DATABASE_URL")}
    os.environ["DUBBING_DATA_DIR"] = str(root / "data")
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    os.environ.pop("DATABASE_URL", None)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def espeak_video(media_dir):
    wav, _ = mediagen.speech_track(mediagen.SCRIPT, media_dir, voice="espeak")
    return mediagen.make_video(wav, media_dir / "talk_espeak.mp4")


@pytest.fixture(scope="session")
def rushed_video(tmp_path_factory):
    """A rushed talk (espeak-ng at 300 words a minute, 0.1 s between sentences): its Spanish, spoken at the
    Spanish voice's pace, cannot fit even at 1.35x, so fit review stops it at speech_kept."""
    folder = tmp_path_factory.mktemp("rushed")
    wav, _ = mediagen.speech_track(mediagen.SCRIPT, folder, lead=0.5, pause=0.1, tail=0.5, wpm=300)
    return mediagen.make_video(wav, folder / "rushed talk.mp4")


@pytest.fixture(scope="session")
def piper_video(media_dir):
    wav, _ = mediagen.speech_track(mediagen.SCRIPT, media_dir, voice="piper")
    return mediagen.make_video(wav, media_dir / "talk_piper.mp4")


def _postgres_or_fail():
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        return engine
    except Exception as exc:
        reason = f"PostgreSQL unreachable at {PG_ADMIN_URL.split('@')[-1]}: {type(exc).__name__}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: Postgres tests must run)")
        pytest.skip(reason)


@pytest.fixture
def pg_url():
    """A fresh, empty Postgres database for one test, dropped afterwards."""
    import sqlalchemy as sa

    engine = _postgres_or_fail()
    name = f"dubbing_test_{secrets.token_hex(6)}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from resources import jobstore

        for key in [k for k in jobstore._ENGINES if k.endswith(f"/{name}")]:
            jobstore._ENGINES.pop(key).dispose()
        with engine.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        engine.dispose()


CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium: never a downloaded browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Playwright (sync API) driving Debian's Chromium, headless; screenshots go to tests/artifacts/."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's Chromium: apt-get install -y chromium (make test does it)"
    (Path(__file__).parent / "artifacts").mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A live upload API (uvicorn on 127.0.0.1) with users alice, bob and root (admin)."""
    from live import running_stack

    with running_stack(tmp_path_factory.mktemp("api")) as stack:
        yield stack
