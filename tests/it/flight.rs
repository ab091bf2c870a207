//! The Flight SQL server end to end: a real server on 127.0.0.1 port 0 (stopped on Drop), the
//! Rust Flight SQL client, certificates made here with rcgen, and a small warehouse of Delta
//! tables written by the engine.
//!
//! Users of every server here (see `AUTH`): `alice` reads everything, `bob` reads `labels` and
//! `driver_stats` only, `admin` may also write and `SET`, `svc` is alice's rights behind a static
//! token.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetTables, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightInfo, HandshakeRequest, Ticket};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use pitlake::Engine;
use pitlake::flight::{AuthConfig, Limits, RunningServer, ServerConfig, Transport, hash_password};
use prost::Message;
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::common::{count, engine, rows};

const SVC_TOKEN: &str = "svc-static-token-0123456789-abcdefghijkl";

/// Password hashes are slow by design; hash each test password once per test binary.
fn auth_text(token_ttl: &str) -> String {
    static HASHES: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();
    let (alice, bob, admin) = HASHES.get_or_init(|| {
        (
            hash_password("alice-pw").unwrap(),
            hash_password("bob-pw").unwrap(),
            hash_password("admin-pw").unwrap(),
        )
    });
    let svc: String = ring::digest::digest(&ring::digest::SHA256, SVC_TOKEN.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"
token_ttl = "{token_ttl}"
[users.alice]
password_hash = "{alice}"
roles = ["analyst"]
[users.bob]
password_hash = "{bob}"
roles = ["labeler"]
[users.admin]
password_hash = "{admin}"
roles = ["analyst", "admin"]
[users.carol]
password_hash = "{bob}"
roles = ["labeler", "curator"]
[users.svc]
tokens = [{{ sha256 = "{svc}" }}]
roles = ["analyst"]
[roles.analyst]
grants = ["table:*"]
[roles.labeler]
grants = ["table:labels", "table:driver_stats"]
[roles.admin]
grants = ["write:*", "session", "files"]
[roles.curator]
grants = ["view:driver_rates", "registry:write"]
"#
    )
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by
/// the CA; and a second, unrelated CA.
struct Pki {
    ca: String,
    other_ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    };
    let (ca_pem, issuer) = ca("pitlake test CA");
    let (other_ca, _) = ca("another CA");
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["client.pitlake.test".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca: ca_pem,
        other_ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// The warehouse: features, labels (two versions), a table bob may not read, and a larger
/// table for streaming.
async fn warehouse(dir: &std::path::Path) -> Engine {
    let engine = engine(dir);
    engine
        .run_script(
            "CREATE TABLE driver_stats AS SELECT * FROM (VALUES \
               (1, TIMESTAMP '2026-01-01 00:00:00', 0.5), \
               (1, TIMESTAMP '2026-01-01 02:00:00', 0.6), \
               (2, TIMESTAMP '2026-01-01 01:00:00', 0.9)) AS v(driver_id, event_ts, conv_rate); \
             CREATE TABLE labels AS SELECT * FROM (VALUES \
               (1, TIMESTAMP '2026-01-01 01:30:00', true), \
               (1, TIMESTAMP '2026-01-01 03:00:00', false), \
               (2, TIMESTAMP '2026-01-01 00:30:00', true)) AS v(driver_id, ts, label); \
             INSERT INTO labels VALUES (3, TIMESTAMP '2026-01-02 00:00:00', false); \
             CREATE TABLE secret AS SELECT 42 AS salary; \
             CREATE TABLE big AS SELECT value AS id, value % 97 AS k FROM generate_series(1, 100000)",
            Default::default(),
        )
        .await
        .unwrap();
    engine
}

const TRAINING_SET: &str = "SELECT l.driver_id, l.ts, l.label, s.conv_rate \
    FROM labels l ASOF LEFT JOIN driver_stats s \
    ON l.driver_id = s.driver_id AND l.ts >= s.event_ts \
    ORDER BY l.driver_id, l.ts";

#[derive(Clone)]
struct Options {
    tls: bool,
    mtls: bool,
    token_ttl: &'static str,
    limits: Limits,
    /// The auth file's text instead of `auth_text(token_ttl)`.
    auth: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls: false,
            mtls: false,
            token_ttl: "1h",
            limits: Limits {
                max_concurrent_queries: 8,
                query_memory_limit: Some(64 << 20),
                ..Limits::default()
            },
            auth: None,
        }
    }
}

