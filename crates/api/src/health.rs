//! Health-check rules: which HTTP status each health endpoint answers.
//!
//! Load balancers (HAProxy, Kubernetes probes) route traffic with these answers,
//! so every rule here is a pure function of the published [`NodeStatus`], the
//! request path and its query string — no I/O, no clock except the `now` passed
//! in for `/liveness`. The rules follow Patroni 4.x (§4.1 of the compatibility
//! notes) with two deliberate differences, both documented in the crate root:
//! paths match exactly (Patroni matches substrings, so `/foo-replica` is a
//! replica check there and a 503 here), and `/primary` additionally requires
//! that PostgreSQL is not in recovery, so writes are never routed to a node that
//! holds the lock but has not finished promoting.

use pgwarden_types::PgState;
use serde_json::Value;

use crate::status::NodeStatus;

/// Which of the two lag references `/readiness` measures against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadinessMode {
    /// Replayed WAL (`mode=apply`, the default).
    #[default]
    Apply,
    /// Received WAL (`mode=write`).
    Write,
}

/// The query parameters the health checks understand.
///
/// Unknown parameters are ignored. When a parameter is repeated, the first value
/// wins (Patroni reads `parse_qs(...)[key][0]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthQuery {
    /// `lag=<bytes or 16kB/64MB/1GB>`; `None` when absent or unparsable (Patroni
    /// then applies no limit on `/replica` and `maximum_lag_on_failover` on `/readiness`).
    pub lag: Option<u64>,
    /// `replication_state=streaming|in archive recovery`.
    pub replication_state: Option<String>,
    /// `mode=write|apply` for `/readiness`.
    pub mode: ReadinessMode,
    /// `tag_<name>=<value>` filters, in query order.
    pub tags: Vec<(String, String)>,
}

impl HealthQuery {
    /// Parses a raw query string (without the leading `?`), percent-decoding keys
    /// and values and treating `+` as a space, as HTML forms and Python's
    /// `parse_qs` do.
    pub fn parse(query: &str) -> HealthQuery {
        let mut out = HealthQuery::default();
        let mut seen_lag = false;
        let mut seen_state = false;
        let mut seen_mode = false;
        for pair in query.split(['&', ';']).filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(raw_key);
            let value = percent_decode(raw_value);
            // parse_qs drops blank values by default; do the same so `?lag=` means "no lag".
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "lag" if !seen_lag => {
                    seen_lag = true;
                    out.lag = parse_size(&value);
                }
                "replication_state" if !seen_state => {
                    seen_state = true;
                    out.replication_state = Some(value);
                }
                "mode" if !seen_mode => {
                    seen_mode = true;
                    out.mode = if value == "write" {
                        ReadinessMode::Write
                    } else {
                        ReadinessMode::Apply
                    };
                }
                _ => {
                    if let Some(tag) = key.strip_prefix("tag_") {
                        if !out.tags.iter().any(|(k, _)| k == tag) {
                            out.tags.push((tag.to_string(), value));
                        }
                    }
                }
            }
        }
        out
    }
}

/// Parses a byte size the way Patroni's `parse_int(value, 'B')` does: a number
/// (integer or decimal) optionally followed by one of PostgreSQL's memory units
/// `B`, `kB`, `MB`, `GB`, `TB` (case-sensitive, powers of 1024). Returns `None`
/// for anything else, including negative values.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(multiplier);
    }
    let real: f64 = number.parse().ok()?;
    let bytes = (real * multiplier as f64).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    // A stray `%` stays literal, as in Python's unquote.
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Health endpoints whose GET answers the status line only (no `/patroni` body).
pub fn is_status_only(path: &str) -> bool {
    matches!(path.trim_end_matches('/'), "/liveness" | "/readiness")
}

/// The HTTP status a health endpoint answers, using the wall clock for `/liveness`.
pub fn health_status(path: &str, query: &HealthQuery, status: &NodeStatus) -> u16 {
    health_status_at(path, query, status, chrono::Utc::now().timestamp_millis())
}

