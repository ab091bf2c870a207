"""One real `pitlake serve` for the whole run, started here.

The binary is $PITLAKE_BIN (scripts/test.sh sets it). The fixture makes a warehouse in a
temporary folder with the pitlake CLI (tables, a registry, labels loaded as a table), an auth
file with four users, starts the server on a free loopback port with --insecure-plaintext, and
at the end stops it with SIGTERM, which must exit 0 with no password or token in its log.

Users: alice (reads and writes everything, registry:write, files), bob (reads orders and
driver_hourly_stats and the view driver_stats only), svc (a static token, alice's grants) and
mallory (locked out on purpose by the error tests).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pitlake

SETUP = """
CREATE TABLE driver_hourly_stats AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-01 00:00:00', 0.5, 10),
  (1, TIMESTAMP '2026-01-01 02:00:00', 0.6, 12),
  (2, TIMESTAMP '2026-01-01 01:00:00', 0.9, 30)) AS v(driver_id, event_ts, conv_rate, trips);
CREATE TABLE orders AS SELECT * FROM (VALUES
  (1, TIMESTAMP '2026-01-01 01:30:00', true),
  (1, TIMESTAMP '2026-01-01 03:00:00', false),
  (2, TIMESTAMP '2026-01-01 00:30:00', true),
  (3, TIMESTAMP '2026-01-02 00:00:00', false)) AS v(driver_id, order_ts, churned);
CREATE TABLE secret AS SELECT 42 AS salary;
CREATE ENTITY driver (driver_id BIGINT);
CREATE FEATURE VIEW driver_stats ENTITY driver FROM driver_hourly_stats
  EVENT TIME event_ts FEATURES (conv_rate, trips);
CREATE FEATURE SERVICE churn_v1 (driver_stats.conv_rate);
CREATE OR REPLACE FEATURE VIEW driver_stats ENTITY driver FROM driver_hourly_stats
  EVENT TIME event_ts TTL INTERVAL '7 days' FEATURES (conv_rate, trips);
"""

# The training set the label tests build, from a table and from uploaded data alike.
FEATURES = ["driver_stats.*", "SERVICE churn_v1"]


def label_data() -> pa.Table:
    """Labels as a data scientist would have them in memory: the types a warehouse table
    keeps (microsecond timestamps, 64-bit integers), a text column with a quote in it."""
    return pa.table(
        {
            "driver_id": pa.array([2, 1, 1, 3, 2], pa.int64()),
            "order_ts": pa.array(
                [
                    datetime(2026, 1, 1, 0, 30),
                    datetime(2026, 1, 1, 1, 30),
                    datetime(2026, 1, 1, 3, 0),
                    datetime(2026, 1, 2, 0, 0),
                    datetime(2026, 1, 1, 5, 0),
                ],
                pa.timestamp("us"),
            ),
            "churned": pa.array([True, True, False, False, None], pa.bool_()),
            "note": pa.array(["it's", None, "", "x" * 40, "ok"], pa.string()),
        }
    )


def pitlake_bin() -> str:
    path = os.environ.get("PITLAKE_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("set PITLAKE_BIN to the pitlake binary (scripts/test.sh does)")
    return path


def run_pitlake(warehouse: Path, *args: str, stdin: Optional[bytes] = None) -> str:
    done = subprocess.run(
        [pitlake_bin(), "--warehouse", str(warehouse), *args],
        input=stdin,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hash_password(warehouse: Path, password: str) -> str:
    return run_pitlake(warehouse, "serve", "--hash-password", stdin=password.encode() + b"\n").strip()


class Server:
    """A running `pitlake serve`."""

    def __init__(self, root: Path, warehouse: Path, args: List[str], env: Dict[str, str]):
        self.root = root
        self.warehouse = warehouse
        self.port = free_port()
        self.log_path = root / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                pitlake_bin(),
                "--warehouse",
                str(warehouse),
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--shutdown-grace",
                "2s",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PITLAKE_LOG": "pitlake=info", **env},
        )
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    self._log.close()
                    pytest.fail("pitlake serve did not start:\n" + self.log_text())
                time.sleep(0.1)

    def log_text(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._log.close()
        return code


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    """The warehouse, its auth file and what the CLI says about the label table."""
    root = tmp_path_factory.mktemp("pitlake")
    wh = root / "warehouse"
    wh.mkdir()
    run_pitlake(wh, "sql", SETUP)
    # The uploaded labels' twin, loaded as a table with the CLI and exported with the CLI:
    # the content hash an upload of the same labels must give.
    labels_file = root / "labels.parquet"
    pq.write_table(label_data(), labels_file)
    run_pitlake(wh, "ingest", "cli_labels", str(labels_file))
    cli_export = root / "cli-export.parquet"
    statement = (
        'TRAINING SET LABELS cli_labels AT order_ts FEATURES (driver_stats.*, SERVICE churn_v1)'
    )
    run_pitlake(wh, "export", statement, "--to", str(cli_export))
    token_out = run_pitlake(wh, "serve", "--new-token")
    token = re.search(r"token:\s+(\S+)", token_out).group(1)  # type: ignore[union-attr]
    sha256 = re.search(r'sha256 = "([0-9a-f]{64})"', token_out).group(1)  # type: ignore[union-attr]
    hashes = {user: hash_password(wh, f"{user}-pw") for user in ["alice", "bob", "mallory"]}
    auth = root / "auth.toml"
    auth.write_text(
        f"""
[users.alice]
password_hash = "{hashes['alice']}"
roles = ["admin"]
[users.bob]
password_hash = "{hashes['bob']}"
roles = ["reader"]
[users.mallory]
password_hash = "{hashes['mallory']}"
roles = ["reader"]
[users.svc]
tokens = [{{ sha256 = "{sha256}", expires = "2099-01-01T00:00:00Z" }}]
roles = ["admin"]
[roles.admin]
grants = ["table:*", "write:*", "registry:write", "files", "view:*"]
[roles.reader]
grants = ["table:orders", "table:driver_hourly_stats", "view:driver_stats"]
"""
    )
    return {
        "root": root,
        "path": wh,
        "auth": auth,
        "token": token,
        "cli_export": cli_export,
    }


@pytest.fixture(scope="session")
def server(warehouse: Dict[str, object]) -> Iterator[Server]:
    root = warehouse["root"]
    assert isinstance(root, Path)
    srv = Server(
        root,
        warehouse["path"],  # type: ignore[arg-type]
        [
            "--auth-file",
            str(warehouse["auth"]),
            "--insecure-plaintext",
            "--max-failed-logins-per-user",
            "3",
        ],
        {},
    )
    yield srv
    code = srv.stop()
    text = srv.log_text()
    assert code == 0, text
    for secret in ["alice-pw", "bob-pw", str(warehouse["token"]), "pl1."]:
        assert secret not in text, f"the server log shows a secret ({secret[:6]}…)"


@pytest.fixture(scope="session")
def uri(server: Server) -> str:
    return f"grpc://127.0.0.1:{server.port}"


@pytest.fixture
def alice(uri: str) -> Iterator[pitlake.Client]:
    with pitlake.connect(uri, username="alice", password="alice-pw") as client:
        yield client


@pytest.fixture
def bob(uri: str) -> Iterator[pitlake.Client]:
    with pitlake.connect(uri, username="bob", password="bob-pw") as client:
        yield client
