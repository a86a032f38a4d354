//! The admin console, PgBouncer style: connect to database `pgwarden` on
//! either proxy port as one of `admin_users` (all commands) or `stats_users`
//! (SHOW only) and use the simple query protocol:
//! `SHOW POOLS|CLIENTS|SERVERS|STATS|CONFIG|HELP`, `PAUSE`, `RESUME`, `RELOAD`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use pgwarden_wire::backend::{Authentication, BackendMessage, Column, TxStatus};
use pgwarden_wire::frontend::FrontendMessage;
use tokio::io::AsyncWriteExt;

use crate::session::{read_client_frame, SessionEnd};
use crate::stream::Stream;
use crate::Shared;

/// The console's database name.
pub const ADMIN_DATABASE: &str = "pgwarden";

/// Largest console query accepted.
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;

pub async fn serve(
    shared: &Arc<Shared>,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
) -> Result<(), SessionEnd> {
    let config = shared.config();
    let admin = config.proxy.admin_users.iter().any(|u| u == user);
    let stats = admin || config.proxy.stats_users.iter().any(|u| u == user);
    if !stats {
        return Err(SessionEnd::Fatal {
            code: "28000",
            message: format!(
                "user \"{user}\" may not use the admin console: add it to proxy.admin_users or proxy.stats_users"
            ),
        });
    }
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::Ok).encode(&mut out);
    for (name, value) in [
        ("server_version", "15.0 (pgwarden proxy)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
    ] {
        BackendMessage::ParameterStatus {
            name: name.into(),
            value: value.into(),
        }
        .encode(&mut out);
    }
    BackendMessage::BackendKeyData {
        process_id: 0,
        secret_key: 0,
    }
    .encode(&mut out);
    BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    write(stream, &mut out).await?;
    loop {
        let (tag, body) = read_client_frame(stream, buf, MAX_ADMIN_MESSAGE).await?;
        let msg = FrontendMessage::decode(tag, &body).map_err(SessionEnd::protocol)?;
        match msg {
            FrontendMessage::Terminate => return Ok(()),
            FrontendMessage::Query(q) => {
                match execute(shared, &q, admin) {
                    Ok(reply) => reply.encode(&mut out),
                    Err((code, message)) => {
                        BackendMessage::error("ERROR", code, &message).encode(&mut out)
                    }
                }
                BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
            }
            _ => {
                BackendMessage::error(
                    "ERROR",
                    "0A000",
                    "the admin console accepts only simple queries (e.g. SHOW POOLS)",
                )
                .encode(&mut out);
                if tag == b'S' {
                    BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
                }
            }
        }
        write(stream, &mut out).await?;
    }
}

async fn write(stream: &mut Stream, out: &mut BytesMut) -> Result<(), SessionEnd> {
    stream.write_all(out).await.map_err(|_| SessionEnd::Gone)?;
    out.clear();
    Ok(())
}

/// A console result: rows with a command tag, or only a tag.
pub struct Reply {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub tag: String,
}

impl Reply {
    fn command(tag: &str) -> Reply {
        Reply {
            columns: Vec::new(),
            rows: Vec::new(),
            tag: tag.to_string(),
        }
    }

    fn encode(self, out: &mut BytesMut) {
        if !self.columns.is_empty() {
            BackendMessage::RowDescription(self.columns.iter().map(|c| Column::text(c)).collect())
                .encode(out);
            for row in &self.rows {
                BackendMessage::DataRow(row.iter().map(|v| Some(v.as_bytes().to_vec())).collect())
                    .encode(out);
            }
        }
        BackendMessage::CommandComplete(self.tag).encode(out);
    }
}

/// Runs one console command.
pub fn execute(shared: &Shared, query: &str, admin: bool) -> Result<Reply, (&'static str, String)> {
    let words: Vec<String> = query
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let needs_admin = |what: &str| -> Result<(), (&'static str, String)> {
        if admin {
            Ok(())
        } else {
            Err(("42501", format!("{what} needs a user in proxy.admin_users")))
        }
    };
    match words.as_slice() {
        ["SHOW", "POOLS"] => Ok(show_pools(shared)),
        ["SHOW", "CLIENTS"] => Ok(show_clients(shared)),
        ["SHOW", "SERVERS"] => Ok(show_servers(shared)),
        ["SHOW", "STATS"] => Ok(show_stats(shared)),
        ["SHOW", "CONFIG"] => Ok(show_config(shared)),
        ["SHOW", "HELP"] | ["SHOW"] => Ok(rows(
            vec!["command"],
            [
                "SHOW POOLS",
                "SHOW CLIENTS",
                "SHOW SERVERS",
                "SHOW STATS",
                "SHOW CONFIG",
                "PAUSE",
                "RESUME",
                "RELOAD",
            ]
            .iter()
            .map(|c| vec![c.to_string()])
            .collect(),
            "SHOW",
        )),
        ["PAUSE"] => {
            needs_admin("PAUSE")?;
            shared.paused.send_replace(true);
            Ok(Reply::command("PAUSE"))
        }
        ["RESUME"] => {
            needs_admin("RESUME")?;
            shared.paused.send_replace(false);
            Ok(Reply::command("RESUME"))
        }
        ["RELOAD"] => {
            needs_admin("RELOAD")?;
            shared
                .reload()
                .map_err(|e| ("F0000", format!("reload failed: {e}")))?;
            Ok(Reply::command("RELOAD"))
        }
        _ => Err((
            "42601",
            format!("unknown console command {query:?}; SHOW HELP lists the commands"),
        )),
    }
}

