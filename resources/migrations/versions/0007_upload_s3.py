"""uploads stored on S3: the object key, the multipart upload's id and the local tail of a tus upload

Revision ID: 0007_upload_s3
Revises: 0006_login_failures
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_upload_s3"
down_revision = "0006_login_failures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dub_uploads") as batch:  # batch: SQLite cannot alter tables in place
        # set for an upload stored on S3 (DUBBING_STORAGE=s3 when it began); NULL: a local file
        batch.add_column(sa.Column("object_key", sa.String(1024), nullable=True))
        # the S3 multipart upload receiving its parts; NULL once completed or aborted
        batch.add_column(sa.Column("s3_upload_id", sa.String(1024), nullable=True))
        # tus on S3: the local file holding the bytes past the last whole part (tail-<id>)
        batch.add_column(sa.Column("tail_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dub_uploads") as batch:
        batch.drop_column("tail_id")
        batch.drop_column("s3_upload_id")
        batch.drop_column("object_key")
