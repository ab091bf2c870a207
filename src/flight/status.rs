//! The engine's errors as gRPC statuses: one match, naming every variant.

use tonic::{Code, Status};

use crate::engine::planning::TableName;
use crate::error::PitlakeError;
use crate::flight::auth::Principal;

/// The status a client receives for an engine error. Its message is the error's own, written
/// for a person.
pub fn status_for(err: &PitlakeError) -> Status {
    let code = match err {
        PitlakeError::TableNotFound { .. }
        | PitlakeError::NotFound { .. }
        | PitlakeError::VersionNotFound { .. } => Code::NotFound,
        PitlakeError::TimestampTooEarly { .. } => Code::NotFound,
        PitlakeError::TableExists { .. } | PitlakeError::AlreadyExists { .. } => {
            Code::AlreadyExists
        }
        // Retrying later succeeds: the client's retry policy applies.
        PitlakeError::RegistryConflict(_) => Code::Aborted,
        PitlakeError::SchemaMismatch { .. }
        | PitlakeError::Input { .. }
        | PitlakeError::Syntax(_)
        | PitlakeError::Plan(_)
        // Arrow errors while running a query are the data's: a cast that overflows, a division
        // by zero.
        | PitlakeError::Arrow(_) => Code::InvalidArgument,
        PitlakeError::ConfirmationRequired { .. }
        | PitlakeError::CorruptTable { .. }
        | PitlakeError::InUse(_) => Code::FailedPrecondition,
        PitlakeError::Unsupported(_) => Code::Unimplemented,
        PitlakeError::ConcurrentWrite { .. } => Code::Aborted,
        PitlakeError::ResourcesExhausted(_) => Code::ResourceExhausted,
        PitlakeError::Execution(_) => Code::Unknown,
        PitlakeError::Config { .. } => Code::FailedPrecondition,
        PitlakeError::Warehouse { .. } | PitlakeError::ObjectStore(_) => Code::Unavailable,
        PitlakeError::Io(_)
        | PitlakeError::Parquet(_)
        | PitlakeError::Delta(_)
        | PitlakeError::DataFusion(_)
        | PitlakeError::Internal(_) => Code::Internal,
    };
    Status::new(code, without_backtrace(&err.to_string()))
}

/// The message up to a backtrace some library appended to it (delta-kernel does when
/// `RUST_BACKTRACE` is set): frames name the server's build paths and functions, nothing a
/// client needs.
fn without_backtrace(message: &str) -> String {
    let frame = |line: &str| {
        let trimmed = line.trim_start();
        let numbered = trimmed.split_once(": ").is_some_and(|(n, rest)| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && rest.contains("::")
        });
        numbered
            || trimmed.starts_with("at /")
            || trimmed.eq_ignore_ascii_case("stack backtrace:")
            || trimmed.starts_with("Backtrace")
    };
    let mut kept: Vec<&str> = Vec::new();
    for line in message.lines() {
        if frame(line) {
            break;
        }
        kept.push(line);
    }
    kept.join("\n").trim_end().to_string()
}

/// Like [`status_for`], but a "table does not exist" lists only tables the caller may read:
/// the engine's suggestions would otherwise tell anyone every table's name.
pub fn status_for_principal(err: PitlakeError, principal: &Principal) -> Status {
    match err {
        PitlakeError::TableNotFound { name, candidates } => {
            let candidates = candidates
                .into_iter()
                .filter(|c| {
                    TableName::parse(c)
                        .map(|t| principal.grants.can_read_table(&t))
                        .unwrap_or(false)
                })
                .collect();
            status_for(&PitlakeError::TableNotFound { name, candidates })
        }
        other => status_for(&other),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::flight::auth::Method;
    use crate::flight::grants::{Grant, Grants};

    #[test]
    fn backtraces_are_cut_from_messages() {
        let message = "table `t` cannot be read: Kernel error: bad json\n   0: \
                       buoyant_kernel::error::Error::with_backtrace\n             at \
                       /rustc/abc/library/core/src/x.rs:1:2\n   1: std::rt::lang_start";
        assert_eq!(
            without_backtrace(message),
            "table `t` cannot be read: Kernel error: bad json"
        );
        // Numbered lines that are not frames stay.
        let listing = "two problems:\n1: the key is NULL\n2: the time is NULL";
        assert_eq!(without_backtrace(listing), listing);
    }

    #[test]
    fn not_found_lists_only_readable_tables() {
        let principal = Principal {
            user: "bob".into(),
            grants: Arc::new(Grants::new([Grant::parse("table:orders").unwrap()])),
            method: Method::Session,
            session: String::new(),
        };
        let err = PitlakeError::TableNotFound {
            name: "order".into(),
            candidates: vec!["orders".into(), "salaries".into()],
        };
        let status = status_for_principal(err, &principal);
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("orders"));
        assert!(!status.message().contains("salaries"));
        assert_eq!(
            status_for(&PitlakeError::ResourcesExhausted("query pool".into())).code(),
            Code::ResourceExhausted
        );
    }
}
