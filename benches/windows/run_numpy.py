#!/usr/bin/env python3
"""Independent oracle for the windowed query (see wcommon.py): numpy and a Python loop, no
query engine. Not a competitor: it exists to check the others, and its sums are exact
(math.fsum: the correctly rounded sum of the window's values), so an engine that claims exact
sums can be compared with it bit for bit (check_windows.py --rows counts the bit-identical
values). avg is fsum / count, i.e. the exact sum rounded, then divided.

How: events sorted once on the composite key entity_id * 2^45 + (feature_ts - base); a label's
window (t - d, t] is then the index range searchsorted(key(t - d), 'right') ..
searchsorted(key(t), 'right'). The loop over labels with a non-empty window is Python, so this
takes seconds at small and about a minute at medium.
"""
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wcommon import Timer, base_args, checksum, report, resolve, table_files, US_PER_DAY, US_PER_HOUR

SHIFT = 45


def read(a, name, cols):
    return pa.concat_tables([pq.read_table(f, columns=cols) for f in table_files(a, name)])


def ints(arr):
    return np.asarray(arr.combine_chunks().cast("int64").to_numpy())


def main():
    a = resolve(base_args("numpy", __doc__).parse_args(), "numpy")
    t = Timer()
    lab = read(a, "labels", ["label_id", "entity_id", "label_ts"])
    ev = read(a, a.table, ["entity_id", "feature_ts", a.col])
    t.lap("read")
    le, lt = ints(lab.column("entity_id")), ints(lab.column("label_ts"))
    fe, ft = ints(ev.column("entity_id")), ints(ev.column("feature_ts"))
    xa = ev.column(a.col).combine_chunks()
    fv = ~np.asarray(xa.is_null().to_numpy(zero_copy_only=False))
    fx = np.asarray(xa.fill_null(0.0).to_numpy())
    base = min(ft.min(), lt.min()) - 8 * US_PER_DAY
    span = max(ft.max(), lt.max()) - base
    emax = max(fe.max(), le.max())
    if span >= 1 << SHIFT or emax >= 1 << (62 - SHIFT) or min(fe.min(), le.min()) < 0:
        raise SystemExit("times or entity ids out of the oracle's composite-key range")
    fkey = (fe << SHIFT) + (ft - base)
    order = np.argsort(fkey, kind="stable")
    fkey, fx, fv = fkey[order], fx[order], fv[order]
    lkey = (le << SHIFT) + (lt - base)
    hi = np.searchsorted(fkey, lkey, side="right")
    lo7 = np.searchsorted(fkey, lkey - 7 * US_PER_DAY, side="right")
    lo1 = np.searchsorted(fkey, lkey - US_PER_HOUR, side="right")
    t.lap("sort_and_search")

    n = len(lkey)
    s7, av7, mx7, s1 = (np.full(n, np.nan) for _ in range(4))
    m7, m1 = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    cum_valid = np.concatenate([[0], np.cumsum(fv)])
    nn7 = cum_valid[hi] - cum_valid[lo7]
    nn1 = cum_valid[hi] - cum_valid[lo1]
    for i in np.flatnonzero(nn7 > 0):
        w = fx[lo7[i]:hi[i]][fv[lo7[i]:hi[i]]]
        s = math.fsum(w)
        s7[i], av7[i], mx7[i], m7[i] = s, s / len(w), w.max(), True
    for i in np.flatnonzero(nn1 > 0):
        s1[i] = math.fsum(fx[lo1[i]:hi[i]][fv[lo1[i]:hi[i]]])
        m1[i] = True
    t.lap("aggregate")

    def f64(v, m):
        return pa.array(v, pa.float64(), mask=~m)

    out = pa.table({
        "label_id": lab.column("label_id").combine_chunks(),
        "entity_id": lab.column("entity_id").combine_chunks(),
        "label_ts": lab.column("label_ts").combine_chunks(),
        "n_7d": pa.array(hi - lo7, pa.int64()),
        "sum_7d": f64(s7, m7), "avg_7d": f64(av7, m7), "max_7d": f64(mx7, m7), "sum_1h": f64(s1, m1),
    })
    pq.write_table(out, a.out, compression="snappy")
    t.lap("write")
    parts = None if a.no_checksum else checksum(out)
    report(a, out.num_rows, parts, t.total())


if __name__ == "__main__":
    main()
