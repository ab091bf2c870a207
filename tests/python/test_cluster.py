"""pitlake on a Ballista cluster of its own processes on loopback: `pitlake cluster scheduler`,
two `pitlake cluster executor`s, and clients with `--cluster df://…`: the CLI, exports and their
manifests, a Flight SQL gateway (`serve --cluster`) whose grants still decide what a caller may
ask, and an executor killed in the middle of a query.

Run through scripts/test.sh, or: PITLAKE_BIN=target/debug/pitlake pytest tests/python
"""

import json
import os
import subprocess
import threading
import time
import uuid

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pytest

from test_flight import free_port, hash_password, pitlake_bin, run_pitlake, start_server

SETUP = """
CREATE TABLE labels AS SELECT * FROM (VALUES
  (1, 10, TIMESTAMP '2026-01-01 00:00:10'), (2, 20, TIMESTAMP '2026-01-01 00:00:20'),
  (3, 10, TIMESTAMP '2026-01-01 00:00:30'), (4, 30, TIMESTAMP '2026-01-01 00:00:05'),
  (5, NULL, TIMESTAMP '2026-01-01 00:00:40')) AS v(label_id, entity, at);
CREATE TABLE feats AS SELECT * FROM (VALUES
  (10, TIMESTAMP '2026-01-01 00:00:01', 1.5), (10, TIMESTAMP '2026-01-01 00:00:25', 2.5),
  (20, TIMESTAMP '2026-01-01 00:00:20', 3.5), (30, TIMESTAMP '2026-01-01 00:00:06', 4.5))
  AS v(entity, ts, value);
CREATE TABLE big_labels AS SELECT value AS id, value % 1000 AS k, value AS t
  FROM generate_series(1, 200000);
INSERT INTO big_labels SELECT value AS id, value % 1000 AS k, value AS t
  FROM generate_series(200001, 400000);
CREATE TABLE big_feats AS SELECT value % 1000 AS k, value AS t, value * 2 AS v
  FROM generate_series(1, 2000000);
CREATE ENTITY driver (entity BIGINT);
CREATE FEATURE VIEW fv ENTITY driver FROM feats EVENT TIME ts FEATURES (value);
CREATE ENTITY key (k BIGINT);
CREATE FEATURE VIEW big_fv ENTITY key FROM big_feats EVENT TIME t FEATURES (v);
"""

ASOF = (
    "SELECT l.label_id, f.value FROM labels l ASOF LEFT JOIN feats f "
    "ON l.entity = f.entity AND l.at >= f.ts ORDER BY l.label_id"
)
TRAINING_SET = "TRAINING SET LABELS labels AT at FEATURES (fv.value)"
BIG_TRAINING_SET = "TRAINING SET LABELS big_labels AT t FEATURES (big_fv.v)"


def s3_env():
    """The S3 test server (moto) that scripts/test.sh starts, as every pitlake process of this
    module (clients and executors alike) reaches it: through the `AWS_*` variables."""
    endpoint = os.environ.get("PITLAKE_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.fail("PITLAKE_TEST_S3_ENDPOINT is not set: run through scripts/test.sh, or start "
                    "the servers with `eval \"$(scripts/storage-servers.sh start)\"`")
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "pitlake-test",
        "AWS_SECRET_ACCESS_KEY": "pitlake-test-secret",
    }


class Cluster:
    """A scheduler and executors started as processes; they exit with this test process."""

    def __init__(self, root, executors=2):
        self.root = root
        self.processes = []
        line = self._start(
            ["scheduler", "--listen", "127.0.0.1:0", "--executor-timeout", "3s"],
            "scheduler",
            "listening on ",
        )
        self.address = "df://" + line.split("listening on ", 1)[1].strip()
        self.executors = [self.add_executor(i) for i in range(executors)]

    def _start(self, args, name, wait_for):
        log = open(self.root / f"{name}.log", "wb")
        process = subprocess.Popen(
            [pitlake_bin(), "cluster", *args, "--parent-pid", str(os.getpid())],
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **s3_env(), "PITLAKE_MEMORY_LIMIT": "1GiB"},
        )
        self.processes.append(process)
        found = []

        def read():
            for raw in process.stdout:
                text = raw.decode().strip()
                if text.startswith(wait_for):
                    found.append(text)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + 60
        while not found:
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"pitlake cluster {args[0]} did not start:\n"
                            + (self.root / f"{name}.log").read_text())
            time.sleep(0.05)
        return found[0]

    def add_executor(self, i):
        port = free_port()
        self._start(
            ["executor", "--scheduler", self.address.removeprefix("df://"),
             "--listen", f"127.0.0.1:{port}", "--task-port", str(free_port()),
             "--slots", "2", "--heartbeat", "1s",
             "--work-dir", str(self.root / f"executor-{i}")],
            f"executor-{i}",
            "ready",
        )
        return self.processes[-1]

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-warehouse")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    run_pitlake(warehouse, "sql", SETUP)
    return warehouse


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


