#!/usr/bin/env bash
# The S3-compatible server the S3 tests run against (moto, from PyPI, in a venv; no Docker).
#
#   scripts/s3-server.sh install     # create the venv and install moto (idempotent)
#   eval "$(scripts/s3-server.sh start)"   # install if needed, start on 127.0.0.1, export:
#                                    #   PITLAKE_TEST_S3_ENDPOINT, PITLAKE_TEST_S3_BUCKET,
#                                    #   PITLAKE_S3_SERVER_PID
#   scripts/s3-server.sh stop        # stop the server named by PITLAKE_S3_SERVER_PID
#
# The venv is ${PITLAKE_PY_VENV:-$HOME/.cache/pitlake-py-venv} (shared with the Python Flight
# tests). Without PITLAKE_TEST_S3_ENDPOINT, `cargo test` starts its own server from this venv;
# scripts/test.sh starts one for the whole run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PITLAKE_PY_VENV:-$HOME/.cache/pitlake-py-venv}"
BUCKET="${PITLAKE_TEST_S3_BUCKET:-pitlake-test}"

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >&2
  fi
  if ! "$VENV/bin/python" -c 'import moto.server, boto3, flask_cors' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.1' boto3 >&2
  fi
}

start() {
  install
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/pitlake-s3.XXXXXX")"
  "$VENV/bin/python" scripts/s3_server.py --port 0 --bucket "$BUCKET" \
    --port-file "$dir/endpoint" >"$dir/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do
    if [ -s "$dir/endpoint" ]; then
      echo "export PITLAKE_TEST_S3_ENDPOINT=$(cat "$dir/endpoint")"
      echo "export PITLAKE_TEST_S3_BUCKET=$BUCKET"
      echo "export PITLAKE_S3_SERVER_PID=$pid"
      echo "S3 test server (moto) at $(cat "$dir/endpoint"), pid $pid, log $dir/log" >&2
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "the S3 test server did not start; its log ($dir/log):" >&2
      cat "$dir/log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "the S3 test server did not answer within 30s; its log ($dir/log):" >&2
  cat "$dir/log" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

stop() {
  local pid="${PITLAKE_S3_SERVER_PID:-}"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
