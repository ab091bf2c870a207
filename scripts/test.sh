#!/usr/bin/env bash
# The whole test suite: unit tests, the sqllogictest files under sql/, the integration tests
# (CLI, Delta conformance against ../shared/testdata, time travel, S3 and Azure) and doc tests.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pitlake-target}"

# The shared corpus of third-party Delta tables lives beside the repository.
if [ -z "${PITLAKE_SHARED_TESTDATA:-}" ]; then
  for candidate in ../shared/testdata /work/shared/testdata; do
    if [ -f "$candidate/MANIFEST.md" ]; then
      PITLAKE_SHARED_TESTDATA="$(cd "$candidate" && pwd)"
      export PITLAKE_SHARED_TESTDATA
      break
    fi
  done
fi

# ---- The object-store servers that the S3 and Azure runs of the .slt files and tests/it/s3 use:
# moto (PyPI, into the Python venv below) and Azurite (npm), started once for the whole run on
# 127.0.0.1 and stopped at exit. Servers already named by PITLAKE_TEST_S3_ENDPOINT and
# PITLAKE_TEST_AZURE_ENDPOINT are used as they are.
#
# Everything the run writes to a temporary directory (the tests' warehouses, the loopback cluster's
# logs and shuffle files, the storage servers' data and logs) goes under one directory of its own:
# removed when the run passes, kept and named when it fails, so a failure's logs can be read.
RUN_TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/pitlake-test.XXXXXX")"
export TMPDIR="$RUN_TMPDIR"
STARTED_STORAGE=""
finish() {
  local status=$?
  if [ -n "$STARTED_STORAGE" ]; then scripts/storage-servers.sh stop || true; fi
  if [ "$status" -eq 0 ]; then
    rm -rf "$RUN_TMPDIR" || true
  else
    echo "scripts/test.sh failed (exit $status); the run's temporary files and logs are in $RUN_TMPDIR" >&2
  fi
}
trap finish EXIT
if [ -z "${PITLAKE_TEST_S3_ENDPOINT:-}" ] || [ -z "${PITLAKE_TEST_AZURE_ENDPOINT:-}" ]; then
  eval "$(scripts/storage-servers.sh start)"
  STARTED_STORAGE=1
fi

# ---- The container and Kubernetes files: hadolint, kubernetes-validate, checkov (no findings).
scripts/lint-deploy.sh

cargo test --all-targets "$@"
cargo test --doc "$@"

# ---- The Flight SQL server with real Python clients (ADBC's Flight SQL driver, pyarrow.flight),
# its REST API with `requests` and the schemathesis fuzzer (tests/python/test_rest*.py), against a
# `pitlake serve` the tests start themselves, then the Python client package. The venv is made once
# and reused.
PITLAKE_PY_VENV="${PITLAKE_PY_VENV:-$HOME/.cache/pitlake-py-venv}"
if ! "$PITLAKE_PY_VENV/bin/python" -c "import pyarrow, adbc_driver_flightsql, adbc_driver_manager, pytest, prometheus_client, pandas, polars, requests, schemathesis" 2>/dev/null; then
  python3 -m venv "$PITLAKE_PY_VENV"
  "$PITLAKE_PY_VENV/bin/pip" install -q pyarrow adbc_driver_flightsql adbc_driver_manager pytest prometheus_client pandas polars requests schemathesis
fi
# The Python client package (python/), editable, so its tests import this checkout's code.
"$PITLAKE_PY_VENV/bin/pip" install -q --disable-pip-version-check -e './python[pandas,polars]'
# The binary as `cargo test --all-targets` built it: `cargo build --bin` alone resolves the
# dependencies' features without the dev-dependencies and would rebuild all of them.
cargo build --all-targets
PITLAKE_BIN="$CARGO_TARGET_DIR/debug/pitlake" "$PITLAKE_PY_VENV/bin/pytest" -q --tb=native tests/python
# The client's own tests (python/tests: its pyproject.toml is their pytest config).
PITLAKE_BIN="$CARGO_TARGET_DIR/debug/pitlake" "$PITLAKE_PY_VENV/bin/pytest" -q --tb=native python/tests
