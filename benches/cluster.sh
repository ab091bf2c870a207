#!/usr/bin/env bash
# The shared workload's training set single-node and through a Ballista cluster of pitlake
# processes on this machine (a scheduler and two executors, one slot each), alternately, with the
# same query and data; checks that both outputs have the workload's checksum.
# Usage: benches/cluster.sh PITLAKE_BIN [SCALE] [REPS]   (SCALE small|medium|large, default medium)
# Prints each side's median wall seconds and the client's peak RSS; for the cluster also the
# executors' and the scheduler's peak RSS (VmHWM) after the runs.
set -euo pipefail
bin=$(realpath "$1"); scale=${2:-medium}; reps=${3:-3}
here=$(cd "$(dirname "$0")" && pwd)
shared=$(cd "$here/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)
PY=${PY:-$HOME/.cache/pitlake-bench-venv/bin/python}
[[ -x $PY ]] || PY=$("$shared/setup.sh")
data=/tmp/pitdata/$scale
[[ -f $data/meta.json ]] || "$PY" "$shared/gen.py" --scale "$scale" >/dev/null
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$out"; }
trap cleanup EXIT

. "$here/cluster_common.sh"
start_cluster "$data/delta"

sel="l.label_id, l.entity_id, l.label_ts"; joins=""
for k in 0 1 2; do
  sel="$sel, f$k.f${k}_a, f$k.f${k}_b, f$k.f${k}_c, f$k.f${k}_n"
  joins="$joins ASOF LEFT JOIN feat_$k f$k ON l.entity_id = f$k.entity_id AND l.label_ts >= f$k.feature_ts TIEBREAK BY f$k.created_ts DESC"
done
sql=${PITLAKE_SQL:-"SELECT $sel FROM labels l $joins"}

run() { # run NAME ARGS...: appends "wall peak_kib" to $out/NAME
  /usr/bin/time -f "%e %M" -o "$out/t" "$bin" --warehouse "$data/delta" "${@:2}" \
    sql "$sql" --format parquet --output "$out/$1.parquet" >/dev/null 2>"$out/err" \
    || { echo "$1 failed:"; tail -n 5 "$out/err"; exit 1; }
  cat "$out/t" >>"$out/$1"
}
for _ in $(seq "$reps"); do
  run single
  run cluster --cluster "df://127.0.0.1:$sched_port"
done

print_sides
echo "peak RSS: scheduler $(hwm "$sched_pid") MiB, executors $(hwm "${exec_pids[0]}") and $(hwm "${exec_pids[1]}") MiB"
"$PY" "$shared/check.py" --exact "$out/single.parquet" "$out/cluster.parquet" \
  && echo "checksums: equal" || echo "checksums: DIFFER"
