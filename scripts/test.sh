#!/usr/bin/env bash
# Runs the whole test suite. PostgreSQL is expected at 127.0.0.1:5432 and Redis at 127.0.0.1:6379
# (the Celery profile's tests), each started here when installed but down; under CI=true the
# Postgres tests fail, not skip, when it is unreachable.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/postgres_up.sh
scripts/redis_up.sh
exec .venv/bin/python -m pytest "$@"
