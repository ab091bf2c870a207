"""The REST API of `pitlake serve --http-listen` (/v1, described by docs/openapi.json), through
real HTTP clients (`requests`, raw sockets) against real server processes on loopback.

What it proves:

- retrieval: a training set (timestamps with a time zone, decimals, a `last(x, 3)` list, text
  that needs quoting, NULLs) and a plain query give, through POST /v1/query, exactly the rows
  Flight SQL (ADBC) gives, in each of the four formats (Arrow IPC stream, Parquet, JSON lines,
  CSV); an empty result still carries its columns; a 5,000,000-row result streams (its first
  bytes arrive while the query still runs) and arrives whole;
- errors: each refusal has the documented status and a JSON body that says what was wrong (and
  not where in the server it was found); an error after the first rows cuts the answer short in
  every format; a type a format cannot write is refused before the answer starts; a query past
  --query-timeout is a 504;
- auth, as on Flight: 401s, one signing key for both transports, 403 with nothing changed, and
  tables not granted and hidden registry objects answered exactly like missing ones;
- management: create, list (now and at an older registry version), describe, history, diff,
  drop through the registry endpoints; names in paths are names, never SQL;
- exports: the manifest answered is the one written, and its content hash is `pitlake export`'s;
- /metrics counts REST queries, failures and refusals;
- connections: a streaming answer survives a flood of idle connections; a slow request body is
  cut off without hurting others;
- TLS: the HTTP port speaks TLS when Flight does, and refuses plain HTTP then.

Run through scripts/test.sh, or from the repository root:
    PITLAKE_BIN=target/debug/pitlake ~/.cache/pitlake-py-venv/bin/pytest -q tests/python/test_rest.py
"""

import base64
import csv
import datetime
import io
import json
import re
import signal
import socket
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
import requests

import adbc_driver_flightsql.dbapi as flightsql

from test_flight import (
    flight_sql_command,
    free_port,
    hash_password,
    pitlake_bin,
    run_pitlake,
    start_server,
)
from test_http import samples, value

# Makes a private CA and a server certificate signed by it (shared with the other Python tests).
TEST_CERTS = Path(__file__).resolve().parents[2] / "scripts" / "test-certs.sh"

ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
FORMATS = [ARROW, PARQUET, NDJSON, CSV]

SETUP = """
CREATE TABLE driver_stats AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-01 00:00:00', 0.5, CAST(10.25 AS DECIMAL(10,2))),
  (1, TIMESTAMP '2026-01-01 02:00:00', 0.6, CAST(11.50 AS DECIMAL(10,2))),
  (2, TIMESTAMP '2026-01-01 01:00:00', 0.9, CAST(-3.10 AS DECIMAL(10,2)))
) AS v(driver_id, event_ts, conv_rate, price);
CREATE TABLE labels AS SELECT driver_id, ts, label,
  arrow_cast(seen, 'Timestamp(Microsecond, Some("UTC"))') AS seen_at, note FROM (VALUES
  (1, TIMESTAMP '2026-01-01 01:30:00', true, TIMESTAMP '2026-01-01 01:30:00.5', 'plain'),
  (1, TIMESTAMP '2026-01-01 03:00:00', false, TIMESTAMP '2026-01-01 03:00:00', 'a, "quoted"
line'),
  (2, TIMESTAMP '2026-01-01 00:30:00', true, NULL, 'ünïcödé'),
  (3, TIMESTAMP '2026-01-02 00:00:00', NULL, TIMESTAMP '2026-01-02 00:00:00.123456', NULL)
) AS v(driver_id, ts, label, seen, note);
CREATE TABLE trips AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2025-12-31 20:00:00', 'm1'),
  (1, TIMESTAMP '2025-12-31 22:00:00', 'm2'),
  (1, TIMESTAMP '2026-01-01 01:00:00', 'm3'),
  (1, TIMESTAMP '2026-01-01 02:30:00', 'm4'),
  (2, TIMESTAMP '2026-01-01 00:10:00', 'm5')
) AS v(driver_id, trip_end, merchant);
CREATE TABLE secret AS SELECT 4242 AS salary;
CREATE ENTITY driver (driver_id BIGINT);
CREATE FEATURE VIEW driver_stats ENTITY driver FROM driver_stats EVENT TIME event_ts
  FEATURES (conv_rate, price);
CREATE FEATURE VIEW trips ENTITY driver FROM trips EVENT TIME trip_end
  AGGREGATES (count(*) OVER INTERVAL '1 day' AS n_1d, last(merchant, 3) OVER INTERVAL '1 day' AS last3);
CREATE FEATURE SERVICE churn (driver_stats.conv_rate, trips.last3);
"""

# Every type the comparison has to get exactly right: a naive and a UTC timestamp, a decimal, a
# double, a boolean with NULLs, text with a comma, quotes, a newline and non-ASCII, and a list.
TRAINING_SET = "TRAINING SET LABELS labels AT ts FEATURES (driver_stats.*, trips.*)"
# The same without the list column, for CSV (which has no lists).
TRAINING_SET_FLAT = "TRAINING SET LABELS labels AT ts FEATURES (driver_stats.*, trips.n_1d)"
PLAIN_QUERY = """
SELECT driver_id, ts, arrow_cast(ts, 'Timestamp(Microsecond, Some("Europe/Berlin"))') AS ts_berlin,
       seen_at, CAST(driver_id * 1.5 AS DECIMAL(12, 3)) AS amount, label, note,
       CAST(driver_id AS DOUBLE) / 3 AS third
FROM labels ORDER BY driver_id, ts
"""
ADMIN_GRANTS = '["table:*", "view:*", "write:*", "registry:write", "files"]'
# `table:secre` and `view:trip` name nothing: a "did you mean" for them must not suggest the
# hidden `secret` and `trips`.
READER_GRANTS = '["table:labels", "table:driver_stats", "table:trips", "table:secre", "view:driver_stats", "view:trip"]'


