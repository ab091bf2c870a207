//! The command line: clap definitions and their validation into [`Settings`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cli::print::OutputFormat;
use crate::config::{
    ConfigFile, Settings, WarehouseLocation, default_memory_limit, parse_bytes,
    parse_storage_option, redacted_options,
};
use crate::error::Result;

/// pitlake: a point-in-time feature store engine over Delta Lake tables.
#[derive(Debug, Parser)]
#[command(name = "pitlake", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command shares. Its `Debug` hides secret storage options.
#[derive(Args)]
pub struct GlobalArgs {
    /// The warehouse: a folder (created on first write) or a URL (file://, memory://,
    /// s3://bucket/prefix, gs://bucket/prefix, az://container/prefix). Default: the config
    /// file's `warehouse`, else ./warehouse.
    #[arg(long, short = 'w', global = true, env = "PITLAKE_WAREHOUSE")]
    pub warehouse: Option<String>,

    /// An object-store setting, KEY=VALUE (repeat for several): endpoint, region, credentials,
    /// allow_http, aws_virtual_hosted_style_request, aws_server_side_encryption,
    /// aws_sse_kms_key_id, max_retries, retry_timeout, concurrency_limit … Wins over the config
    /// file, the environment (AWS_*) and AWS profiles. See docs/operations.md.
    #[arg(
        long = "storage-option",
        global = true,
        value_name = "KEY=VALUE",
        value_parser = parse_storage_option
    )]
    pub storage_options: Vec<(String, String)>,

    /// A config file (TOML) with `warehouse = "…"` and a `[storage]` table of object-store
    /// settings; flags win over it.
    #[arg(long, global = true, env = "PITLAKE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Memory for query execution (e.g. 2GiB, 512MiB, unlimited); operators spill to disk
    /// beyond it. Default: half of the physical memory.
    #[arg(long, global = true, env = "PITLAKE_MEMORY_LIMIT", value_parser = parse_memory_limit)]
    pub memory_limit: Option<MemoryLimit>,

    /// Parallelism: partitions per query. Default: one per core.
    #[arg(long, global = true, env = "PITLAKE_TARGET_PARTITIONS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub target_partitions: Option<u16>,

    /// Rows per record batch.
    #[arg(long, global = true, env = "PITLAKE_BATCH_SIZE", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub batch_size: Option<u32>,

    /// Folder for spill files (default: the system temp folder).
    #[arg(long, global = true, env = "PITLAKE_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,

    /// Run queries on a Ballista cluster: its scheduler, df://HOST:PORT (see
    /// docs/distributed.md). Planning, grants, pins and writes stay in this process.
    #[arg(long, global = true, env = "PITLAKE_CLUSTER", value_name = "df://HOST:PORT", value_parser = parse_cluster)]
    pub cluster: Option<String>,
}

/// `df://host:port` as the scheduler's gRPC URL.
fn parse_cluster(raw: &str) -> std::result::Result<String, String> {
    let rest = raw.strip_prefix("df://").ok_or_else(|| {
        format!("`{raw}` is not a cluster address; write df://HOST:PORT, e.g. df://127.0.0.1:50050")
    })?;
    match rest.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host.contains('/') =>
        {
            Ok(format!("http://{host}:{port}"))
        }
        _ => Err(format!(
            "`{raw}` is not a cluster address; write df://HOST:PORT, e.g. df://127.0.0.1:50050"
        )),
    }
}

impl std::fmt::Debug for GlobalArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalArgs")
            .field("warehouse", &self.warehouse)
            .field(
                "storage_options",
                &redacted_options(self.storage_options.iter().map(|(k, v)| (k, v))),
            )
            .field("config", &self.config)
            .field("memory_limit", &self.memory_limit)
            .field("target_partitions", &self.target_partitions)
            .field("batch_size", &self.batch_size)
            .field("spill_dir", &self.spill_dir)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// A memory limit, or none.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimit(pub Option<usize>);

fn parse_memory_limit(raw: &str) -> std::result::Result<MemoryLimit, String> {
    let limit = parse_bytes(raw)?;
    if let Some(bytes) = limit
        && bytes < 16 << 20
    {
        return Err(format!(
            "`{raw}` is too small to run queries; use at least 16MiB"
        ));
    }
    Ok(MemoryLimit(limit))
}

