"""edit-and-redub, reprocessing and retention: job columns and the run request queue

Revision ID: 0009_reprocess_retention
Revises: 0008_rate_marks
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_reprocess_retention"
down_revision = "0008_rate_marks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dub_jobs") as batch:
        # bumped by every saved segment edit; a re-dub's run key carries it (one re-dub per revision)
        batch.add_column(sa.Column("edit_revision", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()))
        # retention tombstones: intermediates (and the input) removed; everything removed
        batch.add_column(sa.Column("artifacts_expired_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "dub_run_requests",
        # runs asked for outside the upload sensor (a re-dub, an admin's reprocess): an input queue the
        # run request sensor walks by seq; a run's status is only ever read from Dagster
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),  # the Dagster run key
        sa.Column("job_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),  # redub | reprocess
        sa.Column("stages", sa.Text, nullable=False),  # JSON list of asset names to materialise
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("requested_by", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dub_run_requests")
    with op.batch_alter_table("dub_jobs") as batch:
        for name in ("expired_at", "artifacts_expired_at", "pinned", "edit_revision"):
            batch.drop_column(name)