def wait_for_http(base, process, log_path, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if process.poll() is not None or time.time() > deadline:
            pytest.fail("the HTTP port did not answer:\n" + log_path.read_text())
        time.sleep(0.05)


def login(base, user, password):
    response = requests.post(base + "/v1/login", auth=(user, password), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["token"]


class Api:
    """A REST client for one user: `requests` with the base URL and a bearer token."""

    def __init__(self, base, token):
        self.base = base
        self.token = token

    def headers(self, extra=None):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra or {})
        return headers

    def get(self, path, **kwargs):
        return requests.get(
            self.base + path, headers=self.headers(kwargs.pop("headers", None)), timeout=60, **kwargs
        )

    def delete(self, path, **kwargs):
        return requests.delete(
            self.base + path, headers=self.headers(kwargs.pop("headers", None)), timeout=60, **kwargs
        )

    def post(self, path, body, **kwargs):
        return requests.post(
            self.base + path,
            json=body,
            headers=self.headers(kwargs.pop("headers", None)),
            timeout=kwargs.pop("timeout", 120),
            **kwargs,
        )

    def query(self, sql, accept=NDJSON, **kwargs):
        return self.post("/v1/query", {"sql": sql}, headers={"Accept": accept}, **kwargs)

    def change(self, sql):
        response = self.post("/v1/statements", {"sql": sql})
        assert response.status_code == 200, (sql, response.status_code, response.text)
        return response.json()["message"]


def error_of(response, status):
    """The error of a refusal: its status, JSON media type and `{"error": {code, message}}`."""
    assert response.status_code == status, (response.status_code, response.text[:2000])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    return body["error"]


def registry_version_of(message):
    return int(re.search(r"registry version (\d+)", message).group(1))


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    """One server with data and a registry, users with different grants, and their tokens."""
    root = tmp_path_factory.mktemp("rest")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", SETUP)
    # A table whose log cannot be read (FAILED_PRECONDITION).
    run_pitlake(warehouse, "sql", "CREATE TABLE broken AS SELECT 1 AS x")
    (warehouse / "broken" / "_delta_log" / "00000000000000000000.json").write_text("{garbage\n")
    made = run_pitlake(warehouse, "serve", "--new-token").stdout.decode()
    static_token = re.search(r"token:\s+(\S+)", made).group(1)
    static_sha = re.search(r'sha256 = "([0-9a-f]{64})"', made).group(1)
    auth = root / "auth.toml"
    auth.write_text(
        f"""
[users.admin]
password_hash = "{hash_password(warehouse, 'admin-pw')}"
roles = ["owner"]
[users.reader]
password_hash = "{hash_password(warehouse, 'reader-pw')}"
roles = ["reader"]
[users.writer]
password_hash = "{hash_password(warehouse, 'writer-pw')}"
roles = ["reader", "registrar"]
[users.svc]
tokens = [{{ sha256 = "{static_sha}", expires = "2099-01-01T00:00:00Z" }}]
roles = ["reader"]
[roles.owner]
grants = {ADMIN_GRANTS}
[roles.reader]
grants = {READER_GRANTS}
[roles.registrar]
grants = ["registry:write"]
"""
    )
    http_port = free_port()
    process, log, uri, log_path = start_server(
        root, warehouse, auth, "--http-listen", f"127.0.0.1:{http_port}",
        # Operators set it to debug; what clients are answered must not change with it.
        env={"RUST_BACKTRACE": "1"},
    )
    base = f"http://127.0.0.1:{http_port}"
    wait_for_http(base, process, log_path)
    yield {
        "base": base,
        "uri": uri,
        "root": root,
        "warehouse": warehouse,
        "log": log_path,
        "process": process,
        "admin": Api(base, login(base, "admin", "admin-pw")),
        "reader": Api(base, login(base, "reader", "reader-pw")),
        "writer": Api(base, login(base, "writer", "writer-pw")),
        "svc": Api(base, static_token),
        "anonymous": Api(base, None),
        "static_token": static_token,
    }
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    log.close()
    text = log_path.read_text()
    assert code == 0, text
    # Passwords and tokens never reach the log, whichever transport carried them.
    assert "admin-pw" not in text and "reader-pw" not in text and static_token not in text


def log_text(rest):
    """The server's log, colour codes stripped."""
    return re.sub(r"\x1b\[[0-9;]*m", "", rest["log"].read_text())


def flight_table(rest, sql, user="admin", password="admin-pw"):
    with flightsql.connect(rest["uri"], db_kwargs={"username": user, "password": password}) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table()


# ---- Retrieval -------------------------------------------------------------------------------


def text_value(text, typ, from_csv=False):
    """A value as JSON lines or CSV carry it, back as the Python value pyarrow gives."""
    if text is None or (from_csv and text == "" and not pa.types.is_string(typ)
                        and not pa.types.is_string_view(typ) and not pa.types.is_large_string(typ)):
        return None
    if pa.types.is_timestamp(typ):
        parsed = datetime.datetime.fromisoformat(text)
        # A zone-less timestamp is written without an offset, a zoned one with it.
        assert (parsed.tzinfo is not None) == (typ.tz is not None), (text, typ)
        return parsed
    if pa.types.is_decimal(typ):
        return Decimal(str(text))
    if pa.types.is_floating(typ):
        return float(text)
    if pa.types.is_integer(typ):
        return int(text)
    if pa.types.is_boolean(typ):
        if from_csv:
            assert text in ("true", "false"), text
            return text == "true"
        return text
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_list_view(typ):
        assert isinstance(text, list), text
        return [text_value(item, typ.value_type) for item in text]
    return text


def assert_same_value(got, expected, column):
    assert type(got) is type(expected) or got is None or expected is None, (column, got, expected)
    assert got == expected, (column, got, expected)
    if isinstance(expected, datetime.datetime) and expected.tzinfo is not None:
        # The same instant in the same offset: a time zone is not silently dropped to UTC.
        assert got.utcoffset() == expected.utcoffset(), (column, got, expected)


def rows_from_ndjson(body, schema):
    lines = body.decode("utf-8").splitlines()
    rows = []
    for line in lines:
        record = json.loads(line, parse_float=Decimal)
        assert list(record) == schema.names, (record, schema.names)
        rows.append({f.name: text_value(record[f.name], f.type) for f in schema})
    return rows


def rows_from_csv(body, schema):
    reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
    header = next(reader)
    assert header == schema.names, header
    return [
        {f.name: text_value(cell, f.type, from_csv=True) for f, cell in zip(schema, record, strict=True)}
        for record in reader
    ]


def assert_rows_equal(got_rows, expected, from_csv=False):
    expected_rows = expected.to_pylist()
    assert len(got_rows) == len(expected_rows), (len(got_rows), len(expected_rows))
    for got, want in zip(got_rows, expected_rows):
        assert list(got) == list(want)
        for name in want:
            expected_value = want[name]
            typ = expected.schema.field(name).type
            if from_csv and expected_value is None and (pa.types.is_string(typ) or pa.types.is_string_view(typ)):
                expected_value = ""  # CSV writes a NULL text as nothing, like an empty one
            assert_same_value(got[name], expected_value, name)


def fetch_all_formats(api, sql, formats=FORMATS):
    bodies = {}
    for accept in formats:
        response = api.query(sql, accept=accept)
        assert response.status_code == 200, (accept, response.status_code, response.text[:2000])
        media = response.headers["content-type"].split(";")[0].strip()
        assert media == accept, (accept, response.headers["content-type"])
        assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-pitlake-query-id"])
        bodies[accept] = response.content
    return bodies


def check_every_format(bodies, expected):
    if ARROW in bodies:
        got = pa.ipc.open_stream(bodies[ARROW]).read_all()
        assert got.schema.equals(expected.schema), (got.schema, expected.schema)
        assert got.equals(expected)
    if PARQUET in bodies:
        got = pq.read_table(io.BytesIO(bodies[PARQUET]))
        assert got.schema.names == expected.schema.names
        assert got.num_rows == expected.num_rows
        for name in expected.schema.names:
            # Parquet keeps the Arrow schema, so the types come back as they were sent (a
            # string view may come back as a string: Parquet has one text type).
            got_type, want_type = got.schema.field(name).type, expected.schema.field(name).type
            assert got_type == want_type or {str(got_type), str(want_type)} <= {
                "string", "string_view", "large_string", "list<item: string>",
                "list<item: string_view>", "large_list<item: string>"
            }, (name, got_type, want_type)
        assert got.to_pylist() == expected.to_pylist()
    if NDJSON in bodies:
        assert_rows_equal(rows_from_ndjson(bodies[NDJSON], expected.schema), expected)
    if CSV in bodies:
        assert_rows_equal(rows_from_csv(bodies[CSV], expected.schema), expected, from_csv=True)


def test_a_training_set_in_every_format_has_flights_rows(rest):
    expected = flight_table(rest, TRAINING_SET)
    assert expected.num_rows == 4
    assert expected.column("trips__last3").to_pylist() == [["m5"], ["m3", "m2", "m1"], ["m4", "m3", "m2"], []]
    assert pa.types.is_decimal(expected.schema.field("driver_stats__price").type)
    assert expected.schema.field("seen_at").type.tz == "UTC"
    bodies = fetch_all_formats(rest["admin"], TRAINING_SET, [ARROW, PARQUET, NDJSON])
    check_every_format(bodies, expected)
    # CSV has no list type: the same training set without its list column.
    flat = flight_table(rest, TRAINING_SET_FLAT)
    check_every_format(fetch_all_formats(rest["admin"], TRAINING_SET_FLAT, [CSV]), flat)


def test_a_plain_query_in_every_format_has_flights_rows(rest):
    expected = flight_table(rest, PLAIN_QUERY)
    assert expected.schema.field("ts_berlin").type.tz == "Europe/Berlin"
    assert expected.num_rows == 4
    check_every_format(fetch_all_formats(rest["admin"], PLAIN_QUERY), expected)


def test_the_other_media_types_and_accept_preferences(rest):
    api = rest["admin"]
    sql = "SELECT driver_id FROM labels ORDER BY driver_id, ts"
    for accept, media in [
        # The answer names the media type that was asked for.
        ("application/x-parquet", "application/x-parquet"),
        ("application/jsonl", "application/jsonl"),
        ("*/*", NDJSON),
        ("text/html, text/csv;q=0.5", CSV),
        ("application/x-ndjson;q=0.2, application/vnd.apache.arrow.stream;q=0.9", ARROW),
    ]:
        response = api.query(sql, accept=accept)
        assert response.status_code == 200, (accept, response.text)
        assert response.headers["content-type"].split(";")[0] == media, accept
    no_accept = requests.post(
        api.base + "/v1/query", json={"sql": sql}, headers=api.headers(), timeout=30
    )
    assert no_accept.headers["content-type"] == NDJSON
    assert [json.loads(line)["driver_id"] for line in no_accept.text.splitlines()] == [1, 1, 2, 3]


def test_an_empty_result_keeps_its_columns_in_every_format(rest):
    sql = "SELECT driver_id, ts, seen_at, note FROM labels WHERE driver_id < 0"
    expected = flight_table(rest, sql)
    assert expected.num_rows == 0
    bodies = fetch_all_formats(rest["admin"], sql)
    arrow = pa.ipc.open_stream(bodies[ARROW]).read_all()
    assert arrow.num_rows == 0 and arrow.schema.equals(expected.schema)
    parquet = pq.read_table(io.BytesIO(bodies[PARQUET]))
    assert parquet.num_rows == 0 and parquet.schema.names == expected.schema.names
    assert bodies[NDJSON] == b""
    assert bodies[CSV].decode().splitlines() == ["driver_id,ts,seen_at,note"]


def test_parquet_answers_choose_their_dictionaries_as_the_cli_does(rest):
    # Distinct numbers are written without a dictionary (one would save nothing), a column of
    # few values with one, as `pitlake sql --format parquet` and exports write them.
    sql = "SELECT value AS distinct_values, value % 3 AS few_values FROM generate_series(1, 5000)"
    body = fetch_all_formats(rest["admin"], sql, [PARQUET])[PARQUET]
    group = pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0)
    chunks = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
    assert not chunks["distinct_values"].has_dictionary_page
    assert chunks["few_values"].has_dictionary_page
    table = pq.read_table(io.BytesIO(body))
    assert table.column("distinct_values").to_pylist() == list(range(1, 5001))
    assert table.column("few_values").to_pylist() == [v % 3 for v in range(1, 5001)]


