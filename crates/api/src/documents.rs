//! The JSON documents of the read endpoints: `/patroni`, `/cluster`, `/history`.
//!
//! Peers (pgwarden and Patroni alike) parse `role`, `xlog`, `timeline`, `tags` and
//! `watchdog_failed` of `/patroni` during leader races, and `patronictl` reads
//! `/cluster`; the field names, value kinds and presence rules here follow Patroni
//! 4.1. Everything is a pure function of plain data; nothing here does I/O.
//!
//! Invariants worth keeping:
//! * `xlog` positions are always integers, never `null` (Patroni computes
//!   `max(received, replayed)` and would fail on `null`); an unknown position is 0.
//! * Without a queryable PostgreSQL, `/patroni` has `state` and `role` plus the
//!   cluster-level flags only, so peers count such a node as unhealthy.
//! * `/cluster` members are sorted by name; LSNs there are `X/X` strings.

use pgwarden_types::{
    ClusterSnapshot, HistoryLine, Lsn, Member, SynchronousMode, PATRONI_COMPAT_VERSION,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::status::NodeStatus;

/// The `GET /patroni` document (also the body of GET health checks).
///
/// Besides Patroni's fields it carries one extension, `"pgwarden": {"reason": ..}`,
/// the engine's last reason line, present only when that line is not empty.
pub fn patroni_document(status: &NodeStatus) -> Value {
    let mut doc = Map::new();
    doc.insert("state".into(), status.reported_state().as_str().into());
    if status.pg_queryable() {
        let pg = &status.pg;
        if let Some(started) = status
            .postmaster_start_time
            .as_ref()
            .or(pg.postmaster_start_time.as_ref())
        {
            doc.insert("postmaster_start_time".into(), started.clone().into());
        }
        let role = status.reported_role();
        doc.insert("role".into(), role.into());
        if let Some(version) = status.server_version.or(pg.server_version) {
            doc.insert("server_version".into(), version.into());
        }
        let in_recovery = pg.in_recovery != Some(false);
        let xlog = if in_recovery {
            json!({
                "received_location": lsn_int(status.received_location()),
                "replayed_location": lsn_int(pg.replay_lsn),
                "replayed_timestamp": status.replayed_timestamp,
                "paused": status.replay_paused,
            })
        } else {
            json!({ "location": lsn_int(pg.write_lsn) })
        };
        doc.insert("xlog".into(), xlog);
        if role == "replica" && status.sync_standby {
            doc.insert("sync_standby".into(), true.into());
        }
        if role == "replica" && status.quorum_standby {
            doc.insert("quorum_standby".into(), true.into());
        }
        if let Some(timeline) = status.timeline.or(pg.timeline) {
            doc.insert("timeline".into(), timeline.into());
        }
        if in_recovery {
            if let Some(state) = &status.replication_state {
                doc.insert("replication_state".into(), state.clone().into());
            }
        }
        if !pg.replication.is_empty() {
            let rows = pg
                .replication
                .iter()
                .map(|row| {
                    json!({
                        "usename": row.usename,
                        "application_name": row.application_name,
                        "client_addr": row.client_addr,
                        "state": row.state,
                        "sync_state": row.sync_state,
                        "sync_priority": row.sync_priority,
                    })
                })
                .collect();
            doc.insert("replication".into(), Value::Array(rows));
        }
    } else {
        doc.insert("role".into(), status.role.as_str().into());
    }
    if status.pause {
        doc.insert("pause".into(), true.into());
    }
    if status.cluster_unlocked || !status.dcs_reachable {
        doc.insert("cluster_unlocked".into(), true.into());
    }
    if status.failsafe_mode_is_active {
        doc.insert("failsafe_mode_is_active".into(), true.into());
    }
    doc.insert(
        "dcs_last_seen".into(),
        status.dcs_last_seen.unwrap_or(0).into(),
    );
    if !status.tags.is_empty() {
        doc.insert("tags".into(), status.tags.to_json());
    }
    let sysid = status
        .database_system_identifier
        .as_deref()
        .or(status.pg.system_identifier());
    if let Some(sysid) = sysid {
        doc.insert("database_system_identifier".into(), sysid.into());
    }
    if status.pending_restart {
        doc.insert("pending_restart".into(), true.into());
        if let Some(reason) = &status.pending_restart_reason {
            doc.insert("pending_restart_reason".into(), reason.clone());
        }
    }
    doc.insert(
        "patroni".into(),
        json!({ "version": PATRONI_COMPAT_VERSION, "scope": status.scope, "name": status.name }),
    );
    if let Some(schedule) = &status.scheduled_restart {
        doc.insert("scheduled_restart".into(), schedule.clone());
    }
    if status.watchdog_failed {
        doc.insert("watchdog_failed".into(), true.into());
    }
    if !status.last_reason.is_empty() {
        doc.insert("pgwarden".into(), json!({ "reason": status.last_reason }));
    }
    Value::Object(doc)
}

fn lsn_int(lsn: Option<Lsn>) -> u64 {
    lsn.map_or(0, |l| l.0)
}

/// The `GET /history` document: the `history` key's lines as Patroni stores them.
pub fn history_document(lines: &[HistoryLine]) -> Value {
    Value::Array(lines.iter().map(HistoryLine::to_json).collect())
}

/// An LSN in `/cluster`: `"X/X"`, or `"unknown"` when the member did not publish one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedLsn(pub Option<Lsn>);

/// A lag in bytes in `/cluster`, or `"unknown"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedLag(pub Option<u64>);

const UNKNOWN: &str = "unknown";

impl Serialize for ReportedLsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(lsn) => serializer.serialize_str(&lsn.to_string()),
            None => serializer.serialize_str(UNKNOWN),
        }
    }
}

