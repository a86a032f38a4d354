//! `NodeStatus`: the plain data the agent publishes after every cycle for the REST API.
//!
//! Invariants: this is a snapshot, never a handle. The agent fills every field from
//! what it observed and decided in one cycle and replaces the whole value; the API
//! only reads it. Nothing here does I/O or reads a clock, so the documents and the
//! health-check rules built from it are pure functions of it (plus `now` for
//! `/liveness`).

use std::time::Duration;

use pgwarden_types::{DynamicConfig, LocalPgState, Lsn, PgState, Role, Tags, Timeline};
use serde_json::Value;

/// What this node knows about itself and the cluster, as of its last cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// Cluster name (`scope`).
    pub scope: String,
    /// This member's name.
    pub name: String,
    /// PostgreSQL state as Patroni words it. The agent reports `unknown` when the
    /// server should be running but does not answer; the documents also downgrade
    /// `running` to `unknown` when `pg` shows the server is not queryable.
    pub state: PgState,
    /// The role the agent believes this node has. Used as is when PostgreSQL is not
    /// queryable; when it is, `pg.in_recovery` decides between primary and replica
    /// (what peers need during elections), and `StandbyLeader` is kept for a
    /// standby leader.
    pub role: Role,
    /// This node holds the leader key and its last successful lease renewal is
    /// younger than `ttl` (computed by the agent on its monotonic clock).
    pub has_lock: bool,
    /// The local PostgreSQL as observed this cycle.
    pub pg: LocalPgState,
    /// Effective tags of this member.
    pub tags: Tags,
    /// The cluster is in maintenance mode (`pause` in the dynamic config).
    pub pause: bool,
    /// The last read of the consensus store succeeded.
    pub dcs_reachable: bool,
    /// Epoch seconds of the last successful contact with the consensus store.
    pub dcs_last_seen: Option<i64>,
    /// The dynamic config describes a standby cluster (`standby_cluster` with
    /// `host`, `port` or `restore_command`).
    pub standby_cluster: bool,
    /// Listed in `/sync` in `synchronous_mode: on` (derived from the store, not from
    /// `pg_stat_replication`).
    pub sync_standby: bool,
    /// Listed in `/sync` in `synchronous_mode: quorum`.
    pub quorum_standby: bool,
    /// Nobody holds the leader key (or the store could not be read).
    pub cluster_unlocked: bool,
    /// The failsafe mode keeps this primary running without the store.
    pub failsafe_mode_is_active: bool,
    /// Timeline of the running server (a replica may report the leader's).
    pub timeline: Option<Timeline>,
    /// System identifier from pg_controldata.
    pub database_system_identifier: Option<String>,
    /// Some parameter change needs a restart.
    pub pending_restart: bool,
    /// `{param: {"old_value":..,"new_value":..}}` when known.
    pub pending_restart_reason: Option<Value>,
    /// `{"schedule": iso8601, + restart filters}` when a restart is scheduled.
    pub scheduled_restart: Option<Value>,
    /// `streaming` or `in archive recovery` on a replica; `None` on a primary or when
    /// neither applies (not streaming and no `restore_command`).
    pub replication_state: Option<String>,
    /// The engine's one-line reason for what this node did in its last cycle.
    pub last_reason: String,
    /// Dynamic `ttl` in seconds.
    pub ttl: u64,
    /// Dynamic `loop_wait`.
    pub loop_wait: Duration,
    /// Dynamic `maximum_lag_on_failover` in bytes (default for `/readiness?lag=`).
    pub maximum_lag_on_failover: u64,
    /// The leader's last published WAL position (`status.optime`), the reference for lag.
    pub cluster_optime: Option<Lsn>,
    /// Replica: `latest_end_lsn` of the WAL receiver, when probed.
    pub latest_end_lsn: Option<Lsn>,
    /// Replica: `pg_last_xact_replay_timestamp()`, formatted as Patroni does.
    pub replayed_timestamp: Option<String>,
    /// Replica: `pg_is_wal_replay_paused()`.
    pub replay_paused: bool,
    /// Wall-clock epoch milliseconds at which the next HA cycle is scheduled.
    /// `/liveness` answers 200 while this plus `ttl` (running primary) or `2*ttl`
    /// (anyone else) lies in the future; `None` (no cycle scheduled) answers 503.
    pub next_cycle_at_ms: Option<i64>,
    /// `server_version_num`, e.g. 150004.
    pub server_version: Option<u32>,
    /// `pg_postmaster_start_time()` formatted as Patroni does
    /// (`YYYY-MM-DD HH:MM:SS.ffffff+TZ`).
    pub postmaster_start_time: Option<String>,
    /// The watchdog device could not be armed or kept alive; peers exclude such
    /// members from elections.
    pub watchdog_failed: bool,
    /// Wall-clock epoch milliseconds until which this node's lease is
    /// certainly valid (its last confirmed renewal plus the fence deadline).
    pub lease_valid_until_ms: Option<i64>,
    /// How long the last HA cycle took.
    pub cycle_duration_ms: Option<u64>,
}