def test_a_wide_parquet_answer_of_few_rows_is_whole(rest):
    # 2,000 number columns of one row each: too few values for the dictionary choice to look at
    # (it spends nothing on them), and the answer is whole.
    columns = ", ".join(f"{i} AS c{i}" for i in range(2000))
    body = fetch_all_formats(rest["admin"], f"SELECT {columns}", [PARQUET])[PARQUET]
    table = pq.read_table(io.BytesIO(body))
    assert table.num_columns == 2000 and table.num_rows == 1
    assert [table.column(i)[0].as_py() for i in (0, 999, 1999)] == [0, 999, 1999]


def test_a_large_result_streams_and_arrives_whole(rest):
    api, base = rest["admin"], rest["base"]
    rows = 5_000_000
    before = samples(base)
    response = api.query(f"SELECT value FROM generate_series(1, {rows})", accept=ARROW, stream=True)
    assert response.status_code == 200, response.text
    query_id = response.headers["x-pitlake-query-id"]
    assert "content-length" not in response.headers  # chunked: written as it is made
    reader = pa.ipc.open_stream(response.raw)
    first = reader.read_next_batch()
    # The client holds back after its first rows: the server cannot have finished (40 MB do not
    # fit in the sockets' buffers), so the query still runs and has not sent all its rows.
    holding = samples(base)
    assert value(holding, "pitlake_queries_running") >= 1
    sent = value(holding, "pitlake_rows_sent_total") - value(before, "pitlake_rows_sent_total")
    assert sent < rows, sent
    assert 0 < first.num_rows < rows
    count, total, last = first.num_rows, pc.sum(first.column(0)).as_py(), None
    for batch in reader:
        count += batch.num_rows
        total += pc.sum(batch.column(0)).as_py()
        last = batch.column(0)[-1].as_py()
    assert count == rows and last == rows and total == rows * (rows + 1) // 2
    after = samples(base)
    assert value(after, "pitlake_queries_running") == 0
    assert value(after, "pitlake_rows_sent_total") - value(before, "pitlake_rows_sent_total") >= rows
    assert f"query_id={query_id}" in log_text(rest)