impl<'de> Deserialize<'de> for ReportedLsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Tolerant: "X/X", an integer (some tools print raw positions), or anything
        // else, which counts as unknown.
        Ok(ReportedLsn(match Value::deserialize(deserializer)? {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64().map(Lsn),
            _ => None,
        }))
    }
}

impl Serialize for ReportedLag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(lag) => serializer.serialize_u64(lag),
            None => serializer.serialize_str(UNKNOWN),
        }
    }
}

impl<'de> Deserialize<'de> for ReportedLag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ReportedLag(match Value::deserialize(deserializer)? {
            Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }))
    }
}

/// One member in `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMemberDocument {
    pub name: String,
    /// `leader`, `standby_leader`, `sync_standby`, `quorum_standby` or `replica`.
    #[serde(default)]
    pub role: String,
    /// Leader: the PostgreSQL state; others: `replication_state` when published, else the state.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub api_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<Value>,
    /// Published tags, kept as raw JSON so every value survives for display.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    /// Non-leaders only (4.1+): received position and its lag behind `status.optime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<ReportedLsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lag: Option<ReportedLag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<ReportedLsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lag: Option<ReportedLag>,
    /// `xlog_location` of the member key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<ReportedLsn>,
    /// Lag of `lsn`; the only lag field 3.x peers publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<ReportedLag>,
}

/// `scheduled_switchover` in `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSwitchover {
    pub at: String,
    #[serde(default, rename = "from", skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The `GET /cluster` document, typed; [`cluster_document`] renders it as JSON and
/// the client parses it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterDocument {
    #[serde(default)]
    pub members: Vec<ClusterMemberDocument>,
    #[serde(default)]
    pub scope: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_switchover: Option<ScheduledSwitchover>,
}

impl ClusterDocument {
    /// Builds the document from one snapshot of the store (Patroni's `cluster_as_json`).
    pub fn from_snapshot(snapshot: &ClusterSnapshot, scope: &str) -> ClusterDocument {
        let config = snapshot.dynamic_config();
        let standby_cluster = is_standby_cluster(snapshot.config.as_ref().map(|c| &c.value));
        let leader = snapshot.leader_name();
        let synchronous = config.synchronous_mode != SynchronousMode::Off && !standby_cluster;
        let sync_role = if config.synchronous_mode == SynchronousMode::Quorum {
            "quorum_standby"
        } else {
            "sync_standby"
        };
        let sync_names = snapshot
            .sync
            .as_ref()
            .map(|s| s.value.standbys())
            .unwrap_or_default();
        let optime = snapshot.status.optime.unwrap_or(0);

        let mut members: Vec<ClusterMemberDocument> = snapshot
            .members
            .iter()
            .map(|m| {
                let is_leader = leader == Some(m.name.as_str());
                let role = if is_leader {
                    if standby_cluster {
                        "standby_leader"
                    } else {
                        "leader"
                    }
                } else if synchronous && sync_names.contains(&m.name.to_lowercase()) {
                    sync_role
                } else {
                    "replica"
                };
                member_document(m, role, is_leader, optime)
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));

        let scheduled_switchover = snapshot.failover_request().and_then(|f| {
            f.scheduled_at.as_ref().map(|at| ScheduledSwitchover {
                at: at.clone(),
                from: f.leader.clone(),
                to: f.member.clone(),
            })
        });
        ClusterDocument {
            members,
            scope: scope.to_string(),
            pause: config.pause,
            scheduled_switchover,
        }
    }
}

