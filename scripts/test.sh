#!/usr/bin/env bash
# The whole test suite: unit tests, the sqllogictest files under sql/, the integration tests
# (CLI, Delta conformance against ../shared/testdata, time travel) and doc tests.
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

cargo test --all-targets "$@"
cargo test --doc "$@"
