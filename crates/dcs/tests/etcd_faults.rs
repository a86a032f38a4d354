//! The etcd store under etcd faults: losing one member of three (killed, or
//! frozen) must not stop any operation, the watch must survive losing the
//! member it streams from, and losing quorum must fail calls (bounded by the
//! request timeout) instead of answering from a minority.

use std::time::Duration;

use pgwarden_dcs::{ClusterKey, Dcs, DcsError, EtcdDcs, EtcdSettings, Precondition, WatchEvent};
use pgwarden_testbed::etcd::EtcdCluster;
use pgwarden_testbed::wait::wait_until;
use pgwarden_types::{MemberData, SyncState};
use tokio::sync::mpsc::Receiver;

async fn connect(cluster: &EtcdCluster, scope: &str, timeout: Duration) -> EtcdDcs {
    EtcdDcs::connect(EtcdSettings {
        endpoints: cluster
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect(),
        namespace: "/service".into(),
        scope: scope.into(),
        username: None,
        password: None,
        request_timeout: timeout,
    })
    .await
    .unwrap()
}

fn index_of(cluster: &EtcdCluster, endpoint: &str) -> usize {
    cluster
        .endpoints()
        .iter()
        .position(|e| e == endpoint)
        .expect("current endpoint is a member")
}

/// One full agent cycle's worth of calls; every one must succeed.
async fn cycle(dcs: &EtcdDcs, lease: i64, round: u32) -> Result<(), DcsError> {
    let snap = dcs.snapshot().await?;
    assert!(dcs.keep_alive(lease).await?, "lease lost in round {round}");
    assert!(
        dcs.update_leader("n1", lease).await?,
        "leader key lost in round {round}"
    );
    dcs.touch_member(
        "n1",
        &MemberData {
            xlog_location: Some(u64::from(round)),
            ..MemberData::empty()
        },
        lease,
    )
    .await?;
    let pre = snap.sync.as_ref().map_or(Precondition::Absent, |s| {
        Precondition::ModRevision(s.mod_revision)
    });
    let state = SyncState {
        leader: Some("n1".into()),
        quorum: 0,
        sync_standby: Some(format!("r{round}")),
    };
    assert!(
        dcs.set_sync(&state, pre).await?.is_some(),
        "sync CAS lost in round {round}"
    );
    let after = dcs.snapshot().await?;
    assert_eq!(after.leader_name(), Some("n1"));
    assert_eq!(
        after.member("n1").and_then(|m| m.data.xlog_location),
        Some(u64::from(round))
    );
    Ok(())
}

/// Waits for a leader event; returns whether a Resync came before it.
async fn expect_leader_event(rx: &mut Receiver<WatchEvent>, want_deleted: bool) -> bool {
    let mut resynced = false;
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await {
                Some(WatchEvent::Changed {
                    key: ClusterKey::Leader,
                    deleted,
                    ..
                }) => return Some(deleted),
                Some(WatchEvent::Resync) => resynced = true,
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .expect("a leader watch event within 30 s");
    assert_eq!(got, Some(want_deleted));
    resynced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_down_keeps_every_operation_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(3, dir.path()).await.unwrap();
    let dcs = connect(&cluster, "faults", Duration::from_secs(5)).await;
    let lease = dcs.grant_lease(30).await.unwrap();
    assert!(dcs.acquire_leader("n1", lease).await.unwrap().is_some());
    cycle(&dcs, lease, 0).await.unwrap();
    let watcher = connect(&cluster, "faults", Duration::from_secs(5)).await;
    let mut rx = watcher
        .watch(dcs.snapshot().await.unwrap().revision)
        .await
        .unwrap();

    // Round 1: kill the member both clients talk to.
    let victim = index_of(&cluster, dcs.current_endpoint());
    assert_eq!(victim, index_of(&cluster, watcher.current_endpoint()));
    cluster.kill_member(victim);
    cycle(&dcs, lease, 1).await.unwrap();
    assert_ne!(index_of(&cluster, dcs.current_endpoint()), victim);
    // The watch moves to a live member and still sees leader changes.
    assert!(dcs.release_leader("n1").await.unwrap());
    assert!(
        expect_leader_event(&mut rx, true).await,
        "watch moved without reporting Resync"
    );
    assert!(dcs.acquire_leader("n1", lease).await.unwrap().is_some());
    expect_leader_event(&mut rx, false).await;
    cluster.restart_member(victim).await.unwrap();
    cycle(&dcs, lease, 2).await.unwrap();

    // Round 2: kill the raft leader (forces an etcd election).
    let leader = wait_until(
        "an etcd leader",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || cluster.leader_index(),
    )
    .await
    .unwrap();
    cluster.kill_member(leader);
    cycle(&dcs, lease, 3).await.unwrap();
    cluster.restart_member(leader).await.unwrap();

    // Round 3: freeze (SIGSTOP) the member the client talks to: it accepts
    // connections but never answers, so only the per-attempt timeout saves us.
    let frozen = index_of(&cluster, dcs.current_endpoint());
    cluster.stop_member(frozen).unwrap();
    let result = cycle(&dcs, lease, 4).await;
    cluster.resume_member(frozen).unwrap();
    result.unwrap();
    assert!(dcs.release_leader("n1").await.unwrap());
    expect_leader_event(&mut rx, true).await;
    dcs.delete_cluster().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_calls_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(3, dir.path()).await.unwrap();
    let dcs = connect(&cluster, "quorum", Duration::from_secs(3)).await;
    let lease = dcs.grant_lease(30).await.unwrap();
    assert!(dcs.acquire_leader("n1", lease).await.unwrap().is_some());
    let survivor = index_of(&cluster, dcs.current_endpoint());
    let others: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    for &i in &others {
        cluster.stop_member(i).unwrap();
    }
    // The survivor still accepts connections but has no quorum: a linearizable
    // read must not be answered from it, and neither may a lease refresh.
    let read = dcs.snapshot().await;
    let refresh = dcs.keep_alive(lease).await;
    let update = dcs.update_leader("n1", lease).await;
    for &i in &others {
        cluster.resume_member(i).unwrap();
    }
    for (what, err) in [
        ("snapshot", read.err()),
        ("keep_alive", refresh.err()),
        ("update_leader", update.err()),
    ] {
        let err = err.unwrap_or_else(|| panic!("{what} answered without quorum"));
        assert!(err.is_retryable(), "{what}: {err:?}");
    }
    let snap = wait_until(
        "the store to answer after quorum returns",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { dcs.snapshot().await.ok() },
    )
    .await
    .unwrap();
    assert_eq!(snap.leader_name(), Some("n1"));
    dcs.delete_cluster().await.unwrap();
}
