//! Process-level behaviour against real PostgreSQL 15: the postmaster is
//! detached from the agent, a killed postmaster is noticed, failures carry
//! the evidence (tool stderr, postmaster log), destructive steps are guarded.

mod common;

use common::{free_port, wait_until, Node, WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgwarden_postgres::{proc_stat, ConfigRole, PgError, StopMode, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_is_detached_and_its_death_is_observed() {
    let node = Node::new("solo");
    node.pg.initdb().await.expect("initdb");
    node.pg
        .start(&ConfigRole::Primary, WAIT)
        .await
        .expect("start");
    let pid = node.pg.postmaster_pid().expect("postmaster running");

    // Nothing ties the postmaster to this process: another session, another
    // parent, output into the log file rather than a pipe of ours.
    let me = proc_stat(std::process::id()).expect("own stat");
    let pm = proc_stat(pid).expect("postmaster stat");
    assert_ne!(
        pm.session, me.session,
        "postmaster must run in its own session"
    );
    assert_ne!(
        pm.ppid,
        std::process::id(),
        "postmaster must not be our child"
    );
    for fd in [1, 2] {
        let target =
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("read postmaster fd");
        assert_eq!(
            target,
            node.pg.settings().log_file(),
            "fd {fd} of the postmaster"
        );
    }

    let observed = node.pg.observe().await;
    assert_eq!(observed.postmaster_pid, Some(pid));
    assert!(observed.accepting_connections);

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
    wait_until("observe reports no postmaster", WAIT, || async {
        let s = node.pg.observe().await;
        s.postmaster_pid.is_none() && !s.accepting_connections
    })
    .await;
    assert!(!node.pg.postmaster_alive());

    // A crashed server comes back (stale postmaster.pid, crash recovery).
    node.pg
        .start(&ConfigRole::Primary, WAIT)
        .await
        .expect("restart after kill -9");
    let again = node.pg.observe().await;
    assert!(again.is_running_primary(), "{again:?}");
    assert_ne!(again.postmaster_pid, Some(pid));
    node.pg.stop(StopMode::Fast, WAIT).await.expect("stop");
    assert!(node.pg.observe().await.postmaster_pid.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tool_reports_its_stderr_and_leaves_no_partial_clone() {
    let node = Node::new("clone");
    let data_dir = node.data_dir();
    std::fs::create_dir_all(data_dir.join("leftover")).expect("leftovers");
    let nobody = Upstream {
        member: "ghost".into(),
        host: "127.0.0.1".into(),
        port: free_port(),
        slot: None,
    };
    let err = node
        .pg
        .basebackup(&nobody)
        .await
        .expect_err("no server there");
    match &err {
        PgError::ToolFailed {
            tool, stderr_tail, ..
        } => {
            assert_eq!(tool, "pg_basebackup");
            assert!(
                stderr_tail.contains("Connection refused"),
                "stderr tail: {stderr_tail}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("Connection refused"));
    assert!(data_dir.is_dir(), "the data directory itself is kept");
    assert_eq!(
        std::fs::read_dir(&data_dir).expect("list").count(),
        0,
        "partial clone wiped"
    );
    assert_eq!(
        node.pg.observe().await.data_dir,
        pgwarden_types::DataDirState::Empty
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_carries_the_log_and_running_server_blocks_destruction() {
    let node = Node::new("bad");
    node.pg.initdb().await.expect("initdb");
    assert!(matches!(
        node.pg.initdb().await,
        Err(PgError::DataDirNotEmpty { .. })
    ));

    let good = node.pg.settings();
    let mut bad = (*good).clone();
    bad.parameters
        .insert("shared_buffers".into(), "lots".into());
    node.pg.update_settings(bad);
    let err = node
        .pg
        .start(&ConfigRole::Primary, WAIT)
        .await
        .expect_err("bad parameter");
    match &err {
        PgError::StartFailed { log_tail, .. } => {
            assert!(log_tail.contains("shared_buffers"), "log tail: {log_tail}")
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(!node.pg.postmaster_alive());

    node.pg.update_settings((*good).clone());
    node.pg
        .start(&ConfigRole::Primary, WAIT)
        .await
        .expect("start with good settings");
    let pid = node.pg.postmaster_pid().expect("running");
    assert!(matches!(
        node.pg.wipe_data_dir().await,
        Err(PgError::Running { .. })
    ));
    assert!(matches!(
        node.pg.rewind(&node.upstream(None)).await,
        Err(PgError::Running { .. })
    ));
    assert!(matches!(
        node.pg.basebackup(&node.upstream(None)).await,
        Err(PgError::Running { .. })
    ));
    assert_eq!(node.pg.postmaster_pid(), Some(pid));

    node.pg
        .stop(StopMode::Immediate, WAIT)
        .await
        .expect("stop immediate");
    node.pg
        .stop(StopMode::Fast, WAIT)
        .await
        .expect("stopping a stopped server succeeds");
    node.pg.wipe_data_dir().await.expect("wipe");
    assert_eq!(
        node.pg.observe().await.data_dir,
        pgwarden_types::DataDirState::Empty
    );
}
