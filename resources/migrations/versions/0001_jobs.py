"""job records

Revision ID: 0001_jobs
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_jobs"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dub_jobs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("input_path", sa.Text, nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("source_lang", sa.String(16), nullable=False),
        sa.Column("target_lang", sa.String(16), nullable=False),
        sa.Column("voice", sa.String(256), nullable=True),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_dub_jobs_owner", "dub_jobs", ["owner"])
    op.create_index("ix_dub_jobs_created_at", "dub_jobs", ["created_at"])


def downgrade() -> None:
    op.drop_table("dub_jobs")
