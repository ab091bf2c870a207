//! The REST API on the HTTP port (`/v1/…`): the same users, tokens, grants, limits and engine
//! path as Flight SQL, for tools that speak HTTP and JSON. Described by `docs/openapi.json`,
//! served at `/v1/openapi.json`.
//!
//! - `POST /v1/login` (basic auth) issues the session token Flight's handshake issues; every
//!   other `/v1` call but the document takes `Authorization: Bearer <token>` (or a static token).
//! - `POST /v1/query` runs a query or a training set and streams its rows as Arrow IPC, Parquet,
//!   JSON lines or CSV, as `Accept` asks: batch by batch, never collected. Errors found before
//!   the first row are statuses with a JSON body; one after it cuts the body short (the chunked
//!   encoding is never terminated), so a truncated answer cannot pass for a whole one.
//! - `POST /v1/statements` runs a statement that changes something (DSL definitions, drops,
//!   table writes); `POST /v1/exports` exports a training set and answers with its manifest.
//! - `GET /v1/{kind}[/{name}[/history|/diff]]` and `DELETE /v1/{kind}/{name}` are the registry's
//!   `SHOW`, `DESCRIBE`, `SHOW HISTORY`, `SHOW DIFF` and `DROP`, made from the path with every
//!   name quoted, so a name cannot become SQL.
//!
//! Every statement goes through `PitlakeFlightSql::execute`: planned, authorized against the
//! caller's grants, run under a query slot, the query timeout and memory limit, logged and
//! counted in `/metrics`. Errors are `{"error": {"code", "message"}}` with the gRPC code's
//! name, so a client handles both transports alike.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Code, Status};

use super::auth::Principal;
use super::http_state::{Connection, HttpState};
use super::metrics::Refusal;
use super::service::{Executed, Want};
use crate::engine::{chosen_properties, manifest_location};

/// The OpenAPI document of this API, as kept in the repository.
pub(crate) const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// The most bytes a request body may have: a statement is at most 1 MiB, and JSON escaping
/// may double it.
const MAX_BODY_BYTES: usize = 2 << 20 | 4096;
/// How long a client may take to send a request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest name or model version a path may carry.
const MAX_NAME_BYTES: usize = 256;
/// The most rows a registry answer (a listing, a history, a diff) may hold; past it the
/// answer is refused rather than collected.
const MAX_REGISTRY_ROWS: usize = 100_000;
/// The most bytes (as Arrow holds them) a registry answer may hold before it is written as
/// JSON: it is collected, so it is bounded.
const MAX_REGISTRY_BYTES: usize = 16 << 20;
/// A Parquet answer's row group is written out once it holds this many bytes.
const PARQUET_ROW_GROUP_BYTES: usize = 16 << 20;

/// The `/v1` routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/login", post(login))
        .route("/v1/query", post(query))
        .route("/v1/statements", post(statements))
        .route("/v1/exports", post(exports))
        .route("/v1/{kind}", get(list))
        .route("/v1/{kind}/{name}", get(describe).delete(drop_object))
        .route("/v1/{kind}/{name}/history", get(history))
        .route("/v1/{kind}/{name}/diff", get(diff))
}

// ---- Errors ----------------------------------------------------------------------------------

/// An error answer: an HTTP status and `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A client error (400) that says what was wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }

    /// Any status with its code's name.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// The HTTP status of a gRPC code, and the code's name.
fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "OK"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "CANCELLED"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let (http, code) = http_status(status.code());
        Self::new(http, code, status.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, json_body(&body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pitlake\""),
            );
        }
        response
    }
}

fn json_body(value: &Value) -> String {
    let mut text = value.to_string();
    text.push('\n');
    text
}

/// A 200 with a JSON body.
fn json_ok(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json_body(value),
    )
        .into_response()
}

/// What a path or method that does not exist gets.
/// (The path is not repeated: an answer never echoes what a client sent.)
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such endpoint; the API is described at /v1/openapi.json",
    )
}