def test_an_error_after_the_first_rows_cuts_the_answer_short(rest):
    api = rest["admin"]
    # Fails at row 100000, batches after the first: no format may end such an answer as if whole.
    sql = "SELECT 10 / (value - 100000) AS v FROM generate_series(1, 200000)"
    for accept in FORMATS:
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
            response = api.query(sql, accept=accept, stream=True)
            assert response.status_code == 200, (accept, response.text)
            for _ in response.iter_content(65536):
                pass
    # Failing in the first batch, it is a status of its own.
    refused = error_of(api.query("SELECT 10 / (value - 1) AS v FROM generate_series(1, 5)"), 400)
    assert "Divide by zero" in refused["message"], refused
    assert value(samples(rest["base"]), "pitlake_queries_running") == 0


@pytest.mark.parametrize(
    "accept, sql",
    [
        (CSV, "SELECT make_array(1, 2) AS l"),
        (CSV, "SELECT named_struct('a', 1) AS s"),
        (CSV, "SELECT map([1], [2]) AS m"),
        (NDJSON, "SELECT map([1], [2]) AS m"),
        (PARQUET, "SELECT INTERVAL '1 day' AS i"),
    ],
)
def test_a_result_a_format_cannot_write_is_refused_with_a_status(rest, accept, sql):
    """The first batch is in hand before the answer starts, so a type the format cannot write is
    an error before the first row: a status with a JSON body, saying which formats can."""
    response = rest["admin"].query(sql, accept=accept)
    refused = error_of(response, 406)
    assert ARROW in refused["message"], refused
    assert rest["admin"].query(sql, accept=ARROW).status_code == 200


# ---- Errors ----------------------------------------------------------------------------------


def test_statement_errors_say_what_is_wrong(rest):
    api = rest["admin"]
    syntax = error_of(api.query("SELEC driver_id FROM labels"), 400)
    assert syntax["code"] == "INVALID_ARGUMENT" and "SELEC" in syntax["message"], syntax
    missing = error_of(api.query("SELECT * FROM no_such_table"), 404)
    assert missing["code"] == "NOT_FOUND" and "no_such_table" in missing["message"], missing
    # A change sent as a query, and a query sent as a change: refused before anything runs,
    # naming the endpoint to use.
    create = "CREATE TABLE made_by_query AS SELECT 1 AS x"
    wrong = error_of(api.query(create), 400)
    assert "/v1/statements" in wrong["message"], wrong
    assert error_of(api.query("SELECT * FROM made_by_query"), 404)
    wrong = error_of(api.post("/v1/statements", {"sql": "SELECT 1"}), 400)
    assert "/v1/query" in wrong["message"], wrong
    unsupported = api.query("UPDATE labels SET label = true")
    assert unsupported.status_code in (400, 501), unsupported.text
    error_of(unsupported, unsupported.status_code)


def test_request_errors_are_json_with_their_status(rest):
    api, base = rest["admin"], rest["base"]
    html = error_of(api.query("SELECT 1", accept="text/html"), 406)
    for media in FORMATS:
        assert media in html["message"], html
    wrong_type = requests.post(
        base + "/v1/query", data='{"sql": "SELECT 1"}', timeout=30,
        headers=api.headers({"Content-Type": "text/plain"}),
    )
    assert "application/json" in error_of(wrong_type, 415)["message"]
    no_type = requests.post(base + "/v1/query", data=b'{"sql": "SELECT 1"}', headers=api.headers(), timeout=30)
    error_of(no_type, 415)
    unknown_field = error_of(api.post("/v1/query", {"sql": "SELECT 1", "limit": 5}), 400)
    assert "limit" in unknown_field["message"], unknown_field
    missing_field = error_of(api.post("/v1/query", {"query": "SELECT 1"}), 400)
    assert "sql" in missing_field["message"] or "query" in missing_field["message"], missing_field
    not_json = requests.post(
        base + "/v1/query", data=b"{sql: SELECT", timeout=30,
        headers=api.headers({"Content-Type": "application/json"}),
    )
    error_of(not_json, 400)
    huge = error_of(api.post("/v1/query", {"sql": "SELECT '" + "x" * (3 << 20) + "'"}), 413)
    assert "1 MiB" in huge["message"], huge
    # A statement just over 1 MiB that fits in the body is refused by the statement bound.
    over = error_of(api.post("/v1/query", {"sql": "SELECT '" + "x" * (1 << 20) + "'"}), 400)
    assert "MiB" in over["message"] or "large" in over["message"], over
    nowhere = error_of(api.get("/v1/nothing/here/at/all"), 404)
    assert "/v1/openapi.json" in nowhere["message"], nowhere
    error_of(api.get("/v2/query"), 404)
    kinds = error_of(api.get("/v1/tables"), 404)
    assert "entities" in kinds["message"], kinds
    for method, path in [("GET", "/v1/query"), ("PUT", "/v1/statements"), ("DELETE", "/v1/login"),
                         ("POST", "/v1/entities"), ("PATCH", "/v1/entities/driver")]:
        refused = requests.request(method, base + path, headers=api.headers(), timeout=30)
        assert "does not take" in error_of(refused, 405)["message"], (method, path)
        assert method not in refused.headers["allow"] and refused.headers["allow"], refused.headers
    unknown_param = error_of(api.get("/v1/entities?limit=3"), 400)
    assert "limit" in unknown_param["message"] and "registry_version" in unknown_param["message"]
    error_of(api.query("SELECT 1", params={"format": "csv"}), 400)
    error_of(api.get("/v1/entities?registry_version=1&registry_version=2"), 400)
    for bad in ["-1", "abc", "1.5", "", "99999999999999999999"]:
        refused = error_of(api.get("/v1/entities", params={"registry_version": bad}), 400)
        assert "registry_version" in refused["message"], (bad, refused)
    error_of(api.get("/v1/feature-views/driver_stats/diff?from=0"), 400)
    error_of(api.get("/v1/feature-views/driver_stats?version=1"), 400)
    error_of(api.get("/v1/feature-views/" + "n" * 300), 400)
    # A registry version that does not exist yet.
    error_of(api.get("/v1/entities", params={"registry_version": 100000}), 404)


