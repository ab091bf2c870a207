"""The client against a real server: logins, queries, the registry, training sets, exports and
their reproduction, compared with what the CLI gives for the same statements."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pitlake
from conftest import FEATURES, run_pitlake
from pitlake.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReproductionMismatch,
    Unauthenticated,
)

TRAINING_SET = 'TRAINING SET LABELS orders AT order_ts FEATURES (driver_stats.*, SERVICE churn_v1)'


def cli_rows(warehouse, sql, tmp_path):
    out = tmp_path / "cli.parquet"
    run_pitlake(warehouse["path"], "sql", sql, "--format", "parquet", "-o", str(out))
    return pq.read_table(out)


def test_a_static_token_logs_in(uri, warehouse):
    with pitlake.connect(uri, token=warehouse["token"]) as fs:
        assert fs.sql("SELECT count(*) AS n FROM orders").to_arrow().to_pylist() == [{"n": 4}]


def test_settings_come_from_the_environment(uri, warehouse, monkeypatch):
    monkeypatch.setenv("PITLAKE_URI", uri)
    monkeypatch.setenv("PITLAKE_USERNAME", "bob")
    monkeypatch.setenv("PITLAKE_PASSWORD", "bob-pw")
    monkeypatch.delenv("PITLAKE_TOKEN", raising=False)
    with pitlake.connect() as fs:
        assert fs.views().column("name").to_pylist() == ["driver_stats"]
    monkeypatch.delenv("PITLAKE_USERNAME")
    monkeypatch.delenv("PITLAKE_PASSWORD")
    monkeypatch.setenv("PITLAKE_TOKEN", warehouse["token"])
    with pitlake.connect() as fs:
        assert fs.sql("SELECT salary FROM secret").to_arrow().num_rows == 1
    monkeypatch.setenv("PITLAKE_PASSWORD", "bob-pw")
    with pytest.raises(InvalidArgument, match="PITLAKE_TOKEN"):
        pitlake.connect()


def test_connect_refuses_what_cannot_work(uri, monkeypatch):
    monkeypatch.delenv("PITLAKE_URI", raising=False)
    with pytest.raises(InvalidArgument, match="PITLAKE_URI"):
        pitlake.connect(username="alice", password="alice-pw")
    with pytest.raises(InvalidArgument, match="not both"):
        pitlake.connect(uri, username="alice", password="alice-pw", token="t" * 40)
    with pytest.raises(InvalidArgument, match="both a user name and a password"):
        pitlake.connect(uri, username="alice")
    with pytest.raises(Unauthenticated):
        pitlake.connect(uri, token="not-a-token-of-this-server-at-all-0123456789")


def test_sql_results_in_every_form(alice):
    result = alice.sql("SELECT driver_id, order_ts, churned FROM orders ORDER BY order_ts, driver_id")
    table = result.to_arrow()
    assert table.column("driver_id").to_pylist() == [2, 1, 1, 3]
    frame = result.to_pandas()
    assert list(frame["driver_id"]) == [2, 1, 1, 3]
    assert str(frame["order_ts"].dtype).startswith("datetime64")
    polars_frame = result.to_polars()
    assert polars_frame["churned"].to_list() == [True, True, False, False]
    reader = result.to_batches()
    assert isinstance(reader, pa.RecordBatchReader)
    assert reader.read_all().equals(table)


def test_results_stream_with_progress(alice):
    seen = []
    reader = alice.sql("SELECT value AS id FROM generate_series(1, 200000) ORDER BY id").to_batches(
        progress=lambda rows, nbytes: seen.append((rows, nbytes))
    )
    first = reader.read_next_batch()
    assert first.num_rows < 200000, "the first batch came with the whole result"
    assert seen and seen[0][0] == first.num_rows
    total = first.num_rows + sum(b.num_rows for b in reader)
    assert total == 200000
    assert seen[-1][0] == 200000 and len(seen) > 1
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(seen, seen[1:]))


def test_parameters_are_bound(alice):
    got = alice.sql("SELECT churned FROM orders WHERE driver_id = ? ORDER BY order_ts", (1,))
    assert got.to_arrow().column("churned").to_pylist() == [True, False]


def test_training_sets_from_a_table_and_from_a_query_match_the_cli(alice, warehouse, tmp_path):
    expected = cli_rows(warehouse, TRAINING_SET, tmp_path)
    from_table = alice.training_set("orders", at="order_ts", features=FEATURES).to_arrow()
    assert from_table.to_pylist() == expected.to_pylist()
    assert from_table.column_names == [
        "driver_id", "order_ts", "churned", "driver_stats__conv_rate", "driver_stats__trips",
    ]
    from_query = alice.training_set(
        "SELECT driver_id, order_ts, churned FROM orders WHERE driver_id < 3",
        at="order_ts",
        features=FEATURES,
    ).to_pandas()
    assert len(from_query) == 3
    assert from_query["driver_stats__conv_rate"].tolist()[1:] == [0.5, 0.6]


def test_training_set_options(alice):
    table = alice.training_set(
        "orders", at="order_ts", features=["driver_stats.conv_rate"],
        with_event_times=True, with_versions=True,
    ).to_arrow()
    assert table.column_names[-3:] == [
        "driver_stats__conv_rate", "driver_stats__event_time", "driver_stats__table_version",
    ]
    assert table.column("driver_stats__table_version").to_pylist() == [0, 0, 0, 0]


def test_a_long_export_reports_progress_while_it_runs(alice, tmp_path):
    """`progress` hears of the rows written about once a second while the server writes
    (EXPORT … WITH PROGRESS), counts that only grow, then the whole export once. "Long" is
    longer than that second: an export that ends sooner (a fast machine) is tried again with
    twice the rows, up to 32M."""
    rows = 4_000_000
    while True:
        alice.execute(
            f"CREATE TABLE IF NOT EXISTS many_orders_{rows} AS SELECT (value % 2) + 1 AS "
            "driver_id, to_timestamp_seconds(1767225600 + value) AS order_ts FROM "
            f"generate_series(1, {rows})"
        )
        ts = alice.training_set(f"many_orders_{rows}", at="order_ts", features=["driver_stats.*"])
        seen = []
        manifest = alice.export(
            ts, to=str(tmp_path / f"many_{rows}.parquet"), progress=lambda r, b: seen.append((r, b))
        )
        assert manifest["output"]["rows"] == rows
        assert seen[-1] == (rows, manifest["output"]["bytes"])
        if len(seen) > 1 or rows >= 32_000_000:
            break
        rows *= 2
    during = seen[:-1]
    assert during, "no report while the export ran"
    counts = [r for r, _ in during]
    assert counts == sorted(counts) and counts[-1] <= rows


def test_export_returns_the_manifest_and_it_reproduces(alice, tmp_path):
    to = str(tmp_path / "churn.parquet")
    seen = []
    ts = alice.training_set("orders", at="order_ts", features=FEATURES)
    manifest = alice.export(ts, to=to, progress=lambda r, b: seen.append((r, b)))
    assert manifest["output"]["url"] == to and manifest["output"]["rows"] == 4
    assert manifest["statement"].startswith("EXPORT TRAINING SET LABELS")
    assert seen == [(4, manifest["output"]["bytes"])]
    on_disk = json.loads((tmp_path / "churn.parquet.manifest.json").read_text())
    assert on_disk == manifest
    # The client's hash of the rows is the server's.
    assert pitlake.content_hash(pq.read_table(to)) == manifest["output"]["content_hash"]
    assert pitlake.content_hash(ts.to_arrow()) == manifest["output"]["content_hash"]
    assert alice.reproduce(manifest) is True
    assert alice.reproduce(str(tmp_path / "churn.parquet.manifest.json")) is True


def test_reproduce_reads_the_pinned_versions_after_the_data_moves_on(alice, tmp_path):
    alice.execute(
        "CREATE TABLE moving AS SELECT * FROM (VALUES (1, TIMESTAMP '2026-01-01 05:00:00', true))"
        " AS v(driver_id, order_ts, churned)"
    )
    ts = alice.training_set("moving", at="order_ts", features=FEATURES)
    manifest = alice.export(ts, to=str(tmp_path / "moving.csv"))
    alice.execute("INSERT INTO moving VALUES (2, TIMESTAMP '2026-01-01 06:00:00', false)")
    assert ts.to_arrow().num_rows == 2
    assert alice.reproduce(manifest) is True


def test_reproduce_names_each_difference(alice, tmp_path):
    to = tmp_path / "churn.parquet"
    manifest = alice.export(alice.training_set("orders", at="order_ts", features=FEATURES), to=str(to))
    edited = json.loads(json.dumps(manifest))
    edited["output"]["content_hash"] = "rows4:sha256sum:" + "0" * 64
    with pytest.raises(ReproductionMismatch) as err:
        alice.reproduce(edited)
    assert err.value.differences[0].startswith("content hash: the manifest records rows4:sha256sum:000")
    shutil.copy(to, tmp_path / "kept.parquet")
    to.write_bytes(to.read_bytes()[:100])
    with pytest.raises(ReproductionMismatch, match="size: the manifest records") as err:
        alice.reproduce(manifest)
    assert any(d.startswith("sha256:") for d in err.value.differences)
    assert alice.reproduce(manifest, check_output=False) is True
    to.unlink()
    with pytest.raises(ReproductionMismatch, match="is missing"):
        alice.reproduce(manifest)


def test_a_delta_export_reproduces_with_a_warning_that_its_table_is_not_read(alice, tmp_path):
    manifest = alice.export(
        alice.training_set("orders", at="order_ts", features=FEATURES),
        to=str(tmp_path / "delta-out"),
        format="delta",
    )
    assert manifest["output"]["format"] == "delta"
    with pytest.warns(UserWarning, match="pitlake verify"):
        assert alice.reproduce(manifest) is True


def test_export_refuses_a_relative_path_and_needs_the_files_grant(alice, bob, tmp_path):
    ts = alice.training_set("orders", at="order_ts", features=FEATURES)
    with pytest.raises(InvalidArgument, match="absolute path or a URL"):
        alice.export(ts, to="exports/churn.parquet")
    with pytest.raises(InvalidArgument, match="parquet, csv, delta"):
        alice.export(ts, to=str(tmp_path / "x"), format="xlsx")
    with pytest.raises(PermissionDenied, match="files"):
        bob.export(bob.training_set("orders", at="order_ts", features=FEATURES), to=str(tmp_path / "b.parquet"))
    with pytest.raises(InvalidArgument, match="training set"):
        alice.export(alice.sql("SELECT 1"), to=str(tmp_path / "y.parquet"))


def test_the_registry(alice, bob):
    assert alice.views().column("name").to_pylist() == ["driver_stats"]
    assert alice.entities().column("name").to_pylist() == ["driver"]
    assert alice.services().column("name").to_pylist() == ["churn_v1"]
    assert alice.views(registry_version=0).num_rows == 0
    now = alice.describe("driver_stats")
    assert now["kind"] == "feature view"
    assert now["definition"]["ttl_seconds"] == 7 * 24 * 3600
    assert now["used by"] == "feature service `churn_v1`"
    before = alice.describe("driver_stats", registry_version=1)
    assert "ttl_seconds" not in before["definition"]
    assert alice.describe("churn_v1", kind="feature service")["definition"]["features"] == [
        {"view": "driver_stats", "feature": "conv_rate"}
    ]
    history = alice.history("driver_stats")
    assert history.column("registry_version").to_pylist() == [1, 3]
    assert history.column("action").to_pylist()[0] == "create"
    diff = alice.diff("driver_stats", 1, 3)
    assert diff.to_pylist() == [
        {"field": "ttl_seconds", "at_version_1": None, "at_version_3": "604800"}
    ]
    # bob sees the view his grants name, and nothing changes for him.
    assert bob.views().column("name").to_pylist() == ["driver_stats"]
    with pytest.raises(PermissionDenied, match="registry:write"):
        bob.execute("CREATE ENTITY customer (customer_id BIGINT)")


def test_dsl_statements_run_with_execute(alice, tmp_path):
    report = alice.execute("CREATE ENTITY IF NOT EXISTS store (store_id BIGINT) COMMENT 'a store'")
    assert "store" in report.column(0)[0].as_py()
    manifest = alice.export(
        alice.training_set("orders", at="order_ts", features=["SERVICE churn_v1"]),
        to=str(tmp_path / "m.parquet"),
    )
    alice.execute(
        "REGISTER MODEL churn VERSION '1' SERVICE churn_v1 TRAINING SET '"
        + str(tmp_path / "m.parquet.manifest.json").replace("'", "''")
        + "'"
    )
    assert alice.models().column("name").to_pylist() == ["churn@1"]
    model = alice.describe("churn", kind="model", version="1")
    assert model["definition"]["service"] == "churn_v1"
    assert manifest["output"]["rows"] == 4
    with pytest.raises(NotFound):
        alice.describe("churn", kind="model", version="2")
