//! The crate's one error type.
//!
//! Every variant carries the context a person needs to act on it (the table, the version, the
//! column), and keeps its source. Errors cross into DataFusion boxed as
//! [`DataFusionError::External`] and come back out through [`PitlakeError::from_datafusion`], so
//! a message written here reaches the user unchanged whichever layer it passed through.
//!
//! Mapping to a transport (CLI exit codes, Flight status codes) happens only at the edges, with a
//! match that names every variant.

use datafusion::error::DataFusionError;

/// The result type used throughout pitlake.
pub type Result<T, E = PitlakeError> = std::result::Result<T, E>;

/// Everything that can go wrong in pitlake.
#[derive(Debug, thiserror::Error)]
pub enum PitlakeError {
    /// A setting (flag, environment variable) has a value that cannot be used.
    #[error("invalid setting `{name}`: {message}")]
    Config {
        /// The setting's name as the user wrote it (`--memory-limit`).
        name: String,
        /// What was wrong and what would be right.
        message: String,
    },

    /// The warehouse root cannot be used (missing, not a directory, not writable, bad URL).
    #[error("warehouse `{url}`: {message}")]
    Warehouse {
        /// The warehouse URL.
        url: String,
        /// What was wrong and what would be right.
        message: String,
    },

    /// A table that the statement names does not exist.
    #[error("table `{name}` does not exist{}", candidates_hint(.candidates))]
    TableNotFound {
        /// The name as written.
        name: String,
        /// The tables that do exist, closest first.
        candidates: Vec<String>,
    },