/// The HTTP status a health endpoint answers at `now_ms` (wall-clock epoch milliseconds).
///
/// Any path that is not a known health endpoint answers 503, like Patroni's
/// generic GET handler.
pub fn health_status_at(path: &str, query: &HealthQuery, status: &NodeStatus, now_ms: i64) -> u16 {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match path {
        "/liveness" => return code(liveness_ok(status, now_ms)),
        "/readiness" => return code(readiness_ok(query, status)),
        _ => {}
    }

    let role = status.reported_role();
    let state = status.reported_state();
    let replica_ok = running_replica(query, status);

    // Patroni: with the store unreachable while paused, trust what PostgreSQL is.
    let (leader_ok, primary_ok, standby_leader_ok) = if !status.dcs_reachable && status.pause {
        (
            role == "primary" || role == "standby_leader",
            role == "primary",
            role == "standby_leader",
        )
    } else if status.has_lock {
        if status.standby_cluster {
            (true, false, role == "replica" || role == "standby_leader")
        } else {
            (true, role == "primary", false)
        }
    } else {
        (false, false, false)
    };
    // A standby leader holds the lock: it is never a load-balanced replica.
    let replica_ok = replica_ok && !(status.has_lock && status.standby_cluster);
    let leaderish = primary_ok || standby_leader_ok;

    let (ok, apply_tags) = match path {
        "/" | "/primary" | "/read-write" | "/master" => (primary_ok, false),
        "/standby-leader" | "/standby_leader" => (standby_leader_ok, false),
        "/leader" => (leader_ok, false),
        "/replica" => (replica_ok, true),
        "/read-only" => (leaderish || replica_ok, true),
        "/health" => (state == PgState::Running, true),
        "/synchronous" | "/sync" => (
            status.dcs_reachable && status.sync_standby && replica_ok,
            true,
        ),
        "/quorum" => (
            status.dcs_reachable && status.quorum_standby && replica_ok,
            true,
        ),
        "/asynchronous" | "/async" => (
            status.dcs_reachable && !status.sync_standby && !status.quorum_standby && replica_ok,
            true,
        ),
        "/read-only-sync" | "/read-only-synchronous" => (
            status.dcs_reachable && (leaderish || (status.sync_standby && replica_ok)),
            true,
        ),
        "/read-only-quorum" => (
            status.dcs_reachable && (leaderish || (status.quorum_standby && replica_ok)),
            true,
        ),
        _ => (false, false),
    };
    code(ok && (!apply_tags || tags_match(query, status)))
}

fn code(ok: bool) -> u16 {
    if ok {
        200
    } else {
        503
    }
}

/// Patroni's `running_replica`: a running, load-balanced replica within `?lag=`
/// and of the requested `?replication_state=`.
fn running_replica(query: &HealthQuery, status: &NodeStatus) -> bool {
    if status.tags.noloadbalance
        || status.reported_role() != "replica"
        || status.reported_state() != PgState::Running
    {
        return false;
    }
    if let Some(wanted) = &query.replication_state {
        if status.replication_state.as_deref() != Some(wanted.as_str()) {
            return false;
        }
    }
    match (query.lag, status.leader_position()) {
        (Some(max_lag), Some(leader)) => {
            let replayed = status.pg.replay_lsn.map_or(0, |l| l.0);
            leader.0 <= replayed.saturating_add(max_lag)
        }
        _ => true,
    }
}

/// `tag_<k>=<v>` filters: a missing tag or a different value fails. String tags
/// compare exactly; other values compare as their lower-case text (`true`, `1.4`).
fn tags_match(query: &HealthQuery, status: &NodeStatus) -> bool {
    if query.tags.is_empty() {
        return true;
    }
    let published = status.tags.to_json();
    query
        .tags
        .iter()
        .all(|(key, wanted)| match published.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => s == wanted,
            Some(other) => other.to_string().to_lowercase() == *wanted,
        })
}

fn liveness_ok(status: &NodeStatus, now_ms: i64) -> bool {
    if status.pause {
        return true;
    }
    let Some(next) = status.next_cycle_at_ms else {
        return false;
    };
    // A running primary is held to one ttl: by then its lease would be gone anyway.
    let running_primary = status.role == pgwarden_types::Role::Primary
        && (status.state == PgState::Running || status.pg.postmaster_pid.is_some());
    let factor: i64 = if running_primary { 1 } else { 2 };
    let threshold_ms = i64::try_from(status.ttl)
        .unwrap_or(i64::MAX / 4)
        .saturating_mul(1000 * factor);
    next.saturating_add(threshold_ms) > now_ms
}