impl GlobalArgs {
    /// Validates the flags into engine settings.
    pub fn settings(&self) -> Result<Settings> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let warehouse = self
            .warehouse
            .as_deref()
            .or(file.warehouse.as_deref())
            .unwrap_or("./warehouse");
        // Flags after the file, so that a flag wins over the same key in the file.
        let location = WarehouseLocation::parse(warehouse)?
            .with_storage_options(file.storage)
            .with_storage_options(self.storage_options.iter().cloned());
        let mut settings = Settings::new(location);
        settings.memory_limit = match self.memory_limit {
            Some(MemoryLimit(limit)) => limit,
            None => default_memory_limit(),
        };
        if let Some(n) = self.target_partitions {
            settings.target_partitions = usize::from(n);
        }
        if let Some(n) = self.batch_size {
            settings.batch_size = n as usize;
        }
        settings.spill_dir = self.spill_dir.clone();
        settings.cluster = self.cluster.clone();
        settings.validate()?;
        Ok(settings)
    }
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SQL statements (separated by `;`) and print their results.
    Sql(SqlArgs),
    /// An interactive SQL shell with history and backslash commands (\? for help).
    Shell(ShellArgs),
    /// Load CSV, Parquet or JSON files into a table as one Delta commit.
    Ingest(IngestArgs),
    /// Build a sample feature warehouse and take a guided tour of it.
    Demo(DemoArgs),
    /// Serve the warehouse over Arrow Flight SQL, with TLS, users and grants (see
    /// docs/operations.md).
    Serve(Box<ServeArgs>),
    /// Compare a folder of definition files (*.sql) with the registry and list what `apply`
    /// would change.
    Plan(DefinitionsArgs),
    /// Make the registry match a folder of definition files, as one registry commit.
    Apply(DefinitionsArgs),
    /// Export a training set (Parquet, CSV or a Delta table) with a manifest that pins every
    /// input version.
    Export(ExportArgs),
    /// Rebuild an exported training set from its manifest and check it is identical, and that
    /// the exported file is still the one the manifest describes (exit 1 if not).
    Reproduce(ReproduceArgs),
    /// Check an exported training set against its manifest: read the exported file (or Delta
    /// table) and compare its size and byte hash, or its rows (exit 1 if it differs).
    Verify(VerifyArgs),
    /// Check a training set for leakage and report feature coverage and age (exit 1 on a
    /// violation).
    Audit(AuditArgs),
    /// Run a Ballista scheduler or executor with pitlake's operators (see docs/distributed.md).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `pitlake cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The scheduler: takes queries from pitlake clients (`--cluster df://HOST:PORT`) and hands
    /// their tasks to the executors.
    Scheduler(SchedulerArgs),
    /// An executor: runs tasks for a scheduler and serves their shuffle data to the others. It
    /// reads the warehouse with this command's storage settings.
    Executor(ExecutorArgs),
}

/// `pitlake cluster scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Allow a --listen address other than loopback. The cluster's ports have no
    /// authentication and no TLS: anyone who reaches them can run any plan with the executors'
    /// storage credentials. Use only on a network that only pitlake clients and gateways reach.
    #[arg(long)]
    pub private_network: bool,

    /// Exit when the process with this id ends (for test harnesses).
    #[arg(long, hide = true)]
    pub parent_pid: Option<u32>,

    /// Where to listen; port 0 takes a free port (printed). Binds to loopback unless told
    /// otherwise: the scheduler has no authentication, keep it on a private network.
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub listen: std::net::SocketAddr,

    /// The host executors and clients reach the scheduler at (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,

    /// An executor silent this long is taken as lost and its tasks rerun elsewhere (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = parse_seconds)]
    pub executor_timeout: std::time::Duration,
}

