#!/usr/bin/env python3
"""Compare windowed-aggregate results (Parquet files with the columns of wcommon.OUT_COLS).

  check_windows.py A.parquet [B.parquet ...]         checksum of each; each compared with A
  check_windows.py --rows A.parquet B.parquet ...    also value by value, matched on label_id

The checksum verdict follows wcommon.compare_parts: exact parts equal, float sums within
REL = 1e-9 of their scale. --rows compares every label row: n_7d and max_7d exactly (bit for
bit, NULLs in the same places), sum_7d / avg_7d / sum_1h with NULLs in the same places and
|x - y| <= REL * max(1, |x|, |y|); it also counts how many of those are bit-identical, and
prints the first differing label rows. Exit status 1 if any file differs from A.
"""
import argparse
import json
import sys

import numpy as np
import pyarrow.parquet as pq

from wcommon import FLOAT_COLS, OUT_COLS, REL, checksum, compare_parts, digest


def by_label(table):
    """Columns as numpy arrays indexed by label_id (label_id must be 0..N-1, each once)."""
    ids = table.column("label_id").to_numpy()
    n = len(ids)
    if n and (ids.min() < 0 or ids.max() >= n or np.bincount(ids, minlength=n).max() != 1):
        raise SystemExit("label_id is not a permutation of 0..N-1: rows lost or repeated")
    out = {}
    for c in OUT_COLS[1:]:
        arr = table.column(c).combine_chunks()
        if c in ("entity_id", "label_ts"):
            arr = arr.cast("int64")
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
        vals = np.asarray(arr.fill_null(0).to_numpy())
        v2 = np.empty_like(vals)
        v2[ids] = vals
        m2 = np.empty(n, dtype=bool)
        m2[ids] = valid
        out[c] = (v2, m2)
    return out


def compare_rows(a, b, show=5):
    """Returns (ok, lines) for two by_label dicts."""
    lines, ok = [], True
    n = len(a["n_7d"][0])
    if len(b["n_7d"][0]) != n:
        return False, [f"row counts differ: {n} vs {len(b['n_7d'][0])}"]
    for c in OUT_COLS[1:]:
        (x, xm), (y, ym) = a[c], b[c]
        null_diff = xm != ym
        both = xm & ym
        if c in ("entity_id", "label_ts", "n_7d", "max_7d"):
            bad = null_diff | (both & (x != y))
            note = "exact"
        else:
            tol = REL * np.maximum(1.0, np.maximum(np.abs(x), np.abs(y)))
            bad = null_diff | (both & (np.abs(x - y) > tol))
            same = int((both & (x == y)).sum())
            rel = np.abs(x - y)[both] / np.maximum(1.0, np.abs(x[both]))
            note = (f"{same}/{int(both.sum())} bit-identical, max |diff|/max(1,|x|) "
                    f"{(rel.max() if rel.size else 0.0):.3g}")
        nbad = int(bad.sum())
        lines.append(f"  {c:<9} {'ok' if nbad == 0 else f'{nbad} DIFFER'}  ({note})")
        if nbad:
            ok = False
            for i in np.flatnonzero(bad)[:show]:
                fx = x[i].item() if xm[i] else None
                fy = y[i].item() if ym[i] else None
                lines.append(f"    label_id {i}: {fx!r} vs {fy!r}")
    return ok, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--rows", action="store_true", help="also compare value by value on label_id")
    ap.add_argument("--quiet", action="store_true", help="print only the verdict lines")
    a = ap.parse_args()
    tables = [pq.read_table(f, columns=OUT_COLS) for f in a.files]
    parts = [checksum(t) for t in tables]
    for f, p in zip(a.files, parts):
        print(f"{digest(p)}  {f}")
        if not a.quiet:
            print("  " + json.dumps(p))
    ok = True
    base = by_label(tables[0]) if a.rows else None
    for f, t, p in zip(a.files[1:], tables[1:], parts[1:]):
        diffs = compare_parts(parts[0], p)
        if diffs:
            ok = False
            print(f"checksum of {f} differs from {a.files[0]}:")
            for d in diffs:
                print("  " + d)
        if a.rows:
            rok, lines = compare_rows(base, by_label(t))
            print(f"rows of {f} vs {a.files[0]}: {'equal within tolerance' if rok else 'DIFFER'}")
            for line in lines:
                print(line)
            ok = ok and rok
    if len(a.files) > 1:
        print("verdict: " + ("equal" if ok else "DIFFER"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
