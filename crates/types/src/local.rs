//! What the agent observes about its own PostgreSQL in one cycle.

use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, Timeline};

/// State of the data directory on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirState {
    /// Missing or empty: this node needs initdb or a clone.
    Empty,
    /// Holds a cluster; `system_identifier` from pg_controldata.
    Initialized {
        system_identifier: String,
        cluster_state: PgClusterState,
        /// Timeline of the latest checkpoint (pg_controldata).
        checkpoint_timeline: Timeline,
        /// `standby.signal` present.
        standby_signal: bool,
    },
    /// Not empty but not a usable cluster (no PG_VERSION, unreadable controldata).
    Invalid { reason: String },
}

/// "Database cluster state" from pg_controldata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgClusterState {
    Starting,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    Unknown,
}

impl PgClusterState {
    /// Parses pg_controldata's wording.
    pub fn from_controldata(text: &str) -> PgClusterState {
        match text.trim() {
            "starting up" => PgClusterState::Starting,
            "shut down" => PgClusterState::ShutDown,
            "shut down in recovery" => PgClusterState::ShutDownInRecovery,
            "shutting down" => PgClusterState::ShuttingDown,
            "in crash recovery" => PgClusterState::InCrashRecovery,
            "in archive recovery" => PgClusterState::InArchiveRecovery,
            "in production" => PgClusterState::InProduction,
            _ => PgClusterState::Unknown,
        }
    }

    /// True when the last run ended without a clean shutdown checkpoint.
    pub fn needs_crash_recovery(self) -> bool {
        matches!(
            self,
            PgClusterState::InProduction
                | PgClusterState::InCrashRecovery
                | PgClusterState::ShuttingDown
                | PgClusterState::Starting
        )
    }
}

/// One row of `pg_stat_replication` on a primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationRow {
    pub usename: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
}

/// The local PostgreSQL as observed at the start of a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPgState {
    pub data_dir: DataDirState,
    /// A live postmaster owns the data directory (from `postmaster.pid` and the process table).
    pub postmaster_pid: Option<u32>,
    /// The server answered a query this cycle.
    pub accepting_connections: bool,
    /// `pg_is_in_recovery()`; `None` when not queryable.
    pub in_recovery: Option<bool>,
    /// Current timeline of the running server.
    pub timeline: Option<Timeline>,
    /// Primary: `pg_current_wal_flush_lsn()`.
    pub write_lsn: Option<Lsn>,
    /// Replica: last received position.
    pub receive_lsn: Option<Lsn>,
    /// Replica: last replayed position.
    pub replay_lsn: Option<Lsn>,
    /// Replica: WAL receiver is streaming.
    pub streaming: bool,
    /// Replica: the member name in `primary_conninfo` we currently follow, when known.
    pub following: Option<String>,
    /// Primary: who streams from us.
    pub replication: Vec<ReplicationRow>,
    /// Server version number, e.g. 150004.
    pub server_version: Option<u32>,
    /// postmaster start time, formatted as Patroni does.
    pub postmaster_start_time: Option<String>,
    /// Some parameter needs a restart to take effect.
    pub pending_restart: bool,
    /// `Latest checkpoint location` of pg_controldata (after a clean shutdown:
    /// the shutdown checkpoint, the last record this server wrote).
    pub checkpoint_lsn: Option<Lsn>,
    /// `synchronous_standby_names` in effect (`SHOW`), when the server answered.
    pub sync_standby_names: Option<String>,
    /// The value pgwarden wrote into its own synchronous-replication include
    /// file; `None` when the file does not exist (the user's setting applies).
    pub managed_sync_standby_names: Option<String>,
}

impl LocalPgState {
    /// Nothing on disk and nothing running.
    pub fn empty() -> LocalPgState {
        LocalPgState {
            data_dir: DataDirState::Empty,
            postmaster_pid: None,
            accepting_connections: false,
            in_recovery: None,
            timeline: None,
            write_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            streaming: false,
            following: None,
            replication: Vec::new(),
            server_version: None,
            postmaster_start_time: None,
            pending_restart: false,
            checkpoint_lsn: None,
            sync_standby_names: None,
            managed_sync_standby_names: None,
        }
    }

    /// Running and answering as a writable primary.
    pub fn is_running_primary(&self) -> bool {
        self.accepting_connections && self.in_recovery == Some(false)
    }

    /// The WAL position that counts for elections: a primary's flush position,
    /// a replica's furthest of received and replayed.
    pub fn wal_position(&self) -> Option<Lsn> {
        if self.in_recovery == Some(false) {
            return self.write_lsn;
        }
        match (self.receive_lsn, self.replay_lsn) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn system_identifier(&self) -> Option<&str> {
        match &self.data_dir {
            DataDirState::Initialized {
                system_identifier, ..
            } => Some(system_identifier),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_position_uses_furthest_replica_lsn() {
        let mut s = LocalPgState::empty();
        s.in_recovery = Some(true);
        s.receive_lsn = Some(Lsn(10));
        s.replay_lsn = Some(Lsn(7));
        assert_eq!(s.wal_position(), Some(Lsn(10)));
        s.in_recovery = Some(false);
        s.write_lsn = Some(Lsn(3));
        assert_eq!(s.wal_position(), Some(Lsn(3)));
    }

    #[test]
    fn controldata_words() {
        assert_eq!(
            PgClusterState::from_controldata("in production"),
            PgClusterState::InProduction
        );
        assert!(PgClusterState::InProduction.needs_crash_recovery());
        assert!(!PgClusterState::ShutDown.needs_crash_recovery());
    }
}
