//! The Flight SQL handlers.
//!
//! Every handler starts from the [`Principal`] the auth layer put in the request. Statements go
//! parse → plan (no rows read) → authorize → ticket in `GetFlightInfo`, and ticket → parse →
//! plan → authorize → run in `DoGet`: the second authorization is the one that counts, the first
//! only refuses early. Metadata calls list only what the caller may read.

use super::metrics::{Ended, Metrics, Refusal};
use super::uploads::{IfExists, Uploads, batch_bytes};
use datafusion::execution::memory_pool::MemoryConsumer;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    SqlSupportedTransaction, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::planning::{PlannedStatement, TableName, report_schema};
use crate::engine::{CATALOG, Engine, Output};
use crate::flight::auth::{Authenticator, Principal, basic_credentials, random_bytes};
use crate::flight::config::Limits;
use crate::flight::grants::Pattern;
use crate::flight::layer::principal;
use crate::flight::prepared::PreparedStatements;
use crate::flight::status::status_for_principal;
use crate::flight::stream::{Bounds, FlightStream, QueryRecord, Running, flight_stream};
use crate::flight::throttle::LoginThrottle;
use crate::flight::tickets::{TicketSigner, decode_parameters};

/// Statements are logged up to this many characters.
const LOGGED_SQL_CHARS: usize = 1000;

/// Messages one parameter upload may have: a schema, dictionary batches and record batches
/// (one row of values needs one record batch and a dictionary batch per dictionary column).
pub(crate) const MAX_UPLOAD_MESSAGES: usize = 64;

/// How long one parameter upload may take from its first message to its last.
pub(crate) const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The bytes a Flight message occupies: header, body, metadata and descriptor.
fn flight_data_bytes(data: &arrow_flight::FlightData) -> usize {
    let descriptor = data.flight_descriptor.as_ref().map_or(0, |d| {
        d.cmd.len() + d.path.iter().map(String::len).sum::<usize>()
    });
    data.data_header.len() + data.data_body.len() + data.app_metadata.len() + descriptor
}

/// State shared by all calls.
pub(crate) struct Shared {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub tickets: TicketSigner,
    pub prepared: PreparedStatements,
    pub limits: Limits,
    pub slots: Arc<Semaphore>,
    /// Cancelled when the shutdown grace period is over: running queries stop.
    pub cancel_queries: CancellationToken,
    /// Queries whose streams are open.
    pub active: Arc<AtomicUsize>,
    pub sql_info: SqlInfoData,
    /// The bounds on logging in.
    pub logins: Arc<LoginThrottle>,
    /// The counters served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Tables uploaded for sessions (bulk ingest).
    pub uploads: Arc<Uploads>,
}

/// Which kind of statement a caller expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// A query: it returns rows.
    Rows,
    /// A statement that changes something and reports in one line.
    Change,
    /// Either.
    Any,
}

impl Want {
    /// Why a statement of the other kind is refused.
    pub(crate) fn refusal(self) -> &'static str {
        match self {
            Want::Rows => {
                "the statement changes something and returns no rows; run it as an update \
                 (Flight SQL: CommandStatementUpdate; HTTP: POST /v1/statements)"
            }
            Want::Change | Want::Any => {
                "the statement is a query: it returns rows; run it as a query (Flight SQL: \
                 CommandStatementQuery; HTTP: POST /v1/query)"
            }
        }
    }
}

/// A statement that ran: its rows, still to be pulled, or its report.
pub(crate) enum Executed {
    /// A query's rows under the query's bounds.
    Rows(Running),
    /// What a statement that changed something did; its record says finished.
    Done(String, Arc<QueryRecord>),
}

/// The Flight SQL service over an engine.
#[derive(Clone)]
pub(crate) struct PitlakeFlightSql {
    shared: Arc<Shared>,
}

