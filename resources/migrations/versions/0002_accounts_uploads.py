"""users, API tokens, web sessions and resumable uploads

Revision ID: 0002_accounts_uploads
Revises: 0001_jobs
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_accounts_uploads"
down_revision = "0001_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dub_users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "dub_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("dub_users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_dub_tokens_user_id", "dub_tokens", ["user_id"])
    op.create_table(
        "dub_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("dub_users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_dub_sessions_user_id", "dub_sessions", ["user_id"])
    op.create_table(
        "dub_uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("chunk_bytes", sa.Integer, nullable=False),
        sa.Column("total_chunks", sa.Integer, nullable=False),
        sa.Column("received", sa.Text, nullable=False),
        sa.Column("received_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_dub_uploads_owner", "dub_uploads", ["owner"])
    op.create_index("ix_dub_uploads_expires_at", "dub_uploads", ["expires_at"])
    with op.batch_alter_table("dub_jobs") as batch:
        batch.add_column(sa.Column("upload_id", sa.String(64), nullable=True))
    op.create_index("ix_dub_jobs_upload_id", "dub_jobs", ["upload_id"])


def downgrade() -> None:
    op.drop_index("ix_dub_jobs_upload_id", "dub_jobs")
    with op.batch_alter_table("dub_jobs") as batch:
        batch.drop_column("upload_id")
    for table in ("dub_uploads", "dub_sessions", "dub_tokens", "dub_users"):
        op.drop_table(table)
