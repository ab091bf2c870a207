#!/usr/bin/env bash
# The read bound of the shared training-set workload: how long pitlake takes to decode every
# column the as-of query reads (labels: label_id, entity_id, label_ts; each feature table:
# entity_id, feature_ts, created_ts, f<k>_a, f<k>_b, f<k>_c, f<k>_n), against the query itself
# (three ASOF LEFT JOINs with the workload's tie-break, written to Parquet), runs alternating.
# Prints the median wall time of each and their ratio. See benches/README.md.
#
#   benches/read_bound.sh PITLAKE_BIN [SCALE] [REPS]
#
# REPS defaults to 9: on the 2-core test machine the ratio moved by about 0.3 between sets of 5
# runs of each side (most of it in the scan), and by about 0.15 between sets of 9.
#
# Needs /tmp/pitdata/<SCALE> (../shared/bench/gen.py --scale <SCALE>) and GNU time.
set -euo pipefail
bin=$(realpath "$1"); scale=${2:-medium}; reps=${3:-9}
data=/tmp/pitdata/$scale/delta
[[ -d $data/labels ]] || { echo "no $data: run ../shared/bench/gen.py --scale $scale" >&2; exit 2; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT

# Every column is read by an aggregate, so each one is decoded in full; the aggregates cost
# little beside the decoding (one pass over values already in cache).
scan="SELECT count(*), max(label_id), max(entity_id), max(label_ts) FROM labels"
sel="l.label_id, l.entity_id, l.label_ts"; joins=""
for k in 0 1 2; do
  scan="$scan; SELECT count(*), max(entity_id), max(feature_ts), max(created_ts), sum(f${k}_a),
    sum(f${k}_b), sum(f${k}_c), max(f${k}_n) FROM feat_$k"
  sel="$sel, f$k.f${k}_a, f$k.f${k}_b, f$k.f${k}_c, f$k.f${k}_n"
  joins="$joins ASOF LEFT JOIN feat_$k f$k ON l.entity_id = f$k.entity_id
    AND l.label_ts >= f$k.feature_ts TIEBREAK BY f$k.created_ts DESC"
done
query="SELECT $sel FROM labels l $joins"

run() { # run NAME ARGS...: appends "wall peak_kib" to $out/NAME
  /usr/bin/time -f "%e %M" -o "$out/t" "$bin" --warehouse "$data" "${@:2}" >/dev/null \
    2>"$out/err" || { echo "$1 failed:"; tail -n 5 "$out/err"; exit 1; }
  cat "$out/t" >>"$out/$1"
}
for _ in $(seq "$reps"); do
  run scan sql "$scan"
  run query sql "$query" --format parquet --output "$out/q.parquet"
done
med() { sort -g -k1 "$1" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
s=$(med "$out/scan"); q=$(med "$out/query")
printf 'scan of the columns read: %s s\nas-of query:              %s s\nquery / read bound:       %s\n' \
  "$s" "$q" "$(echo "scale=2; $q / $s" | bc)"