impl PitlakeFlightSql {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// What `GetSqlInfo` reports.
pub(crate) fn sql_info(limits: &Limits) -> crate::error::Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "pitlake");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(
        SqlInfo::FlightSqlServerStatementTimeout,
        i32::try_from(limits.query_timeout.as_secs()).unwrap_or(i32::MAX),
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    b.build()
        .map_err(|e| crate::error::PitlakeError::Internal(format!("building SqlInfo: {e}")))
}

pub(crate) fn new_query_id() -> Result<String, Status> {
    Ok(random_bytes::<8>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn logged(sql: &str) -> &str {
    match sql.char_indices().nth(LOGGED_SQL_CHARS) {
        Some((end, _)) => &sql[..end],
        None => sql,
    }
}

/// The longest name of a session table.
const MAX_UPLOAD_NAME: usize = 128;

/// The session table a bulk ingest writes and what to do if it exists. Only session tables
/// (`temporary`) are served; warehouse tables are loaded with `pitlake ingest` or SQL.
fn ingest_target(command: &CommandStatementIngest) -> Result<(String, IfExists, bool), Status> {
    use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
    if !command.temporary {
        return Err(Status::unimplemented(
            "bulk ingest into warehouse tables is not served: upload with temporary=True (a \
             table for this session only), or load warehouse tables with `pitlake ingest` or \
             CREATE TABLE … AS",
        ));
    }
    if command.transaction_id.is_some() {
        return Err(Status::unimplemented("transactions are not supported"));
    }
    if command.catalog.is_some() || command.schema.is_some() {
        return Err(Status::invalid_argument(
            "a session table has a bare name: give no catalog or schema",
        ));
    }
    let table = command.table.clone();
    if table.len() > MAX_UPLOAD_NAME {
        return Err(Status::invalid_argument(format!(
            "a session table's name has at most {MAX_UPLOAD_NAME} characters"
        )));
    }
    let name = TableName::parse(&table)
        .map_err(|e| Status::invalid_argument(format!("the table name `{table}`: {e}")))?;
    if name.schema.is_some() || name.table != table {
        return Err(Status::invalid_argument(format!(
            "`{table}` is not a plain table name (letters, digits and _)"
        )));
    }
    let options = command.table_definition_options.unwrap_or_default();
    let must_exist = options.if_not_exist == TableNotExistOption::Fail as i32;
    let if_exists = match TableExistsOption::try_from(options.if_exists) {
        Ok(TableExistsOption::Append) => IfExists::Append,
        Ok(TableExistsOption::Replace) => IfExists::Replace,
        _ => IfExists::Fail,
    };
    Ok((table, if_exists, must_exist))
}

/// The field as the Flight encoder sends it (dictionaries hydrated to their values, large lists
/// as lists, recursively): what is announced must be what `DoGet` streams, or clients such as
/// ADBC refuse the stream.
fn wire_field(field: &Field) -> Field {
    let data_type = match field.data_type() {
        DataType::Dictionary(_, value) => {
            return wire_field(&Field::new(
                field.name(),
                value.as_ref().clone(),
                field.is_nullable(),
            ))
            .with_metadata(field.metadata().clone());
        }
        DataType::List(inner) | DataType::LargeList(inner) => {
            DataType::List(Arc::new(wire_field(inner)))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Arc::new(wire_field(f)))
                .collect::<Vec<_>>()
                .into(),
        ),
        other => other.clone(),
    };
    Field::new(field.name(), data_type, field.is_nullable()).with_metadata(field.metadata().clone())
}

/// A schema as the Flight encoder sends it (see [`wire_field`]).
pub(crate) fn wire_schema(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| wire_field(f))
            .collect::<Vec<_>>(),
    )
    .with_metadata(schema.metadata().clone())
}

fn schema_ipc(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let schema = wire_schema(schema);
    let message: IpcMessage = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| Status::internal(format!("encoding a schema failed: {e}")))?;
    Ok(message.0)
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(&wire_schema(schema))
        .map_err(|e| Status::internal(format!("encoding a schema failed: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

fn batch_stream(schema: SchemaRef, batch: RecordBatch) -> FlightStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { Ok(batch) }))
        .map_err(|e| match e {
            FlightError::Tonic(status) => *status,
            other => Status::internal(other.to_string()),
        });
    Box::pin(stream)
}

