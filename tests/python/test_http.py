"""`pitlake serve --http-listen`: /healthz, /readyz and /metrics, read by real HTTP clients and
parsed by the Prometheus client library's own text parser; the counters must move as queries
run, fail and are refused, and /readyz must turn 503 as soon as shutdown begins.

Run through scripts/test.sh, or: PITLAKE_BIN=target/debug/pitlake pytest tests/python
"""

import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager

from test_flight import SETUP, free_port, hash_password, run_pitlake, start_server


def get(url):
    """(status, body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(base):
    """Every sample of /metrics as {(name, labels): value}, parsed by prometheus_client."""
    status, text = get(base + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics, name, **labels):
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def served(tmp_path):
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", SETUP)
    auth = tmp_path / "auth.toml"
    auth.write_text(
        f"""
[users.alice]
password_hash = "{hash_password(warehouse, 'alice-pw')}"
roles = ["labeler"]
[roles.labeler]
grants = ["table:labels", "table:big"]
"""
    )
    http_port = free_port()
    process, log, uri, log_path = start_server(
        tmp_path, warehouse, auth, "--http-listen", str(http_port)
    )
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.time() + 30
    while get_or_none(base + "/healthz") is None and time.time() < deadline:
        time.sleep(0.1)
    yield {"uri": uri, "base": base, "process": process, "log": log_path}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    log.close()


def get_or_none(url):
    try:
        return get(url)
    except OSError:
        return None


def connect(uri, password="alice-pw"):
    return flightsql.connect(uri, db_kwargs={"username": "alice", "password": password})


def test_health_and_readiness(served):
    assert get(served["base"] + "/healthz") == (200, "ok\n")
    assert get(served["base"] + "/readyz") == (200, "ready\n")
    assert get(served["base"] + "/nothing")[0] == 404


def test_metrics_move_with_queries_failures_and_refusals(served):
    base = served["base"]
    before = samples(base)
    assert value(before, "pitlake_build_info", version="0.1.0") == 1
    assert value(before, "pitlake_ready") == 1
    assert value(before, "pitlake_memory_pool_limit_bytes") > 0
    with connect(served["uri"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM big ORDER BY id")
        assert cur.fetch_arrow_table().num_rows == 50000
        with pytest.raises(adbc_driver_manager.Error):
            cur.execute("SELECT nonsense FROM labels")
            cur.fetchall()
        with pytest.raises(adbc_driver_manager.Error):
            cur.execute("SELECT * FROM secret")
            cur.fetchall()
    with pytest.raises(adbc_driver_manager.Error):
        with connect(served["uri"], password="wrong") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    after = samples(base)
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)
    assert grew("pitlake_queries_started_total") >= 3
    assert grew("pitlake_queries_ended_total", outcome="finished") >= 1
    assert grew("pitlake_queries_ended_total", outcome="failed") >= 1
    assert grew("pitlake_rows_sent_total") >= 50000
    assert grew("pitlake_bytes_sent_total") >= 50000 * 8
    assert grew("pitlake_query_duration_seconds_count") >= 3
    assert grew("pitlake_handshakes_total") >= 1
    assert grew("pitlake_refused_calls_total", reason="permission_denied") >= 1
    assert grew("pitlake_refused_calls_total", reason="login") >= 1
    assert value(after, "pitlake_queries_running") == 0


def test_readiness_turns_503_when_shutdown_begins(served):
    base = served["base"]
    # A query that runs for a long time keeps the server in its grace period.
    errors = []

    def long_query():
        try:
            with connect(served["uri"]) as conn, conn.cursor() as cur:
                cur.execute("SELECT sum(a.id * b.k) FROM big a CROSS JOIN big b")
                cur.fetchall()
        except Exception as error:  # the shutdown cancels it; that is expected
            errors.append(error)

    worker = threading.Thread(target=long_query)
    worker.start()
    deadline = time.time() + 30
    while value(samples(base), "pitlake_queries_running") < 1 and time.time() < deadline:
        time.sleep(0.1)
    served["process"].send_signal(signal.SIGTERM)
    deadline = time.time() + 10
    status = None
    while time.time() < deadline:
        status, body = get(base + "/readyz")
        if status == 503:
            break
        time.sleep(0.05)
    assert status == 503 and body == "shutting down\n"
    assert served["process"].wait(timeout=60) == 0
    worker.join(timeout=60)
