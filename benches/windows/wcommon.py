"""Shared pieces of the windowed point-in-time benchmark: arguments, input files, the query's
definition, and the checksum every engine's result is judged by.

The query (one event table, here the shared workload's feat_0, and its labels): for every label
row (label_id, entity_id, label_ts), exactly once, over the feature rows with the same entity_id
and feature_ts in (label_ts - d, label_ts]:

  n_7d    count(*)        d = 7 days     0 when the window is empty
  sum_7d  sum(f0_a)       d = 7 days     NULL when the window has no non-NULL f0_a
  avg_7d  avg(f0_a)       d = 7 days     sum / count of the non-NULL values; NULL likewise
  max_7d  max(f0_a)       d = 7 days     NULL likewise
  sum_1h  sum(f0_a)       d = 1 hour     NULL likewise

f0_a is float64, normal(0, 1), ~1% NULL; the timestamps are microseconds without a time zone,
so "7 days" is exactly 604,800,000,000 us. No knowledge time (created_ts plays no part):
re-deliveries of a (entity_id, feature_ts) count as rows of their own.

Result schema written by every engine (any row order):
  label_id int64, entity_id int64, label_ts timestamp[us],
  n_7d int64, sum_7d, avg_7d, max_7d, sum_1h float64

The checksum (see checksum() for the exact rule, and README.md for why):
  exact parts, compared for equality:
    rows, label_sum = sum(label_id), n_sum = sum(n_7d),
    n_w  = sum(((label_id % P) * ((n_7d + 1) % P)) % P)   ties each count to its label row,
    nn_<c> = count of non-NULL values of each float column,
    max_f = sum(floor(max_7d * 1e6)),
    max_w = sum(((label_id % P) * (floor(max_7d * 1e6) % P)) % P)
            (a max is one of the inputs, bit for bit, in every engine: no rounding can differ)
  tolerant parts, for the float aggregates that involve arithmetic (sum_7d, avg_7d, sum_1h):
    s_<c> = fsum(x * h(label_id)),  a_<c> = fsum(|x| * h(label_id))
    with h(label_id) in [1, 2) a fixed pseudo-random weight per label, so that a value moved to
    another label changes s_<c>. Two results pass when the exact parts are equal and, for each
    c, |s1 - s2| <= REL * max(a1, a2) and |a1 - a2| <= REL * max(a1, a2), REL = 1e-9: which
    holds whenever every value agrees to REL relative (|x1 - x2| <= REL * |x|), whatever order
    each engine summed in.
  checksum = first 16 hex chars of sha1 over the exact parts only, so equal digests mean the
  same counts, the same non-NULL pattern and the same maxima for every label row.
"""
import argparse
import hashlib
import json
import math
import os
import time

import numpy as np

P = 1_000_000_007
REL = 1e-9
US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
FLOAT_COLS = ["sum_7d", "avg_7d", "max_7d", "sum_1h"]
TOLERANT_COLS = ["sum_7d", "avg_7d", "sum_1h"]
OUT_COLS = ["label_id", "entity_id", "label_ts", "n_7d"] + FLOAT_COLS


def base_args(engine, description=""):
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--data-dir", default=None, help="default /tmp/pitdata/<scale>")
    ap.add_argument("--format", default="delta", choices=["delta", "parquet"],
                    help="read the Delta tables (file list from the Delta log) or the plain Parquet copies")
    ap.add_argument("--table", default="feat_0", help="the event table (default feat_0)")
    ap.add_argument("--col", default=None, help="the float column aggregated (default f<k>_a of --table)")
    ap.add_argument("--out", default=None, help=f"default /tmp/pitout/{engine}_windows_<scale>.parquet")
    ap.add_argument("--no-checksum", action="store_true", help="skip the checksum pass")
    return ap