def test_a_table_that_cannot_be_read_is_409_without_the_servers_insides(rest):
    refused = error_of(rest["admin"].query("SELECT * FROM broken"), 409)
    assert refused["code"] == "FAILED_PRECONDITION" and "broken" in refused["message"], refused
    # What was wrong, not where in the server's code it was found.
    for inside in ["backtrace", "/rustc/", ".rs:", "tokio::", "\n   0: "]:
        assert inside not in refused["message"], refused["message"][:3000]


# ---- Authentication and grants ---------------------------------------------------------------


def test_calls_without_a_good_token_are_401(rest):
    base = rest["base"]
    for method, path in [("POST", "/v1/query"), ("POST", "/v1/statements"), ("POST", "/v1/exports"),
                         ("GET", "/v1/entities"), ("GET", "/v1/feature-views/driver_stats"),
                         ("DELETE", "/v1/feature-views/driver_stats"),
                         ("GET", "/v1/feature-views/driver_stats/history")]:
        response = requests.request(method, base + path, json={"sql": "SELECT 1"}, timeout=30)
        refused = error_of(response, 401)
        assert refused["code"] == "UNAUTHENTICATED"
        assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
        assert "/v1/login" in refused["message"], refused
    token = rest["admin"].token
    head, claims, mac = token.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in ["Bearer nonsense", f"Bearer {head}.{claims}.{flipped}", f"Bearer {head}.{claims[::-1]}.{mac}",
                f"Basic {base64.b64encode(b'admin:admin-pw').decode()}", "Bearer ", token]:
        response = requests.get(base + "/v1/entities", headers={"Authorization": bad}, timeout=30)
        error_of(response, 401)
        assert "www-authenticate" in response.headers
    # The document needs no token.
    document = requests.get(base + "/v1/openapi.json", timeout=30)
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.")


def test_login_refusals_are_alike_and_tokens_work_on_both_transports(rest):
    base, uri = rest["base"], rest["uri"]
    wrong = requests.post(base + "/v1/login", auth=("reader", "wrong-pw"), timeout=30)
    unknown = requests.post(base + "/v1/login", auth=("nobody-here", "wrong-pw"), timeout=30)
    assert error_of(wrong, 401) == error_of(unknown, 401)
    assert "reader" not in wrong.text and "nobody-here" not in unknown.text
    error_of(requests.post(base + "/v1/login", timeout=30), 401)
    error_of(requests.post(base + "/v1/login", headers={"Authorization": "Bearer x"}, timeout=30), 401)
    issued = requests.post(base + "/v1/login", auth=("reader", "reader-pw"), timeout=30)
    assert issued.status_code == 200
    body = issued.json()
    assert body["token_type"] == "Bearer" and body["user"] == "reader"
    assert isinstance(body["expires_in"], int) and 0 < body["expires_in"] <= 3600
    # A REST token opens Flight calls...
    client = flight.FlightClient(uri)
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {body['token']}".encode())])
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(flight_sql_command("SELECT count(*) AS n FROM labels")), options
    )
    assert client.do_get(info.endpoints[0].ticket, options).read_all().to_pylist() == [{"n": 4}]
    # ... and a Flight handshake token opens REST calls.
    name, bearer = client.authenticate_basic_token(b"reader", b"reader-pw")
    assert name.lower() == b"authorization"
    response = requests.post(
        base + "/v1/query", json={"sql": "SELECT count(*) AS n FROM labels"},
        headers={"Authorization": bearer.decode()}, timeout=30,
    )
    assert response.status_code == 200 and response.json() == {"n": 4}
    client.close()
    # A static token from the auth file works as on Flight.
    assert rest["svc"].query("SELECT count(*) AS n FROM labels").json() == {"n": 4}


def test_a_missing_grant_is_403_and_changes_nothing(rest, tmp_path):
    admin, reader = rest["admin"], rest["reader"]
    before = registry_version_of(admin.change("CREATE ENTITY grant_probe_a (k BIGINT)"))
    refused = error_of(reader.post("/v1/statements", {"sql": "CREATE ENTITY stolen (k BIGINT)"}), 403)
    assert refused["code"] == "PERMISSION_DENIED" and "registry:write" in refused["message"], refused
    refused = error_of(reader.delete("/v1/feature-views/driver_stats"), 403)
    after = registry_version_of(admin.change("CREATE ENTITY grant_probe_b (k BIGINT)"))
    assert after == before + 1  # nothing was committed in between
    error_of(admin.get("/v1/entities/stolen"), 404)
    assert admin.get("/v1/feature-views/driver_stats").status_code == 200
    # A table write without write:, and an export without `files`: nothing written.
    error_of(reader.post("/v1/statements", {"sql": "CREATE TABLE stolen AS SELECT * FROM labels"}), 403)
    error_of(admin.query("SELECT * FROM stolen"), 404)
    to = tmp_path / "refused.parquet"
    refused = error_of(reader.post("/v1/exports", {
        "training_set": "TRAINING SET LABELS labels AT ts FEATURES (driver_stats.*)", "to": str(to)}), 403)
    assert "files" in refused["message"], refused
    assert list(tmp_path.iterdir()) == []


def same_refusal(got, absent, name, absent_name):
    """Two refusals alike but for the name asked for: status, code and message."""
    assert got.status_code == absent.status_code, (got.text, absent.text)
    got, absent = got.json()["error"], absent.json()["error"]
    assert got["code"] == absent["code"], (got, absent)
    assert got["message"] == absent["message"].replace(absent_name, name), (got, absent)
    return got


