//! The whole life of a two-node cluster against real PostgreSQL 15:
//! initdb, roles, slots, clone, streaming, promotion, divergence, pg_rewind,
//! re-following, stop modes.

mod common;

use common::{
    login, wait_until, Node, REPLICATION_PASSWORD, REPLICATION_USER, REWIND_PASSWORD, REWIND_USER,
    WAIT,
};
use pgwarden_postgres::{ConfigRole, PgError, RewindOutcome, SlotChanges, StopMode};
use pgwarden_types::{DataDirState, PgClusterState};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_replica_promote_rewind_cycle() {
    let a = Node::new("node-a");
    let b = Node::new("node-b");

    // --- bootstrap the primary -------------------------------------------
    a.pg.initdb().await.expect("initdb");
    let conf = std::fs::read_to_string(a.data_dir().join("postgresql.conf")).expect("conf");
    assert_eq!(conf.lines().next(), Some("include 'postgresql.base.conf'"));
    assert!(a.data_dir().join("postgresql.base.conf").is_file());
    assert!(!a.data_dir().join("standby.signal").exists());

    a.pg.start(&ConfigRole::Primary, WAIT)
        .await
        .expect("start primary");
    let state = a.pg.observe().await;
    assert!(state.postmaster_pid.is_some());
    assert!(state.accepting_connections);
    assert_eq!(state.in_recovery, Some(false));
    assert_eq!(state.timeline, Some(1));
    assert!(state.write_lsn.is_some());
    assert!(
        state
            .server_version
            .is_some_and(|v| (150000..160000).contains(&v)),
        "{:?}",
        state.server_version
    );
    let started = state.postmaster_start_time.clone().expect("start time");
    assert_eq!(
        started.len(),
        "2024-01-01 12:00:00.123456+00:00".len(),
        "{started}"
    );
    assert!(started.ends_with("+00:00"), "{started}");
    assert!(!state.pending_restart);
    assert_eq!(state.following, None);
    let DataDirState::Initialized {
        system_identifier,
        cluster_state,
        checkpoint_timeline,
        standby_signal,
    } = state.data_dir.clone()
    else {
        panic!("data dir not initialized: {:?}", state.data_dir)
    };
    assert_eq!(cluster_state, PgClusterState::InProduction);
    assert_eq!(checkpoint_timeline, 1);
    assert!(!standby_signal);
    assert_eq!(
        a.pg.local_system_identifier().as_deref(),
        Some(system_identifier.as_str())
    );
    assert_eq!(
        a.pg.system_identifier().await.expect("sysid"),
        system_identifier
    );
    assert_eq!(
        a.pg.timeline_history().await.expect("history on tl 1"),
        Vec::new()
    );

    // --- roles ------------------------------------------------------------
    assert!(
        login(a.port, REPLICATION_USER, REPLICATION_PASSWORD)
            .await
            .is_err(),
        "role must not exist yet"
    );
    a.pg.create_roles().await.expect("create roles");
    a.pg.create_roles()
        .await
        .expect("create roles is idempotent");
    let log = std::fs::read_to_string(a.pg.settings().log_file()).expect("postmaster log");
    assert!(log.contains("statement: "), "log_statement=all is in force");
    for secret in ["re:pl", "rw pw", "su''per"] {
        assert!(!log.contains(secret), "a password reached the server log");
    }
    assert_eq!(
        login(a.port, REPLICATION_USER, REPLICATION_PASSWORD)
            .await
            .expect("replication login"),
        REPLICATION_USER
    );
    assert_eq!(
        login(a.port, REWIND_USER, REWIND_PASSWORD)
            .await
            .expect("rewind login"),
        REWIND_USER
    );
    assert_eq!(
        a.scalar(&format!(
            "SELECT rolreplication::text FROM pg_roles WHERE rolname = '{REPLICATION_USER}'"
        ))
        .await
        .as_deref(),
        Some("true")
    );
    assert_eq!(
        a.scalar(&format!(
            "SELECT has_function_privilege('{REWIND_USER}', 'pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE')::text"
        ))
        .await
        .as_deref(),
        Some("true")
    );

    // --- slots ------------------------------------------------------------
    let created =
        a.pg.sync_physical_slots(&names(&["node_b"]))
            .await
            .expect("create slot");
    assert_eq!(
        created,
        SlotChanges {
            created: names(&["node_b"]),
            ..Default::default()
        }
    );
    assert!(matches!(
        a.pg.sync_physical_slots(&names(&["Bad-Name"])).await,
        Err(PgError::InvalidSlotName { .. })
    ));

    // --- clone and stream -------------------------------------------------
    b.pg.basebackup(&a.upstream(Some("node_b")))
        .await
        .expect("basebackup");
    assert!(b.data_dir().join("standby.signal").is_file());
    let b_conf =
        std::fs::read_to_string(b.data_dir().join("postgresql.conf")).expect("replica conf");
    assert!(b_conf.contains("primary_slot_name = 'node_b'"), "{b_conf}");
    assert!(
        b_conf.contains(&format!("port = '{}'", b.port)),
        "replica conf must be its own, not the primary's"
    );
    b.pg.start(
        &ConfigRole::Replica {
            upstream: Some(a.upstream(Some("node_b"))),
        },
        WAIT,
    )
    .await
    .expect("start replica");
    wait_until("the replica streams from node-a", WAIT, || async {
        let s = b.pg.observe().await;
        s.streaming && s.in_recovery == Some(true) && s.following.as_deref() == Some("node-a")
    })
    .await;
    let replica_state = b.pg.observe().await;
    assert_eq!(replica_state.timeline, Some(1));
    assert!(replica_state.receive_lsn.is_some() && replica_state.replay_lsn.is_some());
    assert!(matches!(
        replica_state.data_dir,
        DataDirState::Initialized {
            standby_signal: true,
            ..
        }
    ));
    assert_eq!(
        replica_state.system_identifier(),
        Some(system_identifier.as_str())
    );
    wait_until(
        "the primary lists node-b in pg_stat_replication",
        WAIT,
        || async {
            a.pg.observe().await.replication.iter().any(|r| {
                r.application_name == "node-b"
                    && r.state == "streaming"
                    && r.usename == REPLICATION_USER
            })
        },
    )
    .await;

    a.pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one')")
        .await
        .expect("write");
    wait_until("row 1 reaches the replica", WAIT, || async {
        b.scalar("SELECT v FROM t WHERE id = 1").await.as_deref() == Some("one")
    })
    .await;

    // --- slot sync: create, drop, keep the active one ----------------------
    let changes =
        a.pg.sync_physical_slots(&names(&["node_b", "extra"]))
            .await
            .expect("sync");
    assert_eq!(
        changes,
        SlotChanges {
            created: names(&["extra"]),
            ..Default::default()
        }
    );
    let changes =
        a.pg.sync_physical_slots(&names(&["node_b"]))
            .await
            .expect("sync");
    assert_eq!(
        changes,
        SlotChanges {
            dropped: names(&["extra"]),
            ..Default::default()
        }
    );
    wait_until("node_b's slot is active", WAIT, || async {
        a.scalar("SELECT active::text FROM pg_replication_slots WHERE slot_name = 'node_b'")
            .await
            .as_deref()
            == Some("true")
    })
    .await;
    let changes = a.pg.sync_physical_slots(&[]).await.expect("sync");
    assert_eq!(
        changes,
        SlotChanges {
            busy: names(&["node_b"]),
            ..Default::default()
        }
    );

    // --- promote the replica ----------------------------------------------
    b.pg.promote(WAIT).await.expect("promote");
    let promoted = b.pg.observe().await;
    assert_eq!(promoted.in_recovery, Some(false));
    assert_eq!(promoted.timeline, Some(2));
    assert_eq!(promoted.following, None);
    assert!(!b.data_dir().join("standby.signal").exists());
    let history = b.pg.timeline_history().await.expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].0, 1);
    // The old primary keeps writing on timeline 1: its history diverges.
    a.pg.execute("INSERT INTO t VALUES (2, 'divergent')")
        .await
        .expect("divergent write");
    b.pg.execute("INSERT INTO t VALUES (3, 'new')")
        .await
        .expect("write on new primary");
    assert!(
        history[0].1 < a.pg.observe().await.write_lsn.expect("old primary lsn"),
        "old primary is past the fork"
    );
    // pg_rewind reads the source's timeline from its control file.
    b.pg.checkpoint().await.expect("checkpoint after promote");
    b.pg.sync_physical_slots(&names(&["node_a"]))
        .await
        .expect("slot for node-a");

    assert!(
        a.pg.rewind_possible().await.expect("controldata"),
        "wal_log_hints is forced on"
    );
    // --- rewind the old primary (crashed: pg_rewind recovers it first) -----
    a.pg.stop(StopMode::Immediate, WAIT)
        .await
        .expect("stop old primary");
    assert!(a.pg.observe().await.postmaster_pid.is_none());
    let outcome =
        a.pg.rewind(&b.upstream(Some("node_a")))
            .await
            .expect("rewind");
    assert_eq!(outcome, RewindOutcome::Rewound);
    assert!(a.data_dir().join("standby.signal").is_file());
    a.pg.start(
        &ConfigRole::Replica {
            upstream: Some(b.upstream(Some("node_a"))),
        },
        WAIT,
    )
    .await
    .expect("start rewound");
    wait_until(
        "the rewound node streams from node-b on timeline 2",
        WAIT,
        || async {
            let s = a.pg.observe().await;
            s.streaming && s.following.as_deref() == Some("node-b") && s.timeline == Some(2)
        },
    )
    .await;
    wait_until("row 3 reaches the rewound node", WAIT, || async {
        a.scalar("SELECT v FROM t WHERE id = 3").await.as_deref() == Some("new")
    })
    .await;
    assert_eq!(
        a.scalar("SELECT count(*)::text FROM t WHERE id = 2")
            .await
            .as_deref(),
        Some("0"),
        "divergent row gone"
    );

    // A second rewind of a node already on the source's history is a no-op.
    a.pg.stop(StopMode::Fast, WAIT).await.expect("stop fast");
    assert!(matches!(
        a.pg.observe().await.data_dir,
        DataDirState::Initialized {
            cluster_state: PgClusterState::ShutDownInRecovery,
            ..
        }
    ));
    assert_eq!(
        a.pg.rewind(&b.upstream(Some("node_a")))
            .await
            .expect("rewind again"),
        RewindOutcome::NotNeeded
    );

    // --- stop modes ---------------------------------------------------------
    b.pg.stop(StopMode::Smart, WAIT).await.expect("stop smart");
    let stopped = b.pg.observe().await;
    assert!(stopped.postmaster_pid.is_none() && !stopped.accepting_connections);
    assert!(matches!(
        stopped.data_dir,
        DataDirState::Initialized {
            cluster_state: PgClusterState::ShutDown,
            ..
        }
    ));
    b.pg.stop(StopMode::Fast, WAIT)
        .await
        .expect("stop when stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_switches_upstream_with_a_reload() {
    let a = Node::new("up-a");
    let b = Node::new("up-b");
    let c = Node::new("up-c");
    a.pg.initdb().await.expect("initdb");
    a.pg.start(&ConfigRole::Primary, WAIT).await.expect("start");
    a.pg.create_roles().await.expect("roles");
    for replica in [&b, &c] {
        replica
            .pg
            .basebackup(&a.upstream(None))
            .await
            .expect("clone");
        replica
            .pg
            .start(
                &ConfigRole::Replica {
                    upstream: Some(a.upstream(None)),
                },
                WAIT,
            )
            .await
            .expect("start");
    }
    wait_until("up-c streams from up-a", WAIT, || async {
        let s = c.pg.observe().await;
        s.streaming && s.following.as_deref() == Some("up-a")
    })
    .await;
    // Cascade: c follows b without a restart.
    let pid = c.pg.postmaster_pid();
    c.pg.follow(&b.upstream(None)).await.expect("follow");
    wait_until("up-b lists up-c as a streaming standby", WAIT, || async {
        b.pg.observe()
            .await
            .replication
            .iter()
            .any(|r| r.application_name == "up-c" && r.state == "streaming")
    })
    .await;
    let s = c.pg.observe().await;
    assert_eq!(s.following.as_deref(), Some("up-b"));
    assert_eq!(
        c.pg.postmaster_pid(),
        pid,
        "follow must not restart the server"
    );
}
