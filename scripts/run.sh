#!/usr/bin/env bash
# Starts the whole stack on the embedded default (SQLite Dagster instance, local file storage):
# dagster-daemon, dagster-webserver and the upload API (uvicorn). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/var/dagster_home}"
export DUBBING_DATA_DIR="${DUBBING_DATA_DIR:-$PWD/var/data}"
HOST="${DAGSTER_HOST:-127.0.0.1}"
PORT="${DAGSTER_PORT:-3000}"
API_HOST="${DUBBING_HOST:-127.0.0.1}"
API_PORT="${DUBBING_PORT:-8000}"
LOGS="${DUBBING_LOG_DIR:-$PWD/var/log}"
BIN="$PWD/.venv/bin"
mkdir -p "$LOGS"

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
if port_busy "$HOST" "$PORT"; then
  echo "error: $HOST:$PORT is already in use; stop what runs there or set DAGSTER_PORT=<free port>" >&2
  exit 1
fi
if port_busy "$API_HOST" "$API_PORT"; then
  echo "error: $API_HOST:$API_PORT is already in use; stop what runs there or set DUBBING_PORT=<free port>" >&2
  exit 1
fi

init_out=$("$BIN/dubbing" init --first-admin)
grep -v -E '^(DAGSTER_HOME|DUBBING_DATA_DIR|job store)' <<<"$init_out" || true
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$BIN/dagster-daemon" run -w workspace.yaml >"$LOGS/dagster-daemon.log" 2>&1 &
pids+=($!)
"$BIN/dagster-webserver" -h "$HOST" -p "$PORT" -w workspace.yaml >"$LOGS/dagster-webserver.log" 2>&1 &
pids+=($!)
"$BIN/uvicorn" upload_api.app:app --host "$API_HOST" --port "$API_PORT" --no-access-log >"$LOGS/api.log" 2>&1 &
pids+=($!)

up=""
for _ in $(seq 1 180); do
  rc=0
  "$BIN/python" - "$HOST" "$PORT" <<'PY' 2>"$LOGS/.probe" || rc=$?
import json, sys, urllib.request
query = '{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }'
req = urllib.request.Request(f"http://{sys.argv[1]}:{sys.argv[2]}/graphql", data=json.dumps({"query": query}).encode(),
                             headers={"Content-Type": "application/json"})
entries = json.load(urllib.request.urlopen(req, timeout=5))["data"]["workspaceOrError"]["locationEntries"]
if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
    sys.exit(1)  # still loading
errors = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
if errors:
    print("error: the code location failed to load: " + errors[0]["locationOrLoadError"]["message"].strip(), file=sys.stderr)
    sys.exit(2)
PY
  [ "$rc" -eq 0 ] && { up=1; break; }
  [ "$rc" -eq 2 ] && { cat "$LOGS/.probe" >&2; exit 1; }
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "error: a Dagster process exited; see $LOGS" >&2; tail -n 20 "$LOGS"/*.log >&2; exit 1; }
  done
  sleep 1
done
[ -n "$up" ] || { echo "error: the Dagster webserver did not come up in 180 s; see $LOGS" >&2; exit 1; }
for _ in $(seq 1 60); do
  "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen('http://$API_HOST:$API_PORT/api/health', timeout=2)" 2>/dev/null && break
  sleep 1
done

cat <<MSG
dubbing platform is up (embedded instance: SQLite in $DAGSTER_HOME, files in $DUBBING_DATA_DIR)
  Dagster UI:  http://$HOST:$PORT
  API:         http://$API_HOST:$API_PORT   (OpenAPI docs: http://$API_HOST:$API_PORT/docs)
  web UI:      http://$API_HOST:$API_PORT/ui   (Dagster UI for admins: http://$API_HOST:$API_PORT/dagster)
  logs:        $LOGS
  dub a file:  .venv/bin/dubbing dub VIDEO --to es
Ctrl-C stops it.
MSG
wait -n "${pids[@]}"
echo "error: a Dagster process exited; see $LOGS" >&2
exit 1
