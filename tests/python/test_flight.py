"""Real Python clients against a real `pitlake serve`.

The test starts the binary named by $PITLAKE_BIN on a free loopback port with a warehouse and an
auth file made here, then talks to it with ADBC's Flight SQL driver (DBAPI) and with
pyarrow.flight, and stops it with SIGTERM at the end (it must exit 0).

Run through scripts/test.sh, or: PITLAKE_BIN=target/debug/pitlake pytest tests/python
"""

import base64
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager

TRAINING_SET = (
    "SELECT l.driver_id, l.ts, l.label, s.conv_rate "
    "FROM labels l ASOF LEFT JOIN driver_stats s "
    "ON l.driver_id = s.driver_id AND l.ts >= s.event_ts "
    "ORDER BY l.driver_id, l.ts"
)

SETUP = """
CREATE TABLE driver_stats AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-01 00:00:00', 0.5),
  (1, TIMESTAMP '2026-01-01 02:00:00', 0.6),
  (2, TIMESTAMP '2026-01-01 01:00:00', 0.9)) AS v(driver_id, event_ts, conv_rate);
CREATE TABLE labels AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-01 01:30:00', true),
  (1, TIMESTAMP '2026-01-01 03:00:00', false),
  (2, TIMESTAMP '2026-01-01 00:30:00', true)) AS v(driver_id, ts, label);
INSERT INTO labels VALUES (3, TIMESTAMP '2026-01-02 00:00:00', false);
CREATE TABLE secret AS SELECT 42 AS salary;
CREATE TABLE big AS SELECT value AS id, value % 97 AS k FROM generate_series(1, 50000);
"""


