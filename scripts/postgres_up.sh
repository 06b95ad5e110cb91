#!/usr/bin/env bash
# Starts the local PostgreSQL cluster when it is installed but down (tests and benchmarks need it at
# 127.0.0.1:5432). Says how to start it by hand when that fails.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL ..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 20); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || echo "PostgreSQL is not reachable at 127.0.0.1:5432;" \
    "start it with: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
fi
exit 0
