//! Attacks on the server as a whole, as an attacker would try them from loopback: floods of
//! wrong-password handshakes (spread over names, or aimed at one), guessing from one address,
//! more connections than allowed, oversized and endless parameter uploads, tokens that should be
//! dead, weak password hashes, and secrets in printed settings.
//!
//! Every assertion is on counts and status codes, never on how long something took.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{DictionaryArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandPreparedStatementQuery, ProstMessageExt,
};
use arrow_flight::{Action, FlightData, FlightDescriptor, HandshakeRequest};
use base64::Engine as _;
use futures::TryStreamExt;
use pitlake::flight::{AuthConfig, Limits, ServerConfig, Transport, hash_password};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use super::{Fixture, Options, auth_text, code, message, query};
use crate::common::rows;

/// A raw handshake on `channel`: the status the server sent.
async fn handshake(channel: &Channel, user: &str, password: &str) -> (Code, String) {
    let mut raw = FlightServiceClient::new(channel.clone());
    let mut request = tonic::Request::new(futures::stream::iter(vec![HandshakeRequest::default()]));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    match raw.handshake(request).await {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_string()),
    }
}

/// Fires `attempts` handshakes at once on one connection and counts the answers by code.
async fn flood(
    channel: &Channel,
    attempts: usize,
    user: impl Fn(usize) -> String,
    password: &str,
) -> BTreeMap<String, usize> {
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let channel = channel.clone();
        let user = user(i);
        let password = password.to_string();
        tasks.push(tokio::spawn(async move {
            handshake(&channel, &user, &password).await
        }));
    }
    let mut counts = BTreeMap::new();
    for task in tasks {
        let (code, message) = task.await.unwrap();
        if code == Code::Unavailable {
            assert!(message.contains("--max-"), "{message}");
        }
        *counts.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    counts
}

fn login_limits(per_user: u32, per_peer: u32, lockout: Duration) -> Limits {
    Limits {
        max_concurrent_logins: 1,
        max_queued_logins: 3,
        max_failed_logins_per_user: per_user,
        max_failed_logins_per_peer: per_peer,
        login_lockout: lockout,
        ..Options::default().limits
    }
}

async fn fixture_with(limits: Limits) -> Fixture {
    Fixture::start(Options {
        limits,
        ..Options::default()
    })
    .await
}