def pitlake_bin():
    path = os.environ.get("PITLAKE_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("set PITLAKE_BIN to the pitlake binary (scripts/test.sh does)")
    return path


def run_pitlake(warehouse, *args, stdin=None):
    done = subprocess.run(
        [pitlake_bin(), "--warehouse", str(warehouse), *args],
        input=stdin,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hash_password(warehouse, password):
    out = run_pitlake(warehouse, "serve", "--hash-password", stdin=password.encode() + b"\n")
    return out.stdout.decode().strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("flight")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", SETUP)
    auth = root / "auth.toml"
    auth.write_text(
        f"""
[users.alice]
password_hash = "{hash_password(warehouse, 'alice-pw')}"
roles = ["analyst"]
[users.bob]
password_hash = "{hash_password(warehouse, 'bob-pw')}"
roles = ["labeler"]
[roles.analyst]
grants = ["table:*"]
[roles.labeler]
grants = ["table:labels", "table:driver_stats"]
"""
    )
    process, log, uri, _ = start_server(root, warehouse, auth)
    yield {"uri": uri, "warehouse": warehouse, "log": root / "server.log"}
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    log.close()
    assert code == 0, (root / "server.log").read_text()
    # Colour codes (the log writer adds them) stripped.
    text = re.sub(r"\x1b\[[0-9;]*m", "", (root / "server.log").read_text())
    # Structured logs: who ran what, how much came back; never a password or a token.
    assert "query started" in text and "query ended" in text
    assert "user=alice" in text and "rows=" in text
    assert "alice-pw" not in text and "pl1." not in text and "plt1." not in text


def cli_result(warehouse, sql, tmp_path):
    out = tmp_path / "expected.parquet"
    run_pitlake(warehouse, "sql", sql, "--format", "parquet", "-o", str(out))
    return pq.read_table(out)


def connect(server, user, password):
    return flightsql.connect(
        server["uri"], db_kwargs={"username": user, "password": password}
    )


def test_adbc_training_set_matches_the_cli(server, tmp_path):
    with connect(server, "alice", "alice-pw") as conn, conn.cursor() as cur:
        cur.execute(TRAINING_SET)
        got = cur.fetch_arrow_table()
    expected = cli_result(server["warehouse"], TRAINING_SET, tmp_path)
    assert got.num_rows == 4
    assert got.column_names == expected.column_names
    assert got.to_pylist() == expected.to_pylist()


def test_adbc_parameters_and_large_results(server):
    with connect(server, "alice", "alice-pw") as conn, conn.cursor() as cur:
        cur.execute("SELECT driver_id, label FROM labels WHERE driver_id = ? ORDER BY ts", parameters=(1,))
        assert cur.fetch_arrow_table().column("label").to_pylist() == [True, False]
        cur.execute("SELECT id FROM big ORDER BY id")
        ids = cur.fetch_arrow_table().column("id")
        assert len(ids) == 50000 and ids.to_pylist() == list(range(1, 50001))
        cur.execute("SELECT count(*) AS n FROM labels VERSION AS OF 0")
        assert cur.fetchone() == (3,)


def test_announced_schema_is_the_streamed_schema(server):
    # GetFlightInfo announces a schema and DoGet must stream exactly it: ADBC refuses a stream
    # whose schema differs ("endpoint 0 returned inconsistent schema"). Each of these once did.
    queries = {
        "SELECT repeat('ab', 2) AS s": ("ab" * 2,),
        "SELECT make_array('a') AS l": (["a"],),
        "SELECT arrow_cast(make_array(1, 2), 'LargeList(Int64)') AS l": ([1, 2],),
        "SELECT arrow_cast('x', 'Dictionary(Int32, Utf8)') AS d": ("x",),
    }
    with connect(server, "alice", "alice-pw") as conn, conn.cursor() as cur:
        for sql, row in queries.items():
            cur.execute(sql)
            table = cur.fetch_arrow_table()
            assert table.to_pylist() == [dict(zip(table.column_names, row))], sql
        cur.execute("SELECT ? AS p, ? AS q", parameters=(41, "x"))
        table = cur.fetch_arrow_table()
        assert table.to_pylist() == [{"p": 41, "q": "x"}]
        assert table.schema.field("p").type == pa.int64()


def test_adbc_metadata(server):
    with connect(server, "bob", "bob-pw") as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = sorted(
            t["table_name"]
            for catalog in objects
            for schema in catalog["catalog_db_schemas"]
            for t in schema["db_schema_tables"]
        )
        assert tables == ["driver_stats", "labels"]
        assert conn.adbc_get_table_schema("labels").names == ["driver_id", "ts", "label"]


def test_adbc_refusals(server):
    with pytest.raises(adbc_driver_manager.Error) as err:
        with connect(server, "alice", "wrong") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "UNAUTHENTICATED" in str(err.value).upper()
    with connect(server, "bob", "bob-pw") as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as err:
            cur.execute("SELECT * FROM secret")
        assert "secret" in str(err.value)
        with pytest.raises(adbc_driver_manager.Error) as err:
            cur.execute("CREATE TABLE stolen AS SELECT * FROM labels")
        assert "stolen" in str(err.value) and "PermissionDenied" in str(err.value)


def proto_field(number, payload):
    """One length-delimited protobuf field, encoded by hand."""
    length, out = len(payload), bytearray([number << 3 | 2])
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + payload


def proto_fields(data):
    """The length-delimited fields of a protobuf message: {number: payload} (others skipped)."""
    fields, at = {}, 0
    while at < len(data):
        key, at = data[at], at + 1
        if key & 7 != 2:
            raise ValueError("only length-delimited fields are expected here")
        length, shift = 0, 0
        while True:
            byte, at = data[at], at + 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields[key >> 3], at = data[at:at + length], at + length
    return fields


def flight_sql_any(message, payload):
    """A Flight SQL message wrapped in google.protobuf.Any."""
    type_url = f"type.googleapis.com/arrow.flight.protocol.sql.{message}".encode()
    return proto_field(1, type_url) + proto_field(2, payload)


def flight_sql_command(query):
    """A CommandStatementQuery wrapped in google.protobuf.Any, encoded by hand."""
    return flight_sql_any("CommandStatementQuery", proto_field(1, query.encode()))


def test_pyarrow_flight(server, tmp_path):
    client = flight.FlightClient(server["uri"])
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token(b"alice", b"nope")
    descriptor = flight.FlightDescriptor.for_command(flight_sql_command(TRAINING_SET))
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(descriptor)

    header = client.authenticate_basic_token(b"alice", b"alice-pw")
    options = flight.FlightCallOptions(headers=[header])
    info = client.get_flight_info(descriptor, options)
    got = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert info.schema.names == got.schema.names
    expected = cli_result(server["warehouse"], TRAINING_SET, tmp_path)
    assert got.to_pylist() == expected.to_pylist()

    # bob may not redeem alice's ticket, nor read `secret` himself.
    bob = flight.FlightCallOptions(headers=[client.authenticate_basic_token(b"bob", b"bob-pw")])
    with pytest.raises(flight.FlightUnauthorizedError):
        client.do_get(info.endpoints[0].ticket, bob).read_all()
    secret = flight.FlightDescriptor.for_command(flight_sql_command("SELECT * FROM secret"))
    with pytest.raises(flight.FlightUnauthorizedError, match="secret"):
        client.get_flight_info(secret, bob)
    client.close()


def start_server(root, warehouse, auth, *extra, env=None):
    """Starts `pitlake serve` on a free loopback port; returns (process, log, uri, log path)."""
    port = free_port()
    log_path = root / "server.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [
            pitlake_bin(),
            "--warehouse",
            str(warehouse),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--auth-file",
            str(auth),
            "--insecure-plaintext",
            "--shutdown-grace",
            "2s",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PITLAKE_LOG": "pitlake=info", **(env or {})},
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                log.close()
                pytest.fail("pitlake serve did not start:\n" + log_path.read_text())
            time.sleep(0.1)
    return process, log, f"grpc://127.0.0.1:{port}", log_path


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with a small failed-login limit, a static token made by `--new-token`, and the
    auth file re-read only on SIGHUP."""
    root = tmp_path_factory.mktemp("guarded")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", "CREATE TABLE t AS SELECT 1 AS x")
    made = run_pitlake(warehouse, "serve", "--new-token").stdout.decode()
    token = re.search(r"token:\s+(\S+)", made).group(1)
    sha256 = re.search(r'sha256 = "([0-9a-f]{64})"', made).group(1)
    alice = hash_password(warehouse, "alice-pw")
    auth = root / "auth.toml"

    def write_auth(with_token):
        tokens = f'tokens = [{{ sha256 = "{sha256}" }}]' if with_token else 'tokens = []'
        auth.write_text(
            f"""
[users.alice]
password_hash = "{alice}"
roles = ["analyst"]
[users.svc]
password_hash = "{alice}"
{tokens}
roles = ["analyst"]
[roles.analyst]
grants = ["table:*"]
"""
        )

    write_auth(True)
    process, log, uri, log_path = start_server(
        root,
        warehouse,
        auth,
        "--max-failed-logins-per-user",
        "3",
        "--login-lockout",
        "3s",
        "--auth-reload-interval",
        "off",
    )
    yield {
        "uri": uri,
        "token": token,
        "process": process,
        "write_auth": write_auth,
        "log": log_path,
    }
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    log.close()
    text = log_path.read_text()
    assert code == 0, text
    # Secrets never reach the log.
    assert "alice-pw" not in text and token not in text and "argon2id$" not in text


def eventually(what, check, timeout=30):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.2)


def test_failed_logins_lock_a_user_out_then_recover(guarded):
    client = flight.FlightClient(guarded["uri"])
    for _ in range(3):
        with pytest.raises(flight.FlightUnauthenticatedError):
            client.authenticate_basic_token(b"alice", b"wrong")
    # Locked out: the right password is refused too, with a reason (pyarrow raises
    # RESOURCE_EXHAUSTED as ArrowInvalid).
    with pytest.raises((flight.FlightError, pa.ArrowException)) as err:
        client.authenticate_basic_token(b"alice", b"alice-pw")
    assert "too many failed logins" in str(err.value)
    assert "try again in" in str(err.value)

    def logs_in():
        try:
            client.authenticate_basic_token(b"alice", b"alice-pw")
            return True
        except (flight.FlightError, pa.ArrowException) as e:
            assert "too many failed logins" in str(e), str(e)
            return False

    eventually("the lockout ends", logs_in)
    client.close()


def test_a_burst_of_right_passwords_is_not_taken_for_failed_logins(guarded):
    """Sixteen clients of one service user logging in at the same moment (a job's workers
    starting): checks in flight count against the limit of 3 failures, so the others wait for
    them instead of being refused as if they had failed."""
    results = []

    def log_in():
        client = flight.FlightClient(guarded["uri"])
        try:
            client.authenticate_basic_token(b"alice", b"alice-pw")
            results.append("ok")
        except (flight.FlightError, pa.ArrowException) as e:
            results.append(str(e))
        finally:
            client.close()

    threads = [threading.Thread(target=log_in) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == ["ok"] * 16, results


def test_a_static_token_is_revoked_on_sighup(guarded):
    client = flight.FlightClient(guarded["uri"])
    bearer = flight.FlightCallOptions(
        headers=[(b"authorization", b"Bearer " + guarded["token"].encode())]
    )
    descriptor = flight.FlightDescriptor.for_command(flight_sql_command("SELECT x FROM t"))
    info = client.get_flight_info(descriptor, bearer)
    assert client.do_get(info.endpoints[0].ticket, bearer).read_all().num_rows == 1
    # A short token is refused with the reason.
    short = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer short")])
    with pytest.raises(flight.FlightUnauthenticatedError, match="at least 32"):
        client.get_flight_info(descriptor, short)

    guarded["write_auth"](False)
    guarded["process"].send_signal(signal.SIGHUP)

    def refused():
        try:
            client.get_flight_info(descriptor, bearer)
            return False
        except flight.FlightUnauthenticatedError:
            return True

    eventually("the removed token is refused", refused)
    # The server lives on; passwords still work.
    header = client.authenticate_basic_token(b"svc", b"alice-pw")
    options = flight.FlightCallOptions(headers=[header])
    info = client.get_flight_info(descriptor, options)
    assert client.do_get(info.endpoints[0].ticket, options).read_all().num_rows == 1
    client.close()
    assert "without `expires`" in guarded["log"].read_text()


def test_replicas_with_one_signing_secret_accept_each_others_tokens_and_tickets(tmp_path):
    """Three `pitlake serve` processes over one warehouse: A and B share a signing secret, C
    draws its own; D has a new secret and still accepts A's (rotation)."""
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", "CREATE TABLE t AS SELECT 7 AS x")
    alice = hash_password(warehouse, "alice-pw")
    auth = tmp_path / "auth.toml"
    auth.write_text(
        f'[users.alice]\npassword_hash = "{alice}"\nroles = ["analyst"]\n'
        '[roles.analyst]\ngrants = ["table:*"]\n'
    )
    secret = base64.b64encode(os.urandom(32)).decode()
    rotated = base64.b64encode(os.urandom(32)).decode()
    servers = {}
    for name, env in [
        ("a", {"PITLAKE_SIGNING_KEY": secret}),
        ("b", {"PITLAKE_SIGNING_KEY": secret}),
        ("c", {}),
        ("d", {"PITLAKE_SIGNING_KEY": rotated, "PITLAKE_SIGNING_KEY_PREVIOUS": secret}),
    ]:
        root = tmp_path / name
        root.mkdir()
        servers[name] = start_server(root, warehouse, auth, env=env)
    try:
        clients = {name: flight.FlightClient(s[2]) for name, s in servers.items()}
        header = clients["a"].authenticate_basic_token(b"alice", b"alice-pw")
        options = flight.FlightCallOptions(headers=[header])
        descriptor = flight.FlightDescriptor.for_command(flight_sql_command("SELECT x FROM t"))
        # A's token and A's ticket work on B (and on D, which still accepts A's secret).
        info = clients["a"].get_flight_info(descriptor, options)
        for name in ["b", "d"]:
            got = clients[name].do_get(info.endpoints[0].ticket, options).read_all()
            assert got.to_pylist() == [{"x": 7}], name
            again = clients[name].get_flight_info(descriptor, options)
            assert again.schema.names == ["x"], name
        # C signs with a secret of its own: A's token and ticket are refused there.
        with pytest.raises(flight.FlightUnauthenticatedError):
            clients["c"].get_flight_info(descriptor, options)
        c_header = clients["c"].authenticate_basic_token(b"alice", b"alice-pw")
        c_options = flight.FlightCallOptions(headers=[c_header])
        with pytest.raises(flight.FlightError, match="(?i)ticket"):
            clients["c"].do_get(info.endpoints[0].ticket, c_options).read_all()
        # A prepared statement lives on the replica that prepared it: elsewhere, NOT_FOUND.
        action = flight.Action(
            "CreatePreparedStatement",
            flight_sql_any("ActionCreatePreparedStatementRequest", proto_field(1, b"SELECT x FROM t")),
        )
        result = next(iter(clients["a"].do_action(action, options))).body.to_pybytes()
        handle = proto_fields(proto_fields(result)[2])[1]
        prepared = flight.FlightDescriptor.for_command(
            flight_sql_any("CommandPreparedStatementQuery", proto_field(1, handle))
        )
        assert clients["a"].get_flight_info(prepared, options).schema.names == ["x"]
        # (pyarrow raises NOT_FOUND as a KeyError.)
        with pytest.raises(pa.lib.ArrowKeyError, match="not found.*no open prepared statement"):
            clients["b"].get_flight_info(prepared, options)
        # D's new secret signs: its tokens are not A's to accept.
        d_header = clients["d"].authenticate_basic_token(b"alice", b"alice-pw")
        with pytest.raises(flight.FlightUnauthenticatedError):
            clients["a"].get_flight_info(descriptor, flight.FlightCallOptions(headers=[d_header]))
        for client in clients.values():
            client.close()
    finally:
        for process, log, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
            log.close()


def test_a_short_signing_secret_is_refused_at_start(tmp_path):
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    auth = tmp_path / "auth.toml"
    alice = hash_password(warehouse, "alice-pw")
    auth.write_text(f'[users.alice]\npassword_hash = "{alice}"\nroles = []\n')
    short = base64.b64encode(os.urandom(16)).decode()
    result = subprocess.run(
        [pitlake_bin(), "--warehouse", str(warehouse), "serve", "--listen", "127.0.0.1:0",
         "--auth-file", str(auth), "--insecure-plaintext"],
        env={**os.environ, "PITLAKE_SIGNING_KEY": short},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    message = result.stderr.decode()
    assert "at least 32 random bytes" in message, message
    assert short not in message, message
