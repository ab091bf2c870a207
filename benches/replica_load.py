#!/usr/bin/env python3
"""Two `pitlake serve` replicas under many clients, one of them restarted midway.

The warehouse, the auth file and the query mix are flight_load.py's. Two replicas (A and B)
serve that one warehouse with one signing secret (`--signing-key-file`), each with
`--http-listen` and `--shutdown-grace` (5 s by default). In front of them the script plays a load
balancer:

- a router thread asks each replica's /readyz every 200 ms; a replica is ready while it answers
  200;
- each client logs in once before the load starts (on A or B in turn, one login at a time unless
  --concurrent-logins says otherwise) and sends its token to either replica, since both accept
  it; it sends each query (GetFlightInfo, then DoGet of the ticket on the same replica) to the
  ready replicas in turn, round-robin;
- a call that fails because its replica went away (UNAVAILABLE, a refused or reset connection)
  while that replica was being restarted (from its SIGTERM until its /readyz answers 200 again)
  is sent once more, whole, to another ready replica and counted as a retry. Anything else is an
  error, printed with its message: any other status, the same failure from a replica that was
  not being restarted, the retry failing too, or a result with other than the query's known row
  count (so a stream cut short cannot pass for an answer). A refused token would be answered by
  one new login (counted; none is expected with a shared secret).

At --restart-at seconds (default: 40% of --duration) A gets SIGTERM; the script polls its /readyz
and ports every 10 ms to time when /readyz stops answering 200, when the ports close and when
the process exits, then (after --down seconds, 0 by default) starts A again on the same ports and
waits for /readyz 200. Calls that were running on A at the SIGTERM are followed to their end.
The report gives, overall and per phase (before the SIGTERM; from it until A is ready again;
after; queries counted when they end), queries/s, p50/p99 per kind, retries and errors; each
process's peak RSS (VmHWM, sampled every 200 ms); the outcomes counted in each server log; the
load average. It exits 1 if there was any error or a server did not exit 0.

  ~/.cache/pitlake-py-venv/bin/python benches/replica_load.py --bin <pitlake> --clients 16 \\
      --duration 60
"""

import argparse
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pyarrow.flight as flight

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flight_load as fl  # noqa: E402

POLL = 0.2  # the router's /readyz period, seconds
CALL_TIMEOUT = 120  # seconds, per Flight call

# What a replica going away looks like to a gRPC client: its status, or the transport's words
# when the connection is refused, reset or closed under a call.
WENT_AWAY = re.compile(
    r"connection refused|connection reset|failed to connect|socket closed|broken pipe|"
    r"goaway|shutting down|stream removed|end of tcp stream|rst_stream",
    re.IGNORECASE,
)


def went_away(error):
    return isinstance(error, flight.FlightUnavailableError) or (
        isinstance(error, flight.FlightError) and bool(WENT_AWAY.search(str(error)))
    )


def readyz(http_port, timeout=1.0):
    """(status, body) of GET /readyz, or (None, why) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=timeout) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().strip()
    except OSError as error:
        return None, str(getattr(error, "reason", error))


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Replica:
    """One `pitlake serve` process at a time on fixed ports; each run's pid, peak RSS, exit code."""

    def __init__(self, name, command, port, http_port, root):
        self.name, self.command, self.port, self.http_port = name, command, port, http_port
        self.uri = f"grpc://127.0.0.1:{port}"
        self.root = root
        self.runs = []  # {"pid", "log", "peak_kib", "exit_code"}
        self.process = None

    def start(self):
        log_path = os.path.join(self.root, f"{self.name}-{len(self.runs) + 1}.log")
        log = open(log_path, "wb")
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PITLAKE_LOG": "pitlake=info"},
        )
        log.close()
        self.runs.append(
            {"pid": self.process.pid, "log": log_path, "peak_kib": 0, "exit_code": None}
        )

    def sample_rss(self):
        process = self.process
        if process is not None and process.poll() is None:
            peak = fl.peak_rss_kib(process.pid)
            run = next(r for r in self.runs if r["pid"] == process.pid)
            if peak:
                run["peak_kib"] = max(run["peak_kib"], peak)

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"replica {self.name} exited at start:\n"
                                 + open(self.runs[-1]["log"]).read())
            if readyz(self.http_port)[0] == 200:
                return time.time()
            time.sleep(0.01)
        raise SystemExit(f"replica {self.name} not ready after {timeout}s")

    def stop(self, timeout=120):
        self.sample_rss()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.runs[-1]["exit_code"] = code
        return code


