#!/usr/bin/env python3
"""Windowed point-in-time aggregates with DuckDB (the query: see wcommon.py).

--form picks how the windows are written:

  rangejoin  labels LEFT JOIN events ON entity_id = entity_id
               AND feature_ts > label_ts - INTERVAL 7 DAY AND feature_ts <= label_ts
             GROUP BY the label; count(f.entity_id) is 0 for a label with no rows, the 1-hour
             sum is a FILTER on the same join. DuckDB plans it as a hash join on entity_id with
             the time bounds as a residual filter: the work grows with each entity's whole
             history, not only with its last 7 days.
  window     events UNION ALL labels, then window functions over
               PARTITION BY entity_id ORDER BY ts
               RANGE BETWEEN (d - 1 us) PRECEDING AND CURRENT ROW
             kept for the label rows only. RANGE frames include their lower bound, so the frame
             is [t - d + 1 us, t] = (t - d, t] for microsecond timestamps; CURRENT ROW includes
             the row's peers, so events at exactly label_ts count. Label rows carry NULL values
             and is_event = 0, so they add nothing to any aggregate.
"""
import duckdb

from wcommon import Timer, base_args, checksum_file, report, resolve, table_files, US_PER_DAY, US_PER_HOUR


def sql_list(files):
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def build_query(a):
    lab = f"read_parquet({sql_list(table_files(a, 'labels'))})"
    ev = f"read_parquet({sql_list(table_files(a, a.table))})"
    x = a.col
    if a.form == "rangejoin":
        return f"""
SELECT l.label_id, any_value(l.entity_id) AS entity_id, any_value(l.label_ts) AS label_ts,
       count(f.entity_id)::BIGINT AS n_7d,
       sum(f.{x}) AS sum_7d, avg(f.{x}) AS avg_7d, max(f.{x}) AS max_7d,
       sum(f.{x}) FILTER (WHERE f.feature_ts > l.label_ts - INTERVAL 1 HOUR) AS sum_1h
FROM {lab} l
LEFT JOIN (SELECT entity_id, feature_ts, {x} FROM {ev}) f
  ON l.entity_id = f.entity_id
 AND f.feature_ts > l.label_ts - INTERVAL 7 DAY
 AND f.feature_ts <= l.label_ts
GROUP BY l.label_id"""
    if a.form == "window":
        w7 = 7 * US_PER_DAY - 1
        w1 = US_PER_HOUR - 1
        frame = "PARTITION BY entity_id ORDER BY ts RANGE BETWEEN INTERVAL ({}) MICROSECOND PRECEDING AND CURRENT ROW"
        return f"""
WITH u AS (
  SELECT entity_id, feature_ts AS ts, {x} AS x, 1 AS is_event, NULL::BIGINT AS label_id FROM {ev}
  UNION ALL
  SELECT entity_id, label_ts AS ts, NULL::DOUBLE AS x, 0 AS is_event, label_id FROM {lab}
)
SELECT label_id, entity_id, ts AS label_ts,
       sum(is_event) OVER w7 ::BIGINT AS n_7d,
       sum(x) OVER w7 AS sum_7d, avg(x) OVER w7 AS avg_7d, max(x) OVER w7 AS max_7d,
       sum(x) OVER w1 AS sum_1h
FROM u
WINDOW w7 AS ({frame.format(w7)}), w1 AS ({frame.format(w1)})
QUALIFY is_event = 0"""
    raise SystemExit(f"unknown form {a.form}")


def main():
    ap = base_args("duckdb", __doc__)
    ap.add_argument("--form", default="rangejoin", choices=["rangejoin", "window"],
                    help="default rangejoin: the faster here at small and medium (README.md)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory-limit", default=None, help="e.g. 16GB")
    ap.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the query (runs it)")
    ap.add_argument("--print-sql", action="store_true", help="print the query and exit")
    a = ap.parse_args()
    a = resolve(a, "duckdb", None if a.form == "rangejoin" else a.form)

    t = Timer()
    q = build_query(a)
    if a.print_sql:
        print(q)
        return
    con = duckdb.connect()
    con.execute("SET temp_directory='/tmp/duckdb_tmp'")
    con.execute("SET preserve_insertion_order=false")  # result order is irrelevant
    if a.threads:
        con.execute(f"SET threads={a.threads}")
    if a.memory_limit:
        con.execute(f"SET memory_limit='{a.memory_limit}'")
    t.lap("setup")
    if a.explain:
        print(con.sql("EXPLAIN ANALYZE " + q).fetchall()[0][1])
        t.lap("explain_analyze")
    con.execute(f"COPY ({q}) TO '{a.out}' (FORMAT parquet, COMPRESSION snappy)")
    t.lap("query_and_write")
    parts = rows = None
    if not a.no_checksum:
        parts = checksum_file(a.out)
        rows = parts["rows"]
        t.lap("checksum")
    report(a, rows, parts, t.total())


if __name__ == "__main__":
    main()