/// Where to fetch a metadata command's answer: the ticket is the command itself, and any
/// authenticated caller may ask (what the answer holds is filtered by its grants at `DoGet`).
fn metadata_info(
    request: Request<FlightDescriptor>,
    command: &impl ProstMessageExt,
    schema: SchemaRef,
) -> Result<Response<FlightInfo>, Status> {
    principal(&request)?;
    flight_info(
        &schema,
        command.as_any().encode_to_vec(),
        request.into_inner(),
    )
}

/// A metadata command's answer (what its builder built, arrow-flight's builders share no
/// trait) as a stream of its one batch.
fn metadata_stream(
    schema: SchemaRef,
    batch: arrow_flight::error::Result<RecordBatch>,
) -> Result<Response<FlightStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(batch_stream(schema, batch)))
}

/// One row of Arrow IPC parameters as values.
fn parameter_values(encoded: Option<&[u8]>) -> Result<Vec<ScalarValue>, Status> {
    let Some(bytes) = encoded else {
        return Ok(Vec::new());
    };
    let bad = |why: String| Status::invalid_argument(format!("bound parameters: {why}"));
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| bad(e.to_string()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Vec::new());
    };
    if rows != 1 {
        return Err(bad(format!(
            "{rows} rows were bound; bind exactly one row of values per execution"
        )));
    }
    batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, 0).map_err(|e| bad(e.to_string())))
        .collect()
}

fn encode_batches(batches: &[RecordBatch]) -> Result<Vec<u8>, Status> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let fail = |e: arrow::error::ArrowError| Status::internal(format!("storing parameters: {e}"));
    let mut writer = StreamWriter::try_new(&mut out, &first.schema()).map_err(fail)?;
    for batch in batches {
        writer.write(batch).map_err(fail)?;
    }
    writer.finish().map_err(fail)?;
    drop(writer);
    Ok(out)
}

impl PitlakeFlightSql {
    /// The engine acting for a caller: it records them as author and shows them only what
    /// their grants let them see (registry listings, hints in errors).
    fn engine_for(&self, principal: &Principal) -> Engine {
        let engine = self
            .shared
            .engine
            .for_caller(&principal.user, principal.grants.clone());
        match self.shared.uploads.scope(principal) {
            Some(scope) => engine.with_session(scope),
            None => engine,
        }
    }

