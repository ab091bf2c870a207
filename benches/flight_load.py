#!/usr/bin/env python3
"""Soak/load benchmark for `pitlake serve`: many Flight SQL clients for minutes.

Builds a warehouse (features with N rows over 10k entities, labels with M rows), starts
`pitlake serve` on a free loopback port, and runs C client threads (pyarrow.flight, each with its
own connection and token) for D seconds, each looping over a mix of queries:

  training  an as-of join of all labels with the features (a training set)      30%
  lookup    one entity's latest 10 feature rows                                 50%
  rollup    an aggregate over all features                                      20%

It reports queries/s, p50/p99 latency per kind, rows/s and bytes/s received, errors, and the
server's peak RSS (VmHWM). Not a test: run it by hand, e.g.

  python3 -m venv ~/.cache/pitlake-py-venv && ~/.cache/pitlake-py-venv/bin/pip install pyarrow
  ~/.cache/pitlake-py-venv/bin/python benches/flight_load.py --bin target/release/pitlake \\
      --clients 32 --duration 120
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

import pyarrow.flight as flight

USER, PASSWORD = "bench", "bench-password"


def default_binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/pitlake-target"))
    for candidate in [
        os.path.expanduser("~/.cache/pitlake-target-release/release/pitlake"),
        os.path.join(target, "release", "pitlake"),
        os.path.join(target, "debug", "pitlake"),
    ]:
        if os.path.exists(candidate):
            return candidate
    raise SystemExit("no pitlake binary found; pass --bin")


def pitlake(binary, warehouse, *args, stdin=None):
    done = subprocess.run(
        [binary, "--warehouse", warehouse, *args], input=stdin, capture_output=True
    )
    if done.returncode != 0:
        raise SystemExit(f"pitlake {' '.join(args[:1])} failed:\n{done.stderr.decode()}")
    return done.stdout.decode()


def build_warehouse(binary, warehouse, feature_rows, label_rows):
    os.makedirs(warehouse, exist_ok=True)
    t0 = 1767225600  # 2026-01-01T00:00:00Z
    span = 90 * 86400
    pitlake(
        binary,
        warehouse,
        "sql",
        f"""
        CREATE TABLE features AS
          SELECT value % 10000 AS entity_id,
                 to_timestamp_seconds({t0} + (value * 7919) % {span}) AS ts,
                 (value * 13 % 1000) / 1000.0 AS f1,
                 value % 7 AS f2
          FROM generate_series(1, {feature_rows});
        CREATE TABLE labels AS
          SELECT value % 10000 AS entity_id,
                 to_timestamp_seconds({t0} + (value * 104729) % {span}) AS ts,
                 value % 2 = 0 AS label
          FROM generate_series(1, {label_rows});
        """,
    )


def flight_sql_command(query):
    """A CommandStatementQuery in a google.protobuf.Any, encoded by hand."""

    def field(number, payload):
        length, out = len(payload), bytearray([number << 3 | 2])
        while True:
            byte = length & 0x7F
            length >>= 7
            out.append(byte | (0x80 if length else 0))
            if not length:
                return bytes(out) + payload

    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return field(1, type_url) + field(2, field(1, query.encode()))


QUERIES = [
    (
        "training",
        0.3,
        lambda r: "SELECT l.entity_id, l.ts, l.label, f.f1, f.f2 FROM labels l "
        "ASOF LEFT JOIN features f ON l.entity_id = f.entity_id AND l.ts >= f.ts",
    ),
    (
        "lookup",
        0.5,
        lambda r: f"SELECT * FROM features WHERE entity_id = {r.randrange(10000)} "
        "ORDER BY ts DESC LIMIT 10",
    ),
    (
        "rollup",
        0.2,
        lambda r: "SELECT f2, count(*) AS n, avg(f1) AS f1 FROM features GROUP BY f2",
    ),
]


def pick_query(rng):
    """(kind, sql) of one query of the mix, drawn with the mix's weights."""
    kind, _, make = rng.choices(QUERIES, [q[1] for q in QUERIES])[0]
    return kind, make(rng)


def run_query(client, options, sql):
    """GetFlightInfo then DoGet of its ticket on the same server; the whole result, read."""
    descriptor = flight.FlightDescriptor.for_command(flight_sql_command(sql))
    info = client.get_flight_info(descriptor, options)
    return client.do_get(info.endpoints[0].ticket, options).read_all()


