#!/usr/bin/env bash
# Starts Redis when it is installed but down (the Celery profile's broker, deploy/celery; its tests need
# it at 127.0.0.1:6379). Says how to start it by hand when that fails.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null; then
    echo "starting Redis ..."
    redis-server --daemonize yes --port 6379 --bind 127.0.0.1 >/dev/null || true
    for _ in $(seq 1 20); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || echo "Redis is not reachable at 127.0.0.1:6379;" \
    "start it with: redis-server --daemonize yes --port 6379 --bind 127.0.0.1 (or: service redis-server start)" >&2
fi
exit 0
