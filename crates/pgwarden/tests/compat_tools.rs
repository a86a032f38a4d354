//! Existing Patroni tooling against a pgwarden cluster, unchanged:
//! the real `patronictl` (Patroni 4.x from PyPI, installed by
//! `scripts/install-patronictl.sh`) and HAProxy (Debian's package) with
//! Patroni-style `option httpchk` health checks. Real etcd 3.4, real
//! PostgreSQL 15, real agents.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_testbed::ports::free_port;
use pgwarden_testbed::process::ChildGuard;
use support::{Options, TestCluster};

const READY: Duration = Duration::from_secs(90);

fn patronictl_path() -> PathBuf {
    let path = std::env::var_os("PGWARDEN_PATRONICTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pgwarden-ci/patroni-venv/bin/patronictl"));
    assert!(
        path.exists(),
        "{} not found: run scripts/install-patronictl.sh (scripts/setup.sh does) or set PGWARDEN_PATRONICTL",
        path.display()
    );
    path
}

/// A patronictl configuration pointing at the test cluster's etcd.
fn patronictl_config(cluster: &TestCluster) -> PathBuf {
    let hosts: Vec<String> = cluster
        .etcd
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    let path = cluster.dir.path().join("patronictl.yml");
    std::fs::write(
        &path,
        format!(
            "scope: e2e\nnamespace: /service/\netcd3:\n  hosts: {}\n",
            serde_json::to_string(&hosts).unwrap()
        ),
    )
    .unwrap();
    path
}

fn patronictl(cluster: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(patronictl_path())
        .arg("-c")
        .arg(patronictl_config(cluster))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running patronictl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_lists_and_switches_over_a_pgwarden_cluster() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;

    let (code, out, err) = patronictl(&cluster, &["list", "-f", "json"]);
    assert_eq!(code, 0, "patronictl list failed:\n{out}\n{err}");
    let members: Vec<serde_json::Value> = serde_json::from_str(&out).expect("patronictl JSON");
    assert_eq!(members.len(), 3, "{out}");
    for m in &members {
        let name = m["Member"].as_str().unwrap();
        assert_eq!(m["TL"], serde_json::json!(1), "{m}");
        if name == leader {
            assert_eq!(m["Role"], "Leader", "{m}");
            assert_eq!(m["State"], "running", "{m}");
        } else {
            assert_eq!(m["Role"], "Replica", "{m}");
            assert_eq!(m["State"], "streaming", "{m}");
            assert_eq!(m["Receive Lag"], serde_json::json!(0), "{m}");
        }
    }
    let (code, table, err) = patronictl(&cluster, &["list"]);
    assert_eq!(code, 0, "{err}");
    let ours = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("-c")
        .arg(&cluster.nodes[0].config)
        .arg("list")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        table,
        "pgwarden list prints patronictl's table"
    );

    let candidate = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader)
        .unwrap();
    let (code, out, err) = patronictl(
        &cluster,
        &[
            "switchover",
            "e2e",
            "--leader",
            &leader,
            "--candidate",
            &candidate,
            "--force",
        ],
    );
    assert_eq!(code, 0, "patronictl switchover failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("Successfully switched over to \"{candidate}\"")),
        "{out}\n{err}"
    );
    assert_eq!(cluster.leader().await.as_deref(), Some(candidate.as_str()));
    assert!(cluster.is_writable(&candidate).await);
}

/// Which server a connection through `port` reaches: (port, in recovery).
async fn reached(port: u16) -> Option<(u16, bool)> {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user=postgres password={} dbname=postgres connect_timeout=2",
        support::PASSWORD
    );
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(connection);
    let row = client
        .query_one("select inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .ok()?;
    Some((u16::try_from(row.get::<_, i32>(0)).ok()?, row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_by_the_health_endpoints_and_follows_a_switchover() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;
    let (rw, ro, stats) = (free_port(), free_port(), free_port());
    let servers = |_: &str| {
        cluster
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    n.name, n.pg_port, n.api_port
                )
            })
            .collect::<String>()
    };
    let config = format!(
        "global\n    maxconn 100\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
         \n    default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n\
         listen stats\n    mode http\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n\
         listen primary\n    bind 127.0.0.1:{rw}\n    option httpchk GET /primary\n    http-check expect status 200\n{}\
         listen replicas\n    bind 127.0.0.1:{ro}\n    balance roundrobin\n    option httpchk GET /replica\n    http-check expect status 200\n{}",
        servers("rw"),
        servers("ro"),
    );
    let path = cluster.dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new("/usr/sbin/haproxy");
    command.arg("-db").arg("-f").arg(&path);
    let _haproxy =
        ChildGuard::spawn("haproxy", command, cluster.dir.path()).expect("starting haproxy");

    // HAProxy counts servers up until their checks fail: wait until its own
    // view (the stats CSV) matches the health endpoints.
    let settled = |writer: String| {
        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        async move {
            let csv = pgwarden_api::http_client_builder()
                .build()
                .ok()?
                .get(format!("http://127.0.0.1:{stats}/stats;csv"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let status = |proxy: &str, server: &str| {
                csv.lines()
                    .map(|l| l.split(',').collect::<Vec<_>>())
                    .find(|f| f.len() > 17 && f[0] == proxy && f[1] == server)
                    .map(|f| f[17].to_string())
            };
            names
                .iter()
                .all(|n| {
                    let (rw_state, ro_state) = if *n == writer {
                        ("UP", "DOWN")
                    } else {
                        ("DOWN", "UP")
                    };
                    status("primary", n).as_deref() == Some(rw_state)
                        && status("replicas", n).as_deref() == Some(ro_state)
                })
                .then_some(())
        }
    };
    cluster
        .wait_for(
            "HAProxy's checks to settle",
            Duration::from_secs(30),
            || settled(leader.clone()),
        )
        .await;
    let leader_port = cluster.nodes[cluster.index_of(&leader)].pg_port;
    cluster
        .wait_for(
            "HAProxy to route writes to the primary",
            Duration::from_secs(30),
            || async { (reached(rw).await? == (leader_port, false)).then_some(()) },
        )
        .await;
    for _ in 0..4 {
        let (port, in_recovery) = cluster
            .wait_for("HAProxy to route reads", Duration::from_secs(30), || {
                reached(ro)
            })
            .await;
        assert!(in_recovery, "the read-only port reached the primary");
        assert_ne!(port, leader_port);
    }

    // After a switchover, writes go to the new primary.
    let candidate = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader)
        .unwrap();
    let response = pgwarden_api::http_client_builder()
        .build()
        .unwrap()
        .post(format!(
            "http://127.0.0.1:{}/switchover",
            cluster.nodes[cluster.index_of(&leader)].api_port
        ))
        .json(&serde_json::json!({"leader": leader, "candidate": candidate}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let new_port = cluster.nodes[cluster.index_of(&candidate)].pg_port;
    cluster
        .wait_for(
            "HAProxy to follow the switchover",
            Duration::from_secs(30),
            || async { (reached(rw).await? == (new_port, false)).then_some(()) },
        )
        .await;
}
