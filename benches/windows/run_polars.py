#!/usr/bin/env python3
"""Windowed point-in-time aggregates with Polars (the query: see wcommon.py).

Polars has no windowed join, so --form picks one of two ways around it:

  rolling    events and labels concatenated, sorted by (entity_id, ts, is_label) so a label comes
             after the events at its own instant, then per row
               x.rolling_{sum,max}_by("ts", window_size=d, closed="right").over("entity_id")
             (the window (t - d, t]) and the label rows kept. Label rows carry a NULL value and
             is_event = 0, so they add nothing. n_7d sums is_event; avg_7d is sum_7d over the
             rolling count of non-NULL values (so it averages the non-NULL values, as SQL does);
             the sums are NULL where that count is 0 (min_samples=1 counts non-NULL values).
  joinwhere  labels.join_where(events, entity_id equal, t - 7d < feature_ts <= t), group_by
             the label, then the labels left-joined back so that labels with an empty window
             keep a row (n_7d 0, NULL aggregates). join_where is an inner join only.
"""
import polars as pl

from wcommon import Timer, base_args, checksum_file, report, resolve, table_files


def scan(a, name):
    return pl.scan_parquet(table_files(a, name))


def build_rolling(a):
    x = a.col
    ev = scan(a, a.table).select(
        "entity_id", pl.col("feature_ts").alias("ts"), pl.col(x).alias("x"),
        pl.lit(1, pl.Int64).alias("is_event"), pl.lit(None, pl.Int64).alias("label_id"))
    lab = scan(a, "labels").select(
        "entity_id", pl.col("label_ts").alias("ts"), pl.lit(None, pl.Float64).alias("x"),
        pl.lit(0, pl.Int64).alias("is_event"), "label_id")
    u = pl.concat([ev, lab]).sort(["entity_id", "ts", "is_event"], descending=[False, False, True])

    def roll(expr, fn, d):
        return getattr(expr, f"rolling_{fn}_by")("ts", window_size=d, closed="right").over("entity_id")

    nonnull = pl.col("x").is_not_null().cast(pl.Int64)
    q = u.with_columns(
        roll(pl.col("is_event"), "sum", "7d").alias("n_7d"),
        roll(pl.col("x"), "sum", "7d").alias("s7"),
        roll(nonnull, "sum", "7d").alias("c7"),
        roll(pl.col("x"), "max", "7d").alias("max_7d"),
        roll(pl.col("x"), "sum", "1h").alias("s1"),
        roll(nonnull, "sum", "1h").alias("c1"),
    ).filter(pl.col("is_event") == 0)
    return q.select(
        "label_id", "entity_id", pl.col("ts").alias("label_ts"), pl.col("n_7d").cast(pl.Int64),
        pl.when(pl.col("c7") > 0).then(pl.col("s7")).alias("sum_7d"),
        pl.when(pl.col("c7") > 0).then(pl.col("s7") / pl.col("c7")).alias("avg_7d"),
        pl.when(pl.col("c7") > 0).then(pl.col("max_7d")).alias("max_7d"),
        pl.when(pl.col("c1") > 0).then(pl.col("s1")).alias("sum_1h"),
    )


def build_joinwhere(a):
    x = a.col
    lab = scan(a, "labels").select("label_id", "entity_id", "label_ts")
    ev = scan(a, a.table).select(pl.col("entity_id").alias("e"), "feature_ts", pl.col(x).alias("x"))
    # join_where takes columns, not expressions, as its predicates' operands
    lo = lab.with_columns((pl.col("label_ts") - pl.duration(days=7)).alias("lo_7d"))
    pairs = lo.join_where(
        ev,
        pl.col("entity_id") == pl.col("e"),
        pl.col("feature_ts") <= pl.col("label_ts"),
        pl.col("feature_ts") > pl.col("lo_7d"),
    )
    agg = pairs.group_by("label_id").agg(
        pl.len().cast(pl.Int64).alias("n_7d"),
        pl.col("x").sum().alias("s7"),
        pl.col("x").count().alias("c7"),
        pl.col("x").max().alias("max_7d"),
        pl.col("x").filter(pl.col("feature_ts") > pl.col("label_ts") - pl.duration(hours=1)).sum().alias("s1"),
        pl.col("x").filter(pl.col("feature_ts") > pl.col("label_ts") - pl.duration(hours=1)).count().alias("c1"),
    )
    q = lab.join(agg, on="label_id", how="left")
    return q.select(
        "label_id", "entity_id", "label_ts", pl.col("n_7d").fill_null(0),
        pl.when(pl.col("c7") > 0).then(pl.col("s7")).alias("sum_7d"),
        pl.when(pl.col("c7") > 0).then(pl.col("s7") / pl.col("c7")).alias("avg_7d"),
        pl.when(pl.col("c7") > 0).then(pl.col("max_7d")).alias("max_7d"),
        pl.when(pl.col("c1") > 0).then(pl.col("s1")).alias("sum_1h"),
    )


def main():
    ap = base_args("polars", __doc__)
    ap.add_argument("--form", default="rolling", choices=["rolling", "joinwhere"])
    ap.add_argument("--engine", default="in-memory", choices=["in-memory", "streaming", "auto"],
                    help="polars collect engine")
    ap.add_argument("--explain", action="store_true", help="print the optimized plan first")
    a = ap.parse_args()
    a = resolve(a, "polars", None if a.form == "rolling" else a.form)

    t = Timer()
    q = build_rolling(a) if a.form == "rolling" else build_joinwhere(a)
    if a.explain:
        print(q.explain())
    t.lap("setup")
    df = q.collect(engine=a.engine)
    t.lap("query")
    df.write_parquet(a.out, compression="snappy")
    t.lap("write")
    rows = df.height
    del df
    parts = None
    if not a.no_checksum:
        parts = checksum_file(a.out)
        t.lap("checksum")
    report(a, rows, parts, t.total())


if __name__ == "__main__":
    main()
