#!/bin/sh
# The compose deployment's one-shot start-up step (service `migrate`), run before any API replica or
# Dagster process starts, so that several processes never race to create the same tables.
set -eu
# Dagster's tables in PostgreSQL: created on a fresh database, upgraded after a Dagster upgrade
dagster instance migrate
# the platform's bucket (SeaweedFS starts empty)
python - <<'PY'
from botocore.exceptions import ClientError

from resources import s3

cfg = s3.settings()
client = s3.client(cfg)
try:
    client.head_bucket(Bucket=cfg.bucket)
except ClientError:
    client.create_bucket(Bucket=cfg.bucket)
print(f"bucket {cfg.bucket} ready")
PY
# the job store's Alembic migrations, the media tools check, and the first admin (password printed once)
dubbing init --first-admin