/// `pitlake cluster executor`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// Allow a --listen address other than loopback. The cluster's ports have no
    /// authentication and no TLS: anyone who reaches them can run any plan with the executors'
    /// storage credentials. Use only on a network that only pitlake clients and gateways reach.
    #[arg(long)]
    pub private_network: bool,

    /// Exit when the process with this id ends (for test harnesses).
    #[arg(long, hide = true)]
    pub parent_pid: Option<u32>,

    /// The scheduler, HOST:PORT.
    #[arg(long)]
    pub scheduler: String,

    /// Where to serve shuffle data (Arrow Flight). Binds to loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,

    /// The host others reach this executor at (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,

    /// Where the scheduler hands this executor its tasks and cancels them, on the listen
    /// address (default: the listen port + 1).
    #[arg(long)]
    pub task_port: Option<u16>,

    /// Tasks run at once (default: one per core).
    #[arg(long)]
    pub slots: Option<usize>,

    /// Folder for shuffle and spill files (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// Time between heartbeats to the scheduler (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_seconds)]
    pub heartbeat: std::time::Duration,
}

/// `30s`, `2m` or a number of seconds.
fn parse_seconds(raw: &str) -> std::result::Result<std::time::Duration, String> {
    let (number, unit) = match raw.strip_suffix('s') {
        Some(n) => (n, 1),
        None => match raw.strip_suffix('m') {
            Some(n) => (n, 60),
            None => (raw, 1),
        },
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{raw}` is not a duration; write e.g. 30s or 2m"))
}

/// `pitlake plan` and `pitlake apply`.
#[derive(Debug, Args)]
pub struct DefinitionsArgs {
    /// The folder of definition files: CREATE ENTITY, CREATE FEATURE VIEW, CREATE FEATURE
    /// SERVICE and REGISTER MODEL statements (see docs/dsl.md). Subfolders are read too.
    pub dir: PathBuf,
}

/// `pitlake export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The training set: `TRAINING SET LABELS … AT … FEATURES (…)` (see docs/dsl.md), or `-`
    /// to read it from standard input.
    #[arg(required_unless_present = "file")]
    pub training_set: Option<String>,

    /// Read the training set from a file instead.
    #[arg(long, short = 'f', conflicts_with = "training_set")]
    pub file: Option<PathBuf>,

    /// Where to write it: a file path, a folder for `--format delta`, or an object-store URL.
    /// The manifest goes beside it as `<to>.manifest.json`.
    #[arg(long)]
    pub to: String,

    /// parquet, csv or delta (default: from the extension of --to, else parquet).
    #[arg(long)]
    pub format: Option<String>,
}

/// `pitlake reproduce`.
#[derive(Debug, Args)]
pub struct ReproduceArgs {
    /// The manifest of an export (`<output>.manifest.json`).
    pub manifest: String,

    /// Also write the rebuilt rows here (in the manifest's format).
    #[arg(long)]
    pub to: Option<String>,
}

/// `pitlake verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The manifest of an export (`<output>.manifest.json`), a path or an object-store URL.
    pub manifest: String,
}

/// `pitlake audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// A manifest (`….manifest.json`) to audit the export it describes, or a `TRAINING SET …`
    /// statement to audit it as it would be built now.
    pub target: String,

    /// Output format.
    #[arg(long, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

/// `pitlake sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL to run. Several statements may be separated by `;`. Use `-` to read standard
    /// input.
    #[arg(required_unless_present = "file")]
    pub query: Option<String>,

    /// Read the SQL from a file instead.
    #[arg(long, short = 'f', conflicts_with = "query")]
    pub file: Option<PathBuf>,

    /// Output format.
    #[arg(long, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,

    /// Write results to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,

    /// Table output shows at most this many rows (0: all). Other formats print every row.
    #[arg(long, default_value_t = 1000)]
    pub max_rows: usize,

    /// Confirm destructive statements such as DROP TABLE.
    #[arg(long)]
    pub force: bool,

    /// Print how long each statement took (to standard error).
    #[arg(long)]
    pub timing: bool,
}

/// `pitlake shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Output format to start with (\format changes it).
    #[arg(long, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,

    /// Rows shown per result (\maxrows changes it).
    #[arg(long, default_value_t = 40)]
    pub max_rows: usize,
}

/// Input file formats for `ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Comma-separated values with a header line.
    Csv,
    /// Parquet.
    Parquet,
    /// Newline-delimited JSON.
    Json,
}

/// How `ingest` treats existing rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Add the rows (create the table if it does not exist).
    Append,
    /// Replace all rows, keeping the schema (older versions stay readable).
    Overwrite,
}

