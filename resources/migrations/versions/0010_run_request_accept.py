"""quality review: the checks a "publish anyway" request accepts

Revision ID: 0010_run_request_accept
Revises: 0009_reprocess_retention
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_run_request_accept"
down_revision = "0009_reprocess_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dub_run_requests") as batch:
        # JSON list of check names a reviewer accepted: the run reports their failures as warnings
        batch.add_column(sa.Column("accept", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("dub_run_requests") as batch:
        batch.drop_column("accept")
