//! Turning the raw keys of a cluster prefix into a [`ClusterSnapshot`].
//!
//! Parsing is lenient the way Patroni's readers are: a malformed value never
//! fails the read. A bad member value yields an empty member (fields that do
//! parse are kept), a bad `config` an empty object, a bad `sync` an empty sync
//! state (its mod_revision is kept so a CAS can still replace it), a bad
//! `history` no lines. Legacy forms are accepted: a member value that is a
//! `postgres://` URL whose `application_name` is the api_url, `conn_kwargs`
//! instead of `conn_url`, the `leader:candidate` failover form and a bare
//! integer `status`. Unknown keys (e.g. `optime/leader`) are ignored.

use std::collections::BTreeMap;

use pgwarden_types::{
    ClusterSnapshot, ClusterStatus, FailoverRequest, HistoryLine, LeaderKey, Member, MemberData,
    SyncState, Versioned,
};
use serde_json::{Map, Value};

use crate::keys::{ClusterKey, KeyLayout};

/// One key as the store returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKv {
    /// Full key, including the cluster prefix.
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// 0 when the key has no lease.
    pub lease: i64,
}

/// Builds the snapshot of one cluster from the keys read at `revision`.
pub fn parse_snapshot(layout: &KeyLayout, revision: i64, kvs: &[RawKv]) -> ClusterSnapshot {
    let mut snap = ClusterSnapshot {
        revision,
        ..ClusterSnapshot::default()
    };
    for kv in kvs {
        let Some(key) = layout.classify(&kv.key) else {
            continue;
        };
        match key {
            ClusterKey::Initialize => snap.initialize = Some(kv.value.clone()),
            ClusterKey::Config => {
                let value = match serde_json::from_str::<Value>(&kv.value) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => Value::Object(Map::new()),
                };
                snap.config = Some(Versioned {
                    value,
                    mod_revision: kv.mod_revision,
                });
            }
            ClusterKey::Leader => {
                snap.leader = Some(LeaderKey {
                    name: kv.value.clone(),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    lease: kv.lease,
                })
            }
            ClusterKey::Member(name) => snap.members.push(Member {
                name,
                data: parse_member_value(&kv.value),
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            }),
            ClusterKey::Failover => {
                let value = FailoverRequest::parse(&kv.value);
                snap.failover = Some(Versioned {
                    value,
                    mod_revision: kv.mod_revision,
                });
            }
            ClusterKey::Sync => {
                let state = serde_json::from_str::<SyncState>(&kv.value).unwrap_or_default();
                snap.sync = Some(Versioned {
                    value: state,
                    mod_revision: kv.mod_revision,
                });
            }
            ClusterKey::Status => snap.status = ClusterStatus::parse(&kv.value),
            ClusterKey::History => snap.history = HistoryLine::parse_all(&kv.value),
            ClusterKey::Failsafe => snap.failsafe = parse_failsafe(&kv.value),
            ClusterKey::Other(_) => {}
        }
    }
    snap.members.sort_by(|a, b| a.name.cmp(&b.name));
    snap
}

fn parse_failsafe(raw: &str) -> Option<BTreeMap<String, String>> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(raw) else {
        return None;
    };
    Some(
        map.into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect(),
    )
}

/// Parses a `members/<name>` value with Patroni's reader tolerance.
pub fn parse_member_value(raw: &str) -> MemberData {
    let trimmed = raw.trim();
    if trimmed.starts_with("postgres") {
        return legacy_member_url(trimmed);
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(trimmed) else {
        return MemberData::empty();
    };
    if !obj.contains_key("conn_url") {
        if let Some(url) = obj.get("conn_kwargs").and_then(conn_url_from_kwargs) {
            obj.insert("conn_url".into(), Value::String(url));
        }
    }
    obj.remove("conn_kwargs");
    if let Ok(data) = serde_json::from_value::<MemberData>(Value::Object(obj.clone())) {
        return data;
    }
    // Keep every field that parses on its own; drop the ones that do not (e.g. a
    // state word from a newer Patroni), so one odd field does not blank the member.
    let good: Map<String, Value> = obj
        .into_iter()
        .filter(|(k, v)| {
            let mut single = Map::new();
            single.insert(k.clone(), v.clone());
            serde_json::from_value::<MemberData>(Value::Object(single)).is_ok()
        })
        .collect();
    serde_json::from_value(Value::Object(good)).unwrap_or_else(|_| MemberData::empty())
}

fn conn_url_from_kwargs(kwargs: &Value) -> Option<String> {
    let host = kwargs.get("host")?.as_str()?;
    let port = match kwargs.get("port") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "5432".to_string(),
    };
    let db = kwargs
        .get("dbname")
        .and_then(Value::as_str)
        .unwrap_or("postgres");
    Some(format!("postgres://{host}:{port}/{db}"))
}

