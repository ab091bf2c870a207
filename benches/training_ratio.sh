#!/usr/bin/env bash
# The shared workload's training set four ways, alternating: the raw as-of query (three ASOF
# LEFT JOINs with the workload's tie-break) in the training set's row order (`ORDER BY` the label
# time, the key, then the other label columns: what makes it the equivalent query), the same
# without that order (`unordered`), the training set through the DSL (`TRAINING SET … WITHOUT
# KNOWLEDGE TIME` over one feature view per table), and `pitlake export` of it (Parquet, with
# its content hash and manifest), each written to a local file. Prints the median wall time and
# peak RSS of each and its ratio to the ordered raw query (issue 16's aim for the DSL and the
# export: within 1.1x). See benches/README.md.
#
#   benches/training_ratio.sh PITLAKE_BIN [SCALE] [REPS]   (default medium, 3)
#
# Needs /tmp/pitdata/SCALE (../shared/bench/gen.py) and GNU time.
set -euo pipefail
bin=$(realpath "$1"); scale=${2:-medium}; reps=${3:-3}
data=/tmp/pitdata/$scale/delta
[[ -d $data/labels ]] || { echo "no $data: run ../shared/bench/gen.py --scale $scale" >&2; exit 2; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT

# A warehouse of the workload's tables (linked, not copied) with one feature view per table.
wh="$out/warehouse"; mkdir "$wh"
for t in "$data"/*; do ln -s "$t" "$wh/$(basename "$t")"; done
setup="CREATE ENTITY ent (entity_id BIGINT);"
features=""; sel="l.label_id, l.entity_id, l.label_ts"; joins=""
for k in 0 1 2; do
  setup="$setup CREATE FEATURE VIEW feat_$k ENTITY ent FROM feat_$k EVENT TIME feature_ts
    CREATED TIME created_ts FEATURES (f${k}_a, f${k}_b, f${k}_c, f${k}_n);"
  features="$features${features:+, }feat_$k.f${k}_a, feat_$k.f${k}_b, feat_$k.f${k}_c, feat_$k.f${k}_n"
  sel="$sel, f$k.f${k}_a, f$k.f${k}_b, f$k.f${k}_c, f$k.f${k}_n"
  joins="$joins ASOF LEFT JOIN feat_$k f$k ON l.entity_id = f$k.entity_id
    AND l.label_ts >= f$k.feature_ts TIEBREAK BY f$k.created_ts DESC"
done
"$bin" -w "$wh" sql "$setup" >/dev/null
training="TRAINING SET LABELS labels AT label_ts FEATURES ($features) WITHOUT KNOWLEDGE TIME"
unordered="SELECT $sel FROM labels l $joins"
query="$unordered ORDER BY l.label_ts, l.entity_id, l.label_id"

run() { # run NAME ARGS...: appends "wall peak_kib" to $out/NAME
  rm -rf "$out/$1.out" "$out/$1.out.manifest.json"
  /usr/bin/time -f "%e %M" -o "$out/t" "$bin" --warehouse "$wh" "${@:2}" >/dev/null 2>"$out/err" \
    || { echo "$1 failed:"; tail -n 5 "$out/err"; exit 1; }
  cat "$out/t" >>"$out/$1"
}
for _ in $(seq "$reps"); do
  run query sql "$query" --format parquet --output "$out/query.out"
  run unordered sql "$unordered" --format parquet --output "$out/unordered.out"
  run dsl sql "$training" --format parquet --output "$out/dsl.out"
  run export export "$training" --to "$out/export.out" --format parquet
done
med() { sort -g -k"$2" "$1" | awk -v c="$2" '{a[NR]=$c} END{print a[int((NR+1)/2)]}'; }
printf '%-10s %10s %12s %8s\n' run "wall s" "peak MiB" "/ query"
q=$(med "$out/query" 1)
for r in query unordered dsl export; do
  w=$(med "$out/$r" 1)
  printf '%-10s %10s %12.0f %8.2f\n' "$r" "$w" "$(echo "$(med "$out/$r" 2) / 1024" | bc -l)" \
    "$(echo "$w / $q" | bc -l)"
done
