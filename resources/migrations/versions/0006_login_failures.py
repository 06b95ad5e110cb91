"""failed logins in the database, so the login limit holds across API processes

Revision ID: 0006_login_failures
Revises: 0005_job_list_index
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_login_failures"
down_revision = "0005_job_list_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dub_login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False),  # "user:<name>" or "ip:<address>"
        sa.Column("at", sa.Float, nullable=False),  # seconds since the epoch
    )
    op.create_index("ix_dub_login_failures_key_at", "dub_login_failures", ["key", "at"])


def downgrade() -> None:
    op.drop_table("dub_login_failures")