/// A running server over a fresh warehouse; stops on Drop.
struct Fixture {
    dir: TempDir,
    engine: Arc<Engine>,
    server: Option<RunningServer>,
    pki: Option<Pki>,
}

impl Fixture {
    async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(warehouse(dir.path()).await);
        let pki = (options.tls || options.mtls).then(pki);
        let transport = match &pki {
            Some(pki) => Transport::Tls {
                cert_pem: pki.server_cert.clone(),
                key_pem: pki.server_key.clone(),
                client_ca_pem: options.mtls.then(|| pki.ca.clone()),
            },
            None => Transport::Plaintext {
                non_loopback: false,
            },
        };
        // The auth settings come from a file, as in production, so they can be re-read.
        let auth_file = dir.path().join("auth.toml");
        let auth = options
            .auth
            .clone()
            .unwrap_or_else(|| auth_text(options.token_ttl));
        std::fs::write(&auth_file, &auth).unwrap();
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            transport,
            limits: options.limits,
            auth: AuthConfig::from_file(&auth_file).unwrap(),
            auth_origin: Some(auth_file),
            signing: None,
            http_listen: None,
        };
        let server = pitlake::flight::start(engine.clone(), config)
            .await
            .unwrap();
        Self {
            dir,
            engine,
            server: Some(server),
            pki,
        }
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(self.server().url())
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
    }

    /// A channel that trusts the test CA (and presents the client certificate when mTLS is on).
    async fn channel(&self) -> Channel {
        let mut endpoint = self.endpoint();
        if let Some(pki) = &self.pki {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pki.ca))
                .domain_name("localhost")
                .identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        endpoint.connect().await.unwrap()
    }

    async fn anonymous(&self) -> FlightSqlServiceClient<Channel> {
        FlightSqlServiceClient::new(self.channel().await)
    }

    async fn login(&self, user: &str, password: &str) -> FlightSqlServiceClient<Channel> {
        let mut client = self.anonymous().await;
        client.handshake(user, password).await.unwrap();
        assert!(client.token().is_some(), "the handshake returned no token");
        client
    }

    async fn service(&self) -> FlightSqlServiceClient<Channel> {
        let mut client = self.anonymous().await;
        client.set_token(SVC_TOKEN.to_string());
        client
    }
}

