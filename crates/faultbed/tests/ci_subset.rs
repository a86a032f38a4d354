//! The per-merge CI subset of the fault matrix: kill -9 of the primary host
//! (both modes), SIGSTOP of the primary's agent (the watchdog's fence), a
//! frozen primary host in synchronous mode, isolation of the primary (both
//! modes), loss of the primary host's etcd member, loss of etcd quorum, a
//! switchover under load, and the proxy cut from etcd then following a
//! failover. Each test builds its own testbed
//! (namespaces, cgroups, etcd, PostgreSQL, agents), so they are serialised by
//! the testbed's lock file even when the harness runs tests in parallel.
//!
//! Needs root, `ip netns`, nft and cgroup2; elsewhere the tests print SKIP,
//! except under `CI=true`, where a skip is a failure (CI must not pass
//! without running them). Artifacts of a failed run are kept and their path
//! is printed.

use pgwarden_faultbed::scenario::{run_scenario, Mode, RunOptions};

fn run(id: &str, mode: Mode) {
    let r = run_scenario(id, mode, 1, &RunOptions::default());
    if let Some(why) = &r.skipped {
        assert!(
            std::env::var_os("CI").is_none(),
            "{id} skipped under CI: {why}"
        );
        return;
    }
    assert_no_leftovers();
    assert!(
        r.passed,
        "{id} {mode} failed: {:?}\nnotes: {:?}\nreport: {:?}\nartifacts: {:?}",
        r.violations, r.notes, r.report, r.artifacts
    );
}

#[test]
fn f01_primary_host_killed_fails_over_and_rejoins() {
    run("F01", Mode::Async);
}

#[test]
fn f01_sync_primary_host_killed_loses_no_acknowledged_write() {
    run("F01", Mode::Sync);
}

#[test]
fn f02_primary_agent_paused_is_fenced_by_the_watchdog() {
    run("F02", Mode::Async);
}

#[test]
fn f03_sync_frozen_primary_host_acknowledges_nothing_after_thaw() {
    run("F03", Mode::Sync);
}

#[test]
fn f05_isolated_primary_demotes_without_dual_ack() {
    run("F05", Mode::Async);
}

#[test]
fn f05_sync_isolated_primary_loses_no_acknowledged_write() {
    run("F05", Mode::Sync);
}

#[test]
fn f08_etcd_member_loss_keeps_the_leader() {
    run("F08", Mode::Async);
}

#[test]
fn f09_etcd_quorum_loss_loses_nothing_and_recovers() {
    run("F09", Mode::Async);
}

#[test]
fn f17_switchover_under_load_loses_nothing() {
    run("F17", Mode::Async);
}

#[test]
fn f20_proxy_fails_closed_and_follows_a_failover() {
    run("F20", Mode::Async);
}

/// Teardown removed every namespace, cgroup and directory of this process's beds.
fn assert_no_leftovers() {
    let mine = format!("pgwfb{}x", std::process::id());
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains(&mine), "namespaces left behind: {netns}");
    let cgroups: Vec<String> = std::fs::read_dir(pgwarden_faultbed::bed::cgroup2_root())
        .expect("cgroup2 root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&mine))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
}
