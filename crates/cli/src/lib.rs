//! pgwarden's command-line verbs, patronictl's counterparts.
//!
//! The cluster is found from an agent's configuration file (`-c`), or from
//! `--etcd` and `--scope` (also `PGWARDEN_ETCD`, `PGWARDEN_SCOPE`). Reads
//! (`list`, `topology`, `history`, `show-config`, `dsn`) go straight to etcd;
//! actions go to the members' REST APIs (the address each member publishes),
//! with the configuration's `restapi.authentication`, as patronictl does.
//! A verb that needs a missing value asks for it when stdin is a terminal and
//! fails with a clear message otherwise; destructive verbs ask for
//! confirmation unless `--force` (or, for `remove`, `--yes-i-am-sure`).
//!
//! Rendering is pure ([`list::render_list`], [`render_history`]) and unit-tested;
//! the verbs themselves are tested end to end against a real cluster.

mod list;
mod table;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use pgwarden_dcs::{Dcs, EtcdDcs, EtcdSettings, Precondition};
use pgwarden_types::{display_seconds, ClusterSnapshot, FailoverRequest, HistoryLine, Member};
use serde_json::{json, Value};

pub use list::render_list;

/// Output format of tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Pretty,
    Json,
    Yaml,
    Tsv,
}

/// Where the cluster is, for every verb.
#[derive(Debug, Clone, Args, Default)]
pub struct GlobalArgs {
    /// An agent's configuration file: scope, namespace, etcd and REST credentials are read from it.
    #[arg(short = 'c', long = "config", global = true, env = "PGWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// etcd endpoints (comma-separated host:port), instead of or over the configuration file.
    #[arg(long, global = true, env = "PGWARDEN_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Cluster name (`scope`).
    #[arg(long, global = true, env = "PGWARDEN_SCOPE")]
    pub scope: Option<String>,
    /// etcd key prefix.
    #[arg(long, global = true, env = "PGWARDEN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Output format for tables.
    #[arg(short = 'f', long, global = true, value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
}

