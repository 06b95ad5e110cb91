#!/usr/bin/env bash
# Runs the whole test suite. PostgreSQL is expected at 127.0.0.1:5432 (started here when it is
# installed but down); under CI=true the Postgres tests fail, not skip, when it is unreachable.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL ..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 20); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
fi
exec .venv/bin/python -m pytest "$@"
