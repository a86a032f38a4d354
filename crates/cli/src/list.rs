//! `pgwarden list` / `topology`: the member table of patronictl 4.1
//! (patroni-compat §5.3), built from one snapshot of the store. Pure.

use pgwarden_api::{ClusterDocument, ClusterMemberDocument, ReportedLag, ReportedLsn};
use pgwarden_types::ClusterSnapshot;
use serde_json::{Map, Value};

use crate::table::{tsv, Table};
use crate::Format;

/// One member's row, keyed by patronictl's internal column names.
struct Row {
    cells: Vec<(&'static str, Value)>,
}

const LSN_COLUMNS: [&str; 4] = ["Receive LSN", "Receive Lag", "Replay LSN", "Replay Lag"];
const OPTIONAL: [&str; 4] = [
    "Pending restart",
    "Pending restart reason",
    "Scheduled restart",
    "Tags",
];

fn role_word(role: &str) -> &'static str {
    match role {
        "leader" => "Leader",
        "standby_leader" => "Standby Leader",
        "sync_standby" => "Sync Standby",
        "quorum_standby" => "Quorum Standby",
        _ => "Replica",
    }
}

fn lsn_cell(lsn: Option<ReportedLsn>) -> Value {
    match lsn {
        Some(ReportedLsn(Some(l))) => Value::String(l.to_string()),
        _ => Value::String("unknown".into()),
    }
}

/// Lag in whole MB, blank (null) when unknown.
fn lag_cell(lag: Option<ReportedLag>) -> Value {
    match lag {
        Some(ReportedLag(Some(bytes))) => {
            Value::from((bytes as f64 / 1024.0 / 1024.0).round() as u64)
        }
        _ => Value::Null,
    }
}

