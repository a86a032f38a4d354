//! Test harness: real PostgreSQL 15 nodes in temp dirs owned by the
//! `postgres` OS user, on free loopback ports, torn down by PID on drop
//! (also when a test fails), with the postmaster log printed on failure.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use pgwarden_postgres::{Credentials, PgSettings, Postgres, Upstream};

pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
pub const SUPERUSER_PASSWORD: &str = "su'per\\pw:1";
pub const REPLICATION_USER: &str = "repl_user";
pub const REPLICATION_PASSWORD: &str = "re:pl'pw\\2";
pub const REWIND_USER: &str = "rewind-user";
pub const REWIND_PASSWORD: &str = "rw pw '3";
pub const WAIT: Duration = Duration::from_secs(30);

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn chown_to_postgres(path: &Path) {
    let user = User::from_name("postgres")
        .expect("lookup postgres")
        .expect("postgres user exists");
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).expect("chown");
}

/// One PostgreSQL node: its own temp dir (socket dir, pgpass, log) and data dir.
pub struct Node {
    pub name: String,
    pub pg: Postgres,
    pub port: u16,
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn new(name: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("pgw-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        chown_to_postgres(&root);
        let port = free_port();
        let settings = settings(name, &root, port);
        Node {
            name: name.to_string(),
            pg: Postgres::new(settings),
            port,
            root,
            _dir: dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.pg.settings().data_dir.clone()
    }

    /// This node as somebody's upstream, streaming through `slot`.
    pub fn upstream(&self, slot: Option<&str>) -> Upstream {
        Upstream {
            member: self.name.clone(),
            host: "127.0.0.1".into(),
            port: self.port,
            slot: slot.map(str::to_string),
        }
    }

    /// The first column of the first row, or `None` (no row, NULL, or error).
    pub async fn scalar(&self, sql: &str) -> Option<String> {
        self.pg
            .query(sql)
            .await
            .ok()?
            .into_iter()
            .next()?
            .into_iter()
            .next()?
    }

    fn kill_postmaster(&self) {
        let Some(pid) = self.pg.postmaster_pid() else {
            return;
        };
        let data_dir = self.data_dir();
        // pg_ctl itself is bounded by -t; SIGKILL is the fallback.
        let _ = std::process::Command::new("/usr/sbin/runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{BIN_DIR}/pg_ctl"),
                "stop",
                "-m",
                "immediate",
                "-w",
                "-t",
                "10",
                "-D",
            ])
            .arg(&data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if self.pg.postmaster_pid() == Some(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.pg.settings().log_file();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "---- postmaster log of {} ({}) ----",
                self.name,
                log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.kill_postmaster();
    }
}

pub fn settings(name: &str, root: &Path, port: u16) -> PgSettings {
    let parameters: BTreeMap<String, String> = [
        ("shared_buffers", "16MB"),
        ("max_connections", "30"),
        ("fsync", "off"),
        ("log_line_prefix", "%m [%p] "),
        // Everything is logged, so a test can prove role DDL is not.
        ("log_statement", "all"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    PgSettings {
        data_dir: root.join("data"),
        bin_dir: PathBuf::from(BIN_DIR),
        listen_addresses: "127.0.0.1".into(),
        port,
        connect_host: "127.0.0.1".into(),
        connect_port: port,
        socket_dir: None,
        scope: "testscope".into(),
        member_name: name.to_string(),
        database: "postgres".into(),
        superuser: Credentials {
            username: "postgres".into(),
            password: Some(SUPERUSER_PASSWORD.into()),
        },
        replication: Credentials {
            username: REPLICATION_USER.into(),
            password: Some(REPLICATION_PASSWORD.into()),
        },
        rewind: Some(Credentials {
            username: REWIND_USER.into(),
            password: Some(REWIND_PASSWORD.into()),
        }),
        pgpass: root.join("pgpass"),
        parameters,
        pg_hba: Vec::new(),
        initdb_options: vec![
            "--encoding=UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
        ],
        pg_ctl_timeout: WAIT,
        run_as: Some("postgres".into()),
    }
}

/// Polls `check` until it returns true; panics naming `what` at the deadline.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP login as `user` with `password`; returns `current_user`.
pub async fn login(port: u16, user: &str, password: &str) -> Result<String, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    driver.abort();
    Ok(row.get(0))
}
