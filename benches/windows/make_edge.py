#!/usr/bin/env python3
"""Labels that sit exactly on the windows' boundaries, beside the shared workload's feat_0.

The shared labels have random microsecond times, so practically no event falls exactly at a
label's time or exactly d before it: the windows' boundary rule ((t - d, t], not [t - d, t])
goes untested by them. This writes /tmp/pitdata-edge/<scale>/ with the same feat_0 (symbolic
links to /tmp/pitdata/<scale>) and new labels (same label_id and row count), a quarter each:

  1. the shared label's time truncated to the hour: 00:00 and 06:00 are the batch rows' instants
     (many events at exactly t and exactly t - 7 days), 01:00 and 07:00 put batch rows exactly at
     t - 1 hour;
  2. an event's own feature_ts, with its entity_id (the event is at exactly t);
  3. that feature_ts + 7 days (the event is exactly at t - 7 days: outside the window);
  4. that feature_ts + 1 hour (exactly at t - 1 hour: outside the 1-hour window).

Usage: make_edge.py --scale tiny   then   run_duckdb.py --data-dir /tmp/pitdata-edge/tiny --out …,
or   DATA=/tmp/pitdata-edge/tiny benches/windows/compare.sh PITLAKE_BIN tiny 1
"""
import argparse
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--table", default="feat_0")
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args()
    src = f"/tmp/pitdata/{a.scale}"
    dst = f"/tmp/pitdata-edge/{a.scale}"
    if not os.path.exists(os.path.join(src, "meta.json")):
        raise SystemExit(f"no data at {src}: run ../shared/bench/gen.py --scale {a.scale}")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(os.path.join(dst, "parquet"))
    os.makedirs(os.path.join(dst, "delta"))
    os.symlink(os.path.join(src, "parquet", a.table + ".parquet"), os.path.join(dst, "parquet", a.table + ".parquet"))
    os.symlink(os.path.join(src, "delta", a.table), os.path.join(dst, "delta", a.table))
    with open(os.path.join(src, "meta.json")) as f:
        meta = json.load(f)
    meta.update(k=1, edge_labels=True, source=src)
    with open(os.path.join(dst, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)

    lab = pq.read_table(os.path.join(src, "parquet", "labels.parquet"))
    ev = pq.read_table(os.path.join(src, "parquet", a.table + ".parquet"), columns=["entity_id", "feature_ts"])
    n = lab.num_rows
    rng = np.random.default_rng(a.seed)
    ent = lab.column("entity_id").to_numpy().copy()
    ts = lab.column("label_ts").cast("int64").to_numpy().copy()
    part = rng.integers(0, 4, n)
    pick = rng.integers(0, ev.num_rows, n)
    fe = ev.column("entity_id").to_numpy()[pick]
    ft = ev.column("feature_ts").cast("int64").to_numpy()[pick]
    ts = np.where(part == 0, ts - ts % US_PER_HOUR, ts)
    shift = np.select([part == 1, part == 2, part == 3], [0, 7 * US_PER_DAY, US_PER_HOUR], 0)
    ent = np.where(part == 0, ent, fe)
    ts = np.where(part == 0, ts, ft + shift)
    out = pa.table({
        "label_id": lab.column("label_id"),
        "entity_id": pa.array(ent, pa.int64()),
        "label_ts": pa.array(ts.astype("datetime64[us]"), pa.timestamp("us")),
    })
    pq.write_table(out, os.path.join(dst, "parquet", "labels.parquet"), compression="snappy")
    from deltalake import write_deltalake

    write_deltalake(os.path.join(dst, "delta", "labels"), out, mode="overwrite")
    print(f"{n} labels -> {dst} (hour-truncated {int((part == 0).sum())}, at an event {int((part == 1).sum())}, "
          f"event + 7 days {int((part == 2).sum())}, event + 1 hour {int((part == 3).sum())})")


if __name__ == "__main__":
    main()