/// Roles that select members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleFilter {
    Leader,
    Primary,
    Replica,
    Any,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Verb {
    /// Show the members of the cluster: role, state, timeline, lag.
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml list\n  pgwarden --etcd 127.0.0.1:2379 --scope demo list -f json\n  pgwarden -c node1.yml list --watch 2"
    )]
    List {
        /// Show every optional column.
        #[arg(short = 'e', long)]
        extended: bool,
        /// Refresh every N seconds until interrupted.
        #[arg(short = 'w', long, value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// Show the members as a replication tree under the leader.
    #[command(after_help = "Example:\n  pgwarden -c node1.yml topology")]
    Topology {
        #[arg(short = 'w', long, value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// Planned switchover: the leader hands over to a healthy replica.
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml switchover --leader node1 --candidate node2 --force\n  pgwarden -c node1.yml switchover --candidate node2 --scheduled 2026-12-01T03:00:00+00:00 --force"
    )]
    Switchover {
        /// Current leader (default: the leader now).
        #[arg(long, alias = "primary", alias = "master")]
        leader: Option<String>,
        /// Member to take over (default: the healthiest).
        #[arg(long)]
        candidate: Option<String>,
        /// When: an ISO 8601 time with a time zone, or `now`.
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Manual failover to a given member (also when the leader is unhealthy).
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml failover --candidate node2\n  pgwarden -c node1.yml failover --candidate node2 --force   # even while the leader is healthy"
    )]
    Failover {
        #[arg(long)]
        candidate: Option<String>,
        /// Do not ask; fail over even while a healthy leader exists.
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL on members (all by default).
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml restart --role replica --force\n  pgwarden -c node1.yml restart node2 --pending --force\n  pgwarden -c node1.yml restart node1 --scheduled 2026-12-01T03:00:00+00:00 --force"
    )]
    Restart {
        members: Vec<String>,
        #[arg(short = 'r', long, value_enum)]
        role: Option<RoleFilter>,
        /// Only members with pending_restart.
        #[arg(long)]
        pending: bool,
        /// When: an ISO 8601 time with a time zone.
        #[arg(long)]
        scheduled: Option<String>,
        /// Only members running a PostgreSQL older than this (e.g. 15.6).
        #[arg(long)]
        pg_version: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Re-read the configuration file on members (all by default).
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml reload --force\n  pgwarden -c node1.yml reload node2 --force"
    )]
    Reload {
        members: Vec<String>,
        #[arg(short = 'r', long, value_enum)]
        role: Option<RoleFilter>,
        #[arg(long)]
        force: bool,
    },
    /// Throw a replica's data directory away and clone it again.
    #[command(after_help = "Example:\n  pgwarden -c node1.yml reinit node3 --force --wait")]
    Reinit {
        members: Vec<String>,
        #[arg(long)]
        force: bool,
        /// Wait until the members run again.
        #[arg(long)]
        wait: bool,
    },
    /// Maintenance mode: no automatic failover or restarts.
    #[command(after_help = "Example:\n  pgwarden -c node1.yml pause --wait")]
    Pause {
        /// Wait until every member reports it.
        #[arg(long)]
        wait: bool,
    },
    /// Leave maintenance mode.
    #[command(after_help = "Example:\n  pgwarden -c node1.yml resume --wait")]
    Resume {
        #[arg(long)]
        wait: bool,
    },
    /// Print the dynamic configuration (the `config` key) as YAML.
    #[command(after_help = "Example:\n  pgwarden -c node1.yml show-config")]
    ShowConfig,
    /// Change the dynamic configuration: in $EDITOR, or with --set/--pg.
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml edit-config --set loop_wait=2 --force\n  pgwarden -c node1.yml edit-config --pg work_mem=16MB --pg max_connections=200 --force\n  pgwarden -c node1.yml edit-config          # opens $EDITOR, shows the diff, asks"
    )]
    EditConfig {
        /// `key.path=yaml value`; `key=null` removes the key.
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A PostgreSQL parameter: `name=value`.
        #[arg(short = 'p', long = "pg", value_name = "NAME=VALUE")]
        pg: Vec<String>,
        /// Do not show the diff.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Apply without asking.
        #[arg(long)]
        force: bool,
    },
    /// Timeline history: which switch made which leader.
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml history\n  pgwarden -c node1.yml history -f json"
    )]
    History,
    /// Connection string of a member (default: the leader).
    #[command(
        after_help = "Examples:\n  psql \"$(pgwarden -c node1.yml dsn) user=postgres\"\n  pgwarden -c node1.yml dsn --role replica"
    )]
    Dsn {
        #[arg(short = 'm', long)]
        member: Option<String>,
        #[arg(short = 'r', long, value_enum)]
        role: Option<RoleFilter>,
    },
    /// Run SQL on a member (default: the leader) as the configured superuser.
    #[command(
        after_help = "Examples:\n  pgwarden -c node1.yml query 'select now()'\n  pgwarden -c node1.yml query --member node2 'select pg_is_in_recovery()'"
    )]
    Query {
        /// The SQL to run.
        command: String,
        #[arg(short = 'm', long)]
        member: Option<String>,
        #[arg(short = 'r', long, value_enum)]
        role: Option<RoleFilter>,
        #[arg(short = 'd', long, default_value = "postgres")]
        dbname: String,
    },
    /// Delete every key of the cluster from etcd (the data directories stay).
    #[command(
        after_help = "Example:\n  pgwarden -c node1.yml remove            # asks for the cluster name\n  pgwarden -c node1.yml remove --yes-i-am-sure demo"
    )]
    Remove {
        /// The cluster name, to confirm without a prompt.
        #[arg(long, value_name = "SCOPE")]
        yes_i_am_sure: Option<String>,
    },
    /// The versions of this program and of every member.
    #[command(after_help = "Example:\n  pgwarden -c node1.yml version")]
    Version,
}

/// Why a verb failed; the binary prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("etcd: {0}")]
    Store(String),
    #[error("{0}")]
    Failed(String),
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Everything a verb needs about the cluster.
struct Cluster {
    scope: String,
    dcs: EtcdDcs,
    http: reqwest::Client,
    auth: Option<(String, String)>,
    superuser: Option<(String, Option<String>)>,
    format: Format,
}

async fn connect(global: &GlobalArgs) -> Result<Cluster, CliError> {
    let config = match &global.config {
        Some(path) => Some(
            pgwarden_config::load_path(path, &|k| std::env::var(k).ok())
                .map_err(|e| CliError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let scope = global
        .scope
        .clone()
        .or_else(|| config.as_ref().map(|c| c.scope.clone()))
        .ok_or_else(|| usage("no cluster given: use -c CONFIG, or --scope with --etcd"))?;
    let namespace = global
        .namespace
        .clone()
        .or_else(|| config.as_ref().map(|c| c.namespace.clone()))
        .unwrap_or_else(|| "/service/".into());
    let endpoints: Vec<String> = if global.etcd.is_empty() {
        config
            .as_ref()
            .map(|c| c.etcd.endpoints())
            .ok_or_else(|| usage("no etcd endpoints: use -c CONFIG or --etcd host:port"))?
    } else {
        global
            .etcd
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect()
    };
    let dcs = EtcdDcs::connect(EtcdSettings {
        endpoints,
        namespace,
        scope: scope.clone(),
        username: config.as_ref().and_then(|c| c.etcd.username.clone()),
        password: config.as_ref().and_then(|c| c.etcd.password.clone()),
        request_timeout: Duration::from_secs(5),
    })
    .await
    .map_err(|e| CliError::Store(e.to_string()))?;
    let http = pgwarden_api::http_client_builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| CliError::Failed(format!("HTTP client: {e}")))?;
    Ok(Cluster {
        scope,
        dcs,
        http,
        auth: config
            .as_ref()
            .and_then(|c| c.restapi.authentication.as_ref())
            .map(|a| (a.username.clone(), a.password.clone())),
        superuser: config.as_ref().map(|c| {
            (
                c.postgresql.superuser.username.clone(),
                c.postgresql.superuser.password.clone(),
            )
        }),
        format: global.format,
    })
}

impl Cluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, CliError> {
        self.dcs
            .snapshot()
            .await
            .map_err(|e| CliError::Store(e.to_string()))
    }

    /// POST/PATCH/DELETE to a member's REST API: (status, body).
    async fn call(
        &self,
        member: &Member,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String), CliError> {
        let base = member.data.api_base().ok_or_else(|| {
            CliError::Failed(format!(
                "member {} publishes no REST API address",
                member.name
            ))
        })?;
        let mut request = self.http.request(method, format!("{base}{path}"));
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CliError::Failed(format!("{}: {e}", member.name)))?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.unwrap_or_default()))
    }
}

fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks for a value on the terminal (`default` on an empty answer).
fn ask(question: &str, default: Option<&str>) -> Result<String, CliError> {
    let mut out = std::io::stderr();
    match default {
        Some(d) => write!(out, "{question} [{d}]: "),
        None => write!(out, "{question}: "),
    }
    .and_then(|()| out.flush())
    .map_err(|e| CliError::Failed(e.to_string()))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let answer = line.trim();
    Ok(if answer.is_empty() {
        default.unwrap_or("").to_string()
    } else {
        answer.to_string()
    })
}

/// A value from a flag, else from the terminal, else a clear error.
fn required(
    value: Option<String>,
    question: &str,
    flag: &str,
    default: Option<&str>,
) -> Result<String, CliError> {
    if let Some(v) = value {
        return Ok(v);
    }
    if interactive() {
        let v = ask(question, default)?;
        if !v.is_empty() {
            return Ok(v);
        }
    }
    Err(usage(format!(
        "{flag} is required (stdin is not a terminal to ask for it)"
    )))
}

fn confirm(question: &str, force: bool) -> Result<(), CliError> {
    if force {
        return Ok(());
    }
    if !interactive() {
        return Err(usage(format!(
            "{question} — stdin is not a terminal; add --force to proceed"
        )));
    }
    let answer = ask(&format!("{question} [y/N]"), None)?;
    if matches!(answer.to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Failed("aborted".into()))
    }
}

fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

/// Runs one verb; returns the process exit code.
pub async fn run(global: GlobalArgs, verb: Verb) -> Result<i32, CliError> {
    let cluster = connect(&global).await?;
    match verb {
        Verb::List { extended, watch } => list(&cluster, extended, watch, false).await,
        Verb::Topology { watch } => list(&cluster, false, watch, true).await,
        Verb::Switchover {
            leader,
            candidate,
            scheduled,
            force,
        } => switchover(&cluster, leader, candidate, scheduled, force).await,
        Verb::Failover { candidate, force } => failover(&cluster, candidate, force).await,
        Verb::Restart {
            members,
            role,
            pending,
            scheduled,
            pg_version,
            force,
        } => {
            restart(
                &cluster, &members, role, pending, scheduled, pg_version, force,
            )
            .await
        }
        Verb::Reload {
            members,
            role,
            force,
        } => reload(&cluster, &members, role, force).await,
        Verb::Reinit {
            members,
            force,
            wait,
        } => reinit(&cluster, &members, force, wait).await,
        Verb::Pause { wait } => pause(&cluster, true, wait).await,
        Verb::Resume { wait } => pause(&cluster, false, wait).await,
        Verb::ShowConfig => {
            let snap = cluster.snapshot().await?;
            let config = snap.config.map(|c| c.value).unwrap_or(Value::Null);
            print!("{}", serde_norway::to_string(&config).unwrap_or_default());
            Ok(0)
        }
        Verb::EditConfig {
            set,
            pg,
            quiet,
            force,
        } => edit_config(&cluster, &set, &pg, quiet, force).await,
        Verb::History => {
            let snap = cluster.snapshot().await?;
            print!("{}", render_history(&snap.history, cluster.format));
            Ok(0)
        }
        Verb::Dsn { member, role } => {
            let snap = cluster.snapshot().await?;
            let m = pick_member(&snap, member.as_deref(), role)?;
            println!("{}", dsn(m)?);
            Ok(0)
        }
        Verb::Query {
            command,
            member,
            role,
            dbname,
        } => query(&cluster, &command, member.as_deref(), role, &dbname).await,
        Verb::Remove { yes_i_am_sure } => remove(&cluster, yes_i_am_sure).await,
        Verb::Version => version(&cluster).await,
    }
}