def test_an_unreadable_table_is_refused_like_a_missing_one(rest):
    reader, admin = rest["reader"], rest["admin"]
    # Neither granted: refused alike, whether the table exists or not, and without its data.
    refused = same_refusal(reader.query("SELECT * FROM secret"), reader.query("SELECT * FROM secreet"),
                           "secret", "secreet")
    assert refused["code"] == "PERMISSION_DENIED", refused
    refused = same_refusal(reader.query("SELECT salary FROM secret"),
                           reader.query("SELECT salary FROM secreet"), "secret", "secreet")
    for body in [refused, error_of(reader.query("SELECT count(*) FROM labels, secret"), 403)]:
        assert "4242" not in body["message"] and "salary" not in body["message"], body
    # Granted but missing: NOT_FOUND, and "did you mean" suggests only readable tables.
    missing = error_of(reader.query("SELECT * FROM secre"), 404)
    assert missing["code"] == "NOT_FOUND" and "`secret`" not in missing["message"], missing
    assert "secret" in error_of(admin.query("SELECT * FROM secre"), 404)["message"]


def test_hidden_registry_objects_are_answered_like_missing_ones(rest):
    reader, writer, admin = rest["reader"], rest["writer"], rest["admin"]
    names = [item["name"] for item in reader.get("/v1/feature-views").json()["items"]]
    assert names == ["driver_stats"]
    # At an older registry version too (SETUP made the entity, then both views, then the service).
    then = reader.get("/v1/feature-views", params={"registry_version": 2}).json()["items"]
    assert [item["name"] for item in then] == ["driver_stats"]
    assert len(admin.get("/v1/feature-views", params={"registry_version": 2}).json()["items"]) == 2
    assert sorted(i["name"] for i in admin.get("/v1/feature-views").json()["items"]) == ["driver_stats", "trips"]
    # The service uses `trips`, which reader may not see: it is hidden too.
    assert reader.get("/v1/feature-services").json()["items"] == []
    assert [i["name"] for i in admin.get("/v1/feature-services").json()["items"]] == ["churn"]
    for api in [reader, writer]:
        for kind, hidden in [("feature-views", "trips"), ("feature-services", "churn")]:
            for suffix in ["", "?registry_version=3", "/history", "/diff?from=0&to=3"]:
                same_refusal(api.get(f"/v1/{kind}/{hidden}{suffix}"), api.get(f"/v1/{kind}/zz{hidden}{suffix}"),
                             hidden, f"zz{hidden}")
            same_refusal(api.delete(f"/v1/{kind}/{hidden}"), api.delete(f"/v1/{kind}/zz{hidden}"),
                         hidden, f"zz{hidden}")
    # The writer's refused drops changed nothing.
    assert admin.get("/v1/feature-views/trips").status_code == 200
    assert admin.get("/v1/feature-services/churn").status_code == 200
    # "Did you mean" never suggests what the caller may not see, nor does "used by" name it.
    near = error_of(reader.get("/v1/feature-views/trip"), 404)
    assert "trips" not in near["message"], near
    assert "trips" in error_of(admin.get("/v1/feature-views/trip"), 404)["message"]
    for path in ["/v1/feature-views/driver_stats", "/v1/entities/driver", "/v1/entities"]:
        seen = reader.get(path)
        assert seen.status_code == 200, seen.text
        assert "churn" not in seen.text and "trips" not in seen.text, (path, seen.text)
    assert "trips" in admin.get("/v1/entities/driver").json()["used_by"]
    refused = reader.query("TRAINING SET LABELS labels AT ts FEATURES (trips.last3)")
    assert refused.status_code in (403, 404), refused.text
    for word in ["m1", "m2", "merchant", "last3"]:
        assert word not in refused.json()["error"]["message"], refused.text


# ---- Management ------------------------------------------------------------------------------


def test_definitions_listed_described_diffed_and_dropped(rest):
    api = rest["admin"]
    api.change("CREATE ENTITY mg_driver (driver_id BIGINT)")
    created = registry_version_of(api.change(
        "CREATE FEATURE VIEW mg_stats ENTITY mg_driver FROM driver_stats EVENT TIME event_ts "
        "FEATURES (conv_rate) COMMENT 'first'"))
    replaced = registry_version_of(api.change(
        "CREATE OR REPLACE FEATURE VIEW mg_stats ENTITY mg_driver FROM driver_stats EVENT TIME event_ts "
        "TTL INTERVAL '1 day' FEATURES (conv_rate, price) COMMENT 'second'"))
    service = registry_version_of(api.change("CREATE FEATURE SERVICE mg_service (mg_stats.price)"))
    assert created < replaced < service

    now = [i["name"] for i in api.get("/v1/feature-views").json()["items"]]
    assert "mg_stats" in now
    before = api.get("/v1/feature-views", params={"registry_version": created - 1}).json()["items"]
    assert "mg_stats" not in [i["name"] for i in before]
    old_services = api.get("/v1/feature-services", params={"registry_version": replaced}).json()["items"]
    assert "mg_service" not in [i["name"] for i in old_services]

    described = api.get("/v1/feature-views/mg_stats").json()
    assert described["kind"] == "feature view" and described["name"] == "mg_stats"
    assert isinstance(described["definition"], dict)
    assert described["definition"]["entity"] == "mg_driver"
    assert [f["name"] for f in described["definition"]["features"]] == ["conv_rate", "price"]
    assert "mg_service" in described["used_by"]
    first = api.get("/v1/feature-views/mg_stats", params={"registry_version": created}).json()
    assert [f["name"] for f in first["definition"]["features"]] == ["conv_rate"]

    history = api.get("/v1/feature-views/mg_stats/history").json()["items"]
    assert [h["registry_version"] for h in history] == [created, replaced]
    assert [h["action"] for h in history] == ["create", "replace"]
    assert all(h["changed_by"] == "admin" for h in history), history
    assert isinstance(history[-1]["definition"], dict) and "TTL" in history[-1]["statement"]

    diff = api.get("/v1/feature-views/mg_stats/diff", params={"from": created, "to": replaced}).json()
    assert diff["from"] == created and diff["to"] == replaced
    fields = {item["field"]: item for item in diff["items"]}
    assert "ttl_seconds" in fields and fields["ttl_seconds"]["from"] is None
    # Each side is the field's value as JSON: the TTL a number, the comment a string.
    assert fields["ttl_seconds"]["to"] == 86400, fields
    assert fields["description"]["from"] == "first" and fields["description"]["to"] == "second"

    in_use = error_of(api.delete("/v1/feature-views/mg_stats"), 409)
    assert "mg_service" in in_use["message"], in_use
    assert api.get("/v1/feature-views/mg_stats").status_code == 200
    assert "mg_service" in api.delete("/v1/feature-services/mg_service").json()["message"]
    assert api.delete("/v1/feature-views/mg_stats").status_code == 200
    error_of(api.get("/v1/feature-views/mg_stats"), 404)
    error_of(api.delete("/v1/feature-views/mg_stats"), 404)
    # The history outlives the object.
    history = api.get("/v1/feature-views/mg_stats/history").json()["items"]
    assert [h["action"] for h in history] == ["create", "replace", "drop"]


