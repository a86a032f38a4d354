//! The workload and the probes, run from the client namespace.
//!
//! Writers: K roaming clients (plus one pinned to each host), each inserting unique ids (`client * 1e9 + seq`) into
//! `ops` directly on the node that currently accepts writes, and P clients
//! doing the same through the pgwarden proxy's read-write port; one statement
//! at a time, never retrying an id. Each operation is stamped on the bed's
//! monotonic clock and classified (history::Outcome): `failed` only when the
//! server certainly did not commit (connection refused before sending,
//! SQLSTATE 25006 read-only, 57P03 starting up, 40001, 40P01); anything else
//! after the statement was sent is `unknown`. No `statement_timeout` (it would
//! cancel a synchronous-replication wait and commit locally): a client-side
//! timeout drops the connection instead.
//!
//! Probes: read a node's role, timeline, history, receiver state and ids.
//! Every network call is bounded by a timeout; the writer loop is bounded by
//! a stop flag, a deadline and an operation count.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::bed::{enter_netns, PASSWORD, PG_PORT};
use crate::checker::{parse_history, HistoryEntry};
use crate::history::{Op, Outcome};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The table every writer inserts into.
pub const CREATE_TABLE: &str =
    "create table if not exists ops(id bigint primary key, client int not null)";

/// Connects as the superuser to `ip`, bounded.
pub async fn connect(ip: &str) -> Result<Client, String> {
    connect_to(ip, PG_PORT).await
}

/// Connects as the superuser to `ip:port` (a node or the proxy), bounded.
pub async fn connect_to(ip: &str, port: u16) -> Result<Client, String> {
    let conninfo = format!(
        "host={ip} port={port} user=postgres password={PASSWORD} dbname=postgres connect_timeout=1"
    );
    let (client, conn) = tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        tokio_postgres::connect(&conninfo, NoTls),
    )
    .await
    .map_err(|_| format!("{ip}: connect timed out"))?
    .map_err(|e| format!("{ip}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs `sql` and returns the rows as text columns, bounded.
pub async fn query(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = tokio::time::timeout(QUERY_TIMEOUT, client.simple_query(sql))
        .await
        .map_err(|_| "query timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// One node as seen by a probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeProbe {
    pub reachable: bool,
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    pub streaming: bool,
    pub history: Vec<HistoryEntry>,
}

/// Reads role, timeline, receiver state and newest history file of `ip`.
pub async fn probe(ip: &str) -> NodeProbe {
    let Ok(c) = connect(ip).await else {
        return NodeProbe::default();
    };
    let Ok(rows) = query(
        &c,
        "select pg_is_in_recovery()::text,
                case when pg_is_in_recovery() then null
                     else substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) end,
                (select status from pg_stat_wal_receiver),
                (select received_tli::text from pg_stat_wal_receiver),
                (select timeline_id::text from pg_control_checkpoint()),
                (select name from pg_ls_waldir() where name like '%.history' order by name desc limit 1)",
    )
    .await
    else {
        return NodeProbe::default();
    };
    let Some(r) = rows.first() else {
        return NodeProbe::default();
    };
    let in_recovery = r[0].as_deref() == Some("true");
    let timeline = if in_recovery {
        r[3].as_deref()
            .or(r[4].as_deref())
            .and_then(|t| t.parse().ok())
    } else {
        r[1].as_deref()
            .and_then(|t| u32::from_str_radix(t, 16).ok())
    };
    let mut history = Vec::new();
    if let Some(name) = &r[5] {
        // Only the history of the node's own timeline counts (a replica may
        // hold a newer file it has not switched to yet).
        let own = timeline.map(|t| format!("{t:08X}.history"));
        let file = if own.as_deref().is_some_and(|o| o <= name.as_str()) {
            own.unwrap_or_default()
        } else {
            name.clone()
        };
        if let Ok(rows) = query(&c, &format!("select pg_read_file('pg_wal/{file}')")).await {
            if let Some(Some(text)) = rows.first().and_then(|r| r.first().cloned()) {
                history = parse_history(&text);
            }
        }
    }
    NodeProbe {
        reachable: true,
        in_recovery,
        timeline,
        streaming: r[2].as_deref() == Some("streaming"),
        history,
    }
}

/// All ids in `ops` on `ip`, if readable.
pub async fn read_ids(ip: &str) -> Option<BTreeSet<i64>> {
    let c = connect(ip).await.ok()?;
    let rows = tokio::time::timeout(
        Duration::from_secs(30),
        c.simple_query("select id from ops"),
    )
    .await
    .ok()?
    .ok()?;
    Some(
        rows.into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .collect(),
    )
}

/// Workload settings.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub clients: u32,
    /// Pause between a client's operations (keeps 2 cores breathing).
    pub pace: Duration,
    pub max_duration: Duration,
    pub max_ops_per_client: u64,
    /// Also run one writer pinned to each host, writing whenever that host
    /// accepts writes: roaming writers stick to one primary, so only pinned
    /// writers produce dual-ack evidence when two nodes accept writes at once.
    pub pinned: bool,
    /// Writers that go through the proxy at this `host:port` address.
    pub proxy: Option<(String, u16)>,
    pub proxied_clients: u32,
}

/// Where a writer sends its inserts.
#[derive(Clone, Debug)]
enum Route {
    /// Whichever node accepts writes, kept until it fails.
    Roaming,
    /// Only host `i`, whenever it accepts writes.
    Pinned(usize),
    /// The proxy's read-write port: the proxy picks the node.
    Proxy(String, u16),
}

/// The `node` recorded for operations that went through the proxy.
pub const PROXY_NODE: &str = "proxy";

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            clients: 3,
            pace: Duration::from_millis(20),
            max_duration: Duration::from_secs(600),
            max_ops_per_client: 100_000,
            pinned: true,
            proxy: None,
            proxied_clients: 2,
        }
    }
}

