#!/usr/bin/env bash
# One Celery run worker for the deploy/celery profile: executes (and resumes) Dagster runs taken from
# the broker. Run one per worker machine (or several on one machine, each with its own name).
#
#   DAGSTER_HOME=/srv/dagster_home DAGSTER_POSTGRES_URL=... scripts/celery_worker.sh [-n NAME] [-Q QUEUES]
#
#   -n NAME     worker name (default: worker-<pid>); Celery adds @<host>
#   -Q QUEUES   comma-separated queues to take runs from (default: $DUBBING_CELERY_QUEUE or "dagster");
#               a GPU machine: -Q gpu (only runs tagged dagster-celery/queue=gpu) or -Q gpu,dagster
#   other arguments go to `celery worker` (e.g. --loglevel DEBUG)
#
# DAGSTER_HOME/dagster.yaml must be the Celery profile (deploy/celery/dagster.yaml): broker, backend
# and Celery settings are read from its run_launcher. When the broker is the local Redis and Redis is
# down, it is started first (scripts/redis_up.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${DUBBING_PYTHON:-$ROOT/.venv/bin/python}"
export DUBBING_CELERY_BROKER="${DUBBING_CELERY_BROKER:-redis://127.0.0.1:6379/0}"
export DUBBING_CELERY_BACKEND="${DUBBING_CELERY_BACKEND:-$DUBBING_CELERY_BROKER}"
export DUBBING_CELERY_QUEUE="${DUBBING_CELERY_QUEUE:-dagster}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
name="worker-$$"
queues="$DUBBING_CELERY_QUEUE"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) name="$2"; shift 2 ;;
    -Q) queues="$2"; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
: "${DAGSTER_HOME:?set DAGSTER_HOME to a folder holding the Celery profile (deploy/celery/dagster.yaml)}"
case "$DUBBING_CELERY_BROKER" in
  redis://127.0.0.1:6379*|redis://localhost:6379*) "$ROOT/scripts/redis_up.sh" ;;
esac
cd "$ROOT"
# prefork pool: the run executes in a pool process, so the worker's main process keeps answering the
# pings of the daemon's health check while a run is busy (a solo pool would look dead)
exec "$PY" -m celery -A resources.celery_worker worker --pool prefork -Q "$queues" -n "$name@%h" \
  --loglevel INFO --without-gossip --without-mingle "${extra[@]}"
