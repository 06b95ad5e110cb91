"""Alembic environment for the job store. The engine is handed in by resources.jobstore.migrate."""

import sqlalchemy as sa
from alembic import context

from resources import accounts, notify, uploads  # noqa: F401  (their tables join Base.metadata)
from resources.jobstore import Base

# Several API replicas or workers starting at once on an empty database would each create the same
# tables (and the version table) and all but one fail. On PostgreSQL they take turns on this advisory
# lock, held until the migration transaction ends; the later ones then find the schema at head.
MIGRATION_LOCK_KEY = 0x64756230  # "dub0"

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("select pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    # Own version table: the job store may share a database with Dagster, which uses alembic_version.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      version_table="dubbing_alembic_version")
    with context.begin_transaction():
        context.run_migrations()
