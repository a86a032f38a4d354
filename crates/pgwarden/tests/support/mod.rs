//! End-to-end harness: a real etcd cluster and real pgwarden agents (running
//! real PostgreSQL 15) on loopback ports, in a temporary directory owned by the
//! `postgres` OS user. Everything started here is stopped by PID on drop, also
//! when a test fails; logs are printed on failure.

#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_dcs::{Dcs, EtcdDcs, EtcdSettings};
use pgwarden_testbed::etcd::EtcdCluster;
use pgwarden_testbed::ports::free_port;
use pgwarden_types::ClusterSnapshot;

pub const SCOPE: &str = "e2e";
pub const PASSWORD: &str = "e2e-secret";

/// Timing used by the end-to-end tests (satisfies loop_wait + 2*retry_timeout <= ttl).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

pub const TEST_TIMING: Timing = Timing {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

#[derive(Clone, Debug)]
pub struct Options {
    pub timing: Timing,
    pub maximum_lag_on_failover: u64,
    pub use_pg_rewind: bool,
    pub primary_start_timeout: u64,
    /// More `bootstrap.dcs` lines (YAML at the indentation of `ttl`), e.g.
    /// `"    synchronous_mode: on\n"`.
    pub extra_dcs: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timing: TEST_TIMING,
            maximum_lag_on_failover: 1_048_576,
            use_pg_rewind: true,
            primary_start_timeout: 30,
            extra_dcs: String::new(),
        }
    }
}

pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub agent: Option<Child>,
}

impl Node {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// PID of the running postmaster, from postmaster.pid, if that process is alive.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("postgres")
            .then_some(pid)
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub etcd: EtcdCluster,
    pub nodes: Vec<Node>,
    pub options: Options,
    bin: PathBuf,
    pub dcs: EtcdDcs,
}

fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres OS user exists");
    (user.uid.as_raw(), user.gid.as_raw())
}

fn chown_tree(path: &Path) {
    let (uid, gid) = postgres_ids();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown {}", path.display());
}