fn member_document(m: &Member, role: &str, is_leader: bool, optime: u64) -> ClusterMemberDocument {
    let data = &m.data;
    let state = match (&data.replication_state, role) {
        (Some(repl), r) if r != "leader" && !repl.is_empty() => repl.clone(),
        _ => data.state.as_str().to_string(),
    };
    let (host, port) = match data.pg_host_port() {
        Some((host, port)) if !host.is_empty() => (Some(host), Some(port)),
        _ => (None, None),
    };
    // Patroni treats a missing or zero LSN as unknown; the lag is measured against
    // the leader's published optime and is 0 for a member that is ahead of it.
    let position = |lsn: Option<u64>| match lsn.filter(|&l| l > 0) {
        None => (Some(ReportedLsn(None)), Some(ReportedLag(None))),
        Some(lsn) => (
            Some(ReportedLsn(Some(Lsn(lsn)))),
            Some(ReportedLag(Some(optime.saturating_sub(lsn)))),
        ),
    };
    let none = (None, None);
    let (receive_lsn, receive_lag) = if is_leader {
        none
    } else {
        position(data.receive_lsn)
    };
    let (replay_lsn, replay_lag) = if is_leader {
        none
    } else {
        position(data.replay_lsn)
    };
    let (lsn, lag) = if is_leader {
        none
    } else {
        position(data.xlog_location)
    };
    ClusterMemberDocument {
        name: m.name.clone(),
        role: role.to_string(),
        state,
        api_url: data.api_url.clone(),
        host,
        port,
        timeline: data.timeline,
        pending_restart: data.pending_restart,
        pending_restart_reason: data.pending_restart_reason.clone(),
        scheduled_restart: data.scheduled_restart.clone(),
        tags: match data.tags.to_json() {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        receive_lsn,
        receive_lag,
        replay_lsn,
        replay_lag,
        lsn,
        lag,
    }
}

/// Whether a dynamic config describes a standby cluster: `standby_cluster` is a
/// mapping with any of `host`, `port`, `restore_command` set (Patroni's test).
pub fn is_standby_cluster(config: Option<&Value>) -> bool {
    let Some(section) = config
        .and_then(|c| c.get("standby_cluster"))
        .and_then(Value::as_object)
    else {
        return false;
    };
    ["host", "port", "restore_command"]
        .iter()
        .any(|key| match section.get(*key) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(_) => true,
        })
}