/// What a known path with the wrong method gets.
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        format!(
            "this endpoint does not take {method} (its methods are in the Allow header); the API \
             is described at /v1/openapi.json"
        ),
    )
}

// ---- Authentication and bodies ---------------------------------------------------------------

/// Once the server stops taking calls, new ones are refused (running answers finish).
fn refuse_when_stopped(state: &HttpState) -> Result<(), ApiError> {
    if state.stopped.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the server is shutting down; try another replica",
        ));
    }
    Ok(())
}

/// The caller of a `/v1` call, from its bearer token.
fn caller(state: &HttpState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    refuse_when_stopped(state)?;
    let refuse = |message: String| {
        state.service_metrics().refused(Refusal::Unauthenticated);
        tracing::info!(target: "pitlake::http", reason = %message, "call refused: unauthenticated");
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
    };
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(refuse(
            "more than one Authorization header: send exactly one, `Authorization: Bearer \
             <token>`"
                .into(),
        ));
    }
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(refuse(
            "no credential: send `Authorization: Bearer <token>`, a token from POST /v1/login \
             (basic auth) or a static token"
                .into(),
        ));
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() >= 6 && v[..6].eq_ignore_ascii_case("basic "));
    if basic {
        return Err(refuse(
            "basic auth is taken by POST /v1/login only: log in there and send the token it \
             returns as `Authorization: Bearer <token>`"
                .into(),
        ));
    }
    state
        .auth()
        .authenticate_bearer(headers)
        .map_err(|status| refuse(status.message().to_string()))
}

/// Reads a JSON request body into `T`, refusing other media types, bodies over
/// [`MAX_BODY_BYTES`], slow bodies and unknown or missing fields, each with what was wrong.
async fn json_request<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media.as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            "the request body must be JSON: send `Content-Type: application/json`",
        ));
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "INVALID_ARGUMENT",
                format!(
                    "the request body is larger than {MAX_BODY_BYTES} bytes (a statement may \
                     have at most 1 MiB); load long value lists into a table"
                ),
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "DEADLINE_EXCEEDED",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// A query string's parameters, refusing any not in `allowed` and any given twice.
fn query_params(
    raw: Option<String>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(ApiError::bad_request(if allowed.is_empty() {
                format!("unknown query parameter `{key}`: this endpoint takes none")
            } else {
                format!(
                    "unknown query parameter `{key}`; this endpoint takes {}",
                    allowed.join(", ")
                )
            }));
        }
        if params.insert(key.to_string(), value.to_string()).is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{key}` is given twice"
            )));
        }
    }
    Ok(params)
}

/// A registry version from a query parameter: a whole number, 0 or more.
fn registry_version(
    params: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|raw| {
            raw.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{name}` must be a registry version: a whole number, 0 or more, not \
                         `{}`",
                    truncated(raw)
                ))
            })
        })
        .transpose()
}

fn truncated(text: &str) -> String {
    let mut cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

// ---- Login and the document ------------------------------------------------------------------

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn login(
    State(state): State<HttpState>,
    axum::Extension(connection): axum::Extension<Connection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    refuse_when_stopped(&state)?;
    let peer: Option<SocketAddr> = Some(connection.peer);
    let (principal, token) = state.service.login(&headers, peer).await?;
    Ok(json_ok(&json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": state.auth().token_ttl().as_secs(),
        "user": principal.user,
    })))
}

// ---- Queries and statements ------------------------------------------------------------------

/// A statement in a request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementRequest {
    sql: String,
}

fn new_query_id() -> Result<String, ApiError> {
    Ok(super::service::new_query_id()?)
}