    /// Checks `authorization: Basic …` under the login throttle and issues a session token:
    /// the Flight handshake and `POST /v1/login` both come here.
    pub(crate) async fn login(
        &self,
        headers: &tonic::codegen::http::HeaderMap,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(Principal, String), Status> {
        let metrics = self.shared.metrics.clone();
        let refused = |status: Status| {
            metrics.refused(Refusal::Login);
            tracing::info!(
                target: "pitlake::flight",
                peer = ?peer,
                reason = status.message(),
                "login refused"
            );
            status
        };
        let credentials = basic_credentials(headers).map_err(refused)?;
        // Lockouts and a full queue are refused here, before any password work; a client that
        // goes away while waiting for a check slot drops this future and the attempt with it.
        let mut attempt = self
            .shared
            .logins
            .admit(&credentials.user, peer.map(|p| p.ip()))
            .await
            .map_err(refused)?;
        attempt.wait_for_slot().await.map_err(refused)?;
        let auth = self.shared.auth.clone();
        // argon2 is deliberately slow: keep it off the threads that serve streams. The attempt
        // (with its check slot) moves into the blocking task, so the slot is held until argon2
        // returns even if the client has gone, and the outcome is counted all the same.
        let outcome =
            tokio::task::spawn_blocking(move || attempt.run(|| auth.check_password(&credentials)))
                .await
                .map_err(|e| Status::internal(format!("the password check failed: {e}")))?;
        let (principal, token) = outcome.map_err(refused)?;
        self.shared.metrics.handshake_succeeded();
        tracing::info!(
            target: "pitlake::flight",
            user = %principal.user,
            ttl_s = self.shared.auth.token_ttl().as_secs(),
            "login: token issued"
        );
        Ok((principal, token))
    }

    /// Parses, plans and authorizes a statement for a caller.
    async fn plan(&self, principal: &Principal, sql: &str) -> Result<PlannedStatement, Status> {
        let engine = &self.engine_for(principal);
        // Parsing is synchronous and a large statement may wait for its turn (see
        // `frontend::parse_sql`): keep it off the threads that serve streams.
        let parsing = {
            let (engine, sql) = (engine.clone(), sql.to_string());
            tokio::task::spawn_blocking(move || engine.parse_one(&sql))
        };
        let statement = parsing
            .await
            .map_err(|e| Status::internal(format!("the parser task failed: {e}")))?
            .map_err(|e| status_for_principal(e, principal))?;
        let refused = |status: Status| {
            self.shared.metrics.refused(Refusal::PermissionDenied);
            tracing::info!(
                target: "pitlake::flight",
                user = %principal.user,
                reason = status.message(),
                "statement refused: permission denied"
            );
            status
        };
        // Before planning opens anything: every table and view the text names must be one the
        // caller may use, so a forbidden object's existence, versions, history and columns
        // stay hidden.
        // (The session's own uploads are left out by the engine: only this session can name
        // them, and only where the name means the upload.)
        let named = engine
            .named_tables(&statement)
            .map_err(|e| status_for_principal(e, principal))?;
        principal
            .grants
            .authorize_named(&principal.user, &named, &engine.named_views(&statement))
            .map_err(refused)?;
        let planned = engine
            .plan_statement(statement)
            .await
            .map_err(|e| status_for_principal(e, principal))?;
        principal
            .grants
            .authorize(&principal.user, &planned.access)
            .map_err(refused)?;
        Ok(planned)
    }

    /// Plans a statement for `GetFlightInfo` as query work: it waits for a query slot, counts
    /// against the query timeout, and is logged whatever its outcome.
    async fn plan_for_info(
        &self,
        principal: &Principal,
        query_id: &str,
        sql: &str,
    ) -> Result<PlannedStatement, Status> {
        if self.shared.cancel_queries.is_cancelled() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + self.shared.limits.query_timeout;
        let _permit = self.slot(deadline).await?;
        let outcome = match tokio::time::timeout_at(deadline, self.plan(principal, sql)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Status::deadline_exceeded(
                "planning the statement took longer than the server's --query-timeout",
            )),
        };
        match &outcome {
            Ok(_) => tracing::info!(
                target: "pitlake::flight",
                user = %principal.user,
                query_id = %query_id,
                sql = logged(sql),
                "statement planned"
            ),
            Err(status) => {
                // A query that fails while planned is counted here (it never reaches DoGet).
                let metrics = &self.shared.metrics;
                metrics.query_started();
                let ended = match status.code() {
                    tonic::Code::DeadlineExceeded => Ended::TimedOut,
                    _ => Ended::Failed,
                };
                metrics.query_ended(ended, started.elapsed(), 0, 0);
                tracing::info!(
                    target: "pitlake::flight",
                    user = %principal.user,
                    query_id = %query_id,
                    sql = logged(sql),
                    code = ?status.code(),
                    reason = status.message(),
                    "planning failed"
                )
            }
        }
        outcome
    }