impl NodeStatus {
    /// The status of a node that has not finished a cycle yet: PostgreSQL unknown,
    /// no lock, store not yet read, dynamic defaults.
    ///
    /// `next_cycle_at_ms` is the wall-clock epoch milliseconds of the first cycle, so
    /// that `/liveness` holds for one `2*ttl` window while the agent starts.
    pub fn starting(scope: &str, name: &str, next_cycle_at_ms: i64) -> NodeStatus {
        let defaults = DynamicConfig::default();
        NodeStatus {
            scope: scope.to_string(),
            name: name.to_string(),
            state: PgState::Unknown,
            role: Role::Uninitialized,
            has_lock: false,
            pg: LocalPgState::empty(),
            tags: Tags::default(),
            pause: false,
            dcs_reachable: false,
            dcs_last_seen: None,
            standby_cluster: false,
            sync_standby: false,
            quorum_standby: false,
            cluster_unlocked: true,
            failsafe_mode_is_active: false,
            timeline: None,
            database_system_identifier: None,
            pending_restart: false,
            pending_restart_reason: None,
            scheduled_restart: None,
            replication_state: None,
            last_reason: String::new(),
            ttl: defaults.ttl,
            loop_wait: defaults.loop_wait,
            maximum_lag_on_failover: defaults.maximum_lag_on_failover,
            cluster_optime: None,
            latest_end_lsn: None,
            replayed_timestamp: None,
            replay_paused: false,
            next_cycle_at_ms: Some(next_cycle_at_ms),
            server_version: None,
            postmaster_start_time: None,
            watchdog_failed: false,
            lease_valid_until_ms: None,
            cycle_duration_ms: None,
        }
    }

    /// PostgreSQL answered queries this cycle and is in a state where Patroni would
    /// query it (running, starting or restarting). Only then do `/patroni` and the
    /// health checks report server details (`xlog`, `timeline`, ...).
    pub fn pg_queryable(&self) -> bool {
        matches!(
            self.state,
            PgState::Running | PgState::Starting | PgState::Restarting
        ) && self.pg.accepting_connections
            && self.pg.in_recovery.is_some()
    }

    /// The `state` word the documents show: `running` becomes `unknown` when the
    /// server is not queryable (Patroni's rule).
    pub fn reported_state(&self) -> PgState {
        if self.state == PgState::Running && !self.pg_queryable() {
            PgState::Unknown
        } else {
            self.state
        }
    }

    /// The `role` word the documents show (see [`NodeStatus::role`]).
    pub fn reported_role(&self) -> &'static str {
        if !self.pg_queryable() {
            return self.role.as_str();
        }
        match self.pg.in_recovery {
            Some(false) => Role::Primary.as_str(),
            _ if self.standby_cluster && self.role == Role::StandbyLeader => {
                Role::StandbyLeader.as_str()
            }
            _ => Role::Replica.as_str(),
        }
    }

    /// The received position a replica reports: received, else replayed (Patroni's fallback).
    pub fn received_location(&self) -> Option<Lsn> {
        self.pg.receive_lsn.or(self.pg.replay_lsn)
    }

    /// Where the leader is known to be, for lag checks: the furthest of the leader's
    /// published optime, the WAL receiver's `latest_end_lsn` and what this replica
    /// already received (the primary has at least that much). `None` when nothing
    /// is known, in which case lag checks pass (Patroni's rule).
    pub fn leader_position(&self) -> Option<Lsn> {
        [
            self.cluster_optime,
            self.latest_end_lsn,
            self.pg.receive_lsn,
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

/// Statuses shared by the unit tests of this crate: the streaming replica of the
/// compatibility notes' `/patroni` example, and a primary of the same cluster.
#[cfg(test)]
pub(crate) mod fixtures {
    use pgwarden_types::{DataDirState, Lsn, PgClusterState, PgState, ReplicationRow, Role, Tags};

    use super::NodeStatus;

    pub const WAL: u64 = 67_108_968;

    pub fn replica() -> NodeStatus {
        let mut s = NodeStatus::starting("batman", "postgresql1", 0);
        s.state = PgState::Running;
        s.role = Role::Replica;
        s.dcs_reachable = true;
        s.cluster_unlocked = false;
        s.dcs_last_seen = Some(1_785_578_700);
        s.tags = Tags {
            clonefrom: true,
            ..Tags::default()
        };
        s.timeline = Some(5);
        s.replication_state = Some("streaming".into());
        s.replayed_timestamp = Some("2026-08-01 10:05:00.000001+00:00".into());
        s.cluster_optime = Some(Lsn(WAL));
        s.server_version = Some(170_002);
        s.postmaster_start_time = Some("2026-08-01 10:00:00.123456+00:00".into());
        s.database_system_identifier = Some("7277694203142172922".into());
        s.pg.data_dir = DataDirState::Initialized {
            system_identifier: "7277694203142172922".into(),
            cluster_state: PgClusterState::InArchiveRecovery,
            checkpoint_timeline: 5,
            standby_signal: true,
        };
        s.pg.postmaster_pid = Some(4242);
        s.pg.accepting_connections = true;
        s.pg.in_recovery = Some(true);
        s.pg.timeline = Some(5);
        s.pg.receive_lsn = Some(Lsn(WAL));
        s.pg.replay_lsn = Some(Lsn(WAL));
        s.pg.streaming = true;
        s.pg.server_version = Some(170_002);
        s
    }

    pub fn primary() -> NodeStatus {
        let mut s = replica();
        s.name = "postgresql0".into();
        s.role = Role::Primary;
        s.has_lock = true;
        s.tags = Tags::default();
        s.replication_state = None;
        s.replayed_timestamp = None;
        s.pg.in_recovery = Some(false);
        s.pg.receive_lsn = None;
        s.pg.replay_lsn = None;
        s.pg.streaming = false;
        s.pg.write_lsn = Some(Lsn(WAL + 100));
        s.pg.replication = vec![ReplicationRow {
            usename: "replicator".into(),
            application_name: "postgresql1".into(),
            client_addr: Some("10.0.0.2".into()),
            state: "streaming".into(),
            sync_state: "async".into(),
            sync_priority: 0,
            write_lsn: Some(Lsn(WAL)),
            flush_lsn: Some(Lsn(WAL)),
            replay_lsn: Some(Lsn(WAL)),
        }];
        s
    }
}
