#!/usr/bin/env bash
# The shared workload's training set exported as a Delta table to S3 (moto on 127.0.0.1),
# single-node and through a Ballista cluster of pitlake processes on this machine (a scheduler and
# two executors, one slot each), alternately; checks that both exports have the same content hash
# and that `pitlake verify` accepts each. See benches/README.md.
#
#   benches/cluster_export.sh PITLAKE_BIN [SCALE] [REPS]   (SCALE small|medium|large, default medium)
#
# Prints each side's median wall seconds and the client's peak RSS, and the executors' peak RSS.
# Needs /tmp/pitdata/SCALE (../shared/bench/gen.py). Starts its own S3 server
# (scripts/storage-servers.sh start s3) and stops it at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1"); scale=${2:-medium}; reps=${3:-3}
data=/tmp/pitdata/$scale/delta
VENV="${PITLAKE_PY_VENV:-$HOME/.cache/pitlake-py-venv}"
[[ -d $data ]] || { echo "no $data: run ../shared/bench/gen.py --scale $scale"; exit 1; }

out=$(mktemp -d)
pids=()
eval "$(PITLAKE_TEST_S3_BUCKET=pitlake-bench scripts/storage-servers.sh start s3)"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/storage-servers.sh stop
  rm -rf "$out"
}
trap cleanup EXIT
export AWS_ENDPOINT_URL="$PITLAKE_TEST_S3_ENDPOINT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench

# A warehouse of the workload's tables (linked, not copied) with one feature view per table.
wh="$out/warehouse"; mkdir "$wh"
for t in "$data"/*; do ln -s "$t" "$wh/$(basename "$t")"; done
setup="CREATE ENTITY ent (entity_id BIGINT);"
features=""
for k in 0 1 2; do
  setup="$setup CREATE FEATURE VIEW feat_$k ENTITY ent FROM feat_$k EVENT TIME feature_ts
    CREATED TIME created_ts FEATURES (f${k}_a, f${k}_b, f${k}_c, f${k}_n);"
  features="$features${features:+, }feat_$k.f${k}_a, feat_$k.f${k}_b, feat_$k.f${k}_c, feat_$k.f${k}_n"
done
"$bin" -w "$wh" sql "$setup" >/dev/null
training="TRAINING SET LABELS labels AT label_ts FEATURES ($features)"

PY="$VENV/bin/python"
. benches/cluster_common.sh
start_cluster "$wh"

to="s3://pitlake-bench/$scale"
run() { # run NAME ARGS...: appends "wall peak_kib" to $out/NAME, the content hash to $out/NAME.hash
  /usr/bin/time -f "%e %M" -o "$out/t" "$bin" --warehouse "$wh" "${@:2}" \
    export "$training" --to "$to/$1" --format delta >"$out/stdout" 2>"$out/err" \
    || { echo "$1 failed:"; tail -n 5 "$out/err"; exit 1; }
  cat "$out/t" >>"$out/$1"
  grep '^Content hash' "$out/stdout" >"$out/$1.hash"
  "$bin" --warehouse "$wh" verify "$to/$1.manifest.json" >/dev/null \
    || { echo "$1: verify failed"; exit 1; }
}
for _ in $(seq "$reps"); do
  run single
  run cluster --cluster "df://127.0.0.1:$sched_port"
done

print_sides
echo "peak RSS: executors $(hwm "${exec_pids[0]}") and $(hwm "${exec_pids[1]}") MiB"
echo "executor export parts: $(cat "$out"/executor-*.err | grep -c 'wrote an export part' || true)"
if cmp -s "$out/single.hash" "$out/cluster.hash"; then
  echo "content hashes: equal ($(cut -c1-40 "$out/single.hash")…)"
else
  echo "content hashes: DIFFER"; cat "$out/single.hash" "$out/cluster.hash"; exit 1
fi
