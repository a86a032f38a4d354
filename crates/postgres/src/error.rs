//! The typed errors of this crate.
//!
//! Every variant says which operation failed and carries the evidence a
//! person needs (the tool's stderr tail, the postmaster log tail, the path).
//! Callers can tell a retryable condition (`Timeout`, `Sql`, `ToolFailed`)
//! from a precondition violation (`Running`, `NotRunning`, `DataDirNotEmpty`).
//! No variant carries a password: tool arguments never contain one
//! (passwords travel through `--pwfile` and the pgpass file only).

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while operating the local PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The tool ran and exited unsuccessfully.
    #[error("{tool} {args:?} failed ({}): {stderr_tail}", exit_text(*exit))]
    ToolFailed {
        tool: String,
        args: Vec<String>,
        /// Exit code; `None` when the tool was killed by a signal.
        exit: Option<i32>,
        /// The last lines of the tool's stderr (stdout when stderr was empty).
        stderr_tail: String,
    },
    /// The tool did not finish in time and was killed (with its process group).
    #[error("{tool} {args:?} did not finish within {after:?} and was killed; last output: {stderr_tail}")]
    ToolTimeout {
        tool: String,
        args: Vec<String>,
        after: Duration,
        stderr_tail: String,
    },
    /// The tool could not be started at all.
    #[error("could not start {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// A file system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A SQL connection or statement failed.
    #[error("could not {action}: {source}")]
    Sql {
        action: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A SQL round trip or a wait did not finish in time.
    #[error("could not {action} within {after:?}")]
    Timeout { action: String, after: Duration },
    /// The operation needs a stopped server but a postmaster owns the data directory.
    #[error("cannot {action}: a postmaster (pid {pid}) is running on the data directory")]
    Running { action: &'static str, pid: u32 },
    /// The operation needs a running server.
    #[error("cannot {action}: PostgreSQL is not running")]
    NotRunning { action: &'static str },
    /// initdb refuses to write into a directory that already holds files.
    #[error("the data directory {path} is not empty")]
    DataDirNotEmpty { path: PathBuf },
    /// The postmaster did not come up.
    #[error("PostgreSQL did not start: {reason}; log tail:\n{log_tail}")]
    StartFailed { reason: String, log_tail: String },
    /// The OS user named by `run_as` does not exist.
    #[error("the OS user {user:?} does not exist")]
    UnknownUser { user: String },
    /// A replication slot name PostgreSQL would reject.
    #[error("invalid replication slot name {name:?}: use 1-63 characters of [a-z0-9_]")]
    InvalidSlotName { name: String },
    /// Output of a tool or a query that could not be understood.
    #[error("could not parse {what}: {detail}")]
    Parse { what: &'static str, detail: String },
}

fn exit_text(exit: Option<i32>) -> String {
    match exit {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_string(),
    }
}

impl PgError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> PgError {
        PgError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sql(action: impl Into<String>, source: tokio_postgres::Error) -> PgError {
        PgError::Sql {
            action: action.into(),
            source,
        }
    }
}