async fn query(
    State(state): State<HttpState>,
    axum::Extension(connection): axum::Extension<Connection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &headers)?;
    query_params(raw, &[])?;
    let (format, media) = Format::negotiate(&headers)?;
    let request: StatementRequest = json_request(&headers, body).await?;
    let query_id = new_query_id()?;
    let running = match state
        .service
        .execute(
            &principal,
            query_id.clone(),
            &request.sql,
            Vec::new(),
            Want::Rows,
        )
        .await?
    {
        Executed::Rows(running) => running,
        Executed::Done(..) => return Err(ApiError::bad_request(Want::Rows.refusal())),
    };
    let schema = running.stream.schema();
    let record = running.record.clone();
    let deadline = running.bounds.deadline;
    let mut batches = Box::pin(running.batches());
    // An error before the first row is an answer of its own, with its status.
    let first = match batches.next().await {
        Some(Ok(batch)) => Some(batch),
        Some(Err(status)) => return Err(status.into()),
        None => None,
    };
    // The first bytes are made before the answer starts, so a result the format cannot hold
    // (nested columns in CSV, intervals in Parquet) is a 406 that says so, not a cut answer.
    let unwritable = |e: String| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "INVALID_ARGUMENT",
            format!(
                "the result cannot be written as {media}: {e}; ask for \
                 application/vnd.apache.arrow.stream, which holds every type",
            ),
        )
    };
    let mut encoder = Encoder::new(format, schema.clone()).map_err(unwritable)?;
    let (head, encoder) = match first {
        Some(batch) => (encoder.write(&batch).map_err(unwritable)?, Some(encoder)),
        None => (encoder.finish(&schema).map_err(unwritable)?, None),
    };
    if !head.is_empty() {
        record.sent(head.len() as u64);
    }
    // A client that stops reading stops the stream from being polled, so the query's own
    // deadline would never be seen: past it, the connection is closed, which drops the stream
    // and cancels the query.
    let finished = tokio_util::sync::CancellationToken::new();
    {
        let (finished, closed) = (finished.clone(), connection.closed.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = finished.cancelled() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(
                        target: "pitlake::http",
                        "an answer was not read before the query timeout; its connection is closed"
                    );
                    closed.cancel();
                }
            }
        });
    }
    let finished = finished.drop_guard();
    let body = encoded(encoder, schema, head, batches, move |bytes| {
        record.sent(bytes as u64);
    });
    let stream = body.map(move |item| {
        let _ = &finished;
        item
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    if let Ok(id) = HeaderValue::from_str(&query_id) {
        headers.insert("x-pitlake-query-id", id);
    }
    Ok(response)
}

async fn statements(
    State(state): State<HttpState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &headers)?;
    query_params(raw, &[])?;
    let request: StatementRequest = json_request(&headers, body).await?;
    let message = change(&state, &principal, &request.sql).await?;
    Ok(json_ok(&json!({ "message": message })))
}

/// Runs a statement that changes something; its one-line report.
async fn change(state: &HttpState, principal: &Principal, sql: &str) -> Result<String, ApiError> {
    match state
        .service
        .execute(principal, new_query_id()?, sql, Vec::new(), Want::Change)
        .await?
    {
        Executed::Done(message, _) => Ok(message),
        Executed::Rows(_) => Err(ApiError::bad_request(Want::Change.refusal())),
    }
}

/// An export request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    /// `TRAINING SET …`.
    training_set: String,
    /// A path or URL on the server's side.
    to: String,
    /// parquet, csv or delta.
    #[serde(default)]
    format: Option<String>,
}

