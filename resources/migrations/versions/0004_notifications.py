"""per-user notification settings and the notification outbox

Revision ID: 0004_notifications
Revises: 0003_job_cancel_request
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_notifications"
down_revision = "0003_job_cancel_request"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dub_notify_settings",
        sa.Column("user_id", sa.String(32), sa.ForeignKey("dub_users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("topic", sa.String(64), nullable=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("on_success", sa.Boolean, nullable=False),
        sa.Column("on_failure", sa.Boolean, nullable=False),
        sa.Column("on_cancel", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "dub_notify_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(32), nullable=True),
        sa.Column("topic", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("run_id", "event", name="uq_dub_notify_outbox_run_event"),
    )
    op.create_index("ix_dub_notify_outbox_job_id", "dub_notify_outbox", ["job_id"])
    op.create_index("ix_dub_notify_outbox_status", "dub_notify_outbox", ["status"])


def downgrade() -> None:
    op.drop_table("dub_notify_outbox")
    op.drop_table("dub_notify_settings")