def test_every_listed_object_can_be_described_by_its_listed_name(rest):
    api = rest["admin"]
    api.change("REGISTER OR REPLACE MODEL mg_model VERSION '7' SERVICE churn METADATA '{\"auc\": 0.9}'")
    for kind in ["entities", "feature-views", "feature-services", "models"]:
        items = api.get(f"/v1/{kind}").json()["items"]
        assert items, kind
        for item in items:
            described = api.get(f"/v1/{kind}/{requests.utils.quote(item['name'], safe='')}")
            assert described.status_code == 200, (kind, item, described.text)
            assert isinstance(described.json()["definition"], dict)
    model = api.get("/v1/models/mg_model", params={"version": "7"}).json()
    assert model["definition"]["metadata"] == {"auc": 0.9}
    assert api.get("/v1/models/mg_model/history", params={"version": "7"}).json()["items"]


def test_a_model_version_is_dropped_by_the_name_it_is_listed_and_described_by(rest):
    api = rest["admin"]
    api.change("REGISTER MODEL drop_model VERSION '1' SERVICE churn")
    api.change("REGISTER MODEL drop_model VERSION '2' SERVICE churn")
    listed = sorted(i["name"] for i in api.get("/v1/models").json()["items"] if i["name"].startswith("drop_model"))
    assert listed == ["drop_model@1", "drop_model@2"]
    assert api.get("/v1/models/drop_model%401").json()["definition"]["version"] == "1"
    dropped = api.delete("/v1/models/drop_model%401")
    assert dropped.status_code == 200, dropped.text
    assert api.get("/v1/models/drop_model", params={"version": "2"}).status_code == 200
    assert api.delete("/v1/models/drop_model", params={"version": "2"}).status_code == 200
    error_of(api.get("/v1/models/drop_model", params={"version": "2"}), 404)


def test_names_in_paths_are_names_never_sql(rest):
    api = rest["admin"]
    api.change('CREATE ENTITY "odd ""name""; DROP" (k BIGINT)')
    quoted = requests.utils.quote('odd "name"; DROP', safe="")
    described = api.get(f"/v1/entities/{quoted}")
    assert described.status_code == 200, described.text
    assert described.json()["name"] == 'odd "name"; DROP'
    for name in ["driver; DROP ENTITY driver", "driver' OR '1'='1", 'driver" OR "1"="1', "x\u202e"]:
        error_of(api.get(f"/v1/entities/{requests.utils.quote(name, safe='')}"), 404)
    assert api.get("/v1/entities/driver").status_code == 200


# ---- Exports ---------------------------------------------------------------------------------