async fn exports(
    State(state): State<HttpState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = caller(&state, &headers)?;
    query_params(raw, &[])?;
    let request: ExportRequest = json_request(&headers, body).await?;
    let training_set = request.training_set.trim();
    let starts = training_set
        .get(..12)
        .is_some_and(|head| head.eq_ignore_ascii_case("TRAINING SET"));
    if !starts {
        return Err(ApiError::bad_request(
            "`training_set` must be a training set statement: `TRAINING SET LABELS … AT … \
             FEATURES (…)`",
        ));
    }
    if request.to.is_empty() || request.to.len() > 4096 {
        return Err(ApiError::bad_request(
            "`to` must be a path or URL of at most 4096 bytes where the server writes the export",
        ));
    }
    let format = match request.format.as_deref().map(str::to_ascii_lowercase) {
        None => String::new(),
        Some(f) if ["parquet", "csv", "delta"].contains(&f.as_str()) => format!(" FORMAT {f}"),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`format` is parquet, csv or delta, not `{}`",
                truncated(&other)
            )));
        }
    };
    let sql = format!(
        "EXPORT {training_set} TO {}{format}",
        quote_literal(&request.to)
    );
    let message = change(&state, &principal, &sql).await?;
    // The export published its manifest last; read it back and check it is this export's
    // (another export to the same place may have replaced it since).
    let at = manifest_location(&request.to);
    let manifest = state
        .engine
        .for_caller(&principal.user, principal.grants.clone())
        .read_manifest(&at)
        .await
        .map_err(|e| ApiError::from(super::status::status_for(&e)))?;
    if manifest.statement != sql || !message.contains(&manifest.output.content_hash.to_string()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ABORTED",
            format!(
                "the export was written, but another export replaced the manifest at {at} \
                 before it could be read back; export again to a place of its own"
            ),
        ));
    }
    Ok(json_ok(&json!({
        "message": message,
        "manifest_location": at,
        "manifest": manifest,
    })))
}

// ---- The registry ----------------------------------------------------------------------------

/// A registry object kind as the path names it: the words of `SHOW` and of the others.
#[derive(Debug, Clone, Copy)]
struct Kind {
    plural: &'static str,
    singular: &'static str,
}

fn kind(path: &str) -> Result<Kind, ApiError> {
    let (plural, singular) = match path {
        "entities" => ("ENTITIES", "ENTITY"),
        "feature-views" => ("FEATURE VIEWS", "FEATURE VIEW"),
        "feature-services" => ("FEATURE SERVICES", "FEATURE SERVICE"),
        "models" => ("MODELS", "MODEL"),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such endpoint: the registry's kinds are entities, feature-views, \
                 feature-services and models"
                    .to_string(),
            ));
        }
    };
    Ok(Kind { plural, singular })
}

/// What every registry call starts with: the kind its path names, its caller, and its query
/// parameters (of `allowed` only).
fn registry_call(
    state: &HttpState,
    path: &str,
    raw: Option<String>,
    headers: &HeaderMap,
    allowed: &[&str],
) -> Result<(Kind, Principal, BTreeMap<String, String>), ApiError> {
    let kind = kind(path)?;
    let principal = caller(state, headers)?;
    Ok((kind, principal, query_params(raw, allowed)?))
}