class Router(threading.Thread):
    """The load balancer's view: which replicas answer /readyz 200, polled every POLL seconds;
    every change is recorded with its time. Samples the servers' peak RSS and the load average
    as it goes."""

    def __init__(self, replicas):
        super().__init__(daemon=True)
        self.replicas = replicas
        self.ready = {r.name: False for r in replicas}
        self.changes = []  # (time, replica, status, body)
        self.loadavg = []
        self.lock = threading.Condition()
        self.stopping = False
        self.poll_once()

    def poll_once(self):
        for replica in self.replicas:
            status, body = readyz(replica.http_port, timeout=POLL)
            replica.sample_rss()
            with self.lock:
                if self.ready[replica.name] != (status == 200):
                    self.ready[replica.name] = status == 200
                    self.changes.append((time.time(), replica.name, status, body))
                    self.lock.notify_all()
        with open("/proc/loadavg") as f:
            self.loadavg.append(float(f.read().split()[0]))

    def run(self):
        while not self.stopping:
            started = time.time()
            self.poll_once()
            time.sleep(max(0.0, POLL - (time.time() - started)))

    def pick(self, turn, exclude=None, timeout=10):
        """A ready replica, the turn-th of those ready (round-robin), other than exclude;
        waits up to timeout for one; None if none."""
        deadline = time.time() + timeout
        with self.lock:
            while True:
                ready = [r for r in self.replicas if self.ready[r.name] and r.name != exclude]
                if ready:
                    return ready[turn % len(ready)]
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.lock.wait(left)