/// Polls `f` until it returns true, for at most 30 s (a lockout ending, a file re-read).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_password_handshakes_stays_bounded() {
    // Guesses spread over names (no per-name lockout applies): only the bounded queue and the
    // one check slot stand between the flood and the server's memory.
    let fixture = fixture_with(login_limits(1000, 1000, Duration::from_secs(60))).await;
    let channel = fixture.channel().await;
    let counts = flood(&channel, 48, |i| format!("mallory{i}"), "guess").await;
    let refused_busy = counts.get("Unavailable").copied().unwrap_or(0);
    let checked = counts.get("Unauthenticated").copied().unwrap_or(0);
    assert_eq!(refused_busy + checked, 48, "{counts:?}");
    // 48 calls at once against 1 running + 3 waiting places: most are turned away at once.
    assert!(refused_busy > 0, "{counts:?}");
    assert!(checked >= 1, "{counts:?}");
    let stats = fixture.server().login_stats();
    assert_eq!(stats.peak_concurrent_checks, 1, "{stats:?}");
    // The server still serves: the right password works, queries run.
    let (ok, why) = handshake(&channel, "alice", "alice-pw").await;
    assert_eq!(ok, Code::Ok, "{why}");
    let mut alice = fixture.login("alice", "alice-pw").await;
    assert_eq!(
        rows(&query(&mut alice, "SELECT 1").await.unwrap()),
        vec![vec!["1"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_a_user_name_out_then_it_recovers() {
    let limits = Limits {
        max_queued_logins: 64,
        ..login_limits(3, 1000, Duration::from_secs(5))
    };
    let fixture = fixture_with(limits).await;
    let channel = fixture.channel().await;
    for _ in 0..3 {
        assert_eq!(
            handshake(&channel, "alice", "wrong").await.0,
            Code::Unauthenticated
        );
    }
    // Locked: even the right password is refused, and says for how long.
    let (code, why) = handshake(&channel, "alice", "alice-pw").await;
    assert_eq!(code, Code::ResourceExhausted, "{why}");
    assert!(
        why.contains("too many failed logins") && why.contains("try again in"),
        "{why}"
    );
    // An unknown name is treated the same, so lockouts do not tell which names exist.
    for _ in 0..3 {
        handshake(&channel, "mallory", "x").await;
    }
    assert_eq!(
        handshake(&channel, "mallory", "x").await.0,
        Code::ResourceExhausted
    );
    // Other users are not affected.
    assert_eq!(handshake(&channel, "bob", "bob-pw").await.0, Code::Ok);
    // Twenty guesses at once at a fresh name: checks in flight count, so at most 3 run.
    let counts = flood(&channel, 20, |_| "carol".into(), "wrong").await;
    let checked = counts.get("Unauthenticated").copied().unwrap_or(0);
    assert!((1..=3).contains(&checked), "{counts:?}");
    assert_eq!(
        counts.get("ResourceExhausted").copied().unwrap_or(0) + checked,
        20,
        "{counts:?}"
    );
    // The lockout ends.
    eventually("alice can log in again", || async {
        handshake(&channel, "alice", "alice-pw").await.0 == Code::Ok
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_many_names_is_locked_out() {
    let fixture = fixture_with(Limits {
        max_queued_logins: 64,
        ..login_limits(1000, 5, Duration::from_secs(60))
    })
    .await;
    let channel = fixture.channel().await;
    for i in 0..5 {
        assert_eq!(
            handshake(&channel, &format!("user{i}"), "guess").await.0,
            Code::Unauthenticated
        );
    }
    let (code, why) = handshake(&channel, "alice", "alice-pw").await;
    assert_eq!(code, Code::ResourceExhausted, "{why}");
    assert!(why.contains("from address 127.0.0.1"), "{why}");
    // Bearer tokens are not logins: the static token still works from that address.
    let mut svc = fixture.service().await;
    assert!(query(&mut svc, "SELECT 1").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_the_server_recovers() {
    let fixture = fixture_with(Limits {
        max_connections: 2,
        ..Options::default().limits
    })
    .await;
    let first = fixture.channel().await;
    let second = fixture.channel().await;
    assert_eq!(handshake(&first, "alice", "alice-pw").await.0, Code::Ok);
    assert_eq!(handshake(&second, "bob", "bob-pw").await.0, Code::Ok);
    // A third connection is closed as it arrives: its call fails, nothing is served on it.
    let third = match fixture.endpoint().connect().await {
        Ok(channel) => handshake(&channel, "alice", "alice-pw").await.0,
        Err(_) => Code::Unavailable,
    };
    assert_ne!(third, Code::Ok);
    assert!(fixture.server().refused_connections() >= 1);
    // The two open connections keep working; closing one makes room.
    assert_eq!(handshake(&second, "bob", "bob-pw").await.0, Code::Ok);
    drop(first);
    eventually("a new connection is served", || async {
        match fixture.endpoint().connect().await {
            Ok(channel) => handshake(&channel, "alice", "alice-pw").await.0 == Code::Ok,
            Err(_) => false,
        }
    })
    .await;
}

/// Creates a prepared statement and returns its handle.
async fn prepare(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> bytes::Bytes {
    let action = Action {
        r#type: "CreatePreparedStatement".into(),
        body: ActionCreatePreparedStatementRequest {
            query: sql.into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec()
        .into(),
    };
    let mut results = client.do_action(action).await.unwrap();
    let result = results.message().await.unwrap().unwrap();
    let any = Any::decode(&*result.body).unwrap();
    let created: ActionCreatePreparedStatementResult = any.unpack().unwrap().unwrap();
    created.prepared_statement_handle
}

async fn close(client: &mut FlightSqlServiceClient<Channel>, handle: &bytes::Bytes) {
    let action = Action {
        r#type: "ClosePreparedStatement".into(),
        body: ActionClosePreparedStatementRequest {
            prepared_statement_handle: handle.clone(),
        }
        .as_any()
        .encode_to_vec()
        .into(),
    };
    client.do_action(action).await.unwrap();
}

/// The messages binding `batch` to a statement (schema, dictionaries, batch).
async fn parameter_messages(handle: &bytes::Bytes, batch: RecordBatch) -> Vec<FlightData> {
    let descriptor = FlightDescriptor::new_cmd(
        CommandPreparedStatementQuery {
            prepared_statement_handle: handle.clone(),
        }
        .as_any()
        .encode_to_vec(),
    );
    FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(futures::stream::iter(vec![Ok(batch)]))
        .try_collect()
        .await
        .unwrap()
}

/// Uploads raw messages to a statement: the status, or OK.
async fn upload(
    client: &mut FlightSqlServiceClient<Channel>,
    messages: Vec<FlightData>,
) -> (Code, String) {
    let outcome = async {
        let mut results = client.do_put(futures::stream::iter(messages)).await?;
        while results.message().await?.is_some() {}
        Ok::<(), arrow_flight::error::FlightError>(())
    }
    .await;
    match outcome {
        Ok(()) => (Code::Ok, String::new()),
        Err(err) => (code(&err), message(&err)),
    }
}

fn text_row(bytes: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("p", DataType::Utf8, false)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from(vec!["x".repeat(bytes)]))],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_uploads_are_bounded_and_the_server_keeps_serving() {
    let fixture = fixture_with(Limits {
        max_parameter_bytes: 64 << 10,
        max_parameter_bytes_per_user: 160 << 10,
        max_parameter_bytes_total: 200 << 10,
        ..Options::default().limits
    })
    .await;
    let mut alice = fixture.login("alice", "alice-pw").await;
    let sql = "SELECT driver_id FROM labels WHERE CAST(driver_id AS VARCHAR) = $1";
    let s1 = prepare(&mut alice, sql).await;

    // One oversized upload: refused, and named.
    let (code, why) = upload(
        &mut alice,
        parameter_messages(&s1, text_row(100 << 10)).await,
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted, "{why}");
    assert!(why.contains("--max-parameter-bytes"), "{why}");

    // Dictionary batches are messages too: one row behind 500 re-sent dictionaries.
    let keys = arrow::array::Int32Array::from(vec![0]);
    let values = StringArray::from(vec!["a"]);
    let dictionary = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "p",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    )]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(dictionary)]).unwrap();
    let encoded = parameter_messages(&s1, batch).await;
    assert_eq!(encoded.len(), 3, "schema, dictionary, batch");
    let mut flood = vec![encoded[0].clone()];
    flood.extend(std::iter::repeat_n(encoded[1].clone(), 500));
    flood.push(encoded[2].clone());
    let (code, why) = upload(&mut alice, flood).await;
    assert_eq!(code, Code::ResourceExhausted, "{why}");
    assert!(why.contains("messages"), "{why}");

    // Per user: two uploads of 60 KiB fit in 160 KiB, a third does not …
    let s2 = prepare(&mut alice, sql).await;
    let s3 = prepare(&mut alice, sql).await;
    for s in [&s1, &s2] {
        let (code, why) = upload(&mut alice, parameter_messages(s, text_row(60 << 10)).await).await;
        assert_eq!(code, Code::Ok, "{why}");
    }
    let (code, why) = upload(
        &mut alice,
        parameter_messages(&s3, text_row(60 << 10)).await,
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted, "{why}");
    assert!(why.contains("--max-parameter-bytes-per-user"), "{why}");
    // … until one statement is closed, which gives its bytes back.
    close(&mut alice, &s1).await;
    let (code, why) = upload(
        &mut alice,
        parameter_messages(&s3, text_row(60 << 10)).await,
    )
    .await;
    assert_eq!(code, Code::Ok, "{why}");

    // Server-wide (200 KiB): alice holds about 120 KiB; admin's 60 KiB fits, svc's next 60 KiB
    // does not.
    let mut admin = fixture.login("admin", "admin-pw").await;
    let a1 = prepare(&mut admin, sql).await;
    let (code, why) = upload(
        &mut admin,
        parameter_messages(&a1, text_row(60 << 10)).await,
    )
    .await;
    assert_eq!(code, Code::Ok, "{why}");
    let mut svc = fixture.service().await;
    let v1 = prepare(&mut svc, sql).await;
    let (code, why) = upload(&mut svc, parameter_messages(&v1, text_row(60 << 10)).await).await;
    assert_eq!(code, Code::ResourceExhausted, "{why}");
    assert!(why.contains("--max-parameter-bytes-total"), "{why}");

    // Everyone else is still served, prepared statements with small parameters included.
    let mut bob = fixture.login("bob", "bob-pw").await;
    assert_eq!(
        rows(
            &query(&mut bob, "SELECT count(*) FROM labels")
                .await
                .unwrap()
        ),
        vec![vec!["4"]]
    );
    let mut statement = bob
        .prepare(
            "SELECT label FROM labels WHERE driver_id = ? ORDER BY ts".into(),
            None,
        )
        .await
        .unwrap();
    let param = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("p", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .unwrap();
    statement.set_parameters(param).unwrap();
    let info = statement.execute().await.unwrap();
    let got = super::fetch(&mut bob, info).await.unwrap();
    assert_eq!(rows(&got), vec![vec!["true"], vec!["false"]]);
}

/// The fixture's auth file with alice's and bob's `token_epoch`, and svc's token or not.
fn auth_with(alice_epoch: u64, bob_epoch: u64, svc_token: bool) -> String {
    let mut text = auth_text("1h");
    text = text.replacen(
        "roles = [\"analyst\"]\n[users.bob]",
        &format!("roles = [\"analyst\"]\ntoken_epoch = {alice_epoch}\n[users.bob]"),
        1,
    );
    text = text.replacen(
        "roles = [\"labeler\"]\n[users.admin]",
        &format!("roles = [\"labeler\"]\ntoken_epoch = {bob_epoch}\n[users.admin]"),
        1,
    );
    if !svc_token {
        let other = "0".repeat(64);
        let start = text.find("tokens = [{ sha256 = \"").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        text.replace_range(
            start..end,
            &format!("tokens = [{{ sha256 = \"{other}\" }}]"),
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_revoked_without_a_restart() {
    let fixture = Fixture::start(Options {
        auth: Some(auth_with(0, 0, true)),
        limits: Limits {
            // Reloads are explicit first; the watcher (which may re-read the same file too) is
            // what the end of the test relies on.
            auth_reload_interval: Some(Duration::from_millis(300)),
            ..Options::default().limits
        },
        ..Options::default()
    })
    .await;
    let file = fixture.dir.path().join("auth.toml");
    let mut alice = fixture.login("alice", "alice-pw").await;
    let mut bob = fixture.login("bob", "bob-pw").await;
    let mut svc = fixture.service().await;
    for client in [&mut alice, &mut bob, &mut svc] {
        assert!(query(client, "SELECT 1").await.is_ok());
    }

    // alice's sessions end (a new epoch), svc's static token is removed; bob is untouched.
    std::fs::write(&file, auth_with(1, 0, false)).unwrap();
    fixture.server().reload_auth().await.unwrap();
    let err = query(&mut alice, "SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), Code::Unauthenticated);
    assert!(message(&err).contains("revoked"), "{}", message(&err));
    assert_eq!(
        code(&query(&mut svc, "SELECT 1").await.unwrap_err()),
        Code::Unauthenticated
    );
    assert!(query(&mut bob, "SELECT 1").await.is_ok());
    // A new login is under the new epoch.
    let mut alice = fixture.login("alice", "alice-pw").await;
    assert!(query(&mut alice, "SELECT 1").await.is_ok());

    // A broken file changes nothing.
    std::fs::write(&file, "[users.alice\n").unwrap();
    assert!(fixture.server().reload_auth().await.is_err());
    assert!(query(&mut alice, "SELECT 1").await.is_ok());

    // The server notices a changed file by itself.
    std::fs::write(&file, auth_with(1, 7, false)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(&mut bob, "SELECT 1").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the file watcher never revoked bob's session"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(query(&mut alice, "SELECT 1").await.is_ok());
}

fn weak_hash(password: &str) -> String {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

#[test]
fn weak_password_hashes_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        format!(
            "[users.alice]\npassword_hash = \"{}\"\nroles = []\n",
            weak_hash("pw")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitlake"))
        .arg("--warehouse")
        .arg(dir.path())
        .args(["serve", "--insecure-plaintext", "--listen", "127.0.0.1:0"])
        .arg("--auth-file")
        .arg(&auth)
        .env_remove("PITLAKE_AUTH")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("user `alice`") && err.contains("too weak"),
        "{err}"
    );
    assert!(err.contains("--hash-password"), "{err}");
}

#[test]
fn printed_settings_hold_no_secret() {
    let pki = super::pki();
    let hash = hash_password("alice-pw").unwrap();
    let auth = AuthConfig::parse(
        &format!(
            "[users.alice]\npassword_hash = \"{hash}\"\n[users.svc]\ntokens = [{{ sha256 = \"{}\" }}]\n",
            "ab".repeat(32)
        ),
        pitlake::flight::auth::AuthFormat::Toml,
        "test",
    )
    .unwrap();
    let server = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        transport: Transport::Tls {
            cert_pem: pki.server_cert.clone(),
            key_pem: pki.server_key.clone(),
            client_ca_pem: Some(pki.ca.clone()),
        },
        limits: Limits::default(),
        auth,
        auth_origin: None,
        signing: None,
        http_listen: None,
    };
    let key_body = pki
        .server_key
        .lines()
        .find(|l| !l.starts_with("-----"))
        .unwrap()
        .to_string();
    let location = pitlake::WarehouseLocation::parse("s3://bucket/features")
        .unwrap()
        .with_storage_options([
            (
                "secret_access_key".to_string(),
                "hunter2-secret".to_string(),
            ),
            (
                "azure_storage_sas_key".to_string(),
                "hunter2-sas".to_string(),
            ),
            ("region".to_string(), "eu-west-1".to_string()),
        ]);
    let settings = pitlake::Settings::new(location);
    for shown in [
        format!("{server:?}"),
        format!("{settings:?}"),
        format!("{server:#?}"),
    ] {
        assert!(!shown.contains(&key_body), "the TLS key is shown: {shown}");
        assert!(
            !shown.contains("argon2id"),
            "a password hash is shown: {shown}"
        );
        assert!(
            !shown.contains(&"ab".repeat(32)),
            "a token hash is shown: {shown}"
        );
        assert!(
            !shown.contains("hunter2"),
            "a storage secret is shown: {shown}"
        );
    }
    assert!(format!("{settings:?}").contains("eu-west-1"));
}