/// `"name"`, quoted as an identifier.
fn quote_ident(name: &str) -> Result<String, ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a name has 1 to {MAX_NAME_BYTES} bytes and no control characters"
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// `'text'`, quoted as a string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `<kind> "name" [VERSION 'v']`: the object a path names.
fn object(kind: Kind, name: &str, params: &BTreeMap<String, String>) -> Result<String, ApiError> {
    // A model is listed as `name@version`; that key names the version too.
    let (name, listed_version) = match name.rsplit_once('@') {
        Some((model, version))
            if kind.singular == "MODEL" && !model.is_empty() && !version.is_empty() =>
        {
            (model, Some(version.to_string()))
        }
        _ => (name, None),
    };
    if listed_version.is_some() && params.contains_key("version") {
        return Err(ApiError::bad_request(
            "the model's version is given twice: in its name (`name@version`) and as `version`",
        ));
    }
    let mut text = format!("{} {}", kind.singular, quote_ident(name)?);
    if let Some(version) = params.get("version").or(listed_version.as_ref()) {
        if kind.singular != "MODEL" {
            return Err(ApiError::bad_request(
                "`version` names a model's version; other objects have registry versions \
                 (`registry_version`)",
            ));
        }
        if version.is_empty() || version.len() > MAX_NAME_BYTES {
            return Err(ApiError::bad_request(format!(
                "a model version has 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        text.push_str(&format!(" VERSION {}", quote_literal(version)));
    }
    Ok(text)
}

fn as_of(version: Option<i64>) -> String {
    version.map_or_else(String::new, |v| format!(" AS OF REGISTRY VERSION {v}"))
}

/// Runs a registry query and collects its rows (they are few: one per object or change).
async fn registry_rows(
    state: &HttpState,
    principal: &Principal,
    sql: &str,
) -> Result<Vec<RecordBatch>, ApiError> {
    let running = match state
        .service
        .execute(principal, new_query_id()?, sql, Vec::new(), Want::Rows)
        .await?
    {
        Executed::Rows(running) => running,
        Executed::Done(..) => return Err(ApiError::bad_request(Want::Rows.refusal())),
    };
    let mut batches = Box::pin(running.batches());
    let mut collected = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
        if rows > MAX_REGISTRY_ROWS || bytes > MAX_REGISTRY_BYTES {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                format!(
                    "the answer has more than {MAX_REGISTRY_ROWS} rows or {} MiB; run the \
                     statement through POST /v1/query, which streams",
                    MAX_REGISTRY_BYTES >> 20
                ),
            ));
        }
        collected.push(batch);
    }
    Ok(collected)
}

/// Rows as JSON objects; the columns in `json_columns` hold JSON text and are embedded as
/// JSON values.
fn rows_json(
    batches: &[RecordBatch],
    json_columns: impl Fn(&str) -> bool,
) -> Result<Vec<Value>, ApiError> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    for batch in batches {
        writer.write(batch).map_err(internal)?;
    }
    writer.finish().map_err(internal)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let Value::Array(mut rows) = serde_json::from_slice(&bytes).map_err(internal)? else {
        return Err(internal("the rows are not a JSON array"));
    };
    for row in &mut rows {
        if let Value::Object(fields) = row {
            for (name, value) in fields.iter_mut() {
                if json_columns(name)
                    && let Value::String(text) = value
                    && let Ok(parsed) = serde_json::from_str::<Value>(text)
                {
                    *value = parsed;
                }
            }
        }
    }
    Ok(rows)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        format!("writing the answer as JSON failed: {e}"),
    )
}

async fn list(
    State(state): State<HttpState>,
    Path(path): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (kind, principal, params) =
        registry_call(&state, &path, raw, &headers, &["registry_version"])?;
    let version = registry_version(&params, "registry_version")?;
    let sql = format!("SHOW {}{}", kind.plural, as_of(version));
    let batches = registry_rows(&state, &principal, &sql).await?;
    Ok(json_ok(
        &json!({ "items": rows_json(&batches, |_| false)? }),
    ))
}

