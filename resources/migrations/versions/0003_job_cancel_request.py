"""jobs: cancel asked for before launch

Revision ID: 0003_job_cancel_request
Revises: 0002_accounts_uploads
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_job_cancel_request"
down_revision = "0002_accounts_uploads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dub_jobs") as batch:
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dub_jobs") as batch:
        batch.drop_column("cancel_requested_at")
