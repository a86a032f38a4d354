//! Planned operations end to end, driven through the store as patronictl's
//! fallback does (the REST API's switchover writes the same key): a
//! switchover under a write load, a scheduled switchover, and pause.
//! Real etcd 3.4, real PostgreSQL 15, three real agents.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgwarden_dcs::{Dcs, Precondition};
use pgwarden_types::FailoverRequest;
use support::{count_rows, write_until, Options, TestCluster};

const READY: Duration = Duration::from_secs(90);

fn other_than(cluster: &TestCluster, not: &[&str]) -> String {
    cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| !not.contains(&n.as_str()))
        .expect("a third member")
}

async fn request_switchover(
    cluster: &TestCluster,
    leader: &str,
    candidate: &str,
    at: Option<String>,
) {
    let request = FailoverRequest {
        leader: Some(leader.to_string()),
        member: Some(candidate.to_string()),
        scheduled_at: at,
    };
    assert!(cluster
        .dcs
        .set_failover(&request, Precondition::Unconditional)
        .await
        .expect("writing the failover key"));
}

async fn set_pause(cluster: &TestCluster, pause: bool) {
    let snapshot = cluster.snapshot().await.expect("snapshot");
    let config = snapshot.config.expect("config key");
    let mut value = config.value.clone();
    value["pause"] = serde_json::Value::Bool(pause);
    assert!(cluster
        .dcs
        .set_config(&value, Precondition::ModRevision(config.mod_revision))
        .await
        .expect("writing the config key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_loses_nothing_and_needs_no_rewind() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    cluster
        .execute(&old, "create table acked(id bigint primary key)")
        .await
        .unwrap();
    let candidate = other_than(&cluster, &[&old]);

    let stop = AtomicBool::new(false);
    let scenario = async {
        cluster
            .wait_for(
                "writes before the switchover",
                Duration::from_secs(30),
                || async { (count_rows(&cluster, &old).await? >= 30).then_some(()) },
            )
            .await;
        request_switchover(&cluster, &old, &candidate, None).await;
        cluster
            .wait_for("the candidate to lead", Duration::from_secs(60), || async {
                let leader = cluster.leader().await?;
                (leader == candidate && cluster.is_writable(&leader).await).then_some(())
            })
            .await;
        let before = count_rows(&cluster, &candidate).await.unwrap_or(0);
        cluster
            .wait_for(
                "writes on the new leader",
                Duration::from_secs(30),
                || async { (count_rows(&cluster, &candidate).await? >= before + 10).then_some(()) },
            )
            .await;
        stop.store(true, Ordering::SeqCst);
    };
    let (acknowledged, ()) = tokio::join!(write_until(&cluster, &stop), scenario);
    support::assert_none_lost(&cluster, &candidate, &acknowledged).await;

    // The old primary streams from the new one, without pg_rewind, with every row.
    let old_i = cluster.index_of(&old);
    cluster
        .wait_for(
            "the old primary to stream again",
            Duration::from_secs(60),
            || async {
                let snap = cluster.snapshot().await?;
                let member = snap.member(&old)?;
                (member.data.replication_state.as_deref() == Some("streaming")).then_some(())
            },
        )
        .await;
    assert!(!cluster.is_writable(&old).await);
    let log = cluster.log(old_i);
    assert!(
        log.contains("without pg_rewind") && !log.contains("running pg_rewind"),
        "the old primary rejoined without pg_rewind"
    );
    assert!(
        cluster
            .snapshot()
            .await
            .unwrap()
            .failover_request()
            .is_none(),
        "the failover key was cleared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_switchover_waits_for_its_time() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    let candidate = other_than(&cluster, &[&old]);
    let delay = Duration::from_secs(8);
    let at = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap();
    let requested = Instant::now();
    request_switchover(&cluster, &old, &candidate, Some(at.to_rfc3339())).await;

    // Until its time the leader stays and says why.
    while requested.elapsed() + Duration::from_secs(2) < delay {
        assert_eq!(cluster.leader().await.as_deref(), Some(old.as_str()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(cluster
        .log(cluster.index_of(&old))
        .contains("switchover scheduled at"));
    cluster
        .wait_for(
            "the scheduled switchover",
            Duration::from_secs(60),
            || async {
                let leader = cluster.leader().await?;
                (leader == candidate && cluster.is_writable(&leader).await).then_some(())
            },
        )
        .await;
    assert!(
        chrono::Utc::now() >= at,
        "the switchover did not happen before its time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_failover_until_resume() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let old = cluster.wait_ready(3, READY).await;
    set_pause(&cluster, true).await;
    // Every member reports the pause through its REST API before the fault.
    cluster
        .wait_for(
            "every member to see the pause",
            Duration::from_secs(30),
            || async {
                let client = pgwarden_api::http_client_builder().build().unwrap();
                for node in &cluster.nodes {
                    let doc: serde_json::Value = client
                        .get(format!("http://127.0.0.1:{}/patroni", node.api_port))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    if doc["pause"] != serde_json::Value::Bool(true) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;

    cluster.kill_host(cluster.index_of(&old));

    // Three ttl periods: the key expires, and still nobody promotes.
    let ttl = Duration::from_secs(cluster.options.timing.ttl);
    let until = Instant::now() + 3 * ttl;
    while Instant::now() < until {
        for node in cluster.nodes.iter().filter(|n| n.name != old) {
            assert!(
                !cluster.is_writable(&node.name).await,
                "{} was promoted while the cluster is paused",
                node.name
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        cluster.leader().await,
        None,
        "the dead leader's key expired"
    );

    set_pause(&cluster, false).await;
    let new = cluster
        .wait_for(
            "a failover after resume",
            Duration::from_secs(60),
            || async {
                let leader = cluster.leader().await?;
                (leader != old && cluster.is_writable(&leader).await).then_some(leader)
            },
        )
        .await;
    assert_ne!(new, old);
}

async fn rest(
    cluster: &TestCluster,
    node: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let port = cluster.nodes[cluster.index_of(node)].api_port;
    let mut request = pgwarden_api::http_client_builder()
        .build()
        .unwrap()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(120));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("REST request");
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_actions_against_a_real_cluster() {
    use reqwest::Method;
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;
    let replica = other_than(&cluster, &[&leader]);

    let (status, metrics) = rest(&cluster, &leader, Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!(
            "patroni_primary{{scope=\"e2e\",name=\"{leader}\"}} 1"
        )),
        "{metrics}"
    );

    // Restart a replica: answered once it is back, with a new postmaster.
    let before = cluster.nodes[cluster.index_of(&replica)].postmaster_pid();
    let (status, text) = rest(
        &cluster,
        &replica,
        Method::POST,
        "/restart",
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "restarted successfully"));
    assert_ne!(
        cluster.nodes[cluster.index_of(&replica)].postmaster_pid(),
        before
    );

    // Reinitialize: refused on the leader, done on a replica.
    let (status, text) = rest(&cluster, &leader, Method::POST, "/reinitialize", None).await;
    assert_eq!(
        (status, text.as_str()),
        (503, "I am the leader, can not reinitialize")
    );
    let replica_i = cluster.index_of(&replica);
    let before = cluster.nodes[replica_i].postmaster_pid();
    let (status, text) = rest(&cluster, &replica, Method::POST, "/reinitialize", None).await;
    assert_eq!((status, text.as_str()), (200, "reinitialize started"));
    // A new clone runs under a new postmaster and streams again.
    cluster
        .wait_for("the re-cloned replica", Duration::from_secs(90), || async {
            let pid = cluster.nodes[replica_i].postmaster_pid();
            let snap = cluster.snapshot().await?;
            let member = snap.member(&replica)?;
            (pid.is_some()
                && pid != before
                && member.data.state == pgwarden_types::PgState::Running
                && member.data.replication_state.as_deref() == Some("streaming"))
            .then_some(())
        })
        .await;

    // A scheduled restart fires at its time: 202 now, a new postmaster later.
    let before = cluster.nodes[replica_i].postmaster_pid();
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let (status, text) = rest(
        &cluster,
        &replica,
        Method::POST,
        "/restart",
        Some(serde_json::json!({"schedule": at})),
    )
    .await;
    assert_eq!((status, text.as_str()), (202, "Restart scheduled"));
    let (_, doc) = rest(&cluster, &replica, Method::GET, "/patroni", None).await;
    assert!(doc.contains("scheduled_restart"), "{doc}");
    cluster
        .wait_for("the scheduled restart", Duration::from_secs(60), || async {
            let pid = cluster.nodes[replica_i].postmaster_pid();
            (pid.is_some() && pid != before).then_some(())
        })
        .await;
    assert!(
        chrono::Utc::now() >= chrono::DateTime::parse_from_rfc3339(&at).unwrap(),
        "the restart did not happen before its time"
    );

    // A dynamic parameter change reaches PostgreSQL without a restart.
    let (status, text) = rest(
        &cluster,
        &leader,
        Method::PATCH,
        "/config",
        Some(serde_json::json!({"postgresql": {"parameters": {"work_mem": "12MB"}}})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    cluster
        .wait_for("work_mem applied", Duration::from_secs(30), || async {
            let v = cluster.query_strings(&leader, "show work_mem").await?;
            (v.first().map(String::as_str) == Some("12MB")).then_some(())
        })
        .await;

    // Switchover through the leader's REST API.
    let (status, text) = rest(
        &cluster,
        &leader,
        Method::POST,
        "/switchover",
        Some(serde_json::json!({"leader": leader, "candidate": replica})),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (
            200,
            format!("Successfully switched over to \"{replica}\"").as_str()
        )
    );
    assert!(cluster.is_writable(&replica).await);
}