/// `postgres://host:port/db?application_name=<api_url>` (Patroni < 1.0 format).
fn legacy_member_url(raw: &str) -> MemberData {
    let (base, query) = raw.split_once('?').unwrap_or((raw, ""));
    let api_url = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "application_name")
        .map(|(_, v)| percent_decode(v))
        .unwrap_or_default();
    MemberData {
        conn_url: base.to_string(),
        api_url,
        ..MemberData::empty()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_types::{PgState, Role};

    fn kv(layout: &KeyLayout, rel: &str, value: &str, rev: i64, lease: i64) -> RawKv {
        RawKv {
            key: format!("{}{rel}", layout.prefix()),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev + 1,
            lease,
        }
    }

    #[test]
    fn every_key_kind_parses() {
        let l = KeyLayout::new("/service", "batman");
        let kvs = vec![
            kv(&l, "initialize", "7000000000000000001", 2, 0),
            kv(&l, "config", r#"{"ttl":30,"loop_wait":10}"#, 3, 0),
            kv(&l, "leader", "n1", 4, 77),
            kv(
                &l,
                "members/n2",
                r#"{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"replica","version":"4.1.4","xlog_location":5,"timeline":2}"#,
                5,
                78,
            ),
            kv(
                &l,
                "members/n1",
                r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"primary","version":"4.1.4","xlog_location":9,"timeline":2}"#,
                6,
                77,
            ),
            kv(&l, "failover", r#"{"leader":"n1","member":"n2"}"#, 7, 0),
            kv(
                &l,
                "sync",
                r#"{"leader":"n1","quorum":0,"sync_standby":"n2"}"#,
                8,
                0,
            ),
            kv(&l, "status", r#"{"optime":9,"slots":{"n2":5}}"#, 9, 0),
            kv(
                &l,
                "history",
                r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","n1"]]"#,
                10,
                0,
            ),
            kv(
                &l,
                "failsafe",
                r#"{"n1":"http://127.0.0.1:8008/patroni","n2":"http://127.0.0.1:8009/patroni"}"#,
                11,
                0,
            ),
            kv(&l, "optime/leader", "9", 12, 0),
            RawKv {
                key: "/service/other/leader".into(),
                value: "x".into(),
                create_revision: 1,
                mod_revision: 1,
                lease: 0,
            },
        ];
        let s = parse_snapshot(&l, 42, &kvs);
        assert_eq!(s.revision, 42);
        assert_eq!(s.system_identifier(), Some("7000000000000000001"));
        assert_eq!(s.config.as_ref().unwrap().value["ttl"], 30);
        assert_eq!(s.config.as_ref().unwrap().mod_revision, 4);
        let leader = s.leader.as_ref().unwrap();
        assert_eq!(
            (
                leader.name.as_str(),
                leader.create_revision,
                leader.mod_revision,
                leader.lease
            ),
            ("n1", 4, 5, 77)
        );
        assert_eq!(
            s.members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            vec!["n1", "n2"]
        );
        assert_eq!(s.members[0].data.role, Role::Primary);
        assert_eq!(s.members[1].lease, 78);
        assert_eq!(s.failover_request().unwrap().member.as_deref(), Some("n2"));
        assert_eq!(s.sync.as_ref().unwrap().value.standbys(), vec!["n2"]);
        assert_eq!(s.status.optime, Some(9));
        assert_eq!(s.timeline(), 2);
        assert_eq!(s.failsafe.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn malformed_values_are_tolerated() {
        let l = KeyLayout::new("/service", "b");
        let kvs = vec![
            kv(&l, "config", "{not json", 1, 0),
            kv(&l, "sync", "garbage", 2, 0),
            kv(&l, "history", "nope", 3, 0),
            kv(&l, "status", "12345", 4, 0),
            kv(&l, "failover", "a:b", 5, 0),
            kv(&l, "members/bad", "{{{", 6, 1),
            kv(&l, "failsafe", "[]", 7, 0),
        ];
        let s = parse_snapshot(&l, 10, &kvs);
        assert_eq!(s.config.as_ref().unwrap().value, Value::Object(Map::new()));
        assert_eq!(s.sync.as_ref().unwrap().value, SyncState::default());
        assert_eq!(s.sync.as_ref().unwrap().mod_revision, 3);
        assert!(s.history.is_empty());
        assert_eq!(s.status.optime, Some(12345));
        assert_eq!(s.failover_request().unwrap().leader.as_deref(), Some("a"));
        assert_eq!(s.members[0].data, MemberData::empty());
        assert!(s.failsafe.is_none());
    }

    #[test]
    fn legacy_member_forms() {
        let m = parse_member_value("postgres://replicator:pw@10.0.0.1:5432/postgres?application_name=http%3A%2F%2F10.0.0.1%3A8008%2Fpatroni");
        assert_eq!(
            m.conn_url,
            "postgres://replicator:pw@10.0.0.1:5432/postgres"
        );
        assert_eq!(m.api_url, "http://10.0.0.1:8008/patroni");
        let m = parse_member_value(
            r#"{"conn_kwargs":{"host":"10.0.0.2","port":5433,"dbname":"postgres"},"api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"master"}"#,
        );
        assert_eq!(m.conn_url, "postgres://10.0.0.2:5433/postgres");
        assert_eq!(m.role, Role::Primary);
    }

    #[test]
    fn one_odd_field_does_not_blank_the_member() {
        let m = parse_member_value(
            r#"{"conn_url":"postgres://h:1/postgres","state":"some future state","role":"replica","timeline":"x"}"#,
        );
        assert_eq!(m.conn_url, "postgres://h:1/postgres");
        assert_eq!(m.role, Role::Replica);
        assert_eq!(m.state, PgState::Unknown);
        assert_eq!(m.timeline, None);
    }
}