impl TestCluster {
    /// Starts etcd and `members` agents at the same instant.
    pub async fn start(members: usize, options: Options) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-e2e-")
            .tempdir()
            .unwrap();
        let etcd = EtcdCluster::start(3, &dir.path().join("etcd"))
            .await
            .expect("starting etcd");
        let endpoints = etcd.endpoints();
        let dcs = EtcdDcs::connect(EtcdSettings {
            endpoints: endpoints.clone(),
            namespace: "/service/".into(),
            scope: SCOPE.into(),
            username: None,
            password: None,
            request_timeout: Duration::from_secs(2),
        })
        .await
        .expect("connecting to the test etcd");
        let mut nodes = Vec::new();
        for i in 0..members {
            let name = format!("node{}", i + 1);
            let node_dir = dir.path().join(&name);
            fs::create_dir_all(&node_dir).unwrap();
            let node = Node {
                config: node_dir.join("config.yml"),
                name,
                pg_port: free_port(),
                api_port: free_port(),
                dir: node_dir,
                agent: None,
            };
            fs::write(&node.config, config_yaml(&node, &endpoints, &options)).unwrap();
            nodes.push(node);
        }
        chown_tree(dir.path());
        let mut cluster = TestCluster {
            dir,
            etcd,
            nodes,
            options,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_pgwarden")),
            dcs,
        };
        for i in 0..members {
            cluster.start_agent(i);
        }
        cluster
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn start_agent(&mut self, i: usize) {
        let (uid, gid) = postgres_ids();
        let node = &mut self.nodes[i];
        assert!(
            node.agent.is_none(),
            "agent of {} already running",
            node.name
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("agent")
            .arg(&node.config)
            .env_clear()
            .env("PGWARDEN_LOG", "info,pgwarden=debug")
            .env("PATH", "/usr/bin:/bin")
            .current_dir(&node.dir)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting pgwarden agent");
        node.agent = Some(child);
    }

    /// SIGKILL the agent only (PostgreSQL keeps running, as it is detached).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the agent and wait (bounded) for it to exit.
    pub fn term_agent(&mut self, i: usize, within: Duration) -> bool {
        let Some(mut child) = self.nodes[i].agent.take() else {
            return true;
        };
        signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL the agent and the postmaster with all its children together,
    /// like the loss of the whole host. The agent's child handle stays (it is
    /// reaped on drop), so this needs no exclusive borrow of the cluster.
    pub fn kill_host(&self, i: usize) {
        if let Some(child) = &self.nodes[i].agent {
            signal(child.id() as i32, nix::sys::signal::Signal::SIGKILL);
        }
        self.kill_postmaster(i);
    }

    /// SIGKILL the postmaster and all its children, like a crash of the server.
    pub fn kill_postmaster(&self, i: usize) {
        if let Some(pid) = self.nodes[i].postmaster_pid() {
            let children = children_of(pid);
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            for child in children {
                signal(child, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    pub async fn snapshot(&self) -> Option<ClusterSnapshot> {
        tokio::time::timeout(Duration::from_secs(3), self.dcs.snapshot())
            .await
            .ok()?
            .ok()
    }

    pub async fn leader(&self) -> Option<String> {
        self.snapshot().await?.leader_name().map(str::to_string)
    }

    /// Waits for one leader and every other running member streaming; returns the leader.
    pub async fn wait_ready(&self, members: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.snapshot().await {
                if let Some(leader) = s.leader_name() {
                    let streaming = s
                        .members
                        .iter()
                        .filter(|m| {
                            m.name != leader
                                && m.data.replication_state.as_deref() == Some("streaming")
                        })
                        .count();
                    if s.members.len() >= members
                        && streaming + 1 >= members
                        && self.is_writable(leader).await
                    {
                        return leader.to_string();
                    }
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!(
                    "cluster not ready after {within:?}: {:?}",
                    self.snapshot().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `f` returns Some, or panics with logs after `within`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, within: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {within:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn connect(&self, name: &str) -> Option<tokio_postgres::Client> {
        let node = &self.nodes[self.index_of(name)];
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname=postgres connect_timeout=2",
            node.pg_port
        );
        let (client, connection) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
        )
        .await
        .ok()?
        .ok()?;
        tokio::spawn(connection);
        Some(client)
    }

    /// Runs SQL that returns one text value per row (first column).
    pub async fn query_strings(&self, name: &str, sql: &str) -> Option<Vec<String>> {
        let client = self.connect(name).await?;
        let rows = tokio::time::timeout(Duration::from_secs(5), client.simple_query(sql))
            .await
            .ok()?
            .ok()?;
        Some(
            rows.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect(),
        )
    }

    pub async fn execute(&self, name: &str, sql: &str) -> Result<(), String> {
        let client = self
            .connect(name)
            .await
            .ok_or_else(|| format!("cannot connect to {name}"))?;
        tokio::time::timeout(Duration::from_secs(5), client.batch_execute(sql))
            .await
            .map_err(|_| format!("{name}: timed out"))?
            .map_err(|e| format!("{name}: {e}"))
    }

    pub async fn is_writable(&self, name: &str) -> bool {
        self.query_strings(name, "select pg_is_in_recovery()::text")
            .await
            .as_deref()
            == Some(&["false".to_string()])
    }

    /// Timeline a primary writes on now, from its current WAL file name. (The
    /// checkpoint's timeline only moves after the first checkpoint following a
    /// promotion, so it can lag right after a failover.)
    pub async fn timeline(&self, name: &str) -> Option<u32> {
        let v = self
            .query_strings(
                name,
                "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            )
            .await?;
        u32::from_str_radix(v.first()?, 16).ok()
    }

    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default()
    }

    pub fn dump_logs(&self) {
        for node in &self.nodes {
            let text = fs::read_to_string(node.log_path()).unwrap_or_default();
            // Debug lines repeat every cycle; the decisions and errors are what explain a failure.
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .filter(|l| !l.contains("DEBUG"))
                .take(80)
                .collect();
            eprintln!(
                "----- {} agent log (last 80 lines above debug) -----",
                node.name
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for i in 0..self.nodes.len() {
            self.kill_agent(i);
        }
        for i in 0..self.nodes.len() {
            self.kill_postmaster(i);
        }
    }
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Direct children of `pid` (PostgreSQL backends of a postmaster).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4 (after the parenthesised command name) is the parent pid.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            == Some(pid)
        {
            out.push(child);
        }
    }
    out
}

fn config_yaml(node: &Node, endpoints: &[String], options: &Options) -> String {
    let hosts: String = endpoints.iter().map(|e| format!("\n    - {e}")).collect();
    let t = options.timing;
    format!(
        "scope: {SCOPE}
namespace: /service/
name: {name}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts:{hosts}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: {lag}
    primary_start_timeout: {pst}
{extra_dcs}    postgresql:
      use_pg_rewind: {rewind}
      use_slots: true
      parameters:
        wal_keep_size: 128MB
        fsync: 'off'
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {PASSWORD}
    replication:
      username: replicator
      password: {PASSWORD}-repl
    rewind:
      username: rewind_user
      password: {PASSWORD}-rewind
  parameters:
    unix_socket_directories: {dir}
  pg_hba:
    - local all all peer
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all legacy 127.0.0.1/32 md5
    - host all all 127.0.0.1/32 scram-sha-256
",
        name = node.name,
        api = node.api_port,
        pg = node.pg_port,
        ttl = t.ttl,
        loop_wait = t.loop_wait,
        retry = t.retry_timeout,
        lag = options.maximum_lag_on_failover,
        pst = options.primary_start_timeout,
        extra_dcs = options.extra_dcs,
        rewind = options.use_pg_rewind,
        data = node.data_dir().display(),
        dir = node.dir.display(),
    )
}

/// Inserts ids one by one into table `acked(id bigint primary key)` on the
/// current leader until `stop` is set; returns the ids whose commit was
/// acknowledged.
pub async fn write_until(
    cluster: &TestCluster,
    stop: &std::sync::atomic::AtomicBool,
) -> std::collections::BTreeSet<i64> {
    let mut acknowledged = std::collections::BTreeSet::new();
    let mut next = 1_i64;
    let mut client = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if client.is_none() {
            if let Some(leader) = cluster.leader().await {
                client = cluster.connect(&leader).await;
            }
        }
        let Some(c) = &client else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = next;
        next += 1;
        let sql = format!("insert into acked values ({id})");
        match tokio::time::timeout(Duration::from_secs(2), c.batch_execute(&sql)).await {
            Ok(Ok(())) => {
                acknowledged.insert(id);
            }
            _ => client = None,
        }
    }
    acknowledged
}

/// Rows in `acked` on `node`.
pub async fn count_rows(cluster: &TestCluster, node: &str) -> Option<u64> {
    cluster
        .query_strings(node, "select count(*)::text from acked")
        .await?
        .first()?
        .parse()
        .ok()
}

/// Every acknowledged id is in `acked` on `node`.
pub async fn assert_none_lost(
    cluster: &TestCluster,
    node: &str,
    acknowledged: &std::collections::BTreeSet<i64>,
) {
    let present: std::collections::BTreeSet<i64> = cluster
        .query_strings(node, "select id::text from acked")
        .await
        .expect("reading the acknowledged ids")
        .iter()
        .map(|v| v.parse().expect("an id"))
        .collect();
    let lost: Vec<_> = acknowledged.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost on {node}, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
}