class Load:
    """The clients' shared record: every attempt, every finished query, retries and errors."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempts = []  # (client, replica, started, ended, outcome, message)
        self.queries = []  # (kind, ended, seconds, rows, bytes, replica, retried)
        self.retries = []  # (time, client, kind, from, to, message)
        self.errors = []  # (time, client, kind, replica, message)
        self.relogins = []  # (time, client, replica)
        self.restart_window = {}  # replica name -> [sigterm time, ready-again time or None]

    def restarting(self, name, when):
        window = self.restart_window.get(name)
        return bool(window) and window[0] <= when and (window[1] is None or when <= window[1])


def login(replica):
    """Call options with a session token from `replica`; with one secret, good on every one."""
    client = flight.FlightClient(replica.uri)
    try:
        header = client.authenticate_basic_token(fl.USER.encode(), fl.PASSWORD.encode())
    finally:
        client.close()
    return flight.FlightCallOptions(headers=[header], timeout=CALL_TIMEOUT)


def client_loop(number, router, load, deadline, seed, expected_rows, options):
    """One client: `options` holds its token (None if its login was refused: it logs in at its
    first call then)."""
    rng = random.Random(seed)
    clients = {}
    turn = number

    def client_for(replica):
        if replica.name not in clients:
            clients[replica.name] = flight.FlightClient(replica.uri)
        return clients[replica.name]

    def attempt(replica, sql):
        nonlocal options
        started = time.time()
        try:
            if options is None:
                options = login(replica)
            try:
                table = fl.run_query(client_for(replica), options, sql)
            except flight.FlightUnauthenticatedError:
                with load.lock:
                    load.relogins.append((time.time(), number, replica.name))
                options = login(replica)
                table = fl.run_query(client_for(replica), options, sql)
        except Exception as error:
            ended = time.time()
            with load.lock:
                load.attempts.append((number, replica.name, started, ended, "failed", str(error)))
            if went_away(error):
                # A new channel next time: a broken one may sit in gRPC's reconnect backoff.
                broken = clients.pop(replica.name, None)
                if broken is not None:
                    broken.close()
            raise
        with load.lock:
            load.attempts.append((number, replica.name, started, time.time(), "ok", None))
        return table

    while time.time() < deadline:
        kind, sql = fl.pick_query(rng)
        replica = router.pick(turn)
        turn += 1
        if replica is None:
            with load.lock:
                load.errors.append((time.time(), number, kind, None, "no replica ready for 10 s"))
            continue
        started = time.perf_counter()
        served_by, retried = replica, False
        try:
            table = attempt(replica, sql)
        except Exception as error:
            failed_at = time.time()
            if not (went_away(error) and load.restarting(replica.name, failed_at)):
                with load.lock:
                    load.errors.append((failed_at, number, kind, replica.name, repr(error)))
                continue
            other = router.pick(turn, exclude=replica.name)
            with load.lock:
                load.retries.append((failed_at, number, kind, replica.name,
                                     other.name if other else None, str(error)))
            if other is None:
                with load.lock:
                    load.errors.append((time.time(), number, kind, replica.name,
                                        "no other replica ready to retry on"))
                continue
            served_by, retried = other, True
            try:
                table = attempt(other, sql)
            except Exception as error2:
                with load.lock:
                    load.errors.append((time.time(), number, kind, other.name,
                                        f"retry failed: {error2!r}"))
                continue
        seconds = time.perf_counter() - started
        if table.num_rows != expected_rows[kind]:
            with load.lock:
                load.errors.append((time.time(), number, kind, served_by.name,
                                    f"{table.num_rows} rows, not {expected_rows[kind]}"))
            continue
        with load.lock:
            load.queries.append((kind, time.time(), seconds, table.num_rows, table.nbytes,
                                 served_by.name, retried))
    for client in clients.values():
        client.close()


def restart(replica, load, down):
    """SIGTERM to the replica, its /readyz and ports watched every 10 ms until it exits; `down`
    seconds later the same command again, until /readyz answers 200. Returns the timeline, in
    seconds after the SIGTERM."""
    replica.sample_rss()
    pid = replica.process.pid
    sigterm = time.time()
    load.restart_window[replica.name] = [sigterm, None]
    replica.process.send_signal(signal.SIGTERM)
    marks = {}
    while replica.process.poll() is None:
        now = time.time()
        if "readyz_not_200" not in marks:
            status, body = readyz(replica.http_port, timeout=0.5)
            if status != 200:
                marks["readyz_not_200"] = round(time.time() - sigterm, 3)
                marks["readyz_answer"] = f"{status} {body}"
        if "http_port_closed" not in marks and not port_open(replica.http_port):
            marks["http_port_closed"] = round(time.time() - sigterm, 3)
        if "flight_port_closed" not in marks and not port_open(replica.port):
            marks["flight_port_closed"] = round(time.time() - sigterm, 3)
        replica.sample_rss()
        time.sleep(max(0.0, 0.01 - (time.time() - now)))
    marks["exited"] = round(time.time() - sigterm, 3)
    marks["exit_code"] = replica.process.returncode
    replica.runs[-1]["exit_code"] = replica.process.returncode
    time.sleep(down)
    started = time.time()
    replica.start()
    if not fl.wait_for_port(replica.port, timeout=60):
        raise SystemExit(f"replica {replica.name} did not listen again:\n"
                         + open(replica.runs[-1]["log"]).read())
    marks["restarted"] = round(started - sigterm, 3)
    marks["flight_port_open"] = round(time.time() - sigterm, 3)
    ready = replica.wait_ready()
    marks["readyz_200"] = round(ready - sigterm, 3)
    load.restart_window[replica.name][1] = ready
    marks["old_pid"], marks["new_pid"] = pid, replica.process.pid
    return sigterm, ready, marks


def in_flight_at(load, name, when):
    """What became of the calls running on replica `name` at `when`."""
    calls = [a for a in load.attempts if a[1] == name and a[2] < when < a[3]]
    ok = sorted(round(a[3] - when, 2) for a in calls if a[4] == "ok")
    failed = sorted((round(a[3] - when, 2), a[5][:160]) for a in calls if a[4] == "failed")
    return {
        "running": len(calls),
        "finished": len(ok),
        "finished_after_s": ok,
        "failed": len(failed),
        "failed_after_s": failed,
    }


def outcomes(log_path):
    """`query ended` outcomes counted in a server log."""
    counts = {}
    with open(log_path, errors="replace") as f:
        for line in f:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the log's colours
            found = re.search(r'query ended .*outcome=(?:"([^"]*)"|(\S+))', line)
            if found:
                outcome = found.group(1) or found.group(2)
                counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def phase_report(load, start, end):
    """Queries counted by the time they ended, in [start, end)."""
    queries = [q for q in load.queries if start <= q[1] < end]
    seconds = end - start
    return {
        "seconds": round(seconds, 1),
        "queries": len(queries),
        "queries_per_s": round(len(queries) / seconds, 1) if seconds > 0 else None,
        "served_by": {n: sum(1 for q in queries if q[5] == n) for n in ["a", "b"]},
        "retries": sum(1 for r in load.retries if start <= r[0] < end),
        "errors": sum(1 for e in load.errors if start <= e[0] < end),
        "latency_ms": fl.latency_summary((q[0], q[2]) for q in queries),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    fl.add_arguments(parser)
    parser.set_defaults(clients=16)
    parser.add_argument("--restart-at", type=float, default=None,
                        help="seconds into the load to restart replica A (default: 40%% of it)")
    parser.add_argument("--down", type=float, default=0,
                        help="seconds A stays stopped before it is started again (default 0)")
    parser.add_argument("--shutdown-grace", default="5s")
    parser.add_argument("--concurrent-logins", type=int, default=1,
                        help="clients logging in at once before the load (default 1: the server "
                        "refuses more than 5 password checks of one user name at once)")
    args = parser.parse_args()
    restart_at = args.duration * 0.4 if args.restart_at is None else args.restart_at

    binary, root, warehouse, auth = fl.prepare(args, "pitlake-replica-load-")
    secret_file = os.path.join(root, "signing.keys")
    with open(os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    replicas = []
    for name in ["a", "b"]:
        port, http_port = fl.free_port(), fl.free_port()
        command = fl.serve_command(
            binary, warehouse, auth, port, args,
            "--http-listen", f"127.0.0.1:{http_port}", "--signing-key-file", secret_file,
            "--shutdown-grace", args.shutdown_grace,
        )
        replicas.append(Replica(name, command, port, http_port, root))
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_ready()
    a = replicas[0]

    router = Router(replicas)
    router.start()
    load = Load()
    loadavg_before = open("/proc/loadavg").read().split()[:3]
    # A result cut short must not pass for an answer: every query's row count is known.
    expected_rows = {
        "training": args.label_rows,
        "lookup": min(10, args.feature_rows // 10000),
        "rollup": min(7, args.feature_rows),
    }
    # Each client logs in once, before the clock starts, alternately on A and B.
    tokens = [None] * args.clients

    def log_in(i):
        replica = replicas[i % len(replicas)]
        try:
            tokens[i] = login(replica)
        except Exception as error:  # a refused handshake raises ArrowInvalid
            with load.lock:
                load.errors.append((time.time(), i, "login", replica.name, repr(error)))

    logins_started = time.time()
    with ThreadPoolExecutor(args.concurrent_logins) as pool:
        list(pool.map(log_in, range(args.clients)))
    logins = {
        "seconds": round(time.time() - logins_started, 2),
        "at_once": args.concurrent_logins,
        "refused": sum(1 for e in load.errors if e[2] == "login"),
    }
    load_started = time.time()
    deadline = load_started + args.duration
    threads = [
        threading.Thread(
            target=client_loop,
            args=(i, router, load, deadline, i, expected_rows, tokens[i]),
        )
        for i in range(args.clients)
    ]
    for t in threads:
        t.start()
    time.sleep(max(0.0, load_started + restart_at - time.time()))
    sigterm, ready_again, timeline = restart(a, load, args.down)
    for t in threads:
        t.join()
    load_ended = time.time()
    loadavg_after = open("/proc/loadavg").read().split()[:3]
    router.stopping = True
    router.join()
    for replica in replicas:
        replica.stop()

    # The router's view of A around the restart, in seconds after the SIGTERM.
    router_view = [
        {"at_s": round(t - sigterm, 3), "replica": n, "status": s, "answer": body}
        for t, n, s, body in router.changes
        if t >= load_started
    ]
    elapsed = load_ended - load_started
    runs = [(f"{r.name}{i + 1}", run) for r in replicas for i, run in enumerate(r.runs)]
    summary = {
        "binary": binary,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "shutdown_grace": args.shutdown_grace,
        "down_s": args.down,
        "restart_at_s": round(sigterm - load_started, 1),
        "sigterm_utc": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sigterm))
        + f".{int(sigterm % 1 * 1000):03d}Z",
        "restart": timeline,
        "router_view": router_view,
        "calls_running_on_a_at_sigterm": in_flight_at(load, "a", sigterm),
        "overall": phase_report(load, load_started, load_ended),
        "phases": {
            "before": phase_report(load, load_started, sigterm),
            "during_restart": phase_report(load, sigterm, ready_again),
            "after": phase_report(load, ready_again, load_ended),
        },
        "retries": len(load.retries),
        "relogins": len(load.relogins),
        "errors": len(load.errors),
        "logins": logins,
        "rows_per_s": round(sum(q[3] for q in load.queries) / elapsed),
        # Per process: a1 is A before its restart, a2 after.
        "peak_rss_mib": {name: round(run["peak_kib"] / 1024) for name, run in runs},
        "server_exit_codes": {name: run["exit_code"] for name, run in runs},
        "server_log_outcomes": {name: outcomes(run["log"]) for name, run in runs},
        "loadavg": {
            "before": loadavg_before,
            "after": loadavg_after,
            "max_1m_during": max(router.loadavg, default=None),
            "cpus": os.cpu_count(),
        },
    }
    print(json.dumps(summary, indent=2))
    print(f"{'phase':<15} {'s':>5} {'queries':>7} {'q/s':>6} {'p50/p99 all ms':>15} "
          + " ".join(f"{kind + ' p50/p99':>19}" for kind, _, _ in fl.QUERIES)
          + f" {'retries':>7} {'errors':>6}")
    for name, phase in [("overall", summary["overall"]), *summary["phases"].items()]:
        lat = phase["latency_ms"]
        print(f"{name:<15} {phase['seconds']:>5} {phase['queries']:>7} {phase['queries_per_s']:>6} "
              f"{lat['all']['p50']:>7}/{lat['all']['p99']:<7} "
              + " ".join(f"{lat[k]['p50']:>9}/{lat[k]['p99']:<9}" for k, _, _ in fl.QUERIES)
              + f" {phase['retries']:>7} {phase['errors']:>6}")
    retry_messages = {}
    for r in load.retries:
        key = re.sub(r"\d+", "N", r[5].split(". gRPC client debug context")[0])[:300]
        retry_messages.setdefault(key, []).append(r[0] - sigterm)
    for message, times in sorted(retry_messages.items(), key=lambda kv: -len(kv[1])):
        print(f"retried ({len(times)}x, {min(times):.3f}-{max(times):.3f} s after the SIGTERM): "
              f"{message}")
    for when, client, kind, replica, message in load.errors:
        print(f"error at {when - load_started:+.2f}s (client {client}, {kind}, "
              f"replica {replica}): {message}")
    if args.keep or load.errors:
        print("warehouse and server logs kept in", root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    bad_exit = [r for r in replicas for run in r.runs if run["exit_code"] != 0]
    sys.exit(1 if load.errors or bad_exit else 0)


if __name__ == "__main__":
    main()