def pitlake(warehouse, *args, timeout=300):
    return subprocess.run(
        [pitlake_bin(), "--warehouse", str(warehouse), *args],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **s3_env()},
    )


def test_queries_on_the_cluster_equal_single_node(warehouse, cluster):
    for sql in [
        ASOF,
        TRAINING_SET,
        "SELECT count(*), sum(f.v) FROM big_labels l ASOF JOIN big_feats f "
        "ON l.k = f.k AND l.t >= f.t",
    ]:
        local = pitlake(warehouse, "sql", "--format", "csv", sql)
        remote = pitlake(warehouse, "--cluster", cluster.address, "sql", "--format", "csv", sql)
        assert local.returncode == 0, local.stderr.decode()
        assert remote.returncode == 0, remote.stderr.decode()
        assert remote.stdout == local.stdout, sql
    # A session cannot turn the co-partitioned joins off on the cluster: the scheduler plans
    # every keyed join co-partitioned, so each task indexes its own share of the right side.
    sql = ("SELECT count(*), sum(f.v) FROM big_labels l ASOF LEFT JOIN big_feats f "
           "ON l.k = f.k AND l.t >= f.t")
    local = pitlake(warehouse, "sql", "--format", "csv", sql)
    for statement in [sql, "EXPLAIN " + sql]:
        remote = pitlake(warehouse, "--cluster", cluster.address, "sql", "--format", "csv",
                         "SET pitlake.asof_co_partitioned = false; " + statement)
        assert remote.returncode == 0, remote.stderr.decode()
        out = remote.stdout.decode()
        if statement == sql:
            assert out.endswith(local.stdout.decode()) and local.stdout, (out, local.stdout)
        else:
            assert out.count("AsOfJoinExec") >= 2 and "mode=co_partitioned" in out, out


def test_exports_through_the_cluster_pin_and_hash_as_single_node(warehouse, cluster, tmp_path):
    manifests = {}
    for name, extra in [("local", []), ("cluster", ["--cluster", cluster.address])]:
        out = tmp_path / f"{name}.parquet"
        done = pitlake(warehouse, *extra, "export", TRAINING_SET, "--to", str(out))
        assert done.returncode == 0, done.stderr.decode()
        manifests[name] = json.loads((tmp_path / f"{name}.parquet.manifest.json").read_text())
    local, remote = manifests["local"], manifests["cluster"]
    assert remote["output"]["content_hash"] == local["output"]["content_hash"]
    assert remote["output"]["rows"] == local["output"]["rows"] == 5
    # `audit` of the manifest gives the same report on the cluster as single-node.
    manifest = str(tmp_path / "cluster.parquet.manifest.json")
    audits = [pitlake(warehouse, *extra, "audit", manifest, "--format", "csv")
              for extra in ([], ["--cluster", cluster.address])]
    assert audits[0].returncode == 0, audits[0].stderr.decode()
    assert audits[1].returncode == 0, audits[1].stderr.decode()
    assert audits[1].stdout == audits[0].stdout and audits[0].stdout
    # `reproduce` rebuilds it on the cluster and finds it identical.
    done = pitlake(warehouse, "--cluster", cluster.address, "reproduce",
                   str(tmp_path / "cluster.parquet.manifest.json"))
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()


def delta_log(bucket, prefix):
    """The actions of each version of the Delta table under s3://bucket/prefix."""
    import boto3

    env = s3_env()
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_delta_log/")
    versions = sorted(o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".json"))
    return [[json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read()
             .decode().splitlines()] for key in versions]


