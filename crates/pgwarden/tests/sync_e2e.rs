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
    let agent_pid = cluster.nodes[old_i]
        .agent
        .as_ref()
        .map(|child| i32::try_from(child.id()).unwrap())
        .unwrap();

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
        support::signal(agent_pid, nix::sys::signal::Signal::SIGKILL);
        cluster.kill_postmaster(old_i);
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
