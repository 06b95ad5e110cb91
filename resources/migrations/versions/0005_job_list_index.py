"""an index for the job list: a user's jobs newest first (owner, seq)

Revision ID: 0005_job_list_index
Revises: 0004_notifications
Create Date: 2026-11-26
"""
from alembic import op

revision = "0005_job_list_index"
down_revision = "0004_notifications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # GET /api/jobs pages a user's jobs by seq: with (owner) alone Postgres sorts all of them per page
    op.create_index("ix_dub_jobs_owner_seq", "dub_jobs", ["owner", "seq"])


def downgrade() -> None:
    op.drop_index("ix_dub_jobs_owner_seq", table_name="dub_jobs")