def client_loop(uri, deadline, seed, results, errors):
    rng = random.Random(seed)
    client = flight.FlightClient(uri)
    try:
        header = client.authenticate_basic_token(USER.encode(), PASSWORD.encode())
    except Exception as err:  # a refused handshake raises ArrowInvalid, not a FlightError
        errors.append(f"login: {err!r}")
        client.close()
        return
    options = flight.FlightCallOptions(headers=[header])
    while time.time() < deadline:
        kind, sql = pick_query(rng)
        started = time.perf_counter()
        try:
            table = run_query(client, options, sql)
        except flight.FlightError as err:
            errors.append(f"{kind}: {err}")
            continue
        results.append((kind, time.perf_counter() - started, table.num_rows, table.nbytes))
    client.close()


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def latency_summary(samples):
    """p50/p99/mean in ms per kind of the mix, and p50/p99 of all: samples are (kind, seconds)."""
    samples = list(samples)
    out = {}
    for kind, _, _ in QUERIES:
        lat = [seconds * 1000 for k, seconds in samples if k == kind]
        out[kind] = {
            "n": len(lat),
            "p50": round(percentile(lat, 50), 1),
            "p99": round(percentile(lat, 99), 1),
            "mean": round(statistics.mean(lat), 1) if lat else None,
        }
    all_lat = [seconds * 1000 for _, seconds in samples]
    out["all"] = {
        "n": len(all_lat),
        "p50": round(percentile(all_lat, 50), 1),
        "p99": round(percentile(all_lat, 99), 1),
    }
    return out


def add_arguments(parser):
    """The options shared by the load benchmarks: the binary, the load, the warehouse, limits."""
    parser.add_argument("--bin", default=None, help="the pitlake binary (default: newest build)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--feature-rows", type=int, default=1_000_000)
    parser.add_argument("--label-rows", type=int, default=50_000)
    parser.add_argument("--max-concurrent-queries", type=int, default=16)
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--query-memory-limit", default="256MiB")
    parser.add_argument("--keep", action="store_true", help="keep the warehouse folder")


def prepare(args, prefix):
    """A temporary folder with the warehouse built and an auth file for USER: (binary, root,
    warehouse, auth)."""
    binary = args.bin or default_binary()
    root = tempfile.mkdtemp(prefix=prefix)
    warehouse = os.path.join(root, "warehouse")
    started = time.time()
    build_warehouse(binary, warehouse, args.feature_rows, args.label_rows)
    print(f"warehouse built in {time.time() - started:.1f}s ({args.feature_rows} feature rows)")
    hashed = pitlake(binary, warehouse, "serve", "--hash-password", stdin=PASSWORD.encode() + b"\n")
    auth = os.path.join(root, "auth.toml")
    with open(auth, "w") as f:
        f.write(
            f'[users.{USER}]\npassword_hash = "{hashed.strip()}"\nroles = ["r"]\n'
            '[roles.r]\ngrants = ["table:*"]\n'
        )
    return binary, root, warehouse, auth


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(binary, warehouse, auth, port, args, *extra):
    """`pitlake serve` on a loopback port, plaintext, with the benchmark's limits."""
    return [
        binary, "--warehouse", warehouse, "--memory-limit", args.memory_limit,
        "serve", "--listen", f"127.0.0.1:{port}", "--auth-file", auth,
        "--insecure-plaintext",
        "--max-concurrent-queries", str(args.max_concurrent_queries),
        "--query-memory-limit", args.query_memory_limit,
        *extra,
    ]


def wait_for_port(port, timeout=30):
    """True once something accepts connections on the loopback port, False after timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    binary, root, warehouse, auth = prepare(args, "pitlake-flight-load-")
    port = free_port()
    log = open(os.path.join(root, "server.log"), "wb")
    server = subprocess.Popen(
        serve_command(binary, warehouse, auth, port, args), stdout=log, stderr=subprocess.STDOUT
    )
    uri = f"grpc://127.0.0.1:{port}"
    wait_for_port(port)

    results, errors = [], []
    deadline = time.time() + args.duration
    threads = [
        threading.Thread(target=client_loop, args=(uri, deadline, i, results, errors))
        for i in range(args.clients)
    ]
    load_started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - load_started
    peak = peak_rss_kib(server.pid)
    server.send_signal(signal.SIGTERM)
    exit_code = server.wait(timeout=120)
    log.close()

    summary = {
        "binary": binary,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "queries": len(results),
        "errors": len(errors),
        "queries_per_s": round(len(results) / elapsed, 1),
        "rows_per_s": round(sum(r[2] for r in results) / elapsed),
        "mib_per_s": round(sum(r[3] for r in results) / elapsed / 2**20, 1),
        "server_peak_rss_mib": round(peak / 1024) if peak else None,
        "server_exit_code": exit_code,
        "latency_ms": latency_summary((r[0], r[1]) for r in results),
    }
    print(json.dumps(summary, indent=2))
    for err in errors[:5]:
        print("error:", err)
    if args.keep:
        print("warehouse and server log kept in", root)
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
