"""retention and run launches claim a job before acting, so retention never deletes the files of a run that
starts between its check and its deletion

Revision ID: 0011_launch_retention_claims
Revises: 0010_run_request_accept
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_launch_retention_claims"
down_revision = "0010_run_request_accept"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dub_jobs") as batch:
        batch.add_column(sa.Column("launch_claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retention_claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dub_jobs") as batch:
        batch.drop_column("retention_claimed_at")
        batch.drop_column("launch_claimed_at")