async fn list(
    cluster: &Cluster,
    extended: bool,
    watch: Option<f64>,
    topology: bool,
) -> Result<i32, CliError> {
    loop {
        let snap = cluster.snapshot().await?;
        let text = render_list(&snap, &cluster.scope, cluster.format, extended, topology);
        if watch.is_some() && cluster.format == Format::Pretty && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H{}", timestamp());
            println!();
        }
        print!("{text}");
        let Some(every) = watch else {
            return Ok(0);
        };
        tokio::time::sleep(Duration::from_secs_f64(every.max(0.5))).await;
    }
}

/// `TL | LSN | Reason | Timestamp | New Leader`.
pub fn render_history(lines: &[HistoryLine], format: Format) -> String {
    let headers: Vec<String> = ["TL", "LSN", "Reason", "Timestamp", "New Leader"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.timeline.to_string(),
                l.switch_lsn.to_string(),
                l.reason.clone(),
                l.timestamp.clone().unwrap_or_default(),
                l.new_leader.clone().unwrap_or_default(),
            ]
        })
        .collect();
    match format {
        Format::Pretty => table::Table {
            headers,
            rows,
            right: vec![0, 1],
            title: None,
        }
        .render(),
        Format::Tsv => table::tsv(&headers, &rows),
        Format::Json | Format::Yaml => {
            let list: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut m = serde_json::Map::new();
                    for (h, v) in headers.iter().zip(r) {
                        if !v.is_empty() {
                            let value = v
                                .parse::<u64>()
                                .map_or(Value::String(v.clone()), Value::from);
                            m.insert(h.clone(), value);
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            if format == Format::Json {
                format!("{}\n", Value::Array(list))
            } else {
                serde_norway::to_string(&list).unwrap_or_default()
            }
        }
    }
}

fn leader_member(snap: &ClusterSnapshot) -> Option<&Member> {
    snap.leader_member()
}

fn matches_role(snap: &ClusterSnapshot, m: &Member, role: Option<RoleFilter>) -> bool {
    let is_leader = snap.leader_name() == Some(m.name.as_str());
    match role {
        None | Some(RoleFilter::Any) => true,
        Some(RoleFilter::Leader | RoleFilter::Primary) => is_leader,
        Some(RoleFilter::Replica) => !is_leader,
    }
}

fn pick_member<'a>(
    snap: &'a ClusterSnapshot,
    name: Option<&str>,
    role: Option<RoleFilter>,
) -> Result<&'a Member, CliError> {
    match name {
        Some(n) => snap
            .member(n)
            .ok_or_else(|| usage(format!("{n} is not a member of the cluster"))),
        None => match role {
            None | Some(RoleFilter::Leader | RoleFilter::Primary) => leader_member(snap)
                .ok_or_else(|| CliError::Failed("the cluster has no leader".into())),
            Some(r) => snap
                .members
                .iter()
                .find(|m| matches_role(snap, m, Some(r)))
                .ok_or_else(|| CliError::Failed("no member has that role".into())),
        },
    }
}

/// `host=<h> port=<p>` of a member.
pub fn dsn(member: &Member) -> Result<String, CliError> {
    let (host, port) = member.data.pg_host_port().ok_or_else(|| {
        CliError::Failed(format!(
            "member {} publishes no connection address",
            member.name
        ))
    })?;
    Ok(format!("host={host} port={port}"))
}

/// The members a node verb applies to: named ones (checked), else all, filtered by role.
fn targets<'a>(
    snap: &'a ClusterSnapshot,
    names: &[String],
    role: Option<RoleFilter>,
) -> Result<Vec<&'a Member>, CliError> {
    if let Some(unknown) = names.iter().find(|n| snap.member(n).is_none()) {
        return Err(usage(format!("{unknown} is not a member of cluster")));
    }
    Ok(snap
        .members
        .iter()
        .filter(|m| names.is_empty() || names.contains(&m.name))
        .filter(|m| matches_role(snap, m, role))
        .collect())
}

/// Prints dots on stderr while a long request runs.
fn progress(what: &str) -> tokio::task::JoinHandle<()> {
    eprint!("{what}");
    tokio::spawn(async {
        let began = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprint!(".");
            if began.elapsed() > Duration::from_secs(600) {
                return;
            }
        }
    })
}

fn parse_when(scheduled: Option<String>) -> Result<Option<String>, CliError> {
    match scheduled.as_deref() {
        None | Some("now") => Ok(None),
        Some(at) => chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| Some(t.to_rfc3339()))
            .map_err(|_| usage(format!("--scheduled must be an ISO 8601 time with a time zone (e.g. 2026-12-01T03:00:00+00:00) or 'now', not '{at}'"))),
    }
}

