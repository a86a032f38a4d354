//! Domain vocabulary shared by every pgwarden crate.
//!
//! This crate holds plain data only: WAL positions, roles and states, the
//! Patroni-compatible JSON shapes stored in etcd (`members/<name>`, `sync`,
//! `failover`, `status`, `history`, `config`), the immutable cluster snapshot
//! the agent reads each cycle, and the observation of the local PostgreSQL.
//! It must not do I/O and must not depend on an async runtime, so that the
//! decision engine can use it without pulling either in.

mod cluster;
mod dynamic_config;
mod local;
mod lsn;
mod member;
mod tags;
mod yaml_bool;

pub use cluster::{
    ClusterSnapshot, ClusterStatus, FailoverRequest, HistoryLine, LeaderKey, Member, SyncState,
    Versioned,
};
pub use dynamic_config::{
    display_seconds, render_parameters, seconds_value, DynamicConfig, DynamicConfigError,
    SynchronousMode, TimingRules, DYNAMIC_KEYS,
};
pub use local::{DataDirState, LocalPgState, PgClusterState, ReplicationRow};
pub use lsn::{Lsn, LsnParseError, Timeline};
pub use member::{MemberData, PgState, Role};
pub use tags::Tags;
pub use yaml_bool::{coerce_bool, coerce_i64, coerce_seconds};

/// The version string pgwarden publishes in member keys and `/patroni`.
///
/// Patroni peers read this to decide which wire formats to use; anything at or
/// above 4.0.0 selects the formats pgwarden writes (role `primary`, `retain_slots`).
pub const PATRONI_COMPAT_VERSION: &str = "4.1.4";

/// The physical replication slot name Patroni uses for a member.
///
/// Lower case; `-` and `.` become `_`; any other character outside
/// `[a-z0-9_]` becomes `u` followed by its code point as four hex digits;
/// truncated to PostgreSQL's 63-byte identifier limit.
pub fn slot_name_for_member(member: &str) -> String {
    let mut out = String::with_capacity(member.len());
    for ch in member.to_lowercase().chars() {
        match ch {
            'a'..='z' | '0'..='9' | '_' => out.push(ch),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04x}", other as u32)),
        }
    }
    out.truncate(63);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_patroni_rules() {
        assert_eq!(slot_name_for_member("node-1.dc"), "node_1_dc");
        assert_eq!(slot_name_for_member("Node1"), "node1");
        assert_eq!(slot_name_for_member("a b"), "au0020b");
        assert_eq!(slot_name_for_member(&"x".repeat(80)).len(), 63);
    }
}