/// `pitlake ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The table to load into: `name` or `schema.name`.
    pub table: String,

    /// The files to load.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// The files' format (default: from the file extension).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,

    /// Append to or overwrite the table.
    #[arg(long, value_enum, default_value_t = ModeArg::Append)]
    pub mode: ModeArg,

    /// Partition a new table by this column (repeat for several).
    #[arg(long)]
    pub partition_by: Vec<String>,

    /// CSV: the files have no header line (columns are named column_1, column_2, …).
    #[arg(long)]
    pub no_header: bool,

    /// CSV: the field delimiter (one character; default `,`, or tab for .tsv).
    #[arg(long, value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
}

fn parse_delimiter(raw: &str) -> std::result::Result<u8, String> {
    match raw {
        "\\t" | "tab" => Ok(b'\t'),
        s if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        other => Err(format!("`{other}` is not one ASCII character")),
    }
}

/// `pitlake demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rebuild the sample tables even if they exist (other tables are left alone).
    #[arg(long)]
    pub reset: bool,

    /// Build the tables but skip the tour.
    #[arg(long)]
    pub no_tour: bool,
}

/// `pitlake serve`. Users and passwords are never flags: they come from `--auth-file` or the
/// `PITLAKE_AUTH` environment variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, env = "PITLAKE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,

    /// Users, roles and grants: a TOML file (or JSON, by its .json extension). Without it, the
    /// environment variable PITLAKE_AUTH must hold the same settings (TOML or JSON).
    #[arg(long, env = "PITLAKE_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Secrets that sign session tokens and tickets, shared by every replica: one base64
    /// secret (at least 32 random bytes, `openssl rand -base64 32`) per line; the first signs,
    /// later ones are still accepted (rotation). Or PITLAKE_SIGNING_KEY (and
    /// PITLAKE_SIGNING_KEY_PREVIOUS, comma-separated). Without either, each process draws its
    /// own: its tokens and tickets are good on it alone, until it stops.
    #[arg(long, env = "PITLAKE_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Serve `/healthz`, `/readyz` and `/metrics` (Prometheus) over HTTP on this address
    /// (`127.0.0.1:8080`, `0.0.0.0:8080`, or a port alone for loopback). Off unless given. The
    /// paths carry no data and take no credentials: expose the port to probes and the metrics
    /// scraper only
    #[arg(long, env = "PITLAKE_HTTP_LISTEN")]
    pub http_listen: Option<String>,

    /// The server's TLS certificate chain (PEM).
    #[arg(long, env = "PITLAKE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The server's TLS private key (PEM).
    #[arg(long, env = "PITLAKE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that clients must present a certificate from (mutual TLS).
    #[arg(long, env = "PITLAKE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve without TLS: passwords, tokens and data travel in the clear. Only on a loopback
    /// address, unless --insecure-plaintext-on-network is given too.
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_plaintext: bool,

    /// With --insecure-plaintext: allow a non-loopback address (behind a proxy that encrypts).
    #[arg(long, requires = "insecure_plaintext")]
    pub insecure_plaintext_on_network: bool,

    /// Queries that may run at once; more wait for a slot (within their timeout).
    #[arg(long, env = "PITLAKE_MAX_CONCURRENT_QUERIES", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_concurrent_queries: u32,

    /// How long one query may run (e.g. 30s, 15m, 2h); past it, it is cancelled.
    #[arg(long, env = "PITLAKE_QUERY_TIMEOUT", default_value = "15m", value_parser = crate::config::parse_duration)]
    pub query_timeout: std::time::Duration,

    /// Memory one query may use (e.g. 512MiB), inside --memory-limit; operators spill beyond
    /// it. Default: only --memory-limit applies.
    #[arg(long, env = "PITLAKE_QUERY_MEMORY_LIMIT", value_parser = parse_memory_limit)]
    pub query_memory_limit: Option<MemoryLimit>,

    /// On SIGTERM or Ctrl-C, how long running queries may finish before they are cancelled.
    #[arg(long, env = "PITLAKE_SHUTDOWN_GRACE", default_value = "30s", value_parser = crate::config::parse_duration)]
    pub shutdown_grace: std::time::Duration,

    /// On SIGTERM or Ctrl-C, how long /readyz answers 503 while the server still takes new
    /// connections and calls, before it stops taking them (e.g. 5s): time for a load balancer
    /// that polls /readyz to stop sending here. Kubernetes needs none (it stops sending to a
    /// terminating pod by itself).
    #[arg(long, env = "PITLAKE_DRAIN_DELAY", default_value = "0s", value_parser = crate::config::parse_duration)]
    pub drain_delay: std::time::Duration,

    /// Connections open at once (TLS handshakes included); a connection past it is closed as
    /// soon as it arrives, and its client sees UNAVAILABLE.
    #[arg(long, env = "PITLAKE_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Calls (HTTP/2 streams) one connection may have open at once.
    #[arg(long, env = "PITLAKE_MAX_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,

    /// Password checks (argon2, about 19 MiB and tens of milliseconds each) running at once.
    /// Default: one per core.
    #[arg(long, env = "PITLAKE_MAX_CONCURRENT_LOGINS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_logins: Option<u32>,

    /// Logins waiting for a password check; more are refused at once with UNAVAILABLE.
    #[arg(long, env = "PITLAKE_MAX_QUEUED_LOGINS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub max_queued_logins: u32,

    /// Failed logins of one user name within --login-lockout before the name is locked out
    /// (even the right password is then refused until the lockout ends).
    #[arg(long, env = "PITLAKE_MAX_FAILED_LOGINS_PER_USER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_failed_logins_per_user: u32,

    /// Failed logins from one address (IPv6: its /64) within --login-lockout before the address
    /// is locked out, whatever the user names. Raise it behind a proxy or a NAT.
    #[arg(long, env = "PITLAKE_MAX_FAILED_LOGINS_PER_PEER", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_failed_logins_per_peer: u32,

    /// The window failed logins are counted in, and the first lockout; each lockout in a row
    /// doubles it, up to 1h.
    #[arg(long, env = "PITLAKE_LOGIN_LOCKOUT", default_value = "1m", value_parser = crate::config::parse_duration)]
    pub login_lockout: std::time::Duration,

    /// Bytes of one upload of bound parameters (DoPut to a prepared statement), e.g. 4MiB.
    #[arg(long, env = "PITLAKE_MAX_PARAMETER_BYTES", default_value = "4MiB", value_parser = parse_size)]
    pub max_parameter_bytes: usize,

    /// Bytes of bound parameters one user's uploads and prepared statements hold at once.
    #[arg(long, env = "PITLAKE_MAX_PARAMETER_BYTES_PER_USER", default_value = "64MiB", value_parser = parse_size)]
    pub max_parameter_bytes_per_user: usize,

    /// Bytes of bound parameters all users' uploads and prepared statements hold at once.
    #[arg(long, env = "PITLAKE_MAX_PARAMETER_BYTES_TOTAL", default_value = "512MiB", value_parser = parse_size)]
    pub max_parameter_bytes_total: usize,

    /// How often the auth file is checked for changes and re-read (e.g. 10s), or `off`: then
    /// only SIGHUP re-reads it.
    #[arg(long, env = "PITLAKE_AUTH_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_reload_interval)]
    pub auth_reload_interval: ReloadInterval,

    /// Read a password from standard input, print its argon2 hash for the auth file, and exit.
    #[arg(long)]
    pub hash_password: bool,

    /// Print a new random static token and the line the auth file needs for it, and exit.
    #[arg(long, conflicts_with = "hash_password")]
    pub new_token: bool,
}

/// How often the auth file is checked for changes; `None`: never (SIGHUP only).
#[derive(Debug, Clone, Copy)]
pub struct ReloadInterval(pub Option<std::time::Duration>);

fn parse_reload_interval(raw: &str) -> std::result::Result<ReloadInterval, String> {
    if raw.trim().eq_ignore_ascii_case("off") {
        return Ok(ReloadInterval(None));
    }
    let every = crate::config::parse_duration(raw)?;
    if every < std::time::Duration::from_secs(1) {
        return Err(format!(
            "`{raw}` is too often; check at least 1s apart, or write `off`"
        ));
    }
    Ok(ReloadInterval(Some(every)))
}

/// A size in bytes that must be given (not `unlimited`).
fn parse_size(raw: &str) -> std::result::Result<usize, String> {
    parse_bytes(raw)?.ok_or_else(|| format!("`{raw}` is not a size; write it like 4MiB or 65536"))
}
