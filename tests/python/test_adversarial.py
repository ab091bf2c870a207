"""A real Python client (ADBC's Flight SQL driver) attacking a real `pitlake serve` as a user
with few grants: reads around the grants through expressions pitlake evaluates while planning,
pitlake's own schema, and statements built to take the server down. The server fixture is
test_flight's (one server per module, on loopback, stopped with SIGTERM; it must exit 0).
"""

import adbc_driver_manager
import pytest

from test_flight import TRAINING_SET, connect, server  # noqa: F401  (server is a fixture)

# What bob must never see: the `secret` table's salary, marked so it cannot be mistaken.
LEAK = "(SELECT CAST(salary AS VARCHAR) || '-xyzzy' FROM secret)"


def refused(server, user, password, sql):
    with connect(server, user, password) as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as err:
            cur.execute(sql)
            cur.fetch_arrow_table()
    return str(err.value)


@pytest.mark.parametrize(
    "sql",
    [
        f"WITH secret AS (SELECT 1 AS x) SELECT * FROM labels TIMESTAMP AS OF {LEAK}",
        f"WITH secret AS (SELECT 1 AS x) SELECT * FROM labels FOR SYSTEM_TIME AS OF {LEAK}",
        f"WITH secret AS (SELECT 1 AS x) SELECT * FROM labels TIMESTAMP AS OF now() - {LEAK}",
        f"SELECT * FROM labels TIMESTAMP AS OF {LEAK}",
    ],
)
def test_time_travel_bounds_cannot_read_a_forbidden_table(server, sql):
    message = refused(server, "bob", "bob-pw", sql)
    assert "42-xyzzy" not in message, message
    assert "must be a constant" in message or "may not use table `secret`" in message, message


def test_pitlakes_own_schema_is_unreachable_even_with_table_star(server):
    for sql in [
        'SELECT * FROM "_pitlake".registry',
        'DESCRIBE HISTORY "_pitlake".registry',
        'DROP TABLE "_pitlake".registry',
    ]:
        message = refused(server, "alice", "alice-pw", sql)
        assert "_pitlake" in message, message


def test_deep_and_huge_statements_are_refused_and_the_server_lives_on(server):
    for sql, reason in [
        ("SELECT " + "1+" * 3000 + "1", "levels deep"),
        ("SELECT " + "1+" * 400_000 + "1", "levels deep"),
        ("SELECT '" + "x" * (2 << 20) + "'", "1 MiB"),
        ("SELECT 1;" * 4000, "one at a time"),
        ("SELECT 1 AS a" + " UNION ALL SELECT 1 AS a" * 600, "levels deep"),
        ("SELECT CAST(NULL AS INT" + "[]" * 30_000 + ")", "levels deep"),
    ]:
        message = refused(server, "bob", "bob-pw", sql)
        assert reason in message, message[:500]
    # Within the bounds, deep statements are answered by the real server's threads.
    with connect(server, "bob", "bob-pw") as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 AS a" + " UNION ALL SELECT 1 AS a" * 200)
        assert cur.fetch_arrow_table().num_rows == 201
        cur.execute("SELECT " + "1+" * 250 + "1 AS n")
        assert cur.fetch_arrow_table().column("n").to_pylist() == [251]
    for user in ["bob", "alice"]:
        with connect(server, user, f"{user}-pw") as conn, conn.cursor() as cur:
            cur.execute(TRAINING_SET)
            assert cur.fetch_arrow_table().num_rows == 4