    /// Waits for a query slot, until the deadline.
    async fn slot(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let _waiting = self.shared.metrics.waiting();
        match tokio::time::timeout_at(deadline, self.shared.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Status::unavailable("the server is shutting down")),
            Err(_) => Err({
                self.shared.metrics.refused(Refusal::Busy);
                Status::resource_exhausted(format!(
                    "all {} query slots stayed busy for the whole query timeout \
                     (--max-concurrent-queries); try again later",
                    self.shared.limits.max_concurrent_queries
                ))
            }),
        }
    }

    /// Plans and runs a statement under the server's bounds: a query slot (held until the
    /// result's stream is dropped), the query timeout, the query memory limit, the shutdown,
    /// and a record that logs and counts it. `want` refuses a statement of the other kind
    /// before it runs.
    pub(crate) async fn execute(
        &self,
        principal: &Principal,
        query_id: String,
        sql: &str,
        values: Vec<ScalarValue>,
        want: Want,
    ) -> Result<Executed, Status> {
        if self.shared.cancel_queries.is_cancelled() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let deadline = tokio::time::Instant::now() + self.shared.limits.query_timeout;
        let permit = self.slot(deadline).await?;
        let record = Arc::new(QueryRecord::new(
            &principal.user,
            &query_id,
            self.shared.active.clone(),
            self.shared.metrics.clone(),
        ));
        tracing::info!(
            target: "pitlake::flight",
            user = %principal.user,
            query_id = %query_id,
            sql = logged(sql),
            "query started"
        );
        let started = async {
            let planned = self.plan(principal, sql).await?;
            match (want, planned.is_query()) {
                (Want::Rows, false) => return Err(Status::invalid_argument(want.refusal())),
                (Want::Change, true) => return Err(Status::invalid_argument(want.refusal())),
                _ => {}
            }
            self.engine_for(principal)
                .execute_planned(planned, values, self.shared.limits.query_memory_limit)
                .await
                .map_err(|e| status_for_principal(e, principal))
        };
        let output = match tokio::time::timeout_at(deadline, started).await {
            Ok(Ok(output)) => output,
            Ok(Err(status)) => {
                record.failed(status.message());
                return Err(status);
            }
            Err(_) => {
                let status = Status::deadline_exceeded(
                    "the statement ran longer than the server's --query-timeout and was cancelled",
                );
                record.failed(status.message());
                return Err(status);
            }
        };
        Ok(match output {
            Output::Rows(stream) => Executed::Rows(Running {
                stream,
                bounds: Bounds {
                    deadline,
                    shutdown: self.shared.cancel_queries.clone(),
                    _permit: Some(permit),
                },
                record,
                principal: principal.clone(),
            }),
            Output::Done(message) => {
                tracing::info!(
                    target: "pitlake::flight",
                    user = %principal.user,
                    query_id = %query_id,
                    result = %message,
                    "statement done"
                );
                record.finished();
                Executed::Done(message, record)
            }
        })
    }

    /// Runs a statement and streams its result; a statement that changes something answers
    /// with its one-line report as a one-row result.
    async fn run_query(
        &self,
        principal: Principal,
        query_id: String,
        sql: &str,
        parameters: Option<&[u8]>,
    ) -> Result<Response<FlightStream>, Status> {
        let values = parameter_values(parameters)?;
        let running = match self
            .execute(&principal, query_id, sql, values, Want::Any)
            .await?
        {
            Executed::Rows(running) => running,
            Executed::Done(message, record) => {
                let schema = report_schema();
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(StringArray::from(vec![message]))],
                )
                .map_err(|e| Status::internal(e.to_string()))?;
                let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::iter(vec![Ok(batch)]),
                ));
                Running {
                    stream,
                    bounds: Bounds {
                        deadline: tokio::time::Instant::now() + self.shared.limits.query_timeout,
                        shutdown: self.shared.cancel_queries.clone(),
                        _permit: None,
                    },
                    record,
                    principal,
                }
            }
        };
        Ok(Response::new(flight_stream(running)))
    }

    /// Runs a statement that changes something (`DoPut` updates).
    async fn run_update(
        &self,
        principal: Principal,
        sql: &str,
        parameters: Option<&[u8]>,
    ) -> Result<i64, Status> {
        let values = parameter_values(parameters)?;
        match self
            .execute(&principal, new_query_id()?, sql, values, Want::Change)
            .await?
        {
            // The engine reports writes as sentences; the row count is not known here.
            Executed::Done(..) => Ok(-1),
            Executed::Rows(_) => Err(Status::invalid_argument(Want::Change.refusal())),
        }
    }

    /// The tables a caller may read.
    async fn readable_tables(&self, principal: &Principal) -> Result<Vec<TableName>, Status> {
        let tables = self
            .shared
            .engine
            .list_tables()
            .await
            .map_err(|e| status_for_principal(e, principal))?;
        Ok(tables
            .into_iter()
            .filter(|t| principal.grants.can_read_table(t))
            .collect())
    }
}

