#!/usr/bin/env bash
# The object-store servers the storage tests run against, on 127.0.0.1 (no Docker):
#   - S3: moto (PyPI), with writes serialized so that conditional PUTs are atomic
#     (scripts/s3_server.py);
#   - Azure Blob Storage: Azurite (npm), telemetry off (scripts/azure_server.py).
#
#   scripts/storage-servers.sh install        # venv + moto + azure-storage-blob, and Azurite
#   eval "$(scripts/storage-servers.sh start)"  # install if needed, start both, and export
#       PITLAKE_TEST_S3_ENDPOINT, PITLAKE_TEST_S3_BUCKET, PITLAKE_TEST_AZURE_ENDPOINT,
#       PITLAKE_TEST_AZURE_CONTAINER, PITLAKE_STORAGE_SERVER_PIDS
#   scripts/storage-servers.sh stop           # stop the servers PITLAKE_STORAGE_SERVER_PIDS names
#
# The Python venv is ${PITLAKE_PY_VENV:-$HOME/.cache/pitlake-py-venv} (shared with the Python
# Flight tests); Azurite goes to ${PITLAKE_NODE_DIR:-$HOME/.cache/pitlake-node}. Without the
# endpoint variables, `cargo test` starts its own servers from these; scripts/test.sh starts one
# pair for the whole run instead. `start s3` starts the S3 server only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PITLAKE_PY_VENV:-$HOME/.cache/pitlake-py-venv}"
NODE_DIR="${PITLAKE_NODE_DIR:-$HOME/.cache/pitlake-node}"
BUCKET="${PITLAKE_TEST_S3_BUCKET:-pitlake-test}"
CONTAINER="${PITLAKE_TEST_AZURE_CONTAINER:-pitlake-test}"

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >&2
  fi
  if ! "$VENV/bin/python" -c 'import moto.server, boto3, flask_cors, azure.storage.blob' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.1' boto3 \
      azure-storage-blob >&2
  fi
  if [ ! -x "$NODE_DIR/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$NODE_DIR"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent azurite@3 >&2)
  fi
}

# wait_for PID FILE LOG NAME: until FILE has the endpoint, or PID is gone, or 60 s.
wait_for() {
  local pid="$1" file="$2" log="$3" name="$4"
  for _ in $(seq 1 600); do
    if [ -s "$file" ]; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "the $name test server did not start; its log ($log):" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "the $name test server did not answer within 60s; its log ($log):" >&2
  cat "$log" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

start() {
  install
  local dir pids
  dir="$(mktemp -d "${TMPDIR:-/tmp}/pitlake-storage.XXXXXX")"
  "$VENV/bin/python" scripts/s3_server.py --port 0 --bucket "$BUCKET" \
    --port-file "$dir/s3" >"$dir/s3.log" 2>&1 &
  pids=$!
  wait_for "$pids" "$dir/s3" "$dir/s3.log" S3
  echo "export PITLAKE_TEST_S3_ENDPOINT=$(cat "$dir/s3")"
  echo "export PITLAKE_TEST_S3_BUCKET=$BUCKET"
  echo "S3 test server (moto) at $(cat "$dir/s3"), pid $pids, log $dir/s3.log" >&2
  if [ "${1:-all}" != s3 ]; then
    "$VENV/bin/python" scripts/azure_server.py --azurite "$NODE_DIR/node_modules/.bin/azurite-blob" \
      --container "$CONTAINER" --port-file "$dir/azure" >"$dir/azure.log" 2>&1 &
    local azure=$!
    pids="$pids $azure"
    wait_for "$azure" "$dir/azure" "$dir/azure.log" Azure || { kill "${pids%% *}"; return 1; }
    echo "export PITLAKE_TEST_AZURE_ENDPOINT=$(cat "$dir/azure")"
    echo "export PITLAKE_TEST_AZURE_CONTAINER=$CONTAINER"
    echo "Azure test server (Azurite) at $(cat "$dir/azure"), pid $azure, log $dir/azure.log" >&2
  fi
  echo "export PITLAKE_STORAGE_SERVER_PIDS='$pids'"
}

stop() {
  local pid
  for pid in ${PITLAKE_STORAGE_SERVER_PIDS:-}; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-all}" ;;
  stop) stop ;;
  *) echo "usage: $0 install|start [s3]|stop" >&2; exit 2 ;;
esac