def test_an_export_answers_its_manifest_and_matches_the_cli(rest, tmp_path):
    api = rest["admin"]
    training_set = "TRAINING SET LABELS labels AT ts FEATURES (driver_stats.*, trips.n_1d)"
    to = tmp_path / "rest.parquet"
    response = api.post("/v1/exports", {"training_set": training_set, "to": str(to)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["manifest_location"] == f"{to}.manifest.json"
    written = json.loads((tmp_path / "rest.parquet.manifest.json").read_text())
    assert body["manifest"] == written
    assert written["output"]["rows"] == 4 and written["output"]["content_hash"] in body["message"]
    assert written["created_by"] == "admin"
    assert pq.read_table(to).to_pylist() == flight_table(rest, training_set).to_pylist()
    cli_to = tmp_path / "cli.parquet"
    run_pitlake(rest["warehouse"], "export", training_set, "--to", str(cli_to))
    cli = json.loads((tmp_path / "cli.parquet.manifest.json").read_text())
    assert cli["output"]["content_hash"] == written["output"]["content_hash"]
    assert cli["query"] == written["query"]
    # CSV, by name; a format not known is refused before anything is written.
    csv_to = tmp_path / "rest.out"
    done = api.post("/v1/exports", {"training_set": training_set, "to": str(csv_to), "format": "csv"})
    assert done.status_code == 200 and done.json()["manifest"]["output"]["format"] == "csv", done.text
    bad = error_of(api.post("/v1/exports", {"training_set": training_set, "to": str(tmp_path / "x"),
                                             "format": "xlsx"}), 400)
    assert "parquet" in bad["message"]
    error_of(api.post("/v1/exports", {"training_set": "SELECT 1", "to": str(tmp_path / "y")}), 400)
    error_of(api.post("/v1/exports", {"training_set": training_set, "to": ""}), 400)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_export_with_progress_streams_its_report_and_keeps_the_files_grant(rest, tmp_path):
    """EXPORT … WITH PROGRESS, a query that writes, as a client without `files` would try it:
    through /v1/query (not /v1/exports), refused by the same grant, nothing written; doubled or
    trailing clauses and an oversized target are refused before anything runs."""
    training_set = "TRAINING SET LABELS labels AT ts FEATURES (driver_stats.*)"
    to = tmp_path / "progress.parquet"
    statement = f"EXPORT {training_set} TO '{to}' WITH PROGRESS"
    refused = error_of(rest["reader"].query(statement), 403)
    assert "files" in refused["message"], refused
    assert not to.exists() and not (tmp_path / "progress.parquet.manifest.json").exists()
    for bad in [statement + " WITH PROGRESS", statement + " FORMAT csv", statement + "; SELECT 1"]:
        error_of(rest["admin"].query(bad), 400)
    oversized = f"EXPORT {training_set} TO '{tmp_path}/{'x' * (2 << 20)}' WITH PROGRESS"
    assert rest["admin"].query(oversized).status_code in (400, 413)
    assert list(tmp_path.iterdir()) == []
    # The owner gets the report rows, the last one done with the export's report.
    rows = [json.loads(line) for line in rest["admin"].query(statement).text.splitlines()]
    assert rows[-1]["done"] is True and rows[-1]["rows_written"] == 4, rows
    assert all(r["done"] is False for r in rows[:-1]), rows
    written = json.loads((tmp_path / "progress.parquet.manifest.json").read_text())
    assert written["output"]["content_hash"] in rows[-1]["result"]


# ---- Metrics ---------------------------------------------------------------------------------


def test_metrics_count_rest_queries_failures_and_refusals(rest):
    base, admin, reader = rest["base"], rest["admin"], rest["reader"]
    before = samples(base)
    assert admin.query("SELECT value FROM generate_series(1, 1000)").status_code == 200
    error_of(admin.query("SELECT nonsense FROM labels"), 400)
    error_of(reader.query("SELECT * FROM secret"), 403)
    error_of(rest["anonymous"].query("SELECT 1"), 401)
    error_of(requests.post(base + "/v1/login", auth=("reader", "not-it"), timeout=30), 401)
    assert requests.post(base + "/v1/login", auth=("reader", "reader-pw"), timeout=30).status_code == 200
    after = samples(base)
    grew = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)
    assert grew("pitlake_queries_started_total") >= 3
    assert grew("pitlake_queries_ended_total", outcome="finished") >= 1
    assert grew("pitlake_queries_ended_total", outcome="failed") >= 1
    assert grew("pitlake_rows_sent_total") >= 1000
    assert grew("pitlake_bytes_sent_total") >= 1000
    assert grew("pitlake_refused_calls_total", reason="permission_denied") >= 1
    assert grew("pitlake_refused_calls_total", reason="unauthenticated") >= 1
    assert grew("pitlake_refused_calls_total", reason="login") >= 1
    assert grew("pitlake_handshakes_total") >= 1
    assert value(after, "pitlake_queries_running") == 0


# ---- Connections -----------------------------------------------------------------------------


def host_port(base):
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def closed_by_server(sock):
    try:
        sock.settimeout(0.5)
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_streaming_answer_survives_a_flood_of_idle_connections(rest):
    api, base = rest["admin"], rest["base"]
    rows = 3_000_000
    response = api.query(f"SELECT value FROM generate_series(1, {rows})", accept=ARROW, stream=True)
    assert response.status_code == 200
    reader = pa.ipc.open_stream(response.raw)
    count = reader.read_next_batch().num_rows
    held = []
    try:
        for _ in range(100):
            held.append(socket.create_connection(host_port(base), timeout=10))
        # At most 64 are kept: the oldest idle ones were closed for the newcomers at once (the
        # 5 s header timeout would close them too, later: this is the limit at work).
        started = time.monotonic()
        closed = [closed_by_server(sock) for sock in held[:36]]
        assert time.monotonic() - started < 4, time.monotonic() - started
        assert all(closed), closed
        # The probes and new calls still get in.
        assert requests.get(base + "/healthz", timeout=5).text == "ok\n"
        assert api.query("SELECT 1 AS one").json() == {"one": 1}
        for batch in reader:
            count += batch.num_rows
    finally:
        for sock in held:
            sock.close()
    assert count == rows


def test_a_slow_request_body_is_cut_off_without_hurting_others(rest):
    api, base = rest["admin"], rest["base"]
    slow = socket.create_connection(host_port(base), timeout=60)
    body = json.dumps({"sql": "SELECT 1"}).encode()
    slow.sendall(
        b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {api.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:3]
    )
    started = time.monotonic()
    try:
        # Others are served meanwhile, at their usual speed.
        for _ in range(5):
            t = time.monotonic()
            assert api.query("SELECT count(*) AS n FROM labels").json() == {"n": 4}
            assert time.monotonic() - t < 5
        answer = b""
        while True:
            try:
                data = slow.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not data:
                break
            answer += data
        waited = time.monotonic() - started
    finally:
        slow.close()
    assert waited < 45, waited
    if answer:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"DEADLINE_EXCEEDED" in answer
    assert api.query("SELECT 1 AS one").json() == {"one": 1}


# ---- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A second server: TLS (a certificate of a private CA made here) on both ports, and a query
    timeout of one second."""
    root = tmp_path_factory.mktemp("rest-tls")

    # A private CA and a certificate for localhost it signed (ca.pem, cert.pem, key.pem).
    subprocess.run([str(TEST_CERTS), str(root)], check=True, capture_output=True)
    warehouse = root / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", "CREATE TABLE t AS SELECT 7 AS x")
    auth = root / "auth.toml"
    auth.write_text(
        f'[users.alice]\npassword_hash = "{hash_password(warehouse, "alice-pw")}"\n'
        'roles = ["r"]\n[roles.r]\ngrants = ["table:*"]\n'
    )
    # test_flight.start_server serves plaintext; TLS needs its own command line.
    port, http_port = free_port(), free_port()
    log_path = root / "server.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [pitlake_bin(), "--warehouse", str(warehouse), "serve", "--listen", f"127.0.0.1:{port}",
         "--auth-file", str(auth), "--tls-cert", str(root / "cert.pem"), "--tls-key", str(root / "key.pem"),
         "--http-listen", f"127.0.0.1:{http_port}", "--shutdown-grace", "2s", "--query-timeout", "1s"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"https://localhost:{http_port}"
    deadline = time.time() + 60
    while True:
        try:
            requests.get(base + "/healthz", verify=str(root / "ca.pem"), timeout=2)
            break
        except requests.RequestException:
            if process.poll() is not None or time.time() > deadline:
                log.close()
                pytest.fail("the TLS server did not start:\n" + log_path.read_text())
            time.sleep(0.1)
    token = requests.post(base + "/v1/login", auth=("alice", "alice-pw"), verify=str(root / "ca.pem"),
                          timeout=30).json()["token"]
    yield {"base": base, "http_port": http_port, "ca": str(root / "ca.pem"), "token": token}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log_path.read_text()
    log.close()


def test_the_http_port_speaks_tls_when_flight_does(tls, rest):
    base, ca = tls["base"], tls["ca"]
    document = requests.get(base + "/v1/openapi.json", verify=ca, timeout=10)
    assert document.status_code == 200
    assert document.json() == requests.get(rest["base"] + "/v1/openapi.json", timeout=10).json()
    rows = requests.post(base + "/v1/query", json={"sql": "SELECT x FROM t"}, verify=ca, timeout=30,
                         headers={"Authorization": f"Bearer {tls['token']}", "Accept": CSV})
    assert rows.text.splitlines() == ["x", "7"]
    # Without the CA the certificate is not trusted; plain HTTP gets no HTTP answer.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base + "/v1/openapi.json", timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls['http_port']}/v1/openapi.json", timeout=10)


def test_a_query_past_the_timeout_is_504(tls):
    started = time.monotonic()
    response = requests.post(
        tls["base"] + "/v1/query", json={"sql": "SELECT count(*) AS n FROM generate_series(1, 100000000000)"},
        headers={"Authorization": f"Bearer {tls['token']}"}, verify=tls["ca"], timeout=60,
    )
    refused = error_of(response, 504)
    assert refused["code"] == "DEADLINE_EXCEEDED" and "timeout" in refused["message"], refused
    assert time.monotonic() - started < 10