fn schema_name(table: &TableName) -> &str {
    table.schema.as_deref().unwrap_or("public")
}

#[tonic::async_trait]
impl FlightSqlService for PitlakeFlightSql {
    type FlightService = PitlakeFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let peer = request.remote_addr();
        let headers = request.metadata().clone().into_headers();
        let (_, token) = self.login(&headers, peer).await?;
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("the token is not a valid header value"))?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::iter(vec![Ok(reply)]));
        let mut response = Response::new(stream);
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = principal(&request)?;
        let query_id = new_query_id()?;
        let planned = self
            .plan_for_info(&principal, &query_id, &query.query)
            .await?;
        let ticket = self
            .shared
            .tickets
            .issue(&query_id, &principal.user, &query.query, None)?;
        let ticket = TicketStatementQuery {
            statement_handle: ticket,
        };
        flight_info(
            &planned.schema(),
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = principal(&request)?;
        let prepared = self
            .shared
            .prepared
            .get(&command.prepared_statement_handle, &principal.user)?;
        let query_id = new_query_id()?;
        let planned = self
            .plan_for_info(&principal, &query_id, &prepared.sql)
            .await?;
        if !planned.parameter_types().is_empty() && prepared.parameters.is_none() {
            return Err(Status::invalid_argument(format!(
                "the statement has {} parameter(s); bind their values before executing it",
                planned.parameter_types().len()
            )));
        }
        // The schema with the bound values: the types of the rows `DoGet` will send.
        let planned = planned
            .bind(parameter_values(prepared.parameters.as_deref())?)
            .map_err(|e| status_for_principal(e, &principal))?;
        let ticket = self.shared.tickets.issue(
            &query_id,
            &principal.user,
            &prepared.sql,
            prepared.parameters.as_deref(),
        )?;
        let ticket = TicketStatementQuery {
            statement_handle: ticket,
        };
        flight_info(
            &planned.schema(),
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(request, &query, query.into_builder().schema())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(request, &query, query.clone().into_builder().schema())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(request, &query, query.clone().into_builder().schema())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(request, &query, query.into_builder().schema())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(
            request,
            &query,
            query.clone().into_builder(&self.shared.sql_info).schema(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = principal(&request)?;
        let claims = match self
            .shared
            .tickets
            .redeem(&ticket.statement_handle, &principal.user)
        {
            Ok(claims) => claims,
            Err(status) => {
                tracing::info!(
                    target: "pitlake::flight",
                    user = %principal.user,
                    reason = status.message(),
                    "ticket refused"
                );
                return Err(status);
            }
        };
        let parameters = claims
            .parameters
            .as_deref()
            .map(decode_parameters)
            .transpose()?;
        self.run_query(
            principal,
            claims.query_id,
            &claims.sql,
            parameters.as_deref(),
        )
        .await
    }

    async fn do_get_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = principal(&request)?;
        let prepared = self
            .shared
            .prepared
            .get(&command.prepared_statement_handle, &principal.user)?;
        self.run_query(
            principal,
            new_query_id()?,
            &prepared.sql,
            prepared.parameters.as_deref(),
        )
        .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        principal(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        metadata_stream(builder.schema(), builder.build())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = principal(&request)?;
        let mut schemas: std::collections::BTreeSet<String> =
            std::collections::BTreeSet::from(["public".to_string()]);
        for table in self.readable_tables(&principal).await? {
            schemas.insert(schema_name(&table).to_string());
        }
        if principal
            .grants
            .has(&crate::flight::grants::Grant::ReadTable(Pattern::All))
            || principal
                .grants
                .can_read_table(&TableName::new(Some("information_schema"), "tables"))
        {
            schemas.insert("information_schema".to_string());
        }
        let mut builder = query.into_builder();
        for schema in schemas {
            builder.append(CATALOG, schema);
        }
        metadata_stream(builder.schema(), builder.build())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = principal(&request)?;
        let include_schema = query.include_schema;
        let mut builder = query.into_builder();
        let empty = Schema::empty();
        for table in self.readable_tables(&principal).await? {
            let schema = if include_schema {
                match self.shared.engine.describe_table(&table).await {
                    Ok(columns) => Schema::new(
                        columns
                            .into_iter()
                            .map(|c| arrow::datatypes::Field::new(c.name, c.data_type, c.nullable))
                            .collect::<Vec<_>>(),
                    ),
                    Err(err) => {
                        // One unreadable table must not hide the others.
                        tracing::warn!(
                            target: "pitlake::flight",
                            table = %table,
                            error = %err,
                            "GetTables: skipping a table that cannot be read"
                        );
                        continue;
                    }
                }
            } else {
                empty.clone()
            };
            builder
                .append(CATALOG, schema_name(&table), &table.table, "TABLE", &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        // The session's own uploads, to it alone.
        for (name, table) in self.engine_for(&principal).session_tables() {
            let schema = if include_schema {
                table.provider.schema().as_ref().clone()
            } else {
                empty.clone()
            };
            builder
                .append(CATALOG, "public", &name, "LOCAL TEMPORARY", &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        metadata_stream(builder.schema(), builder.build())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        principal(&request)?;
        let mut builder = query.into_builder();
        builder.append("LOCAL TEMPORARY");
        builder.append("TABLE");
        metadata_stream(builder.schema(), builder.build())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        principal(&request)?;
        let builder = query.into_builder(&self.shared.sql_info);
        metadata_stream(builder.schema(), builder.build())
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = principal(&request)?;
        self.run_update(principal, &command.query, None).await
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = principal(&request)?;
        let (table, if_exists, must_exist) = ingest_target(&command)?;
        let engine = self.engine_for(&principal);
        let name = TableName::bare(&table);
        if must_exist && engine.session_table(&name).is_none() {
            return Err(Status::not_found(format!(
                "this session has no table `{table}` to append to or replace"
            )));
        }
        if engine.session_table(&name).is_none()
            && engine
                .warehouse()
                .table_exists(&name)
                .await
                .unwrap_or(false)
            && principal.grants.can_read_table(&name)
        {
            return Err(Status::already_exists(format!(
                "a warehouse table `{table}` exists; name the session's table otherwise (it \
                 would hide the warehouse table from this session)"
            )));
        }
        let deadline = tokio::time::Instant::now() + self.shared.limits.query_timeout;
        let incoming = futures::TryStreamExt::map_err(request.into_inner(), |status| {
            FlightError::Tonic(Box::new(status))
        });
        let mut decoded =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(incoming);
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        let limit = self.shared.uploads.per_user();
        // While it arrives, the upload holds memory of the engine's pool like a query does.
        let arriving = MemoryConsumer::new(format!("upload of {}", principal.user))
            .register(&engine.memory_pool());
        let upload = async {
            while let Some(batch) = decoded.next().await {
                let batch =
                    batch.map_err(|e| Status::invalid_argument(format!("the upload: {e}")))?;
                let size = batch_bytes(&batch);
                bytes += size;
                if bytes > limit {
                    return Err(Status::resource_exhausted(format!(
                        "the upload is over the {} MiB a user may hold; upload fewer rows",
                        limit >> 20
                    )));
                }
                arriving.try_grow(size).map_err(|_| {
                    Status::resource_exhausted(
                        "the server's memory is in use (--memory-limit); upload later or fewer \
                         rows",
                    )
                })?;
                batches.push(batch);
            }
            Ok::<_, Status>(decoded.schema().cloned())
        };
        let schema = match tokio::time::timeout_at(deadline, upload).await {
            Ok(outcome) => outcome?,
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "the upload took longer than the server's --query-timeout",
                ));
            }
        };
        let schema = schema
            .or_else(|| batches.first().map(|b| b.schema()))
            .ok_or_else(|| Status::invalid_argument("the upload has no schema"))?;
        // The session's reservation takes over from the arriving one.
        drop(arriving);
        let rows = self
            .shared
            .uploads
            .put(&principal, &table, schema, batches, if_exists)?;
        tracing::info!(
            target: "pitlake::flight",
            user = %principal.user,
            table = %table,
            rows,
            bytes,
            "session table uploaded"
        );
        Ok(rows)
    }

    async fn do_put_prepared_statement_query(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let principal = principal(&request)?;
        // Check ownership before reading what may be a large upload.
        self.shared
            .prepared
            .get(&command.prepared_statement_handle, &principal.user)?;
        // Every message counts (schema, dictionary batches, record batches) and its bytes are
        // reserved before anything is decoded: per upload, per user and server-wide.
        let mut reservation = self.shared.prepared.budget().reservation(&principal.user);
        let mut incoming = request.into_inner();
        let mut messages = Vec::new();
        let upload = async {
            while let Some(message) = incoming.next().await {
                let message = message?;
                if messages.len() >= MAX_UPLOAD_MESSAGES {
                    return Err(Status::resource_exhausted(format!(
                        "the parameter upload has more than {MAX_UPLOAD_MESSAGES} messages \
                         (schema, dictionary and record batches); bind one row of values"
                    )));
                }
                reservation.grow(flight_data_bytes(&message))?;
                messages.push(message);
            }
            Ok::<(), Status>(())
        };
        match tokio::time::timeout(UPLOAD_TIMEOUT, upload).await {
            Ok(Ok(())) => {}
            Ok(Err(status)) => {
                tracing::info!(
                    target: "pitlake::flight",
                    user = %principal.user,
                    reason = status.message(),
                    "parameter upload refused"
                );
                return Err(status);
            }
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "the parameter upload took longer than {}s",
                    UPLOAD_TIMEOUT.as_secs()
                )));
            }
        }
        let data = futures::stream::iter(messages.into_iter().map(Ok::<_, FlightError>));
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
                .try_collect()
                .await
                .map_err(|e| Status::invalid_argument(format!("bound parameters: {e}")))?;
        let encoded = encode_batches(&batches)?;
        drop(batches);
        // Refuse a bad binding now rather than at execution.
        parameter_values(
            Some(&encoded)
                .filter(|e| !e.is_empty())
                .map(|e| e.as_slice()),
        )?;
        // What the statement keeps is the encoding; the reservation follows it.
        reservation.resize(encoded.len())?;
        self.shared.prepared.bind(
            &command.prepared_statement_handle,
            &principal.user,
            encoded,
            reservation,
        )?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(command.prepared_statement_handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = principal(&request)?;
        let prepared = self
            .shared
            .prepared
            .get(&command.prepared_statement_handle, &principal.user)?;
        self.run_update(principal, &prepared.sql, prepared.parameters.as_deref())
            .await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = principal(&request)?;
        let query_id = new_query_id()?;
        let planned = self
            .plan_for_info(&principal, &query_id, &query.query)
            .await?;
        let handle = self.shared.prepared.insert(&principal.user, &query.query)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_ipc(&planned.schema())?,
            parameter_schema: schema_ipc(&planned.parameter_schema())?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let principal = principal(&request)?;
        self.shared
            .prepared
            .remove(&query.prepared_statement_handle, &principal.user)
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