fn readiness_ok(query: &HealthQuery, status: &NodeStatus) -> bool {
    if status.has_lock {
        return true;
    }
    if status.reported_state() != PgState::Running {
        return false;
    }
    if status.replication_state.as_deref() != Some("streaming") {
        return false;
    }
    if !status.dcs_reachable && status.latest_end_lsn.is_none() {
        return status.failsafe_mode_is_active;
    }
    let Some(leader) = status.leader_position() else {
        return true;
    };
    let position = match query.mode {
        ReadinessMode::Apply => status.pg.replay_lsn,
        ReadinessMode::Write => status.received_location(),
    };
    let max_lag = query.lag.unwrap_or(status.maximum_lag_on_failover);
    leader.0.saturating_sub(position.map_or(0, |l| l.0)) <= max_lag
}

#[cfg(test)]
mod tests {
    use pgwarden_types::{Lsn, Role, Tags};
    use serde_json::json;

    use super::*;
    use crate::status::fixtures::{primary, replica, WAL};

    const NOW: i64 = 1_000_000;

    fn check(path_and_query: &str, status: &NodeStatus) -> u16 {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        health_status_at(path, &HealthQuery::parse(query), status, NOW)
    }

    fn assert_codes(status: &NodeStatus, expected: &[(&str, u16)]) {
        for (path, code) in expected {
            assert_eq!(check(path, status), *code, "{path}");
        }
    }