fn rows(columns: Vec<&'static str>, rows: Vec<Vec<String>>, tag: &str) -> Reply {
    Reply {
        columns,
        rows,
        tag: tag.to_string(),
    }
}

fn show_pools(shared: &Shared) -> Reply {
    let config = shared.config();
    let mode = serde_json::to_value(config.proxy.pool_mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let data = shared
        .pool_gauges()
        .into_iter()
        .map(|p| {
            vec![
                p.database,
                p.user,
                p.role.to_string(),
                p.node,
                p.active.to_string(),
                p.waiting.to_string(),
                p.idle.to_string(),
                (p.max_wait_us / 1_000_000).to_string(),
                (p.max_wait_us % 1_000_000).to_string(),
                mode.clone(),
            ]
        })
        .collect();
    rows(
        vec![
            "database",
            "user",
            "role",
            "member",
            "sv_active",
            "cl_waiting",
            "sv_idle",
            "maxwait",
            "maxwait_us",
            "pool_mode",
        ],
        data,
        "SHOW",
    )
}

fn show_clients(shared: &Shared) -> Reply {
    let mut clients = shared.clients();
    clients.sort_by_key(|c| c.connected_at);
    let data = clients
        .iter()
        .map(|c| {
            let server = c.server();
            vec![
                c.user.clone(),
                c.database.clone(),
                c.port.label().to_string(),
                if server.is_some() { "active" } else { "idle" }.to_string(),
                c.peer.ip().to_string(),
                c.peer.port().to_string(),
                chrono_like(c.connected_at),
                c.tls.to_string(),
                server.map(|s| s.0).unwrap_or_default(),
                c.process_id.to_string(),
            ]
        })
        .collect();
    rows(
        vec![
            "user",
            "database",
            "port",
            "state",
            "addr",
            "client_port",
            "connect_time",
            "tls",
            "server",
            "pid",
        ],
        data,
        "SHOW",
    )
}

fn show_servers(shared: &Shared) -> Reply {
    let data = shared
        .pool_list()
        .into_iter()
        .map(|(k, s)| {
            vec![
                k.user,
                k.database,
                k.node,
                k.address,
                if k.token != 0 { "rw" } else { "ro" }.to_string(),
                k.token.to_string(),
                s.active.to_string(),
                s.idle.to_string(),
                s.opened.to_string(),
            ]
        })
        .collect();
    rows(
        vec![
            "user",
            "database",
            "member",
            "addr",
            "role",
            "leader_revision",
            "active",
            "idle",
            "opened",
        ],
        data,
        "SHOW",
    )
}

fn show_stats(shared: &Shared) -> Reply {
    let m = &shared.metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    let data = vec![
        (
            "clients_connected",
            shared.client_count.load(Ordering::Relaxed).to_string(),
        ),
        ("clients_accepted", get(&m.clients_accepted)),
        ("clients_refused", get(&m.clients_refused)),
        ("auth_failures", get(&m.auth_failures)),
        ("total_xact_count", get(&m.transactions)),
        ("total_query_count", get(&m.queries)),
        ("total_received", get(&m.bytes_from_clients)),
        ("total_sent", get(&m.bytes_from_servers)),
        ("total_wait_time_us", get(&m.wait_us_total)),
        ("server_connects", get(&m.server_connects)),
        ("held_during_switchover", get(&m.held)),
        ("fenced_connections", get(&m.fenced_connections)),
        ("leader_changes", get(&m.leader_changes)),
        (
            "leader_revision",
            m.leader_token.load(Ordering::Relaxed).to_string(),
        ),
        ("uptime_s", shared.started.elapsed().as_secs().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_string(), v])
    .collect();
    rows(vec!["stat", "value"], data, "SHOW")
}

fn show_config(shared: &Shared) -> Reply {
    let config = shared.config();
    let value = serde_json::json!({
        "pool_mode": config.proxy.pool_mode,
        "default_pool_size": config.proxy.default_pool_size,
        "min_pool_size": config.proxy.min_pool_size,
        "max_client_conn": config.proxy.max_client_conn,
        "max_db_connections": config.proxy.max_db_connections,
        "server_idle_timeout": config.proxy.server_idle_timeout,
        "server_lifetime": config.proxy.server_lifetime,
        "query_wait_timeout": config.proxy.query_wait_timeout,
        "server_reset_query": config.proxy.server_reset_query,
        "max_replica_lag": config.proxy.max_replica_lag,
        "ro_fallback_to_primary": config.proxy.ro_fallback_to_primary,
        "auth_type": config.proxy.auth_type,
        "client_tls_sslmode": config.proxy.client_tls_sslmode,
        "server_tls_sslmode": config.proxy.server_tls_sslmode,
        "paused": *shared.paused.borrow(),
    });
    let data = value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    vec![k.clone(), v]
                })
                .collect()
        })
        .unwrap_or_default();
    rows(vec!["key", "value"], data, "SHOW")
}

/// Seconds since the epoch (the console has no date formatting crate).
fn chrono_like(t: std::time::SystemTime) -> String {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default()
}
