#!/bin/bash
# Side by side, in one run: pitlake's windowed point-in-time aggregates against DuckDB and Polars
# on the shared workload's labels and feat_0 (see README.md beside this file).
# Usage: benches/windows/compare.sh PITLAKE_BIN [SCALE] [REPS]
#   SCALE tiny|small|medium|large (default small); REPS runs of each, alternating (default 3).
#   PITLAKE_SQL   overrides the query pitlake runs (default: the ASOF LEFT JOIN … AGGREGATES below)
#   PEERS         the peers and forms run, default "duckdb:rangejoin duckdb:window polars:rolling"
#                 (also polars:joinwhere, which needs more than 15 GB at medium); the ratio is
#                 to the fastest of them
#   DATA=DIR      reads DIR instead of /tmp/pitdata/SCALE (e.g. make_edge.py's boundary labels)
#   ORACLE=1      also runs the numpy oracle once (untimed) and compares every result with it
#   KEEP=DIR      keeps the results in DIR instead of a temporary folder
# Prints each engine's median wall seconds and peak RSS (GNU time, whole process), pitlake's ratio
# to the fastest peer, the checksums and whether the results agree (check_windows.py --rows; the
# exit status is 1 when they do not).
set -euo pipefail
bin=$(realpath "$1"); scale=${2:-small}; reps=${3:-3}
here=$(cd "$(dirname "$0")" && pwd)
shared=$(cd "$here/../../../shared/bench" 2>/dev/null && pwd || true)
PY=${PY:-$HOME/.cache/pitlake-bench-venv/bin/python}
if [[ ! -x $PY ]]; then
  [[ -n $shared ]] || { echo "no venv at $PY and no ../shared/bench/setup.sh to make one"; exit 1; }
  PY=$("$shared/setup.sh")
fi
data=${DATA:-/tmp/pitdata/$scale}
if [[ ! -f $data/meta.json ]]; then
  [[ -z ${DATA:-} ]] || { echo "no data at $DATA"; exit 1; }
  [[ -n $shared ]] || { echo "no data at $data and no ../shared/bench/gen.py to make it"; exit 1; }
  "$PY" "$shared/gen.py" --scale "$scale" >/dev/null
fi
if [[ -n ${KEEP:-} ]]; then out=$KEEP; mkdir -p "$out"; tmp=$(mktemp -d); else out=$(mktemp -d); tmp=$out; fi
trap 'rm -rf "$tmp"' EXIT
peers=${PEERS:-duckdb:rangejoin duckdb:window polars:rolling}
names=()
for p in $peers; do names+=("${p%%:*}-${p#*:}"); rm -f "$tmp/${p%%:*}-${p#*:}"; done
rm -f "$tmp/pitlake"
aggs="count(*) OVER INTERVAL '7 days' AS n_7d, sum(w.f0_a) OVER INTERVAL '7 days' AS sum_7d,"
aggs="$aggs avg(w.f0_a) OVER INTERVAL '7 days' AS avg_7d, max(w.f0_a) OVER INTERVAL '7 days' AS max_7d,"
aggs="$aggs sum(w.f0_a) OVER INTERVAL '1 hour' AS sum_1h"
sql=${PITLAKE_SQL:-"SELECT l.label_id, l.entity_id, l.label_ts, w.n_7d, w.sum_7d, w.avg_7d, w.max_7d, w.sum_1h
FROM labels l ASOF LEFT JOIN feat_0 w ON l.entity_id = w.entity_id AND l.label_ts >= w.feature_ts
AGGREGATES ($aggs)"}
run() { # run NAME CMD...: appends "wall peak_kib" to $tmp/NAME
  /usr/bin/time -f "%e %M" -o "$tmp/t" "${@:2}" >/dev/null 2>"$tmp/err" || { echo "$1 failed:"; tail -n 5 "$tmp/err"; exit 1; }
  cat "$tmp/t" >>"$tmp/$1"
}
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for _ in $(seq "$reps"); do
  run pitlake "$bin" --warehouse "$data/delta" sql "$sql" --format parquet --output "$out/pitlake.parquet"
  for p in $peers; do
    e=${p%%:*}; f=${p#*:}
    run "$e-$f" "$PY" "$here/run_$e.py" --scale "$scale" --data-dir "$data" --form "$f" --out "$out/$e-$f.parquet" --no-checksum
  done
done
med() { sort -g -k"$2" "$1" | awk -v c="$2" '{a[NR]=$c} END{print a[int((NR+1)/2)]}'; }
echo "scale $scale, $reps runs each, alternating; load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-18s %8s %10s   %s\n' engine "wall s" "peak MiB" "all runs (s)"
best=""; bestname=""
for e in pitlake "${names[@]}"; do
  w=$(med "$tmp/$e" 1)
  printf '%-18s %8s %10.0f   %s\n' "$e" "$w" "$(echo "$(med "$tmp/$e" 2) / 1024" | bc -l)" \
    "$(awk '{printf "%s ", $1}' "$tmp/$e")"
  if [[ $e != pitlake ]] && { [[ -z $best ]] || (( $(echo "$w < $best" | bc) )); }; then best=$w; bestname=$e; fi
done
p=$(med "$tmp/pitlake" 1)
echo "pitlake / fastest peer ($bestname): $(echo "scale=2; $p / $best" | bc)"
files=("$out/pitlake.parquet")
for e in "${names[@]}"; do files+=("$out/$e.parquet"); done
if [[ ${ORACLE:-0} == 1 ]]; then
  "$PY" "$here/run_numpy.py" --scale "$scale" --data-dir "$data" --out "$out/numpy.parquet" --no-checksum >/dev/null
  files=("$out/numpy.parquet" "${files[@]}")
fi
rc=0; "$PY" "$here/check_windows.py" --quiet --rows "${files[@]}" || rc=$?
exit "$rc"
