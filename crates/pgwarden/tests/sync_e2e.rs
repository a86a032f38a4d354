//! Synchronous replication end to end: real etcd 3.4, real PostgreSQL 15,
//! three real agents with `synchronous_mode: on`.
//!
//! What must hold: the leader lists a standby in the `sync` key only while
//! PostgreSQL waits for it; killing the primary promotes that standby and
//! every acknowledged write survives; losing the synchronous standby moves
//! synchronous replication to the other one and writes go on.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{count_rows, write_until, Options, TestCluster};

const READY: Duration = Duration::from_secs(90);

fn sync_options() -> Options {
    Options {
        extra_dcs: "    synchronous_mode: on\n".to_string(),
        ..Options::default()
    }
}

/// Waits until the sync key names `leader` and one standby, and PostgreSQL on
/// the leader waits for that standby (other than `not`); returns the standby.
async fn wait_sync_standby(cluster: &TestCluster, leader: &str, not: Option<&str>) -> String {
    cluster
        .wait_for("a synchronous standby", Duration::from_secs(60), || async {
            let snap = cluster.snapshot().await?;
            let sync = snap.sync?.value;
            if sync.leader.as_deref() != Some(leader) {
                return None;
            }
            let standby = sync.sync_standby.filter(|s| Some(s.as_str()) != not)?;
            let setting = cluster
                .query_strings(leader, "show synchronous_standby_names")
                .await?;
            (setting.first().map(String::as_str) == Some(standby.as_str())).then_some(standby)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_promotes_the_sync_standby_without_losing_writes() {
    let cluster = TestCluster::start(3, sync_options()).await;
    let old = cluster.wait_ready(3, READY).await;
    let standby = wait_sync_standby(&cluster, &old, None).await;
    cluster
        .execute(&old, "create table acked(id bigint primary key)")
        .await
        .unwrap();
    let old_i = cluster.index_of(&old);

    let stop = AtomicBool::new(false);
    let scenario = async {
        cluster
            .wait_for(
                "some acknowledged writes",
                Duration::from_secs(30),
                || async { (count_rows(&cluster, &old).await? >= 50).then_some(()) },
            )
            .await;
        // The primary's agent and server die together, mid-stream.
        cluster.kill_host(old_i);
        let new = cluster
            .wait_for("a new writable leader", Duration::from_secs(60), || async {
                let leader = cluster.leader().await?;
                (leader != old && cluster.is_writable(&leader).await).then_some(leader)
            })
            .await;
        let before = count_rows(&cluster, &new).await.unwrap_or(0);
        cluster
            .wait_for(
                "writes on the new leader",
                Duration::from_secs(30),
                || async { (count_rows(&cluster, &new).await? >= before + 10).then_some(()) },
            )
            .await;
        stop.store(true, Ordering::SeqCst);
        new
    };
    let (acknowledged, new) = tokio::join!(write_until(&cluster, &stop), scenario);
    assert_eq!(
        new, standby,
        "only the member listed in the sync key may be promoted"
    );
    support::assert_none_lost(&cluster, &new, &acknowledged).await;
    assert!(acknowledged.len() >= 60, "the writer made progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_sync_standby_moves_sync_to_the_other_replica() {
    let mut cluster = TestCluster::start(3, sync_options()).await;
    let leader = cluster.wait_ready(3, READY).await;
    let standby = wait_sync_standby(&cluster, &leader, None).await;
    cluster
        .execute(&leader, "create table t(v int); insert into t values (1)")
        .await
        .unwrap();

    let standby_i = cluster.index_of(&standby);
    cluster.kill_agent(standby_i);
    cluster.kill_postmaster(standby_i);

    let other = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| n != &leader && n != &standby)
        .unwrap();
    let moved = wait_sync_standby(&cluster, &leader, Some(&standby)).await;
    assert_eq!(moved, other, "the remaining replica becomes synchronous");
    // Commits no longer wait for the dead standby.
    cluster
        .execute(
            &leader,
            "set statement_timeout = '5s'; insert into t values (2)",
        )
        .await
        .unwrap();
    assert_eq!(
        cluster
            .query_strings(&other, "select count(*)::text from t")
            .await
            .unwrap(),
        vec!["2".to_string()],
        "a synchronous commit is on the synchronous standby when acknowledged"
    );
}

/// An asynchronous replica can receive WAL the synchronous standby never
/// got: the primary streams to every standby before the synchronous one
/// confirms. When the synchronous standby is then promoted, the asynchronous
/// replica has replayed past the fork of the new timeline and PostgreSQL
/// refuses to follow it; the agent must notice and rewind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_replica_ahead_of_the_promoted_sync_standby_rewinds_and_follows() {
    let cluster = TestCluster::start(3, sync_options()).await;
    let old = cluster.wait_ready(3, READY).await;
    let standby = wait_sync_standby(&cluster, &old, None).await;
    let other = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| n != &old && n != &standby)
        .unwrap();
    cluster
        .execute(&old, "create table t(v int); insert into t values (1)")
        .await
        .unwrap();
    // Freeze the synchronous standby's WAL receiver; the next commit waits
    // for it forever, but its WAL still reaches the asynchronous replica.
    let receiver: i32 = cluster
        .query_strings(&standby, "select pid::text from pg_stat_wal_receiver")
        .await
        .and_then(|rows| rows.into_iter().next())
        .and_then(|pid| pid.parse().ok())
        .expect("the synchronous standby's WAL receiver");
    support::signal(receiver, nix::sys::signal::Signal::SIGSTOP);
    // What the standby's frozen receiver holds; the socket buffers between
    // the two (a few MB on loopback) still reach it after the thaw, so the
    // asynchronous replica must get well past that.
    let frozen_at = cluster
        .query_strings(&standby, "select pg_last_wal_receive_lsn()::text")
        .await
        .and_then(|rows| rows.into_iter().next())
        .unwrap();
    let writer = cluster.connect(&old).await.unwrap();
    let pending = tokio::spawn(async move {
        writer
            .simple_query("insert into t select generate_series(2, 1500000)")
            .await
    });
    cluster
        .wait_for(
            "the asynchronous replica 24 MB ahead of the synchronous standby",
            Duration::from_secs(90),
            || async {
                let rows = cluster
                    .query_strings(
                        &other,
                        &format!(
                            "select (pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '{frozen_at}') \
                             > 24 * 1024 * 1024)::text"
                        ),
                    )
                    .await?;
                (rows.first().map(String::as_str) == Some("true")).then_some(())
            },
        )
        .await;
    assert!(
        !pending.is_finished(),
        "the commit must wait for the frozen standby"
    );

    // The primary host dies; the standby's receiver wakes with nothing more to get.
    cluster.kill_host(cluster.index_of(&old));
    support::signal(receiver, nix::sys::signal::Signal::SIGCONT);
    let _ = pending.await;

    let new = cluster
        .wait_for("a new writable leader", Duration::from_secs(60), || async {
            let leader = cluster.leader().await?;
            (leader != old && cluster.is_writable(&leader).await).then_some(leader)
        })
        .await;
    assert_eq!(new, standby, "only the synchronous standby may be promoted");
    cluster
        .execute(&new, "insert into t values (-1)")
        .await
        .unwrap();
    // The asynchronous replica is rewound and streams the new timeline.
    cluster
        .wait_for(
            "the asynchronous replica streaming from the new leader with its rows",
            Duration::from_secs(90),
            || async {
                let rows = cluster
                    .query_strings(
                        &other,
                        "select (select status from pg_stat_wal_receiver) || ' ' || \
                         (select count(*) from t where v = -1)",
                    )
                    .await?;
                (rows.first().map(String::as_str) == Some("streaming 1")).then_some(())
            },
        )
        .await;
    let log = cluster.log(cluster.index_of(&other));
    assert!(
        log.contains("past its switch to timeline 2") && log.contains("pg_rewind"),
        "the replica was rewound because it had passed the fork:\n{log}"
    );
}
