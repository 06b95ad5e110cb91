"""rate marks in the database (one test notification per user per interval, across API processes)

Revision ID: 0008_rate_marks
Revises: 0007_upload_s3
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_rate_marks"
down_revision = "0007_upload_s3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dub_rate_marks",
        sa.Column("key", sa.String(200), primary_key=True),  # e.g. "test-notify:<user id>"
        sa.Column("at", sa.Float, nullable=False),  # seconds since the epoch
    )


def downgrade() -> None:
    op.drop_table("dub_rate_marks")
