"""Alembic environment for the job store. The engine is handed in by resources.jobstore.migrate."""

from alembic import context

from resources import accounts, notify, uploads  # noqa: F401  (their tables join Base.metadata)
from resources.jobstore import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    # Own version table: the job store may share a database with Dagster, which uses alembic_version.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      version_table="dubbing_alembic_version")
    with context.begin_transaction():
        context.run_migrations()