    /// A table that a statement wants to create exists already.
    #[error(
        "table `{name}` already exists (use CREATE OR REPLACE TABLE, or INSERT INTO to add rows)"
    )]
    TableExists {
        /// The table name.
        name: String,
    },

    /// A registry object (entity, feature view, feature service, model) that the statement names
    /// does not exist, or is hidden from the caller (the two read the same).
    #[error("{kind} `{name}` does not exist; {hint}")]
    NotFound {
        /// What kind of object (`feature view`).
        kind: String,
        /// The name as written.
        name: String,
        /// What does exist, closest first, as a sentence.
        hint: String,
    },

    /// A registry object that others use cannot be dropped (the message names them).
    #[error("{0}")]
    InUse(String),

    /// A registry object that a statement wants to create exists already, defined otherwise.
    #[error("{kind} `{name}` already exists; use CREATE OR REPLACE to change it")]
    AlreadyExists {
        /// What kind of object.
        kind: String,
        /// Its name.
        name: String,
    },

    /// Other writers kept committing to the registry while a change was retried: nothing was
    /// written, and trying again later succeeds.
    #[error("{0}")]
    RegistryConflict(String),

    /// A time-travel version that the table does not have.
    #[error("table `{table}` has no version {requested}; {available}")]
    VersionNotFound {
        /// The table name.
        table: String,
        /// The version asked for.
        requested: i64,
        /// The versions that exist, as a sentence.
        available: String,
    },

    /// A time-travel timestamp before the table's first commit.
    #[error(
        "table `{table}` did not exist at {requested}: its first commit (version {first_version}) is at {first_commit}"
    )]
    TimestampTooEarly {
        /// The table name.
        table: String,
        /// The timestamp asked for (RFC 3339).
        requested: String,
        /// The first version still in the log.
        first_version: i64,
        /// Its commit time (RFC 3339).
        first_commit: String,
    },

    /// A table's Delta log or data cannot be read; other tables are unaffected.
    #[error("table `{table}` cannot be read: {message}")]
    CorruptTable {
        /// The table name.
        table: String,
        /// What the reader reported.
        message: String,
    },

    /// Data offered to a table does not match its schema.
    #[error("table `{table}`: {message}")]
    SchemaMismatch {
        /// The table name.
        table: String,
        /// Which column is wrong and how.
        message: String,
    },

    /// An input file that cannot be read as the format it was given as.
    #[error("input `{path}`: {message}")]
    Input {
        /// The file path or URL.
        path: String,
        /// What was wrong (with a line number where one is known).
        message: String,
    },

    /// The SQL text does not parse.
    #[error("SQL syntax error: {0}")]
    Syntax(String),

    /// Another writer committed to a table while a statement was writing it, in a way the
    /// statement's commit cannot be reconciled with (a replaced schema, an overwrite racing an
    /// append). Nothing of the statement was committed; running it again is safe.
    #[error(
        "table `{table}` changed while this statement ran ({message}); nothing was written: run \
         the statement again"
    )]
    ConcurrentWrite {
        /// The table (or export location) written.
        table: String,
        /// What the other writer did, as far as Delta Lake tells.
        message: String,
    },

    /// The statement parses but cannot be planned (unknown column, wrong types, unsupported form).
    #[error("{0}")]
    Plan(String),

    /// A destructive statement that needs confirmation (`--force`, or `y` in the shell).
    #[error("{what}: this deletes data; rerun with --force to confirm (in the shell, answer y)")]
    ConfirmationRequired {
        /// What would be destroyed.
        what: String,
    },

    /// The statement is valid SQL that pitlake does not run.
    #[error("not supported: {0}")]
    Unsupported(String),

    /// Query execution failed (I/O during a scan, a cast of bad data, cancelled).
    #[error("{0}")]
    Execution(String),

    /// A memory pool (the engine's, or a query's own limit) was exhausted, after spilling
    /// what could be spilled. Running again with more memory, or with less at once, helps.
    #[error("out of memory: {0} (raise --memory-limit, or lower --target-partitions)")]
    ResourcesExhausted(String),

    /// A Delta Lake operation failed.
    #[error("Delta Lake: {0}")]
    Delta(#[from] deltalake::DeltaTableError),

    /// Object storage failed.
    #[error("object storage: {0}")]
    ObjectStore(#[from] object_store::Error),

    /// Local I/O failed (reading input files, writing output).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),

    /// Arrow failed (formatting, casting, writing CSV/JSON).
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// Parquet failed (writing output).
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    /// DataFusion failed in a way not attributed to one of the variants above.
    #[error("{0}")]
    DataFusion(DataFusionError),

    /// A broken invariant inside pitlake: a bug, never a user mistake.
    #[error("internal error (please report this): {0}")]
    Internal(String),
}

fn candidates_hint(candidates: &[String]) -> String {
    match candidates {
        [] => "; the warehouse has no tables yet".to_string(),
        [one] => format!("; did you mean `{one}`?"),
        many => {
            let shown: Vec<_> = many.iter().take(12).map(|c| format!("`{c}`")).collect();
            let more = many.len().saturating_sub(shown.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("; tables are: {}{tail}", shown.join(", "))
        }
    }
}

impl PitlakeError {
    /// Recovers a pitlake error that travelled through DataFusion, and classifies the rest.
    ///
    /// DataFusion wraps errors in context layers (`Context`, `Shared`, `External`); a pitlake
    /// error inside them is returned as it was raised, so its message is not buried.
    pub fn from_datafusion(err: DataFusionError) -> Self {
        match err {
            DataFusionError::External(inner) => match inner.downcast::<PitlakeError>() {
                Ok(pitlake) => *pitlake,
                Err(other) => match other.downcast::<deltalake::DeltaTableError>() {
                    Ok(delta) => PitlakeError::Delta(*delta),
                    Err(other) => match other.downcast::<DataFusionError>() {
                        Ok(df) => PitlakeError::from_datafusion(*df),
                        Err(other) => PitlakeError::Execution(other.to_string()),
                    },
                },
            },
            DataFusionError::Context(_, inner) => PitlakeError::from_datafusion(*inner),
            DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                Ok(inner) => PitlakeError::from_datafusion(inner),
                Err(shared) => PitlakeError::DataFusion(DataFusionError::Shared(shared)),
            },
            DataFusionError::SQL(err, _) => PitlakeError::Syntax(err.to_string()),
            DataFusionError::Plan(msg) => PitlakeError::Plan(msg),
            DataFusionError::SchemaError(err, backtrace) => PitlakeError::Plan(
                DataFusionError::SchemaError(err, backtrace)
                    .strip_backtrace()
                    .to_string(),
            ),
            DataFusionError::NotImplemented(msg) => PitlakeError::Unsupported(msg),
            DataFusionError::Execution(msg) => PitlakeError::Execution(msg),
            DataFusionError::ResourcesExhausted(msg) => PitlakeError::ResourcesExhausted(msg),
            DataFusionError::ArrowError(err, _) => PitlakeError::Arrow(*err),
            DataFusionError::ParquetError(err) => PitlakeError::Parquet(*err),
            DataFusionError::ObjectStore(err) => PitlakeError::ObjectStore(*err),
            DataFusionError::IoError(err) => PitlakeError::Io(err),
            DataFusionError::Internal(msg) => PitlakeError::Internal(msg),
            DataFusionError::Diagnostic(_, inner) => PitlakeError::from_datafusion(*inner),
            other => PitlakeError::DataFusion(other),
        }
    }

    /// Boxes this error for a DataFusion interface (a table provider, an operator).
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

impl From<DataFusionError> for PitlakeError {
    fn from(err: DataFusionError) -> Self {
        PitlakeError::from_datafusion(err)
    }
}

impl From<PitlakeError> for DataFusionError {
    fn from(err: PitlakeError) -> Self {
        err.into_datafusion()
    }
}

/// Ranks `candidates` by their similarity to `name` (closest first), for "did you mean" lists.
pub fn closest_first(name: &str, candidates: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut ranked: Vec<(usize, String)> = candidates
        .into_iter()
        .map(|c| (edit_distance(&name.to_lowercase(), &c.to_lowercase()), c))
        .collect();
    ranked.sort();
    // A single near miss is worth naming alone; otherwise list everything, closest first.
    if let [(best, _), (second, _), ..] = ranked.as_slice()
        && *best <= 2
        && *second > *best
    {
        ranked.truncate(1);
    }
    ranked.into_iter().map(|(_, c)| c).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pitlake_error_survives_datafusion() {
        let err = PitlakeError::TableNotFound {
            name: "drivers".into(),
            candidates: vec!["driver_stats".into()],
        };
        let wrapped = DataFusionError::Context("planning".into(), Box::new(err.into_datafusion()));
        let back = PitlakeError::from_datafusion(wrapped);
        assert_eq!(
            back.to_string(),
            "table `drivers` does not exist; did you mean `driver_stats`?"
        );
    }

    #[test]
    fn closest_first_names_one_near_miss() {
        let got = closest_first(
            "orderz",
            [
                "orders".to_string(),
                "customers".to_string(),
                "drivers".to_string(),
            ],
        );
        assert_eq!(got, vec!["orders".to_string()]);
        let got = closest_first("x", ["b".to_string(), "a".to_string()]);
        assert_eq!(got, vec!["a".to_string(), "b".to_string()]);
    }
}
