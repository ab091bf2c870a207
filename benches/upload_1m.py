#!/usr/bin/env python3
"""Uploading 1M labels: a pandas DataFrame sent to `pitlake serve` through the Python client
(python/, Flight SQL bulk ingest into a table of the session) and a training set over it read
back as Arrow.

Builds a warehouse (a feature table of --feature-rows rows over --drivers drivers, a feature
view over it), starts `pitlake serve` on a free loopback port (plaintext), and runs --runs times,
each in a new session:

  client    pitlake.connect(...).training_set(frame, at="order_ts", features=["driver_stats.*"])
            .to_arrow(): upload, the training set, the drop of the uploaded table, end to end
  adbc      the same three steps as ADBC calls, timed one by one

The labels are a pandas DataFrame of --rows rows: driver_id int64, order_ts timestamp[us],
label bool (seeded). Reported per run: wall times, the peak RSS (VmHWM) of this client process
and of the server over the run (both reset before each run through /proc/<pid>/clear_refs),
and the rows returned. Not a test: run it by hand, e.g.

  PYTHONPATH=python/src ~/.cache/pitlake-py-venv/bin/python benches/upload_1m.py \\
      --bin target/release/pitlake
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

import adbc_driver_flightsql.dbapi as flightsql

USER, PASSWORD = "bench", "bench-password"
T0 = 1767225600  # 2026-01-01T00:00:00Z
SPAN = 90 * 86400


def run_cli(binary, warehouse, *args, stdin=None):
    done = subprocess.run(
        [binary, "--warehouse", warehouse, *args], input=stdin, capture_output=True
    )
    if done.returncode != 0:
        raise SystemExit(f"pitlake {' '.join(args[:1])} failed:\n{done.stderr.decode()}")
    return done.stdout.decode()


def build_warehouse(binary, warehouse, feature_rows, drivers):
    os.makedirs(warehouse, exist_ok=True)
    run_cli(
        binary,
        warehouse,
        "sql",
        f"""
        CREATE TABLE driver_hourly_stats AS
          SELECT value % {drivers} AS driver_id,
                 to_timestamp_micros(({T0} + (value * 7919) % {SPAN}) * 1000000) AS event_ts,
                 (value * 13 % 1000) / 1000.0 AS conv_rate,
                 value % 7 AS trips
          FROM generate_series(1, {feature_rows});
        CREATE ENTITY driver (driver_id BIGINT);
        CREATE FEATURE VIEW driver_stats ENTITY driver FROM driver_hourly_stats
          EVENT TIME event_ts FEATURES (conv_rate, trips);
        """,
    )


def label_frame(rows, drivers, seed=7):
    rng = np.random.default_rng(seed)
    seconds = T0 + rng.integers(0, SPAN, rows)
    return pd.DataFrame(
        {
            "driver_id": rng.integers(0, drivers, rows, dtype=np.int64),
            "order_ts": pd.to_datetime(seconds, unit="s").astype("datetime64[us]"),
            "label": rng.random(rows) < 0.3,
        }
    )


def status(pid, field):
    """A /proc/<pid>/status value in KiB (VmHWM, VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux: `5` to /proc/<pid>/clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def run_client(uri, frame, pitlake_module):
    with pitlake_module.connect(uri, username=USER, password=PASSWORD) as client:
        started = time.perf_counter()
        table = client.training_set(frame, at="order_ts", features=["driver_stats.*"]).to_arrow()
        return {"total": time.perf_counter() - started}, table


def run_adbc(uri, frame):
    import pyarrow as pa

    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conn = flightsql.connect(uri, db_kwargs={"username": USER, "password": PASSWORD})
    with conn, conn.cursor() as cur:
        started = time.perf_counter()
        labels = pa.Table.from_pandas(frame, preserve_index=False)
        timings["to_arrow"] = time.perf_counter() - started
        step = time.perf_counter()
        cur.adbc_ingest("bench_labels", labels, mode="create", temporary=True)
        timings["upload"] = time.perf_counter() - step
        step = time.perf_counter()
        cur.execute(
            'TRAINING SET LABELS "bench_labels" AT "order_ts" FEATURES (driver_stats.*)'
        )
        table = cur.fetch_arrow_table()
        timings["training_set"] = time.perf_counter() - step
        step = time.perf_counter()
        cur.execute('DROP TABLE "bench_labels"')
        cur.fetchall()
        timings["drop"] = time.perf_counter() - step
        timings["total"] = time.perf_counter() - started
    return timings, table


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", required=True, help="the pitlake binary")
    parser.add_argument("--rows", type=int, default=1_000_000, help="label rows")
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--feature-rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode")
    parser.add_argument("--modes", default="client,adbc")
    args = parser.parse_args()

    import pitlake as client_package

    print(f"python client: {client_package.__file__}")
    root = tempfile.mkdtemp(prefix="pitlake-upload-1m-")
    warehouse = os.path.join(root, "warehouse")
    started = time.time()
    build_warehouse(args.bin, warehouse, args.feature_rows, args.drivers)
    print(f"warehouse built in {time.time() - started:.1f}s ({args.feature_rows} feature rows)")
    hashed = run_cli(
        args.bin, warehouse, "serve", "--hash-password", stdin=PASSWORD.encode() + b"\n"
    )
    auth = os.path.join(root, "auth.toml")
    with open(auth, "w") as f:
        f.write(
            f'[users.{USER}]\npassword_hash = "{hashed.strip()}"\nroles = ["r"]\n'
            '[roles.r]\ngrants = ["table:*", "view:*"]\n'
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(root, "server.log"), "wb")
    server = subprocess.Popen(
        [args.bin, "--warehouse", warehouse, "serve", "--listen", f"127.0.0.1:{port}",
         "--auth-file", auth, "--insecure-plaintext"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"grpc://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start; see " + log.name)
            time.sleep(0.1)
    try:
        frame = label_frame(args.rows, args.drivers)
        print(f"labels: {len(frame)} rows, {frame.memory_usage(deep=True).sum() / 2**20:.1f} MiB "
              f"in pandas; client RSS {status(os.getpid(), 'VmRSS') / 1024:.0f} MiB, server RSS "
              f"{status(server.pid, 'VmRSS') / 1024:.0f} MiB before the runs")
        results = {}
        for mode in args.modes.split(","):
            for run in range(args.runs):
                reset_peak(os.getpid())
                reset_peak(server.pid)
                if mode == "client":
                    timings, table = run_client(uri, frame, client_package)
                else:
                    timings, table = run_adbc(uri, frame)
                # Every label comes back, and most found a feature row.
                assert table.num_rows == args.rows, table.num_rows
                matched = table.num_rows - table.column("driver_stats__conv_rate").null_count
                client_peak = status(os.getpid(), "VmHWM") / 1024
                server_peak = status(server.pid, "VmHWM") / 1024
                results.setdefault(mode, []).append((timings, client_peak, server_peak))
                steps = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
                print(f"{mode} run {run + 1}: {steps}; {table.num_rows} rows ({matched} matched); "
                      f"peak RSS client "
                      f"{client_peak:.0f} MiB, server {server_peak:.0f} MiB", flush=True)
        for mode, runs in results.items():
            total = statistics.median(t["total"] for t, _, _ in runs)
            client = statistics.median(c for _, c, _ in runs)
            srv = statistics.median(s for _, _, s in runs)
            print(f"{mode} median of {len(runs)}: {total:.2f}s; peak RSS client {client:.0f} MiB, "
                  f"server {srv:.0f} MiB")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
        log.close()
        print(f"server exited with {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
