"""Each refusal arrives as its typed exception with the server's own message, from a real
server: bad SQL, missing objects, grants refused, bad credentials, a locked-out user, a server
that is not there, a query past the server's timeout (on a second server, over TLS, which
also shows a private CA given to the client)."""

import subprocess
from pathlib import Path

import adbc_driver_manager
import pytest

import pitlake
from conftest import Server
from pitlake import errors

# Makes a private CA and a server certificate signed by it (shared with the other Python tests).
TEST_CERTS = Path(__file__).resolve().parents[2] / "scripts" / "test-certs.sh"


def test_bad_sql_is_invalid_argument(alice):
    with pytest.raises(errors.InvalidArgument) as err:
        alice.sql("SELEC 1").to_arrow()
    assert str(err.value).startswith("SQL syntax error")
    assert err.value.grpc_code == "INVALID_ARGUMENT"
    assert isinstance(err.value, ValueError)


def test_an_error_in_the_middle_of_a_stream_is_typed(alice):
    with pytest.raises(errors.InvalidArgument, match="Divide by zero"):
        alice.sql("SELECT 1 / (value - 70000) AS x FROM generate_series(1, 100000)").to_arrow()


def test_missing_objects_are_not_found(alice):
    with pytest.raises(errors.NotFound, match="feature view `nope` does not exist"):
        alice.describe("nope")
    with pytest.raises(errors.NotFound, match="table `nope` does not exist"):
        alice.sql("SELECT * FROM nope").to_arrow()
    with pytest.raises(errors.NotFound, match="does not exist"):
        alice.training_set("orders", at="order_ts", features=["nope.*"]).to_arrow()


def test_refused_grants_are_permission_denied(bob):
    with pytest.raises(errors.PermissionDenied) as err:
        bob.sql("SELECT * FROM secret").to_arrow()
    assert str(err.value).startswith("user `bob` may not")
    assert "secret" in str(err.value)
    with pytest.raises(errors.PermissionDenied, match="registry:write"):
        bob.execute("DROP FEATURE VIEW driver_stats")


def test_existing_tables_and_unsupported_sql(alice):
    with pytest.raises(errors.AlreadyExists, match="already exists"):
        alice.execute("CREATE TABLE orders AS SELECT 1 AS x")
    with pytest.raises(errors.Unimplemented):
        alice.execute("UPDATE orders SET churned = true")


def test_bad_credentials_are_unauthenticated(uri):
    with pytest.raises(errors.Unauthenticated, match="invalid user name or password"):
        pitlake.connect(uri, username="alice", password="wrong")


def test_a_locked_out_user_is_resource_exhausted(uri):
    for _ in range(3):
        with pytest.raises(errors.Unauthenticated):
            pitlake.connect(uri, username="mallory", password="wrong")
    with pytest.raises(errors.ResourceExhausted, match="too many failed logins"):
        pitlake.connect(uri, username="mallory", password="mallory-pw")


def test_no_server_is_unavailable():
    with pytest.raises(errors.Unavailable, match="connection refused"):
        pitlake.connect("grpc://127.0.0.1:1", username="alice", password="alice-pw")


@pytest.fixture(scope="module")
def tls_server(warehouse, tmp_path_factory):
    """A second server over one warehouse: TLS with a certificate of a private CA made here,
    and a query timeout of one second."""
    root = tmp_path_factory.mktemp("tls")

    # A private CA and a certificate for localhost it signed (ca.pem, cert.pem, key.pem).
    subprocess.run([str(TEST_CERTS), str(root)], check=True, capture_output=True)
    srv = Server(
        root,
        warehouse["path"],
        ["--auth-file", str(warehouse["auth"]), "--tls-cert", str(root / "cert.pem"),
         "--tls-key", str(root / "key.pem"), "--query-timeout", "1s"],
        {},
    )
    yield {"uri": f"grpc+tls://localhost:{srv.port}", "ca": root / "ca.pem"}
    assert srv.stop() == 0, srv.log_text()


def test_tls_with_a_private_ca(tls_server):
    ca = tls_server["ca"]
    for roots in [ca, str(ca), ca.read_bytes(), ca.read_text()]:
        with pitlake.connect(tls_server["uri"], username="alice", password="alice-pw",
                             tls_root_certs=roots) as fs:
            assert fs.sql("SELECT 1 AS one").to_arrow().to_pylist() == [{"one": 1}]
    # Without the CA the server's certificate is not trusted.
    with pytest.raises(errors.Unavailable, match="certificate"):
        pitlake.connect(tls_server["uri"], username="alice", password="alice-pw")


def test_a_query_past_the_servers_timeout_is_deadline_exceeded(tls_server):
    with pitlake.connect(tls_server["uri"], username="alice", password="alice-pw",
                         tls_root_certs=tls_server["ca"]) as fs:
        with pytest.raises(errors.DeadlineExceeded, match="query-timeout"):
            fs.sql("SELECT count(*) FROM generate_series(1, 20000000000)").to_arrow()
        # The session goes on.
        assert fs.sql("SELECT 2 AS two").to_arrow().num_rows == 1


@pytest.mark.parametrize(
    "adbc_class, status, text, expected",
    [
        # As the Go driver words what these servers answer (seen above for the reachable
        # codes); ABORTED, INTERNAL and a RESOURCE_EXHAUSTED from a query come from races,
        # bugs and memory pressure that no test can bring about on purpose.
        (adbc_driver_manager.InternalError, "INTERNAL",
         "INTERNAL: [FlightSQL] out of memory after spilling (ResourceExhausted; DoGet: endpoint 0: [])",
         errors.ResourceExhausted),
        (adbc_driver_manager.OperationalError, "UNKNOWN",
         "UNKNOWN: [FlightSQL] table `trips` changed while this statement ran (Aborted; DoGet: endpoint 0: [])",
         errors.Aborted),
        (adbc_driver_manager.InternalError, "INTERNAL",
         "INTERNAL: [FlightSQL] a pitlake bug (Internal; Prepare)", errors.Internal),
        (adbc_driver_manager.OperationalError, "UNKNOWN",
         "UNKNOWN: [FlightSQL] cannot read the log (FailedPrecondition; Prepare)",
         errors.FailedPrecondition),
        (adbc_driver_manager.OperationalError, "TIMEOUT", "TIMEOUT: context deadline exceeded",
         errors.DeadlineExceeded),
    ],
)
def test_codes_the_adbc_status_folds_together_are_told_apart(adbc_class, status, text, expected):
    error = adbc_class(text, status_code=getattr(adbc_driver_manager.AdbcStatusCode, status))
    typed = errors.from_adbc(error)
    assert type(typed) is expected
    assert "(" not in str(typed) and "[FlightSQL]" not in str(typed)
