//! The software watchdog against real PostgreSQL and real agents.
//!
//! The guard alone (run through the `pgwarden` binary's internal
//! `watchdog-guard` subcommand, as the agent runs it): fed, PostgreSQL runs;
//! not fed, or its pipe closed, PostgreSQL and every backend are killed;
//! disarmed, nothing happens. Then the scenario it exists for: the primary's
//! agent is frozen with SIGSTOP while PostgreSQL keeps running — its
//! PostgreSQL must be stopped before a replica is promoted.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgwarden_watchdog::WatchdogHandle;
use support::{Options, TestCluster};

const READY: Duration = Duration::from_secs(90);
const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");

/// A throwaway PostgreSQL (initdb + pg_ctl start as the postgres user).
struct Server {
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-wd-")
            .tempdir()
            .unwrap();
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let data = dir.path().join("data");
        let port = pgwarden_testbed::ports::free_port();
        let run = |args: &[&str]| {
            let status = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "{args:?}");
        };
        let data_s = data.display().to_string();
        run(&[
            "/usr/lib/postgresql/15/bin/initdb",
            "-D",
            &data_s,
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let log = dir.path().join("pg.log").display().to_string();
        let opts = format!("-p {port} -k /tmp -c listen_addresses=''");
        run(&[
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "-D",
            &data_s,
            "-l",
            &log,
            "-o",
            &opts,
            "-w",
            "start",
        ]);
        Server { dir }
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn postmaster(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    fn wait_dead(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.postmaster().is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster() {
            support::signal(pid, nix::sys::signal::Signal::SIGKILL);
            for child in support::children_of(pid) {
                support::signal(child, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// A process that exists and is not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn guard(server: &Server, initial: Duration) -> WatchdogHandle {
    WatchdogHandle::spawn(Path::new(BIN), &["watchdog-guard"], &server.data(), initial).unwrap()
}

#[test]
fn the_guard_kills_postgres_unless_fed() {
    // Fed for several of its validity periods: PostgreSQL keeps running.
    let server = Server::start();
    let pid = server.postmaster().expect("postgres runs");
    let mut g = guard(&server, Duration::from_millis(300));
    for _ in 0..20 {
        g.feed(Duration::from_millis(300)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.postmaster(), Some(pid), "fed: untouched");
    // Not fed: killed, backends included.
    let children = support::children_of(pid);
    assert!(!children.is_empty());
    assert!(server.wait_dead(Duration::from_secs(10)), "not fed: fenced");
    assert!(children.iter().all(|c| !alive(*c)));
    drop(g);

    // Pipe closed (the agent died): fenced at once, long before its validity.
    let server = Server::start();
    let g = guard(&server, Duration::from_secs(600));
    drop(g);
    assert!(
        server.wait_dead(Duration::from_secs(10)),
        "closed pipe: fenced"
    );

    // Disarmed: nothing happens.
    let server = Server::start();
    let pid = server.postmaster().unwrap();
    let g = guard(&server, Duration::from_millis(200));
    g.disarm();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(server.postmaster(), Some(pid), "disarmed: untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_agent_loses_its_postgres_before_a_replica_is_promoted() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    let old_i = cluster.index_of(&old);
    let old_postmaster = cluster.nodes[old_i].postmaster_pid().unwrap();
    let agent_pid = cluster.nodes[old_i]
        .agent
        .as_ref()
        .map(|c| i32::try_from(c.id()).unwrap())
        .unwrap();
    cluster
        .wait_for(
            "the watchdog to be armed",
            Duration::from_secs(30),
            || async { cluster.log(old_i).contains("watchdog armed").then_some(()) },
        )
        .await;

    // The agent freezes; its PostgreSQL would go on accepting writes.
    support::signal(agent_pid, nix::sys::signal::Signal::SIGSTOP);
    let frozen_at = Instant::now();
    let mut postgres_gone_at = None;
    let mut promoted_at = None;
    while frozen_at.elapsed() < Duration::from_secs(60) && promoted_at.is_none() {
        if postgres_gone_at.is_none() && !alive(old_postmaster) {
            postgres_gone_at = Some(Instant::now());
        }
        if let Some(leader) = cluster.leader().await {
            if leader != old && cluster.is_writable(&leader).await {
                promoted_at = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::signal(agent_pid, nix::sys::signal::Signal::SIGCONT);
    let promoted_at = promoted_at.expect("a replica was promoted");
    let postgres_gone_at = postgres_gone_at.expect("the frozen primary's PostgreSQL was stopped");
    assert!(
        postgres_gone_at < promoted_at,
        "the old PostgreSQL died {:?} after the freeze, the new primary was writable {:?} after it",
        postgres_gone_at - frozen_at,
        promoted_at - frozen_at
    );
    // The thawed agent rejoins as a replica.
    cluster.wait_ready(3, READY).await;
    assert!(!cluster.is_writable(&old).await);
}
