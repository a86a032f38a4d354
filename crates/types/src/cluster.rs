//! The immutable view of one cluster's keys in the consensus store.
//!
//! The agent reads one `ClusterSnapshot` per cycle and decides from it; every
//! write that depends on what it read carries the revision recorded here, so a
//! decision made on stale data loses its compare-and-swap instead of winning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dynamic_config::DynamicConfig;
use crate::lsn::Timeline;
use crate::member::MemberData;

/// A value together with the store revision it was read at (`mod_revision` in etcd).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}

/// The `leader` key: a member name held under that member's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    /// Revision of the write that created the key; a new holder means a new revision.
    /// This is the fencing token the proxy and the executor carry.
    pub create_revision: i64,
    pub mod_revision: i64,
    /// Lease id the key is attached to (0 when none).
    pub lease: i64,
}

/// One `members/<name>` key.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub data: MemberData,
    pub mod_revision: i64,
    pub lease: i64,
}

/// The `failover` key. Patroni "clears" it by writing `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailoverRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Candidate (the REST body calls it `candidate`, the key `member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// ISO-8601 timestamp with time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl FailoverRequest {
    /// Parses the stored value; accepts the legacy `leader:candidate` form.
    pub fn parse(raw: &str) -> FailoverRequest {
        if let Ok(req) = serde_json::from_str::<FailoverRequest>(raw) {
            return req;
        }
        match raw.split_once(':') {
            Some((leader, member)) => FailoverRequest {
                leader: Some(leader.to_string()).filter(|s| !s.is_empty()),
                member: Some(member.to_string()).filter(|s| !s.is_empty()),
                scheduled_at: None,
            },
            None => FailoverRequest::default(),
        }
    }

    /// `{}` means "no failover requested".
    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none()
    }
}

/// The `sync` key: who may be promoted without losing acknowledged writes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub leader: Option<String>,
    #[serde(default)]
    pub quorum: u32,
    /// Comma-joined sorted member names, or null.
    pub sync_standby: Option<String>,
}

impl SyncState {
    /// Names listed in `sync_standby`, lower-cased for Patroni's case-insensitive comparison.
    pub fn standbys(&self) -> Vec<String> {
        self.sync_standby
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Whether `name` is the recorded leader or a listed standby.
    pub fn lists(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.leader.as_deref().map(str::to_lowercase) == Some(name.clone())
            || self.standbys().contains(&name)
    }
}

/// The `status` key written by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optime: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retain_slots: Vec<String>,
}

impl ClusterStatus {
    /// Parses the stored value; a bare integer is the legacy `optime` form.
    pub fn parse(raw: &str) -> ClusterStatus {
        if let Ok(n) = raw.trim().parse::<u64>() {
            return ClusterStatus {
                optime: Some(n),
                ..ClusterStatus::default()
            };
        }
        serde_json::from_str(raw).unwrap_or_default()
    }
}

/// One line of the `history` key: `[timeline, switch_lsn, reason, timestamp, new_leader]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryLine {
    pub timeline: Timeline,
    pub switch_lsn: u64,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

impl HistoryLine {
    /// Parses the `history` JSON array; malformed lines are skipped.
    pub fn parse_all(raw: &str) -> Vec<HistoryLine> {
        let Ok(Value::Array(lines)) = serde_json::from_str::<Value>(raw) else {
            return Vec::new();
        };
        lines
            .iter()
            .filter_map(|line| {
                let items = line.as_array()?;
                Some(HistoryLine {
                    timeline: u32::try_from(items.first()?.as_u64()?).ok()?,
                    switch_lsn: items.get(1)?.as_u64()?,
                    reason: items
                        .get(2)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    timestamp: items.get(3).and_then(Value::as_str).map(str::to_string),
                    new_leader: items.get(4).and_then(Value::as_str).map(str::to_string),
                })
            })
            .collect()
    }

