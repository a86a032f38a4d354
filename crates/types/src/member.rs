//! The `members/<name>` value and the role and state words it carries.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tags::Tags;

/// Role of a member as Patroni names it in member keys and `/patroni`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Writable primary; Patroni 3.x wrote `master`, which is still accepted.
    #[serde(alias = "master")]
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
    Uninitialized,
    Promoted,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Uninitialized => "uninitialized",
            Role::Promoted => "promoted",
        }
    }
}

/// PostgreSQL state as Patroni reports it (`state` in member keys and `/patroni`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PgState {
    #[serde(rename = "initializing new cluster")]
    InitializingNewCluster,
    #[serde(rename = "initdb failed")]
    InitdbFailed,
    #[serde(rename = "creating replica")]
    CreatingReplica,
    #[serde(rename = "running")]
    Running,
    #[serde(rename = "starting")]
    Starting,
    #[serde(rename = "start failed")]
    StartFailed,
    #[serde(rename = "restarting")]
    Restarting,
    #[serde(rename = "restart failed")]
    RestartFailed,
    #[serde(rename = "stopping")]
    Stopping,
    #[serde(rename = "stopped")]
    Stopped,
    #[serde(rename = "stop failed")]
    StopFailed,
    #[serde(rename = "crashed")]
    Crashed,
    #[serde(rename = "unknown")]
    Unknown,
}

impl PgState {
    /// The exact word Patroni uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PgState::InitializingNewCluster => "initializing new cluster",
            PgState::InitdbFailed => "initdb failed",
            PgState::CreatingReplica => "creating replica",
            PgState::Running => "running",
            PgState::Starting => "starting",
            PgState::StartFailed => "start failed",
            PgState::Restarting => "restarting",
            PgState::RestartFailed => "restart failed",
            PgState::Stopping => "stopping",
            PgState::Stopped => "stopped",
            PgState::StopFailed => "stop failed",
            PgState::Crashed => "crashed",
            PgState::Unknown => "unknown",
        }
    }

    /// Index used by Patroni's `patroni_postgres_state` metric.
    pub fn metric_index(self) -> u8 {
        match self {
            PgState::InitializingNewCluster => 0,
            PgState::InitdbFailed => 1,
            PgState::CreatingReplica => 4,
            PgState::Running => 5,
            PgState::Starting => 6,
            PgState::StartFailed => 8,
            PgState::Restarting => 9,
            PgState::RestartFailed => 10,
            PgState::Stopping => 11,
            PgState::Stopped => 12,
            PgState::StopFailed => 13,
            PgState::Crashed => 14,
            PgState::Unknown => 15,
        }
    }
}

/// The JSON value of `members/<name>`, field order as Patroni writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberData {
    #[serde(default)]
    pub conn_url: String,
    #[serde(default)]
    pub api_url: String,
    #[serde(default = "unknown_state")]
    pub state: PgState,
    #[serde(default = "uninitialized_role")]
    pub role: Role,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_after_promote: Option<bool>,
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
}

fn unknown_state() -> PgState {
    PgState::Unknown
}

fn uninitialized_role() -> Role {
    Role::Uninitialized
}

impl MemberData {
    /// Parses a member value leniently: unparsable JSON gives an empty member
    /// (Patroni's reader tolerance), so one bad key cannot stop the agent.
    pub fn parse_lenient(raw: &str) -> MemberData {
        serde_json::from_str(raw).unwrap_or_else(|_| MemberData::empty())
    }

    /// A member about which nothing is known.
    pub fn empty() -> MemberData {
        MemberData {
            conn_url: String::new(),
            api_url: String::new(),
            state: PgState::Unknown,
            role: Role::Uninitialized,
            version: String::new(),
            checkpoint_after_promote: None,
            tags: Tags::default(),
            pending_restart: false,
            pending_restart_reason: None,
            xlog_location: None,
            replay_lsn: None,
            receive_lsn: None,
            replication_state: None,
            timeline: None,
            scheduled_restart: None,
            pause: false,
        }
    }

    /// Host and port of PostgreSQL, taken from `conn_url` (`postgres://h:p/db`).
    pub fn pg_host_port(&self) -> Option<(String, u16)> {
        let rest = self
            .conn_url
            .strip_prefix("postgres://")
            .or_else(|| self.conn_url.strip_prefix("postgresql://"))?;
        let authority = rest.split('/').next()?;
        let authority = authority.rsplit('@').next()?;
        if let Some(v6) = authority.strip_prefix('[') {
            let (host, port) = v6.split_once(']')?;
            let port = port
                .strip_prefix(':')
                .map_or(Some(5432), |p| p.parse().ok())?;
            return Some((host.to_string(), port));
        }
        match authority.rsplit_once(':') {
            Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
            None => Some((authority.to_string(), 5432)),
        }
    }

    /// Base URL of the member's REST API (`api_url` without the `/patroni` suffix).
    pub fn api_base(&self) -> Option<String> {
        if self.api_url.is_empty() {
            return None;
        }
        let url = self.api_url.trim_end_matches('/');
        Some(url.strip_suffix("/patroni").unwrap_or(url).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_patroni_replica_value() {
        let raw = r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","version":"4.1.4","xlog_location":67108968,"replay_lsn":67108968,"receive_lsn":67108968,"replication_state":"streaming","timeline":5}"#;
        let member: MemberData = serde_json::from_str(raw).unwrap();
        assert_eq!(member.role, Role::Replica);
        assert_eq!(member.state, PgState::Running);
        assert_eq!(member.pg_host_port(), Some(("10.0.0.2".into(), 5432)));
        assert_eq!(member.api_base().as_deref(), Some("http://10.0.0.2:8008"));
        // Round trip keeps the exact compact form Patroni writes.
        assert_eq!(serde_json::to_string(&member).unwrap(), raw);
    }

    #[test]
    fn accepts_patroni3_master_role() {
        let member: MemberData = serde_json::from_value(json!({"role": "master"})).unwrap();
        assert_eq!(member.role, Role::Primary);
    }

    #[test]
    fn garbage_gives_empty_member() {
        assert_eq!(MemberData::parse_lenient("{nope"), MemberData::empty());
    }

    #[test]
    fn ipv6_conn_url() {
        let m = MemberData {
            conn_url: "postgres://[::1]:5433/postgres".into(),
            ..MemberData::empty()
        };
        assert_eq!(m.pg_host_port(), Some(("::1".into(), 5433)));
    }
}
