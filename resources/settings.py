"""Process settings read from the environment, with the embedded defaults in one place."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of local file storage (uploads, stage artifacts, outputs)."""
    return Path(os.environ.get("DUBBING_DATA_DIR") or PROJECT_ROOT / "var" / "data").resolve()


def dagster_home() -> Path:
    """DAGSTER_HOME, or the embedded default under var/."""
    return Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / "var" / "dagster_home").resolve()


def ensure_dagster_home() -> Path:
    """Create the local DAGSTER_HOME with the embedded (SQLite) instance config when it has none,
    and point this process at it."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text((Path(__file__).with_name("dagster_embedded.yaml")).read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def database_url() -> str:
    """Job store URL: DATABASE_URL, or a SQLite file under the data dir."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return normalise_db_url(url)
    return f"sqlite:///{data_dir() / 'jobs.db'}"


def normalise_db_url(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; we ship psycopg2."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


def env_or(name: str, default):
    """A resource field value: dg.EnvVar when the variable is set (resolved at run time, hidden in
    the UI), else the embedded default."""
    if os.environ.get(name, "") != "":
        return dg.EnvVar(name)
    return default


def flag(name: str) -> bool:
    """An on/off variable: 1 (or true/yes/on) is on; unset or anything else is off."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def egress_allowed() -> bool:
    """ALLOW_EGRESS=1: connections to hosts outside this machine and its private network are allowed
    (model downloads, a LibreTranslate server on a public address). Off by default: the defaults run
    offline."""
    return flag("ALLOW_EGRESS")


def downloads_enabled() -> bool:
    """ENABLE_MODEL_DOWNLOADS=1: a model that is not on disk may be downloaded (where egress is
    allowed too)."""
    return flag("ENABLE_MODEL_DOWNLOADS")


def downloads_allowed() -> bool:
    """A model download may run: downloads enabled and egress allowed."""
    return downloads_enabled() and egress_allowed()


def number(name: str, default: float) -> float:
    """A numeric variable; unset, empty or not a finite non-negative number gives the default (a typo
    in the environment must not turn every request into a server error)."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value == value and 0 <= value < float("inf") else default