def test_executors_write_exports_to_object_storage(warehouse, cluster):
    """On a cluster, an export to object storage is written by the executors (each partition
    its own Delta parts, or one task the whole file) and committed and described by the client;
    the rows hash as a single-node export's, and `verify` and `reproduce` accept the result."""
    bucket = os.environ.get("PITLAKE_TEST_S3_BUCKET", "pitlake-test")
    prefix = f"cluster-exports-{uuid.uuid4().hex}"
    base = f"s3://{bucket}/{prefix}"
    before = [(cluster.root / f"executor-{i}.log").read_text().count("wrote an export part")
              for i in range(2)]
    hashes = {}
    for name, to, extra in [
        ("single", f"{base}/single", []),
        ("delta", f"{base}/delta", ["--cluster", cluster.address]),
        ("parquet", f"{base}/ts.parquet", ["--cluster", cluster.address]),
        ("csv", f"{base}/ts.csv", ["--cluster", cluster.address]),
    ]:
        done = pitlake(warehouse, *extra, "export", BIG_TRAINING_SET, "--to", to)
        assert done.returncode == 0, done.stderr.decode()
        verified = pitlake(warehouse, "verify", f"{to}.manifest.json")
        assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()
        line = next(l for l in done.stdout.decode().splitlines() if l.startswith("Content hash"))
        hashes[name] = line
    assert len(set(hashes.values())) == 1, hashes
    assert "rows400000:" in hashes["single"]
    # The executors wrote: every partition of the Delta export its own data files, committed
    # as one version with their statistics; the file exports one part each.
    (version,) = delta_log(bucket, f"{prefix}/delta")
    adds = [a["add"] for a in version if "add" in a]
    assert len(adds) >= 2, version
    assert sum(json.loads(a["stats"])["numRecords"] for a in adds) == 400000
    after = [(cluster.root / f"executor-{i}.log").read_text().count("wrote an export part")
             for i in range(2)]
    assert sum(after) - sum(before) >= len(adds) + 2, (before, after)
    # A second export replaces the rows in one new version; `reproduce` on the cluster agrees.
    done = pitlake(warehouse, "--cluster", cluster.address, "export", BIG_TRAINING_SET,
                   "--to", f"{base}/delta")
    assert done.returncode == 0, done.stderr.decode()
    versions = delta_log(bucket, f"{prefix}/delta")
    assert len(versions) == 2
    removed = {a["remove"]["path"] for a in versions[1] if "remove" in a}
    assert removed == {a["path"] for a in adds}
    for to in [f"{base}/delta", f"{base}/ts.parquet"]:
        done = pitlake(warehouse, "--cluster", cluster.address, "reproduce",
                       f"{to}.manifest.json")
        assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    # An executor that cannot write says so, in its words; nothing is published.
    to = "s3://no-such-bucket-for-pitlake/ts.parquet"
    done = pitlake(warehouse, "--cluster", cluster.address, "export", TRAINING_SET, "--to", to)
    err = done.stderr.decode()
    assert done.returncode != 0, done.stdout.decode()
    assert "an executor could not write the export to " + to in err, err
    assert "NoSuchBucket" in err and "nothing was exported" in err, err