/// A running workload; [`Workload::stop`] returns its history.
pub struct Workload {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Op>>>,
}

/// Whether an error proves the statement did not commit.
fn certainly_failed(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::READ_ONLY_SQL_TRANSACTION
            || *c == SqlState::CANNOT_CONNECT_NOW
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

async fn find_writable(hosts: &[String], start: usize) -> Option<(Client, usize)> {
    for k in 0..hosts.len() {
        let i = (start + k) % hosts.len();
        if let Ok(c) = connect(&hosts[i]).await {
            if let Ok(rows) = query(&c, "select pg_is_in_recovery()::text").await {
                if rows.first().and_then(|r| r[0].as_deref()) == Some("false") {
                    return Some((c, i));
                }
            }
        }
    }
    None
}

async fn writer(
    client_no: u32,
    route: Route,
    hosts: Vec<String>,
    origin: Instant,
    spec: WorkloadSpec,
    stop: Arc<AtomicBool>,
) -> Vec<Op> {
    let ns = |t: Instant| t.duration_since(origin).as_nanos() as u64;
    let deadline = Instant::now() + spec.max_duration;
    let mut ops = Vec::new();
    let mut conn: Option<(Client, usize)> = None;
    let mut last = 0usize;
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && seq < spec.max_ops_per_client
    {
        if conn.is_none() {
            conn = match &route {
                Route::Pinned(i) => find_writable(&hosts[*i..=*i], 0)
                    .await
                    .map(|(c, _)| (c, *i)),
                Route::Roaming => find_writable(&hosts, last).await,
                // The index is unused for proxied writes (recorded as PROXY_NODE).
                Route::Proxy(ip, port) => connect_to(ip, *port).await.ok().map(|c| (c, 0)),
            };
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let Some((c, i)) = conn.as_ref() else {
            continue;
        };
        let i = *i;
        last = i;
        seq += 1;
        let id = i64::from(client_no) * 1_000_000_000 + seq as i64;
        let sql = format!(
            "insert into ops(id, client) values ({id}, {client_no}) returning
               substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8),
               pg_current_wal_insert_lsn()::text"
        );
        let invoke = Instant::now();
        let res = tokio::time::timeout(QUERY_TIMEOUT, c.simple_query(&sql)).await;
        let complete = Instant::now();
        let mut op = Op {
            id,
            client: client_no,
            invoke_ns: ns(invoke),
            complete_ns: ns(complete),
            outcome: Outcome::Unknown,
            node: match &route {
                Route::Proxy(..) => PROXY_NODE.to_string(),
                _ => hosts[i].clone(),
            },
            timeline: None,
            lsn: None,
            error: None,
        };
        match res {
            Ok(Ok(msgs)) => {
                op.outcome = Outcome::Ok;
                for m in msgs {
                    if let SimpleQueryMessage::Row(r) = m {
                        op.timeline = r.get(0).and_then(|t| u32::from_str_radix(t, 16).ok());
                        op.lsn = r.get(1).map(str::to_string);
                    }
                }
            }
            Ok(Err(e)) => {
                if certainly_failed(&e) {
                    op.outcome = Outcome::Failed;
                }
                op.error = Some(
                    e.code()
                        .map(|c| c.code().to_string())
                        .unwrap_or_else(|| e.to_string()),
                );
                conn = None;
            }
            Err(_) => {
                op.error = Some("client timeout".into());
                conn = None;
            }
        }
        ops.push(op);
        tokio::time::sleep(spec.pace).await;
    }
    ops
}

impl Workload {
    /// Starts the writers on a thread inside namespace `ns`.
    pub fn start(ns: &str, hosts: Vec<String>, origin: Instant, spec: WorkloadSpec) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || {
            if let Err(e) = enter_netns(&ns) {
                tracing::error!("workload cannot enter {ns}: {e}");
                return Vec::new();
            }
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return Vec::new();
            };
            rt.block_on(async move {
                let mut tasks: Vec<_> = (0..spec.clients)
                    .map(|k| {
                        tokio::spawn(writer(
                            k + 1,
                            Route::Roaming,
                            hosts.clone(),
                            origin,
                            spec.clone(),
                            flag.clone(),
                        ))
                    })
                    .collect();
                if spec.pinned {
                    for i in 0..hosts.len() {
                        let no = spec.clients + 1 + i as u32;
                        tasks.push(tokio::spawn(writer(
                            no,
                            Route::Pinned(i),
                            hosts.clone(),
                            origin,
                            spec.clone(),
                            flag.clone(),
                        )));
                    }
                }
                if let Some((ip, port)) = &spec.proxy {
                    for k in 0..spec.proxied_clients {
                        let no = spec.clients + 1 + hosts.len() as u32 + k;
                        tasks.push(tokio::spawn(writer(
                            no,
                            Route::Proxy(ip.clone(), *port),
                            hosts.clone(),
                            origin,
                            spec.clone(),
                            flag.clone(),
                        )));
                    }
                }
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap_or_default());
                }
                all.sort_by_key(|o| o.invoke_ns);
                all
            })
        });
        Workload {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the writers (each finishes its current operation) and returns the history.
    pub fn stop(mut self) -> Vec<Op> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
