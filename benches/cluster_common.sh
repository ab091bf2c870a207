# Sourced by benches/cluster.sh and benches/cluster_export.sh: a scheduler and two one-slot
# executors of one pitlake binary on loopback, and the figures both scripts print.
# Needs: $bin (the binary), $out (a scratch folder), $PY (a Python), the array `pids` (every
# process started is added, for the caller's cleanup).

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for FILE TEXT
  for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no '$2' in $1:"; cat "$1"; exit 1
}

# start_cluster WAREHOUSE: sets sched_port, sched_pid and exec_pids.
start_cluster() {
  sched_port=$(free_port)
  "$bin" cluster scheduler --listen "127.0.0.1:$sched_port" >"$out/scheduler.out" 2>"$out/scheduler.err" &
  pids+=($!); sched_pid=$!
  wait_for "$out/scheduler.out" "listening on"
  exec_pids=()
  for i in 0 1; do
    "$bin" --warehouse "$1" cluster executor --scheduler "127.0.0.1:$sched_port" \
      --listen "127.0.0.1:$(free_port)" --task-port "$(free_port)" --slots 1 --work-dir "$out/executor-$i" \
      >"$out/executor-$i.out" 2>"$out/executor-$i.err" &
    pids+=($!); exec_pids+=($!)
    wait_for "$out/executor-$i.out" "ready"
  done
}

med() { sort -g -k"$2" "$1" | awk -v c="$2" '{a[NR]=$c} END{print a[int((NR+1)/2)]}'; }
hwm() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# print_sides: each side's median wall seconds and client peak (from $out/single, $out/cluster).
print_sides() {
  printf '%-8s %10s %18s\n' side "wall s" "client peak MiB"
  for s in single cluster; do
    printf '%-8s %10s %18.0f\n' "$s" "$(med "$out/$s" 1)" "$(echo "$(med "$out/$s" 2) / 1024" | bc -l)"
  done
  echo "cluster / single: $(echo "scale=2; $(med "$out/cluster" 1) / $(med "$out/single" 1)" | bc)"
}
