//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of a
//! [`NodeStatus`], with Patroni's metric names and labels plus pgwarden's own
//! (`pgwarden_*`). Pure: the same status and `now` render the same text.

use std::fmt::Write;

use pgwarden_types::{PgState, Role, PATRONI_COMPAT_VERSION};

use crate::status::NodeStatus;

/// Patroni's zero-padded version number: `4.1.4` → `040104`.
fn version_number(version: &str) -> String {
    version
        .split('.')
        .map(|part| format!("{:0>2}", part.parse::<u32>().unwrap_or(0)))
        .collect()
}

/// `2026-11-22 10:00:00.123456+00:00` → Unix seconds.
fn epoch_seconds(timestamp: &str) -> Option<f64> {
    let parsed = chrono::DateTime::parse_from_str(timestamp, "%Y-%m-%d %H:%M:%S%.f%:z").ok()?;
    Some(parsed.timestamp_micros() as f64 / 1e6)
}

struct Writer {
    out: String,
    labels: String,
}

impl Writer {
    fn metric(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        let _ = writeln!(self.out, "{name}{{{}}} {value}", self.labels);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.metric(name, "gauge", help, value);
    }

    fn flag(&mut self, name: &str, help: &str, on: bool) {
        self.gauge(name, help, u8::from(on));
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole `/metrics` body. `now_ms` is the wall clock (Unix milliseconds).
pub fn metrics_text(status: &NodeStatus, now_ms: i64) -> String {
    let mut w = Writer {
        out: String::new(),
        labels: format!(
            "scope=\"{}\",name=\"{}\"",
            escape(&status.scope),
            escape(&status.name)
        ),
    };
    let running = status.state == PgState::Running;
    let primary = running && status.role == Role::Primary;
    let replica = running && status.role == Role::Replica;
    let pg = &status.pg;
    w.gauge(
        "patroni_version",
        "Patroni semver without periods, as pgwarden implements it.",
        version_number(PATRONI_COMPAT_VERSION),
    );
    w.flag(
        "patroni_postgres_running",
        "Value is 1 if Postgres is running, 0 otherwise.",
        running,
    );
    w.gauge(
        "patroni_postmaster_start_time",
        "Epoch seconds since Postgres started.",
        status
            .postmaster_start_time
            .as_deref()
            .and_then(epoch_seconds)
            .unwrap_or(0.0),
    );
    w.flag(
        "patroni_primary",
        "Value is 1 if this node is the leader, 0 otherwise.",
        primary && status.has_lock,
    );
    w.metric(
        "patroni_xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        if primary {
            pg.write_lsn.map_or(0, |l| l.0)
        } else {
            0
        },
    );
    w.flag(
        "patroni_standby_leader",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        false,
    );
    w.flag(
        "patroni_replica",
        "Value is 1 if this node is a replica, 0 otherwise.",
        replica,
    );
    w.flag(
        "patroni_sync_standby",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        status.sync_standby,
    );
    w.flag(
        "patroni_quorum_standby",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        status.quorum_standby,
    );
    w.metric(
        "patroni_xlog_received_location",
        "counter",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
        if replica { pg.receive_lsn.map_or(0, |l| l.0) } else { 0 },
    );
    w.metric(
        "patroni_xlog_replayed_location",
        "counter",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
        if replica { pg.replay_lsn.map_or(0, |l| l.0) } else { 0 },
    );
    w.gauge(
        "patroni_xlog_replayed_timestamp",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        status
            .replayed_timestamp
            .as_deref()
            .and_then(epoch_seconds)
            .unwrap_or(0.0),
    );
    w.flag(
        "patroni_xlog_paused",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
        false,
    );
    w.flag(
        "patroni_postgres_streaming",
        "Value is 1 if Postgres is streaming, 0 otherwise.",
        replica && pg.streaming,
    );
    w.flag(
        "patroni_postgres_in_archive_recovery",
        "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
        replica && !pg.streaming,
    );
    w.gauge(
        "patroni_postgres_server_version",
        "Version of Postgres (if running), 0 otherwise.",
        status.server_version.unwrap_or(0),
    );
    w.flag(
        "patroni_cluster_unlocked",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        status.cluster_unlocked,
    );
    w.flag(
        "patroni_failsafe_mode_is_active",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        status.failsafe_mode_is_active,
    );
    w.gauge(
        "patroni_postgres_timeline",
        "Postgres timeline of this node (if running), 0 otherwise.",
        status.timeline.unwrap_or(0),
    );
    w.gauge(
        "patroni_dcs_last_seen",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        status.dcs_last_seen.unwrap_or(0),
    );
    w.flag(
        "patroni_pending_restart",
        "Value is 1 if the node needs a restart, 0 otherwise.",
        status.pending_restart,
    );
    w.flag(
        "patroni_is_paused",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        status.pause,
    );
    let _ = writeln!(
        w.out,
        "# HELP patroni_postgres_state Numeric representation of Postgres state.\n\
         # Values: 0=initdb, 1=initdb_failed, 2=custom_bootstrap, 3=custom_bootstrap_failed, \
         4=creating_replica, 5=running, 6=starting, 7=bootstrap_starting, 8=start_failed, \
         9=restarting, 10=restart_failed, 11=stopping, 12=stopped, 13=stop_failed, 14=crashed\n\
         # TYPE patroni_postgres_state gauge\npatroni_postgres_state{{{}}} {}",
        w.labels,
        status.state.metric_index()
    );
    // pgwarden's own.
    w.gauge(
        "pgwarden_lease_remaining_seconds",
        "Seconds until this node's leader lease could expire (0 when it holds no lease).",
        status
            .lease_valid_until_ms
            .filter(|_| status.has_lock)
            .map_or(0.0, |until| (until - now_ms).max(0) as f64 / 1000.0),
    );
    w.gauge(
        "pgwarden_ha_cycle_duration_seconds",
        "Duration of the last HA cycle.",
        status
            .cycle_duration_ms
            .map_or(0.0, |ms| ms as f64 / 1000.0),
    );
    if primary && !pg.replication.is_empty() {
        let _ = writeln!(
            w.out,
            "# HELP pgwarden_replication_lag_bytes Bytes a streaming replica has not flushed yet.\n\
             # TYPE pgwarden_replication_lag_bytes gauge"
        );
        let head = pg.write_lsn.map_or(0, |l| l.0);
        for row in &pg.replication {
            let lag = row.flush_lsn.map_or(head, |f| head.saturating_sub(f.0));
            let _ = writeln!(
                w.out,
                "pgwarden_replication_lag_bytes{{{},application_name=\"{}\"}} {lag}",
                w.labels,
                escape(&row.application_name)
            );
        }
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_types::{Lsn, ReplicationRow};

    fn line<'a>(text: &'a str, metric: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
            .unwrap_or_else(|| panic!("{metric} missing in\n{text}"))
    }

    #[test]
    fn leader_metrics() {
        let mut s = crate::status::fixtures::replica();
        s.role = Role::Primary;
        s.has_lock = true;
        s.pg.in_recovery = Some(false);
        s.pg.write_lsn = Some(Lsn(5000));
        s.pg.replication = vec![ReplicationRow {
            usename: "replicator".into(),
            application_name: "postgresql1".into(),
            client_addr: None,
            state: "streaming".into(),
            sync_state: "async".into(),
            sync_priority: 0,
            write_lsn: Some(Lsn(4000)),
            flush_lsn: Some(Lsn(3000)),
            replay_lsn: Some(Lsn(3000)),
        }];
        s.lease_valid_until_ms = Some(10_500);
        s.cycle_duration_ms = Some(25);
        let text = metrics_text(&s, 9_000);
        let labels = "{scope=\"batman\",name=\"postgresql1\"}";
        assert_eq!(
            line(&text, "patroni_version"),
            format!("patroni_version{labels} 040104")
        );
        assert_eq!(
            line(&text, "patroni_primary"),
            format!("patroni_primary{labels} 1")
        );
        assert_eq!(
            line(&text, "patroni_replica"),
            format!("patroni_replica{labels} 0")
        );
        assert_eq!(
            line(&text, "patroni_xlog_location"),
            format!("patroni_xlog_location{labels} 5000")
        );
        assert_eq!(
            line(&text, "pgwarden_lease_remaining_seconds"),
            format!("pgwarden_lease_remaining_seconds{labels} 1.5")
        );
        assert_eq!(
            line(&text, "pgwarden_ha_cycle_duration_seconds"),
            format!("pgwarden_ha_cycle_duration_seconds{labels} 0.025")
        );
        assert!(text.contains(
            "pgwarden_replication_lag_bytes{scope=\"batman\",name=\"postgresql1\",application_name=\"postgresql1\"} 2000"
        ));
        assert!(text.contains("# TYPE patroni_xlog_location counter"));
    }

    #[test]
    fn replica_metrics() {
        let s = crate::status::fixtures::replica();
        let text = metrics_text(&s, 0);
        let labels = "{scope=\"batman\",name=\"postgresql1\"}";
        assert_eq!(
            line(&text, "patroni_primary"),
            format!("patroni_primary{labels} 0")
        );
        assert_eq!(
            line(&text, "patroni_replica"),
            format!("patroni_replica{labels} 1")
        );
        assert_eq!(
            line(&text, "patroni_postgres_running"),
            format!("patroni_postgres_running{labels} 1")
        );
        assert_eq!(
            line(&text, "patroni_postgres_state"),
            format!("patroni_postgres_state{labels} 5")
        );
        assert!(!text.contains("pgwarden_replication_lag_bytes{"));
    }
}
