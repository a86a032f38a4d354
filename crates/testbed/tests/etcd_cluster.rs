//! The etcd harness itself: a 3-member cluster starts, survives losing one
//! member, restarts it, and freezes/thaws a member.

use std::time::Duration;

use pgwarden_testbed::etcd::{member_healthy, EtcdCluster};
use pgwarden_testbed::wait::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_start_fail_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(3, dir.path()).await.unwrap();
    assert_eq!(cluster.endpoints().len(), 3);
    let leader = wait_until(
        "an etcd leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || cluster.leader_index(),
    )
    .await
    .unwrap();

    // Kill the leader: the two survivors elect a new one among themselves.
    cluster.kill_member(leader);
    assert!(cluster.pid(leader).is_none());
    let new_leader = wait_until(
        "a new etcd leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || cluster.leader_index(),
    )
    .await
    .unwrap();
    assert_ne!(new_leader, leader);

    cluster.restart_member(leader).await.unwrap();
    assert!(cluster.pid(leader).is_some());

    // A frozen member stops answering; after SIGCONT it is healthy again.
    let victim = (new_leader + 1) % 3;
    let port: u16 = cluster
        .endpoint(victim)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    cluster.stop_member(victim).unwrap();
    assert!(!member_healthy(port).await);
    cluster.resume_member(victim).unwrap();
    wait_until(
        "frozen member healthy again",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || member_healthy(port),
    )
    .await
    .unwrap();
    let pids: Vec<u32> = (0..3).filter_map(|i| cluster.pid(i)).collect();
    drop(cluster);
    for pid in pids {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !cmdline.contains("etcd"),
            "etcd pid {pid} still alive after drop"
        );
    }
}