fn reason_lines(reason: &Value, truncate: bool) -> String {
    let Some(map) = reason.as_object() else {
        return reason.as_str().unwrap_or_default().to_string();
    };
    map.iter()
        .map(|(param, change)| {
            let text = match (change.get("old_value"), change.get("new_value")) {
                (Some(old), Some(new)) => {
                    format!("{param}: {}->{}", plain(old), plain(new))
                }
                _ => format!("{param}: {}", plain(change)),
            };
            if truncate && text.chars().count() > 50 {
                format!("{param}: [hidden - too long]")
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Tags as YAML: block style (one `key: value` per line) or flow style.
fn tags_text(tags: &Map<String, Value>, flow: bool) -> String {
    let mut keys: Vec<&String> = tags.keys().collect();
    keys.sort();
    let pairs: Vec<String> = keys
        .iter()
        .map(|k| format!("{k}: {}", plain(&tags[*k])))
        .collect();
    if flow {
        format!("{{{}}}", pairs.join(", "))
    } else {
        pairs.join("\n")
    }
}

fn host_cells(members: &[ClusterMemberDocument]) -> Vec<String> {
    let show_port = members.iter().any(|m| m.port.is_some_and(|p| p != 5432))
        || members
            .iter()
            .enumerate()
            .any(|(i, m)| m.host.is_some() && members[..i].iter().any(|o| o.host == m.host));
    members
        .iter()
        .map(|m| match (&m.host, m.port) {
            (Some(h), Some(p)) if show_port => format!("{h}:{p}"),
            (Some(h), _) => h.clone(),
            _ => String::new(),
        })
        .collect()
}

fn rows(doc: &ClusterDocument, scope: &str, pretty: bool) -> Vec<Row> {
    let hosts = host_cells(&doc.members);
    doc.members
        .iter()
        .zip(hosts)
        .map(|(m, host)| {
            let leader = m.role == "leader" || m.role == "standby_leader";
            let mut cells: Vec<(&'static str, Value)> = vec![
                ("Cluster", Value::String(scope.to_string())),
                ("Member", Value::String(m.name.clone())),
                ("Host", Value::String(host)),
                ("Role", Value::String(role_word(&m.role).into())),
                ("State", Value::String(m.state.clone())),
                ("TL", m.timeline.map_or(Value::Null, Value::from)),
            ];
            if leader {
                for name in LSN_COLUMNS {
                    cells.push((name, Value::Null));
                }
            } else {
                cells.push(("Receive LSN", lsn_cell(m.receive_lsn)));
                cells.push(("Receive Lag", lag_cell(m.receive_lag)));
                cells.push(("Replay LSN", lsn_cell(m.replay_lsn)));
                cells.push(("Replay Lag", lag_cell(m.replay_lag)));
            }
            cells.push((
                "Pending restart",
                if m.pending_restart {
                    Value::String("*".into())
                } else {
                    Value::Null
                },
            ));
            cells.push((
                "Pending restart reason",
                m.pending_restart_reason
                    .as_ref()
                    .map_or(Value::Null, |r| Value::String(reason_lines(r, pretty))),
            ));
            cells.push((
                "Scheduled restart",
                m.scheduled_restart
                    .as_ref()
                    .and_then(|s| s.get("schedule"))
                    .cloned()
                    .unwrap_or(Value::Null),
            ));
            cells.push((
                "Tags",
                if m.tags.is_empty() {
                    Value::Null
                } else {
                    Value::Object(m.tags.clone())
                },
            ));
            Row { cells }
        })
        .collect()
}

fn cell_text(name: &str, value: &Value, pretty: bool) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(tags) if name == "Tags" => tags_text(tags, !pretty),
        other => other.to_string(),
    }
}

/// The title over the table: ` Cluster: <scope> (<sysid>) `.
fn title(snapshot: &ClusterSnapshot, scope: &str) -> String {
    let init = match snapshot.initialize.as_deref() {
        None => "uninitialized",
        Some("") => "initializing",
        Some(sysid) => sysid,
    };
    format!(" Cluster: {scope} ({init}) ")
}

fn footer(doc: &ClusterDocument) -> String {
    let mut out = String::new();
    if doc.pause {
        out.push_str(" Maintenance mode: on\n");
    }
    if let Some(s) = &doc.scheduled_switchover {
        out.push_str(&format!(" Switchover scheduled at: {}\n", s.at));
        if let Some(from) = &s.from {
            out.push_str(&format!(" {:>24} {from}\n", "from:"));
        }
        if let Some(to) = &s.to {
            out.push_str(&format!(" {:>24} {to}\n", "to:"));
        }
    }
    out
}

/// Members ordered as a tree under the leader (`replicatefrom` nests), with
/// the names prefixed as patronictl's `topology` does.
fn topology_order(doc: &mut ClusterDocument) {
    let leader = doc
        .members
        .iter()
        .position(|m| m.role == "leader" || m.role == "standby_leader");
    let mut ordered: Vec<ClusterMemberDocument> = Vec::new();
    let mut remaining = doc.members.clone();
    fn take_children(
        parent: &str,
        depth: usize,
        remaining: &mut Vec<ClusterMemberDocument>,
        ordered: &mut Vec<ClusterMemberDocument>,
        is_root: bool,
    ) {
        let children: Vec<ClusterMemberDocument> = remaining
            .iter()
            .filter(|m| {
                let from = m.tags.get("replicatefrom").and_then(Value::as_str);
                let upstream_exists =
                    from.is_some_and(|f| f != parent && remaining.iter().any(|o| o.name == f));
                match from {
                    Some(f) if f == parent => true,
                    _ => is_root && !upstream_exists,
                }
            })
            .cloned()
            .collect();
        remaining.retain(|m| !children.iter().any(|c| c.name == m.name));
        for mut child in children {
            let name = child.name.clone();
            child.name = format!("{}+ {}", "  ".repeat(depth - 1), child.name);
            ordered.push(child);
            take_children(&name, depth + 1, remaining, ordered, false);
        }
    }
    if let Some(i) = leader {
        let root = remaining.remove(i);
        let name = root.name.clone();
        ordered.push(root);
        take_children(&name, 1, &mut remaining, &mut ordered, true);
    }
    ordered.extend(remaining);
    doc.members = ordered;
}

/// Renders the member table of `snapshot` in `format`.
pub fn render_list(
    snapshot: &ClusterSnapshot,
    scope: &str,
    format: Format,
    extended: bool,
    topology: bool,
) -> String {
    let mut doc = ClusterDocument::from_snapshot(snapshot, scope);
    if topology {
        topology_order(&mut doc);
    }
    let pretty = matches!(format, Format::Pretty);
    let rows = rows(&doc, scope, pretty);
    let include = |name: &str| {
        !OPTIONAL.contains(&name)
            || extended
            || rows
                .iter()
                .any(|r| r.cells.iter().any(|(n, v)| *n == name && !v.is_null()))
    };
    let columns: Vec<&str> = rows
        .first()
        .map(|r| r.cells.iter().map(|(n, _)| *n).collect::<Vec<_>>())
        .unwrap_or_else(|| {
            ["Cluster", "Member", "Host", "Role", "State", "TL"]
                .into_iter()
                .chain(LSN_COLUMNS)
                .collect()
        })
        .into_iter()
        .filter(|n| include(n))
        .collect();
    match format {
        Format::Json | Format::Yaml => {
            let list: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let map: Map<String, Value> = r
                        .cells
                        .iter()
                        .filter(|(n, v)| columns.contains(n) && !v.is_null())
                        .filter(|(_, v)| v.as_str() != Some(""))
                        .map(|(n, v)| (n.to_string(), v.clone()))
                        .collect();
                    Value::Object(map)
                })
                .collect();
            if matches!(format, Format::Json) {
                format!("{}\n", Value::Array(list))
            } else {
                serde_norway::to_string(&list).unwrap_or_default()
            }
        }
        Format::Tsv => {
            let headers: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    r.cells
                        .iter()
                        .filter(|(n, _)| columns.contains(n))
                        .map(|(n, v)| cell_text(n, v, false))
                        .collect()
                })
                .collect();
            tsv(&headers, &cells)
        }
        Format::Pretty => {
            let shown: Vec<&str> = columns.into_iter().filter(|c| *c != "Cluster").collect();
            let headers: Vec<String> = shown
                .iter()
                .map(|c| match *c {
                    "Receive Lag" | "Replay Lag" => "Lag".to_string(),
                    other => other.to_string(),
                })
                .collect();
            let right: Vec<usize> = shown
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    matches!(
                        **c,
                        "TL" | "Receive LSN" | "Receive Lag" | "Replay LSN" | "Replay Lag"
                    )
                })
                .map(|(i, _)| i)
                .collect();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    shown
                        .iter()
                        .map(|name| {
                            r.cells
                                .iter()
                                .find(|(n, _)| n == name)
                                .map_or(String::new(), |(n, v)| cell_text(n, v, true))
                        })
                        .collect()
                })
                .collect();
            let table = Table {
                headers,
                rows: cells,
                right,
                title: Some(title(snapshot, scope)),
            };
            format!("{}{}", table.render(), footer(&doc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_types::{ClusterStatus, LeaderKey, Member, Tags, Versioned};
    use serde_json::json;

    fn member(name: &str, port: u16, data: Value) -> Member {
        let mut value = data;
        value["conn_url"] = json!(format!("postgres://127.0.0.1:{port}/postgres"));
        value["api_url"] = json!(format!("http://127.0.0.1:{}/patroni", port + 1000));
        Member {
            name: name.into(),
            data: serde_json::from_value(value).unwrap(),
            mod_revision: 1,
            lease: 1,
        }
    }

    fn snapshot() -> ClusterSnapshot {
        ClusterSnapshot {
            revision: 1,
            initialize: Some("7277694203142172922".into()),
            config: Some(Versioned {
                value: json!({"ttl": 30}),
                mod_revision: 1,
            }),
            leader: Some(LeaderKey {
                name: "postgresql0".into(),
                create_revision: 1,
                mod_revision: 1,
                lease: 1,
            }),
            members: vec![
                member(
                    "postgresql0",
                    5432,
                    json!({"state": "running", "role": "primary", "timeline": 5, "xlog_location": 67_108_968}),
                ),
                member(
                    "postgresql1",
                    5433,
                    json!({"state": "running", "role": "replica", "timeline": 5, "replication_state": "streaming", "receive_lsn": 67_108_968, "replay_lsn": 67_108_968, "tags": {"nofailover": true}}),
                ),
                member(
                    "postgresql3",
                    5435,
                    json!({"state": "stopped", "role": "replica"}),
                ),
            ],
            failover: None,
            sync: None,
            history: Vec::new(),
            status: ClusterStatus {
                optime: Some(67_108_968),
                ..ClusterStatus::default()
            },
            failsafe: None,
        }
    }

    #[test]
    fn pretty_table_matches_patronictl() {
        let text = render_list(&snapshot(), "batman", Format::Pretty, false, false);
        let expected = "\
+ Cluster: batman (7277694203142172922) -+-----------+----+-------------+-----+------------+-----+------------------+
| Member      | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Tags             |
+-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+------------------+
| postgresql0 | 127.0.0.1:5432 | Leader  | running   |  5 |             |     |            |     |                  |
| postgresql1 | 127.0.0.1:5433 | Replica | streaming |  5 |   0/4000068 |   0 |  0/4000068 |   0 | nofailover: true |
| postgresql3 | 127.0.0.1:5435 | Replica | stopped   |    |     unknown |     |    unknown |     |                  |
+-------------+----------------+---------+-----------+----+-------------+-----+------------+-----+------------------+
";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_omits_empty_values_and_keeps_internal_names() {
        let text = render_list(&snapshot(), "batman", Format::Json, false, false);
        let list: Vec<Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0]["Role"], json!("Leader"));
        assert_eq!(list[0]["TL"], json!(5));
        assert!(list[0].get("Receive LSN").is_none());
        assert_eq!(list[1]["Receive Lag"], json!(0));
        assert_eq!(list[1]["Tags"], json!({"nofailover": true}));
        assert_eq!(list[1]["Cluster"], json!("batman"));
    }

    #[test]
    fn tsv_uses_flow_tags_and_full_headers() {
        let text = render_list(&snapshot(), "batman", Format::Tsv, false, false);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "Cluster\tMember\tHost\tRole\tState\tTL\tReceive LSN\tReceive Lag\tReplay LSN\tReplay Lag\tTags"
        );
        assert!(text.contains("{nofailover: true}"));
    }

    #[test]
    fn footer_shows_pause_and_scheduled_switchover() {
        let mut snap = snapshot();
        snap.config.as_mut().unwrap().value["pause"] = json!(true);
        snap.failover = Some(Versioned {
            value: pgwarden_types::FailoverRequest {
                leader: Some("postgresql0".into()),
                member: Some("postgresql1".into()),
                scheduled_at: Some("2026-09-01T10:00:00+00:00".into()),
            },
            mod_revision: 3,
        });
        let text = render_list(&snap, "batman", Format::Pretty, false, false);
        assert!(text.ends_with(
            " Maintenance mode: on\n Switchover scheduled at: 2026-09-01T10:00:00+00:00\n                    from: postgresql0\n                      to: postgresql1\n"
        ), "{text}");
    }

    #[test]
    fn topology_nests_cascading_replicas() {
        let mut snap = snapshot();
        snap.members[2].data.tags = Tags {
            replicatefrom: Some("postgresql1".into()),
            ..Tags::default()
        };
        let text = render_list(&snap, "batman", Format::Pretty, false, true);
        let names: Vec<&str> = text
            .lines()
            .skip(3)
            .filter_map(|l| l.split('|').nth(1))
            .map(str::trim_end)
            .collect();
        assert_eq!(
            &names[..3],
            [" postgresql0", " + postgresql1", "   + postgresql3"]
        );
    }
}
