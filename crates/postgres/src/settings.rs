//! What the agent tells this crate about its PostgreSQL, and the small value
//! types the lifecycle methods take.
//!
//! `PgSettings` is plain data, already validated and merged by the agent
//! (dynamic + local parameters). This module does no I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A database role and its password (`None`: no password is set or sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

/// Everything needed to run one local PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    pub data_dir: PathBuf,
    /// Directory of `initdb`, `pg_ctl`, `postgres`, ...
    pub bin_dir: PathBuf,
    /// `listen_addresses`, e.g. `127.0.0.1` or `*`.
    pub listen_addresses: String,
    pub port: u16,
    /// Where this agent connects for its own SQL probes (TCP).
    pub connect_host: String,
    pub connect_port: u16,
    /// `unix_socket_directories`; `None`: the data directory's parent (which
    /// the postgres user must be able to write). Never `/var/run/postgresql`
    /// implicitly, so tests and several nodes on one host do not collide.
    pub socket_dir: Option<PathBuf>,
    /// Cluster scope, written as `cluster_name`.
    pub scope: String,
    /// This member's name, sent as `application_name` to the upstream.
    pub member_name: String,
    /// Database for SQL probes and `pg_rewind` (usually `postgres`).
    pub database: String,
    pub superuser: Credentials,
    pub replication: Credentials,
    /// Role for `pg_rewind`; `None`: the superuser.
    pub rewind: Option<Credentials>,
    /// The pgpass file this crate writes (mode 0600) and hands to tools and
    /// to the WAL receiver (`passfile=` in `primary_conninfo`).
    pub pgpass: PathBuf,
    /// Server parameters, already merged (dynamic + local).
    pub parameters: BTreeMap<String, String>,
    /// `pg_hba.conf` lines; empty: keep the file (initdb writes a safe default).
    pub pg_hba: Vec<String>,
    /// Rendered initdb switches such as `--encoding=UTF8`, `--data-checksums`.
    pub initdb_options: Vec<String>,
    /// Deadline for `pg_ctl` start/stop/promote waits.
    pub pg_ctl_timeout: Duration,
    /// OS user that runs the PostgreSQL tools when the agent is root.
    pub run_as: Option<String>,
}

impl PgSettings {
    /// The directory of the server's unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        match &self.socket_dir {
            Some(dir) => dir.clone(),
            None => self
                .data_dir
                .parent()
                .map_or_else(|| self.data_dir.clone(), |p| p.to_path_buf()),
        }
    }

    /// The file the postmaster's stderr goes to: beside the data directory,
    /// so that wiping or re-cloning the data directory keeps the evidence.
    pub fn log_file(&self) -> PathBuf {
        let name = self
            .data_dir
            .file_name()
            .map_or_else(|| "pgdata".into(), |n| n.to_string_lossy().into_owned());
        let parent = self
            .data_dir
            .parent()
            .map_or_else(|| self.data_dir.clone(), |p| p.to_path_buf());
        parent.join(format!("{name}.postmaster.log"))
    }

    /// Credentials `pg_rewind` connects with.
    pub fn rewind_credentials(&self) -> &Credentials {
        self.rewind.as_ref().unwrap_or(&self.superuser)
    }

    pub(crate) fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// `pg_ctl stop -m <mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, shutdown checkpoint.
    Fast,
    /// No checkpoint: crash recovery on the next start.
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// The member a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Its member name (reported back as `following`).
    pub member: String,
    pub host: String,
    pub port: u16,
    /// Physical slot on the upstream to stream through.
    pub slot: Option<String>,
}

/// The role the configuration files are written for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigRole {
    Primary,
    /// `upstream: None` writes a standby without `primary_conninfo` (no leader known).
    Replica {
        upstream: Option<Upstream>,
    },
}

/// What `pg_rewind` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindOutcome {
    /// Blocks were copied from the source; the data directory now follows it.
    Rewound,
    /// pg_rewind found the target already on the source's history.
    NotNeeded,
}

/// What [`crate::Postgres::sync_physical_slots`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotChanges {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Unwanted slots still in use; retried on the next call.
    pub busy: Vec<String>,
}

/// Deadlines of the long operations; `Default` gives generous production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One SQL probe in `observe` (connect + queries).
    pub probe: Duration,
    /// Other SQL statements (roles, slots).
    pub sql: Duration,
    pub checkpoint: Duration,
    pub controldata: Duration,
    pub initdb: Duration,
    pub basebackup: Duration,
    pub rewind: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            probe: Duration::from_secs(2),
            sql: Duration::from_secs(30),
            checkpoint: Duration::from_secs(600),
            controldata: Duration::from_secs(10),
            initdb: Duration::from_secs(600),
            basebackup: Duration::from_secs(24 * 3600),
            rewind: Duration::from_secs(6 * 3600),
        }
    }
}