def resolve(a, engine, variant=None):
    a.data_dir = a.data_dir or f"/tmp/pitdata/{a.scale}"
    if not os.path.exists(os.path.join(a.data_dir, "meta.json")):
        raise SystemExit(f"no data at {a.data_dir}: run ../shared/bench/gen.py --scale {a.scale}")
    if a.col is None:
        a.col = "f" + a.table.rsplit("_", 1)[-1] + "_a"
    name = engine + (f"-{variant}" if variant else "")
    a.out = a.out or f"/tmp/pitout/{name}_windows_{a.scale}.parquet"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    a.engine_name = name
    return a


def table_files(a, name):
    """The Parquet files making up table `name` in the chosen format."""
    if a.format == "parquet":
        return [os.path.join(a.data_dir, "parquet", name + ".parquet")]
    from deltalake import DeltaTable

    return [u.replace("file://", "") for u in DeltaTable(os.path.join(a.data_dir, "delta", name)).file_uris()]


def label_weight(label_id):
    """h(label_id) in [1, 2): a fixed multiplicative hash of the id, exact in float64."""
    u = (label_id.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)
    return 1.0 + u.astype(np.float64) / float(1 << 32)


def _col(table, name):
    arr = table.column(name).combine_chunks()
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    return np.asarray(arr.fill_null(0).to_numpy()), valid


def checksum(table):
    """The parts described in the module doc, from a pyarrow Table with OUT_COLS."""
    label_id, lvalid = _col(table, "label_id")
    if not lvalid.all():
        raise ValueError("label_id has NULLs")
    n, nvalid = _col(table, "n_7d")
    d = {"rows": int(table.num_rows), "label_sum": int(label_id.sum()),
         "n_null": int((~nvalid).sum()), "n_sum": int(n.sum()),
         "n_w": int((((label_id % P) * ((n + 1) % P)) % P).sum())}
    h = label_weight(label_id)
    for c in FLOAT_COLS:
        x, v = _col(table, c)
        d[f"nn_{c}"] = int(v.sum())
        if c == "max_7d":
            q = np.floor(x[v] * 1e6).astype(np.int64)
            d["max_f"] = int(q.sum())
            d["max_w"] = int((((label_id[v] % P) * (q % P)) % P).sum())
        else:
            d[f"s_{c}"] = math.fsum(x[v] * h[v])
            d[f"a_{c}"] = math.fsum(np.abs(x[v]) * h[v])
    return d


def digest(parts):
    exact = {k: v for k, v in parts.items() if isinstance(v, int)}
    return hashlib.sha1(json.dumps(exact, sort_keys=True).encode()).hexdigest()[:16]


def compare_parts(p1, p2, rel=REL):
    """List of human-readable differences between two checksums ([] when they agree)."""
    bad = []
    for k in sorted(set(p1) | set(p2)):
        v1, v2 = p1.get(k), p2.get(k)
        if isinstance(v1, int) and isinstance(v2, int):
            if v1 != v2:
                bad.append(f"{k}: {v1} != {v2}")
        elif k.startswith("a_") or k.startswith("s_"):
            scale = max(p1.get("a_" + k[2:], 0.0), p2.get("a_" + k[2:], 0.0))
            if v1 is None or v2 is None or abs(v1 - v2) > rel * scale:
                bad.append(f"{k}: {v1!r} vs {v2!r} (allowed {rel * scale:.3g})")
        elif v1 != v2:
            bad.append(f"{k}: {v1!r} != {v2!r}")
    return bad


def checksum_file(path):
    import pyarrow.parquet as pq

    return checksum(pq.read_table(path, columns=OUT_COLS))


def report(a, rows, parts, timings):
    out = dict(engine=a.engine_name, query="windows", scale=a.scale, format=a.format, table=a.table,
               col=a.col, rows=rows, checksum=(digest(parts) if parts else None),
               timings_s={k: round(v, 3) for k, v in timings.items()}, parts=parts)
    print(json.dumps(out))


class Timer:
    def __init__(self):
        self.t = {}
        self._t0 = time.perf_counter()
        self._last = self._t0

    def lap(self, name):
        now = time.perf_counter()
        self.t[name] = now - self._last
        self._last = now

    def total(self):
        self.t["total_in_script"] = time.perf_counter() - self._t0
        return self.t