async fn switchover(
    cluster: &Cluster,
    leader: Option<String>,
    candidate: Option<String>,
    scheduled: Option<String>,
    force: bool,
) -> Result<i32, CliError> {
    let snap = cluster.snapshot().await?;
    let current = snap
        .leader_name()
        .ok_or_else(|| CliError::Failed("the cluster has no leader; use failover".into()))?
        .to_string();
    let leader = match leader {
        Some(l) => l,
        None if force => current.clone(),
        None => required(None, "Primary", "--leader", Some(&current))?,
    };
    if leader != current {
        return Err(usage(format!(
            "Member {leader} is not the leader of cluster {}",
            cluster.scope
        )));
    }
    let candidate = match candidate {
        Some(c) => Some(c),
        None if force => None,
        None => {
            let names: Vec<&str> = snap
                .members
                .iter()
                .map(|m| m.name.as_str())
                .filter(|n| *n != current)
                .collect();
            Some(required(
                None,
                &format!("Candidate {names:?}"),
                "--candidate",
                None,
            )?)
        }
    };
    if let Some(c) = &candidate {
        if snap.member(c).is_none() {
            return Err(usage(format!(
                "{c} is not a member of cluster {}",
                cluster.scope
            )));
        }
    }
    let when = parse_when(scheduled)?;
    confirm(
        &format!(
            "Are you sure you want to switchover cluster {}, demoting current leader {leader}?",
            cluster.scope
        ),
        force,
    )?;
    let mut body = json!({"leader": leader});
    if let Some(c) = &candidate {
        body["candidate"] = json!(c);
    }
    if let Some(at) = &when {
        body["scheduled_at"] = json!(at);
    }
    let leader_member = snap.member(&leader).expect("leader is a member");
    let ticker = progress("switching over");
    let answer = cluster
        .call(
            leader_member,
            reqwest::Method::POST,
            "/switchover",
            Some(body),
        )
        .await;
    ticker.abort();
    eprintln!();
    match answer {
        Ok((200 | 202, text)) => {
            println!("{} {text}", timestamp());
            Ok(0)
        }
        Ok((code, text)) => Err(CliError::Failed(format!(
            "Switchover failed, details: {code}, {text}"
        ))),
        Err(err) => {
            // The leader's API is unreachable: write the request directly (patronictl does too).
            eprintln!("{err}; writing the switchover request to etcd directly");
            let request = FailoverRequest {
                leader: Some(leader),
                member: candidate,
                scheduled_at: when,
            };
            cluster
                .dcs
                .set_failover(&request, Precondition::Unconditional)
                .await
                .map_err(|e| CliError::Store(e.to_string()))?;
            println!("{} switchover requested through etcd", timestamp());
            Ok(0)
        }
    }
}