async fn describe(
    State(state): State<HttpState>,
    Path((path, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (kind, principal, params) = registry_call(
        &state,
        &path,
        raw,
        &headers,
        &["registry_version", "version"],
    )?;
    let version = registry_version(&params, "registry_version")?;
    let sql = format!(
        "DESCRIBE {}{}",
        object(kind, &name, &params)?,
        as_of(version)
    );
    let batches = registry_rows(&state, &principal, &sql).await?;
    // `property | value` rows become one object; the definition is JSON of its own.
    let mut described = serde_json::Map::new();
    for batch in &batches {
        let (Some(property), Some(value)) = (
            string_column(batch, "property"),
            string_column(batch, "value"),
        ) else {
            return Err(internal("DESCRIBE answered without property and value"));
        };
        for row in 0..batch.num_rows() {
            let key = property.value(row).replace(' ', "_");
            let text = value.is_valid(row).then(|| value.value(row).to_string());
            let value = match text {
                Some(text) if key == "definition" => {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                }
                Some(text) => Value::String(text),
                None => Value::Null,
            };
            described.insert(key, value);
        }
    }
    Ok(json_ok(&Value::Object(described)))
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
}

async fn history(
    State(state): State<HttpState>,
    Path((path, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (kind, principal, params) = registry_call(&state, &path, raw, &headers, &["version"])?;
    let sql = format!("SHOW HISTORY OF {}", object(kind, &name, &params)?);
    let batches = registry_rows(&state, &principal, &sql).await?;
    Ok(json_ok(&json!({
        "items": rows_json(&batches, |column| column == "definition")?
    })))
}

async fn diff(
    State(state): State<HttpState>,
    Path((path, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (kind, principal, params) =
        registry_call(&state, &path, raw, &headers, &["from", "to", "version"])?;
    let (Some(from), Some(to)) = (
        registry_version(&params, "from")?,
        registry_version(&params, "to")?,
    ) else {
        return Err(ApiError::bad_request(
            "a diff needs `from` and `to`: the two registry versions to compare",
        ));
    };
    let sql = format!(
        "SHOW DIFF OF {} BETWEEN REGISTRY VERSION {from} AND REGISTRY VERSION {to}",
        object(kind, &name, &params)?
    );
    let batches = registry_rows(&state, &principal, &sql).await?;
    // The two columns are named after the versions; the answer names them `from` and `to`.
    let rows = rows_json(&batches, |column| column.starts_with("at_version_"))?;
    let (from_column, to_column) = (format!("at_version_{from}"), format!("at_version_{to}"));
    let items: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let field = |name: &str| row.get(name).cloned().unwrap_or(Value::Null);
            json!({"field": field("field"), "from": field(&from_column), "to": field(&to_column)})
        })
        .collect();
    Ok(json_ok(&json!({ "from": from, "to": to, "items": items })))
}

async fn drop_object(
    State(state): State<HttpState>,
    Path((path, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (kind, principal, params) = registry_call(&state, &path, raw, &headers, &["version"])?;
    let sql = format!("DROP {}", object(kind, &name, &params)?);
    let message = change(&state, &principal, &sql).await?;
    Ok(json_ok(&json!({ "message": message })))
}

// ---- Result formats --------------------------------------------------------------------------

/// A result's format, from `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    ArrowStream,
    Parquet,
    JsonLines,
    Csv,
}

/// The media types answered, and the format of each.
const MEDIA_TYPES: [(&str, Format); 7] = [
    ("application/vnd.apache.arrow.stream", Format::ArrowStream),
    ("application/vnd.apache.parquet", Format::Parquet),
    ("application/x-parquet", Format::Parquet),
    ("application/x-ndjson", Format::JsonLines),
    ("application/jsonl", Format::JsonLines),
    ("application/json-lines", Format::JsonLines),
    ("text/csv", Format::Csv),
];

impl Format {
    fn media_type(self) -> &'static str {
        match self {
            Format::ArrowStream => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::JsonLines => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    /// The format `Accept` prefers (by `q`, then by the order it lists them), and the media
    /// type to answer with (the one asked for); JSON lines when it accepts anything or is
    /// absent.
    fn negotiate(headers: &HeaderMap) -> Result<(Self, &'static str), ApiError> {
        let accept: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if accept.is_empty() {
            return Ok((Format::JsonLines, Format::JsonLines.media_type()));
        }
        let mut best: Option<(f32, Format, &'static str)> = None;
        for range in accept.iter().flat_map(|v| v.split(',')) {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            if q.is_nan() || q <= 0.0 {
                continue;
            }
            let format = match media.as_str() {
                "*/*" | "application/*" => {
                    Some((Format::JsonLines, Format::JsonLines.media_type()))
                }
                "text/*" => Some((Format::Csv, Format::Csv.media_type())),
                m => MEDIA_TYPES.iter().find(|(t, _)| *t == m).map(|(t, f)| {
                    (
                        *f,
                        if *f == Format::Csv {
                            f.media_type()
                        } else {
                            *t
                        },
                    )
                }),
            };
            if let Some((format, media)) = format
                && best.is_none_or(|(b, _, _)| q > b)
            {
                best = Some((q, format, media));
            }
        }
        best.map(|(_, f, m)| (f, m)).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "INVALID_ARGUMENT",
                format!(
                    "rows are answered as {}; `Accept` asks for none of them",
                    MEDIA_TYPES
                        .iter()
                        .map(|(t, _)| *t)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }
}

/// Writes batches in a format, handing out the bytes as they are made.
enum Encoder {
    Arrow(arrow::ipc::writer::StreamWriter<Vec<u8>>),
    /// The writer is made with the first batch, which chooses the columns written without a
    /// dictionary, as `pitlake sql --format parquet` and exports choose them.
    Parquet {
        schema: SchemaRef,
        writer: Option<parquet::arrow::ArrowWriter<Vec<u8>>>,
    },
    JsonLines,
    Csv {
        header: bool,
    },
}

impl Encoder {
    fn new(format: Format, schema: SchemaRef) -> Result<Self, String> {
        Ok(match format {
            Format::ArrowStream => Encoder::Arrow(
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
                    .map_err(|e| e.to_string())?,
            ),
            Format::Parquet => {
                // A schema Parquet cannot hold is refused now, before any row.
                parquet::arrow::ArrowSchemaConverter::new()
                    .convert(&schema)
                    .map_err(|e| e.to_string())?;
                Encoder::Parquet {
                    schema,
                    writer: None,
                }
            }
            Format::JsonLines => Encoder::JsonLines,
            Format::Csv => Encoder::Csv { header: true },
        })
    }

    /// The bytes of one batch (maybe none yet: Parquet writes whole row groups).
    fn write(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Arrow(writer) => {
                writer.write(batch).map_err(|e| e.to_string())?;
                Ok(std::mem::take(writer.get_mut()))
            }
            Encoder::Parquet { schema, writer } => {
                let writer = match writer {
                    Some(writer) => writer,
                    // The first rows choose, not an empty batch before them.
                    None if batch.num_rows() == 0 => return Ok(Vec::new()),
                    None => {
                        let props = chosen_properties(schema, std::slice::from_ref(batch));
                        let made = parquet::arrow::ArrowWriter::try_new(
                            Vec::new(),
                            schema.clone(),
                            Some(props),
                        );
                        writer.insert(made.map_err(|e| e.to_string())?)
                    }
                };
                writer.write(batch).map_err(|e| e.to_string())?;
                if writer.in_progress_size() >= PARQUET_ROW_GROUP_BYTES {
                    writer.flush().map_err(|e| e.to_string())?;
                }
                // The writer counts the bytes it wrote itself, so taking them is safe.
                Ok(std::mem::take(writer.inner_mut()))
            }
            Encoder::JsonLines => {
                let mut writer = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
                writer.write(batch).map_err(|e| e.to_string())?;
                writer.finish().map_err(|e| e.to_string())?;
                Ok(writer.into_inner())
            }
            Encoder::Csv { header } => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(Vec::new());
                writer.write(batch).map_err(|e| e.to_string())?;
                *header = false;
                Ok(writer.into_inner())
            }
        }
    }

    /// The closing bytes.
    fn finish(self, schema: &SchemaRef) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Arrow(mut writer) => {
                writer.finish().map_err(|e| e.to_string())?;
                Ok(std::mem::take(writer.get_mut()))
            }
            Encoder::Parquet { schema, writer } => {
                let mut writer = match writer {
                    Some(writer) => writer,
                    // No rows: the file names the columns all the same.
                    None => parquet::arrow::ArrowWriter::try_new(Vec::new(), schema, None)
                        .map_err(|e| e.to_string())?,
                };
                writer.finish().map_err(|e| e.to_string())?;
                Ok(std::mem::take(writer.inner_mut()))
            }
            Encoder::JsonLines => Ok(Vec::new()),
            // A result without rows still names its columns.
            Encoder::Csv { header: true } => {
                let empty = RecordBatch::new_empty(schema.clone());
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(Vec::new());
                writer.write(&empty).map_err(|e| e.to_string())?;
                Ok(writer.into_inner())
            }
            Encoder::Csv { header: false } => Ok(Vec::new()),
        }
    }
}

/// The body: `head` (the first batch's bytes, or the whole answer when `encoder` is done), the
/// rest as it comes, then the format's closing bytes. An error ends the body with an error,
/// which cuts the response short.
fn encoded(
    encoder: Option<Encoder>,
    schema: SchemaRef,
    head: Vec<u8>,
    rest: std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch, Status>> + Send>>,
    sent: impl Fn(usize) + Send + Sync + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct State {
        encoder: Option<Encoder>,
        rest: std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch, Status>> + Send>>,
        schema: SchemaRef,
    }
    let state = State {
        encoder,
        rest,
        schema,
    };
    let sent = Arc::new(sent);
    let tail = futures::stream::unfold(state, move |mut state| {
        let sent = sent.clone();
        async move {
            loop {
                let encoder = state.encoder.as_mut()?;
                let bytes = match state.rest.next().await {
                    Some(Ok(batch)) => encoder.write(&batch),
                    Some(Err(status)) => {
                        state.encoder = None;
                        tracing::info!(
                            target: "pitlake::http",
                            error = status.message(),
                            "the result stream failed; the response is cut short"
                        );
                        return Some((
                            Err(std::io::Error::other(status.message().to_string())),
                            state,
                        ));
                    }
                    None => {
                        let encoder = state.encoder.take()?;
                        encoder.finish(&state.schema)
                    }
                };
                match bytes {
                    Ok(bytes) if bytes.is_empty() => continue,
                    Ok(bytes) => {
                        sent(bytes.len());
                        return Some((Ok(Bytes::from(bytes)), state));
                    }
                    Err(e) => {
                        state.encoder = None;
                        return Some((Err(std::io::Error::other(e)), state));
                    }
                }
            }
        }
    });
    let head = (!head.is_empty()).then(|| Ok(Bytes::from(head)));
    futures::stream::iter(head).chain(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn accept_picks_the_preferred_supported_format() {
        let format = |value: &str| Format::negotiate(&accept(value)).unwrap().0;
        assert_eq!(
            Format::negotiate(&HeaderMap::new()).unwrap().0,
            Format::JsonLines
        );
        assert_eq!(format("*/*"), Format::JsonLines);
        assert_eq!(
            format("text/html, application/vnd.apache.parquet"),
            Format::Parquet
        );
        // The answer names the media type asked for.
        assert_eq!(
            Format::negotiate(&accept("application/jsonl")).unwrap(),
            (Format::JsonLines, "application/jsonl")
        );
        assert_eq!(
            format("application/x-ndjson;q=0.5, application/vnd.apache.arrow.stream"),
            Format::ArrowStream
        );
        assert_eq!(format("text/csv;q=0, */*;q=0.1"), Format::JsonLines);
        let refused = Format::negotiate(&accept("text/html")).unwrap_err();
        assert_eq!(refused.status, StatusCode::NOT_ACCEPTABLE);
        assert!(
            refused
                .message
                .contains("application/vnd.apache.arrow.stream")
        );
    }

    #[test]
    fn names_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\nb").is_err());
        assert!(quote_ident(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn query_parameters_are_checked() {
        let params = query_params(Some("registry_version=3".into()), &["registry_version"]);
        assert_eq!(
            registry_version(&params.unwrap(), "registry_version").unwrap(),
            Some(3)
        );
        assert!(query_params(Some("x=1".into()), &["registry_version"]).is_err());
        assert!(query_params(Some("a=1&a=2".into()), &["a"]).is_err());
        let negative = query_params(Some("registry_version=-1".into()), &["registry_version"]);
        assert!(registry_version(&negative.unwrap(), "registry_version").is_err());
    }

    #[test]
    fn every_code_has_a_status() {
        assert_eq!(http_status(Code::PermissionDenied).0, StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound).0, StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Unauthenticated).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            http_status(Code::ResourceExhausted).0,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
