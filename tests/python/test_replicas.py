"""Two `pitlake serve` replicas over one warehouse with one signing secret, as a load balancer
would see them: a registry change made through A is seen by B; both export the same training
set at once with identical content; and A stopped (SIGTERM) in the middle of a stream tells its
client (UNAVAILABLE, or the stream cut short) while the retry on B gives the same rows.

Run through scripts/test.sh, or: PITLAKE_BIN=target/debug/pitlake pytest tests/python
"""

import base64
import json
import os
import signal
import threading

import pyarrow.flight as flight
import pytest

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager

from test_flight import flight_sql_command, hash_password, run_pitlake, start_server

SETUP = """
CREATE TABLE trips AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-01 00:00:00', 10.0),
  (1, TIMESTAMP '2026-01-02 00:00:00', 20.0),
  (2, TIMESTAMP '2026-01-01 12:00:00', 5.0)) AS v(driver_id, trip_end, fare);
CREATE TABLE orders AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-03 00:00:00'),
  (2, TIMESTAMP '2026-01-03 00:00:00')) AS v(driver_id, order_ts);
CREATE TABLE big AS SELECT value AS id, value % 97 AS k FROM generate_series(1, 3000000);
"""


@pytest.fixture
def replicas(tmp_path):
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", SETUP)
    auth = tmp_path / "auth.toml"
    auth.write_text(
        f'[users.alice]\npassword_hash = "{hash_password(warehouse, "alice-pw")}"\n'
        'roles = ["owner"]\n[roles.owner]\ngrants = ["table:*", "view:*", "write:*", "registry:write", "files"]\n'
    )
    secret = base64.b64encode(os.urandom(32)).decode()
    servers = {}
    for name in ["a", "b"]:
        root = tmp_path / name
        root.mkdir()
        servers[name] = start_server(root, warehouse, auth, env={"PITLAKE_SIGNING_KEY": secret})
    yield {"servers": servers, "warehouse": warehouse, "tmp": tmp_path}
    for process, log, _, _ in servers.values():
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        log.close()


def connect(uri):
    return flightsql.connect(uri, db_kwargs={"username": "alice", "password": "alice-pw"})


def rows(uri, sql):
    with connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_a_registry_change_through_a_is_seen_by_b(replicas):
    a, b = replicas["servers"]["a"][2], replicas["servers"]["b"][2]
    rows(a, "CREATE ENTITY driver (driver_id BIGINT)")
    rows(a, "CREATE FEATURE VIEW trips ENTITY driver FROM trips EVENT TIME trip_end "
            "AGGREGATES (count(*) OVER INTERVAL '7 days' AS trips_7d)")
    names = [r[0] for r in rows(b, "SHOW FEATURE VIEWS")]
    assert names == ["trips"]
    got = rows(b, "TRAINING SET LABELS orders AT order_ts FEATURES (trips.trips_7d)")
    assert [r[-1] for r in got] == [2, 1]


def test_both_replicas_export_at_once_with_identical_content(replicas):
    a, b = replicas["servers"]["a"][2], replicas["servers"]["b"][2]
    rows(a, "CREATE ENTITY driver (driver_id BIGINT)")
    rows(a, "CREATE FEATURE VIEW trips ENTITY driver FROM trips EVENT TIME trip_end FEATURES (fare)")
    outputs = {name: replicas["tmp"] / f"export_{name}.parquet" for name in ["a", "b"]}
    errors = []

    def export(name, uri):
        try:
            rows(uri, "EXPORT TRAINING SET LABELS orders AT order_ts FEATURES (trips.fare) "
                      f"TO '{outputs[name]}'")
        except Exception as error:
            errors.append((name, error))

    threads = [threading.Thread(target=export, args=(n, u)) for n, u in [("a", a), ("b", b)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    manifests = [json.loads(open(f"{p}.manifest.json").read()) for p in outputs.values()]
    assert manifests[0]["output"]["content_hash"] == manifests[1]["output"]["content_hash"]
    assert manifests[0]["output"]["rows"] == 2
    assert manifests[0]["query"] == manifests[1]["query"]


def test_a_replica_stopped_mid_stream_tells_its_client_and_b_gives_the_same_rows(replicas):
    (process_a, _, a, _), (_, _, b, _) = replicas["servers"]["a"], replicas["servers"]["b"]
    query = "SELECT id, k FROM big ORDER BY id"
    client = flight.FlightClient(a)
    options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(b"alice", b"alice-pw")])
    info = client.get_flight_info(flight.FlightDescriptor.for_command(flight_sql_command(query)), options)
    reader = client.do_get(info.endpoints[0].ticket, options)
    first = reader.read_chunk().data
    assert first.num_rows > 0
    process_a.send_signal(signal.SIGTERM)
    # The grace period (2 s in these tests) passes while the client does not read on; then the
    # query is cancelled and the client is told.
    process_a.wait(timeout=60)
    received = first.num_rows
    with pytest.raises(flight.FlightError) as failure:
        while True:
            received += reader.read_chunk().data.num_rows
    assert received < 3_000_000
    assert "UNAVAILABLE" in str(failure.value).upper() or "shutting down" in str(failure.value) \
        or isinstance(failure.value, (flight.FlightUnavailableError, flight.FlightInternalError))
    client.close()
    # The retry on B: the same rows, all of them.
    with connect(b) as conn, conn.cursor() as cur:
        cur.execute(query)
        table = cur.fetch_arrow_table()
    assert table.num_rows == 3_000_000
    assert table.column("id")[0].as_py() == 1 and table.column("id")[-1].as_py() == 3_000_000
