"""What the refusal paths of issue 10 cost the server: a script of 4,000 statements, deep
expression and set-operation chains, a 1 MiB statement; then small queries for the per-statement
cost. Starts `pitlake serve` ($PITLAKE_BIN, default the debug build) on loopback in a temporary
folder, with the helpers of tests/python/test_flight.py, and stops it.

    ~/.cache/pitlake-py-venv/bin/python benches/refusals.py
"""
import os
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
os.environ.setdefault("PITLAKE_BIN", os.path.expanduser("~/.cache/pitlake-target/debug/pitlake"))
import test_flight as tf  # noqa: E402  (found through the path above)
root = Path(tempfile.mkdtemp()); wh = root / "wh"; wh.mkdir()
tf.run_pitlake(wh, "sql", "CREATE TABLE labels AS SELECT 1 AS k")
h = tf.hash_password(wh, "bob-pw")
auth = root / "auth.toml"
auth.write_text(f'[users.bob]\npassword_hash = "{h}"\nroles = ["r"]\n[roles.r]\ngrants = ["table:labels"]\n')
proc, log, uri, _ = tf.start_server(root, wh, auth)
import adbc_driver_flightsql.dbapi as f
def rss():
    return int(open(f"/proc/{proc.pid}/status").read().split("VmHWM:")[1].split()[0]) // 1024
try:
    with f.connect(uri, db_kwargs={"username": "bob", "password": "bob-pw"}) as c, c.cursor() as cur:
        for name, sql in [("4,000 statements", "SELECT 1;" * 4000),
                          ("3,000-term chain", "SELECT " + "1+" * 3000 + "1"),
                          ("520,000-term chain (1 MiB)", "SELECT " + "1+" * 520_000 + "1"),
                          ("600 UNION ALL", "SELECT 1 AS a" + " UNION ALL SELECT 1 AS a" * 600)]:
            t = time.time()
            try:
                cur.execute(sql); cur.fetch_arrow_table(); out = "answered"
            except Exception as e:
                out = "refused"
            print(f"{name}: {out} in {time.time()-t:.2f} s; server peak RSS so far {rss()} MiB")
        t = time.time()
        for _ in range(200):
            cur.execute("SELECT k FROM labels WHERE k = 1"); cur.fetch_arrow_table()
        print(f"200 small queries: {(time.time()-t)/200*1000:.1f} ms each")
finally:
    proc.terminate(); proc.wait(); log.close()