async fn failover(
    cluster: &Cluster,
    candidate: Option<String>,
    force: bool,
) -> Result<i32, CliError> {
    let snap = cluster.snapshot().await?;
    let candidate = required(candidate, "Candidate", "--candidate", None)?;
    let target = snap.member(&candidate).ok_or_else(|| {
        usage(format!(
            "{candidate} is not a member of cluster {}",
            cluster.scope
        ))
    })?;
    confirm(
        &format!(
            "Are you sure you want to failover cluster {} to {candidate}?",
            cluster.scope
        ),
        force,
    )?;
    // The leader's API when there is one, else the candidate's.
    let via = snap.leader_member().unwrap_or(target);
    let ticker = progress("failing over");
    let answer = cluster
        .call(
            via,
            reqwest::Method::POST,
            "/failover",
            Some(json!({"candidate": candidate, "force": force})),
        )
        .await;
    ticker.abort();
    eprintln!();
    match answer? {
        (200 | 202, text) => {
            println!("{} {text}", timestamp());
            Ok(0)
        }
        (code, text) => Err(CliError::Failed(format!(
            "Failover failed, details: {code}, {text}"
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn restart(
    cluster: &Cluster,
    names: &[String],
    role: Option<RoleFilter>,
    pending: bool,
    scheduled: Option<String>,
    pg_version: Option<String>,
    force: bool,
) -> Result<i32, CliError> {
    let snap = cluster.snapshot().await?;
    let members = targets(&snap, names, role)?;
    let when = parse_when(scheduled)?;
    let list: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    confirm(&format!("Restart {}?", list.join(", ")), force)?;
    let mut body = json!({});
    if pending {
        body["restart_pending"] = json!(true);
    }
    if let Some(v) = pg_version {
        body["postgres_version"] = json!(v);
    }
    if let Some(at) = when {
        body["schedule"] = json!(at);
    }
    let mut failed = 0;
    for m in members {
        let ticker = progress(&format!("restarting {}", m.name));
        let answer = cluster
            .call(m, reqwest::Method::POST, "/restart", Some(body.clone()))
            .await;
        ticker.abort();
        eprintln!();
        match answer {
            Ok((200, _)) => println!("Success: restart on member {}", m.name),
            Ok((202, _)) => println!("Success: restart scheduled on member {}", m.name),
            Ok((409, _)) => {
                failed += 1;
                println!(
                    "Failed: another restart is already scheduled on member {}",
                    m.name
                )
            }
            Ok((code, text)) => {
                failed += 1;
                println!(
                    "Failed: restart for member {}, status code={code}, ({text})",
                    m.name
                )
            }
            Err(err) => {
                failed += 1;
                println!("Failed: restart for member {}: {err}", m.name)
            }
        }
    }
    Ok(i32::from(failed > 0))
}

async fn reload(
    cluster: &Cluster,
    names: &[String],
    role: Option<RoleFilter>,
    force: bool,
) -> Result<i32, CliError> {
    let snap = cluster.snapshot().await?;
    let members = targets(&snap, names, role)?;
    let list: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    confirm(&format!("Reload {}?", list.join(", ")), force)?;
    let mut failed = 0;
    for m in members {
        match cluster
            .call(m, reqwest::Method::POST, "/reload", None)
            .await
        {
            Ok((200, _)) => println!("No changes to apply on member {}", m.name),
            Ok((202, _)) => println!(
                "Reload request received for member {} and will be processed within {} seconds",
                m.name,
                display_seconds(snap.dynamic_config().loop_wait)
            ),
            Ok((code, text)) => {
                failed += 1;
                println!(
                    "Failed: reload for member {}, status code={code}, ({text})",
                    m.name
                )
            }
            Err(err) => {
                failed += 1;
                println!("Failed: reload for member {}: {err}", m.name)
            }
        }
    }
    Ok(i32::from(failed > 0))
}

async fn reinit(
    cluster: &Cluster,
    names: &[String],
    force: bool,
    wait: bool,
) -> Result<i32, CliError> {
    if names.is_empty() {
        return Err(usage("name the members to reinitialize"));
    }
    let snap = cluster.snapshot().await?;
    let members = targets(&snap, names, None)?;
    confirm(
        &format!(
            "Are you sure you want to reinitialize members {}?",
            names.join(", ")
        ),
        force,
    )?;
    let mut failed = 0;
    for m in &members {
        match cluster
            .call(
                m,
                reqwest::Method::POST,
                "/reinitialize",
                Some(json!({"force": force})),
            )
            .await
        {
            Ok((200, _)) => println!("Success: reinitialize for member {}", m.name),
            Ok((code, text)) => {
                failed += 1;
                println!(
                    "Failed: reinitialize for member {}, status code={code}, ({text})",
                    m.name
                )
            }
            Err(err) => {
                failed += 1;
                println!("Failed: reinitialize for member {}: {err}", m.name)
            }
        }
    }
    if wait && failed == 0 {
        let ticker = progress("waiting for the members to run again");
        let deadline = Instant::now() + Duration::from_secs(3600);
        // First the clone must start, then the members must run again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        while Instant::now() < deadline {
            let snap = cluster.snapshot().await?;
            let done = members.iter().all(|m| {
                snap.member(&m.name)
                    .is_some_and(|now| now.data.state == pgwarden_types::PgState::Running)
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        ticker.abort();
        eprintln!();
    }
    Ok(i32::from(failed > 0))
}

async fn pause(cluster: &Cluster, on: bool, wait: bool) -> Result<i32, CliError> {
    let snap = cluster.snapshot().await?;
    let paused = snap.dynamic_config().pause;
    if paused == on {
        return Err(CliError::Failed(
            if on {
                "Cluster is already paused"
            } else {
                "Cluster is not paused"
            }
            .into(),
        ));
    }
    let patch = json!({"pause": if on { Value::Bool(true) } else { Value::Null }});
    // The leader first, then anyone who answers; etcd directly as the last resort.
    let mut order: Vec<&Member> = snap.leader_member().into_iter().collect();
    order.extend(
        snap.members
            .iter()
            .filter(|m| Some(m.name.as_str()) != snap.leader_name()),
    );
    let mut done = false;
    for m in order {
        if let Ok((200, _)) = cluster
            .call(m, reqwest::Method::PATCH, "/config", Some(patch.clone()))
            .await
        {
            done = true;
            break;
        }
    }
    if !done {
        let current = snap
            .config
            .ok_or_else(|| CliError::Failed("the cluster has no configuration key yet".into()))?;
        let mut value = current.value.clone();
        pgwarden_api::merge_patch(&mut value, &patch);
        let written = cluster
            .dcs
            .set_config(&value, Precondition::ModRevision(current.mod_revision))
            .await
            .map_err(|e| CliError::Store(e.to_string()))?;
        if !written {
            return Err(CliError::Failed(
                "the configuration changed concurrently; try again".into(),
            ));
        }
    }
    let word = if on { "paused" } else { "resumed" };
    if wait {
        println!(
            "'{}' request sent, waiting until it is recognized by all nodes",
            if on { "pause" } else { "resume" }
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let snap = cluster.snapshot().await?;
            if snap.members.iter().all(|m| m.data.pause == on) {
                break;
            }
            if Instant::now() > deadline {
                return Err(CliError::Failed(
                    "not every member reported the change within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("Success: cluster management is {word}");
    Ok(0)
}

/// Applies `--set key.path=yaml` and `--pg name=value` to a configuration.
pub fn apply_changes(config: &Value, set: &[String], pg: &[String]) -> Result<Value, CliError> {
    let mut out = config.clone();
    if !out.is_object() {
        out = json!({});
    }
    for item in set {
        let (path, raw) = item
            .split_once('=')
            .ok_or_else(|| usage(format!("--set needs key.path=value, got '{item}'")))?;
        let value: Value = serde_norway::from_str(raw)
            .map_err(|e| usage(format!("--set {path}: '{raw}' is not a YAML value: {e}")))?;
        let keys: Vec<&str> = path.split('.').collect();
        set_path(&mut out, &keys, value);
    }
    for item in pg {
        let (name, raw) = item
            .split_once('=')
            .ok_or_else(|| usage(format!("--pg needs name=value, got '{item}'")))?;
        let value: Value = serde_norway::from_str(raw).unwrap_or(Value::String(raw.to_string()));
        set_path(&mut out, &["postgresql", "parameters", name], value);
    }
    Ok(out)
}

fn set_path(target: &mut Value, keys: &[&str], value: Value) {
    let Some((last, parents)) = keys.split_last() else {
        return;
    };
    let mut node = target;
    for key in parents {
        if !node.get(*key).is_some_and(Value::is_object) {
            node[*key] = json!({});
        }
        node = node.get_mut(*key).expect("just inserted");
    }
    if value.is_null() {
        if let Some(map) = node.as_object_mut() {
            map.remove(*last);
        }
    } else {
        node[*last] = value;
    }
}

/// A unified diff of two YAML texts.
pub fn diff(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .header("before", "after")
        .to_string()
}

async fn edit_config(
    cluster: &Cluster,
    set: &[String],
    pg: &[String],
    quiet: bool,
    force: bool,
) -> Result<i32, CliError> {
    let snap = cluster.snapshot().await?;
    let current = snap
        .config
        .ok_or_else(|| CliError::Failed("the cluster has no configuration key yet".into()))?;
    let before = serde_norway::to_string(&current.value).unwrap_or_default();
    let changed = if set.is_empty() && pg.is_empty() {
        if !interactive() {
            return Err(usage(
                "edit-config without --set/--pg opens an editor and needs a terminal",
            ));
        }
        let mut file = std::env::temp_dir();
        file.push(format!(
            "pgwarden-{}-config-{}.yaml",
            cluster.scope,
            std::process::id()
        ));
        std::fs::write(&file, &before)
            .map_err(|e| CliError::Failed(format!("{}: {e}", file.display())))?;
        let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
        let status = std::process::Command::new(&editor)
            .arg(&file)
            .status()
            .map_err(|e| CliError::Failed(format!("running {editor}: {e}")))?;
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        if !status.success() {
            return Err(CliError::Failed(format!(
                "{editor} exited with {status}; nothing changed"
            )));
        }
        serde_norway::from_str::<Value>(&text)
            .map_err(|e| usage(format!("the edited configuration is not valid YAML: {e}")))?
    } else {
        apply_changes(&current.value, set, pg)?
    };
    if changed == current.value {
        println!("Not changed");
        return Ok(0);
    }
    pgwarden_types::DynamicConfig::from_json(&changed)
        .map_err(|e| usage(format!("invalid configuration: {e}")))?;
    let after = serde_norway::to_string(&changed).unwrap_or_default();
    if !quiet {
        print!("{}", diff(&before, &after));
    }
    confirm("Apply these changes?", force)?;
    let written = cluster
        .dcs
        .set_config(&changed, Precondition::ModRevision(current.mod_revision))
        .await
        .map_err(|e| CliError::Store(e.to_string()))?;
    if written {
        println!("Configuration changed");
        Ok(0)
    } else {
        Err(CliError::Failed(
            "Config modification aborted due to concurrent changes".into(),
        ))
    }
}

async fn query(
    cluster: &Cluster,
    sql: &str,
    member: Option<&str>,
    role: Option<RoleFilter>,
    dbname: &str,
) -> Result<i32, CliError> {
    let snap = cluster.snapshot().await?;
    let m = pick_member(&snap, member, role)?;
    let (host, port) = m.data.pg_host_port().ok_or_else(|| {
        CliError::Failed(format!("member {} publishes no connection address", m.name))
    })?;
    let (user, password) = cluster
        .superuser
        .clone()
        .ok_or_else(|| usage("query needs -c CONFIG for the superuser's credentials"))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host)
        .port(port)
        .user(&user)
        .dbname(dbname)
        .application_name("pgwarden query")
        .connect_timeout(Duration::from_secs(5));
    if let Some(p) = &password {
        config.password(p);
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| CliError::Failed(format!("connecting to {}: {e}", m.name)))?;
    tokio::spawn(connection);
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| CliError::Failed(format!("{}: {e}", m.name)))?;
    let mut headers: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for message in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            if headers.is_empty() {
                headers = row.columns().iter().map(|c| c.name().to_string()).collect();
            }
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_string())
                    .collect(),
            );
        }
    }
    if !headers.is_empty() {
        match cluster.format {
            Format::Pretty => print!(
                "{}",
                table::Table {
                    headers,
                    rows,
                    right: vec![],
                    title: None
                }
                .render()
            ),
            _ => print!("{}", table::tsv(&headers, &rows)),
        }
    }
    Ok(0)
}

async fn remove(cluster: &Cluster, confirmation: Option<String>) -> Result<i32, CliError> {
    let typed = match confirmation {
        Some(t) => t,
        None if interactive() => ask(
            &format!("Please confirm the cluster name to remove ({})", cluster.scope),
            None,
        )?,
        None => {
            return Err(usage(format!(
                "remove deletes every key of cluster {0}; confirm with --yes-i-am-sure {0} (stdin is not a terminal)",
                cluster.scope
            )))
        }
    };
    if typed != cluster.scope {
        return Err(CliError::Failed(format!(
            "'{typed}' is not the cluster name {}; nothing removed",
            cluster.scope
        )));
    }
    let snap = cluster.snapshot().await?;
    if let Some(leader) = snap.leader_member() {
        if leader.data.state == pgwarden_types::PgState::Running {
            eprintln!(
                "warning: {} is running as the leader; its agent will recreate some keys",
                leader.name
            );
        }
    }
    cluster
        .dcs
        .delete_cluster()
        .await
        .map_err(|e| CliError::Store(e.to_string()))?;
    println!("Removed every key of cluster {}", cluster.scope);
    Ok(0)
}

async fn version(cluster: &Cluster) -> Result<i32, CliError> {
    println!("pgwarden version {}", env!("CARGO_PKG_VERSION"));
    let snap = cluster.snapshot().await?;
    for m in &snap.members {
        let Some(base) = m.data.api_base() else {
            continue;
        };
        let doc: Option<Value> = match cluster.http.get(format!("{base}/patroni")).send().await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        match doc {
            Some(doc) => {
                let pg = doc["server_version"]
                    .as_u64()
                    .map_or("unknown".to_string(), |v| {
                        format!("{}.{}", v / 10000, v % 10000)
                    });
                println!(
                    "{}: pgwarden (Patroni API {}) PostgreSQL {pg}",
                    m.name,
                    doc["patroni"]["version"].as_str().unwrap_or("?")
                );
            }
            None => println!("{}: not reachable", m.name),
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_pg_change_the_configuration() {
        let config = json!({"ttl": 30, "postgresql": {"parameters": {"work_mem": "4MB"}}});
        let changed = apply_changes(
            &config,
            &[
                "loop_wait=2".into(),
                "postgresql.use_pg_rewind=true".into(),
                "ttl=null".into(),
            ],
            &["work_mem=16MB".into(), "max_connections=200".into()],
        )
        .unwrap();
        assert_eq!(
            changed,
            json!({"loop_wait": 2, "postgresql": {"use_pg_rewind": true, "parameters": {"work_mem": "16MB", "max_connections": 200}}})
        );
        assert!(apply_changes(&config, &["novalue".into()], &[]).is_err());
    }

    #[test]
    fn diff_is_unified() {
        let d = diff("ttl: 30\nloop_wait: 10\n", "ttl: 30\nloop_wait: 2\n");
        assert!(
            d.contains("-loop_wait: 10") && d.contains("+loop_wait: 2"),
            "{d}"
        );
    }

    #[test]
    fn history_table() {
        let lines = vec![HistoryLine {
            timeline: 1,
            switch_lsn: 25_165_984,
            reason: "no recovery target specified".into(),
            timestamp: Some("2026-11-22T10:00:00+00:00".into()),
            new_leader: Some("node2".into()),
        }];
        let text = render_history(&lines, Format::Pretty);
        assert!(text.contains("| TL | LSN      | Reason"), "{text}");
        assert!(text.contains("|  1 | 25165984 | no recovery target specified | 2026-11-22T10:00:00+00:00 | node2      |"), "{text}");
        let json: Value = serde_json::from_str(&render_history(&lines, Format::Json)).unwrap();
        assert_eq!(json[0]["TL"], json!(1));
        assert_eq!(json[0]["New Leader"], json!("node2"));
    }

    #[test]
    fn dsn_of_a_member() {
        let member = Member {
            name: "n1".into(),
            data: serde_json::from_value(json!({"conn_url": "postgres://10.0.0.5:5433/postgres"}))
                .unwrap(),
            mod_revision: 1,
            lease: 1,
        };
        assert_eq!(dsn(&member).unwrap(), "host=10.0.0.5 port=5433");
    }

    #[test]
    fn scheduled_times_need_a_zone() {
        assert_eq!(parse_when(Some("now".into())).unwrap(), None);
        assert!(parse_when(Some("2026-12-01T03:00:00".into())).is_err());
        assert_eq!(
            parse_when(Some("2026-12-01T03:00:00+01:00".into()))
                .unwrap()
                .as_deref(),
            Some("2026-12-01T03:00:00+01:00")
        );
    }
}
