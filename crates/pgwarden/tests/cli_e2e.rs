//! Every CLI verb against a real three-node cluster (real etcd 3.4, real
//! PostgreSQL 15, real agents), run as a separate process the way an
//! operator runs it, with stdin not a terminal. Output is checked, not just
//! exit codes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Options, TestCluster};

const READY: Duration = Duration::from_secs(90);
const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn pgwarden(cluster: &TestCluster, args: &[&str]) -> Run {
    let config = &cluster.nodes[0].config;
    let output = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("PGWARDEN_CONFIG")
        .output()
        .expect("running pgwarden");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs pgwarden on a pseudo-terminal (`script`), typing `input`; returns what it printed.
fn on_terminal(cluster: &TestCluster, args: &[&str], input: &str, env: &[(&str, &str)]) -> String {
    use std::io::Write;
    let mut command = format!("{} -c {}", BIN, cluster.nodes[0].config.display());
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .envs(env.iter().copied())
        .env_remove("PGWARDEN_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running script");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(cluster: &TestCluster, args: &[&str]) -> String {
    let run = pgwarden(cluster, args);
    assert_eq!(
        run.code, 0,
        "pgwarden {args:?}\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run.stdout
}

fn fails(cluster: &TestCluster, args: &[&str], words: &str) {
    let run = pgwarden(cluster, args);
    assert_ne!(
        run.code, 0,
        "pgwarden {args:?} should fail:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(words) || run.stdout.contains(words),
        "pgwarden {args:?}: expected '{words}' in\n{}\n{}",
        run.stdout,
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_against_a_real_cluster() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_ready(3, READY).await;
    let replica = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader)
        .unwrap();
    let sysid = cluster.snapshot().await.unwrap().initialize.unwrap();

    // list: the header line, one leader, two streaming replicas, timelines.
    let table = ok(&cluster, &["list"]);
    assert!(
        table.starts_with(&format!("+ Cluster: e2e ({sysid}) ")),
        "{table}"
    );
    assert!(table.contains("| Member | Host"), "{table}");
    assert_eq!(table.matches("| Leader ").count(), 1, "{table}");
    assert_eq!(table.matches("| streaming ").count(), 2, "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&cluster, &["list", "-f", "json"])).unwrap();
    let members = json.as_array().unwrap();
    assert_eq!(members.len(), 3);
    let leader_row = members.iter().find(|m| m["Role"] == "Leader").unwrap();
    assert_eq!(leader_row["Member"], serde_json::json!(leader));
    assert_eq!(leader_row["TL"], serde_json::json!(1));
    let tsv = ok(&cluster, &["list", "-f", "tsv"]);
    assert!(
        tsv.starts_with("Cluster\tMember\tHost\tRole\tState\tTL"),
        "{tsv}"
    );
    let topology = ok(&cluster, &["topology"]);
    assert!(
        topology.contains(&format!("| {leader} ")) && topology.contains("| + node"),
        "{topology}"
    );

    // Configuration.
    assert!(ok(&cluster, &["show-config"]).contains("ttl: 6"));
    let changed = ok(
        &cluster,
        &[
            "edit-config",
            "--set",
            "maximum_lag_on_failover=2097152",
            "--force",
        ],
    );
    assert!(
        changed.contains("+maximum_lag_on_failover: 2097152")
            && changed.contains("Configuration changed"),
        "{changed}"
    );
    assert!(ok(&cluster, &["show-config"]).contains("maximum_lag_on_failover: 2097152"));
    fails(
        &cluster,
        &["edit-config", "--set", "loop_wait=50", "--force"],
        "loop_wait",
    );
    fails(
        &cluster,
        &["edit-config", "--set", "maximum_lag_on_failover=1"],
        "--force",
    );

    // On a terminal, edit-config opens $EDITOR, shows the diff and asks.
    let editor = cluster.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^maximum_lag_on_failover:.*/maximum_lag_on_failover: 3145728/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = on_terminal(
        &cluster,
        &["edit-config"],
        "y\n",
        &[("EDITOR", editor.to_str().unwrap())],
    );
    assert!(
        out.contains("+maximum_lag_on_failover: 3145728")
            && out.contains("Apply these changes?")
            && out.contains("Configuration changed"),
        "{out}"
    );

    // Pause and resume.
    assert!(ok(&cluster, &["pause", "--wait"]).contains("Success: cluster management is paused"));
    assert!(ok(&cluster, &["list"]).contains(" Maintenance mode: on"));
    fails(&cluster, &["pause"], "Cluster is already paused");
    assert!(ok(&cluster, &["resume", "--wait"]).contains("Success: cluster management is resumed"));
    assert!(!ok(&cluster, &["list"]).contains("Maintenance mode"));

    // dsn and query.
    let leader_port = cluster.nodes[cluster.index_of(&leader)].pg_port;
    assert_eq!(
        ok(&cluster, &["dsn"]).trim(),
        format!("host=127.0.0.1 port={leader_port}")
    );
    let answer = ok(
        &cluster,
        &["query", "select pg_is_in_recovery()::text as r"],
    );
    assert!(answer.contains("| false |"), "{answer}");
    let answer = ok(
        &cluster,
        &[
            "query",
            "--member",
            &replica,
            "select pg_is_in_recovery()::text as r",
        ],
    );
    assert!(answer.contains("| true |"), "{answer}");
    fails(&cluster, &["dsn", "--member", "nosuch"], "not a member");

    // Node actions.
    let out = ok(&cluster, &["reload", "--force"]);
    assert_eq!(
        out.matches("Reload request received for member").count(),
        3,
        "{out}"
    );
    let out = ok(&cluster, &["restart", &replica, "--force"]);
    assert!(
        out.contains(&format!("Success: restart on member {replica}")),
        "{out}"
    );
    fails(&cluster, &["restart", "nosuch", "--force"], "not a member");
    fails(&cluster, &["restart", &replica], "--force");
    cluster.wait_ready(3, READY).await;

    // On a terminal, a switchover asks for what is missing and for confirmation.
    let prompted = on_terminal(&cluster, &["switchover"], &format!("\n{replica}\nn\n"), &[]);
    assert!(
        prompted.contains("Primary [")
            && prompted.contains("Candidate")
            && prompted.contains("Are you sure")
            && prompted.contains("aborted"),
        "{prompted}"
    );
    assert_eq!(
        cluster.leader().await.as_deref(),
        Some(leader.as_str()),
        "answering no changes nothing"
    );

    // Switchover, then history shows the new timeline.
    fails(
        &cluster,
        &["switchover", "--candidate", &replica],
        "--leader is required",
    );
    fails(
        &cluster,
        &[
            "switchover",
            "--leader",
            &replica,
            "--candidate",
            &leader,
            "--force",
        ],
        "is not the leader",
    );
    let out = ok(
        &cluster,
        &[
            "switchover",
            "--leader",
            &leader,
            "--candidate",
            &replica,
            "--force",
        ],
    );
    assert!(
        out.contains(&format!("Successfully switched over to \"{replica}\"")),
        "{out}"
    );
    cluster
        .wait_for(
            "history after the switchover",
            Duration::from_secs(30),
            || async {
                let history = ok(&cluster, &["history"]);
                history.contains(&format!("| {replica}")).then_some(())
            },
        )
        .await;

    // Re-clone a replica (the old leader), waiting until it runs again.
    // (Right after the switchover it may still be starting as a replica:
    // the agent answers "not now" until then.)
    let out = cluster
        .wait_for("reinit to be accepted", Duration::from_secs(60), || async {
            let run = pgwarden(&cluster, &["reinit", &leader, "--force", "--wait"]);
            (run.code == 0).then_some(run.stdout)
        })
        .await;
    assert!(
        out.contains(&format!("Success: reinitialize for member {leader}")),
        "{out}"
    );
    fails(
        &cluster,
        &["reinit", &replica, "--force"],
        "I am the leader",
    );
    cluster.wait_ready(3, READY).await;

    // Manual failover while the leader is healthy needs --force.
    fails(&cluster, &["failover", "--candidate", &leader], "--force");
    let out = ok(&cluster, &["failover", "--candidate", &leader, "--force"]);
    assert!(
        out.contains(&format!("Successfully failed over to \"{leader}\"")),
        "{out}"
    );

    // remove refuses without the cluster name; version lists every member.
    fails(&cluster, &["remove"], "--yes-i-am-sure e2e");
    fails(
        &cluster,
        &["remove", "--yes-i-am-sure", "other"],
        "nothing removed",
    );
    // Every member answers with its PostgreSQL version once the old primary runs again.
    let version = cluster
        .wait_for(
            "every member's version",
            Duration::from_secs(60),
            || async {
                let version = ok(&cluster, &["version"]);
                (version.matches("PostgreSQL 15.").count() == 3).then_some(version)
            },
        )
        .await;
    assert!(version.starts_with("pgwarden version "), "{version}");
    let completion = ok(&cluster, &["completion", "bash"]);
    assert!(completion.contains("switchover"));
}