    /// The JSON array form Patroni stores.
    pub fn to_json(&self) -> Value {
        let mut items = vec![
            Value::from(self.timeline),
            Value::from(self.switch_lsn),
            Value::from(self.reason.clone()),
        ];
        if let Some(ts) = &self.timestamp {
            items.push(Value::from(ts.clone()));
            if let Some(leader) = &self.new_leader {
                items.push(Value::from(leader.clone()));
            }
        }
        Value::Array(items)
    }
}

/// Everything the store holds about one cluster, read at one revision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterSnapshot {
    /// Store revision the snapshot was read at.
    pub revision: i64,
    /// `initialize`: `Some("")` during the bootstrap race, then the system identifier.
    pub initialize: Option<String>,
    /// `config`: the raw JSON and its typed view.
    pub config: Option<Versioned<Value>>,
    pub leader: Option<LeaderKey>,
    /// Members sorted by name.
    pub members: Vec<Member>,
    pub failover: Option<Versioned<FailoverRequest>>,
    pub sync: Option<Versioned<SyncState>>,
    pub history: Vec<HistoryLine>,
    pub status: ClusterStatus,
    /// `failsafe`: member name to api_url.
    pub failsafe: Option<BTreeMap<String, String>>,
}

impl ClusterSnapshot {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.name.as_str())
    }

    pub fn leader_member(&self) -> Option<&Member> {
        self.leader_name().and_then(|n| self.member(n))
    }

    /// The typed dynamic configuration; defaults when the key is missing or invalid.
    pub fn dynamic_config(&self) -> DynamicConfig {
        self.config
            .as_ref()
            .and_then(|c| DynamicConfig::from_json(&c.value).ok())
            .unwrap_or_default()
    }

    /// The system identifier stored in `initialize`, when bootstrap has finished.
    pub fn system_identifier(&self) -> Option<&str> {
        self.initialize.as_deref().filter(|s| !s.is_empty())
    }

    /// Cluster timeline per Patroni: last history line's timeline + 1; 1 when empty.
    pub fn timeline(&self) -> Timeline {
        self.history.last().map_or(1, |line| line.timeline + 1)
    }

    /// An active failover request (`{}` counts as none).
    pub fn failover_request(&self) -> Option<&FailoverRequest> {
        self.failover
            .as_ref()
            .map(|f| &f.value)
            .filter(|f| !f.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_forms() {
        let req = FailoverRequest::parse(r#"{"leader":"a","member":"b"}"#);
        assert_eq!(req.member.as_deref(), Some("b"));
        assert!(FailoverRequest::parse("{}").is_empty());
        let legacy = FailoverRequest::parse("a:b");
        assert_eq!(legacy.leader.as_deref(), Some("a"));
        assert_eq!(legacy.member.as_deref(), Some("b"));
    }

    #[test]
    fn sync_names_are_case_insensitive() {
        let sync = SyncState {
            leader: Some("Node0".into()),
            quorum: 0,
            sync_standby: Some("node1,NODE2".into()),
        };
        assert_eq!(sync.standbys(), vec!["node1", "node2"]);
        assert!(sync.lists("node2"));
        assert!(sync.lists("node0"));
        assert!(!sync.lists("node3"));
    }

    #[test]
    fn status_legacy_integer() {
        assert_eq!(ClusterStatus::parse("42").optime, Some(42));
        let s = ClusterStatus::parse(r#"{"optime":7,"slots":{"n1":5}}"#);
        assert_eq!(s.optime, Some(7));
        assert_eq!(s.slots["n1"], 5);
    }

    #[test]
    fn history_round_trip_and_timeline() {
        let raw =
            r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","n2"]]"#;
        let lines = HistoryLine::parse_all(raw);
        assert_eq!(lines.len(), 1);
        assert_eq!(
            format!("[{}]", serde_json::to_string(&lines[0].to_json()).unwrap()),
            raw
        );
        let snap = ClusterSnapshot {
            history: lines,
            ..ClusterSnapshot::default()
        };
        assert_eq!(snap.timeline(), 2);
        assert_eq!(ClusterSnapshot::default().timeline(), 1);
    }
}
