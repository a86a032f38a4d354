//! End-to-end behaviour of the agent against real etcd 3.4 and PostgreSQL 15.
//!
//! Each test starts its own cluster on free loopback ports and tears it down
//! by PID. Waits are bounded and conditions are polled; no test asserts on a
//! duration except where the guarantee is itself a time bound that
//! comes from configuration (the fence must act before `ttl`).

mod support;

use std::time::{Duration, Instant};

use support::{Options, TestCluster};

const READY: Duration = Duration::from_secs(90);

async fn wait_row(cluster: &TestCluster, node: &str, sql: &str, expected: &str) {
    cluster
        .wait_for(
            &format!("{expected:?} on {node}"),
            Duration::from_secs(30),
            || async {
                let rows = cluster.query_strings(node, sql).await?;
                rows.iter().any(|r| r == expected).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_once_and_replicate() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;

    // Exactly one node ran initdb: every log but the leader's shows a clone, and all share one system id.
    let initdb_runs = (0..3)
        .filter(|&i| cluster.log(i).contains("initializing a new cluster"))
        .count();
    assert_eq!(initdb_runs, 1, "exactly one node runs initdb");
    let sysid = cluster
        .snapshot()
        .await
        .unwrap()
        .system_identifier()
        .map(str::to_string)
        .expect("initialize holds the sysid");
    for node in &cluster.nodes {
        let id = cluster
            .query_strings(
                &node.name,
                "select system_identifier::text from pg_control_system()",
            )
            .await
            .unwrap();
        assert_eq!(
            id,
            vec![sysid.clone()],
            "{} shares the cluster's system identifier",
            node.name
        );
    }

    // The leader streams to both replicas through their slots.
    let streaming = cluster
        .query_strings(
            &leader,
            "select application_name from pg_stat_replication where state = 'streaming' order by 1",
        )
        .await
        .unwrap();
    let mut replicas: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| n != &leader)
        .collect();
    replicas.sort();
    assert_eq!(streaming, replicas);
    let slots = cluster
        .query_strings(
            &leader,
            "select slot_name from pg_replication_slots where active order by 1",
        )
        .await
        .unwrap();
    assert_eq!(slots, replicas, "one active physical slot per replica");

    cluster
        .execute(
            &leader,
            "create table t(v text); insert into t values ('hello')",
        )
        .await
        .unwrap();
    for replica in &replicas {
        wait_row(&cluster, replica, "select v from t", "hello").await;
        assert!(
            !cluster.is_writable(replica).await,
            "{replica} is read-only"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_primary_node_fails_over_and_old_primary_rejoins_with_rewind() {
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    let old_i = cluster.index_of(&old);
    cluster
        .execute(&old, "create table t(v int); insert into t values (1)")
        .await
        .unwrap();
    let old_tl = cluster.timeline(&old).await.unwrap();

    // Agent and postmaster die together.
    cluster.kill_agent(old_i);
    cluster.kill_postmaster(old_i);

    let new = cluster
        .wait_for("a new leader", Duration::from_secs(60), || async {
            let leader = cluster.leader().await?;
            (leader != old && cluster.is_writable(&leader).await).then_some(leader)
        })
        .await;
    cluster
        .execute(&new, "insert into t values (2)")
        .await
        .unwrap();
    assert!(
        cluster.timeline(&new).await.unwrap() > old_tl,
        "promotion starts a new timeline"
    );
    let survivor = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| n != &old && n != &new)
        .unwrap();
    wait_row(
        &cluster,
        &survivor,
        "select v::text from t where v = 2",
        "2",
    )
    .await;

    // The old primary comes back as a replica of the new one, via pg_rewind, with the new rows.
    cluster.start_agent(old_i);
    wait_row(&cluster, &old, "select v::text from t where v = 2", "2").await;
    assert!(
        !cluster.is_writable(&old).await,
        "the former primary never starts writable without the lease"
    );
    assert!(
        cluster.log(old_i).contains("pg_rewind"),
        "the former primary went through pg_rewind"
    );
    cluster.wait_ready(3, READY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_crash_restarts_in_place_on_same_timeline() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;
    let i = cluster.index_of(&leader);
    let tl = cluster.timeline(&leader).await.unwrap();
    let old_pid = cluster.nodes[i].postmaster_pid().unwrap();

    cluster.kill_postmaster(i);

    cluster
        .wait_for(
            "the postmaster to be restarted",
            Duration::from_secs(30),
            || async {
                let pid = cluster.nodes[i].postmaster_pid()?;
                (pid != old_pid && cluster.is_writable(&leader).await).then_some(())
            },
        )
        .await;
    assert_eq!(
        cluster.leader().await.as_deref(),
        Some(leader.as_str()),
        "no failover"
    );
    assert_eq!(
        cluster.timeline(&leader).await,
        Some(tl),
        "same timeline after the crash restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_primary_agent_hands_over_at_once() {
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    let i = cluster.index_of(&old);
    assert!(
        cluster.term_agent(i, Duration::from_secs(60)),
        "agent exits after SIGTERM"
    );
    assert!(
        cluster.nodes[i].postmaster_pid().is_none(),
        "PostgreSQL was stopped cleanly with the agent"
    );
    let new = cluster
        .wait_for("a new writable leader", Duration::from_secs(60), || async {
            let leader = cluster.leader().await?;
            (leader != old && cluster.is_writable(&leader).await).then_some(leader)
        })
        .await;
    // The key was released, not left to expire.
    assert!(
        cluster.log(i).contains("released the leader key"),
        "the stopping agent deleted its key ({new} took over)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_etcd_member_changes_nothing() {
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;
    let tl = cluster.timeline(&leader).await.unwrap();
    let victim = cluster.etcd.leader_index().await.unwrap_or(0);
    cluster.etcd.kill_member(victim);
    // Several ttl periods without that member.
    let until = Instant::now() + Duration::from_secs(cluster.options.timing.ttl * 2);
    while Instant::now() < until {
        assert!(
            cluster.is_writable(&leader).await,
            "the primary stays writable"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(cluster.leader().await.as_deref(), Some(leader.as_str()));
    assert_eq!(cluster.timeline(&leader).await, Some(tl));
    cluster
        .etcd
        .restart_member(victim)
        .await
        .expect("restarting the etcd member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_that_cannot_reach_etcd_stops_writes_before_ttl() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;
    cluster
        .execute(&leader, "create table w(id serial primary key)")
        .await
        .unwrap();
    let ttl = Duration::from_secs(cluster.options.timing.ttl);

    // etcd stops answering everyone (as Patroni's own tests do it: the DCS processes are frozen).
    for member in 0..3 {
        cluster.etcd.stop_member(member).expect("SIGSTOP etcd");
    }
    let frozen_at = Instant::now();
    let mut last_ok = None;
    while frozen_at.elapsed() < ttl + Duration::from_secs(3) {
        if cluster
            .execute(&leader, "insert into w default values")
            .await
            .is_ok()
        {
            last_ok = Some(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for member in 0..3 {
        cluster.etcd.resume_member(member).expect("SIGCONT etcd");
    }
    let last_ok = last_ok.expect("the primary accepted writes right after etcd froze");
    assert!(
        last_ok < ttl,
        "the primary accepted a write {last_ok:?} after losing etcd, ttl is {ttl:?}"
    );
    assert!(!cluster.is_writable(&leader).await || cluster.leader().await.is_some());

    // Once etcd is back, the cluster elects a leader again and everyone streams.
    cluster.wait_ready(3, READY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_lagging_beyond_maximum_lag_is_not_promoted() {
    let options = Options {
        maximum_lag_on_failover: 64 * 1024,
        ..Options::default()
    };
    let mut cluster = TestCluster::start(2, options).await;
    let leader = cluster.wait_ready(2, READY).await;
    let replica = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| n != &leader)
        .unwrap();
    let (li, ri) = (cluster.index_of(&leader), cluster.index_of(&replica));

    // Freeze the replica's WAL receiver so it stops receiving, then write well past the lag limit.
    let receiver = cluster
        .query_strings(&replica, "select pid::text from pg_stat_wal_receiver")
        .await
        .and_then(|v| v.first().and_then(|p| p.parse::<i32>().ok()))
        .expect("the replica has a WAL receiver");
    support::signal(receiver, nix::sys::signal::Signal::SIGSTOP);
    cluster
        .execute(&leader, "create table big as select g, repeat('x', 200) as pad from generate_series(1, 20000) g")
        .await
        .unwrap();
    // Let the leader publish its new position in the status key.
    cluster
        .wait_for(
            "the leader to publish its WAL position",
            Duration::from_secs(20),
            || async {
                let s = cluster.snapshot().await?;
                let replica_pos = s.member(&replica)?.data.xlog_location?;
                (s.status.optime? > replica_pos + 64 * 1024).then_some(())
            },
        )
        .await;

    cluster.kill_agent(li);
    cluster.kill_postmaster(li);
    let _ = ri;
    // Well past the ttl: the leader key has expired, and the lagging replica must not have taken it.
    let until = Instant::now() + Duration::from_secs(cluster.options.timing.ttl * 3);
    while Instant::now() < until {
        assert_eq!(
            cluster.leader().await.filter(|l| l == &replica),
            None,
            "the lagging replica was promoted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        !cluster.is_writable(&replica).await,
        "the lagging replica stays read-only"
    );
    support::signal(receiver, nix::sys::signal::Signal::SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_mode_keeps_the_primary_through_an_etcd_outage() {
    let options = Options {
        extra_dcs: "    failsafe_mode: on\n".to_string(),
        ..Options::default()
    };
    let cluster = TestCluster::start(3, options).await;
    let leader = cluster.wait_ready(3, READY).await;
    cluster
        .execute(&leader, "create table w(id serial primary key)")
        .await
        .unwrap();
    let tl = cluster.timeline(&leader).await.unwrap();
    cluster
        .wait_for("the failsafe key", Duration::from_secs(30), || async {
            let snap = cluster.snapshot().await?;
            (snap.failsafe?.len() == 3).then_some(())
        })
        .await;
    let ttl = Duration::from_secs(cluster.options.timing.ttl);

    // etcd freezes for three ttl periods; every member still answers the primary.
    for member in 0..3 {
        cluster.etcd.stop_member(member).expect("SIGSTOP etcd");
    }
    let frozen_at = Instant::now();
    let mut writes = 0;
    let mut failed_late = 0;
    while frozen_at.elapsed() < 3 * ttl {
        match cluster
            .execute(&leader, "insert into w default values")
            .await
        {
            Ok(()) => writes += 1,
            Err(_) if frozen_at.elapsed() > ttl => failed_late += 1,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still_writable = cluster.is_writable(&leader).await;
    for member in 0..3 {
        cluster.etcd.resume_member(member).expect("SIGCONT etcd");
    }
    assert!(still_writable, "the primary stayed up through the outage");
    assert_eq!(
        failed_late, 0,
        "no write failed after ttl ({writes} succeeded)"
    );
    for node in cluster.nodes.iter().filter(|n| n.name != leader) {
        assert!(
            !cluster.is_writable(&node.name).await,
            "{} was promoted",
            node.name
        );
    }
    // etcd is back: the same primary takes the key again, on the same timeline.
    let after = cluster.wait_ready(3, READY).await;
    assert_eq!(after, leader);
    assert_eq!(cluster.timeline(&leader).await, Some(tl));
}
