//! Counters of the proxy and their Prometheus text form (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Process-wide counters; pools report their own gauges at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    pub clients_accepted: AtomicU64,
    pub clients_refused: AtomicU64,
    pub auth_failures: AtomicU64,
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_from_servers: AtomicU64,
    pub server_connects: AtomicU64,
    pub server_connect_failures: AtomicU64,
    /// Checkouts that waited for a free server connection, and the total wait.
    pub waits: AtomicU64,
    pub wait_us_total: AtomicU64,
    /// Transactions held while a switchover or failover was under way.
    pub held: AtomicU64,
    /// Server connections closed because their node lost the leader key.
    pub fenced_connections: AtomicU64,
    pub leader_changes: AtomicU64,
    /// Fencing token of the current write target, 0 when there is none.
    pub leader_token: AtomicI64,
    pub cancel_requests: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl Metrics {
    pub fn note_leader_change(&self, token: Option<i64>) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
        self.leader_token
            .store(token.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One pool's gauges at scrape time.
pub struct PoolGauges {
    pub role: &'static str,
    pub node: String,
    pub user: String,
    pub database: String,
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
    pub max_wait_us: u64,
}

/// The Prometheus exposition text.
pub fn render(
    m: &Metrics,
    clients: usize,
    leader: Option<&str>,
    replicas: usize,
    pools: &[PoolGauges],
) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP pgwarden_proxy_{name} {help}");
        let _ = writeln!(out, "# TYPE pgwarden_proxy_{name} counter");
        let _ = writeln!(out, "pgwarden_proxy_{name} {v}");
    };
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter(
        "clients_accepted_total",
        "Client connections accepted.",
        get(&m.clients_accepted),
    );
    counter(
        "clients_refused_total",
        "Client connections refused (limits, TLS, protocol).",
        get(&m.clients_refused),
    );
    counter(
        "auth_failures_total",
        "Failed client authentications.",
        get(&m.auth_failures),
    );
    counter(
        "transactions_total",
        "Server checkouts in transaction mode.",
        get(&m.transactions),
    );
    counter(
        "queries_total",
        "Requests ending in ReadyForQuery (Query or Sync).",
        get(&m.queries),
    );
    counter(
        "client_bytes_total",
        "Bytes received from clients.",
        get(&m.bytes_from_clients),
    );
    counter(
        "server_bytes_total",
        "Bytes received from servers.",
        get(&m.bytes_from_servers),
    );
    counter(
        "server_connects_total",
        "Server connections opened.",
        get(&m.server_connects),
    );
    counter(
        "server_connect_failures_total",
        "Failed server connection attempts.",
        get(&m.server_connect_failures),
    );
    counter(
        "waits_total",
        "Checkouts that waited for a server connection.",
        get(&m.waits),
    );
    counter(
        "wait_seconds_total",
        "Total time clients waited for a server connection.",
        get(&m.wait_us_total) / 1_000_000,
    );
    counter(
        "held_total",
        "Transactions held during a switchover or failover.",
        get(&m.held),
    );
    counter(
        "fenced_connections_total",
        "Server connections closed because their node lost the leader key.",
        get(&m.fenced_connections),
    );
    counter(
        "failover_events_total",
        "Changes of the read-write target (leader key holder or revision).",
        get(&m.leader_changes),
    );
    counter(
        "cancel_requests_total",
        "Cancel requests received.",
        get(&m.cancel_requests),
    );
    counter(
        "protocol_errors_total",
        "Clients closed for protocol violations.",
        get(&m.protocol_errors),
    );
    let _ = writeln!(out, "# HELP pgwarden_proxy_clients Connected clients.");
    let _ = writeln!(out, "# TYPE pgwarden_proxy_clients gauge");
    let _ = writeln!(out, "pgwarden_proxy_clients {clients}");
    let _ = writeln!(out, "# HELP pgwarden_proxy_leader_revision Fencing token (create revision of the leader key) of the read-write target; 0 when there is none.");
    let _ = writeln!(out, "# TYPE pgwarden_proxy_leader_revision gauge");
    let _ = writeln!(
        out,
        "pgwarden_proxy_leader_revision {}",
        m.leader_token.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP pgwarden_proxy_leader Read-write target (1 for the member routed to)."
    );
    let _ = writeln!(out, "# TYPE pgwarden_proxy_leader gauge");
    if let Some(name) = leader {
        let _ = writeln!(
            out,
            "pgwarden_proxy_leader{{member=\"{}\"}} 1",
            escape(name)
        );
    }
    let _ = writeln!(
        out,
        "# HELP pgwarden_proxy_replicas Replicas taking read-only clients."
    );
    let _ = writeln!(out, "# TYPE pgwarden_proxy_replicas gauge");
    let _ = writeln!(out, "pgwarden_proxy_replicas {replicas}");
    for (name, help) in [
        ("pool_active", "Server connections in use."),
        ("pool_idle", "Idle server connections."),
        ("pool_waiting", "Clients waiting for a server connection."),
        (
            "pool_max_wait_seconds",
            "Longest current wait for a server connection.",
        ),
    ] {
        let _ = writeln!(out, "# HELP pgwarden_proxy_{name} {help}");
        let _ = writeln!(out, "# TYPE pgwarden_proxy_{name} gauge");
        for p in pools {
            let value = match name {
                "pool_active" => p.active.to_string(),
                "pool_idle" => p.idle.to_string(),
                "pool_waiting" => p.waiting.to_string(),
                _ => format!("{:.6}", p.max_wait_us as f64 / 1e6),
            };
            let _ = writeln!(
                out,
                "pgwarden_proxy_{name}{{role=\"{}\",member=\"{}\",user=\"{}\",database=\"{}\"}} {value}",
                p.role,
                escape(&p.node),
                escape(&p.user),
                escape(&p.database)
            );
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_escaped_labels() {
        let m = Metrics::default();
        m.note_leader_change(Some(42));
        Metrics::add(&m.transactions, 3);
        let text = render(
            &m,
            5,
            Some("node\"1"),
            2,
            &[PoolGauges {
                role: "rw",
                node: "node1".into(),
                user: "app".into(),
                database: "db".into(),
                active: 1,
                idle: 2,
                waiting: 0,
                max_wait_us: 1_500_000,
            }],
        );
        assert!(
            text.contains("pgwarden_proxy_transactions_total 3\n"),
            "{text}"
        );
        assert!(text.contains("pgwarden_proxy_leader_revision 42\n"));
        assert!(text.contains("pgwarden_proxy_failover_events_total 1\n"));
        assert!(text.contains("pgwarden_proxy_leader{member=\"node\\\"1\"} 1"));
        assert!(text.contains(
            "pgwarden_proxy_pool_idle{role=\"rw\",member=\"node1\",user=\"app\",database=\"db\"} 2"
        ));
        assert!(text.contains("pgwarden_proxy_pool_max_wait_seconds{role=\"rw\",member=\"node1\",user=\"app\",database=\"db\"} 1.500000"));
        assert!(text.contains("pgwarden_proxy_clients 5\n"));
    }
}
