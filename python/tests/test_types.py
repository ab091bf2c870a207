"""Types that must come back exactly: timestamps with a time zone, decimals, lists; and the
client's content hash, which must equal the server's for every type a training set carries."""

import decimal
import zoneinfo
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pitlake
from conftest import FEATURES, run_pitlake

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
BIG = decimal.Decimal("-12345678901234567890123456789.123456789")


def test_tz_decimal_and_list_values_made_by_the_server(alice):
    got = alice.sql(
        "SELECT arrow_cast(TIMESTAMP '2026-03-29 01:30:00.123456', "
        "'Timestamp(Microsecond, Some(\"Europe/Paris\"))') AS ts, "
        f"CAST('{BIG}' AS DECIMAL(38, 9)) AS d, "
        "make_array(driver_id, NULL, 3) AS xs FROM orders WHERE driver_id = 2"
    ).to_arrow()
    assert got.schema.field("ts").type == pa.timestamp("us", tz="Europe/Paris")
    assert got.schema.field("d").type == pa.decimal128(38, 9)
    assert pa.types.is_list(got.schema.field("xs").type)
    assert got.schema.field("xs").type.value_type == pa.int64()
    row = got.to_pylist()[0]
    # The cast reads the wall-clock time in Paris: 01:30 there, half an hour before the clocks
    # go forward that night, is 00:30 UTC.
    assert row["ts"] == datetime(2026, 3, 29, 0, 30, 0, 123456, tzinfo=timezone.utc)
    assert str(row["ts"].tzinfo) == "Europe/Paris" and row["ts"].hour == 1
    assert row["d"] == BIG
    assert row["xs"] == [2, None, 3]
    frame = alice.sql("SELECT arrow_cast(TIMESTAMP '2026-03-29 01:30:00', "
                      "'Timestamp(Microsecond, Some(\"Europe/Paris\"))') AS ts, "
                      f"CAST('{BIG}' AS DECIMAL(38, 9)) AS d").to_pandas()
    assert str(frame["ts"].dt.tz) == "Europe/Paris"
    assert frame["d"][0] == BIG
    polars_frame = alice.sql(
        f"SELECT CAST('{BIG}' AS DECIMAL(38, 9)) AS d, make_array(driver_id, 2) AS xs "
        "FROM orders WHERE driver_id = 2"
    ).to_polars()
    assert str(polars_frame["d"].dtype).startswith("Decimal")
    assert polars_frame["d"].to_list() == [BIG]
    assert polars_frame["xs"].to_list() == [[2, 2]]


def test_a_table_written_from_python_comes_back_exactly(alice, warehouse, tmp_path):
    original = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "ts": pa.array(
                [datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc), None,
                 datetime(2026, 10, 25, 0, 59, 59, 999999, tzinfo=timezone.utc)],
                pa.timestamp("us", tz="UTC"),
            ),
            "d": pa.array([BIG, None, decimal.Decimal("0.000000001")], pa.decimal128(38, 9)),
            "xs": pa.array([[1, None, 3], [], None], pa.list_(pa.int64())),
            "names": pa.array([["a", "é"], None, [""]], pa.list_(pa.string())),
        }
    )
    path = tmp_path / "types.parquet"
    pq.write_table(original, path)
    run_pitlake(warehouse["path"], "ingest", "typed", str(path))
    got = alice.sql("SELECT * FROM typed ORDER BY id").to_arrow()
    assert got.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert got.schema.field("d").type == pa.decimal128(38, 9)
    # Values are identical; the list's child is named as Delta names it and strings may come
    # as string views, which is why the comparison casts to the original's schema.
    assert got.cast(original.schema).equals(original)
    assert got.to_pylist() == original.to_pylist()


