#!/usr/bin/env bash
# Scan a medium-scale feature table from a local folder and from the S3 test server (moto on
# 127.0.0.1), and print the median wall time of each setting. See benches/README.md.
#
#   benches/s3_scan.sh [PITLAKE_BIN] [REPS]
#
# Needs /tmp/pitdata/medium/delta (../shared/bench/gen.py --scale medium). Starts its own
# S3 server (scripts/storage-servers.sh start s3), copies feat_0 into it with boto3, and stops it at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/pitlake-target}/debug/pitlake}"
REPS="${2:-5}"
DATA=/tmp/pitdata/medium/delta
VENV="${PITLAKE_PY_VENV:-$HOME/.cache/pitlake-py-venv}"
QUERY="${QUERY:-SELECT count(*), sum(f0_a), sum(f0_b), sum(f0_c), max(created_ts) FROM feat_0}"

eval "$(PITLAKE_TEST_S3_BUCKET=pitlake-bench scripts/storage-servers.sh start s3)"
trap 'scripts/storage-servers.sh stop' EXIT
"$VENV/bin/python" - "$PITLAKE_TEST_S3_ENDPOINT" "$DATA/feat_0" <<'EOF'
import os, sys, boto3
from boto3.s3.transfer import TransferConfig
endpoint, src = sys.argv[1:3]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="bench", aws_secret_access_key="bench")
for root, _, files in os.walk(src):
    for f in files:
        path = os.path.join(root, f)
        key = "medium/feat_0/" + os.path.relpath(path, src)
        s3.upload_file(path, "pitlake-bench", key, Config=TransferConfig(multipart_threshold=64 << 20))
EOF

S3=(--storage-option "endpoint=$PITLAKE_TEST_S3_ENDPOINT" --storage-option allow_http=true
    --storage-option region=us-east-1 --storage-option access_key_id=bench
    --storage-option secret_access_key=bench)

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # label, then pitlake arguments
  local label="$1"; shift
  local times=()
  for _ in $(seq 1 "$REPS"); do
    local t0 t1
    t0=$(date +%s.%N)
    "$BIN" "$@" sql "$QUERY" --format csv >/dev/null
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc)")
  done
  printf '%-44s %s s\n' "$label" "$(printf '%s\n' "${times[@]}" | median)"
}

echo "query: $QUERY"
run "local folder, 2 partitions" -w "$DATA" --target-partitions 2
run "s3, 2 partitions" -w s3://pitlake-bench/medium "${S3[@]}" --target-partitions 2
run "s3, 8 partitions" -w s3://pitlake-bench/medium "${S3[@]}" --target-partitions 8
run "s3, 16 partitions" -w s3://pitlake-bench/medium "${S3[@]}" --target-partitions 16
run "s3, 8 partitions, concurrency_limit=2" -w s3://pitlake-bench/medium "${S3[@]}" \
  --target-partitions 8 --storage-option concurrency_limit=2
run "s3, 8 partitions, concurrency_limit=1" -w s3://pitlake-bench/medium "${S3[@]}" \
  --target-partitions 8 --storage-option concurrency_limit=1

# Caching: the same query three times in one process (Parquet footers and the Delta snapshot
# are cached by the session after the first run; HTTP connections are reused).
for where in local s3; do
  if [ "$where" = local ]; then args=(-w "$DATA"); else args=(-w s3://pitlake-bench/medium "${S3[@]}"); fi
  echo "one process, three runs ($where):"
  "$BIN" "${args[@]}" --target-partitions 8 sql "$QUERY; $QUERY; $QUERY" --format csv --timing 2>&1 >/dev/null | sed 's/^/  /'
done