/// The `GET /cluster` document as JSON.
pub fn cluster_document(snapshot: &ClusterSnapshot, scope: &str) -> Value {
    // Serialising plain structs of strings, numbers and JSON values cannot fail.
    serde_json::to_value(ClusterDocument::from_snapshot(snapshot, scope)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pgwarden_types::{
        ClusterStatus, FailoverRequest, LeaderKey, PgState, Role, SyncState, Versioned,
    };

    use super::*;
    use crate::status::fixtures::{primary, replica, WAL};

    /// The streaming-replica example of §4.2 of the compatibility notes, verbatim.
    const REPLICA_EXAMPLE: &str = r#"{"state":"running","postmaster_start_time":"2026-08-01 10:00:00.123456+00:00","role":"replica",
 "server_version":170002,"xlog":{"received_location":67108968,"replayed_location":67108968,
 "replayed_timestamp":"2026-08-01 10:05:00.000001+00:00","paused":false},"timeline":5,
 "replication_state":"streaming","dcs_last_seen":1785578700,"tags":{"clonefrom":true},
 "database_system_identifier":"7277694203142172922",
 "patroni":{"version":"4.1.4","scope":"batman","name":"postgresql1"}}"#;

    fn keys(doc: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn replica_document_matches_the_patroni_example_field_by_field() {
        let expected: Value = serde_json::from_str(REPLICA_EXAMPLE).unwrap();
        let doc = patroni_document(&replica());
        assert_eq!(keys(&doc), keys(&expected), "field set");
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&doc[key], value, "field {key}");
        }
    }

    #[test]
    fn primary_document() {
        let doc = patroni_document(&primary());
        let expected = json!({
            "state": "running",
            "postmaster_start_time": "2026-08-01 10:00:00.123456+00:00",
            "role": "primary",
            "server_version": 170002,
            "xlog": {"location": WAL + 100},
            "timeline": 5,
            "replication": [{
                "usename": "replicator", "application_name": "postgresql1",
                "client_addr": "10.0.0.2", "state": "streaming",
                "sync_state": "async", "sync_priority": 0
            }],
            "dcs_last_seen": 1785578700,
            "database_system_identifier": "7277694203142172922",
            "patroni": {"version": "4.1.4", "scope": "batman", "name": "postgresql0"}
        });
        assert_eq!(keys(&doc), keys(&expected), "field set");
        assert_eq!(doc, expected);
    }

    #[test]
    fn role_comes_from_recovery_state_not_from_the_agent() {
        let mut s = replica();
        s.role = Role::Primary; // e.g. just demoted, agent not caught up
        assert_eq!(patroni_document(&s)["role"], "replica");
        let mut standby_leader = replica();
        standby_leader.role = Role::StandbyLeader;
        standby_leader.standby_cluster = true;
        assert_eq!(patroni_document(&standby_leader)["role"], "standby_leader");
    }

    #[test]
    fn unqueryable_postgresql_reports_only_state_role_and_cluster_flags() {
        let mut s = replica();
        s.pg.accepting_connections = false;
        s.pause = true;
        s.cluster_unlocked = true;
        s.watchdog_failed = true;
        s.pending_restart = true;
        s.pending_restart_reason =
            Some(json!({"max_connections": {"old_value": "100", "new_value": "200"}}));
        let doc = patroni_document(&s);
        assert_eq!(doc["state"], "unknown");
        assert_eq!(doc["role"], "replica");
        assert_eq!(
            keys(&doc),
            vec![
                "cluster_unlocked",
                "database_system_identifier",
                "dcs_last_seen",
                "patroni",
                "pause",
                "pending_restart",
                "pending_restart_reason",
                "role",
                "state",
                "tags",
                "watchdog_failed"
            ]
        );

        let mut stopped = replica();
        stopped.state = PgState::Stopped;
        stopped.role = Role::Uninitialized;
        let doc = patroni_document(&stopped);
        assert_eq!(doc["state"], "stopped");
        assert_eq!(doc["role"], "uninitialized");
        assert!(doc.get("xlog").is_none());
    }

    #[test]
    fn replica_positions_are_never_null() {
        let mut s = replica();
        s.pg.receive_lsn = None;
        s.pg.replay_lsn = None;
        s.replayed_timestamp = None;
        let doc = patroni_document(&s);
        assert_eq!(
            doc["xlog"],
            json!({"received_location": 0, "replayed_location": 0, "replayed_timestamp": null, "paused": false})
        );
        // Received falls back to replayed, as in Patroni.
        s.pg.replay_lsn = Some(Lsn(7));
        assert_eq!(patroni_document(&s)["xlog"]["received_location"], 7);
    }

    #[test]
    fn cluster_level_flags_and_extension() {
        let mut s = replica();
        s.dcs_reachable = false;
        s.sync_standby = true;
        s.failsafe_mode_is_active = true;
        s.last_reason = "no action: I am a secondary and I am following a leader".into();
        let doc = patroni_document(&s);
        assert_eq!(
            doc["cluster_unlocked"], true,
            "an unreachable store counts as unlocked"
        );
        assert_eq!(doc["sync_standby"], true);
        assert_eq!(doc["failsafe_mode_is_active"], true);
        assert_eq!(
            doc["pgwarden"]["reason"],
            "no action: I am a secondary and I am following a leader"
        );
        // sync_standby is a replica-only flag.
        let mut p = primary();
        p.sync_standby = true;
        assert!(patroni_document(&p).get("sync_standby").is_none());
    }

    #[test]
    fn history_document_is_the_stored_array() {
        let raw = r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","n2"],[2,33554600,"switchover"]]"#;
        let lines = HistoryLine::parse_all(raw);
        assert_eq!(history_document(&lines).to_string(), raw);
        assert_eq!(history_document(&[]), json!([]));
    }

    fn member(name: &str, data: Value) -> Member {
        Member {
            name: name.into(),
            data: serde_json::from_value(data).unwrap(),
            mod_revision: 1,
            lease: 1,
        }
    }

    fn snapshot() -> ClusterSnapshot {
        let optime = 100_000_000;
        ClusterSnapshot {
            revision: 10,
            initialize: Some("7277694203142172922".into()),
            config: Some(Versioned {
                value: json!({"ttl": 30, "synchronous_mode": true}),
                mod_revision: 2,
            }),
            leader: Some(LeaderKey {
                name: "pg0".into(),
                create_revision: 3,
                mod_revision: 3,
                lease: 7,
            }),
            // Deliberately not in name order.
            members: vec![
                member(
                    "pg3",
                    json!({"conn_url": "postgres://10.0.0.4:5432/postgres", "api_url": "http://10.0.0.4:8008/patroni", "state": "starting", "role": "replica"}),
                ),
                member(
                    "pg1",
                    json!({"conn_url": "postgres://10.0.0.2:5433/postgres", "api_url": "http://10.0.0.2:8008/patroni", "state": "running", "role": "replica", "xlog_location": optime - 4096, "receive_lsn": optime - 4096, "replay_lsn": optime - 8192, "replication_state": "streaming", "timeline": 2, "tags": {"nofailover": true}}),
                ),
                member(
                    "pg0",
                    json!({"conn_url": "postgres://10.0.0.1:5432/postgres", "api_url": "http://10.0.0.1:8008/patroni", "state": "running", "role": "primary", "xlog_location": optime, "timeline": 2, "pending_restart": true}),
                ),
                member(
                    "pg2",
                    json!({"conn_url": "postgres://10.0.0.3:5432/postgres", "api_url": "http://10.0.0.3:8008/patroni", "state": "running", "role": "replica", "xlog_location": optime + 10, "receive_lsn": optime + 10, "replay_lsn": optime + 10, "replication_state": "streaming", "timeline": 2}),
                ),
            ],
            failover: None,
            sync: Some(Versioned {
                value: SyncState {
                    leader: Some("pg0".into()),
                    quorum: 0,
                    sync_standby: Some("PG1".into()),
                },
                mod_revision: 4,
            }),
            history: Vec::new(),
            status: ClusterStatus {
                optime: Some(optime),
                slots: BTreeMap::new(),
                retain_slots: Vec::new(),
            },
            failsafe: None,
        }
    }

    #[test]
    fn cluster_document_members_roles_lags() {
        let doc = cluster_document(&snapshot(), "batman");
        let names: Vec<&str> = doc["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["pg0", "pg1", "pg2", "pg3"], "sorted by name");
        assert_eq!(doc["scope"], "batman");
        assert!(doc.get("pause").is_none());
        assert!(doc.get("scheduled_switchover").is_none());

        // The leader: PG state, no LSN/lag fields.
        assert_eq!(
            doc["members"][0],
            json!({"name": "pg0", "role": "leader", "state": "running", "api_url": "http://10.0.0.1:8008/patroni",
                   "host": "10.0.0.1", "port": 5432, "timeline": 2, "pending_restart": true})
        );
        // A sync standby (names compare case-insensitively) behind the optime.
        assert_eq!(
            doc["members"][1],
            json!({"name": "pg1", "role": "sync_standby", "state": "streaming", "api_url": "http://10.0.0.2:8008/patroni",
                   "host": "10.0.0.2", "port": 5433, "timeline": 2, "tags": {"nofailover": true},
                   "receive_lsn": "0/5F5D100", "receive_lag": 4096,
                   "replay_lsn": "0/5F5C100", "replay_lag": 8192,
                   "lsn": "0/5F5D100", "lag": 4096})
        );
        // Ahead of the leader's optime: lag 0, not negative.
        let pg2 = &doc["members"][2];
        assert_eq!(pg2["role"], "replica");
        assert_eq!(
            (
                pg2["receive_lag"].clone(),
                pg2["replay_lag"].clone(),
                pg2["lag"].clone()
            ),
            (json!(0), json!(0), json!(0))
        );
        assert_eq!(pg2["lsn"], "0/5F5E10A");
        // No LSNs published: "unknown" everywhere, state falls back to the PG state.
        let pg3 = &doc["members"][3];
        assert_eq!(pg3["state"], "starting");
        for field in [
            "receive_lsn",
            "receive_lag",
            "replay_lsn",
            "replay_lag",
            "lsn",
            "lag",
        ] {
            assert_eq!(pg3[field], "unknown", "{field}");
        }
    }

    #[test]
    fn cluster_document_pause_switchover_and_standby_cluster() {
        let mut snap = snapshot();
        snap.config = Some(Versioned {
            value: json!({"pause": true, "standby_cluster": {"host": "10.1.0.1", "port": 5432}}),
            mod_revision: 5,
        });
        snap.failover = Some(Versioned {
            value: FailoverRequest {
                leader: Some("pg0".into()),
                member: Some("pg2".into()),
                scheduled_at: Some("2026-09-01T10:00:00+00:00".into()),
            },
            mod_revision: 6,
        });
        snap.members[2].data.replication_state = Some("streaming".into());
        let doc = cluster_document(&snap, "batman");
        assert_eq!(doc["pause"], true);
        assert_eq!(
            doc["scheduled_switchover"],
            json!({"at": "2026-09-01T10:00:00+00:00", "from": "pg0", "to": "pg2"})
        );
        assert_eq!(doc["members"][0]["role"], "standby_leader");
        assert_eq!(
            doc["members"][0]["state"], "streaming",
            "a standby leader shows its replication state"
        );
        // No synchronous replication in a standby cluster.
        assert_eq!(doc["members"][1]["role"], "replica");

        // An unscheduled failover request is not a scheduled switchover.
        snap.failover.as_mut().unwrap().value.scheduled_at = None;
        assert!(cluster_document(&snap, "batman")
            .get("scheduled_switchover")
            .is_none());
    }

    #[test]
    fn quorum_mode_names_quorum_standbys() {
        let mut snap = snapshot();
        snap.config = Some(Versioned {
            value: json!({"synchronous_mode": "quorum"}),
            mod_revision: 5,
        });
        let doc = cluster_document(&snap, "batman");
        assert_eq!(doc["members"][1]["role"], "quorum_standby");
        assert_eq!(doc["members"][2]["role"], "replica");
        // Synchronous mode off: /sync is ignored.
        snap.config = Some(Versioned {
            value: json!({"synchronous_mode": false}),
            mod_revision: 6,
        });
        assert_eq!(
            cluster_document(&snap, "batman")["members"][1]["role"],
            "replica"
        );
    }

    #[test]
    fn cluster_lags_without_optime_are_zero_like_patroni() {
        let mut snap = snapshot();
        snap.status = ClusterStatus::default();
        let doc = cluster_document(&snap, "batman");
        assert_eq!(doc["members"][1]["lag"], 0);
        assert_eq!(doc["members"][3]["lag"], "unknown");
    }

    #[test]
    fn cluster_document_parses_back() {
        let doc = cluster_document(&snapshot(), "batman");
        let typed: ClusterDocument = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(typed, ClusterDocument::from_snapshot(&snapshot(), "batman"));
        assert_eq!(typed.members[1].lag, Some(ReportedLag(Some(4096))));
        assert_eq!(typed.members[3].lsn, Some(ReportedLsn(None)));
        assert_eq!(serde_json::to_value(&typed).unwrap(), doc);
    }

    #[test]
    fn standby_cluster_detection() {
        assert!(is_standby_cluster(Some(
            &json!({"standby_cluster": {"restore_command": "cp x y"}})
        )));
        assert!(!is_standby_cluster(Some(
            &json!({"standby_cluster": {"primary_slot_name": "s"}})
        )));
        assert!(!is_standby_cluster(Some(&json!({"standby_cluster": null}))));
        assert!(!is_standby_cluster(None));
    }
}
