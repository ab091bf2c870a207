"""Labels from memory: pandas, polars and Arrow data uploaded with Flight SQL bulk ingest
(ADBC's adbc_ingest, temporary=True) into a table only the uploading session sees, named in
the training set, and dropped afterwards.

The contract with the server: an ingested temporary table is visible to the same session (the
same bearer token) by its bare name, until it is dropped or the session ends. The training set
of uploaded labels is the one of the same labels loaded as a table with the CLI: same rows, same
content hash as `pitlake export` gives (the fixture loads and exports them).
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pitlake
from conftest import FEATURES, label_data
from pitlake.errors import NotFound


def cli_manifest(warehouse):
    return json.loads((warehouse["cli_export"].parent / "cli-export.parquet.manifest.json").read_text())


def as_pandas(table):
    return table.to_pandas()


def as_polars(table):
    import polars

    return polars.from_arrow(table)


def as_reader(table):
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))


FORMS = {
    "pandas": as_pandas,
    "polars": as_polars,
    "arrow_table": lambda t: t,
    "arrow_batch": lambda t: t.to_batches()[0],
    "arrow_reader": as_reader,
}


def temporary_tables(client):
    objects = client._conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    return [
        t["table_name"]
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for t in schema["db_schema_tables"] or []
        if t["table_name"].startswith("pitlake_labels_")
    ]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_uploaded_labels_export_like_the_cli(alice, warehouse, tmp_path, form):
    labels = FORMS[form](label_data())
    ts = alice.training_set(labels, at="order_ts", features=FEATURES)
    assert ts.labels_uploaded
    manifest = alice.export(ts, to=str(tmp_path / f"{form}.parquet"))
    expected = cli_manifest(warehouse)
    assert manifest["output"]["content_hash"] == expected["output"]["content_hash"]
    assert pq.read_table(tmp_path / f"{form}.parquet").to_pylist() == pq.read_table(
        warehouse["cli_export"]
    ).to_pylist()
    assert temporary_tables(alice) == []


@pytest.mark.parametrize("form", ["pandas", "polars", "arrow_table"])
def test_uploaded_labels_give_the_cli_rows(alice, warehouse, form):
    ts = alice.training_set(FORMS[form](label_data()), at="order_ts", features=FEATURES)
    got = ts.to_arrow()
    assert pitlake.content_hash(got) == cli_manifest(warehouse)["output"]["content_hash"]
    # A Table or a DataFrame can be uploaded again for another run.
    assert ts.to_pandas().shape == (got.num_rows, got.num_columns)
    assert temporary_tables(alice) == []


def test_the_temporary_table_is_the_sessions_alone_and_dropped_after(alice, uri):
    ts = alice.training_set(label_data(), at="order_ts", features=FEATURES)
    reader = ts.to_batches()
    name = ts.last_statement.split('LABELS "', 1)[1].split('"', 1)[0]
    assert name.startswith("pitlake_labels_") and len(name) == len("pitlake_labels_") + 32
    assert temporary_tables(alice) == [name]
    # Another session of the same user does not see it.
    with pitlake.connect(uri, username="alice", password="alice-pw") as other:
        with pytest.raises(NotFound):
            other.sql(f'SELECT * FROM "{name}"').to_arrow()
    assert sum(b.num_rows for b in reader) == label_data().num_rows
    with pytest.raises(NotFound):
        alice.sql(f'SELECT * FROM "{name}"').to_arrow()


def test_a_failed_training_set_still_drops_its_labels(alice):
    with pytest.raises(NotFound, match="nope"):
        alice.training_set(label_data(), at="order_ts", features=["nope.*"]).to_arrow()
    assert temporary_tables(alice) == []


def test_a_label_column_with_a_quote_in_its_name_uploaded(alice):
    labels = label_data().rename_columns(["driver_id", 'order"ts', "churned", "note"])
    got = alice.training_set(labels, at='order"ts', features=FEATURES).to_arrow()
    assert got.column_names[1] == 'order"ts'
    assert got.num_rows == labels.num_rows


def test_a_reader_uploads_once(alice):
    ts = alice.training_set(as_reader(label_data()), at="order_ts", features=FEATURES)
    assert ts.to_arrow().num_rows == 5
    with pytest.raises(pitlake.errors.InvalidArgument, match="once"):
        ts.to_arrow()


def test_another_users_upload_is_invisible(alice, bob):
    # bob has no write grant: the upload is his session's own. It runs with his grants, and
    # alice, who may read every table, does not see it.
    ts = bob.training_set(label_data(), at="order_ts", features=["driver_stats.*"])
    reader = ts.to_batches()
    name = ts.last_statement.split('LABELS "', 1)[1].split('"', 1)[0]
    with pytest.raises(NotFound):
        alice.sql(f'SELECT * FROM "{name}"').to_arrow()
    assert sum(b.num_rows for b in reader) == 5


def test_labels_larger_than_one_grpc_message_are_uploaded(alice):
    """FAILS today: a frame is sent as the batches it has, and a pandas DataFrame converts to
    one batch, so labels over 16 MiB (about 1.04M rows of an int64 key, a timestamp and a
    bool) are one gRPC message past the 16 MiB bound of both ends, and the upload fails with
    `ResourceExhausted: trying to send message larger than max (32500241 vs. 16777216)`."""
    small = label_data().select(["driver_id", "order_ts", "churned"])
    labels = pa.concat_tables([small] * 400_000).combine_chunks()
    assert labels.num_rows == 2_000_000 and labels.nbytes > 16 << 20
    got = alice.training_set(labels, at="order_ts", features=["driver_stats.*"]).to_arrow()
    assert got.num_rows == labels.num_rows
    assert temporary_tables(alice) == []