def test_the_gateway_asks_the_cluster_only_what_the_caller_may_read(warehouse, cluster, tmp_path):
    auth = tmp_path / "auth.toml"
    alice = hash_password(warehouse, "alice-pw")
    bob = hash_password(warehouse, "bob-pw")
    auth.write_text(
        f'[users.alice]\npassword_hash = "{alice}"\nroles = ["all"]\n'
        f'[users.bob]\npassword_hash = "{bob}"\nroles = ["labels"]\n'
        '[roles.all]\ngrants = ["table:*", "view:*"]\n'
        '[roles.labels]\ngrants = ["table:labels"]\n'
    )
    root = tmp_path / "gateway"
    root.mkdir()
    process, log, uri, log_path = start_server(root, warehouse, auth, "--cluster", cluster.address)
    try:
        def query(user, sql):
            kwargs = {"username": user, "password": f"{user}-pw"}
            with flightsql.connect(uri, db_kwargs=kwargs) as conn, conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()

        assert query("alice", ASOF) == [(1, 1.5), (2, 3.5), (3, 2.5), (4, None), (5, None)]
        assert len(query("bob", "SELECT * FROM labels")) == 5
        with pytest.raises(adbc_driver_manager.Error) as refused:
            query("bob", ASOF)
        # Refused by the gateway while planning, as single-node, before the cluster sees it.
        text = str(refused.value)
        assert "may not use table `feats`" in text and "PermissionDenied" in text, text
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_a_query_cancelled_at_the_gateway_is_cancelled_on_the_cluster(warehouse, tmp_path):
    """A query past the gateway's timeout is cancelled there; its job is cancelled on the
    scheduler too, which tells the executors to stop its tasks."""
    (tmp_path / "cluster").mkdir()
    cluster = Cluster(tmp_path / "cluster", executors=2)
    auth = tmp_path / "auth.toml"
    auth.write_text(
        f'[users.alice]\npassword_hash = "{hash_password(warehouse, "alice-pw")}"\n'
        'roles = ["all"]\n[roles.all]\ngrants = ["table:*"]\n'
    )
    root = tmp_path / "gateway"
    root.mkdir()
    process, log, uri, _ = start_server(root, warehouse, auth, "--cluster", cluster.address,
                                        "--query-timeout", "2s")
    try:
        sql = "SELECT count(*) AS n FROM big_feats a JOIN big_feats b ON a.t % 1000 = b.t % 1000"
        kwargs = {"username": "alice", "password": "alice-pw"}
        started = time.time()
        with pytest.raises(adbc_driver_manager.Error) as timed_out:
            with flightsql.connect(uri, db_kwargs=kwargs) as conn, conn.cursor() as cur:
                cur.execute(sql)
                cur.fetchall()
        assert "timeout" in str(timed_out.value).lower() or "deadline" in str(timed_out.value).lower(), \
            str(timed_out.value)
        assert time.time() - started < 30
        # The gateway cancelled the job on the scheduler, which told the executor running it.
        logs = tmp_path / "cluster"
        deadline = time.time() + 10
        while "Job cancelled" not in (logs / "scheduler.log").read_text():
            assert time.time() < deadline, (logs / "scheduler.log").read_text()
            time.sleep(0.2)
        # ... and the executor running its task was told to stop it. (How soon the work stops is
        # Ballista's: a task is aborted at its next yield, and we have seen executors busy for
        # tens of seconds after a large join was cancelled; docs/distributed.md.)
        deadline = time.time() + 10
        while "Cancelling tasks for" not in "".join(
                (logs / f"executor-{i}.log").read_text() for i in range(2)):
            assert time.time() < deadline, "no executor was told to cancel the job's task"
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        cluster.stop()


def test_an_unreachable_scheduler_fails_fast_and_clearly(warehouse):
    port = free_port()
    started = time.time()
    done = pitlake(warehouse, "--cluster", f"df://127.0.0.1:{port}", "sql", ASOF, timeout=60)
    assert done.returncode == 2
    assert f"the scheduler at df://127.0.0.1:{port} cannot be reached" in done.stderr.decode()
    assert time.time() - started < 20


def test_an_executor_killed_mid_query_is_replaced_or_the_query_fails_clearly(warehouse, tmp_path):
    cluster = Cluster(tmp_path, executors=2)
    try:
        # Several seconds of work on two executors: each of the 10,000 residues appears 200
        # times per side, so 10,000 * 200 * 200 pairs.
        sql = "SELECT count(*) AS n FROM big_feats a JOIN big_feats b ON a.t % 10000 = b.t % 10000"
        # A third executor, so the work has somewhere to go when one dies.
        cluster.add_executor(2)
        result = {}

        def run():
            result["done"] = pitlake(warehouse, "--cluster", cluster.address, "sql",
                                     "--format", "csv", sql, timeout=240)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive(), "the query ended before the executor was killed"
        cluster.executors[0].kill()
        thread.join(timeout=250)
        assert not thread.is_alive(), "the query neither finished nor failed"
        done = result["done"]
        print("after the kill:", "answered" if done.returncode == 0 else done.stderr.decode())
        if done.returncode == 0:
            assert done.stdout.decode().split() == ["n", "400000000"]
        else:
            message = done.stderr.decode()
            assert message.startswith("Error: ") and "panic" not in message, message
    finally:
        cluster.stop()
