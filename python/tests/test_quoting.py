"""Names and strings a caller passes are sent quoted: a quote in a name stays in the name, and
no name, path or option can change the statement that is sent. The unit cases pin the text;
the server cases show the server reads it as meant."""

import pyarrow as pa
import pytest

from pitlake import _sql
from pitlake.errors import InvalidArgument, NotFound

FEATURES = ["driver_stats.*", "SERVICE churn_v1"]


@pytest.mark.parametrize(
    "name, quoted",
    [("orders", '"orders"'), ('we"ird', '"we""ird"'), ("Mixed Case", '"Mixed Case"'), ("a'b", "\"a'b\"")],
)
def test_identifiers_are_quoted(name, quoted):
    assert _sql.ident(name) == quoted


def test_literals_double_their_quotes():
    assert _sql.literal("/tmp/it's/x.parquet") == "'/tmp/it''s/x.parquet'"


@pytest.mark.parametrize("bad", ["", "a\x00b"])
def test_empty_names_and_nul_characters_are_refused(bad):
    with pytest.raises(InvalidArgument):
        _sql.ident(bad)


@pytest.mark.parametrize(
    "item, sent",
    [
        ("driver_stats.*", '"driver_stats".*'),
        ("driver_stats.conv_rate", '"driver_stats"."conv_rate"'),
        ("SERVICE churn_v1", 'SERVICE "churn_v1"'),
        ("service  churn_v1", 'SERVICE "churn_v1"'),
        ('v"x.f', '"v""x"."f"'),
    ],
)
def test_feature_items(item, sent):
    assert _sql.feature(item) == sent


@pytest.mark.parametrize("item", ["driver_stats", ".x", "v.", "SERVICE"])
def test_malformed_feature_items_are_refused(item):
    with pytest.raises(InvalidArgument):
        _sql.feature(item)


@pytest.mark.parametrize(
    "labels, sent",
    [
        ("orders", '"orders"'),
        ("labels.orders", '"labels"."orders"'),
        ("SELECT * FROM orders;", "(SELECT * FROM orders)"),
        ("  with x AS (SELECT 1) SELECT * FROM x", "(with x AS (SELECT 1) SELECT * FROM x)"),
    ],
)
def test_label_relations(labels, sent):
    assert _sql.labels_relation(labels) == sent


def test_a_label_string_that_is_neither_a_name_nor_a_query_is_refused():
    with pytest.raises(InvalidArgument, match="table name"):
        _sql.labels_relation("orders; DROP TABLE secret")


def test_the_statement_text(alice):
    ts = alice.training_set(
        "orders", at="order_ts", features=FEATURES, with_event_times=True,
        with_versions=True, knowledge_time=False,
    )
    assert ts.sql == (
        'TRAINING SET LABELS "orders" AT "order_ts" FEATURES ("driver_stats".*, '
        'SERVICE "churn_v1") WITH EVENT TIMES WITH VERSIONS WITHOUT KNOWLEDGE TIME'
    )
    assert _sql.export(ts.sql, "/x/it's.csv", "CSV").endswith("TO '/x/it''s.csv' FORMAT csv")


def test_a_label_column_with_a_quote_in_its_name(alice):
    ts = alice.training_set(
        'SELECT driver_id, order_ts AS "we""ird", churned FROM orders',
        at='we"ird',
        features=FEATURES,
    )
    got = ts.to_arrow()
    assert got.column_names[:3] == ["driver_id", 'we"ird', "churned"]
    assert got.num_rows == 4


@pytest.mark.parametrize(
    "at",
    [
        'order_ts" FEATURES (driver_stats.*) --',
        "order_ts FEATURES (driver_stats.*) --",
        'order_ts") AS t; DROP TABLE secret; --',
    ],
)
def test_a_hostile_label_column_name_is_only_a_name(alice, at):
    with pytest.raises((NotFound, InvalidArgument)) as err:
        alice.training_set("orders", at=at, features=FEATURES).to_arrow()
    assert "AT" in str(err.value) or "column" in str(err.value), str(err.value)
    assert alice.sql("SELECT salary FROM secret").to_arrow().num_rows == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda fs: fs.training_set('orders";DROP', at="order_ts", features=FEATURES).to_arrow(),
        lambda fs: fs.training_set("orders", at="order_ts", features=['driver_stats".*,SERVICE "churn_v1']).to_arrow(),
        lambda fs: fs.describe('driver_stats" AS OF REGISTRY VERSION 0 --'),
        lambda fs: fs.history('driver_stats"; DROP TABLE secret; --'),
        lambda fs: fs.describe("churn", kind="model", version="1' AS OF REGISTRY VERSION 0 --"),
    ],
)
def test_hostile_names_are_not_found(alice, call):
    with pytest.raises(NotFound):
        call(alice)
    assert alice.sql("SELECT salary FROM secret").to_arrow().num_rows == 1


def test_an_export_path_with_a_quote(alice, tmp_path):
    folder = tmp_path / "it's here"
    folder.mkdir()
    to = str(folder / "churn.parquet")
    manifest = alice.export(alice.training_set("orders", at="order_ts", features=FEATURES), to=to)
    assert manifest["output"]["url"] == to
    assert (folder / "churn.parquet").exists()


def test_data_labels_of_an_unknown_kind_are_refused(alice):
    with pytest.raises(InvalidArgument, match="not dict"):
        alice.training_set({"driver_id": [1]}, at="order_ts", features=FEATURES)
    with pytest.raises(InvalidArgument, match="no columns"):
        alice.training_set(pa.table({}), at="order_ts", features=FEATURES)