    #[test]
    fn sizes_accept_postgresql_memory_units() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("16kB"), Some(16 * 1024));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("2TB"), Some(2 << 40));
        assert_eq!(parse_size("1.5MB"), Some(1_572_864));
        assert_eq!(parse_size(" 10 B "), Some(10));
        for bad in ["", "MB", "16kb", "16 mb", "-1", "1e3", "12XB"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn query_parsing_decodes_and_keeps_first_value() {
        let q = HealthQuery::parse("lag=16MB&lag=1&tag_dc=us%20east&tag_dc=x&replication_state=in+archive+recovery&mode=write&other=1");
        assert_eq!(q.lag, Some(16 << 20));
        assert_eq!(q.tags, vec![("dc".to_string(), "us east".to_string())]);
        assert_eq!(q.replication_state.as_deref(), Some("in archive recovery"));
        assert_eq!(q.mode, ReadinessMode::Write);
        assert_eq!(HealthQuery::parse(""), HealthQuery::default());
        // A blank value counts as absent; a stray % stays literal.
        let q = HealthQuery::parse("lag=&tag_x=a%zz");
        assert_eq!(q.lag, None);
        assert_eq!(q.tags, vec![("x".to_string(), "a%zz".to_string())]);
        assert_eq!(HealthQuery::parse("lag=bogus").lag, None);
    }

    #[test]
    fn leader_with_lock() {
        assert_codes(
            &primary(),
            &[
                ("/", 200),
                ("/primary", 200),
                ("/read-write", 200),
                ("/master", 200),
                ("/leader", 200),
                ("/standby-leader", 503),
                ("/standby_leader", 503),
                ("/replica", 503),
                ("/read-only", 200),
                ("/health", 200),
                ("/sync", 503),
                ("/async", 503),
                ("/read-only-sync", 200),
                ("/read-only-quorum", 200),
                ("/primary/", 200),
            ],
        );
    }

    #[test]
    fn primary_without_lock_is_not_routed() {
        let mut s = primary();
        s.has_lock = false;
        assert_codes(
            &s,
            &[
                ("/primary", 503),
                ("/leader", 503),
                ("/read-only", 503),
                ("/health", 200),
            ],
        );
    }

    #[test]
    fn lock_holder_still_in_recovery_is_leader_but_not_primary() {
        let mut s = replica();
        s.has_lock = true;
        assert_codes(
            &s,
            &[("/leader", 200), ("/primary", 503), ("/read-write", 503)],
        );
    }

    #[test]
    fn streaming_replica() {
        assert_codes(
            &replica(),
            &[
                ("/replica", 200),
                ("/read-only", 200),
                ("/async", 200),
                ("/asynchronous", 200),
                ("/sync", 503),
                ("/synchronous", 503),
                ("/quorum", 503),
                ("/read-only-sync", 503),
                ("/health", 200),
                ("/primary", 503),
                ("/", 503),
                ("/leader", 503),
                ("/standby-leader", 503),
                ("/replica?replication_state=streaming", 200),
                ("/replica?replication_state=in%20archive%20recovery", 503),
            ],
        );
    }

    #[test]
    fn replica_that_is_not_running_or_not_queryable() {
        let mut starting = replica();
        starting.state = PgState::Starting;
        assert_codes(
            &starting,
            &[("/replica", 503), ("/read-only", 503), ("/health", 503)],
        );

        let mut silent = replica();
        silent.pg.accepting_connections = false;
        assert_codes(&silent, &[("/replica", 503), ("/health", 503)]);

        let mut archive = replica();
        archive.pg.streaming = false;
        archive.replication_state = Some("in archive recovery".into());
        assert_codes(
            &archive,
            &[
                ("/replica", 200),
                ("/replica?replication_state=streaming", 503),
            ],
        );
    }

    #[test]
    fn noloadbalance_replica_is_healthy_but_not_balanced() {
        let mut s = replica();
        s.tags.noloadbalance = true;
        assert_codes(
            &s,
            &[
                ("/replica", 503),
                ("/read-only", 503),
                ("/async", 503),
                ("/health", 200),
            ],
        );
    }

    #[test]
    fn lag_filter_compares_replay_with_leader_position() {
        let mut s = replica();
        s.cluster_optime = Some(Lsn(WAL + (20 << 20)));
        assert_codes(
            &s,
            &[
                ("/replica", 200),
                ("/replica?lag=16MB", 503),
                ("/replica?lag=64MB", 200),
                ("/replica?lag=1GB", 200),
                ("/replica?lag=20971520", 200),
                ("/replica?lag=20971519", 503),
                ("/async?lag=16MB", 503),
                ("/read-only?lag=16MB", 503),
                // Unparsable lag means no limit, as in Patroni.
                ("/replica?lag=bogus", 200),
            ],
        );
        // Received but not yet replayed WAL counts as lag too.
        let mut behind = replica();
        behind.cluster_optime = None;
        behind.pg.replay_lsn = Some(Lsn(WAL - (1 << 20)));
        assert_codes(
            &behind,
            &[("/replica?lag=16kB", 503), ("/replica?lag=1MB", 200)],
        );
        // Nothing known about the leader: the check passes.
        let mut unknown = replica();
        unknown.cluster_optime = None;
        unknown.pg.receive_lsn = None;
        assert_eq!(check("/replica?lag=1", &unknown), 200);
    }

    #[test]
    fn tag_filters_apply_to_non_leader_endpoints() {
        let mut s = replica();
        s.tags =
            Tags::from_json(&json!({"dc": "east", "nofailover": true, "weight": 1.5})).unwrap();
        assert_codes(
            &s,
            &[
                ("/replica?tag_dc=east", 200),
                ("/replica?tag_dc=west", 503),
                ("/replica?tag_rack=1", 503),
                ("/replica?tag_nofailover=true", 200),
                ("/replica?tag_nofailover=True", 503),
                ("/replica?tag_weight=1.5", 200),
                ("/replica?tag_dc=east&tag_nofailover=true", 200),
                ("/replica?tag_dc=east&tag_nofailover=false", 503),
                ("/health?tag_dc=west", 503),
                ("/async?tag_dc=west", 503),
            ],
        );
        let mut p = primary();
        p.tags = Tags::from_json(&json!({"dc": "east"})).unwrap();
        assert_codes(
            &p,
            &[
                ("/primary?tag_dc=west", 200),
                ("/leader?tag_dc=west", 200),
                ("/read-only?tag_dc=west", 503),
                ("/read-only?tag_dc=east", 200),
            ],
        );
    }

    #[test]
    fn synchronous_and_quorum_standbys_need_the_store() {
        let mut s = replica();
        s.sync_standby = true;
        assert_codes(
            &s,
            &[
                ("/sync", 200),
                ("/synchronous", 200),
                ("/async", 503),
                ("/read-only-sync", 200),
                ("/read-only-synchronous", 200),
                ("/replica", 200),
            ],
        );
        s.dcs_reachable = false;
        assert_codes(
            &s,
            &[("/sync", 503), ("/read-only-sync", 503), ("/replica", 200)],
        );

        let mut q = replica();
        q.quorum_standby = true;
        assert_codes(
            &q,
            &[
                ("/quorum", 200),
                ("/read-only-quorum", 200),
                ("/async", 503),
                ("/sync", 503),
            ],
        );

        let mut unreachable = replica();
        unreachable.dcs_reachable = false;
        assert_eq!(check("/async", &unreachable), 503);
    }

    #[test]
    fn standby_leader() {
        let mut s = replica();
        s.role = Role::StandbyLeader;
        s.has_lock = true;
        s.standby_cluster = true;
        assert_codes(
            &s,
            &[
                ("/standby-leader", 200),
                ("/standby_leader", 200),
                ("/leader", 200),
                ("/primary", 503),
                ("/replica", 503),
                ("/read-only", 200),
            ],
        );
        // Without the lock it is an ordinary replica of the standby cluster.
        s.has_lock = false;
        s.role = Role::Replica;
        assert_codes(&s, &[("/standby-leader", 503), ("/replica", 200)]);
    }

    #[test]
    fn paused_with_store_unreachable_trusts_postgresql() {
        let mut p = primary();
        p.has_lock = false;
        p.pause = true;
        p.dcs_reachable = false;
        assert_codes(
            &p,
            &[("/primary", 200), ("/leader", 200), ("/read-only", 200)],
        );
        // Paused but the store answers: the lock decides.
        p.dcs_reachable = true;
        assert_codes(&p, &[("/primary", 503), ("/leader", 503)]);

        let mut r = replica();
        r.pause = true;
        r.dcs_reachable = false;
        assert_codes(&r, &[("/primary", 503), ("/replica", 200)]);
    }

    #[test]
    fn unknown_paths_answer_503() {
        for path in [
            "/foo",
            "/replicas",
            "/patroni",
            "/cluster",
            "/primary/x",
            "/REPLICA",
        ] {
            assert_eq!(check(path, &primary()), 503, "{path}");
            assert_eq!(check(path, &replica()), 503, "{path}");
        }
    }

    #[test]
    fn liveness_follows_the_next_cycle_deadline() {
        let ttl_ms = 10_000;
        let mut r = replica();
        r.ttl = 10;
        r.next_cycle_at_ms = Some(NOW - ttl_ms - 1);
        // A replica is given two ttls.
        assert_eq!(check("/liveness", &r), 200);
        r.next_cycle_at_ms = Some(NOW - 2 * ttl_ms);
        assert_eq!(check("/liveness", &r), 503);
        r.pause = true;
        assert_eq!(check("/liveness", &r), 200);

        // A running primary only one.
        let mut p = primary();
        p.ttl = 10;
        p.next_cycle_at_ms = Some(NOW - ttl_ms - 1);
        assert_eq!(check("/liveness", &p), 503);
        p.next_cycle_at_ms = Some(NOW - ttl_ms + 1);
        assert_eq!(check("/liveness", &p), 200);

        // No cycle scheduled at all.
        p.next_cycle_at_ms = None;
        assert_eq!(check("/liveness", &p), 503);
        assert_eq!(
            check("/liveness", &NodeStatus::starting("s", "n", NOW)),
            200
        );
    }

    #[test]
    fn readiness() {
        let mut p = primary();
        p.state = PgState::Stopped;
        assert_eq!(check("/readiness", &p), 200, "the lock holder is ready");

        let mut r = replica();
        r.maximum_lag_on_failover = 1 << 20;
        assert_eq!(check("/readiness", &r), 200);
        r.cluster_optime = Some(Lsn(WAL + (2 << 20)));
        assert_eq!(
            check("/readiness", &r),
            503,
            "lag above maximum_lag_on_failover"
        );
        assert_eq!(check("/readiness?lag=64MB", &r), 200);
        assert_eq!(check("/readiness?lag=1MB", &r), 503);

        // mode=write measures the received position.
        let mut w = replica();
        w.maximum_lag_on_failover = 1 << 20;
        w.pg.replay_lsn = Some(Lsn(WAL - (2 << 20)));
        assert_eq!(check("/readiness", &w), 503);
        assert_eq!(check("/readiness?mode=write", &w), 200);

        let mut archive = replica();
        archive.replication_state = Some("in archive recovery".into());
        assert_eq!(check("/readiness", &archive), 503);

        let mut stopped = replica();
        stopped.state = PgState::Stopped;
        assert_eq!(check("/readiness", &stopped), 503);

        let mut cut_off = replica();
        cut_off.dcs_reachable = false;
        assert_eq!(
            check("/readiness", &cut_off),
            503,
            "store unreachable, no latest_end_lsn"
        );
        cut_off.latest_end_lsn = Some(Lsn(WAL));
        assert_eq!(check("/readiness", &cut_off), 200);
        cut_off.latest_end_lsn = None;
        cut_off.failsafe_mode_is_active = true;
        assert_eq!(check("/readiness", &cut_off), 200);
    }

    #[test]
    fn status_only_endpoints() {
        assert!(is_status_only("/liveness"));
        assert!(is_status_only("/readiness"));
        assert!(is_status_only("/readiness/"));
        assert!(!is_status_only("/replica"));
    }
}