# Label columns of each type, made by the server's SQL; each training set is exported, and the
# hash the client computes from the rebuilt rows must be the manifest's.
COLUMNS = {
    "int8": "arrow_cast(driver_id, 'Int8')",
    "int16": "arrow_cast(-driver_id, 'Int16')",
    "int32": "arrow_cast(driver_id * -100000, 'Int32')",
    "uint8": "arrow_cast(driver_id, 'UInt8')",
    "uint16": "arrow_cast(driver_id, 'UInt16')",
    "uint32": "arrow_cast(driver_id, 'UInt32')",
    "uint64": "arrow_cast(driver_id, 'UInt64')",
    "float16": "arrow_cast(-1.5, 'Float16')",
    "float32": "arrow_cast(CASE WHEN driver_id = 1 THEN -0.0 ELSE 2.5 END, 'Float32')",
    "float64_nan": "CASE WHEN churned THEN CAST('NaN' AS DOUBLE) ELSE -3.25 END",
    "float64_inf": "CASE WHEN churned THEN CAST('-inf' AS DOUBLE) END",
    "utf8_null": "CAST(NULL AS VARCHAR)",
    "large_utf8": "arrow_cast(CASE WHEN churned THEN 'x' END, 'LargeUtf8')",
    "utf8_view": "arrow_cast('0123456789abcdef0123456789abcdef-and-more-than-32-bytes', 'Utf8View')",
    "binary": "arrow_cast('bin', 'Binary')",
    "fixed_binary": "arrow_cast(arrow_cast('abc', 'Binary'), 'FixedSizeBinary(3)')",
    "decimal128": "CAST(-12345678901234567890.123456789 AS DECIMAL(38, 9))",
    "decimal256": "arrow_cast(CAST(1.25 AS DECIMAL(10, 2)), 'Decimal256(40, 2)')",
    "date32": "CAST(order_ts AS DATE)",
    "date64": "arrow_cast(CAST(order_ts AS DATE), 'Date64')",
    "time32": "arrow_cast(arrow_cast(1000, 'Int32'), 'Time32(Millisecond)')",
    "time64": "arrow_cast(arrow_cast(1000, 'Int64'), 'Time64(Nanosecond)')",
    "timestamp_tz": "arrow_cast(order_ts, 'Timestamp(Nanosecond, Some(\"Europe/Paris\"))')",
    "timestamp_ms": "arrow_cast(order_ts, 'Timestamp(Millisecond, None)')",
    "duration": "arrow_cast(arrow_cast(5, 'Int64'), 'Duration(Second)')",
    "list": "make_array(driver_id, NULL, 3)",
    "struct": "named_struct('a', driver_id, 'b', CASE WHEN churned THEN 'x' END)",
    "null": "NULL",
}


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_the_content_hash_is_the_servers(alice, tmp_path, name):
    labels = f"SELECT driver_id, order_ts, churned, {COLUMNS[name]} AS {name} FROM orders"
    ts = alice.training_set(labels, at="order_ts", features=FEATURES)
    manifest = alice.export(ts, to=str(tmp_path / f"{name}.parquet"))
    rebuilt = alice.sql(manifest["query"]).to_arrow()
    assert pitlake.content_hash(rebuilt) == manifest["output"]["content_hash"]


def test_the_content_hash_ignores_order_and_batches_but_not_values_or_types():
    table = pa.table({"k": [1, 2, 3, None], "s": ["a", None, "", "x" * 70]})
    reference = pitlake.content_hash(table)
    assert reference.startswith("rows4:sha256sum:")
    shuffled = table.take([3, 1, 0, 2])
    assert pitlake.content_hash(pa.Table.from_batches(shuffled.to_batches(max_chunksize=1))) == reference
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=3))
    assert pitlake.content_hash(reader) == reference
    assert pitlake.content_hash(table.slice(1)) != reference
    changed = table.set_column(1, "s", pa.array(["a", None, None, "x" * 70]))
    assert pitlake.content_hash(changed) != reference
    assert pitlake.content_hash(table.cast(pa.schema([("k", pa.int32()), ("s", pa.string())]))) != reference


def test_a_type_the_client_cannot_hash_says_so():
    with pytest.raises(pitlake.errors.Unimplemented, match="month_day_nano"):
        pitlake.content_hash(pa.table({"i": pa.array([(1, 2, 3)], pa.month_day_nano_interval())}))