/// Waits until the server has no open query stream (a stream is dropped just after its last
/// message is sent, so a client may see the end first).
async fn until_idle(server: &RunningServer) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.active_queries() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a query kept running: {} open",
            server.active_queries()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn code(err: &FlightError) -> Code {
    match err {
        FlightError::Tonic(status) => status.code(),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn message(err: &FlightError) -> String {
    match err {
        FlightError::Tonic(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, FlightError> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("an endpoint without a ticket");
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, FlightError> {
    let info = client.execute(sql.to_string(), None).await?;
    fetch(client, info).await
}

/// A raw handshake, to see the status the server sent (the SQL client rewrites it to text).
async fn handshake_status(fixture: &Fixture, user: &str, password: &str) -> Code {
    let mut raw = FlightServiceClient::new(fixture.channel().await);
    let mut request = tonic::Request::new(futures::stream::iter(vec![HandshakeRequest::default()]));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    match raw.handshake(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_as_of_joins_time_travel_and_history_stream_as_arrow() {
    let fixture = Fixture::start(Options::default()).await;
    let mut alice = fixture.login("alice", "alice-pw").await;

    let got = query(&mut alice, TRAINING_SET).await.unwrap();
    let expected = fixture.engine.collect(TRAINING_SET).await.unwrap();
    assert_eq!(rows(&got), rows(&expected));
    assert_eq!(
        rows(&got),
        vec![
            vec!["1", "2026-01-01T01:30:00", "true", "0.5"],
            vec!["1", "2026-01-01T03:00:00", "false", "0.6"],
            vec!["2", "2026-01-01T00:30:00", "true", "NULL"],
            vec!["3", "2026-01-02T00:00:00", "false", "NULL"],
        ]
    );
    // The schema announced by GetFlightInfo is the schema streamed.
    let info = alice.execute(TRAINING_SET.into(), None).await.unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    let streamed = fetch(&mut alice, info).await.unwrap();
    assert_eq!(announced.fields(), streamed[0].schema().fields());

    let old = query(&mut alice, "SELECT count(*) FROM labels VERSION AS OF 0")
        .await
        .unwrap();
    assert_eq!(rows(&old), vec![vec!["3"]]);
    let history = query(&mut alice, "DESCRIBE HISTORY labels").await.unwrap();
    assert_eq!(count(&history), 2);

    // A large result arrives whole, in order.
    let big = query(&mut alice, "SELECT id FROM big ORDER BY id")
        .await
        .unwrap();
    assert_eq!(count(&big), 100_000);
    let ids: Vec<i64> = big
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]));

    // Errors keep their meaning: a missing table is NOT_FOUND, bad SQL INVALID_ARGUMENT.
    let err = query(&mut alice, "SELECT * FROM labelz").await.unwrap_err();
    assert_eq!(code(&err), Code::NotFound);
    assert!(message(&err).contains("labels"), "{}", message(&err));
    let err = query(&mut alice, "SELEC 1").await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_parameters() {
    let fixture = Fixture::start(Options::default()).await;
    let mut alice = fixture.login("alice", "alice-pw").await;
    let mut statement = alice
        .prepare(
            "SELECT driver_id, label FROM labels WHERE driver_id = ? ORDER BY ts".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(statement.parameter_schema().unwrap().fields().len(), 1);
    assert_eq!(
        statement.dataset_schema().unwrap().field(1).data_type(),
        &DataType::Boolean
    );
    for (driver, expected) in [(1i64, 2usize), (2, 1), (9, 0)] {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)]));
        let params =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![driver]))]).unwrap();
        statement.set_parameters(params).unwrap();
        let info = statement.execute().await.unwrap();
        let got = fetch(&mut alice, info).await.unwrap();
        assert_eq!(count(&got), expected, "driver {driver}");
    }
    // `$n` parameters work too; executing without binding is refused.
    let mut unbound = alice
        .prepare("SELECT * FROM labels WHERE driver_id = $1".into(), None)
        .await
        .unwrap();
    let err = unbound.execute().await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument);
    statement.close().await.unwrap();
    // A prepared statement is its creator's: bob cannot use alice's handle.
    let handle = {
        let mut prepared = alice
            .prepare("SELECT * FROM labels".into(), None)
            .await
            .unwrap();
        let info = prepared.execute().await.unwrap();
        // Its ticket names alice: bob cannot redeem it.
        let mut bob = fixture.login("bob", "bob-pw").await;
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let err = match bob.do_get(ticket).await {
            Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
            Err(err) => err,
        };
        assert_eq!(code(&err), Code::PermissionDenied);
        info
    };
    assert!(!handle.endpoint.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_calls_list_what_the_user_may_read() {
    let fixture = Fixture::start(Options::default()).await;
    let mut alice = fixture.login("alice", "alice-pw").await;
    let mut bob = fixture.login("bob", "bob-pw").await;

    let info = alice.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut alice, info).await.unwrap();
    assert_eq!(rows(&catalogs), vec![vec!["pitlake"]]);

    let info = alice
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    let schemas = fetch(&mut alice, info).await.unwrap();
    assert!(rows(&schemas).contains(&vec!["pitlake".to_string(), "public".to_string()]));

    let tables = |include_schema| CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: None,
        table_types: vec![],
        include_schema,
    };
    let info = alice.get_tables(tables(true)).await.unwrap();
    let listed = fetch(&mut alice, info).await.unwrap();
    let names: Vec<String> = rows(&listed).into_iter().map(|r| r[2].clone()).collect();
    assert_eq!(names, vec!["big", "driver_stats", "labels", "secret"]);
    // With schemas: the labels table's columns, as Arrow IPC.
    let batch = &listed[0];
    let schema_column = batch
        .column(4)
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap();
    let labels_row = names.iter().position(|n| n == "labels").unwrap();
    let schema = Schema::try_from(arrow_flight::IpcMessage(
        schema_column.value(labels_row).to_vec().into(),
    ))
    .unwrap();
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(columns, vec!["driver_id", "ts", "label"]);

    // bob does not even see that `secret` exists.
    let info = bob.get_tables(tables(false)).await.unwrap();
    let listed = fetch(&mut bob, info).await.unwrap();
    let names: Vec<String> = rows(&listed).into_iter().map(|r| r[2].clone()).collect();
    assert_eq!(names, vec!["driver_stats", "labels"]);

    let info = alice.get_table_types().await.unwrap();
    let types = fetch(&mut alice, info).await.unwrap();
    // A session's uploads are `LOCAL TEMPORARY`; warehouse tables are `TABLE`.
    assert_eq!(rows(&types), vec![vec!["LOCAL TEMPORARY"], vec!["TABLE"]]);

    let info = alice
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
        ])
        .await
        .unwrap();
    let infos = fetch(&mut alice, info).await.unwrap();
    assert_eq!(count(&infos), 2);
    assert!(format!("{:?}", infos[0].column(1)).contains("pitlake"));

    // Metadata calls need a credential like everything else.
    let mut anonymous = fixture.anonymous().await;
    assert_eq!(
        code(&anonymous.get_catalogs().await.unwrap_err()),
        Code::Unauthenticated
    );
    assert_eq!(
        code(&anonymous.get_table_types().await.unwrap_err()),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_refusals_are_unauthenticated() {
    let fixture = Fixture::start(Options {
        token_ttl: "2s",
        ..Options::default()
    })
    .await;
    // No token at all.
    let mut anonymous = fixture.anonymous().await;
    let err = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::Unauthenticated);
    // A token that was never issued.
    anonymous.set_token("pl1.e30.AAAA".into());
    let err = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::Unauthenticated);
    anonymous.set_token("guess".into());
    let err = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::Unauthenticated);
    // Wrong passwords and unknown users.
    assert_eq!(
        handshake_status(&fixture, "alice", "wrong").await,
        Code::Unauthenticated
    );
    assert_eq!(
        handshake_status(&fixture, "mallory", "x").await,
        Code::Unauthenticated
    );
    assert_eq!(
        handshake_status(&fixture, "svc", "").await,
        Code::Unauthenticated
    );
    assert_eq!(
        handshake_status(&fixture, "alice", "alice-pw").await,
        Code::Ok
    );
    // The static token works without a handshake.
    let mut svc = fixture.service().await;
    assert_eq!(
        rows(&query(&mut svc, "SELECT 1").await.unwrap()),
        vec![vec!["1"]]
    );
    // A handshake token expires.
    let mut alice = fixture.login("alice", "alice-pw").await;
    assert!(query(&mut alice, "SELECT 1").await.is_ok());
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let err = query(&mut alice, "SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), Code::Unauthenticated);
    assert!(message(&err).contains("expired"), "{}", message(&err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_cannot_be_forged_or_used_by_another_user() {
    let fixture = Fixture::start(Options::default()).await;
    let mut alice = fixture.login("alice", "alice-pw").await;
    let mut bob = fixture.login("bob", "bob-pw").await;
    let info = alice
        .execute("SELECT * FROM secret".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();

    let redeem = |client: &mut FlightSqlServiceClient<Channel>, ticket: Ticket| {
        let mut client = client.clone();
        async move {
            match client.do_get(ticket).await {
                Ok(stream) => stream.try_collect::<Vec<_>>().await,
                Err(err) => Err(err),
            }
        }
    };
    // Replayed by bob: refused, although the ticket itself is genuine.
    let err = redeem(&mut bob, ticket.clone()).await.unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied);
    assert!(message(&err).contains("another user"), "{}", message(&err));

    // Altered: bob rewrites alice's ticket, or makes one up, to name himself.
    let any = arrow_flight::sql::Any::decode(ticket.ticket.clone()).unwrap();
    let inner: TicketStatementQuery = any.unpack().unwrap().unwrap();
    let text = String::from_utf8_lossy(&inner.statement_handle).to_string();
    let altered = text.replace("\"alice\"", "\"bob\"");
    assert_ne!(altered, text);
    for forged in [altered.into_bytes(), b"plt1.{}.x".to_vec(), vec![0u8; 64]] {
        let forged = TicketStatementQuery {
            statement_handle: forged.into(),
        };
        let forged = Ticket::new(forged.as_any().encode_to_vec());
        let err = redeem(&mut bob, forged).await.unwrap_err();
        assert_eq!(code(&err), Code::PermissionDenied, "{}", message(&err));
    }
    // The genuine owner can redeem it, more than once.
    for _ in 0..2 {
        let got = redeem(&mut alice, ticket.clone()).await.unwrap();
        assert_eq!(rows(&got), vec![vec!["42"]]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_enforced_on_every_table_a_statement_touches() {
    let fixture = Fixture::start(Options::default()).await;
    let mut bob = fixture.login("bob", "bob-pw").await;
    // What bob may read works, as-of joins included.
    assert_eq!(count(&query(&mut bob, TRAINING_SET).await.unwrap()), 4);
    // `secret` is refused however it is reached.
    for sql in [
        "SELECT * FROM secret",
        "SELECT * FROM labels WHERE driver_id IN (SELECT salary FROM secret)",
        "WITH s AS (SELECT * FROM secret) SELECT * FROM labels, s",
        "SELECT * FROM labels l WHERE EXISTS (SELECT 1 FROM secret VERSION AS OF 0)",
        "SELECT l.* FROM labels l ASOF LEFT JOIN secret s ON l.driver_id = s.salary \
         AND l.driver_id >= s.salary",
        "EXPLAIN SELECT * FROM secret",
        "DESCRIBE secret",
        "DESCRIBE HISTORY secret",
        "SHOW TABLES",
    ] {
        let err = query(&mut bob, sql).await.unwrap_err();
        assert_eq!(
            code(&err),
            Code::PermissionDenied,
            "{sql}: {}",
            message(&err)
        );
        let msg = message(&err);
        assert!(
            msg.contains("`secret`") || msg.contains("information_schema"),
            "{sql}: {msg}"
        );
    }
    // A CTE named like a forbidden table reads only what the CTE reads.
    let got = query(
        &mut bob,
        "WITH secret AS (SELECT 1 AS x) SELECT * FROM secret",
    )
    .await
    .unwrap();
    assert_eq!(rows(&got), vec![vec!["1"]]);

    // A reader's DDL, DML, SET and COPY are refused, as queries and as updates, and change
    // nothing.
    let tables_before = fixture.engine.list_tables().await.unwrap();
    let labels_before = fixture
        .engine
        .collect("SELECT * FROM labels")
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE stolen AS SELECT * FROM labels",
        "CREATE TABLE empty (x INT)",
        "INSERT INTO labels VALUES (9, TIMESTAMP '2026-01-03 00:00:00', true)",
        "INSERT OVERWRITE labels SELECT * FROM labels WHERE false",
        "DROP TABLE labels",
        "SET datafusion.execution.batch_size = 1",
        "COPY (SELECT * FROM labels) TO '/tmp/pitlake-stolen.csv'",
    ] {
        let err = bob.execute_update(sql.into(), None).await.unwrap_err();
        assert_eq!(
            code(&err),
            Code::PermissionDenied,
            "{sql}: {}",
            message(&err)
        );
        let err = query(&mut bob, sql).await.unwrap_err();
        assert_eq!(
            code(&err),
            Code::PermissionDenied,
            "{sql}: {}",
            message(&err)
        );
    }
    assert_eq!(fixture.engine.list_tables().await.unwrap(), tables_before);
    let labels_after = fixture
        .engine
        .collect("SELECT * FROM labels")
        .await
        .unwrap();
    assert_eq!(rows(&labels_after), rows(&labels_before));
    assert!(!std::path::Path::new("/tmp/pitlake-stolen.csv").exists());

    // Whether a table bob may not read exists, and which versions it has, stays hidden: the
    // answer is the same refusal, given before anything is opened.
    for sql in [
        "SELECT * FROM secrets",
        "SELECT * FROM secret VERSION AS OF 99",
        "DESCRIBE HISTORY nothing_here",
    ] {
        let err = query(&mut bob, sql).await.unwrap_err();
        assert_eq!(
            code(&err),
            Code::PermissionDenied,
            "{sql}: {}",
            message(&err)
        );
    }
    // alice may read every table; a "does not exist" names the tables she could mean.
    let mut alice = fixture.login("alice", "alice-pw").await;
    let err = query(&mut alice, "SELECT * FROM secrets")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::NotFound);
    assert!(message(&err).contains("`secret`"), "{}", message(&err));

    // The admin may write.
    let mut admin = fixture.login("admin", "admin-pw").await;
    admin
        .execute_update("CREATE TABLE copy AS SELECT * FROM labels".into(), None)
        .await
        .unwrap();
    let got = query(&mut admin, "INSERT INTO copy SELECT * FROM labels")
        .await
        .unwrap();
    assert_eq!(got[0].schema().field(0).name(), "result");
    assert_eq!(
        rows(
            &fixture
                .engine
                .collect("SELECT count(*) FROM copy")
                .await
                .unwrap()
        ),
        vec![vec!["8"]]
    );
    let err = admin
        .execute_update("SELECT 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_a_trusted_certificate_and_mtls_a_client_certificate() {
    let fixture = Fixture::start(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    assert!(fixture.server().url().starts_with("https://"));
    let mut alice = fixture.login("alice", "alice-pw").await;
    assert_eq!(count(&query(&mut alice, TRAINING_SET).await.unwrap()), 4);

    let pki = fixture.pki.as_ref().unwrap();
    // A client that trusts another CA, or none, cannot connect.
    for tls in [
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.other_ca))
            .domain_name("localhost"),
        ClientTlsConfig::new().domain_name("localhost"),
    ] {
        let endpoint = fixture.endpoint().tls_config(tls).unwrap();
        assert!(
            endpoint.connect().await.is_err(),
            "an untrusted server was accepted"
        );
    }
    // A plaintext client cannot talk to a TLS server either.
    let plain = Endpoint::from_shared(fixture.server().url().replace("https", "http"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = FlightSqlServiceClient::new(channel);
        assert!(client.handshake("alice", "alice-pw").await.is_err());
    }

    let mtls = Fixture::start(Options {
        mtls: true,
        ..Options::default()
    })
    .await;
    let mut alice = mtls.login("alice", "alice-pw").await;
    assert_eq!(
        rows(&query(&mut alice, "SELECT 1").await.unwrap()),
        vec![vec!["1"]]
    );
    let pki = mtls.pki.as_ref().unwrap();
    let no_client_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let refused = match mtls
        .endpoint()
        .tls_config(no_client_cert)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(channel) => {
            // TLS 1.3 may complete the client's side of the handshake before the server
            // refuses; the first call fails then.
            let mut client = FlightSqlServiceClient::new(channel);
            client.handshake("alice", "alice-pw").await.is_err()
        }
    };
    assert!(
        refused,
        "a client without a certificate was served under mTLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_get_complete_results_at_once() {
    let fixture = Arc::new(Fixture::start(Options::default()).await);
    let queries = [
        TRAINING_SET,
        "SELECT id, k FROM big ORDER BY id",
        "SELECT k, count(*) AS n, sum(id) AS s FROM big GROUP BY k ORDER BY k",
        "SELECT * FROM labels VERSION AS OF 0 ORDER BY driver_id, ts",
    ];
    let mut expected = Vec::new();
    for sql in queries {
        expected.push(rows(&fixture.engine.collect(sql).await.unwrap()));
    }
    let expected = Arc::new(expected);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let fixture = fixture.clone();
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = fixture.service().await;
            // Every other client repeats the same query; the rest spread over all of them.
            let which = if i % 2 == 0 { 1 } else { i % queries.len() };
            let got = query(&mut client, queries[which]).await.unwrap();
            assert_eq!(rows(&got), expected[which], "client {i}, query {which}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    until_idle(fixture.server()).await;
}

/// Rows enough to outlast any test, produced lazily.
const ENDLESS: &str = "SELECT a.id, b.value FROM big a CROSS JOIN generate_series(1, 100000) b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_query() {
    let fixture = Fixture::start(Options::default()).await;
    {
        let mut alice = fixture.login("alice", "alice-pw").await;
        let info = alice.execute(ENDLESS.into(), None).await.unwrap();
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let mut stream = alice.do_get(ticket).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert!(first.num_rows() > 0);
        assert_eq!(fixture.server().active_queries(), 1);
        // The client drops its stream and its connection here.
    }
    until_idle(fixture.server()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_their_timeout_are_cancelled() {
    let fixture = Fixture::start(Options {
        limits: Limits {
            query_timeout: Duration::from_millis(1500),
            ..Options::default().limits
        },
        ..Options::default()
    })
    .await;
    let mut alice = fixture.login("alice", "alice-pw").await;
    let err = query(&mut alice, ENDLESS).await.unwrap_err();
    assert_eq!(code(&err), Code::DeadlineExceeded, "{}", message(&err));
    until_idle(fixture.server()).await;
    // Short queries still run.
    assert!(query(&mut alice, "SELECT 1").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_queries_finish_then_cancels_them() {
    let mut fixture = Fixture::start(Options {
        limits: Limits {
            shutdown_grace: Duration::from_secs(1),
            ..Options::default().limits
        },
        ..Options::default()
    })
    .await;
    let mut alice = fixture.login("alice", "alice-pw").await;
    let info = alice.execute(ENDLESS.into(), None).await.unwrap();
    let mut stream = alice
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    let server = fixture.server.take().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    // The running query goes on during the grace period, then ends with UNAVAILABLE.
    let mut rows_after = 0;
    let outcome = loop {
        match stream.next().await {
            Some(Ok(batch)) => rows_after += batch.num_rows(),
            Some(Err(err)) => break Some(err),
            None => break None,
        }
    };
    let err = outcome.expect("the endless query ended without an error");
    assert_eq!(code(&err), Code::Unavailable, "{}", message(&err));
    assert!(
        rows_after > 0,
        "the query was cut off before its grace period"
    );
    tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("shutdown hung")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    drop(alice);
    let _ = &fixture.dir;
}

#[test]
fn serve_refuses_unsafe_or_incomplete_settings() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, auth_text("1h")).unwrap();
    let serve = |extra: &[&str], with_auth: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pitlake"));
        command
            .arg("--warehouse")
            .arg(dir.path())
            .arg("serve")
            .args(extra)
            .env_remove("PITLAKE_AUTH")
            .env_remove("PITLAKE_AUTH_FILE");
        if with_auth {
            command.arg("--auth-file").arg(&auth);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Neither TLS nor an explicit plaintext: refused.
    let (code, err) = serve(&[], true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
    // Plaintext on a network address needs a second flag.
    let (code, err) = serve(&["--insecure-plaintext", "--listen", "0.0.0.0:0"], true);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("loopback"), "{err}");
    // No users: nobody could connect.
    let (code, err) = serve(&["--insecure-plaintext"], false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("PITLAKE_AUTH"), "{err}");
}

/// The DSL over Flight SQL: a training set needs its feature views granted as well as the tables
/// they read; registry changes need `registry:write`, and record the client as their author.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_sets_and_registry_changes_need_their_grants() {
    let fixture = Fixture::start(Options::default()).await;
    fixture
        .engine
        .run_script(
            "CREATE ENTITY driver (driver_id BIGINT); \
             CREATE FEATURE VIEW driver_rates ENTITY driver FROM driver_stats \
               EVENT TIME event_ts FEATURES (conv_rate); \
             CREATE FEATURE VIEW secret_rates ENTITY driver \
               FROM (SELECT salary AS driver_id, TIMESTAMP '2026-01-01 00:00:00' AS event_ts, salary FROM secret) \
               EVENT TIME event_ts FEATURES (salary)",
            Default::default(),
        )
        .await
        .unwrap();
    let training_set = "TRAINING SET LABELS labels AT ts FEATURES (driver_rates.conv_rate)";
    let expected = rows(&fixture.engine.collect(training_set).await.unwrap());
    assert_eq!(expected.len(), 4);

    // bob reads both tables but holds no view grant.
    let mut bob = fixture.login("bob", "bob-pw").await;
    let err = query(&mut bob, training_set).await.unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{}", message(&err));
    assert!(
        message(&err).contains("feature view `driver_rates`"),
        "{}",
        message(&err)
    );
    let before = fixture.engine.registry().version().await.unwrap();
    let err = bob
        .execute_update("CREATE ENTITY rider (rider_id BIGINT)".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{}", message(&err));
    assert!(
        message(&err).contains("registry:write"),
        "{}",
        message(&err)
    );
    assert_eq!(fixture.engine.registry().version().await.unwrap(), before);

    // carol holds view:driver_rates and registry:write.
    let mut carol = fixture.login("carol", "bob-pw").await;
    let got = query(&mut carol, training_set).await.unwrap();
    assert_eq!(rows(&got), expected);
    // A view she may not read, and a view whose source reads a table she may not read.
    let err = query(
        &mut carol,
        "TRAINING SET LABELS labels AT ts FEATURES (secret_rates.*)",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{}", message(&err));
    // Only the view she may read is listed.
    let shown = query(&mut carol, "SHOW FEATURE VIEWS").await.unwrap();
    assert_eq!(count(&shown), 1);
    carol
        .execute_update("CREATE ENTITY rider (rider_id BIGINT)".into(), None)
        .await
        .unwrap();
    let history = fixture
        .engine
        .collect("SHOW HISTORY OF ENTITY rider")
        .await
        .unwrap();
    assert_eq!(crate::common::column(&history, 3), ["carol"]);
    // Exports write the server's files: refused without the `files` grant.
    let err = carol
        .execute_update(
            format!("EXPORT {training_set} TO '/tmp/pitlake-flight-export.parquet'"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{}", message(&err));
    assert!(message(&err).contains("files"), "{}", message(&err));
}

/// Reads around the grants and statements built to take the server down.
mod adversarial;
/// The server under attack: login floods and guessing, connection and upload exhaustion, token
/// revocation, secrets in settings.
mod hardening;
